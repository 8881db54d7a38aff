"""FixMatch and UniMatch as UniMatch's released fixmatch.py / unimatch.py compute them: each step's loss
and gradients against a reference written out in the released code's own formulas, and the boxes."""

import copy

import pytest
import torch
from torch import nn

from ddfp.data.mixing import box_masks, unimatch_boxes
from ddfp.methods import METHODS, phase_at, train_step
from ddfp.model.deeplab import upsample
from pipeline import params
from tests.helpers.models import make_batch, make_models

THRESH = 0.19  # about the median confidence of the random tiny model: some pixels pass, not all


def released_forward(model, x, need_fp=False):
    """UniMatch's DeepLabV3Plus.forward(x, need_fp) in this model's parts: Dropout2d(0.5) on the
    backbone's low (c1) and high (c4) features, decoded with the clean ones in one batch."""
    c1, c4 = model.backbone(x)
    if need_fp:
        v = model.decode(torch.cat((c1, nn.Dropout2d(0.5)(c1))), torch.cat((c4, nn.Dropout2d(0.5)(c4))))
        return upsample(model.classify(v)[0], x.shape[-2:]).chunk(2)
    return upsample(model.classify(model.decode(c1, c4))[0], x.shape[-2:])


def released_loss(model, batch, views, need_fp):
    """fixmatch.py (views=1) / unimatch.py (views=2), line by line: the mixing images are the batch's
    next images (img_u_w_mix = roll(img_u_w)), their boxes drawn by obtain_cutmix_box's rule."""
    b, s = batch.img_x.shape[0], batch.img_x.shape[-1]
    criterion_l = nn.CrossEntropyLoss(ignore_index=255)
    criterion_u = nn.CrossEntropyLoss(reduction="none")
    ignore_mask = batch.ignore_u
    with torch.no_grad():
        model.eval()
        pred_u_w_mix = model(batch.img_u_w).logits.detach().roll(-1, 0)
        conf_u_w_mix = pred_u_w_mix.softmax(dim=1).max(dim=1)[0]
        mask_u_w_mix = pred_u_w_mix.argmax(dim=1)
    ignore_mask_mix = ignore_mask.roll(-1, 0)
    strong, boxes = [], []
    for img in (batch.img_u_s, batch.img_u_s2)[:views]:
        box = box_masks(unimatch_boxes(b, s), s, s, "cpu").long()
        img = img.clone()
        img[box.unsqueeze(1).expand(img.shape) == 1] = img.roll(-1, 0)[box.unsqueeze(1).expand(img.shape) == 1]
        strong.append(img)
        boxes.append(box)
    model.train()
    if need_fp:
        preds, preds_fp = released_forward(model, torch.cat((batch.img_x, batch.img_u_w)), True)
        pred_u_w_fp = preds_fp[b:]
    else:
        preds = released_forward(model, torch.cat((batch.img_x, batch.img_u_w)))
    pred_x, pred_u_w = preds.split([b, b])
    pred_u_s = model(torch.cat(strong)).logits.chunk(views)
    pred_u_w = pred_u_w.detach()
    conf_u_w = pred_u_w.softmax(dim=1).max(dim=1)[0]
    mask_u_w = pred_u_w.argmax(dim=1)
    loss_x = criterion_l(pred_x, batch.mask_x)
    losses_s = []
    for pred, box in zip(pred_u_s, boxes):
        mask_c, conf_c, ignore_c = mask_u_w.clone(), conf_u_w.clone(), ignore_mask.clone()
        mask_c[box == 1] = mask_u_w_mix[box == 1]
        conf_c[box == 1] = conf_u_w_mix[box == 1]
        ignore_c[box == 1] = ignore_mask_mix[box == 1]
        loss = criterion_u(pred, mask_c) * ((conf_c >= THRESH) & (ignore_c != 255))
        losses_s.append(loss.sum() / (ignore_c != 255).sum().item())
    if not need_fp:
        return (loss_x + losses_s[0]) / 2.0
    loss_fp = criterion_u(pred_u_w_fp, mask_u_w) * ((conf_u_w >= THRESH) & (ignore_mask != 255))
    loss_fp = loss_fp.sum() / (ignore_mask != 255).sum().item()
    return (loss_x + losses_s[0] * 0.25 + losses_s[1] * 0.25 + loss_fp * 0.5) / 2.0


@pytest.mark.parametrize("method,views,need_fp", [("fixmatch", 1, False), ("unimatch", 2, True)])
def test_the_step_equals_the_released_loss_and_gradients(smoke_cfg, method, views, need_fp):
    # model.dropout 0: the released decoder has no dropout of its own, so the RNG draws line up.
    cfg = params.replace(smoke_cfg, {"train.method": method, "train.conf_thresh": THRESH, "model.dropout": 0.0})
    models, batch = make_models(cfg), make_batch(cfg)
    reference = copy.deepcopy(models.student)
    phase = phase_at(cfg.train.epochs - 1, cfg)
    torch.manual_seed(3)
    ours = train_step(models, batch, phase, cfg)
    ours.seg_loss.backward()
    torch.manual_seed(3)
    theirs = released_loss(reference, batch, views, need_fp)
    theirs.backward()
    assert ours.flow_loss is None and 0 < float(ours.logs["confident_ratio"]) < 1  # some pixels pass, not all
    torch.testing.assert_close(ours.seg_loss, theirs, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(models.student.named_parameters(), reference.parameters()):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert float(ours.logs["loss_unsup"]) > 0
    if need_fp:
        assert float(ours.logs["loss_perturb"]) > 0


def test_the_released_loss_reference_is_sensitive(smoke_cfg):
    # The comparison above is not vacuous: another fp weight changes the loss it is held against.
    cfg = params.replace(smoke_cfg, {"train.method": "unimatch", "train.conf_thresh": THRESH, "model.dropout": 0.0})
    models, batch = make_models(cfg), make_batch(cfg)
    torch.manual_seed(3)
    with_fp = released_loss(copy.deepcopy(models.student), batch, 2, True)
    torch.manual_seed(3)
    ours = train_step(models, batch, phase_at(cfg.train.epochs - 1, cfg), params.replace(cfg, {"train.method": "fixmatch"}))
    assert not torch.isclose(with_fp, ours.seg_loss)


def test_unimatch_boxes_follow_the_released_rule():
    size, n = 32, 4000
    boxes = unimatch_boxes(n, size, generator=torch.Generator().manual_seed(0))
    h, w = boxes[:, 1] - boxes[:, 0], boxes[:, 3] - boxes[:, 2]
    mixed = (h * w) > 0
    assert abs(float(mixed.float().mean()) - 0.5) < 0.03  # p = 0.5 per image, not per batch
    area = (h * w)[mixed].double() / size**2
    # int() truncation of sqrt(area / r) and sqrt(area r) can shrink a box below the drawn area only
    assert float(area.max()) <= 0.4 and float(area.min()) >= 0.01 and 0.15 < float(area.mean()) < 0.25
    assert bool((boxes[:, 1] <= size).all() and (boxes[:, 3] <= size).all() and (boxes >= 0).all())
    ratio = (h[mixed].double() / w[mixed].double())
    assert float(ratio.min()) > 0.2 and float(ratio.max()) < 5  # aspect ratio r in [0.3, 1/0.3]: h / w ~ r


def test_the_two_strong_views_get_boxes_of_their_own():
    gen = torch.Generator().manual_seed(1)
    first, second = unimatch_boxes(64, 32, p=1.0, generator=gen), unimatch_boxes(64, 32, p=1.0, generator=gen)
    assert (first != second).any(dim=1).float().mean() > 0.9


def test_the_methods_without_a_teacher_report_and_update_the_training_network(smoke_cfg):
    for method in ("fixmatch", "unimatch"):
        spec = METHODS[method]
        assert spec.reported == "student" and spec.pseudo_labels == "self" and not spec.aux_bn and not spec.fits_flow
    assert METHODS["unimatch"].strong_views == 2 and METHODS["fixmatch"].strong_views == 1
