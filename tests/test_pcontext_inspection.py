"""What chapter 07 computes inside a trained EncNet: collected outputs, shared codewords,
image groups, and the figures drawn from them."""

import matplotlib
import numpy as np
import pytest
import torch

from encnet_lite import viz
from encnet_lite.context import collect_context, dominant_groups, shared_favourites

matplotlib.use("Agg")


class Sized(torch.utils.data.Dataset):
    """Images of different sizes with labels 0..2 (PASCAL-Context-like: no scene kinds)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.items = []
        for h, w in ((40, 56), (72, 64), (32, 32)):
            mask = torch.randint(0, 3, (h, w), generator=gen)
            self.items.append((torch.randn(3, h, w, generator=gen), mask))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_collect_context_crops_and_returns_assignments_images_and_masks():
    from encnet_lite.data import CenterCrop
    from encnet_lite.models import encnet_tiny

    torch.manual_seed(0)
    ds = Sized()
    model = encnet_tiny(num_classes=3, num_codes=4).train()
    got = collect_context(model, ds, keys=("image", "mask", "assign", "gamma", "nope"),
                          batch_size=2, crop_size=48)
    assert model.training  # mode restored
    assert set(got) == {"image", "mask", "assign", "gamma"}  # no "kind": no scene kinds
    assert got["image"].shape == (3, 3, 48, 48) and got["mask"].shape == (3, 48, 48)
    assert got["mask"].dtype == torch.int64 and got["assign"].shape == (3, 6, 6, 4)
    crop = CenterCrop(48)
    for i in range(3):  # each image centre-cropped (the small one padded with 255)
        image, mask = crop(*ds[i])
        torch.testing.assert_close(got["image"][i], image)
        assert torch.equal(got["mask"][i], mask)
    assert int((got["mask"][2] == 255).sum()) == 48 * 48 - 32 * 32
    model.eval()
    with torch.no_grad():
        direct = model.assignments(got["image"][:2])
    torch.testing.assert_close(got["assign"][:2], direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["assign"].sum(-1), torch.ones(3, 6, 6))


def test_shared_favourites_groups_classes_by_their_favourite_codeword():
    usage = torch.tensor([[0.1, 0.7, 0.2],   # class 0: codeword 1
                          [0.0, 0.0, 0.0],   # class 1: absent
                          [0.2, 0.5, 0.3],   # class 2: codeword 1
                          [0.6, 0.1, 0.3],   # class 3: codeword 0
                          [0.1, 0.2, 0.7],   # class 4: codeword 2
                          [0.1, 0.3, 0.6],   # class 5: codeword 2
                          [0.2, 0.6, 0.2]])  # class 6: codeword 1
    assert shared_favourites(usage) == [(1, [0, 2, 6]), (2, [4, 5])]
    assert shared_favourites(torch.eye(3)) == []


def test_dominant_groups_keeps_the_largest_groups():
    masks = torch.full((6, 4, 4), 255)
    masks[0, :3], masks[1], masks[2, 0] = 2, 2, 1  # images 0, 1: class 2; image 2: class 1
    masks[3, :, :3], masks[3, :, 3] = 0, 1  # class 0 (12 px) beats class 1 (4 px)
    masks[4, 0, 0] = 0  # class 0; image 5: no labelled pixel
    assert dominant_groups(masks, 3).tolist() == [2, 2, 1, 0, 0, -1]
    # two groups kept: the two of two images; the class-1 image is left out
    assert dominant_groups(masks, 3, most=2).tolist() == [2, 2, -1, 0, 0, -1]


def test_plot_winner_maps_one_panel_per_layer():
    a = torch.zeros(4, 4, 3)
    a[..., 0], a[:2, :, 0], a[:2, :, 2] = 1.0, 0.0, 1.0  # top rows: codeword 2, bottom: 0
    one = torch.zeros(4, 4, 3)
    one[..., 1] = 1.0
    palette = np.array([[0, 0, 0], [255, 0, 0]], dtype=np.uint8)
    fig = viz.plot_winner_maps(torch.zeros(3, 32, 32), torch.zeros(32, 32, dtype=torch.long),
                               palette, {"shared_kmeans": a, "official": one})
    assert len(fig.axes) == 4
    assert fig.axes[2].get_title() == "shared_kmeans: 2 of K=3 win"
    assert fig.axes[3].get_title() == "official: 1 of K=3 win"
    np.testing.assert_array_equal(fig.axes[2].images[0].get_array(), a.argmax(-1).numpy())
    fig = viz.plot_winner_maps(torch.zeros(3, 32, 32), torch.zeros(32, 32, dtype=torch.long),
                               palette, {"official": one})
    assert len(fig.axes) == 3  # the fourth cell of the 2 x 2 grid is removed, not left empty
    assert fig.get_figwidth() <= viz.COLUMN_INCHES


def test_plot_codeword_health_leaves_out_a_key_no_run_has():
    runs = {"shared": [{"epoch": 1, "live_codewords": 20.0}, {"epoch": 2, "live_codewords": 24.0}]}
    fig = viz.plot_codeword_health(runs, num_codes=32)
    assert len(fig.axes) == 1  # no empty "largest-scale share" panel
    assert [list(ln.get_ydata()) for ln in fig.axes[0].get_lines()][0] == [20.0, 24.0]


def test_plot_class_codewords_stacks_both_matrices():
    usage = torch.tensor([[0.7, 0.3], [0.0, 0.0], [0.4, 0.6]])
    fig = viz.plot_class_codewords(usage, ["sky", "none", "boat"])
    heat = [ax for ax in fig.axes if ax.images and ax.get_yticklabels()]
    assert len(heat) == 2
    assert [t.get_text() for t in heat[0].get_yticklabels()] == ["sky", "boat"]
    np.testing.assert_allclose(heat[0].images[0].get_array(), usage[[0, 2]].numpy())
    np.testing.assert_allclose(heat[1].images[0].get_array(),
                               (usage[[0, 2]] - usage[[0, 2]].mean(0)).numpy())
    assert heat[0].get_position().y0 > heat[1].get_position().y0  # stacked, not side by side


def test_codeword_explorer_starts_on_the_given_view():
    pytest.importorskip("ipywidgets")
    images = torch.zeros(3, 3, 16, 16)
    masks = torch.zeros(3, 16, 16, dtype=torch.long)
    a = torch.full((3, 2, 2, 4), 0.25)
    palette = np.array([[0, 0, 0]], dtype=np.uint8)
    box = viz.codeword_explorer(images, masks, a, palette, image=2, codeword=3, opacity=0.5)
    values = {w.description: w.value for w in box.widget.children
              if hasattr(w, "description") and w.description}
    assert values == {"image": 2, "codeword": 3, "opacity": 0.5}
