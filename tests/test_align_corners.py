"""align_corners: the official upsampling of the logits, a model option set by the presets."""

import pytest
import torch
import torch.nn.functional as F

from encnet_lite import engine, models, presets


@pytest.mark.parametrize("builder", [models.encnet_tiny, models.fcn_tiny])
@pytest.mark.numerics
def test_option_changes_only_the_upsampling(builder):
    torch.manual_seed(0)
    off = builder(num_classes=5).eval()
    on = builder(num_classes=5, align_corners=True).eval()
    on.load_state_dict(off.state_dict())  # the same weights fit both
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        feats = off.backbone(x)
        if isinstance(off, models.EncNet):
            logits = off.head(feats)[0]  # stride-8 logits
        else:
            logits = off.head(feats["c4"])
        want = F.interpolate(logits, size=(64, 48), mode="bilinear", align_corners=True)
        torch.testing.assert_close(on(x)["main"], want)
        assert not torch.allclose(on(x)["main"], off(x)["main"])
        on.train()
        torch.manual_seed(1)
        aux = on(x)["aux"]
    assert aux.shape == (2, 5, 64, 48)


def test_disagreement_is_a_share_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model = models.encnet_tiny(num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # BatchNorm statistics of real activations: varied predictions
        model.train()
        for _ in range(5):
            model(torch.randn(8, 3, 64, 64))
    model.eval()
    share = models.align_corners_disagreement(model, x)
    with torch.no_grad():
        a = model(x)["main"].argmax(1)
        model.align_corners = True
        b = model(x)["main"].argmax(1)
        model.align_corners = False
    assert share == pytest.approx(float((a != b).float().mean()))
    assert 0 < share < 1 and model.align_corners is False


def test_presets_and_the_engine_follow_the_official_choice_for_pascal():
    assert presets.pcontext_encnet_r50().model.align_corners is True
    assert presets.pcontext_fcn_r50().model.align_corners is True
    assert presets.voc_encnet_r50().model.align_corners is True
    assert presets.scenes_encnet_tiny().model.align_corners is False
    model = engine.build_model(presets.scenes_encnet_tiny(align_corners=True), 7)
    assert model.align_corners is True


def test_not_an_architecture_field_but_part_of_the_recipe():
    # The weights fit both values (a checkpoint may be scored with the other one), but it
    # changes what is learned: it sits in the model group, whose RESUME rule refuses a
    # resume that changes it (a runtime field may change).
    cfg = presets.scenes_encnet_tiny()
    changes = presets.resume_changes(cfg, cfg.replace(align_corners=True, workers=3))
    assert changes == {"weights": ["align_corners: False -> True"], "recipe": []}


def test_pascal_workers_follow_the_cpu_count(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # Colab's free runtime
    assert presets.pcontext_encnet_r50().runtime.workers == 2
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert presets.pcontext_encnet_r50().runtime.workers == 8
