"""Download and convert PASCAL VOC 2012 (and optionally SBD) for :class:`PascalVOC`.

Usage (``data_scripts/prepare_voc.py`` runs the same ``main``)::

    python -m encnet_lite.data.prepare_voc --root data/voc           # VOC 2012 only
    python -m encnet_lite.data.prepare_voc --root data/voc --sbd     # + train_aug (SBD)

Upstream files: ``VOCtrainval_11-May-2012.tar`` (2 GB, PASCAL VOC host) and, with ``--sbd``,
``benchmark.tgz`` (1.4 GB, Berkeley SBD: ``benchmark_RELEASE/dataset/cls/<id>.mat``, struct
``GTcls`` with the label map in ``Segmentation``). Same guarantees as
``prepare_pcontext``: resumable MD5-checked downloads, ``--download-dir``/``--skip-download``,
atomic writes, idempotent reruns, errors that name the file, label maps checked against the
pixel limit from their headers, members that are links or devices never read (a split that
would lose an image to one fails, naming it).
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..files import write_bytes_atomic, write_text_atomic
from . import voc
from .archive import Skipped, describe, iter_files, read_files, skipped_error
from .common import (
    DataError,
    DatasetNotFoundError,
    PathLike,
    check_id,
    check_labels,
    check_pair_sizes,
    load_mask,
    parse_id_list,
    read_marker,
    save_mask_png,
)
from .download import Remote, locate
from .matfile import load_mat

VOC2012 = Remote(
    "VOCtrainval_11-May-2012.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "6cd6e144f989b92b3379bac3b3de84fd",  # torchvision's VOC table
    "2 GB",
)
SBD = Remote(
    "benchmark.tgz",
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
    "benchmark.tgz",
    "82b4d87ceb2ed10f6038a1cba92111cb",  # torchvision's SBDataset
    "1.4 GB",
)
REMOTES = {"voc2012": VOC2012, "sbd": SBD}
VOC_DIR = "VOCdevkit/VOC2012"
SBD_DIR = "benchmark_RELEASE"
_SBD_MAT = re.compile(r"(?:^|/)dataset/cls/([^/]+)\.mat$")
_SBD_IMG = re.compile(r"(?:^|/)dataset/img/([^/]+)\.jpg$")
_JPEG = re.compile(rf"(?:^|/){re.escape(VOC_DIR)}/JPEGImages/([^/]+)\.jpg$")
_PNG = re.compile(rf"(?:^|/){re.escape(VOC_DIR)}/SegmentationClass/([^/]+)\.png$")


def read_sbd_segmentation(data: bytes, name: str) -> np.ndarray:
    """``GTcls.Segmentation`` of one SBD ``cls/<id>.mat`` file (bytes) as uint8; every array
    of the file is checked against the pixel limit before it is decoded."""
    mat = load_mat(data, name, squeeze_me=True, struct_as_record=False)
    try:
        seg = mat["GTcls"].Segmentation
    except KeyError as err:
        raise DataError(f"SBD annotation file {name} has no GTcls struct") from err
    except AttributeError as err:
        raise DataError(f"SBD annotation file {name}: GTcls has no Segmentation field") from err
    seg = np.asarray(seg)
    check_labels(seg, len(voc.CLASSES), name)
    return seg.astype(np.uint8)


class _Layout(NamedTuple):
    """Where the prepared files go under ``root``."""

    images: Path  # JPEGImages/<id>.jpg
    labels: Path  # SegmentationClass/<id>.png (VOC's own labels)
    aug: Path  # SegmentationClassAug/<id>.png (train_aug: SBD, VOC's labels where it has them)

    @classmethod
    def at(cls, root: Path) -> _Layout:
        return cls(root / "JPEGImages", root / "SegmentationClass",
                   root / "SegmentationClassAug")


def already_prepared(root: Path, sbd: bool, force: bool) -> Optional[Dict]:
    """The marker's contents when ``root`` already holds what is asked (and not ``force``)."""
    marker = root / voc.MARKER
    if marker.is_file() and not force:
        try:
            info = read_marker(marker, "PASCAL VOC 2012")
        except DatasetNotFoundError:
            return None  # damaged: prepare again
        if info.get("sbd") or not sbd:
            return info
    return None


def fetch_sources(remotes: Mapping[str, Remote], download_dir: Path, *, sbd: bool,
                  skip_download: bool, verify: bool, progress: bool
                  ) -> Tuple[Path, Optional[Path]]:
    """The VOC 2012 source and, with ``sbd``, the SBD one: an archive (downloaded, resumed and
    MD5-checked as needed) or an already extracted folder."""
    flags = dict(skip_download=skip_download, verify=verify, progress=progress)
    vsrc = locate(remotes["voc2012"], download_dir, VOC_DIR, **flags)
    ssrc = locate(remotes["sbd"], download_dir, SBD_DIR, **flags) if sbd else None
    return vsrc, ssrc


def read_splits(vsrc: Path) -> Dict[str, List[str]]:
    """VOC 2012's segmentation lists ``{"train", "val", "trainval"}: [image id]``."""
    lists = {s: f"{VOC_DIR}/ImageSets/Segmentation/{s}.txt" for s in ("train", "val", "trainval")}
    skipped = Skipped(vsrc)
    text = read_files(vsrc, lists.values(), skipped)
    if skipped:
        raise skipped_error("the segmentation split lists cannot be read", vsrc, skipped)
    if len(text) != len(lists):
        raise DataError(f"{vsrc} lacks {sorted(set(lists.values()) - set(text))}: is it "
                        f"VOCtrainval_11-May-2012.tar?")
    return {s: parse_id_list(text[m].decode("utf-8", "replace"), describe(vsrc, m))
            for s, m in lists.items()}


def convert_sbd(ssrc: Path, out: _Layout, splits: Mapping[str, List[str]], *, force: bool,
                progress: bool) -> List[str]:
    """SBD's labels as PNGs for the train_aug images VOC does not label itself; returns the
    ``train_aug`` list (VOC train plus SBD, minus VOC val). An SBD annotation skipped for
    safety (a link, a device) that train_aug needs is an error naming it."""
    train, val = set(splits["train"]), set(splits["val"])
    sbd_ids: Set[str] = set()
    skipped = Skipped(ssrc)
    bar = tqdm(desc="convert SBD", unit="mask", disable=not progress)
    for name, data in iter_files(ssrc, lambda n: bool(_SBD_MAT.search(n)), skipped):
        i = check_id(_SBD_MAT.search(name).group(1), describe(ssrc, name))
        sbd_ids.add(i)
        path = out.aug / f"{i}.png"
        if i not in train and i not in val and (force or not path.exists()):
            save_mask_png(path, read_sbd_segmentation(data, describe(ssrc, name)))
        bar.update()
    bar.close()
    if not sbd_ids and skipped:
        raise skipped_error("no dataset/cls/*.mat annotation can be read", ssrc, skipped)
    if not sbd_ids:
        raise DataError(f"no dataset/cls/*.mat annotation found in {ssrc}")
    skipped.check("train_aug would come out {n} image(s) short", _SBD_MAT,
                  {_SBD_MAT.search(n).group(1) for n in skipped} - sbd_ids - train - val)
    return sorted((train | sbd_ids) - val)


def extract_voc(vsrc: Path, out: _Layout, needed: Set[str], labelled: Set[str], *,
                force: bool, progress: bool, skipped: Skipped) -> None:
    """VOC's JPEGs of the ``needed`` images and its palette label PNGs of the ``labelled``
    ones (as single-channel class ids); files already there are kept unless ``force``;
    members that are not regular files go to ``skipped``."""
    have = ({p.stem for p in out.images.glob("*.jpg")} if out.images.is_dir() and not force
            else set())
    jpeg, png = _JPEG, _PNG

    def wanted(name: str) -> bool:
        m = jpeg.search(name)
        if m:
            return m.group(1) in needed and m.group(1) not in have
        m = png.search(name)
        return bool(m) and m.group(1) in labelled and (
            force or not (out.labels / f"{m.group(1)}.png").exists())

    bar = tqdm(desc="extract VOC", unit="file", disable=not progress)
    for name, data in iter_files(vsrc, wanted, skipped):
        m = jpeg.search(name)
        if m:
            write_bytes_atomic(out.images / f"{m.group(1)}.jpg", data)
        else:
            where = describe(vsrc, name)
            mask = load_mask(io.BytesIO(data), where)
            check_labels(mask, len(voc.CLASSES), where)
            save_mask_png(out.labels / f"{png.search(name).group(1)}.png", mask)
        bar.update()
    bar.close()


def copy_voc_labels_to_aug(out: _Layout, train: Sequence[str], *, force: bool) -> None:
    """VOC's own labels take precedence inside train_aug."""
    for i in sorted(train):
        if force or not (out.aug / f"{i}.png").exists():
            write_bytes_atomic(out.aug / f"{i}.png", (out.labels / f"{i}.png").read_bytes())


def missing_images(out: _Layout, ids: Set[str]) -> List[str]:
    return sorted(i for i in ids if not (out.images / f"{i}.jpg").exists())


def extract_sbd_images(ssrc: Path, out: _Layout, todo: Set[str], skipped: Skipped) -> None:
    """train_aug images that VOC 2012 lacks, from SBD's own ``img/`` folder (members that
    are not regular files go to ``skipped``)."""
    def wanted(name: str) -> bool:
        m = _SBD_IMG.search(name)
        return bool(m) and m.group(1) in todo

    for name, data in iter_files(ssrc, wanted, skipped):
        write_bytes_atomic(out.images / f"{_SBD_IMG.search(name).group(1)}.jpg", data)


def check_complete(out: _Layout, needed: Set[str], labelled: Set[str],
                   skipped: Sequence[Skipped]) -> None:
    """Every needed image and every VOC label PNG exists, else an error naming the members
    skipped for safety that held them, or examples."""
    missing = missing_images(out, needed)
    for source_skipped in skipped:
        source_skipped.check("the splits would come out {n} image(s) short", _JPEG, missing)
        source_skipped.check("train_aug would come out {n} image(s) short", _SBD_IMG, missing)
    if missing:
        raise DataError(f"{len(missing)} images are in no archive, e.g. {missing[:5]}")
    missing = sorted(i for i in labelled if not (out.labels / f"{i}.png").exists())
    vsrc = skipped[0].source
    skipped[0].check("the splits would come out {n} label PNG(s) short", _PNG, missing)
    if missing:
        raise DataError(f"{len(missing)} VOC label PNGs are missing from {vsrc}, "
                        f"e.g. {missing[:5]}")


def check_sizes(out: _Layout, splits: Mapping[str, List[str]], *, progress: bool) -> None:
    """Every image and its mask have one size (headers only: fast)."""
    pairs = [(out.images / f"{i}.jpg", out.labels / f"{i}.png")
             for i in sorted(splits["trainval"])]
    pairs += [(out.images / f"{i}.jpg", out.aug / f"{i}.png")
              for i in splits.get("train_aug", [])]
    check_pair_sizes(pairs, progress=progress)


def write_manifest(root: Path, splits: Mapping[str, List[str]], sbd: bool) -> Dict:
    """The split lists, then (last) the marker that says ``root`` is complete."""
    for split, ids in splits.items():
        write_text_atomic(root / "ImageSets" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    info = {"dataset": "pascal-voc-2012", "format": 1, "sbd": sbd,
            **{s: len(ids) for s, ids in splits.items()}}
    for split, n in voc.EXPECTED_SPLIT_SIZES.items():
        if split in info and info[split] != n:
            print(f"note: {info[split]} {split} images; the full release gives {n}.")
    write_text_atomic(root / voc.MARKER, json.dumps(info, indent=2) + "\n")
    return info


def prepare_voc(root: PathLike, download_dir: Optional[PathLike] = None, *, sbd: bool = False,
                skip_download: bool = False, force: bool = False, verify: bool = True,
                progress: bool = True, remotes: Optional[Mapping[str, Remote]] = None) -> Dict:
    """Prepare PASCAL VOC 2012 (``sbd``: plus ``train_aug``) at ``root``; returns the marker.

    Steps: fetch, read the split lists, convert SBD's labels, extract VOC's images and
    labels, fill train_aug's images from SBD, check, write the lists and the marker.
    The flags are those of :func:`~encnet_lite.data.prepare_pcontext.prepare_pcontext`.
    """
    root = Path(root).expanduser()
    info = already_prepared(root, sbd, force)
    if info is not None:
        print(f"PASCAL VOC 2012 already prepared at {root}; nothing to do "
              f"(--force redoes it).")
        return info
    (root / voc.MARKER).unlink(missing_ok=True)  # the root is incomplete until the end
    download_dir = Path(download_dir).expanduser() if download_dir else root / "downloads"
    vsrc, ssrc = fetch_sources({**REMOTES, **(remotes or {})}, download_dir, sbd=sbd,
                               skip_download=skip_download, verify=verify, progress=progress)
    splits, out = read_splits(vsrc), _Layout.at(root)
    if ssrc is not None:
        splits["train_aug"] = convert_sbd(ssrc, out, splits, force=force, progress=progress)
    labelled = set(splits["trainval"])
    needed = labelled | set(splits.get("train_aug", []))
    skipped = [Skipped(vsrc)] + ([Skipped(ssrc)] if ssrc is not None else [])
    extract_voc(vsrc, out, needed, labelled, force=force, progress=progress,
                skipped=skipped[0])
    if ssrc is not None:
        copy_voc_labels_to_aug(out, splits["train"], force=force)
        if missing_images(out, needed):
            extract_sbd_images(ssrc, out, set(missing_images(out, needed)), skipped[1])
    check_complete(out, needed, labelled, skipped)
    check_sizes(out, splits, progress=progress)
    info = write_manifest(root, splits, ssrc is not None)
    print(f"PASCAL VOC 2012 ready at {root}: " +
          ", ".join(f"{s} {len(ids)}" for s, ids in splits.items()))
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import prepare_flags, prepare_parser, run_prepare

    parser = prepare_parser(
        "prepare_voc.py",
        "Download (resumable, MD5-checked) and convert PASCAL VOC 2012 (+ SBD train_aug with "
        "--sbd) for encnet_lite.data.PascalVOC.", root="data/voc")
    parser.add_argument("--sbd", action="store_true",
                        help="also build the 10,582-image train_aug set from SBD")
    args = parser.parse_args(argv)
    return run_prepare("prepare_voc.py",
                       lambda: prepare_voc(args.root, sbd=args.sbd, **prepare_flags(args)), args)


if __name__ == "__main__":
    sys.exit(main())
