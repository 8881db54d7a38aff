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
