"""context.context_scores (what chapter 04 measures on e) and ablation.run_grid's probe."""

import functools

import pytest
import torch
from torch import nn

from encnet_lite import ablation
from encnet_lite.context import context_scores


class KindScenes(torch.utils.data.Dataset):
    """Image i has kind i % 3 (channel i % 3 lit) and a mask of class i % 2 (2 classes)."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = torch.zeros(3, 8, 8)
        image[i % 3] = 1.0 + 0.01 * i  # a little spread inside each kind
        return image, torch.full((8, 8), i % 2, dtype=torch.long)

    def scene_kind_index(self, i):
        return i % 3


class MeanModel(nn.Module):
    """e = the channel means; SE logits say "class 0 present, class 1 absent" for all."""

    def __init__(self, se: bool = True):
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        self.se = se

    def forward(self, images):
        out = {"e": self.w * images.mean((2, 3))}
        if self.se:
            out["se"] = torch.tensor([5.0, -5.0]).expand(len(images), 2)
        return out


def test_context_scores_on_a_model_whose_e_is_the_kind():
    val, ref = KindScenes(6), KindScenes(9)
    scores = context_scores(MeanModel(), val, ref)
    assert scores["kind_centroid"] == 1.0
    assert scores["kind_ratio"] > 1000  # kinds far apart, tiny spread within
    # even images (class 0 only): both answers right; odd (class 1 only): both wrong
    assert scores["presence_right"] == pytest.approx(0.5)
    assert scores["presence_images"] == pytest.approx(0.5)
    probs = scores["presence_probs"]
    assert probs.shape == (6, 2) and torch.allclose(probs[:, 0], torch.sigmoid(torch.tensor(5.0)))


def test_context_scores_without_se_branch_and_with_a_blind_e():
    scores = context_scores(MeanModel(se=False), KindScenes(6), KindScenes(6))
    assert set(scores) == {"kind_ratio", "kind_centroid"}
    blind = MeanModel(se=False)
    with torch.no_grad():
        blind.w.zero_()  # e = 0 for every image: no kind can be told apart
    scores = context_scores(blind, KindScenes(6), KindScenes(6))
    assert scores["kind_ratio"] == 0.0
    assert scores["kind_centroid"] == pytest.approx(1 / 3)  # every image in the first kind


def _probe(model, seen):
    seen.append(model.training)
    return {"params": sum(p.numel() for p in model.parameters())}


def test_run_grid_adds_the_probe_of_each_trained_model(tmp_path):
    from encnet_lite import presets

    base = presets.scenes_encnet_tiny(num_train_images=4, num_val_images=2, image_size=32,
                                      batch_size=4, epochs=1, progress=False, threads=1)
    variants = {"se": {"se_loss": True}, "no_se": {"se_loss": False}}
    seen = []
    runs = ablation.run_grid(variants, [0, 1], base, tmp_path, log=None,
                             probe=functools.partial(_probe, seen=seen))
    assert seen == [False] * 4  # called once per run, on the model in eval mode
    for name in variants:
        assert len(runs[name]["params"]) == len(runs[name]["mIoU"]) == 2
    # the SE branch is one linear layer more: the probe saw the two different models
    assert runs["se"]["params"][0] > runs["no_se"]["params"][0]
    assert runs["se"]["params"][0] == runs["se"]["params"][1]
