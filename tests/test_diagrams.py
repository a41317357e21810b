"""The architecture and Context Encoding Module diagrams: shapes traced from the model."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from encnet_lite import models  # noqa: E402
from encnet_lite.viz import diagrams  # noqa: E402


@pytest.fixture(scope="module")
def resnet_geo():
    return diagrams.default_geometry()


def _texts(fig) -> str:
    return "\n".join([ax.get_title() for ax in fig.axes]
                     + [t.get_text() for ax in fig.axes for t in ax.texts])


def _gids(fig) -> set:
    return {p.get_gid() for ax in fig.axes for p in ax.patches if p.get_gid()}


def test_resnet50_geometry_is_the_papers(resnet_geo):
    g = resnet_geo
    assert (g["stem"]["channels"], g["stem"]["stride"], g["stem"]["hw"]) == (64, 4, 120)
    want = {1: (256, 4, 120, 1), 2: (512, 8, 60, 1), 3: (1024, 8, 60, 2), 4: (2048, 8, 60, 4)}
    for i, (c, s, hw, d) in want.items():
        b = g[f"stage{i}"]
        assert (b["channels"], b["stride"], b["hw"], b["dilation"]) == (c, s, hw, d), i
    assert g["head_conv"] == {"channels": 512, "stride": 8, "hw": 60}
    assert g["codes"] == {"num_codes": 32, "channels": 512}
    assert g["e"]["channels"] == g["gamma"]["channels"] == 512
    assert g["se"] == {"classes": 59}
    assert (g["logits"]["channels"], g["logits"]["hw"]) == (59, 60)
    assert (g["aux"]["channels"], g["aux"]["hw"]) == (59, 60)
    assert (g["main"]["channels"], g["main"]["hw"], g["main"]["stride"]) == (59, 480, 1)


def test_scaled_shapes_match_a_real_forward_pass():
    torch.manual_seed(0)
    model = models.encnet_tiny(num_classes=5).eval()
    geo = diagrams.encnet_geometry(model, size=96, probe=32)
    seen = {}
    hooks = [model.head.conv.register_forward_hook(lambda m, i, o: seen.update(conv=o.shape)),
             model.backbone.layer1.register_forward_hook(lambda m, i, o: seen.update(l1=o.shape))]
    with torch.no_grad():
        model(torch.zeros(1, 3, 96, 96))
    for h in hooks:
        h.remove()
    assert (geo["head_conv"]["channels"], geo["head_conv"]["hw"]) == (seen["conv"][1], 12)
    assert seen["conv"][-1] == 12
    assert (geo["stage1"]["channels"], geo["stage1"]["hw"]) == (seen["l1"][1], seen["l1"][-1])


def test_geometry_leaves_the_callers_model_untouched():
    torch.manual_seed(0)
    model = models.encnet_tiny(num_classes=5).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    diagrams.encnet_geometry(model, size=64, probe=32)
    assert not model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_probe_must_be_a_multiple_of_32():
    with pytest.raises(ValueError, match="probe"):
        diagrams.encnet_geometry(models.encnet_tiny(num_classes=3), probe=40)


def test_architecture_diagram_has_every_block_and_its_shape(resnet_geo):
    fig = diagrams.plot_encnet_architecture(resnet_geo)
    assert _gids(fig) == {"input", "stem", "stage1", "stage2", "stage3", "stage4", "head_conv",
                          "cem", "classifier", "main", "se", "aux"}
    text = _texts(fig)
    for want in ["3 × 480 × 480", "2048 × 60 × 60", "Stage 4\nstride 8, dilation 4",
                 "Stage 3\nstride 8, dilation 2", "K = 32 codewords", "59 presence logits",
                 "59 × 480 × 480", "output stride 8", "Aux FCN head"]:
        assert want in text, want
    plt.close(fig)


def test_architecture_without_aux_or_se_draws_neither():
    torch.manual_seed(0)
    model = models.encnet_tiny(num_classes=4, aux=False, se_loss=False)
    geo = diagrams.encnet_geometry(model, size=64, probe=32)
    assert "aux" not in geo and "se" not in geo
    fig = diagrams.plot_encnet_architecture(geo)
    assert not {"aux", "se"} & _gids(fig)
    plt.close(fig)


def test_pipeline_diagram_blocks_and_shapes(resnet_geo):
    fig = diagrams.plot_context_encoding_pipeline(resnet_geo)
    assert _gids(fig) == {"features", "descriptors", "codewords", "residuals", "assign",
                          "aggregate", "e", "gamma", "attention", "se"}
    text = _texts(fig)
    for want in ["N = h·w = 3600", "K × D = 32 × 512", "512 × 60 × 60", "D = 512",
                 "59 presence logits", r"$r_{ik} = x_i - c_k$"]:
        assert want in text, want
    plt.close(fig)


def _fits(fig):
    """The figure is the column's width, every text at least the style's minimum, each
    box's text inside its box, no two boxes overlapping, nothing outside the figure."""
    from encnet_lite.viz import style

    assert fig.get_size_inches()[0] <= style.COLUMN_INCHES
    assert style.smallest_text_pt(fig) >= style.SMALL_PT
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    boxes = {p.get_gid(): p.get_window_extent(renderer) for p in ax.patches if p.get_gid()}
    names = sorted(boxes)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not boxes[a].overlaps(boxes[b]), (a, b)
    inside_some_box = 0
    for text in ax.texts:
        bb = text.get_window_extent(renderer)
        assert fig.bbox.x0 <= bb.x0 and bb.x1 <= fig.bbox.x1, text.get_text()
        assert fig.bbox.y0 <= bb.y0 and bb.y1 <= fig.bbox.y1, text.get_text()
        centre = ((bb.x0 + bb.x1) / 2, (bb.y0 + bb.y1) / 2)
        for name, box in boxes.items():
            if box.contains(*centre):
                inside_some_box += 1
                assert box.x0 <= bb.x0 and bb.x1 <= box.x1, (name, text.get_text())
                assert box.y0 <= bb.y0 and bb.y1 <= box.y1, (name, text.get_text())
    assert inside_some_box >= 2 * len(boxes)  # the boxes' lines were all checked


def test_diagrams_fit_the_column_with_readable_text(resnet_geo):
    for plot in (diagrams.plot_encnet_architecture, diagrams.plot_context_encoding_pipeline):
        fig = plot(resnet_geo)
        _fits(fig)
        plt.close(fig)
