"""Fabricated miniatures of the upstream archives, in their exact formats, for offline tests.

:func:`make_pcontext_miniature` writes a tiny ``VOCtrainval_03-May-2010.tar`` and
``trainval.tar.gz``; :func:`make_voc_miniature` a tiny ``VOCtrainval_11-May-2012.tar`` and
``benchmark.tgz``. Each returns the :class:`~encnet_lite.data.download.Remote` table pointing
at them (``file://`` URLs, their real MD5s), ready for ``prepare_*(..., remotes=...)``.
The images are synthetic pictures of their own label maps, so the pipeline can be shown
end to end without the real data (the datasets chapter does so in quick mode).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import scipy.io
from PIL import Image

from . import pcontext as pc
from . import prepare_ade20k, prepare_pcontext, prepare_voc
from .common import PathLike, voc_palette
from .download import Remote, file_digests, md5sum

Members = Mapping[str, bytes]


def jpeg_bytes(image: np.ndarray, quality: int = 92) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(mask: np.ndarray, palette: Optional[np.ndarray] = None) -> bytes:
    """Single-channel PNG; with ``palette`` an indexed (mode P) PNG like VOC's labels."""
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8))
    if palette is not None:
        img = img.convert("P")
        img.putpalette(np.asarray(palette, dtype=np.uint8).ravel().tolist())
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def mat_bytes(variables: Mapping[str, object]) -> bytes:
    """A MATLAB v5 ``.mat`` file (what PASCAL-Context and SBD ship), as bytes."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, dict(variables), do_compression=True)
    return buf.getvalue()


def write_tar(path: PathLike, members: Members) -> Path:
    """Write ``members`` (name -> bytes) to a tar; gzip when the name ends in .gz/.tgz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w:gz" if path.name.endswith((".gz", ".tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1262304000  # fixed, so the archives (and MD5s) are reproducible
            tar.addfile(info, io.BytesIO(data))
    return path


def _remote(path: Path, upstream: Remote) -> Remote:
    return Remote(upstream.filename, path.resolve().as_uri(), md5sum(path), "miniature")


def _scene(rng: np.random.Generator, ids: List[int], hw: Tuple[int, int]) -> np.ndarray:
    """A label map of horizontal layers and a box, using the given class ids."""
    h, w = hw
    label = np.empty((h, w), np.int64)
    cut1, cut2 = sorted(rng.integers(h // 5, 4 * h // 5, 2))
    label[:cut1], label[cut1:cut2], label[cut2:] = ids[0], ids[1], ids[2]
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    label[y0 : y0 + h // 3, x0 : x0 + w // 3] = ids[3]
    return label


def _picture(label: np.ndarray, colours: Dict[int, np.ndarray], rng: np.random.Generator):
    image = np.zeros(label.shape + (3,), np.float32)
    for value in np.unique(label):
        image[label == value] = colours.setdefault(int(value), rng.uniform(30, 225, 3))
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _ids(prefix: str, n: int, start: int = 0) -> List[str]:
    return [f"{prefix}_{start + k:06d}" for k in range(n)]


def make_pcontext_miniature(directory: PathLike, n_train: int = 3, n_val: int = 2,
                            seed: int = 0, extra: Optional[Mapping[str, Members]] = None
                            ) -> Dict[str, Remote]:
    """Write a miniature ``VOCtrainval_03-May-2010.tar`` + ``trainval.tar.gz`` into
    ``directory``. ``extra`` adds or replaces members, per archive file name (for bad-input
    tests). Returns ``{"voc2010": Remote, "context": Remote}`` for ``prepare_pcontext``."""
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    train, val = _ids("2008", n_train), _ids("2009", n_val)
    unannotated = _ids("2010", 1)  # listed in Main but without a PASCAL-Context annotation
    kept = list(pc.LABEL_IDS)
    labels_txt = [f"{i}: {pc.CLASSES_59[kept.index(i)] if i in kept else f'rawclass{i}'}"
                  for i in range(1, pc.NUM_RAW_LABELS + 1)]
    voc: Dict[str, bytes] = {"VOCdevkit/VOC2010/Annotations/2008_000000.xml": b"<annotation/>"}
    ctx: Dict[str, bytes] = {"labels.txt": "\n".join(labels_txt).encode() + b"\n"}
    colours: Dict[int, np.ndarray] = {}
    for image_id in train + val + unannotated:
        hw = (int(rng.integers(40, 72)), int(rng.integers(48, 80)))
        # sky/wall, a kept class, ground/floor, and one object; raw 1 (accordion) and 0 appear
        # too, so background (not among the 59) and unlabelled pixels are exercised.
        ids = [int(rng.choice([360, 445])), int(rng.choice(kept)), int(rng.choice([189, 158])),
               int(rng.choice([1, 59, 284, 0]))]
        label = _scene(rng, ids, hw)
        voc[f"VOCdevkit/VOC2010/JPEGImages/{image_id}.jpg"] = jpeg_bytes(
            _picture(label, colours, rng))
        if image_id not in unannotated:
            ctx[f"trainval/{image_id}.mat"] = mat_bytes({"LabelMap": label.astype(np.uint16)})
    voc["VOCdevkit/VOC2010/ImageSets/Main/train.txt"] = "".join(
        f"{i}\n" for i in train + unannotated).encode()
    voc["VOCdevkit/VOC2010/ImageSets/Main/val.txt"] = "".join(f"{i}\n" for i in val).encode()
    files = {prepare_pcontext.VOC2010.filename: voc, prepare_pcontext.CONTEXT.filename: ctx}
    for name, members in (extra or {}).items():
        files[name] = {**files[name], **members}
    paths = {name: write_tar(directory / name, members) for name, members in files.items()}
    return {"voc2010": _remote(paths[prepare_pcontext.VOC2010.filename], prepare_pcontext.VOC2010),
            "context": _remote(paths[prepare_pcontext.CONTEXT.filename], prepare_pcontext.CONTEXT)}


def make_voc_miniature(directory: PathLike, n_train: int = 3, n_val: int = 2, n_sbd: int = 3,
                       seed: int = 0, extra: Optional[Mapping[str, Members]] = None
                       ) -> Dict[str, Remote]:
    """Write a miniature ``VOCtrainval_11-May-2012.tar`` + ``benchmark.tgz``. SBD labels every
    VOC image plus ``n_sbd`` more (one of which only SBD's ``img/`` folder holds). Returns
    ``{"voc2012": Remote, "sbd": Remote}`` for ``prepare_voc``."""
    directory = Path(directory)
    rng = np.random.default_rng(seed)
    train, val, sbd_only = _ids("2007", n_train), _ids("2008", n_val), _ids("2011", n_sbd)
    palette = voc_palette(256)
    root, bench = "VOCdevkit/VOC2012", "benchmark_RELEASE/dataset"
    voc: Dict[str, bytes] = {}
    sbd: Dict[str, bytes] = {}
    colours: Dict[int, np.ndarray] = {}
    for image_id in train + val + sbd_only:
        hw = (int(rng.integers(40, 72)), int(rng.integers(48, 80)))
        label = _scene(rng, [0, int(rng.integers(1, 21)), 0, int(rng.integers(1, 21))], hw)
        jpg = jpeg_bytes(_picture(label, colours, rng))
        if image_id != sbd_only[-1]:
            voc[f"{root}/JPEGImages/{image_id}.jpg"] = jpg
        sbd[f"{bench}/img/{image_id}.jpg"] = jpg
        sbd[f"{bench}/cls/{image_id}.mat"] = mat_bytes({"GTcls": {
            "Segmentation": label.astype(np.uint8),
            "CategoriesPresent": np.unique(label[label > 0]).astype(np.uint8)}})
        if image_id in train + val:  # VOC's own labels: 255 on object boundaries
            voc_label = label.copy()
            edges = np.zeros_like(label, bool)
            edges[1:] |= label[1:] != label[:-1]
            edges[:, 1:] |= label[:, 1:] != label[:, :-1]
            voc_label[edges] = 255
            voc[f"{root}/SegmentationClass/{image_id}.png"] = png_bytes(voc_label, palette)
    seg = f"{root}/ImageSets/Segmentation"
    voc[f"{seg}/train.txt"] = "".join(f"{i}\n" for i in train).encode()
    voc[f"{seg}/val.txt"] = "".join(f"{i}\n" for i in val).encode()
    voc[f"{seg}/trainval.txt"] = "".join(f"{i}\n" for i in train + val).encode()
    sbd_ids = train + val + sbd_only
    sbd[f"{bench}/train.txt"] = "".join(f"{i}\n" for i in sbd_ids[::2]).encode()
    sbd[f"{bench}/val.txt"] = "".join(f"{i}\n" for i in sbd_ids[1::2]).encode()
    files = {prepare_voc.VOC2012.filename: voc, prepare_voc.SBD.filename: sbd}
    for name, members in (extra or {}).items():
        files[name] = {**files[name], **members}
    paths = {name: write_tar(directory / name, members) for name, members in files.items()}
    return {"voc2012": _remote(paths[prepare_voc.VOC2012.filename], prepare_voc.VOC2012),
            "sbd": _remote(paths[prepare_voc.SBD.filename], prepare_voc.SBD)}


# --------------------------------------------------------------------------- ADE20K

ADE20K_MANIFEST = "ADEChallengeData2016.manifest.json"
_ADE_SCENES = ("bedroom", "street", "kitchen", "coast", "living_room", "highway")


def write_zip(path: PathLike, members: Members) -> Path:
    """Write ``members`` (name -> bytes; a name ending in ``/`` is a folder entry) to a zip,
    atomically and reproducibly (fixed dates, so the checksums do not change)."""
    import zipfile

    from ..files import write_bytes_atomic

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2016, 6, 1, 0, 0, 0)), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, buf.getvalue())
    return path


def _ade_object_info(labels: Mapping[str, np.ndarray]) -> bytes:
    """``objectInfo150.txt`` in the development kit's format (tab-separated Idx, Ratio,
    Train, Val, Name), its figures counted on the miniature's own raw label maps."""
    from .ade20k import CLASSES

    total = sum(label.size for label in labels.values())
    lines = ["Idx\tRatio\tTrain\tVal\tName"]
    for k, name in enumerate(CLASSES, 1):
        share = sum(int((label == k).sum()) for label in labels.values()) / total
        seen = [n for n, label in labels.items() if (label == k).any()]
        lines.append(f"{k}\t{share:.4f}\t{sum('_train_' in n for n in seen)}\t"
                     f"{sum('_val_' in n for n in seen)}\t{name}")
    return ("\n".join(lines) + "\n").encode()


def make_ade20k_miniature(directory: PathLike, n_train: int = 4, n_val: int = 2, seed: int = 0,
                          extra: Optional[Members] = None, drop: Tuple[str, ...] = ()
                          ) -> prepare_ade20k.Release:
    """Write a miniature ``ADEChallengeData2016.zip`` into ``directory`` in the release's
    layout (folder entries, ``images/`` and ``annotations/`` per split, ``objectInfo150.txt``,
    ``sceneCategories.txt``), and beside it ``ADEChallengeData2016.manifest.json``.

    Raw labels are 0..150 as upstream (0 = other; 0 and 150 both occur). ``extra`` adds or
    replaces members, ``drop`` removes some (bad-input tests); the counts stay ``n_train`` /
    ``n_val``. Returns the :class:`~encnet_lite.data.prepare_ade20k.Release` describing the
    zip (``file://`` URL, its real SHA-1 and SHA-256, these counts) for ``prepare_ade20k``.
    """
    from ..files import write_text_atomic
    from .ade20k import BASE_DIR, SPLIT_DIRS

    directory, rng = Path(directory), np.random.default_rng(seed)
    members: Dict[str, bytes] = {f"{BASE_DIR}/": b""}
    for kind in ("images", "annotations"):
        members[f"{BASE_DIR}/{kind}/"] = b""
        members.update({f"{BASE_DIR}/{kind}/{folder}/": b"" for folder in SPLIT_DIRS.values()})
    labels: Dict[str, np.ndarray] = {}
    colours: Dict[int, np.ndarray] = {}
    scenes = []
    for split, n in (("train", n_train), ("val", n_val)):
        for k in range(1, n + 1):
            name, folder = f"ADE_{split}_{k:08d}", SPLIT_DIRS[split]
            hw = (int(rng.integers(40, 72)), int(rng.integers(48, 80)))
            # wall or sky, any class, floor or earth, and a box cycling through other (0),
            # flag (150, the last id), person and car
            ids = [int(rng.choice([1, 3])), int(rng.integers(1, 151)), int(rng.choice([4, 14])),
                   (0, 150, 13, 21)[len(labels) % 4]]
            label = labels[name] = _scene(rng, ids, hw).astype(np.uint8)
            members[f"{BASE_DIR}/images/{folder}/{name}.jpg"] = jpeg_bytes(
                _picture(label, colours, rng))
            members[f"{BASE_DIR}/annotations/{folder}/{name}.png"] = png_bytes(label)
            scenes.append(f"{name} {_ADE_SCENES[int(rng.integers(len(_ADE_SCENES)))]}\n")
    members[f"{BASE_DIR}/objectInfo150.txt"] = _ade_object_info(labels)
    members[f"{BASE_DIR}/sceneCategories.txt"] = "".join(scenes).encode()
    members.update(extra or {})
    for name in drop:
        del members[name]
    filename = prepare_ade20k.OFFICIAL.filename
    path = write_zip(directory / filename, members)
    digests = file_digests(path, ("sha1", "sha256"))
    release = prepare_ade20k.Release(filename, path.resolve().as_uri(), digests["sha1"],
                                     digests["sha256"], path.stat().st_size,
                                     {"train": n_train, "val": n_val})
    write_text_atomic(directory / ADE20K_MANIFEST, release.to_json())
    return release
