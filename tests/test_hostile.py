"""Hostile and wrong inputs: poisoned weight caches, traversal ids, bombs, library misuse."""

import os
import pickle

import pytest
import torch
import torchvision

from encnet_lite.models import encnet_resnet50


class _Planted:
    """Unpickling this runs ``os.system``-like code: it creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": _Planted(marker)}, f, protocol=2)


def test_a_poisoned_hub_cache_file_runs_no_code(tmp_path, monkeypatch):
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would win
    cached = tmp_path / "torch" / "hub" / "checkpoints" / url.rsplit("/", 1)[-1]
    marker = tmp_path / "pwned"
    _plant(cached, marker)
    # The planted file must be what the hub would read: never a download instead.
    monkeypatch.setattr(torch.hub, "download_url_to_file", None)
    with pytest.raises(RuntimeError) as info:
        encnet_resnet50(59, pretrained_backbone=True)
    assert not marker.exists()
    message = str(info.value)
    assert str(cached) in message and "Delete it" in message
    # The same pickle given as weights_path runs nothing either.
    with pytest.raises(RuntimeError, match="not a plain state dict"):
        encnet_resnet50(59, weights_path=cached)
    assert not marker.exists()
    assert os.path.getsize(cached) > 0  # the file is left for the user to inspect
