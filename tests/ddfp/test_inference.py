import torch
from torch import nn

from ddfp.config import EvalProtocol
from ddfp.inference import _window_starts, predict
from ddfp.model.deeplab import SegOutput


class Oracle(nn.Module):
    """Logits that say 'class = x coordinate parity of the whole image', read from channel 0 of the
    input: any correct crop/pad/stitch bookkeeping returns the input's map exactly."""

    def forward(self, x):
        labels = x[:, 0].round().long().clamp(0, 2)
        return SegOutput(nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).float() * 10, x)


def image(h, w):
    img = torch.zeros(1, 3, h, w)
    img[:, 0] = (torch.arange(w)[None, :] // 5 % 3).float().expand(h, w)
    return img


def test_whole_image_padding_is_cut_away():
    img = image(37, 53)
    pred = predict(Oracle(), img, EvalProtocol("whole", 64, 2 / 3, 3))
    assert pred.shape == (1, 37, 53) and torch.equal(pred[0], img[0, 0].long())


def test_sliding_windows_cover_and_stitch():
    img = image(70, 130)
    pred = predict(Oracle(), img, EvalProtocol("sliding", 48, 2 / 3, 3))
    assert torch.equal(pred[0], img[0, 0].long())
    starts = _window_starts(130, 48, 32)
    assert starts[0] == 0 and starts[-1] == 130 - 48 and all(b - a <= 32 for a, b in zip(starts, starts[1:]))


def test_whole_image_padding_is_black_before_normalisation():
    # The authors pad the RGB image with 0 (black) and normalise after: the border the model sees is
    # (0 - mean) / std per channel, not the normalised 0 (the mean colour).
    from ddfp.data.spec import IMAGENET_MEAN, IMAGENET_STD
    from ddfp.inference import predict_whole

    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(x)
            return SegOutput(torch.zeros(x.shape[0], 2, *x.shape[-2:]), x)

    img = torch.randn(1, 3, 10, 20)
    predict_whole(Spy(), img, 32)
    padded = seen[0]
    black = torch.tensor([-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert padded.shape == (1, 3, 32, 32)
    assert torch.allclose(padded[0, :, 0, 0], black) and torch.allclose(padded[0, :, -1, -1], black)
    assert torch.equal(padded[..., 11:21, 6:26], img)  # centred
