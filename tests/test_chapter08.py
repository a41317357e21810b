"""Chapter 08 (the official EncNet, opened up): the helpers of ``encnet_lite.pretrained`` and
its figures, and the chapter in FULL mode rehearsed on a CPU, offline, with a fabricated
PASCAL-Context and a weights file fabricated in the official zoo's format."""

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from encnet_lite import inference, viz
from encnet_lite import weights as W
from encnet_lite.data import voc_palette
from encnet_lite.metrics import ConfusionMatrix
from encnet_lite.models import build_published, encnet_tiny, fcn_tiny, load_weights
from encnet_lite.pretrained import (
    catalogue_rows,
    conversion_report,
    look_inside,
    official_views,
    presence_rows,
    score_rows,
)

ROOT = Path(__file__).resolve().parents[1]
CHAPTER = ROOT / "book" / "08_pretrained.ipynb"
PC50 = "EncNet_ResNet50s_PContext"


def fabricate_official(path, name=PC50, counters=True, seed=0):
    """A random model of ``name``'s architecture written as the zoo's zip, with the ImageNet
    classifier the zoo's files carry; ``counters=False``: without the BN update counters,
    as files saved before 2018. Returns ``(path, published state)``."""
    entry = W.get_entry(name)
    torch.manual_seed(seed)
    state = W.export_state_dict(build_published(entry), entry)
    if not counters:
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["pretrained.fc.weight"] = torch.randn(1000, 2048)
    state["pretrained.fc.bias"] = torch.randn(1000)
    return W.save_published(state, entry, path), state


@pytest.fixture(scope="module")
def pc50_file(tmp_path_factory):
    return fabricate_official(tmp_path_factory.mktemp("pc50") / "pc50.zip", counters=False)


# ---------------------------------------------------------------------------- the catalogue


def test_catalogue_rows_give_each_entry_its_published_scores():
    rows = catalogue_rows()
    assert [r[0] for r in rows] == [e.name for e in W.CATALOGUE.values()]
    entry = W.get_entry(PC50)
    name, dataset, classes, scores, how = rows[[r[0] for r in rows].index(PC50)]
    (score,) = entry.scores
    assert (dataset, classes) == ("pcontext", 59)
    assert scores == "51.0 / 79.2"  # the published percent (the Score holds fractions)
    assert how == "official ms + flip" and "flip" in score.protocol
    mmseg = [e for e in W.CATALOGUE.values() if e.source == "mmseg"][0]
    (row,) = catalogue_rows([mmseg])
    assert row[3] == "; ".join(f"{100 * s.mIoU:.2f}" for s in mmseg.scores)  # no pixAcc
    assert row[4] == "mmseg ss; ms + flip"


# ---------------------------------------------------------------------------- conversion


def test_conversion_report_counts_renamed_dropped_filled_and_identical(pc50_file):
    path, state = pc50_file
    entry = W.get_entry(PC50)
    model = load_weights(PC50, file=path, verify=False)
    published = W.read_state_dict(path)
    report = conversion_report(published, model, entry)
    loaded = len(state) - 2  # all but the ImageNet classifier
    assert report.keys == len(state)
    assert report.dropped == ("pretrained.fc.bias", "pretrained.fc.weight")
    counters = [k for k in model.state_dict() if k.endswith("num_batches_tracked")]
    assert counters and sorted(report.filled) == sorted(counters)
    assert (report.renamed, report.kept) == (loaded, 0)  # every official name changes
    assert report.identical == loaded and report.differing == ()
    assert sum(n for _, _, n, _ in report.by_rule) == loaded
    first = {old: key for old, _, _, key in report.by_rule}
    assert first["pretrained."] == next(k for k in state if k.startswith("pretrained."))
    assert all(key.startswith(old) for old, _, _, key in report.by_rule)
    # One value changed by the smallest step, one dtype changed: both are named.
    codewords = "head.encmodule.encoding.3.codewords"
    tampered = dict(published)
    tampered[codewords] = published[codewords].clone()
    tampered[codewords].view(-1)[0] = torch.nextafter(tampered[codewords].view(-1)[0],
                                                      torch.tensor(1.0))
    tampered["head.conv6.1.bias"] = published["head.conv6.1.bias"].double()
    report = conversion_report(tampered, model, entry)
    assert set(report.differing) == {codewords, "head.conv6.1.bias"}
    assert report.identical == loaded - 2


# ---------------------------------------------------------------------------- the protocol


class CountingModel(nn.Module):
    """Class scores from a 1x1 conv; records the size of every input it is given."""

    def __init__(self, classes=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape[-2:]))
        return {"main": self.conv(x)}


@pytest.mark.parametrize("hw", [(37, 50), (50, 37), (64, 64), (12, 90)])
def test_official_views_are_the_windows_predict_official_runs(hw):
    base, crop = 64, 48
    views = official_views(*hw, base_size=base, crop_size=crop)
    model = CountingModel().eval()
    inference.predict_official(model, torch.randn(1, 3, *hw), 3, flip=False,
                               base_size=base, crop_size=crop)
    assert len(model.sizes) == sum(v.windows for v in views)
    assert set(model.sizes) == {(crop, crop)}  # every window is padded to the crop
    for v, s in zip(views, inference.MS_SCALES):
        assert v.scale == s
        assert (v.height, v.width) == inference.official_view_size(*hw, base, s)
        assert max(v.height, v.width) == int(np.ceil(base * s))
        assert v.rows[0][0] == 0 and v.rows[-1][1] == v.height and v.cols[-1][1] == v.width
        spans = [b - a for a, b in v.rows + v.cols]
        assert v.padded == (min(spans) < crop)
    assert views[0].windows == 1 and views[0].padded  # 32 px long side: one padded view


# ---------------------------------------------------------------------------- scores


def confusion_with(classes, present, seed=0):
    """A ConfusionMatrix over ``classes`` where only the ``present`` ids occur."""
    gen = torch.Generator().manual_seed(seed)
    cm = ConfusionMatrix(classes)
    target = torch.tensor(present)[torch.randint(len(present), (40, 40), generator=gen)]
    noise = torch.rand(40, 40, generator=gen) < 0.3
    pred = torch.where(noise, torch.tensor(present[0]), target)
    return cm.update(pred, target)


def result_of(cm, images=3):
    return {**cm.compute(absent_as_zero=True), "confusion": cm.counts().tolist(),
            "num_images": images}


def test_score_rows_set_ours_beside_the_published_and_show_the_subset_effect():
    entry = W.get_entry(PC50)
    cm = confusion_with(59, [3, 17, 40])
    rows = score_rows(result_of(cm), entry)
    official, default = cm.compute(absent_as_zero=True), cm.compute()
    assert rows[0] == ("this library, 3 images", f"{100 * official['pixAcc']:.1f}",
                       f"{100 * official['mIoU']:.1f}",
                       "all 59 classes, an absent one counting 0")
    assert rows[1][2] == f"{100 * default['mIoU']:.1f}" and "the 3 classes" in rows[1][3]
    assert float(rows[1][2]) > float(rows[0][2])  # the official mean counts 56 zeros
    (score,) = entry.scores
    assert rows[2][1:3] == ("79.2", "51.0")  # as published
    # Every class occurs: the two means agree, and only the official one is shown.
    entry19 = dataclasses.replace(entry, dataset="cityscapes")
    everything = confusion_with(19, list(range(19)))
    rows = score_rows(result_of(everything), entry19)
    assert [r[0] for r in rows] == ["this library, 3 images", rows[1][0]]
    assert rows[1][0].startswith("published")
    assert everything.compute() == everything.compute(absent_as_zero=True)


# ---------------------------------------------------------------------------- inside


@pytest.mark.numerics
def test_look_inside_keeps_what_the_model_computes_per_image():
    torch.manual_seed(0)
    model = encnet_tiny(num_classes=5, num_codes=8).eval()
    images = [torch.randn(3, 40, 56), torch.randn(3, 64, 32)]
    inside = look_inside(model, images)
    assert [tuple(a.shape) for a in inside.assignments] == [(5, 7, 8), (8, 4, 8)]
    for i, image in enumerate(images):
        with torch.no_grad():
            out = model(image[None])
            expected = model.assignments(image[None])[0]
        torch.testing.assert_close(inside.assignments[i], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(inside.gamma[i], out["gamma"][0], rtol=0, atol=1e-6)
        torch.testing.assert_close(inside.se[i], out["se"][0], rtol=0, atol=1e-6)
    torch.testing.assert_close(inside.assignments[1].sum(-1), torch.ones(8, 4))
    module = model.head.encode
    assert not module._forward_pre_hooks  # the hook is removed
    with pytest.raises(ValueError, match="SE branch"):
        look_inside(fcn_tiny(num_classes=5).eval(), images)


def test_presence_rows_compare_the_se_top_classes_with_the_labels():
    classes = ["sky", "tree", "car", "road", "dog"]
    se = torch.tensor([[5.0, 4.0, -3.0, 2.0, -1.0], [-5.0, -4.0, 3.0, -2.0, 6.0]])
    masks = [torch.tensor([[0, 1], [255, 1]]), torch.tensor([[2, 2, 3]])]
    rows = presence_rows(se, masks, classes, top=2)
    p = torch.sigmoid(se)
    assert rows[0] == (0, "sky, tree", f"sky {p[0, 0]:.2f}, tree {p[0, 1]:.2f}", "2 of 2")
    assert rows[1] == (1, "car, road", f"dog {p[1, 4]:.2f}, car {p[1, 2]:.2f}", "1 of 2")


# ---------------------------------------------------------------------------- figures


def test_figures_fit_the_text_column():
    views = official_views(375, 500)
    fig = viz.plot_official_views(views, (375, 500))
    assert fig.get_size_inches()[0] <= 7.0 and len(fig.axes) == 6
    assert min(t.get_fontsize() for ax in fig.axes for t in ax.get_xticklabels()) >= 9
    torch.manual_seed(0)
    images = [torch.randn(3, 40, 56), torch.randn(3, 24, 24)]
    assign = [torch.softmax(torch.randn(5, 7, 8), -1), torch.softmax(torch.randn(3, 3, 8), -1)]
    masks = [torch.zeros(40, 56, dtype=torch.long), torch.full((24, 24), 255)]
    fig = viz.plot_codeword_winners(images, assign, masks, voc_palette(3), code=2)
    assert fig.get_size_inches()[0] <= 7.0 and len(fig.axes) == 2 * 4 + 1  # + colour bar
    rgb = np.zeros((30, 40, 3), np.uint8)
    labels = np.repeat(np.arange(4, dtype=np.uint8), 300).reshape(30, 40)
    fig = viz.plot_segmentation(rgb, labels, ["a", "b", "c", "d", "e"], voc_palette(5))
    assert fig.get_size_inches()[0] <= 7.0
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "c", "d"]


# ---------------------------------------------------------------------------- the rehearsal


@pytest.mark.slow
def test_rehearsal_chapter_08_full_mode_on_fabricated_data_and_weights(tmp_path, monkeypatch):
    from PIL import Image
    from test_rehearsal import execute_chapter, outputs_text

    from encnet_lite.data import miniature
    from encnet_lite.data.prepare_pcontext import prepare_pcontext

    upstream = tmp_path / "upstream"
    remotes = miniature.make_pcontext_miniature(upstream, n_train=1, n_val=2)
    data_root = tmp_path / "data" / "pcontext"
    prepare_pcontext(data_root, download_dir=upstream, skip_download=True, remotes=remotes,
                     progress=False)
    prepared = (data_root / "prepared.json").read_text()
    weights, state = fabricate_official(tmp_path / "by-hand.zip", counters=False, seed=1)
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), np.uint8)).save(photo)
    cache, work = tmp_path / "cache", tmp_path / "work"
    work.mkdir()
    for key, value in {"ENCNET_MODE": "full", "ENCNET_TINY": "1", "OMP_NUM_THREADS": "1",
                       "MKL_NUM_THREADS": "1", "ENCNET_PCONTEXT_ROOT": str(data_root),
                       "ENCNET_WEIGHTS_FILE": str(weights), "ENCNET_WEIGHTS_VERIFY": "0",
                       "ENCNET_WEIGHTS_DIR": str(cache), "ENCNET_PHOTO": str(photo),
                       "ENCNET_WEIGHTS_URL": "http://127.0.0.1:9/nothing-here"}.items():
        monkeypatch.setenv(key, value)
    nb = execute_chapter(CHAPTER, work)
    text = outputs_text(nb) + "\n".join(  # the printed text and the Markdown tables
        o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))

    assert "FULL mode" in text and "RANDOM WEIGHTS" not in text and "verified: False" in text
    counters = sum(k.endswith("num_batches_tracked") for k in build_published(PC50, "meta")
                   .state_dict())
    assert f"{len(state)} tensors in the file: {len(state) - 2} loaded under a new name" in text
    assert "dropped, known to be unused: pretrained.fc.bias, pretrained.fc.weight" in text
    assert f"set to 0: {counters} BatchNorm counters" in text
    assert f"bit-identical under the new name: {len(state) - 2} of {len(state) - 2}" in text
    assert "36 forward passes of 480 × 480" in text  # the protocol figure's real sizes
    assert "2 images in" in text and "base size 64, crop 48" in text  # the tiny sizes
    assert "| this library, 2 images |" in text and "| published (PyTorch-Encoding docs) |" in text
    assert "trained official model, 2 val images:" in text and "-> it " in text
    assert "SE: top 4, P(present)" in text and "of pixels" in text
    figures = sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
    assert figures == 4  # views, codeword maps, gates, the photo
    # Written: the run folder under the working folder only; no download, nothing cached.
    assert {p.name for p in work.iterdir()} == {"runs"}
    assert list((work / "runs" / "ch08_official").iterdir()) == []  # the partial is removed
    assert not cache.exists()
    assert (data_root / "prepared.json").read_text() == prepared
    assert os.environ["ENCNET_MODE"] == "full"
