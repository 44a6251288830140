"""ImageNet weights through smp load from a local Hugging Face cache: the real loading code, no download."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from safetensors.torch import save_file
from segmentation_models_pytorch.encoders import encoders as smp_encoders
from segmentation_models_pytorch.encoders import get_encoder

from cxrnet.models import create_model


def test_pretrained_weights_load_from_a_local_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # smp fetches "imagenet" weights with hf_hub_download(repo_id, revision=<commit>); a filled cache is
    # what a user with internet has after the first run, and what an offline cluster node can be given.
    settings = smp_encoders["resnet18"]["pretrained_settings"]["imagenet"]
    owner, name = settings["repo_id"].split("/")
    snapshot = tmp_path / f"models--{owner}--{name}" / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    torch.manual_seed(3)
    reference = {k: v.contiguous() for k, v in get_encoder("resnet18", in_channels=3).state_dict().items()}
    save_file(reference, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text("{}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    net = create_model(classes=["normal", "covid19"], encoder="resnet18", pretrained=True)
    for encoder in (net.encoder, net.classifier_encoder):
        torch.testing.assert_close(encoder.layer4[1].conv2.weight, reference["layer4.1.conv2.weight"])
        # the RGB stem is folded into one grayscale channel, as smp does for in_channels=1
        torch.testing.assert_close(encoder.conv1.weight, reference["conv1.weight"].sum(1, keepdim=True))
