"""prepare_voc / prepare_pcontext from archives already extracted by hand (as the README and
the scripts' --download-dir help promise): the same dataset as from the archives."""

import sys
import tarfile
from pathlib import Path

import pytest
import torch

from encnet_lite.data import PascalContext, PascalVOC
from encnet_lite.data.miniature import make_pcontext_miniature, make_voc_miniature
from encnet_lite.data.prepare_pcontext import prepare_pcontext
from encnet_lite.data.prepare_voc import prepare_voc


def _extract_all(remotes, dest: Path) -> None:
    """Unpack every archive into ``dest``, as a user would with ``tar xf``; no archive is left
    there for prepare_* to read."""
    dest.mkdir(parents=True)
    for remote in remotes.values():
        with tarfile.open(remote.url[len("file://"):]) as tar:
            kwargs = {"filter": "data"} if sys.version_info >= (3, 12) else {}
            tar.extractall(dest, **kwargs)
    assert not any(p.suffix in (".tar", ".tgz", ".gz") for p in dest.iterdir())


def _same_dataset(a, b) -> None:
    assert a.ids == b.ids and len(a) > 0
    for i in range(len(a)):
        (image_a, mask_a), (image_b, mask_b) = a[i], b[i]
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b), a.ids[i]


@pytest.mark.parametrize("sbd", [False, True])
def test_voc_from_extracted_folders_equals_voc_from_archives(tmp_path, capsys, sbd):
    remotes = make_voc_miniature(tmp_path / "up", n_train=2, n_val=2, n_sbd=2)
    _extract_all(remotes, tmp_path / "by_hand")
    from_archives = prepare_voc(tmp_path / "a", tmp_path / "up", sbd=sbd, skip_download=True,
                                remotes=remotes, progress=False)
    capsys.readouterr()
    # skip_download: any attempt to fetch an archive instead would fail
    from_folders = prepare_voc(tmp_path / "b", tmp_path / "by_hand", sbd=sbd,
                               skip_download=True, remotes=remotes, progress=False)
    out = capsys.readouterr().out
    assert f"using the extracted folder {tmp_path / 'by_hand' / 'VOCdevkit/VOC2012'}" in out
    assert ("benchmark_RELEASE" in out) == sbd
    assert from_folders == from_archives
    splits = ["train", "val"] + (["train_aug"] if sbd else [])
    for split in splits:
        _same_dataset(PascalVOC(tmp_path / "b", split), PascalVOC(tmp_path / "a", split))


def test_pcontext_from_extracted_folders_equals_pcontext_from_archives(tmp_path, capsys):
    remotes = make_pcontext_miniature(tmp_path / "up", n_train=2, n_val=2)
    _extract_all(remotes, tmp_path / "by_hand")
    from_archives = prepare_pcontext(tmp_path / "a", tmp_path / "up", skip_download=True,
                                     remotes=remotes, progress=False)
    capsys.readouterr()
    from_folders = prepare_pcontext(tmp_path / "b", tmp_path / "by_hand", skip_download=True,
                                    remotes=remotes, progress=False)
    out = capsys.readouterr().out
    assert f"using the extracted folder {tmp_path / 'by_hand' / 'trainval'}" in out
    assert from_folders == from_archives and from_folders["val"] == 2
    for split in ("train", "val"):
        _same_dataset(PascalContext(tmp_path / "b", split), PascalContext(tmp_path / "a", split))
