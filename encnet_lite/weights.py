"""Published EncNet weights: a catalogue, verified downloads and lossless loading.

The official PyTorch-Encoding model zoo (``encoding/models/model_store.py``; scores in its
documentation, ``docs/source/model_zoo/segmentation.rst``) and mmsegmentation
(``configs/encnet/README.md`` and ``metafile.yaml``) published trained EncNets. Each one is
an entry of :data:`CATALOGUE` (a :class:`WeightsEntry`: URL, checksum, file format,
classes and their names, input normalisation, ``align_corners``, lateral connections,
base and crop size, published scores with their protocol and source)::

    from encnet_lite.models import load_weights
    model = load_weights("EncNet_ResNet50s_PContext")       # eval mode, verified
    model.weights_meta.classes[:3]                           # ('aeroplane', 'bag', 'bed')

The same through the builders, as torchvision does it:
``encnet_resnet50(weights="EncNet_ResNet50s_PContext")``.

How a file becomes a model, and why it is lossless:

- the file is found in the cache (``~/.cache/encnet-lite/weights``, or ``$ENCNET_WEIGHTS_DIR``,
  or ``cache_dir=``), else downloaded there (resumable, with a progress bar; the host in
  ``$ENCNET_WEIGHTS_URL`` replaces the published one, since the official host has moved
  before); ``file=`` uses a local copy instead (the zoo's ``.zip`` or the ``.pth`` in it);
- its checksum is verified before use: the official SHA-1 is that of the ``.pth`` (inside
  the zip), mmsegmentation's file names end with the first 8 hex digits of the SHA-256;
- it is read with ``torch.load(weights_only=True)``: tensors only, no code is unpickled;
- its keys are renamed by fixed prefix rules (:data:`RULES`) and nothing else happens to the
  tensors; only keys known to be unused are dropped (the ImageNet classifier
  ``pretrained.fc.*``); ``num_batches_tracked`` counters absent from old files are set to 0
  (they play no part in evaluation);
- the renamed dict must fill every key of our model with the right shape (strict); a file
  that fits no entry is refused with the missing, unexpected and misshapen keys named.

Errors are :class:`~encnet_lite.errors.WeightsError`. The ``encnet-weights`` CLI
lists the catalogue and fetches a file ahead of time (``encnet-weights download NAME``).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .data.ade20k import CLASSES as ADE20K_CLASSES
from .data.pcontext import CLASSES_59
from .errors import WeightsError

__all__ = [
    "CATALOGUE", "IMAGENET_BACKBONES", "RULES", "BackboneWeights", "Cost", "Score",
    "WeightsEntry", "cost_table",
    "check_builder_args", "config_for", "convert_state_dict", "download_weights",
    "export_state_dict", "fetch_state_dict", "fit_state_dict", "get_entry",
    "imagenet_state_dict", "main", "read_state_dict", "save_published", "url_for",
    "weights_dir",
]

PathLike = Union[str, Path]
ENV_DIR = "ENCNET_WEIGHTS_DIR"  # the cache folder
ENV_URL = "ENCNET_WEIGHTS_URL"  # a folder URL holding the files under their published names
OFFICIAL_HOST = "https://s3.us-west-1.wasabisys.com/encoding/models/"  # until 2020: hangzh.s3
MMSEG_HOST = "https://download.openmmlab.com/mmsegmentation/v0.5/encnet/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB in [0, 1]; mmsegmentation: x255 on 0-255 values
IMAGENET_STD = (0.229, 0.224, 0.225)

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # the 19 Cityscapes train ids
DATASETS = {
    "pcontext": (CLASSES_59, "PASCAL-Context, 59 classes; background is ignored (official "
                             "code: -1, this project: 255)"),
    "ade20k": (ADE20K_CLASSES, "ADE20K, 150 classes; label 0 ('other') is ignored and "
                               "1-150 become 0-149"),
    "cityscapes": (CITYSCAPES_CLASSES, "Cityscapes, 19 train ids; 255 is ignored"),
}


@dataclass(frozen=True)
class Score:
    """A published score: ``mIoU`` and ``pixAcc`` as fractions, like
    :meth:`~encnet_lite.metrics.ConfusionMatrix.compute` (``pixAcc`` None where not
    published)."""

    mIoU: float
    pixAcc: Optional[float]
    protocol: str  # how it was measured
    where: str  # where it is published

    @classmethod
    def published(cls, mIoU: float, pixAcc: Optional[float], protocol: str,
                  where: str) -> Score:
        """A score from the numbers as published: percent."""
        return cls(mIoU / 100, None if pixAcc is None else pixAcc / 100, protocol, where)


@dataclass(frozen=True)
class Cost:
    """What training and running a published model cost, as published (None: not published).

    ``train_mem_gb``: peak training memory per GPU in GB (mmsegmentation: the largest
    ``torch.cuda.max_memory_allocated()`` of its 4 GPUs); ``infer_ms``: one image, batch 1,
    FP32, forward and post-processing without data loading; ``iters`` (or ``epochs``)
    steps of ``gpus`` x ``batch_per_gpu`` images, ``crop_size`` (H, W) each.
    """

    gpus: int
    batch_per_gpu: int
    crop_size: Tuple[int, int]
    iters: Optional[int]
    epochs: Optional[int]
    hardware: Optional[str]  # the GPU type, e.g. "V100"
    train_mem_gb: Optional[float]
    infer_ms: Optional[float]
    where: str

    @property
    def fps(self) -> Optional[float]:
        """Images per second at inference (1000 / ``infer_ms``)."""
        return None if self.infer_ms is None else 1000.0 / self.infer_ms

    @property
    def batch(self) -> int:
        """Images per training step, over all GPUs."""
        return self.gpus * self.batch_per_gpu


@dataclass(frozen=True)
class WeightsEntry:
    """One published model: where its file is, how to check it, what it was trained on.

    ``digest`` is the hex checksum (``algo``: "sha1" or "sha256") of the ``.pth`` (the
    official zoo's sits inside a zip); it may be a prefix (mmsegmentation publishes 8
    digits). ``crop_size`` is (H, W); ``base_size`` is the image size that scale 1 means
    (official: the long side; mmsegmentation: the short side). ``mean``/``std`` are RGB on
    [0, 1] (:func:`encnet_lite.data.normalize` uses the same).
    """

    name: str
    source: str  # "official" (PyTorch-Encoding zoo) | "mmseg" (mmsegmentation)
    url: str
    algo: str
    digest: str
    model: str  # "encnet" | "fcn"
    depth: int  # 50 | 101
    stem: str  # "deep64" (official resnet50s/101s) | "deep32" (ResNetV1c)
    dataset: str  # key of DATASETS
    lateral: bool
    se_loss: bool
    align_corners: bool
    base_size: int
    crop_size: Tuple[int, int]
    scores: Tuple[Score, ...]
    aux: bool = True
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    # encnet_lite.evaluate's protocol that the published scores were measured with:
    # "official" (PyTorch-Encoding's test.py) or "mmseg" (mmsegmentation's whole-image test;
    # its 769x769 Cityscapes sliding windows are not reproduced).
    protocol: Optional[str] = "official"

    @property
    def filename(self) -> str:
        """The published file name (``.zip`` for the official zoo, ``.pth`` otherwise)."""
        return self.url.rsplit("/", 1)[-1]

    @property
    def classes(self) -> Tuple[str, ...]:
        """Class names in the order of the model's outputs."""
        return DATASETS[self.dataset][0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> str:
        """How the dataset's labels map onto the outputs (what is ignored)."""
        return DATASETS[self.dataset][1]

    @property
    def rules(self) -> str:
        """Key of :data:`RULES` that renames this file's keys to ours."""
        return f"{self.source}-{self.model}"

    @property
    def cost(self) -> Optional[Cost]:
        """Published training and inference cost (:data:`COSTS`), None where none is."""
        return COSTS.get(self.name.lower())

    def summary(self) -> str:
        stem = {"deep64": "deep stem", "deep32": "ResNetV1c stem"}[self.stem]
        lateral = ", lateral" if self.lateral else ""
        return (f"{self.source} {self.model}, ResNet-{self.depth} {stem}, "
                f"{self.num_classes} classes{lateral}")


@dataclass(frozen=True)
class BackboneWeights:
    """ImageNet weights of a deep-stem ResNet (official ``resnet50s``/``resnet101s``)."""

    name: str
    url: str
    algo: str
    digest: str
    depth: int
    stem: str = "deep64"
    source: str = "official"

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def rules(self) -> str:
        return f"{self.source}-backbone"

    def summary(self) -> str:
        return f"ImageNet ResNet-{self.depth} ({self.stem} stem)"


# --------------------------------------------------------------------------- the catalogue

_ZOO_DOCS = "PyTorch-Encoding docs, model zoo (docs/source/model_zoo/segmentation.rst)"
_ZOO_PROTOCOL = ("official test.py --eval: scales 0.5-1.75 of base_size with flips, "
                 "crop_size windows; pixAcc and mIoU without the ignored label")
_MMSEG_DOCS = "mmsegmentation configs/encnet/README.md (metafile.yaml)"
_MMSEG_MS = "mmsegmentation ms+flip: ratios 0.5-1.75 of the single-scale size, with flips"
_MMSEG_SS = {
    "ade20k": "mmsegmentation single scale: whole image, resized to (2048, 512) keeping "
              "its ratio",
    "cityscapes": "mmsegmentation single scale: whole 2048x1024 image",
    "cityscapes769": "mmsegmentation single scale: 769x769 windows at stride 513 over the "
                     "image resized to (2049, 1025)",
}


def _official(name: str, sha1: str, model: str, depth: int, dataset: str, pixAcc: float,
              mIoU: float, base: int = 520, crop: int = 480) -> WeightsEntry:
    stem = f"{name.lower()}-{sha1[:8]}"
    return WeightsEntry(
        name=name, source="official", url=f"{OFFICIAL_HOST}{stem}.zip", algo="sha1",
        digest=sha1, model=model, depth=depth, stem="deep64", dataset=dataset,
        lateral=model == "encnet" and dataset == "pcontext", se_loss=model == "encnet",
        align_corners=True, base_size=base, crop_size=(crop, crop),
        scores=(Score.published(mIoU, pixAcc, _ZOO_PROTOCOL, _ZOO_DOCS),))


def _mmseg(name: str, folder: str, stamp: str, depth: int, mIoU: float, ms_mIoU: float,
           crop: Tuple[int, int]) -> WeightsEntry:
    dataset = "ade20k" if "ade20k" in name else "cityscapes"
    slide = crop == (769, 769)
    single = _MMSEG_SS["cityscapes769" if slide else dataset]
    return WeightsEntry(
        name=name, source="mmseg", url=f"{MMSEG_HOST}{folder}/{folder}_{stamp}.pth",
        algo="sha256", digest=stamp.rsplit("-", 1)[1], model="encnet", depth=depth,
        stem="deep32", dataset=dataset, lateral=False, se_loss=True,
        align_corners=slide,  # the 769x769 Cityscapes configs set align_corners=True
        base_size=512 if dataset == "ade20k" else 1024, crop_size=crop, protocol="mmseg",
        scores=(Score.published(mIoU, None, single, _MMSEG_DOCS),
                Score.published(ms_mIoU, None, _MMSEG_MS, _MMSEG_DOCS)))


_ENTRIES = (
    _official("EncNet_ResNet50s_PContext", "4de91d5922d4d3264f678b663f874da72e82db00",
              "encnet", 50, "pcontext", 79.2, 51.0),
    _official("EncNet_ResNet101s_PContext", "9f27ea13d514d7010e59988341bcbd4140fcc33d",
              "encnet", 101, "pcontext", 80.7, 54.1),
    _official("EncNet_ResNet50s_ADE", "07ac287cd77e53ea583f37454e17d30ce1509a4a",
              "encnet", 50, "ade20k", 80.1, 41.5),
    _official("EncNet_ResNet101s_ADE", "3f54fa3b67bac7619cd9b3673f5c8227cf8f4718",
              "encnet", 101, "ade20k", 81.3, 44.4, base=640, crop=576),
    _official("FCN_ResNet50s_ADE", "662e979de25a389f11c65e9f1df7e06c2c356381",
              "fcn", 50, "ade20k", 78.7, 38.5),
    _mmseg("encnet_r50-d8_4xb4-80k_ade20k-512x512", "encnet_r50-d8_512x512_80k_ade20k",
           "20200622_042412-44b46b04", 50, 39.53, 41.17, (512, 512)),
    _mmseg("encnet_r101-d8_4xb4-80k_ade20k-512x512", "encnet_r101-d8_512x512_80k_ade20k",
           "20200622_101128-dd35e237", 101, 42.11, 43.61, (512, 512)),
    _mmseg("encnet_r50-d8_4xb4-160k_ade20k-512x512", "encnet_r50-d8_512x512_160k_ade20k",
           "20200622_101059-b2db95e0", 50, 40.10, 41.71, (512, 512)),
    _mmseg("encnet_r101-d8_4xb4-160k_ade20k-512x512", "encnet_r101-d8_512x512_160k_ade20k",
           "20200622_073348-7989641f", 101, 42.61, 44.01, (512, 512)),
    _mmseg("encnet_r50-d8_4xb2-40k_cityscapes-512x1024", "encnet_r50-d8_512x1024_40k_cityscapes",
           "20200621_220958-68638a47", 50, 75.67, 77.08, (512, 1024)),
    _mmseg("encnet_r101-d8_4xb2-40k_cityscapes-512x1024",
           "encnet_r101-d8_512x1024_40k_cityscapes", "20200621_220933-35e0a3e8", 101, 75.81,
           77.21, (512, 1024)),
    _mmseg("encnet_r50-d8_4xb2-40k_cityscapes-769x769", "encnet_r50-d8_769x769_40k_cityscapes",
           "20200621_220958-3bcd2884", 50, 76.24, 77.85, (769, 769)),
    _mmseg("encnet_r101-d8_4xb2-40k_cityscapes-769x769", "encnet_r101-d8_769x769_40k_cityscapes",
           "20200621_220933-2fafed55", 101, 74.25, 76.25, (769, 769)),
    _mmseg("encnet_r50-d8_4xb2-80k_cityscapes-512x1024", "encnet_r50-d8_512x1024_80k_cityscapes",
           "20200622_003554-fc5c5624", 50, 77.94, 79.13, (512, 1024)),
    _mmseg("encnet_r101-d8_4xb2-80k_cityscapes-512x1024",
           "encnet_r101-d8_512x1024_80k_cityscapes", "20200622_003555-1de64bec", 101, 78.55,
           79.47, (512, 1024)),
    _mmseg("encnet_r50-d8_4xb2-80k_cityscapes-769x769", "encnet_r50-d8_769x769_80k_cityscapes",
           "20200622_003554-55096dcb", 50, 77.44, 78.72, (769, 769)),
    _mmseg("encnet_r101-d8_4xb2-80k_cityscapes-769x769", "encnet_r101-d8_769x769_80k_cityscapes",
           "20200622_003555-470ef79d", 101, 76.10, 76.97, (769, 769)),
)
CATALOGUE: Dict[str, WeightsEntry] = {e.name.lower(): e for e in _ENTRIES}

# Published cost. mmsegmentation: configs/encnet/README.md ("Mem (GB)", "Inf time (fps)";
# commit 02e04cc2), metafile.yaml ("Batch Size", "Training Resources: V100"; commit 94ebf0a0),
# metafile_fps.yml ("inference time (ms/im)", V100, PyTorch, batch 1, FP32, for every row;
# commit 22ae924d) and docs/en/model_zoo.md (4 GPUs; memory and timing method). The README
# leaves the memory of the 80k Cityscapes and 160k ADE20K rows blank ("-"): None here,
# although their models equal the shorter runs'. The official zoo states only its training
# command (4 GPUs, the script's default batch of 16; 80 epochs on PASCAL-Context).
_MMSEG_COST_WHERE = ("mmsegmentation configs/encnet/README.md, metafile.yaml, metafile_fps.yml; "
                     "docs/en/model_zoo.md")
_MMSEG_MODEL_COST = {  # (dataset, crop, depth): (train memory GB per GPU, inference ms/image)
    ("cityscapes", (512, 1024), 50): (8.6, 218.34),
    ("cityscapes", (512, 1024), 101): (12.1, 375.94),
    ("cityscapes", (769, 769), 50): (9.8, 549.45),
    ("cityscapes", (769, 769), 101): (13.7, 793.65),
    ("ade20k", (512, 512), 50): (10.1, 43.84),
    ("ade20k", (512, 512), 101): (13.6, 67.25),
}
_MMSEG_MEM_PUBLISHED = {("cityscapes", 40_000), ("ade20k", 80_000)}  # README rows with Mem


def _mmseg_cost(entry: WeightsEntry) -> Cost:
    """Cost of an mmsegmentation entry; GPUs, batch and iterations read from its name."""
    gpus, rest = entry.name.split("_")[2].split("xb")  # e.g. "4xb2-40k" -> "4", "2-40k"
    batch, iters = rest.split("-")
    iters_n = int(iters.rstrip("k")) * 1000
    mem, ms = _MMSEG_MODEL_COST[(entry.dataset, entry.crop_size, entry.depth)]
    return Cost(gpus=int(gpus), batch_per_gpu=int(batch), crop_size=entry.crop_size,
                iters=iters_n, epochs=None, hardware="V100",
                train_mem_gb=mem if (entry.dataset, iters_n) in _MMSEG_MEM_PUBLISHED else None,
                infer_ms=ms, where=_MMSEG_COST_WHERE)


def _official_cost(entry: WeightsEntry) -> Cost:
    return Cost(gpus=4, batch_per_gpu=4, crop_size=entry.crop_size, iters=None,
                epochs=80 if entry.dataset == "pcontext" else None, hardware=None,
                train_mem_gb=None, infer_ms=None,
                where="PyTorch-Encoding docs/source/model_zoo/segmentation.rst (training "
                      "command), experiments/segmentation/option.py (defaults)")


COSTS: Dict[str, Cost] = {
    key: (_mmseg_cost if e.source == "mmseg" else _official_cost)(e)
    for key, e in CATALOGUE.items()}


def cost_table(names: Optional[Sequence[str]] = None) -> Tuple[List[str], List[List[str]]]:
    """Header and rows of the published cost of ``names`` (default: every mmsegmentation
    entry), for :func:`encnet_lite.viz.markdown_table`; "-" where nothing is published."""
    entries = ([get_entry(n) for n in names] if names is not None
               else [e for e in _ENTRIES if e.source == "mmseg"])
    header = ["model", "crop", "training", "GPU", "train memory per GPU", "inference"]
    rows = []
    for e in entries:
        c = COSTS[e.name.lower()]  # every catalogue entry has one
        steps = f"{c.iters // 1000}k iterations" if c.iters else f"{c.epochs or '?'} epochs"
        infer = "-" if c.infer_ms is None else f"{c.infer_ms:g} ms/image ({c.fps:.2f} fps)"
        mem = "-" if c.train_mem_gb is None else f"{c.train_mem_gb:g} GB"
        rows.append([e.name, "x".join(map(str, c.crop_size)),
                     f"{steps} of {c.gpus} x {c.batch_per_gpu} images", c.hardware or "-",
                     mem, infer])
    return header, rows


IMAGENET_BACKBONES: Dict[str, BackboneWeights] = {
    "resnet50s": BackboneWeights("resnet50s", f"{OFFICIAL_HOST}resnet50s-a75c83cf.zip", "sha1",
                                 "a75c83cfc89a56a4e8ba71b14f1ec67e923787b3", 50),
    "resnet101s": BackboneWeights("resnet101s", f"{OFFICIAL_HOST}resnet101s-03a0f310.zip",
                                  "sha1", "03a0f310d6447880f1b22a83bd7d1aa7fc702c6e", 101),
}

# Renaming rules, (published prefix, our prefix), first match wins. Every tensor keeps its
# values; the module layouts compute the same function (see the module docstring).
_OFFICIAL_AUX = (("auxlayer.conv5.0.", "aux.0.0."), ("auxlayer.conv5.1.", "aux.0.1."),
                 ("auxlayer.conv5.4.", "aux.2."))
_MMSEG_STEM = (("stem.0.", "conv1.0."), ("stem.1.", "conv1.1."), ("stem.3.", "conv1.3."),
               ("stem.4.", "conv1.4."), ("stem.6.", "conv1.6."), ("stem.7.", "bn1."),
               ("layer", "layer"))
RULES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "official-encnet": (
        ("pretrained.", "backbone."), ("head.conv5.", "head.conv."),
        ("head.connect.", "head.lateral.connect."), ("head.fusion.", "head.lateral.fusion."),
        ("head.encmodule.encoding.0.", "head.encode.project.0."),
        ("head.encmodule.encoding.1.", "head.encode.project.1."),
        ("head.encmodule.encoding.3.", "head.encode.encoding."),
        ("head.encmodule.encoding.4.", "head.encode.code_norm."),
        ("head.encmodule.fc.0.", "head.encode.fc_gamma."),
        ("head.encmodule.selayer.", "head.encode.fc_se."),
        ("head.conv6.1.", "head.classifier.1."), *_OFFICIAL_AUX),
    "official-fcn": (
        ("pretrained.", "backbone."), ("head.conv5.0.", "head.0.0."),
        ("head.conv5.1.", "head.0.1."), ("head.conv5.4.", "head.2."), *_OFFICIAL_AUX),
    "mmseg-encnet": (
        *((f"backbone.{a}", f"backbone.{b}") for a, b in _MMSEG_STEM),
        ("decode_head.bottleneck.conv.", "head.conv.0."),
        ("decode_head.bottleneck.bn.", "head.conv.1."),
        *((f"decode_head.lateral_convs.{i}.{a}.", f"head.lateral.connect.{i}.{b}.")
          for i in (0, 1) for a, b in (("conv", 0), ("bn", 1))),
        ("decode_head.fusion.conv.", "head.lateral.fusion.0."),
        ("decode_head.fusion.bn.", "head.lateral.fusion.1."),
        ("decode_head.enc_module.encoding_project.conv.", "head.encode.project.0."),
        ("decode_head.enc_module.encoding_project.bn.", "head.encode.project.1."),
        ("decode_head.enc_module.encoding.0.", "head.encode.encoding."),
        ("decode_head.enc_module.encoding.1.", "head.encode.code_norm."),
        ("decode_head.enc_module.fc.0.", "head.encode.fc_gamma."),
        ("decode_head.se_layer.", "head.encode.fc_se."),
        ("decode_head.conv_seg.", "head.classifier.1."),
        ("auxiliary_head.convs.0.conv.", "aux.0.0."), ("auxiliary_head.convs.0.bn.", "aux.0.1."),
        ("auxiliary_head.conv_seg.", "aux.2.")),
    "official-backbone": (("conv1.", "conv1."), ("bn1.", "bn1."), ("layer", "layer")),
    "mmseg-backbone": _MMSEG_STEM,
}
# Keys a file may carry that no model here uses: the ImageNet classifier of the backbone.
_UNUSED = {"official-encnet": ("pretrained.fc.",), "official-fcn": ("pretrained.fc.",),
           "mmseg-encnet": (), "official-backbone": ("fc.",), "mmseg-backbone": ("fc.",)}

AnyEntry = Union[WeightsEntry, BackboneWeights]


def get_entry(name: Union[str, WeightsEntry]) -> WeightsEntry:
    """The catalogue entry called ``name`` (case-insensitive), or a :class:`WeightsError`
    listing the names."""
    if isinstance(name, WeightsEntry):
        return name
    entry = CATALOGUE.get(str(name).strip().lower())
    if entry is None:
        names = ", ".join(e.name for e in _ENTRIES)
        raise WeightsError(f"no published weights called {name!r}; choose one of: {names} "
                           "(encnet-weights list describes them)")
    return entry


# --------------------------------------------------------------------------- files


def weights_dir(cache_dir: Optional[PathLike] = None) -> Path:
    """The cache folder: ``cache_dir``, else ``$ENCNET_WEIGHTS_DIR``, else
    ``$XDG_CACHE_HOME/encnet-lite/weights`` (``~/.cache/encnet-lite/weights``)."""
    if cache_dir is not None and str(cache_dir).strip():
        return Path(cache_dir).expanduser()
    if os.environ.get(ENV_DIR, "").strip():
        return Path(os.environ[ENV_DIR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "encnet-lite" \
        / "weights"


def url_for(entry: AnyEntry) -> str:
    """Where ``entry`` is downloaded from: ``$ENCNET_WEIGHTS_URL/<file name>`` when that
    variable names a mirror (a folder URL, ``file://`` too), else the published URL."""
    base = os.environ.get(ENV_URL, "").strip()
    return f"{base.rstrip('/')}/{entry.filename}" if base else entry.url


def _by_hand(entry: AnyEntry) -> str:
    """What to do when the download fails (the host moved, a proxy, no network)."""
    return (f"Fetch {entry.url} by hand (a browser works) and pass it as a local file: "
            f"load_weights({entry.name!r}, file=PATH) or encnet-weights download {entry.name} "
            f"--file PATH; or set {ENV_URL} to a folder URL that holds {entry.filename}.")


def _cache_names(entry: AnyEntry) -> List[str]:
    """File names the cache may hold ``entry`` under: the published one, and for the zoo's
    zip also the ``.pth`` inside it (unpacked by hand)."""
    name = entry.filename
    return [name, name[:-4] + ".pth"] if name.endswith(".zip") else [name]


def _fetch(entry: AnyEntry, cache_dir: Optional[PathLike], progress: bool) -> Tuple[Path, bool]:
    """``(path, fresh)``: the cached copy of ``entry``, else a fresh download into the cache
    (resumed from a ``.part`` left by an interrupted one)."""
    from .data.download import DownloadError, download

    folder = weights_dir(cache_dir)
    for name in _cache_names(entry):
        if (folder / name).is_file():
            return folder / name, False
    url = url_for(entry)
    print(f"downloading {url} -> {folder / entry.filename}")
    try:
        return download(url, folder / entry.filename, progress=progress, by_hand=""), True
    except DownloadError as err:
        raise WeightsError(f"{err}. {_by_hand(entry)}") from err


def _payload(path: Path) -> Tuple[bytes, str]:
    """The bytes of the weights in ``path`` and a label for messages: the ``.pth`` inside
    the zoo's zip, else the whole file (a ``torch.save`` file is also a zip, but holds
    ``data.pkl`` and no ``.pth``)."""
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist (check the path)")
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                members = [m for m in archive.namelist() if m.endswith(".pth")]
                if len(members) > 1:
                    raise WeightsError(f"{path} holds several .pth files ({members[:4]}); "
                                       "unpack the one you mean and pass it as the file")
                if members:
                    return archive.read(members[0]), f"{path}:{members[0]}"
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
            raise WeightsError(f"{path} is a damaged zip archive ({err}); delete it and "
                               "download it again") from err
    return path.read_bytes(), str(path)


def _check_digest(data: bytes, entry: AnyEntry, label: str) -> None:
    actual = hashlib.new(entry.algo, data).hexdigest()
    if not actual.startswith(entry.digest.lower()):
        shown = entry.digest + ("..." if len(entry.digest) < len(actual) else "")
        raise WeightsError(
            f"{label} has {entry.algo.upper()} {actual}, but {entry.name} is published with "
            f"{shown}: the file is incomplete (an interrupted download), corrupt or another "
            "model. Delete it and download it again; for a file you trust, skip the check "
            "with verify=False (--no-verify on the command line).")


def _torch_load(data: bytes, label: str) -> Dict[str, Tensor]:
    """Tensors only (``weights_only=True``: a pickle that needs code is refused, not run);
    mmsegmentation's ``{"state_dict": ..., "meta": ...}`` is unwrapped."""
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or a pickle that needs code
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise WeightsError(
            f"{label} could not be read as a plain state dict of tensors ({type(err).__name__}"
            f": {first}); nothing in it was run (weights_only=True). A truncated download or "
            "a file that holds code or other objects: download it again, or give the "
            "published file.") from err
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise WeightsError(f"{label} holds a {type(obj).__name__}, not a state dict of "
                           "tensors; give the published weights file")
    return {k.removeprefix("module."): v for k, v in obj.items()}  # saved from DataParallel


def read_state_dict(path: PathLike, entry: Optional[AnyEntry] = None, *,
                    verify: bool = True) -> Dict[str, Tensor]:
    """The tensors of a published file (zoo zip, ``.pth``, mmsegmentation dict), under their
    published names. With ``entry`` and ``verify``, the checksum is checked first."""
    data, label = _payload(Path(path).expanduser())
    if entry is not None and verify:
        _check_digest(data, entry, label)
    return _torch_load(data, label)


# --------------------------------------------------------------------------- conversion


def _rename(key: str, rules: Sequence[Tuple[str, str]], inverse: bool = False
            ) -> Optional[str]:
    for old, new in rules:
        src, dst = (new, old) if inverse else (old, new)
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def convert_state_dict(state: Mapping[str, Tensor], rules: str
                       ) -> Tuple[Dict[str, Tensor], Dict[str, str], List[str]]:
    """Rename published keys to ours by ``RULES[rules]``: ``(tensors by our names, our name
    -> published name, published keys no rule matches)``. Known-unused keys are dropped;
    the tensors are the same objects (no copy, no change)."""
    out: Dict[str, Tensor] = {}
    origin: Dict[str, str] = {}
    unknown: List[str] = []
    for key, value in state.items():
        if key.startswith(_UNUSED[rules]):
            continue
        new = _rename(key, RULES[rules])
        if new is None:
            unknown.append(key)
        else:
            out[new], origin[new] = value, key
    return out, origin, unknown


def _listing(items: Sequence[str], most: int = 5) -> str:
    more = f", ... ({len(items) - most} more)" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def fit_state_dict(state: Mapping[str, Tensor], entry: AnyEntry,
                   expected: Mapping[str, Tensor], label: str) -> Dict[str, Tensor]:
    """Converted ``state`` that fills exactly the keys of ``expected`` (a model's state
    dict) with their shapes, or a :class:`WeightsError` naming what does not fit (in the
    file's own names)."""
    out, origin, unknown = convert_state_dict(state, entry.rules)
    for key, ref in expected.items():  # counters of BN updates: absent from pre-2018 files
        if key.endswith("num_batches_tracked") and key not in out:
            out[key] = torch.zeros_like(ref, device="cpu")
    rules = RULES[entry.rules]
    missing = [_rename(k, rules, inverse=True) or k for k in expected if k not in out]
    unexpected = unknown + [origin[k] for k in out if k not in expected]
    shapes = [f"{origin[k]} {tuple(v.shape)} (model {tuple(expected[k].shape)})"
              for k, v in out.items() if k in expected and v.shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{len(missing)} missing keys ({_listing(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected keys ({_listing(unexpected)})"
                 if unexpected else "",
                 f"{len(shapes)} of the wrong shape ({_listing(shapes, 3)})" if shapes else ""]
        raise WeightsError(
            f"{label} does not fit {entry.name} ({entry.summary()}): "
            f"{'; '.join(p for p in parts if p)}. Is it another model? encnet-weights list "
            "shows the catalogue; pass the name of the one this file is.")
    return out


def export_state_dict(model: nn.Module, entry: Union[str, WeightsEntry]) -> Dict[str, Tensor]:
    """The inverse of the conversion: ``model``'s tensors under the published names of
    ``entry`` (e.g. to write a file in the official format)."""
    entry = get_entry(entry)
    rules = RULES[entry.rules]
    out = {}
    for key, value in model.state_dict().items():
        name = _rename(key, rules, inverse=True)
        if name is None:
            raise WeightsError(f"{key} has no published name in {entry.name}'s format")
        out[name] = value
    return out


def save_published(state: Mapping[str, Tensor], entry: Union[str, WeightsEntry],
                   path: PathLike, zipped: Optional[bool] = None) -> Path:
    """Write ``state`` (published names) as the published file would be: the official
    zoo's zip holding ``<name>-<sha1[:8]>.pth`` (``zipped``, the default for official
    entries) or that ``.pth``; mmsegmentation's ``{"state_dict", "meta"}`` dict."""
    from .files import atomic_write

    entry = get_entry(entry)
    buffer = io.BytesIO()
    payload = dict(state) if entry.source == "official" else {
        "state_dict": dict(state), "meta": {"CLASSES": list(entry.classes)}}
    torch.save(payload, buffer)
    zipped = entry.filename.endswith(".zip") if zipped is None else zipped
    if not zipped:
        return atomic_write(path, lambda f: f.write(buffer.getvalue()))
    member = entry.filename[:-4] + ".pth"

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as archive:
            archive.writestr(member, buffer.getvalue())

    return atomic_write(path, write)


# --------------------------------------------------------------------------- for the models
#
# The catalogue makes no model: it hands the models (:mod:`encnet_lite.models`, which import
# this module, never the other way round) state dicts that they load themselves.


def config_for(entry: Union[str, WeightsEntry]):
    """A :class:`~encnet_lite.presets.TrainConfig` describing ``entry``'s data and sizes
    (dataset, data root, base and crop size, ``align_corners``, lateral), so that
    evaluation and prediction treat a published model like a checkpoint of a run. Its
    backbone names the nearest of ours (``resnet50s``/``resnet101s``): the model itself
    comes from :func:`encnet_lite.models.load_weights`, never from this config."""
    from .presets import DATASETS, TrainConfig

    entry = get_entry(entry)
    dataset = entry.dataset if entry.dataset in DATASETS else "scenes"
    return TrainConfig().replace(
        name=entry.name, arch=entry.model, backbone=f"resnet{entry.depth}s",
        se_loss=entry.se_loss, aux=entry.aux, lateral=entry.lateral,
        align_corners=entry.align_corners, dataset=dataset,
        data_root="" if dataset == "scenes" else f"data/{dataset}",
        base_size=entry.base_size, crop_size=entry.crop_size[0], out=f"runs/{entry.name}")


def _set_aside(path: Path) -> Path:
    """Move a freshly downloaded file that failed its check out of the cache's way."""
    bad = path.with_name(path.name + ".bad")
    shutil.move(str(path), bad)
    return bad


def fetch_state_dict(entry: AnyEntry, file: Optional[PathLike] = None, *, verify: bool = True,
                     progress: bool = True, cache_dir: Optional[PathLike] = None
                     ) -> Tuple[Dict[str, Tensor], Path]:
    """``(tensors under their published names, the file they came from)`` of ``entry``.

    ``file``: a local copy (the zoo's zip or the ``.pth`` in it; mmsegmentation's ``.pth``)
    instead of the cache, else the cached copy, else a download into the cache.
    ``verify=False`` skips the checksum (for a file you trust, e.g. re-saved). ``progress``:
    download progress bar. ``cache_dir``: see :func:`weights_dir`. The tensors still have to
    be renamed and fitted to a model: :func:`fit_state_dict`.
    """
    if file is not None:
        path, fresh = Path(file).expanduser(), False
    else:
        path, fresh = _fetch(entry, cache_dir, progress)
    return _torch_load(*_checked_payload(path, entry, fresh=fresh, verify=verify)), path


def _checked_payload(path: Path, entry: AnyEntry, *, fresh: bool, verify: bool
                     ) -> Tuple[bytes, str]:
    """:func:`_payload` of ``path``, its checksum checked when ``verify`` (a fresh download
    that fails is moved aside, so that the next attempt downloads it again)."""
    data, label = _payload(path)
    try:
        if verify:
            _check_digest(data, entry, label)
    except WeightsError as err:
        if fresh:
            raise WeightsError(f"{err} (the download was moved to {_set_aside(path)})") from err
        raise
    return data, label


def download_weights(name: Union[str, WeightsEntry], *, file: Optional[PathLike] = None,
                     cache_dir: Optional[PathLike] = None, verify: bool = True,
                     progress: bool = True) -> Path:
    """Put a verified copy of ``name``'s file into the cache and return its path: download
    it (or find it there), or, with ``file``, copy that local file in (e.g. one fetched by
    hand where the host refuses scripts). :func:`encnet_lite.models.load_weights` then
    needs no network."""
    from .files import atomic_write

    entry = get_entry(name)
    if file is None:
        path, fresh = _fetch(entry, cache_dir, progress)
        _checked_payload(path, entry, fresh=fresh, verify=verify)
        return path
    source = Path(file).expanduser()
    data, label = _payload(source)
    if verify:
        _check_digest(data, entry, label)
    # The zoo's zip keeps its published name; a bare .pth is cached as the .pth in it.
    names = _cache_names(entry)
    target = weights_dir(cache_dir) / (names[0] if label != str(source) else names[-1])
    target.parent.mkdir(parents=True, exist_ok=True)

    def copy(out) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, out)

    return atomic_write(target, copy)


def imagenet_state_dict(depth: int, stem: str, expected: Mapping[str, Tensor],
                        weights_path: Optional[PathLike] = None, *, progress: bool = True,
                        cache_dir: Optional[PathLike] = None) -> Dict[str, Tensor]:
    """ImageNet weights of a deep-stem ResNet-``depth``, renamed to fill exactly the keys of
    ``expected`` (the state dict of a :class:`~encnet_lite.models.ResNetBackbone`, which
    loads the result itself).

    ``stem="deep64"``: the official ``resnet50s``/``resnet101s`` (:data:`IMAGENET_BACKBONES`,
    downloaded, cached and verified like the models), or ``weights_path``, a local copy
    (zip or ``.pth``; not checksummed: it may be your own). ``stem="deep32"``: only
    ``weights_path`` (mmsegmentation's ResNetV1c key names). The ImageNet classifier
    ``fc.*`` is dropped; any other key that does not fit is a :class:`WeightsError`.
    """
    entry: AnyEntry = IMAGENET_BACKBONES.get(f"resnet{depth}s") if stem == "deep64" else None
    if entry is None:
        entry = BackboneWeights(f"ResNetV1c-{depth}", "", "sha256", "", depth, stem, "mmseg")
        if weights_path is None:
            raise WeightsError(f"no ImageNet weights are catalogued for stem={stem!r}; pass "
                               "weights_backbone= a local ResNetV1c state-dict file, or "
                               "weights_backbone=None")
    state, path = fetch_state_dict(entry, weights_path, verify=weights_path is None,
                                   progress=progress, cache_dir=cache_dir)
    return fit_state_dict(state, entry, expected, str(path))


def check_builder_args(weights: str, model: str, depth: int, stem: Optional[str],
                       num_classes: Optional[int], backbone_args: Mapping[str, object],
                       kwargs: Mapping[str, object]) -> WeightsEntry:
    """The entry ``weights`` names, if a builder of ``model``/``depth`` makes it and no
    argument contradicts it; else a :class:`WeightsError` naming the conflict."""
    entry = get_entry(weights)
    if (entry.model, entry.depth) != (model, depth):
        raise WeightsError(f"{entry.name} is a ResNet-{entry.depth} {entry.model}: build it "
                           f"with {entry.model}_resnet{entry.depth}(weights={entry.name!r})")
    given = dict(kwargs, num_classes=num_classes, stem=stem, **backbone_args)
    wanted = {"num_classes": entry.num_classes, "stem": entry.stem, "aux": entry.aux,
              "se_loss": entry.se_loss, "lateral": entry.lateral, "num_codes": 32,
              "head_channels": 512, "encoder": "official", "output_stride": 8,
              "weights_backbone": None}
    defaults = {"num_classes": None, "stem": None, "weights_backbone": None,
                "output_stride": 8}
    for key, value in given.items():
        if key == "align_corners" or value == defaults.get(key, object()):
            continue
        if key not in wanted or value != wanted[key]:
            raise WeightsError(f"{key}={value!r} contradicts weights={entry.name!r} "
                               f"({entry.summary()}); drop the argument")
    return entry


# --------------------------------------------------------------------------- CLI


def _table(folder: Path) -> List[str]:
    """One line per entry: name, data, classes, published scores, whether it is cached."""
    lines = [f"{'name':<44} {'dataset':<10} {'classes':>7} {'cached':<6} "
             "published mIoU [/ pixAcc] (%)"]
    for e in _ENTRIES:
        scores = "; ".join(f"{100 * s.mIoU:.2f}" +
                           (f" / {100 * s.pixAcc:.1f}" if s.pixAcc else "") for s in e.scores)
        cached = "yes" if any((folder / n).is_file() for n in _cache_names(e)) else "no"
        lines.append(f"{e.name:<44} {e.dataset:<10} {e.num_classes:>7} {cached:<6} {scores}")
    lines += ["", "official: multi-scale + flip (PyTorch-Encoding docs); mmseg: single scale; "
                  "ms+flip (mmsegmentation configs/encnet/README.md)"]
    lines += [f"ImageNet backbone {b.name}: {b.url}" for b in IMAGENET_BACKBONES.values()]
    return lines + [f"cache: {folder}"]


def build_parser():
    from .cli import ArgumentParser

    parser = ArgumentParser(prog="encnet-weights",
                            description="List the published EncNet weights, or fetch one "
                                        "into the cache ahead of time.")
    sub = parser.add_subparsers(dest="command", required=True)
    listing = sub.add_parser("list", help="the catalogue, with the published scores")
    listing.add_argument("--cache", default=None, help="cache folder (default: "
                         f"${ENV_DIR} or ~/.cache/encnet-lite/weights)")
    fetch = sub.add_parser("download", help="download (or copy --file) and verify one file")
    fetch.add_argument("name", help="a name of the catalogue (encnet-weights list)")
    fetch.add_argument("--file", default=None,
                       help="a copy fetched by hand: verify it and put it into the cache")
    fetch.add_argument("--cache", default=None, help="cache folder")
    fetch.add_argument("--no-verify", dest="verify", action="store_false",
                       help="skip the checksum (only for a file you trust)")
    fetch.add_argument("--quiet", dest="progress", action="store_false", help="no progress bar")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``encnet-weights list`` | ``encnet-weights download NAME [--file F] [--cache DIR]``."""
    from .cli import run

    args = build_parser().parse_args(argv)

    def body() -> int:
        if args.command == "list":
            print("\n".join(_table(weights_dir(args.cache))))
            return 0
        path = download_weights(args.name, file=args.file, cache_dir=args.cache,
                                verify=args.verify, progress=args.progress)
        print(f"{get_entry(args.name).name}: {path}")
        return 0

    return run("encnet-weights", body)


if __name__ == "__main__":
    raise SystemExit(main())
