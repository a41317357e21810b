"""Evaluation that survives a disconnect: the partial confusion matrix is saved and resumed."""

import json

import pytest
import torch

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import evaluate as ev
from encnet_lite import files, inference, models
from encnet_lite.data import ContextScenes


@pytest.fixture(scope="module")
def model_and_data():
    torch.manual_seed(0)
    model = models.encnet_tiny(num_classes=7).eval()
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
    files.write_json_atomic(state, {"key": key, "done": 5, "seconds": 1.0,
                                    "matrix": [[1] * 7] * 7})
    result = _run(model, data, state=state)
    assert result["resumed_from"] == 0 and "starting afresh" in capsys.readouterr().err
    assert result["confusion"] == _run(model, data)["confusion"]


def test_fingerprint_changes_with_the_weights(model_and_data):
    model, _ = model_and_data
    other = models.encnet_tiny(num_classes=7)
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
    model = models.encnet_tiny(num_classes=59, num_codes=4).eval()
    got = ev.evaluate(model, pcontext_val, 59, crop_size=32, flip=True, progress=False,
                      device=torch.device("cpu"))
    masks = torch.stack([pcontext_val[i][1].flatten().bincount(minlength=256)
                         for i in range(len(pcontext_val))]).sum(0)
    assert torch.tensor(got["confusion"]).sum(1).tolist() == masks[:59].tolist()
    iou = [x for x in got["IoU"] if x is not None]
    assert len(got["IoU"]) == 59 and got["mIoU"] == pytest.approx(sum(iou) / len(iou))


def _untrained_checkpoint(path, num_val_images=6):
    """A best.pt-like file of an untrained tiny model on 64 px scenes (no training: fast)."""
    from encnet_lite import presets
    from encnet_lite.engine import build_model

    cfg = presets.scenes_encnet_tiny(image_size=64, num_val_images=num_val_images)
    torch.manual_seed(0)
    saved = {"format": ckpt_io.FORMAT, "config": cfg.to_dict(), "num_classes": 7,
             "classes": [f"c{i}" for i in range(7)], "model": build_model(cfg, 7).state_dict(),
             "epoch": 1, "iteration": 1, "metrics": {}}
    path.parent.mkdir(parents=True, exist_ok=True)
    return ckpt_io.save_atomic(saved, path)


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_report_is_strict_json_with_null_for_a_class_without_iou(tmp_path, monkeypatch, capsys):
    ckpt = _untrained_checkpoint(tmp_path / "run" / "best.pt")

    def always_class_0(model, x, num_classes, **kw):  # predictions that miss most classes
        scores = torch.zeros(x.shape[0], num_classes, *x.shape[-2:])
        scores[:, 0] = 1
        return scores

    monkeypatch.setattr(inference, "predict", always_class_0)
    assert ev.main(["--checkpoint", str(ckpt), "--no-progress", "--max-images", "1"]) == 0
    report = _strict_json(tmp_path / "run" / "best.eval.json")
    matrix = torch.tensor(report["confusion"], dtype=torch.float64)
    union = matrix.sum(0) + matrix.sum(1) - matrix.diag()
    absent = [c for c in range(7) if union[c] == 0]
    assert absent and report["IoU"][0] is not None  # class 0 is predicted everywhere
    assert [c for c, x in enumerate(report["IoU"]) if x is None] == absent
    assert str(absent) in report["notes"][0] and "null" in report["notes"][0]
    present = [float(matrix[c, c] / union[c]) for c in range(7) if union[c] > 0]
    assert report["mIoU"] == pytest.approx(sum(present) / len(present))
    assert capsys.readouterr().err == ""


class _TurnsReadOnly:
    """Makes ``folder`` behave as read-only (writes and deletions refused with EACCES, as a
    chmod 555 does to another user) from the ``at``-th prediction on."""

    def __init__(self, monkeypatch, folder, at):
        import builtins
        import errno
        from pathlib import Path

        self.calls, real_predict, real_open = 0, inference.predict, builtins.open
        real_unlink = Path.unlink

        def denied(path):
            return PermissionError(errno.EACCES, "Permission denied", str(path))

        def locked(path):
            return self.calls >= at and Path(path).parent == folder

        def predict(*args, **kw):
            self.calls += 1
            return real_predict(*args, **kw)

        def open_(file, mode="r", *args, **kw):
            if locked(file) and any(c in mode for c in "wax+"):
                raise denied(file)
            return real_open(file, mode, *args, **kw)

        def unlink(path, missing_ok=False):
            if locked(path) and path.exists():
                raise denied(path)
            return real_unlink(path, missing_ok=missing_ok)

        monkeypatch.setattr(inference, "predict", predict)
        monkeypatch.setattr(files, "open", open_, raising=False)
        monkeypatch.setattr(Path, "unlink", unlink)


def test_a_folder_turned_read_only_during_eval_ends_in_one_line(tmp_path, monkeypatch,
                                                                capsys):
    ckpt = _untrained_checkpoint(tmp_path / "run" / "best.pt")
    out, partial = tmp_path / "run" / "best.eval.json", tmp_path / "run" / "best.eval.json.partial"
    argv = ["--checkpoint", str(ckpt), "--no-progress", "--save-every", "2"]
    reference = ev.main([*argv, "--out", str(tmp_path / "reference.json")])
    assert reference == 0
    capsys.readouterr()
    with monkeypatch.context() as patch:  # read-only from the 3rd image: the save after 4 fails
        _TurnsReadOnly(patch, out.parent, at=3)
        code = ev.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"while writing {partial}" in err and "Permission denied" in err
    assert json.loads(partial.read_text())["done"] == 2  # the last save that worked
    # Writable again: the rerun continues after image 2 and scores what a clean run scores.
    assert ev.main(argv) == 0
    assert "continued after 2 images" in capsys.readouterr().out
    assert _strict_json(out)["confusion"] == _strict_json(tmp_path / "reference.json")[
        "confusion"]


def test_a_folder_turned_read_only_before_the_report_ends_in_one_line(tmp_path, monkeypatch,
                                                                      capsys):
    ckpt = _untrained_checkpoint(tmp_path / "run" / "best.pt", num_val_images=3)
    out = tmp_path / "run" / "best.eval.json"
    with monkeypatch.context() as patch:  # read-only once the last image is being scored
        _TurnsReadOnly(patch, out.parent, at=3)
        code = ev.main(["--checkpoint", str(ckpt), "--no-progress", "--save-every", "2"])
    captured = capsys.readouterr()
    assert code == 2 and captured.err.count("\n") == 1, captured.err
    assert f"encnet-eval: error: --out {out}: " in captured.err
    assert "(the scores are printed above)" in captured.err and "mIoU" in captured.out
    assert not out.exists()
