"""pipeline.stages.weights: MobileNetV2 from the installed package with no network; pinned hashes enforced."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest
import requests
import torch
import torchvision

import pipeline.stages.weights as weights
from pipeline.fetch import ChecksumError
from pipeline.params import load, replace
from tests.helpers.http_server import FileServer


@pytest.fixture
def no_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the weights stage made a network request")

    monkeypatch.setattr(requests.Session, "request", refuse)


def test_mobilenet_v2_offline_and_loadable(tmp_path: Path, no_network) -> None:
    path = weights.run_weights(load(profile="demo"), tmp_path / "w")
    assert path == tmp_path / "w" / "mobilenet_v2.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = torchvision.models.mobilenet_v2()
    features = {k.removeprefix("features.") for k in state if k.startswith("features.")}
    assert features == set(model.features.state_dict())
    model.load_state_dict(state)  # strict: the very file torchvision publishes
    assert weights.run_weights(load(profile="demo"), tmp_path / "w") == path  # verified, kept


def test_sha_mismatch_is_an_error_and_writes_nothing(tmp_path: Path, monkeypatch, no_network) -> None:
    pinned = weights.TORCHVISION["mobilenet_v2"]
    monkeypatch.setitem(weights.TORCHVISION, "mobilenet_v2", dataclasses.replace(pinned, sha256="0" * 64))
    with pytest.raises(ChecksumError) as err:
        weights.run_weights(load(profile="demo"), tmp_path / "w")
    assert "mobilenet_v2.pth" in str(err.value) and "0" * 64 in str(err.value) and pinned.sha256 in str(err.value)
    assert list((tmp_path / "w").iterdir()) == []


def test_not_pretrained_writes_an_empty_marker(tmp_path: Path) -> None:
    marker = weights.run_weights(replace(load(profile="demo"), {"model.pretrained": False}), tmp_path / "w")
    assert marker.name == weights.NO_WEIGHTS and marker.read_bytes() == b""


def test_resnet_comes_through_the_mirror(tmp_path: Path, monkeypatch) -> None:
    srv = FileServer(tmp_path / "served").start()
    try:
        fake = srv.root / "models" / "resnet50-0676ba61.pth"
        fake.parent.mkdir(parents=True)
        fake.write_bytes(b"resnet bytes")
        digest = hashlib.sha256(fake.read_bytes()).hexdigest()
        pinned = dataclasses.replace(weights.TORCHVISION["resnet50"], sha256=digest)
        monkeypatch.setitem(weights.TORCHVISION, "resnet50", pinned)
        cfg = replace(load(profile="pascal"), {"model.backbone": "resnet50", "download.mirror": srv.base})
        path = weights.run_weights(cfg, tmp_path / "w")
    finally:
        srv.stop()
    assert path.read_bytes() == b"resnet bytes"
    assert srv.requests[-1].path == "/models/resnet50-0676ba61.pth"


@pytest.mark.parametrize("backbone", sorted(weights.TORCHVISION))
def test_pinned_digest_matches_torchvision_file_name(backbone: str) -> None:
    entry = weights.TORCHVISION[backbone]
    tag = entry.url.rsplit("-", 1)[1].removesuffix(".pth")
    assert len(entry.sha256) == 64 and entry.sha256.startswith(tag)
    assert entry.url == getattr(torchvision.models, _enum(backbone)).IMAGENET1K_V1.url


def _enum(backbone: str) -> str:
    names = {"resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights", "mobilenet_v2": "MobileNet_V2_Weights"}
    return names[backbone]
