"""Download and convert PASCAL-Context into the layout :class:`PascalContext` reads.

Usage (``data_scripts/prepare_pcontext.py`` runs the same ``main``)::

    python -m encnet_lite.data.prepare_pcontext --root data/pcontext
    python -m encnet_lite.data.prepare_pcontext --root data/pcontext \\
        --download-dir ~/Downloads --skip-download          # files fetched by hand, offline

Upstream files (official sources, no ``detail`` package needed):

- ``VOCtrainval_03-May-2010.tar`` (1.3 GB): the PASCAL VOC 2010 images and the
  ``ImageSets/Main/{train,val}.txt`` lists, whose images with a PASCAL-Context annotation
  give the standard 4,998 / 5,105 split;
- ``trainval.tar.gz`` (31 MB): PASCAL-Context's ``trainval/<id>.mat`` files (key
  ``LabelMap``, 459-class ids) and ``labels.txt``.

Steps: fetch (resume, MD5), convert every ``LabelMap`` to a 59-class PNG (0..58, background
= 255 ignore; ``--classes 60``/``both`` also writes the 60-class variant, background = 0),
extract only the annotated JPEGs, check every image/mask pair has one size, write the split
lists, and finally ``prepared.json``. Every file is written atomically and existing outputs
are kept, so an interrupted run resumes and a finished one returns at once (``--force`` redoes).

Hostile or damaged inputs are refused with one line naming the file: a label map larger
than the pixel limit is refused from its ``.mat`` header, before it is decoded; a member
that is a link or a device is never read, and if a split would lose an image because of
it, the preparation fails naming it (nothing is reported ready that is not).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

import numpy as np
from tqdm.auto import tqdm

from ..files import write_bytes_atomic, write_text_atomic
from . import pcontext as pc
from .archive import Skipped, describe, iter_files, read_files, skipped_error
from .common import (
    DataError,
    DatasetNotFoundError,
    PathLike,
    check_id,
    check_pair_sizes,
    parse_id_list,
    read_marker,
    save_mask_png,
)
from .download import Remote, locate
from .matfile import load_mat

VOC2010 = Remote(
    "VOCtrainval_03-May-2010.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar",
    # Same value in torchvision's VOC table and many dataset scripts.
    "da459979d0c395079b5c75ee67908abb",
    "1.3 GB",
)
CONTEXT = Remote(
    "trainval.tar.gz",
    "https://cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz",
    # Published in one public dataset script (tf-image-segmentation's PASCAL config) and not
    # confirmed elsewhere. If a clean download mismatches, run with --no-verify and report it.
    "df034edb2c12aa7d33b42b20bb1796e3",
    "31 MB",
)
REMOTES = {"voc2010": VOC2010, "context": CONTEXT}
VOC_DIR = "VOCdevkit/VOC2010"
_MAT = re.compile(r"(?:^|/)trainval/([^/]+)\.mat$")


def read_label_map(data: bytes, name: str) -> np.ndarray:
    """``LabelMap`` of one PASCAL-Context ``.mat`` file (bytes); errors name the file. Its
    size is checked against the pixel limit before it is decoded."""
    mat = load_mat(data, name)
    if "LabelMap" not in mat:
        raise DataError(f"annotation file {name} has no 'LabelMap' "
                        f"(keys: {sorted(k for k in mat if not k.startswith('__'))})")
    return mat["LabelMap"]


def check_labels_txt(text: str, name: str) -> None:
    """Warn if ``labels.txt`` does not name the 59 kept ids as expected (a different release)."""
    names = {}
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            if key.strip().isdigit():
                names[int(key)] = value.strip()
    wrong = [(i, names.get(i), c) for i, c in zip(pc.LABEL_IDS, pc.CLASSES_59)
             if names.get(i, "").replace(" ", "").lower() != c]
    if wrong:
        print(f"WARNING: {name} differs from the expected label list at {len(wrong)} of the 59 "
              f"kept ids, e.g. {wrong[:3]} (id, found, expected).")


_JPEG = re.compile(rf"(?:^|/){re.escape(VOC_DIR)}/JPEGImages/([^/]+)\.jpg$")


def already_prepared(root: Path, variants: List[int], force: bool
                     ) -> Tuple[Optional[Dict], List[int]]:
    """``(marker contents, variants)``: the contents when ``root`` already holds every asked
    variant (and not ``force``); otherwise None and the variants to write (the asked ones
    plus those already there, so the marker keeps listing them)."""
    marker = root / pc.MARKER
    if not marker.is_file() or force:
        return None, variants
    try:
        info = read_marker(marker, "PASCAL-Context")
    except DatasetNotFoundError:
        return None, variants  # damaged: prepare again
    done = set(info.get("variants", []))
    if set(variants) <= done:
        return info, variants
    return None, sorted(set(variants) | done)


def fetch_sources(remotes: Mapping[str, Remote], download_dir: Path, *, skip_download: bool,
                  verify: bool, progress: bool) -> Tuple[Path, Path]:
    """The VOC 2010 and the PASCAL-Context sources: archives (downloaded, resumed and
    MD5-checked as needed) or already extracted folders."""
    flags = dict(skip_download=skip_download, verify=verify, progress=progress)
    voc = locate(remotes["voc2010"], download_dir, VOC_DIR, **flags)
    ctx = locate(remotes["context"], download_dir, "trainval", **flags)
    return voc, ctx


def convert_annotations(ctx: Path, root: Path, variants: Sequence[int], *, force: bool,
                        progress: bool, skipped: Skipped) -> Set[str]:
    """Every ``trainval/<id>.mat`` (459 ids) -> one PNG per variant (missing ones only,
    unless ``force``); checks ``labels.txt`` on the way. Returns the annotated image ids;
    members that are not regular files go to ``skipped``."""
    ids = set()
    bar = tqdm(desc="convert annotations", unit="mask", disable=not progress)
    for name, data in iter_files(ctx, lambda n: bool(_MAT.search(n)) or n.endswith("labels.txt"),
                                 skipped):
        if name.endswith("labels.txt"):
            check_labels_txt(data.decode("utf-8", "replace"), describe(ctx, name))
            continue
        image_id = check_id(_MAT.search(name).group(1), describe(ctx, name))
        ids.add(image_id)
        outs = {v: root / pc.mask_dir(v) / f"{image_id}.png" for v in variants}
        outs = {v: p for v, p in outs.items() if force or not p.exists()}
        if outs:
            label_map = read_label_map(data, describe(ctx, name))
            for v, path in outs.items():
                save_mask_png(path, pc.convert_label_map(label_map, v, describe(ctx, name)))
        bar.update()
    bar.close()
    if not ids and skipped:
        raise skipped_error("no trainval/*.mat annotation can be read", ctx, skipped)
    if not ids:
        raise DataError(f"no trainval/*.mat annotation found in {ctx}")
    return ids


def read_split_lists(voc: Path) -> Dict[str, List[str]]:
    """VOC 2010's ``ImageSets/Main/{train,val}.txt`` as ``{split: [image id]}``."""
    lists = {s: f"{VOC_DIR}/ImageSets/Main/{s}.txt" for s in pc.SPLITS}
    skipped = Skipped(voc)
    text = read_files(voc, lists.values(), skipped)
    if skipped:
        raise skipped_error("the train/val lists cannot be read", voc, skipped)
    missing = [n for n in lists.values() if n not in text]
    if missing:
        raise DataError(f"{voc} lacks {missing}: is it VOCtrainval_03-May-2010.tar?")
    return {split: parse_id_list(text[member].decode("utf-8", "replace"),
                                 describe(voc, member)) for split, member in lists.items()}


def extract_images(voc: Path, images: Path, annotated: Set[str], *, force: bool,
                   progress: bool, skipped: Skipped) -> None:
    """Only the annotated JPEGs (those already there are kept unless ``force``); members
    that are not regular files go to ``skipped``."""
    have = {p.stem for p in images.glob("*.jpg")} if images.is_dir() and not force else set()
    todo = annotated - have

    def wanted(name: str) -> bool:
        m = _JPEG.search(name)
        return bool(m) and m.group(1) in todo

    bar = tqdm(total=len(todo), desc="extract images", unit="img", disable=not progress)
    if todo:
        for name, data in iter_files(voc, wanted, skipped):
            write_bytes_atomic(images / f"{_JPEG.search(name).group(1)}.jpg", data)
            bar.update()
    bar.close()


def check_complete(images: Path, splits: Mapping[str, List[str]], annotated: Set[str],
                   skipped: Skipped) -> List[str]:
    """Every image of a split exists (else an error naming examples, or the members skipped
    for safety); returns the sorted ids of the splits' images and notes annotations no
    split uses."""
    in_split = set(splits["train"]) | set(splits["val"])
    missing = sorted(i for i in in_split if not (images / f"{i}.jpg").exists())
    voc = skipped.source
    skipped.check("the train/val splits would come out {n} image(s) short", _JPEG, missing)
    if missing:
        raise DataError(f"{len(missing)} annotated images are not in {voc}, e.g. {missing[:5]}")
    unlisted = annotated - in_split
    if unlisted:
        print(f"note: {len(unlisted)} annotations belong to no train/val image and are unused")
    return sorted(in_split)


def write_manifest(root: Path, splits: Mapping[str, List[str]], variants: List[int]) -> Dict:
    """The split lists, then (last) ``prepared.json``, which says ``root`` is complete."""
    for split, split_ids in splits.items():
        write_text_atomic(root / "ImageSets" / f"{split}.txt", "".join(f"{i}\n" for i in split_ids))
    info = {"dataset": "pascal-context", "format": 1, "variants": variants,
            "train": len(splits["train"]), "val": len(splits["val"])}
    for split, n in pc.EXPECTED_SPLIT_SIZES.items():
        if info[split] != n:
            print(f"note: {info[split]} {split} images; the full release gives {n}.")
    write_text_atomic(root / pc.MARKER, json.dumps(info, indent=2) + "\n")
    return info


def check_annotations_usable(listed: Mapping[str, List[str]], annotated: Set[str],
                             skipped: Skipped) -> None:
    """Fail if an image of VOC 2010's train/val lists loses its annotation to a member
    skipped for safety (the split would silently come out short); note the others."""
    lost = (set(listed["train"]) | set(listed["val"])) - annotated
    skipped.check("the train/val splits would come out {n} image(s) short", _MAT, lost)
    if skipped:
        print(f"note: {len(skipped)} members of {skipped.source} that are not regular files were "
              f"skipped; no train/val image needs them: {sorted(skipped)[:5]}")


def prepare_pcontext(root: PathLike, download_dir: Optional[PathLike] = None, *,
                     variants: Sequence[int] = (59,), skip_download: bool = False,
                     force: bool = False, verify: bool = True, progress: bool = True,
                     remotes: Optional[Mapping[str, Remote]] = None) -> Dict:
    """Prepare PASCAL-Context at ``root``; returns the contents of ``prepared.json``.

    Steps: fetch, convert the annotations, extract the annotated images, restrict VOC 2010's
    train/val lists to them, check, write the lists and the marker. ``remotes`` overrides
    the upstream files (keys ``"voc2010"``, ``"context"``), e.g. to point at a mirror or, in
    the tests, at fabricated miniatures. ``verify=False`` (``--no-verify``) turns an MD5
    mismatch into a warning.
    """
    root = Path(root).expanduser()
    variants = sorted(set(int(v) for v in variants))
    for v in variants:
        pc.label_lut(v)  # validates
    info, variants = already_prepared(root, variants, force)
    if info is not None:
        print(f"PASCAL-Context already prepared at {root} ({info['train']} train / "
              f"{info['val']} val images); nothing to do (--force redoes it).")
        return info
    (root / pc.MARKER).unlink(missing_ok=True)  # the root is incomplete until the end
    download_dir = Path(download_dir).expanduser() if download_dir else root / "downloads"
    voc, ctx = fetch_sources({**REMOTES, **(remotes or {})}, download_dir,
                             skip_download=skip_download, verify=verify, progress=progress)
    ctx_skipped, voc_skipped = Skipped(ctx), Skipped(voc)
    annotated = convert_annotations(ctx, root, variants, force=force, progress=progress,
                                    skipped=ctx_skipped)
    listed = read_split_lists(voc)
    check_annotations_usable(listed, annotated, ctx_skipped)
    images = root / "JPEGImages"
    extract_images(voc, images, annotated, force=force, progress=progress, skipped=voc_skipped)
    splits = {split: [i for i in ids if i in annotated] for split, ids in listed.items()}
    in_split = check_complete(images, splits, annotated, voc_skipped)
    check_pair_sizes([(images / f"{i}.jpg", root / pc.mask_dir(v) / f"{i}.png")
                      for i in in_split for v in variants], progress=progress)  # headers only
    info = write_manifest(root, splits, variants)
    print(f"PASCAL-Context ready at {root}: {info['train']} train / {info['val']} val images, "
          f"{', '.join(str(v) for v in variants)}-class masks.")
    return info


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..cli import prepare_flags, prepare_parser, run_prepare

    parser = prepare_parser(
        "prepare_pcontext.py",
        "Download (resumable, MD5-checked) and convert PASCAL-Context to 59-class label PNGs "
        "for encnet_lite.data.PascalContext.", root="data/pcontext")
    parser.add_argument("--classes", choices=("59", "60", "both"), default="59",
                        help="59: background ignored (255), the common protocol; 60: background "
                             "is class 0")
    args = parser.parse_args(argv)
    variants = (59, 60) if args.classes == "both" else (int(args.classes),)
    return run_prepare("prepare_pcontext.py", lambda: prepare_pcontext(
        args.root, variants=variants, **prepare_flags(args)), args)


if __name__ == "__main__":
    sys.exit(main())
