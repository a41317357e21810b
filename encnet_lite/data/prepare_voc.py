"""Download and convert PASCAL VOC 2012 (and optionally SBD) for :class:`PascalVOC`.

Usage (``data_scripts/prepare_voc.py`` runs the same ``main``)::

    python -m encnet_lite.data.prepare_voc --root data/voc           # VOC 2012 only
    python -m encnet_lite.data.prepare_voc --root data/voc --sbd     # + train_aug (SBD)

Upstream files: ``VOCtrainval_11-May-2012.tar`` (2 GB, PASCAL VOC host) and, with ``--sbd``,
``benchmark.tgz`` (1.4 GB, Berkeley SBD: ``benchmark_RELEASE/dataset/cls/<id>.mat``, struct
``GTcls`` with the label map in ``Segmentation``). Same guarantees as
``prepare_pcontext``: resumable MD5-checked downloads, ``--download-dir``/``--skip-download``,
atomic writes, idempotent reruns, errors that name the file.
"""

from __future__ import annotations

import io
import json
import re
import sys
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Set

import numpy as np
import scipy.io
from tqdm.auto import tqdm

from . import voc
from .archive import describe, iter_files, read_files
from .common import (
    DataError,
    PathLike,
    atomic_write_bytes,
    atomic_write_text,
    check_labels,
    check_pair_sizes,
    load_mask,
    save_mask_png,
)
from .download import Remote, locate, prepare_parser, run_prepare

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


def read_sbd_segmentation(data: bytes, name: str) -> np.ndarray:
    """``GTcls.Segmentation`` of one SBD ``cls/<id>.mat`` file (bytes) as uint8."""
    try:
        mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
        seg = mat["GTcls"].Segmentation
    except KeyError as err:
        raise DataError(f"SBD annotation file {name} has no GTcls struct") from err
    except AttributeError as err:
        raise DataError(f"SBD annotation file {name}: GTcls has no Segmentation field") from err
    except Exception as err:
        raise DataError(f"corrupt annotation file {name}: {err}") from err
    seg = np.asarray(seg)
    check_labels(seg, len(voc.CLASSES), name)
    return seg.astype(np.uint8)


def prepare_voc(root: PathLike, download_dir: Optional[PathLike] = None, sbd: bool = False,
                skip_download: bool = False, force: bool = False, verify: bool = True,
                progress: bool = True, remotes: Optional[Mapping[str, Remote]] = None) -> Dict:
    """Prepare PASCAL VOC 2012 (``sbd``: plus ``train_aug``) at ``root``; returns the marker."""
    root = Path(root).expanduser()
    download_dir = Path(download_dir).expanduser() if download_dir else root / "downloads"
    remotes = {**REMOTES, **(remotes or {})}
    marker = root / voc.MARKER
    if marker.is_file() and not force:
        info = json.loads(marker.read_text())
        if info.get("sbd") or not sbd:
            print(f"PASCAL VOC 2012 already prepared at {root}; nothing to do "
                  f"(--force redoes it).")
            return info
    marker.unlink(missing_ok=True)

    vsrc = locate(remotes["voc2012"], download_dir, VOC_DIR, skip_download, progress, verify)
    ssrc = (locate(remotes["sbd"], download_dir, SBD_DIR, skip_download, progress, verify)
            if sbd else None)

    lists = {s: f"{VOC_DIR}/ImageSets/Segmentation/{s}.txt" for s in ("train", "val", "trainval")}
    text = read_files(vsrc, lists.values())
    if len(text) != len(lists):
        raise DataError(f"{vsrc} lacks {sorted(set(lists.values()) - set(text))}: is it "
                        f"VOCtrainval_11-May-2012.tar?")
    splits = {s: [ln.split()[0] for ln in text[m].decode().splitlines() if ln.strip()]
              for s, m in lists.items()}
    train, val = set(splits["train"]), set(splits["val"])
    aug_dir, cls_dir, img_dir = (root / "SegmentationClassAug", root / "SegmentationClass",
                                 root / "JPEGImages")

    # 1) SBD labels for the train_aug images VOC does not label itself.
    sbd_ids: Set[str] = set()
    if ssrc is not None:
        bar = tqdm(desc="convert SBD", unit="mask", disable=not progress)
        for name, data in iter_files(ssrc, lambda n: bool(_SBD_MAT.search(n))):
            i = _SBD_MAT.search(name).group(1)
            sbd_ids.add(i)
            out = aug_dir / f"{i}.png"
            if i not in train and i not in val and (force or not out.exists()):
                save_mask_png(out, read_sbd_segmentation(data, describe(ssrc, name)))
            bar.update()
        bar.close()
        if not sbd_ids:
            raise DataError(f"no dataset/cls/*.mat annotation found in {ssrc}")
        splits["train_aug"] = sorted((train | sbd_ids) - val)

    # 2) VOC: images and label PNGs (palette PNGs -> single-channel class ids).
    needed = set(splits["trainval"]) | set(splits.get("train_aug", []))
    have = {p.stem for p in img_dir.glob("*.jpg")} if img_dir.is_dir() and not force else set()
    jpeg = re.compile(rf"(?:^|/){re.escape(VOC_DIR)}/JPEGImages/([^/]+)\.jpg$")
    png = re.compile(rf"(?:^|/){re.escape(VOC_DIR)}/SegmentationClass/([^/]+)\.png$")
    labelled = set(splits["trainval"])

    def wanted(name: str) -> bool:
        m = jpeg.search(name)
        if m:
            return m.group(1) in needed and m.group(1) not in have
        m = png.search(name)
        return bool(m) and m.group(1) in labelled and (force or not (cls_dir / f"{m.group(1)}.png"
                                                                    ).exists())

    bar = tqdm(desc="extract VOC", unit="file", disable=not progress)
    for name, data in iter_files(vsrc, wanted):
        m = jpeg.search(name)
        if m:
            atomic_write_bytes(img_dir / f"{m.group(1)}.jpg", data)
        else:
            i = png.search(name).group(1)
            where = describe(vsrc, name)
            mask = load_mask(io.BytesIO(data), where)
            check_labels(mask, len(voc.CLASSES), where)
            save_mask_png(cls_dir / f"{i}.png", mask)
        bar.update()
    bar.close()
    if ssrc is not None:  # VOC's own labels take precedence inside train_aug
        for i in sorted(train):
            if force or not (aug_dir / f"{i}.png").exists():
                atomic_write_bytes(aug_dir / f"{i}.png", (cls_dir / f"{i}.png").read_bytes())

    # 3) train_aug images that VOC 2012 lacks come from SBD's own img/ folder.
    missing = sorted(i for i in needed if not (img_dir / f"{i}.jpg").exists())
    if missing and ssrc is not None:
        todo = set(missing)
        for name, data in iter_files(ssrc, lambda n: bool(_SBD_IMG.search(n))
                                     and _SBD_IMG.search(n).group(1) in todo):
            atomic_write_bytes(img_dir / f"{_SBD_IMG.search(name).group(1)}.jpg", data)
        missing = sorted(i for i in needed if not (img_dir / f"{i}.jpg").exists())
    if missing:
        raise DataError(f"{len(missing)} images are in no archive, e.g. {missing[:5]}")
    missing = sorted(i for i in labelled if not (cls_dir / f"{i}.png").exists())
    if missing:
        raise DataError(f"{len(missing)} VOC label PNGs are missing from {vsrc}, "
                        f"e.g. {missing[:5]}")

    # 4) sizes, lists, marker.
    pairs = [(img_dir / f"{i}.jpg", cls_dir / f"{i}.png") for i in sorted(labelled)]
    pairs += [(img_dir / f"{i}.jpg", aug_dir / f"{i}.png") for i in splits.get("train_aug", [])]
    check_pair_sizes(pairs, progress)
    for split, ids in splits.items():
        atomic_write_text(root / "ImageSets" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    info = {"dataset": "pascal-voc-2012", "format": 1, "sbd": ssrc is not None,
            **{s: len(ids) for s, ids in splits.items()}}
    for split, n in voc.EXPECTED_SPLIT_SIZES.items():
        if split in info and info[split] != n:
            print(f"note: {info[split]} {split} images; the full release gives {n}.")
    atomic_write_text(marker, json.dumps(info, indent=2) + "\n")
    print(f"PASCAL VOC 2012 ready at {root}: " +
          ", ".join(f"{s} {len(ids)}" for s, ids in splits.items()))
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = prepare_parser(
        "prepare_voc.py",
        "Download (resumable, MD5-checked) and convert PASCAL VOC 2012 (+ SBD train_aug with "
        "--sbd) for encnet_lite.data.PascalVOC.", root="data/voc")
    parser.add_argument("--sbd", action="store_true",
                        help="also build the 10,582-image train_aug set from SBD")
    args = parser.parse_args(argv)
    return run_prepare(lambda: prepare_voc(
        args.root, args.download_dir, args.sbd, args.skip_download, args.force,
        verify=not args.no_verify, progress=not args.quiet))


if __name__ == "__main__":
    sys.exit(main())
