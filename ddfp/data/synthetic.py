"""The embedded demo dataset: textured blobs on a smooth background, deterministic from a seed.

Class = texture (``SYNTHETIC_CLASSES``): stripes, checkers, dots, rings and three CC0 photographs shipped
with scikit-image (brick, grass, gravel). Every object gets a random colour pair, scale, orientation
and phase, so neither colour nor a fixed pattern phase identifies its class: a model must learn the
texture, which takes more than a handful of labelled images (the point of a semi-supervised demo).
Objects are star-shaped random blobs; later ones occlude earlier ones; a void (255) band marks every
object boundary, as in VOC. Pure: arrays in, arrays out, no files written.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Iterator

import numpy as np
from scipy import ndimage

from ddfp.config import SyntheticConfig
from ddfp.data.spec import IGNORE_INDEX, SYNTHETIC_CLASSES

NUM_CLASSES = len(SYNTHETIC_CLASSES)
MAX_OBJECTS = 3
# Footprint of the boundary test: a pixel is void if any 3x3 neighbour belongs to another region,
# i.e. a 2 px band straddling every contour (VOC marks about 5 px on ~500 px images).
BORDER_FOOTPRINT = 3
MIN_COLOUR_DISTANCE = 90.0  # RGB distance between a texture's two colours, so the pattern stays visible
PIXEL_NOISE_STD = 3.0

Grid = tuple[np.ndarray, np.ndarray]  # (y, x) pixel coordinates, float32 HxW
Texture = Callable[[np.random.Generator, Grid, tuple[float, float]], np.ndarray]


def _rotated(rng: np.random.Generator, grid: Grid) -> Grid:
    """The grid rotated by a random angle and shifted by a random phase (pixel units)."""
    yy, xx = grid
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    off_u, off_v = rng.uniform(0, 1000, size=2)
    return c * xx + s * yy + off_u, -s * xx + c * yy + off_v


def _soft_sign(rng: np.random.Generator, field: np.ndarray) -> np.ndarray:
    # tanh of a scaled periodic field: sharp-but-antialiased two-tone patterns of random edge softness.
    return 0.5 + 0.5 * np.tanh(rng.uniform(2.0, 5.0) * field)


def _stripes(rng: np.random.Generator, grid: Grid, centre: tuple[float, float]) -> np.ndarray:
    u, _ = _rotated(rng, grid)
    return _soft_sign(rng, np.sin(2 * np.pi * u / rng.uniform(6.0, 14.0)))


def _checkers(rng: np.random.Generator, grid: Grid, centre: tuple[float, float]) -> np.ndarray:
    u, v = _rotated(rng, grid)
    period = rng.uniform(8.0, 18.0)
    return _soft_sign(rng, 2.0 * np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period))


def _dots(rng: np.random.Generator, grid: Grid, centre: tuple[float, float]) -> np.ndarray:
    u, v = _rotated(rng, grid)
    period = rng.uniform(7.0, 14.0)
    du = (u / period) % 1.0 - 0.5
    dv = (v / period) % 1.0 - 0.5
    dist_px = np.hypot(du, dv) * period
    radius_px = rng.uniform(0.22, 0.36) * period
    return np.clip(radius_px - dist_px + 0.5, 0.0, 1.0)  # 1 px antialiased disc edge


def _rings(rng: np.random.Generator, grid: Grid, centre: tuple[float, float]) -> np.ndarray:
    yy, xx = grid
    cy, cx = np.asarray(centre) + rng.normal(0, 6.0, size=2)  # near the blob centre: visibly concentric
    rho = np.hypot(yy - cy, xx - cx)
    return _soft_sign(rng, np.sin(2 * np.pi * rho / rng.uniform(6.0, 14.0) + rng.uniform(0, 2 * np.pi)))


@lru_cache(maxsize=None)
def _photo(name: str) -> tuple[np.ndarray, float, float]:
    """A scikit-image texture (512x512 grey, bundled, CC0) with its 1st/99th intensity percentiles."""
    from skimage import data  # lazy: only generation needs scikit-image

    image = getattr(data, name)().astype(np.float32)
    lo, hi = np.percentile(image, [1, 99])
    return image, float(lo), float(hi)


def _photo_texture(name: str, step_range: tuple[float, float]) -> Texture:
    def texture(rng: np.random.Generator, grid: Grid, centre: tuple[float, float]) -> np.ndarray:
        image, lo, hi = _photo(name)
        u, v = _rotated(rng, grid)
        step = rng.uniform(*step_range)  # texture pixels per output pixel: the random scale
        coords = np.stack([(v * step) % image.shape[0], (u * step) % image.shape[1]])
        sampled = ndimage.map_coordinates(image, coords, order=1, mode="mirror")
        return np.clip((sampled - lo) / (hi - lo), 0.0, 1.0)

    return texture


# Index i of this tuple draws class i + 1; scale ranges keep every pattern's period at ~6-20 px.
TEXTURES: tuple[Texture, ...] = (
    _stripes,
    _checkers,
    _dots,
    _rings,
    _photo_texture("brick", (2.0, 3.5)),
    _photo_texture("grass", (1.2, 2.5)),
    _photo_texture("gravel", (1.3, 2.5)),
)
assert len(TEXTURES) == NUM_CLASSES - 1


def _colour_pair(rng: np.random.Generator, min_distance: float) -> tuple[np.ndarray, np.ndarray]:
    """Two random RGB colours at least min_distance apart (rejection sampling, a few draws)."""
    while True:
        c0, c1 = rng.uniform(0, 255, size=(2, 3))
        if np.linalg.norm(c0 - c1) >= min_distance:
            return c0, c1


def _colourise(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    return c0 + t[..., None] * (c1 - c0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth low-frequency noise between two colours: no periodic structure, unlike every class."""
    noise = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=size / 8, mode="wrap")
    t = (noise - noise.min()) / (np.ptp(noise) + 1e-8)
    return _colourise(t.astype(np.float32), *_colour_pair(rng, min_distance=40.0))


def _blob_alpha(rng: np.random.Generator, grid: Grid, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """A star-shaped blob: radius r(phi) = R0 exp(sum_k a_k cos(k phi + psi_k)); soft 1 px edge."""
    yy, xx = grid
    cy, cx = rng.uniform(0.2, 0.8, size=2) * size
    phi = np.arctan2(yy - cy, xx - cx, dtype=np.float32)
    k = np.arange(1, 5, dtype=np.float32)[:, None, None]
    amps = (rng.normal(0, 0.22, size=(4, 1, 1)) / k).astype(np.float32)  # damped: smooth outlines
    psi = rng.uniform(0, 2 * np.pi, size=(4, 1, 1)).astype(np.float32)
    radius = rng.uniform(0.16, 0.32) * size * np.exp((amps * np.cos(k * phi + psi)).sum(0))
    alpha = np.clip(radius - np.hypot(yy - cy, xx - cx) + 0.5, 0.0, 1.0)
    return alpha.astype(np.float32), (float(cy), float(cx))


def _void_borders(instances: np.ndarray) -> np.ndarray:
    """True where a pixel's neighbourhood holds another instance (object-object or object-background)."""
    hi = ndimage.maximum_filter(instances, size=BORDER_FOOTPRINT, mode="nearest")
    lo = ndimage.minimum_filter(instances, size=BORDER_FOOTPRINT, mode="nearest")
    return hi != lo


def make_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image (HxWx3 uint8) and its mask (HxW uint8: class ids, 255 on object borders)."""
    axis = np.arange(size, dtype=np.float32)
    grid: Grid = tuple(np.meshgrid(axis, axis, indexing="ij"))  # type: ignore[assignment]
    image = _background(rng, size)
    labels = np.zeros((size, size), np.uint8)
    instances = np.zeros((size, size), np.uint8)
    n_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    classes = rng.choice(np.arange(1, NUM_CLASSES), size=n_objects, replace=False)
    for instance, cls in enumerate(classes, start=1):
        alpha, centre = _blob_alpha(rng, grid, size)
        t = TEXTURES[cls - 1](rng, grid, centre)
        colour = _colourise(t.astype(np.float32), *_colour_pair(rng, MIN_COLOUR_DISTANCE))
        image = image + alpha[..., None] * (colour - image)  # later objects paint over earlier ones
        inside = alpha >= 0.5
        labels[inside] = cls
        instances[inside] = instance
    image = image + rng.normal(0, PIXEL_NOISE_STD, size=image.shape)
    labels[_void_borders(instances)] = IGNORE_INDEX
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), labels


def generate(cfg: SyntheticConfig) -> Iterator[tuple[str, np.ndarray, np.ndarray, str]]:
    """(image_id, image, mask, split) for num_train "train" then num_val "val" samples.

    Each sample has its own generator seeded by (seed, split, index), so any one sample can be
    regenerated alone and changing num_val does not change the training images.
    """
    for split_code, (split, count) in enumerate((("train", cfg.num_train), ("val", cfg.num_val))):
        for index in range(count):
            rng = np.random.default_rng([cfg.seed, split_code, index])
            image, mask = make_sample(rng, cfg.image_size)
            yield f"{split}_{index:05d}", image, mask, split
