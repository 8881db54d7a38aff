import torch

from tests.helpers.models import make_models


def bn_state(model, which):
    return {n: b.clone() for n, b in model.classifier.named_buffers() if f".{which}." in n}


def test_perturbed_samples_touch_only_the_aux_bn(smoke_cfg):
    model = make_models(smoke_cfg).student.train()
    v = model.encode(torch.randn(4, 3, 32, 32)).detach()
    main0, aux0 = bn_state(model, "main"), bn_state(model, "aux")
    model.classify(v, n_main=0)  # all perturbed -> aux BN
    assert all(torch.equal(main0[k], b) for k, b in bn_state(model, "main").items())
    assert any(not torch.equal(aux0[k], b) for k, b in bn_state(model, "aux").items())
    aux1 = bn_state(model, "aux")
    model.classify(v, n_main=0, update_stats=False)  # the perturbation search leaves no trace
    assert all(torch.equal(aux1[k], b) for k, b in bn_state(model, "aux").items())


def test_evaluation_uses_only_main_bn_statistics(smoke_cfg):
    model = make_models(smoke_cfg).student
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    ref = model(x).logits
    with torch.no_grad():
        for bn in (model.classifier.bn1.aux, model.classifier.bn2.aux):
            bn.running_mean.fill_(100.0)
            bn.weight.fill_(-7.0)
    assert torch.equal(model(x).logits, ref)
    with torch.no_grad():
        model.classifier.bn1.main.running_mean.fill_(100.0)
    assert not torch.allclose(model(x).logits, ref)
