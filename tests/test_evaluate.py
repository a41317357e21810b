"""Evaluation that survives a disconnect: the partial confusion matrix is saved and resumed."""

import json

import pytest
import torch

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import evaluate as ev
from encnet_lite import inference, models
from encnet_lite.data import ContextScenes


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = models.encnet_tiny(7).eval()
    return model, ContextScenes(10, size=64, split="val")


def _run(model, data, **kw):
    return ev.evaluate(model, data, 7, progress=False, device=torch.device("cpu"), **kw)


def test_interrupted_evaluation_resumes_to_the_same_matrix(model_and_data, tmp_path,
                                                           monkeypatch):
    model, data = model_and_data
    reference = _run(model, data, flip=True)
    state = tmp_path / "best.eval.json.partial"
    real, calls = inference.predict, []

    def disconnect_after_4(*args, **kw):  # the fifth image never finishes
        calls.append(1)
        if len(calls) == 5:
            raise ConnectionError("runtime disconnected")
        return real(*args, **kw)

    monkeypatch.setattr(inference, "predict", disconnect_after_4)
    with pytest.raises(ConnectionError):
        _run(model, data, flip=True, state=state, save_every=3)
    saved = json.loads(state.read_text())
    assert saved["done"] == 4 and sum(map(sum, saved["matrix"])) == 4 * 64 * 64
    monkeypatch.setattr(inference, "predict", real)
    resumed = _run(model, data, flip=True, state=state, save_every=3)
    assert resumed["resumed_from"] == 4 and not state.exists()  # removed once complete
    assert resumed["confusion"] == reference["confusion"]
    assert resumed["mIoU"] == reference["mIoU"] and resumed["num_images"] == 10


def test_periodic_saves_survive_a_kill(model_and_data, tmp_path, monkeypatch):
    """A killed process runs no handler: what is left is the last periodic save."""
    model, data = model_and_data
    state = tmp_path / "partial.json"
    snapshots = {}
    real_save, real_predict, calls = ev._save_state, inference.predict, []

    def save(path, key, cm, done, seconds):
        real_save(path, key, cm, done, seconds)
        snapshots[done] = path.read_text()

    def die_at_8(*args, **kw):
        calls.append(1)
        if len(calls) == 8:
            raise KeyboardInterrupt
        return real_predict(*args, **kw)

    monkeypatch.setattr(ev, "_save_state", save)
    monkeypatch.setattr(inference, "predict", die_at_8)
    with pytest.raises(KeyboardInterrupt):
        _run(model, data, state=state, save_every=3)
    assert sorted(snapshots) == [3, 6, 7]  # periodic saves, then the handler's
    state.write_text(snapshots[6])  # what a SIGKILL after image 7 would have left
    monkeypatch.setattr(inference, "predict", real_predict)
    resumed = _run(model, data, state=state)
    assert resumed["resumed_from"] == 6
    assert resumed["confusion"] == _run(model, data)["confusion"]


def test_state_of_another_model_or_setting_is_not_merged(model_and_data, tmp_path, capsys):
    model, data = model_and_data
    state = tmp_path / "partial.json"
    key = {"model": "someone-else"}
    ckpt_io.write_json_atomic(state, {"key": key, "done": 5, "seconds": 1.0,
                                      "matrix": [[1] * 7] * 7})
    result = _run(model, data, state=state)
    assert result["resumed_from"] == 0 and "starting afresh" in capsys.readouterr().err
    assert result["confusion"] == _run(model, data)["confusion"]


def test_fingerprint_changes_with_the_weights(model_and_data):
    model, _ = model_and_data
    other = models.encnet_tiny(7)
    assert ev.model_fingerprint(model) == ev.model_fingerprint(model)
    assert ev.model_fingerprint(model) != ev.model_fingerprint(other)


def test_eval_cli_refuses_non_finite_weights_and_resumes(tmp_path, capsys):
    from encnet_lite import presets
    from encnet_lite.train import train

    cfg = presets.scenes_encnet_tiny(epochs=1, num_train_images=16, num_val_images=6,
                                     image_size=64, out=str(tmp_path / "run"), progress=False)
    train(cfg)
    ckpt = tmp_path / "run" / "best.pt"
    saved = ckpt_io.load(ckpt)
    name = next(k for k, v in saved["model"].items() if v.is_floating_point())
    saved["model"][name] = saved["model"][name].clone().fill_(float("inf"))
    ckpt_io.save_atomic(saved, tmp_path / "diverged.pt")
    assert ev.main(["--checkpoint", str(tmp_path / "diverged.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert name in err and "non-finite" in err
    # A partial state beside --out is picked up by the CLI.
    out = tmp_path / "score.json"
    model, _, _ = ev.load_model(str(ckpt), torch.device("cpu"))
    data = ev.eval_dataset(cfg)
    with pytest.raises(ZeroDivisionError):
        ev.evaluate(model, _Failing(data, 4), 7, progress=False,
                    state=out.with_name(out.name + ".partial"), save_every=2)
    assert ev.main(["--checkpoint", str(ckpt), "--no-progress", "--out", str(out)]) == 0
    assert "continued after 4 images" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["confusion"] == ev.evaluate(model, data, 7, progress=False)["confusion"]


class _Failing(torch.utils.data.Dataset):
    """The dataset, failing at image ``k`` (a disconnect half way)."""

    def __init__(self, data, k):
        self.data, self.k = data, k

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        if i == self.k:
            raise ZeroDivisionError
        return self.data[i]


@pytest.fixture(scope="module")
def pcontext_val(tmp_path_factory):
    """The fabricated PASCAL-Context, prepared from its upstream formats: val images of
    40-72 x 48-80 px, unlabelled pixels (255) included."""
    from encnet_lite.data import PascalContext
    from encnet_lite.data.miniature import make_pcontext_miniature
    from encnet_lite.data.prepare_pcontext import prepare_pcontext

    base = tmp_path_factory.mktemp("pcontext_eval")
    remotes = make_pcontext_miniature(base / "up", n_train=1, n_val=3)
    prepare_pcontext(base / "pc", base / "up", skip_download=True, remotes=remotes,
                     progress=False)
    return PascalContext(base / "pc", "val")


def test_evaluate_with_sliding_windows_on_pcontext_counts_every_labelled_pixel(pcontext_val):
    # A 1x1 conv sees one pixel: windows of 32 px must give its whole-image prediction.
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 59, 1).eval()
    expected = torch.zeros(59, 59, dtype=torch.int64)
    sizes = []
    for image, mask in (pcontext_val[i] for i in range(len(pcontext_val))):
        sizes.append(tuple(mask.shape))
        with torch.no_grad():
            pred = pointwise(image[None])[0].argmax(0)
        keep = mask != 255
        for t, p in zip(mask[keep].tolist(), pred[keep].tolist()):
            expected[t, p] += 1
    assert all(max(s) > 32 for s in sizes) and len(set(sizes)) > 1  # windows are used
    got = ev.evaluate(pointwise, pcontext_val, 59, crop_size=32, progress=False,
                      device=torch.device("cpu"))
    assert got["num_images"] == len(pcontext_val)
    assert torch.equal(torch.tensor(got["confusion"]), expected)
    assert got["pixAcc"] == pytest.approx(float(expected.diag().sum() / expected.sum()))


def test_evaluate_encnet_with_crop_and_flip_on_pcontext_rows_are_the_true_classes(pcontext_val):
    # Whatever the model predicts, row t of the matrix holds the pixels labelled t.
    torch.manual_seed(0)
    model = models.encnet_tiny(59, num_codes=4).eval()
    got = ev.evaluate(model, pcontext_val, 59, crop_size=32, flip=True, progress=False,
                      device=torch.device("cpu"))
    masks = torch.stack([pcontext_val[i][1].flatten().bincount(minlength=256)
                         for i in range(len(pcontext_val))]).sum(0)
    assert torch.tensor(got["confusion"]).sum(1).tolist() == masks[:59].tolist()
    iou = torch.tensor(got["iou"], dtype=torch.float64)
    assert len(iou) == 59 and got["mIoU"] == pytest.approx(float(iou.nanmean()))
