"""The one atomic writer (encnet_lite.files): whole files or none, one-line errors that name
the cause, and the temporary files of writers that are gone."""

import errno
import json
import os
import subprocess
import sys

import pytest
import torch

from encnet_lite import checkpoint as ckpt_io
from encnet_lite import files
from encnet_lite.errors import EncnetError, FileWriteError


def test_atomic_write_replaces_whole_files_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "a.json"
    files.write_json_atomic(path, {"x": [1, 2]})
    assert json.loads(path.read_text()) == {"x": [1, 2]}
    assert path.read_text().endswith("\n")
    files.write_text_atomic(path, "second\n")
    assert path.read_text() == "second\n"
    files.atomic_write(path, lambda f: f.write(b"\x00\x01"))
    assert path.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_a_failing_writer_keeps_the_old_file_and_names_the_cause(tmp_path):
    path = files.write_text_atomic(tmp_path / "log.txt", "good\n")

    def broken(f):
        f.write(b"half")
        raise ValueError("encoder exploded")

    with pytest.raises(FileWriteError, match="ValueError: encoder exploded"):
        files.atomic_write(path, broken)
    assert path.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["log.txt"]


def test_a_full_disk_message_does_not_point_at_best_pt(tmp_path):
    def full(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(FileWriteError, match="disk full") as info:
        files.atomic_write(tmp_path / "last.pt", full)
    message = str(info.value)
    assert "best.pt" not in message and "free some space" in message
    # The writer knows no run: whether --resume can continue is the run folder's to say.
    assert "--resume" not in message and "\n" not in message


def test_a_cleanup_that_fails_never_hides_the_first_error(tmp_path, monkeypatch):
    """The folder turns read-only between the write and the rename: the rename fails, and
    so does removing the temporary file; the error is the first one, in one line."""
    path = files.write_text_atomic(tmp_path / "best.eval.json", "{}\n")

    def read_only(*args):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(files.os, "replace", read_only)
    monkeypatch.setattr(files.Path, "unlink", lambda self, missing_ok=False: read_only())
    with pytest.raises(FileWriteError) as info:
        files.write_bytes_atomic(path, b"new")
    message = str(info.value)
    assert message.startswith(f"no permission to write (Permission denied) while writing {path}")
    tmp = tmp_path / f".best.eval.json{files.TMP_MARK}{os.getpid()}"
    assert f"the temporary file {tmp} could not be removed: delete it" in message
    assert f"make {tmp_path} writable" in message and "\n" not in message
    assert path.read_text() == "{}\n"


def test_a_folder_that_is_a_file_is_a_file_write_error_not_a_bare_oserror(tmp_path):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FileWriteError, match=r"while writing .*a_file/sub/x\.pt") as info:
        ckpt_io.save_atomic({"x": torch.ones(2)}, tmp_path / "a_file" / "sub" / "x.pt")
    # A failed write is about the file, not about a checkpoint's content.
    assert isinstance(info.value, EncnetError)
    assert not isinstance(info.value, ckpt_io.CheckpointError)


def test_a_failed_write_is_one_line_and_status_2_in_every_command(tmp_path, capsys):
    from encnet_lite import cli

    (tmp_path / "a_file").write_text("x")
    code = cli.run("encnet-x", lambda: files.write_text_atomic(tmp_path / "a_file" / "r.json",
                                                               "{}"))
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE == 2
    assert err.startswith("encnet-x: error: ") and err.count("\n") == 1
    assert f"while writing {tmp_path / 'a_file' / 'r.json'}" in err
    assert not (tmp_path / "a_file" / "r.json").exists()


def test_ctrl_c_passes_through_and_cleans_up(tmp_path):
    def interrupted(f):
        f.write(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.atomic_write(tmp_path / "a.bin", interrupted)
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_are_those_of_dead_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.pt{files.TMP_MARK}{dead_pid}"
    live = tmp_path / f".best.pt{files.TMP_MARK}{os.getpid()}"
    other = tmp_path / ".hidden.tmp-notapid"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert files.stale_temporaries(tmp_path) == [stale]
