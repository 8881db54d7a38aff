import torch
from torch import nn

from ddfp.methods import phase_at
from ddfp.teacher import ema_decay, hand_off, make_teacher, update_teacher
from pipeline import params
from pipeline.train.learner import Learner
from tests.helpers.models import make_batch


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))


def test_teacher_is_a_real_ema_and_never_aliases_the_student():
    student = net()
    teacher = make_teacher(student)
    for s, t in zip(student.parameters(), teacher.parameters()):
        assert s.data_ptr() != t.data_ptr()
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    expected = [p.detach().clone() for p in teacher.parameters()]
    for it in range(5):
        opt.zero_grad()
        student(torch.randn(8, 4)).pow(2).sum().backward()
        opt.step()
        decay = ema_decay(it + 3, 0, 0.999)  # 0.75, 0.8, ...: not the hand-off
        update_teacher(teacher, student, decay, "ema")
        expected = [decay * e + (1 - decay) * s.detach() for e, s in zip(expected, student.parameters())]
    for t, e, s in zip(teacher.parameters(), expected, student.parameters()):
        assert torch.allclose(t, e, atol=1e-6)
        assert not torch.allclose(t, s)
    before = [s.detach().clone() for s in student.parameters()]
    with torch.no_grad():
        for t in teacher.parameters():
            t.add_(1.0)
    assert all(torch.equal(s, b) for s, b in zip(student.parameters(), before))


def test_decay_starts_at_handoff_and_is_capped():
    assert ema_decay(100, 100, 0.999) == 0.0
    assert ema_decay(101, 100, 0.999) == 0.5
    assert ema_decay(10**6, 0, 0.999) == 0.999


def test_student_bn_mode_copies_weights_keeps_own_buffers():
    student, other = net(), net()
    teacher = make_teacher(other)
    with torch.no_grad():
        student[1].running_mean.fill_(3.0)
    update_teacher(teacher, student, 0.999, "student_bn")
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))
    assert not torch.equal(teacher[1].running_mean, student[1].running_mean)
    assert teacher[0].weight.data_ptr() != student[0].weight.data_ptr()


def test_hand_off_copies_parameters_and_buffers():
    student, other = net(), net()
    with torch.no_grad():
        student[0].weight.add_(1.0)
        student[1].running_mean.fill_(3.0)
        student[1].num_batches_tracked.fill_(7)
    teacher = make_teacher(other)
    hand_off(teacher, student)
    for (name, t), s in zip(teacher.state_dict().items(), student.state_dict().values()):
        assert torch.equal(t, s), name
    assert teacher[0].weight.data_ptr() != student[0].weight.data_ptr()
    assert not any(p.requires_grad for p in teacher.parameters())


def test_first_semi_iteration_pseudo_labels_with_the_trained_student(smoke_cfg):
    # The supervised epochs train the student; the teacher built from the initial network must not
    # pseudo-label the first semi-supervised batch.
    cfg = params.replace(smoke_cfg, {"train.max_iters": 2})
    tr = Learner(cfg, torch.device("cpu"), cfg.train.max_iters)
    t0 = cfg.train.sup_only_epochs * tr.iters_per_epoch
    for it in range(t0):
        tr.run_iteration(make_batch(cfg, seed=it), phase_at(0, cfg), it, diagnostics=False)
    seen = {}

    def compare(module, args):
        student = tr.models.student.state_dict()
        seen["differs"] = [k for k, v in module.state_dict().items() if not torch.equal(v, student[k])]

    tr.models.teacher.register_forward_pre_hook(compare)
    tr.run_iteration(make_batch(cfg, seed=t0), phase_at(cfg.train.sup_only_epochs, cfg), t0, diagnostics=False)
    assert seen["differs"] == []
