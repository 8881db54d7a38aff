import math

import torch

from ddfp.metrics import confusion_matrix, iou_per_class, mean_iou


def test_confusion_matrix_and_iou_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = confusion_matrix(pred, target, 3)
    # rows = ground truth, columns = prediction; the 255 pixel is skipped
    assert cm.tolist() == [[1, 1, 0], [0, 3, 0], [1, 0, 1]]
    iou = iou_per_class(cm)
    expected = [1 / (2 + 2 - 1), 3 / (3 + 4 - 3), 1 / (2 + 1 - 1)]
    assert torch.allclose(iou, torch.tensor(expected, dtype=torch.float64))
    assert math.isclose(mean_iou(cm), 100 * sum(expected) / 3)


def test_absent_class_is_not_averaged():
    cm = confusion_matrix(torch.tensor([0, 0]), torch.tensor([0, 0]), 3)
    assert mean_iou(cm) == 100.0


def test_pseudo_label_quality_by_hand():
    from ddfp.metrics import pseudo_label_counts, pseudo_label_quality

    # 1 x 3 classes x 1 x 6 pixels; class 0 is background. Confidence = the top probability.
    probs = torch.tensor([[0.97, 0.02, 0.01],   # confident background, right
                          [0.96, 0.02, 0.02],   # confident background, wrong (gt 1)
                          [0.01, 0.98, 0.01],   # confident class 1, right
                          [0.10, 0.20, 0.70],   # not confident (gt 2)
                          [0.95, 0.03, 0.02],   # exactly at the threshold: not confident (strict, as training)
                          [0.99, 0.005, 0.005]])  # ignored ground truth: counts nowhere
    probs = probs.T.reshape(1, 3, 1, 6)
    gt = torch.tensor([[[0, 1, 1, 2, 0, 255]]])
    counts = pseudo_label_counts(probs, gt, 0.95, background=0)
    q = pseudo_label_quality(counts)
    assert q["confident_share"] == 3 / 5
    assert q["precision"] == 2 / 3
    assert q["fg_coverage"] == 2 / 3  # gt 1, 1, 2: the two gt-1 pixels are confident (one wrongly)
    assert q["bg_share"] == 2 / 3  # of the confident pixels, two are pseudo-labelled background
    # counts add up over batches: the quality of a dataset is that of its summed counts
    assert pseudo_label_quality(counts + counts) == q


def test_pseudo_label_quality_without_confident_pixels_is_nan_not_an_error():
    from ddfp.metrics import pseudo_label_counts, pseudo_label_quality

    probs = torch.full((1, 2, 2, 2), 0.5)
    q = pseudo_label_quality(pseudo_label_counts(probs, torch.zeros(1, 2, 2, dtype=torch.long), 0.95, background=None))
    assert q["confident_share"] == 0.0 and math.isnan(q["precision"]) and math.isnan(q["bg_share"])
    assert q["fg_coverage"] == 0.0  # no background class: every valid pixel is foreground
