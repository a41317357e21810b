"""Checkpoints: the finite-weights check, the training state (and its older forms),
best.pt, loading damaged or foreign files, hand-edited headers."""


import pytest
import torch

from encnet_lite import checkpoint as ckpt_io


def test_check_finite_names_the_first_bad_tensor():
    good = {"a.weight": torch.ones(3), "steps": torch.tensor(4), "note": "text"}
    ckpt_io.check_finite(good)  # integers and non-tensors are not checked
    bad = dict(good, **{"b.bias": torch.tensor([0.0, float("inf")]),
                        "c.weight": torch.tensor([float("nan")] * 3)})
    with pytest.raises(ckpt_io.NonFiniteError, match=r"'b\.bias' has 1 non-finite") as info:
        ckpt_io.check_finite(bad)
    assert isinstance(info.value, ckpt_io.CheckpointError)
    with pytest.raises(ckpt_io.NonFiniteError, match="c.weight"):
        ckpt_io.check_finite({"c.weight": bad["c.weight"]})


def test_train_state_round_trips_and_reads_older_checkpoints():
    history = [{"epoch": 1, "iteration": 4, "mIoU": 0.25}, {"epoch": 2, "iteration": 8,
                                                            "mIoU": 0.5}]
    state = ckpt_io.TrainState(epoch=2, iteration=8, history=history, best_mIoU=0.5,
                               best_epoch=2, epoch_sums=torch.tensor([1.0, 2.0, 3.0, 4.0]),
                               epoch_seconds=1.5)
    saved = state.to_dict()
    saved["epoch_sums"].zero_()  # a copy: the live state is not changed through it
    assert state.epoch_sums.tolist() == [1.0, 2.0, 3.0, 4.0]
    back = ckpt_io.TrainState.from_dict(state.to_dict())
    assert back.epoch_sums.dtype == torch.float64
    assert (back.epoch, back.iteration, back.best_epoch, back.history) == (2, 8, 2, history)
    old = {k: v for k, v in state.to_dict().items() if k != "best_epoch"}  # an older last.pt
    assert ckpt_io.TrainState.from_dict(old).best_epoch == 2  # found from the history


def test_a_checkpoint_from_before_the_one_score_format_loads_in_it():
    saved = ckpt_io.TrainState(epoch=1, iteration=4, best_mIoU=0.5, best_epoch=1).to_dict()
    saved["best_miou"] = saved.pop("best_mIoU")  # as last.pt files were written before
    saved["history"] = [{"epoch": 1, "iteration": 4, "pixAcc": 0.75, "mIoU": 0.5,
                         "iou": [0.25, 0.75, float("nan")]}]
    state = ckpt_io.TrainState.from_dict(saved)
    assert (state.best_mIoU, state.best_epoch) == (0.5, 1)
    assert state.history == [{"epoch": 1, "iteration": 4, "pixAcc": 0.75, "mIoU": 0.5,
                              "IoU": [0.25, 0.75, None]}]
    assert "best_mIoU" in state.to_dict() and "best_miou" not in state.to_dict()


def test_the_first_validation_is_always_the_best_so_far():
    fresh = ckpt_io.TrainState()
    assert fresh.improves(0.0) and fresh.improves(float("nan"))
    seen = ckpt_io.TrainState(best_mIoU=0.4, best_epoch=1)
    assert seen.improves(0.41) and not seen.improves(0.4) and not seen.improves(float("nan"))
    assert ckpt_io.TrainState(best_mIoU=float("nan"), best_epoch=1).improves(0.1)


def test_best_checkpoint_holds_the_best_epochs_record_and_no_optimizer(tmp_path):
    history = [{"epoch": 1, "iteration": 4, "mIoU": 0.5}, {"epoch": 2, "iteration": 8,
                                                           "mIoU": 0.25}]
    state = ckpt_io.TrainState(epoch=2, iteration=8, history=history, best_mIoU=0.5,
                               best_epoch=1)
    header = {"config": {}, "num_classes": 3, "classes": ["a", "b", "c"]}
    best = ckpt_io.best_checkpoint(header, {"w": torch.ones(2)}, state)
    assert (best["epoch"], best["iteration"], best["metrics"]) == (1, 4, history[0])
    path = ckpt_io.save_atomic(best, tmp_path / "best.pt")
    with pytest.raises(ckpt_io.CheckpointError, match="no optimizer state"):
        ckpt_io.load_training(path)


def _valid(tmp_path, **changes):
    """A small checkpoint that passes every check, with ``changes`` applied."""
    from encnet_lite import presets

    ckpt = {"format": ckpt_io.FORMAT, "config": presets.scenes_encnet_tiny().to_dict(),
            "num_classes": 3, "model": {"w": torch.ones(2, 2)}, "optimizer": {}}
    for key, value in changes.items():
        if key == "config":  # flat names, each into its group of the stored config
            for name, v in value.items():
                ckpt["config"][presets.LEAVES[name][0]][name] = v
        else:
            ckpt[key] = value
    return ckpt


class _Code:
    def __reduce__(self):
        return (print, ("ran",))


# (what the file holds, a phrase of the one-line error, the error's type)
LOAD_CASES = [
    ("zero bytes", b"", "the file is empty (0 bytes)", ckpt_io.CheckpointError),
    ("text", b"hello world\n", "it is not a file torch.save writes (it begins with b'hello wo')",
     ckpt_io.CheckpointError),
    ("a torn zip", b"PK\x03\x04 cut off", "is cut short or damaged", ckpt_io.CheckpointError),
    ("code", _Code(), "other than tensors, numbers and strings, which are never loaded (nothing "
     "was run)", ckpt_io.CheckpointError),
    ("a newer format", {"format": "encnet_lite.checkpoint/2"},
     "was written by a newer encnet_lite (format encnet_lite.checkpoint/2; this version reads "
     "encnet_lite.checkpoint/1): upgrade encnet_lite", ckpt_io.CheckpointError),
    ("another format", {"format": "mmseg"}, "is not an encnet_lite checkpoint (its 'format' "
     "is 'mmseg'", ckpt_io.CheckpointError),
    ("a folder with best.pt", "dir", "is a folder, not a checkpoint file: give the file inside, "
     "e.g. ", ckpt_io.CheckpointError),
    ("an empty folder", "empty_dir", "is a folder, not a checkpoint file: give a best.pt or "
     "last.pt file (this folder holds neither)", ckpt_io.CheckpointError),
]


@pytest.mark.parametrize("held,content,phrase,error", LOAD_CASES,
                         ids=[c[0] for c in LOAD_CASES])
def test_load_says_what_is_wrong_with_the_file(tmp_path, held, content, phrase, error):
    path = tmp_path / "x.pt"
    if content == "dir":
        path.mkdir()
        ckpt_io.save_atomic(_valid(tmp_path), path / "best.pt")
        phrase += str(path / "best.pt")
    elif content == "empty_dir":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(error) as info:
        ckpt_io.load(path)
    message = str(info.value)
    assert phrase in message and message.startswith(str(path)) and "\n" not in message


# (a hand edit, a phrase of check_header's one-line error)
HEADER_CASES = [
    ("sparse", {"model": {"w": torch.ones(2, 2).to_sparse()}},
     "'model' tensor 'w' is torch.sparse_coo (a checkpoint holds dense tensors)"),
    ("not a tensor", {"model": {"w": [1.0, 2.0]}}, "'model' entry 'w' is a list, not a tensor"),
    ("num_codes 2**31", {"config": {"num_codes": 2**31}},
     "num_codes=2147483648: give a whole number at least 1 and at most 1024"),
    ("lr nan", {"config": {"lr": float("nan")}}, "lr=nan: give a finite number above 0"),
    ("num_codes text", {"config": {"num_codes": "32"}}, "num_codes='32': give a whole number"),
]


@pytest.mark.parametrize("edit,changes,phrase", HEADER_CASES, ids=[c[0] for c in HEADER_CASES])
def test_hand_edited_checkpoints_are_refused_in_one_line(tmp_path, edit, changes, phrase):
    path = tmp_path / "last.pt"
    ckpt_io.save_atomic(_valid(tmp_path), path)
    ckpt_io.load_training(path)  # the unedited file passes
    ckpt_io.save_atomic(_valid(tmp_path, **changes), path)
    for check in (lambda: ckpt_io.check_header(ckpt_io.load(path), path),
                  lambda: ckpt_io.load_training(path)):
        with pytest.raises(ckpt_io.CheckpointError) as info:
            check()
        message = str(info.value)
        assert message.startswith(f"{path} cannot be used to build its model: ")
        assert phrase in message and "\n" not in message
