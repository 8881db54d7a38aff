"""U2PL CutMix: half-area boxes, the same box for images / labels / ignore, p = 0 is a no-op."""

from __future__ import annotations

import pytest
import torch

from ddfp.data.mixing import box_masks, cutmix, cutmix_boxes, maybe_cutmix
from tests.helpers.mixing import cutmix_box

B, C, H, W = 4, 3, 24, 33


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every tensor of image i is filled with i, so each pixel tells which image it came from."""
    ids = torch.arange(B)
    img = ids.float()[:, None, None, None].expand(B, C, H, W).clone()
    labels = ids[:, None, None].expand(B, H, W).clone()
    conf = ids.float()[:, None, None].expand(B, H, W) / 10
    ignore = (ids[:, None, None].expand(B, H, W) * 50).clone()
    return img, labels, conf, ignore


@pytest.mark.parametrize(("h", "w"), [(24, 33), (64, 64), (17, 40)])
def test_box_area_is_half_within_rounding(h: int, w: int) -> None:
    boxes = cutmix_boxes(500, h, w, torch.Generator().manual_seed(0))
    y0, y1, x0, x1 = boxes.unbind(1)
    bh, bw = y1 - y0, x1 - x0
    assert ((bw >= w // 2 + 1) & (bw <= w - 1)).all()
    assert ((bh * bw - h * w / 2).abs() <= bw / 2).all()  # height = round(area / width)
    assert (y0 >= 0).all() and (y1 <= h).all() and (x0 >= 0).all() and (x1 <= w).all()
    assert len(set(bw.tolist())) > 1 and len(set(x0.tolist())) > 1  # sizes and positions vary


def test_single_box_is_ints() -> None:
    y0, y1, x0, x1 = cutmix_box(H, W, torch.Generator().manual_seed(1))
    assert all(isinstance(v, int) for v in (y0, y1, x0, x1)) and y0 < y1 and x0 < x1


def test_mixing_is_consistent_across_tensors() -> None:
    img, labels, conf, ignore = _batch()
    boxes = cutmix_boxes(B, H, W, torch.Generator().manual_seed(2))
    m_img, m_labels, m_conf, m_ignore = cutmix(boxes, img, labels, conf, ignore)
    inside = box_masks(boxes, H, W, "cpu")
    for i in range(B):
        nxt = (i + 1) % B
        source = torch.where(inside[i], nxt, i)  # which image each pixel must come from
        assert torch.equal(m_labels[i], source)
        assert torch.equal(m_img[i], source.float().expand(C, H, W))
        assert torch.allclose(m_conf[i], source.float() / 10)
        assert torch.equal(m_ignore[i], source * 50)
        assert inside[i].sum() == (boxes[i, 1] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 2])
    assert torch.equal(labels, _batch()[1])  # inputs untouched


def test_p_zero_is_a_no_op_and_p_one_always_mixes() -> None:
    img, labels, _, ignore = _batch()
    for _ in range(20):
        out, boxes = maybe_cutmix(0.0, img, labels, ignore)
        assert boxes is None and out[0] is img and out[1] is labels and out[2] is ignore
        mixed, boxes = maybe_cutmix(1.0, img, labels, ignore)
        assert boxes is not None and not torch.equal(mixed[1], labels)


def test_global_rng_state_reproduces_boxes() -> None:
    img, labels, _, _ = _batch()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = [maybe_cutmix(0.5, img, labels)[1] for _ in range(6)]
    torch.set_rng_state(state)
    again = [maybe_cutmix(0.5, img, labels)[1] for _ in range(6)]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(first, again))
    assert any(a is None for a in first) and any(a is not None for a in first)


def test_too_narrow_image_refused() -> None:
    with pytest.raises(ValueError, match="3 px"):
        cutmix_boxes(1, 8, 2)
