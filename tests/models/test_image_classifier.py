"""timm backbones by name, and the pixel normalisation inside the model."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from modelcycle.models.image_classifier import (
    BackboneError,
    PretrainedWeightsError,
    check_image_size,
    check_timm_model,
    hub_reachable,
    normalizer_for,
    timm_backbone,
)


def test_any_timm_name_with_a_new_head_and_a_clear_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO):
        model = timm_backbone(num_classes=7, name="test_resnet")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert "test_resnet: random initialisation (model.pretrained=false" in caplog.text


def test_pretrained_weights_offline_say_how_to_go_on(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm

    def offline(*args: Any, pretrained: bool = False, **kwargs: Any) -> torch.nn.Module:
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(PretrainedWeightsError, match=r"'resnet18'.*model.pretrained=false"):
        timm_backbone(num_classes=3, name="resnet18", pretrained=True)


def test_a_backbone_that_takes_one_size_is_named_with_the_way_out() -> None:
    vit = timm_backbone(num_classes=3, name="vit_tiny_patch16_224")
    with pytest.raises(
        BackboneError,
        match=r"32×32 images \(it is built for 224×224\).*"
        r"data.image_size",
    ):
        check_image_size(vit, 32)
    check_image_size(vit, 224)
    resnet = timm_backbone(num_classes=3, name="resnet10t").train()
    check_image_size(resnet, 32)
    assert resnet.training  # left in the mode it came in


def test_offline_pretrained_weights_come_from_the_local_cache_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Offline, the hub's client retried each weights file for about 25 s before failing,
    # even for weights it could have read from its cache.
    import safetensors.torch
    import timm
    from huggingface_hub import constants

    def no_dns(*args: Any, **kwargs: Any) -> Any:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    assert not hub_reachable()
    with pytest.raises(PretrainedWeightsError, match=r"huggingface.co does not resolve"):
        timm_backbone(num_classes=3, name="test_resnet", pretrained=True)
    # the config check says so before any data is read (the build came after the decoding)
    wanted = {"name": "test_resnet", "pretrained": True}
    with pytest.raises(ValueError, match=r"pretrained=true: huggingface.co does not resolve"):
        check_timm_model(wanted)
    check_timm_model(wanted | {"pretrained": False})

    # The same weights, put where the hub's client caches them, load without the network.
    trained = timm.create_model("test_resnet", pretrained=False)
    repo = tmp_path / "models--timm--test_resnet.r160_in1k"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    weights = {k: v.contiguous() for k, v in trained.state_dict().items()}
    safetensors.torch.save_file(weights, repo / "snapshots" / commit / "model.safetensors")
    check_timm_model(wanted)  # in the cache: nothing to say
    with caplog.at_level(logging.INFO):
        model = timm_backbone(num_classes=3, name="test_resnet", pretrained=True)
    assert "test_resnet: loading pretrained weights from the local Hugging Face cache" in (
        caplog.text
    )
    assert "test_resnet: pretrained weights loaded, new 3-class head" in caplog.text
    first = next(k for k in weights if k.endswith("weight"))
    assert torch.equal(model.state_dict()[first], weights[first])
    assert model.eval()(torch.zeros(1, 3, 32, 32)).shape == (1, 3)  # a new 3-class head
    assert not constants.HF_HUB_OFFLINE  # offline only while loading


def test_normalisation_uses_timms_mean_and_std_on_raw_pixels() -> None:
    backbone = timm_backbone(num_classes=2, name="resnet10t")  # ImageNet mean/std
    normalize = normalizer_for(backbone)
    pixels = torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)
    out = normalize(pixels)
    assert out.shape == (1, 3, 4, 4)
    # ImageNet statistics: (1 - 0.485) / 0.229 for the red channel
    assert float(out[0, 0, 0, 0]) == pytest.approx((1 - 0.485) / 0.229, rel=1e-5)
