"""The one atomic writer, stale temporary files, and the finite-weights check."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from encnet_lite import checkpoint as ckpt_io


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    ckpt_io.write_json_atomic(path, {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert path.read_text().endswith("\n")
    ckpt_io.write_text_atomic(path, "second\n")
    assert path.read_text() == "second\n"
    ckpt_io.atomic_write(path, lambda f: f.write(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failing_writer_keeps_the_old_file_and_names_the_cause(tmp_path):
    path = ckpt_io.write_text_atomic(tmp_path / "log.txt", "good\n")

    def broken(f):
        f.write(b"half")
        raise ValueError("encoder exploded")

    with pytest.raises(ckpt_io.CheckpointError, match="ValueError: encoder exploded"):
        ckpt_io.atomic_write(path, broken)
    assert path.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]


def test_a_full_disk_message_does_not_point_at_best_pt(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ckpt_io.CheckpointError, match="disk full") as info:
        ckpt_io.atomic_write(tmp_path / "last.pt", full)
    assert "best.pt" not in str(info.value) and "--resume" in str(info.value)


def test_ctrl_c_passes_through_and_cleans_up(tmp_path):
    def interrupted(f):
        f.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ckpt_io.atomic_write(tmp_path / "a.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_those_of_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.pt{ckpt_io.TMP_MARK}{dead_pid}"
    live = tmp_path / f".best.pt{ckpt_io.TMP_MARK}{os.getpid()}"
    other = tmp_path / ".hidden.tmp-notapid"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert ckpt_io.stale_temporaries(tmp_path) == [stale]


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
