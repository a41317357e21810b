"""Training configurations: :class:`TrainConfig`, grouped by concern, and named presets.

A :class:`TrainConfig` holds a run's ``name`` and ``out`` folder and five groups, each a
frozen dataclass: ``model`` (:class:`ModelConfig`: what network, and its loss weights),
``data`` (:class:`DataConfig`: which images and views), ``scenes`` (:class:`ScenesConfig`:
the synthetic ContextScenes data), ``optim`` (:class:`OptimConfig`: the schedule being
followed) and ``runtime`` (:class:`RuntimeConfig`: where and how fast, which does not change
what is learned). Code reads a field through its group (``cfg.optim.lr``,
``cfg.model.backbone``); every leaf name is unique across the groups, so people keep writing
flat names: a preset's keyword arguments, :meth:`TrainConfig.replace` and the CLI flags
(``--lr``, ``--num-codes``) route each name to its group. A chapter writes
``presets.scenes_encnet_tiny(epochs=3, out="runs/x")`` and the CLI
``encnet-train --preset scenes_encnet_tiny --epochs 3 --out runs/x``.

Resuming a run, each group's ``RESUME`` says what may change: ``"weights"`` (another value
means other weights: the checkpoint is refused as incompatible), ``"recipe"`` (another value
would not continue the same run: refused), ``"free"`` (allowed; also ``name`` and ``out``).

The PASCAL presets follow the EncNet recipe (Zhang et al., CVPR 2018, and the official
PyTorch-Encoding code): SGD with momentum 0.9 and
weight decay 1e-4, poly schedule (power 0.9) per iteration, base lr 1e-3 for a batch of 16
(head and auxiliary head at 10x), crop 480 from a long side resized around 520, 80 epochs on
PASCAL-Context, aux and SE weights 0.2. The ``scenes_*`` presets train the tiny backbone
from scratch on the synthetic ContextScenes data in a few CPU minutes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Callable, ClassVar, Dict, List, Mapping, Optional, Tuple, Union

from .encoding import VARIANTS  # the encoding-layer variants a config may name
from .errors import EncnetError

ARCHS = ("encnet", "fcn")
# "resnet50s"/"resnet101s": the official deep-stem ResNets (models.encnet_resnet50s).
BACKBONES = ("tiny", "resnet50", "resnet101", "resnet50s", "resnet101s")
DATASETS = ("scenes", "pcontext", "voc", "ade20k")
AMP_MODES = ("auto", "on", "off", "bf16", "fp16")
SWITCH_MODES = ("auto", "on", "off")


# The allowed range of every numeric field, as an interval ("[": bound included, "(":
# excluded; "inf": none). A value outside (or NaN, or a float where a count belongs) is
# refused when the config is made, so that ``--lr nan`` or ``--poly-power -1`` fails before
# anything runs or is written. The upper bounds of sizes keep one typo from allocating
# hundreds of GB (``num_codes`` 2**31); the seeds are those every RNG here accepts.
RANGES = {
    "num_codes": "[1, 1024]", "se_weight": "[0, inf)", "aux_weight": "[0, inf)",
    "num_train_images": "[0, inf)", "num_val_images": "[0, inf)", "image_size": "[32, 4096]",
    "data_seed": "[0, 4294967295]", "min_lookalikes": "[1, 64]", "max_lookalikes": "[1, 64]",
    "crop_size": "[32, 4096]", "base_size": "[32, 8192]", "batch_size": "[1, inf)",
    "lr": "(0, inf)", "head_lr_mult": "(0, inf)", "momentum": "[0, 1)",
    "weight_decay": "[0, inf)", "poly_power": "[0, inf)", "epochs": "[1, inf)",
    "seed": "[0, 4294967295]", "workers": "[0, 256]", "threads": "[0, 1024]",
    "checkpoint_every": "[0, inf)", "val_every": "[0, inf)", "val_batch_size": "[0, inf)",
}


class ConfigRangeError(EncnetError, ValueError):
    """A numeric field outside :data:`RANGES`; :meth:`for_flag` words it for the CLI."""

    def __init__(self, key: str, value: Any, rule: str, example: Any) -> None:
        self.key, self.value, self.rule, self.example = key, value, rule, example
        super().__init__(f"{key}={value!r}: {rule}, e.g. {key}={example!r}")

    def for_flag(self, text: Optional[str] = None) -> str:
        """The message as ``--flag TEXT: rule, e.g. --flag EXAMPLE`` (``text``: as typed)."""
        flag = "--" + self.key.replace("_", "-")
        return f"{flag} {self.value if text is None else text}: {self.rule}, e.g. " \
            f"{flag} {self.example}"


def check_ranges(values: Mapping[str, Any]) -> None:
    """Raise :class:`ConfigRangeError` for the first field of ``values`` (flat names: a
    group's fields, or :meth:`TrainConfig.flat`) outside :data:`RANGES`; fields not given
    are not checked."""
    for key, interval in RANGES.items():
        if key not in values:
            continue
        value, whole = values[key], LEAVES[key][1].type == "int"
        low, high = (float(t) for t in interval[1:-1].split(","))
        number = not isinstance(value, bool) and isinstance(value, (int, float)) and not (
            whole and not isinstance(value, int))
        inside = number and math.isfinite(value) and (
            value >= low if interval[0] == "[" else value > low) and (
            value <= high if interval[-1] == "]" else value < high)
        if not inside:
            what = "a whole number" if whole else "a finite number"
            above = f"{'at least' if interval[0] == '[' else 'above'} {low:.0f}"
            below = "" if math.isinf(high) else \
                f" and {'at most' if interval[-1] == ']' else 'below'} {high:.0f}"
            raise ConfigRangeError(key, value, f"give {what} {above}{below}",
                                   LEAVES[key][1].default)


def _check_group(group: Any, choices: Mapping[str, Tuple[str, ...]]) -> None:
    """A group's checks: booleans of the on/off switches become "on"/"off", each value of
    ``choices`` is one of its names, every number is inside :data:`RANGES`."""
    for key in ("amp", "channels_last"):
        if isinstance(getattr(group, key, None), bool):
            object.__setattr__(group, key, "on" if getattr(group, key) else "off")
    for key, allowed in choices.items():
        if getattr(group, key) not in allowed:
            raise ValueError(f"{key}={getattr(group, key)!r}: choose one of {allowed}")
    check_ranges(dataclasses.asdict(group))


@dataclass(frozen=True)
class ModelConfig:
    """The network and its loss weights (a checkpoint of another model is refused)."""

    RESUME: ClassVar[str] = "weights"
    arch: str = "encnet"  # "encnet" | "fcn"
    backbone: str = "tiny"  # "tiny" | "resnet50" | "resnet101" | "resnet50s" | "resnet101s"
    num_codes: int = 32  # K, codewords of the Context Encoding Module (EncNet only)
    encoder: str = "official"  # EncNet: encoding-layer variant (encnet_lite.encoding.VARIANTS)
    se_loss: bool = True  # SE branch + Semantic Encoding loss (EncNet only)
    aux: bool = True  # auxiliary FCN head on backbone stage 3
    lateral: bool = False  # EncNet: lateral c2/c3 connections (official code: on for PASCAL)
    # Upsampling of the logits (official code: True). The weights fit either way (a
    # checkpoint can be scored with the other value), but a resumed run may not change it.
    align_corners: bool = False
    se_weight: float = 0.2
    aux_weight: float = 0.2

    def __post_init__(self) -> None:
        _check_group(self, {"arch": ARCHS, "backbone": BACKBONES, "encoder": VARIANTS})


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and the training views of the PASCAL-style datasets."""

    RESUME: ClassVar[str] = "recipe"
    dataset: str = "scenes"  # "scenes" | "pcontext" | "voc" | "ade20k"
    train_split: str = "train"  # PASCAL: "train" ("train_aug" for VOC with SBD)
    crop_size: int = 480  # PASCAL: random crop side
    base_size: int = 520  # PASCAL: long side before the random [0.5, 2] rescale

    def __post_init__(self) -> None:
        _check_group(self, {"dataset": DATASETS})


@dataclass(frozen=True)
class ScenesConfig:
    """The synthetic ContextScenes data (``dataset="scenes"`` only)."""

    RESUME: ClassVar[str] = "recipe"
    num_train_images: int = 512
    num_val_images: int = 128
    image_size: int = 128  # side of the square synthetic images
    data_seed: int = 0  # which synthetic images (train and val are disjoint)
    min_lookalikes: int = 4  # fewest look-alike objects per image
    max_lookalikes: int = 8  # most look-alike objects per image
    day_night: bool = False  # a second context (day/night decides the birds)

    def __post_init__(self) -> None:
        _check_group(self, {})
        if self.max_lookalikes < self.min_lookalikes:
            raise ValueError(f"max_lookalikes ({self.max_lookalikes}) must be at least "
                             f"min_lookalikes ({self.min_lookalikes})")


@dataclass(frozen=True)
class OptimConfig:
    """The schedule a run follows, and the arithmetic of its steps.

    ``batch_size`` is the global batch: under torchrun each of the ``W`` processes loads
    ``batch_size / W`` images, so the recipe does not change with the number of GPUs.
    ``lr`` is the backbone's base learning rate; the head (and auxiliary head) get
    ``lr * head_lr_mult``. The official rule scales ``lr`` linearly with the batch
    (1e-3 for 16 images): do it yourself when you change ``batch_size``.
    """

    RESUME: ClassVar[str] = "recipe"
    batch_size: int = 16  # global batch (all processes together)
    lr: float = 1e-3
    head_lr_mult: float = 10.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    epochs: int = 80
    seed: int = 0
    # Mixed precision: "auto" (on for CUDA, off on CPU) | "on" (bf16 where supported, else
    # fp16 with a grad scaler) | "off" | "bf16" | "fp16". True/False mean "on"/"off". Here
    # and not in runtime: it changes the steps' arithmetic and the grad scaler's state
    # that a resumed run continues.
    amp: str = "auto"

    def __post_init__(self) -> None:
        _check_group(self, {"amp": AMP_MODES})


@dataclass(frozen=True)
class RuntimeConfig:
    """Where the inputs are and how fast the run goes: nothing that changes what is learned
    (``weights_backbone`` initialises a new run only; a resumed one loads its own)."""

    RESUME: ClassVar[str] = "free"
    data_root: str = ""  # dataset folder (PASCAL); unused for the synthetic scenes
    weights_backbone: str = ""  # "" (from scratch) | "imagenet" | a local ImageNet .pth file
    workers: int = 4  # DataLoader processes per training process
    channels_last: str = "auto"  # "auto" (on for CUDA) | "on" | "off"; or True/False
    compile: bool = False  # torch.compile the model
    sync_bn: bool = True  # SyncBatchNorm when several processes train together
    device: str = "auto"  # "auto" | "cpu" | "cuda"
    threads: int = 0  # torch.set_num_threads for the process (0: leave torch's setting)
    checkpoint_every: int = 0  # also checkpoint every N iterations (0: only each epoch)
    val_every: int = 1  # validate every N epochs (0: never; the last epoch always is)
    val_batch_size: int = 0  # 0: the per-process training batch
    progress: bool = True  # tqdm bars (chapters may turn them off)

    def __post_init__(self) -> None:
        _check_group(self, {"channels_last": SWITCH_MODES})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; every leaf field is a CLI flag
    (``--num-codes``). Build one with a preset or ``TrainConfig().replace(lr=0.1, ...)``."""

    name: str = "custom"
    out: str = "runs/default"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    scenes: ScenesConfig = field(default_factory=ScenesConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    def __post_init__(self) -> None:
        for f in fields(self):
            kind = f.default_factory if f.default_factory is not MISSING else str
            if not isinstance(getattr(self, f.name), kind):
                raise TypeError(f"{f.name}={getattr(self, f.name)!r}: give a "
                                f"{kind.__name__}" + (" (the architecture is arch=...)"
                                                      if f.name == "model" else ""))

    def to_dict(self) -> Dict[str, Any]:
        """The nested dict (``{"name", "out", "model": {...}, ...}``) checkpoints store."""
        return dataclasses.asdict(self)

    def flat(self) -> Dict[str, Any]:
        """Every leaf by its flat name (``{"lr": ..., "num_codes": ...}``)."""
        values = {"name": self.name, "out": self.out}
        for part in self.to_dict().values():
            if isinstance(part, dict):
                values.update(part)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; also reads the flat dict of earlier versions (see
        :func:`nest`). Unknown keys (from a newer version) are dropped."""
        return cls().replace(**nest(data))

    def replace(self, **overrides: Any) -> TrainConfig:
        """A copy with ``overrides``: flat leaf names (``lr=0.1``) or whole groups
        (``model=ModelConfig(...)``); an unknown name is a TypeError naming it."""
        top, grouped = {}, {}  # type: Dict[str, Any], Dict[str, Dict[str, Any]]
        for key, value in overrides.items():
            if key in TOP:
                top[key] = value
            elif key in LEAVES:
                grouped.setdefault(LEAVES[key][0], {})[key] = value
            else:
                raise TypeError(f"TrainConfig has no field {key!r}; the fields are "
                                f"{sorted(LEAVES)}")
        for group, changes in grouped.items():
            top[group] = replace(top.get(group, getattr(self, group)), **changes)
        return replace(self, **top)


# The top-level fields by name, and every field by its flat name: (its group, the Field);
# ``name`` and ``out`` are their own group.
TOP = {f.name: f for f in fields(TrainConfig)}
LEAVES: Dict[str, Tuple[str, dataclasses.Field]] = {
    leaf.name: (f.name, leaf) for f in fields(TrainConfig)
    for leaf in (fields(f.default_factory) if f.default_factory is not MISSING else [f])}


def nest(data: Mapping[str, Any]) -> Dict[str, Any]:
    """A stored config as :meth:`TrainConfig.replace` arguments: the one place where the
    flat dict of earlier versions (45 fields, as in checkpoints and ``config.json`` written
    before the groups) is read. ``model`` then named the architecture (now ``arch``);
    ``pretrained_backbone`` and ``backbone_weights`` are now one ``weights_backbone``."""
    out: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping) and key in TOP:  # a group of the nested form
            out.update({k: v for k, v in value.items() if LEAVES.get(k, ("",))[0] == key})
        elif key == "model":  # the flat form's architecture name
            out["arch"] = value
        elif key in LEAVES:
            out[key] = value
    if "backbone_weights" in data or "pretrained_backbone" in data:
        out["weights_backbone"] = data.get("backbone_weights") or (
            "imagenet" if data.get("pretrained_backbone") else "")
    return out


def resume_changes(old: TrainConfig, new: TrainConfig) -> Dict[str, List[str]]:
    """The fields of ``new`` that differ from ``old`` (a checkpoint's), as
    ``"lr: 0.05 -> 0.5"``, under the ``RESUME`` rule of their group (``"weights"``,
    ``"recipe"``; ``"free"`` ones are left out)."""
    changes: Dict[str, List[str]] = {"weights": [], "recipe": []}
    before, after = old.flat(), new.flat()
    for key, (group, _) in LEAVES.items():
        rule = getattr(TOP[group].default_factory, "RESUME", "free")
        if rule != "free" and before[key] != after[key]:
            changes[rule].append(f"{key}: {before[key]!r} -> {after[key]!r}")
    return changes


def cpu_workers(most: int = 8) -> int:
    """DataLoader processes for this machine: one per CPU core, at most ``most`` (Colab's
    free runtime has 2 cores; more workers than cores only compete with each other)."""
    return max(1, min(most, os.cpu_count() or 1))


def _pascal(name: str, **kw: Any) -> TrainConfig:
    base = dict(
        name=name, backbone="resnet50", weights_backbone="imagenet", crop_size=480,
        base_size=520, batch_size=16, lr=1e-3, epochs=80, workers=cpu_workers(),
        checkpoint_every=1000, align_corners=True,
    )
    base.update(kw)
    return TrainConfig().replace(**base)


def pcontext_encnet_r50(**overrides: Any) -> TrainConfig:
    """The paper's PASCAL-Context recipe, EncNet ResNet-50 (59 classes), with the official
    head's lateral connections."""
    return _pascal("pcontext_encnet_r50", dataset="pcontext", out="runs/pcontext_encnet_r50",
                   data_root="data/pcontext", lateral=True).replace(**overrides)


def pcontext_encnet_r101(**overrides: Any) -> TrainConfig:
    """As :func:`pcontext_encnet_r50` with ResNet-101 (the paper's 51.7% mIoU model)."""
    return pcontext_encnet_r50(name="pcontext_encnet_r101", backbone="resnet101",
                               out="runs/pcontext_encnet_r101").replace(**overrides)


def pcontext_encnet_r50s(**overrides: Any) -> TrainConfig:
    """The official recipe on the official backbone: :func:`pcontext_encnet_r50` on the
    deep-stem ``resnet50s`` (three 3x3 convs), initialised from the official ImageNet
    ``resnet50s`` weights (:data:`encnet_lite.weights.IMAGENET_BACKBONES`). This is how the
    zoo's ``EncNet_ResNet50s_PContext`` (51.0% mIoU multi-scale) was trained."""
    return pcontext_encnet_r50(name="pcontext_encnet_r50s", backbone="resnet50s",
                               out="runs/pcontext_encnet_r50s").replace(**overrides)


def pcontext_encnet_r101s(**overrides: Any) -> TrainConfig:
    """As :func:`pcontext_encnet_r50s` on ``resnet101s`` (the zoo's 54.1% mIoU model)."""
    return pcontext_encnet_r50(name="pcontext_encnet_r101s", backbone="resnet101s",
                               out="runs/pcontext_encnet_r101s").replace(**overrides)


def pcontext_fcn_r50(**overrides: Any) -> TrainConfig:
    """The FCN baseline under the same recipe (no Context Encoding, no SE-loss)."""
    return pcontext_encnet_r50(name="pcontext_fcn_r50", arch="fcn", se_loss=False,
                               lateral=False, out="runs/pcontext_fcn_r50").replace(**overrides)


def voc_encnet_r50(**overrides: Any) -> TrainConfig:
    """PASCAL VOC (21 classes). The paper gives only PASCAL-Context's recipe; the epochs (50)
    and lr (1e-3) are the official code's defaults for the augmented VOC set (``train_aug``,
    which needs ``prepare_voc.py --sbd``; pass ``train_split="train"`` without it)."""
    return _pascal("voc_encnet_r50", dataset="voc", epochs=50, out="runs/voc_encnet_r50",
                   data_root="data/voc", train_split="train_aug", lateral=True
                   ).replace(**overrides)


def ade20k_encnet_r50s(**overrides: Any) -> TrainConfig:
    """The official ADE20K recipe (150 classes), EncNet on the deep-stem ``resnet50s``
    initialised from the official ImageNet weights: crop 480 from a long side around 520,
    no lateral connections (as the zoo's ``EncNet_ResNet50s_ADE``), and the official
    defaults for ADE20K in ``experiments/segmentation/option.py`` of PyTorch-Encoding: 180
    epochs, lr 0.004 for a batch of 16 (head 10x)."""
    return _pascal("ade20k_encnet_r50s", dataset="ade20k", backbone="resnet50s", epochs=180,
                   lr=4e-3, out="runs/ade20k_encnet_r50s", data_root="data/ade20k",
                   lateral=False).replace(**overrides)


def ade20k_encnet_r101s(**overrides: Any) -> TrainConfig:
    """As :func:`ade20k_encnet_r50s` on ``resnet101s`` with the larger views of the zoo's
    ``EncNet_ResNet101s_ADE``: base size 640, crop 576."""
    return ade20k_encnet_r50s(name="ade20k_encnet_r101s", backbone="resnet101s",
                              base_size=640, crop_size=576,
                              out="runs/ade20k_encnet_r101s").replace(**overrides)


def scenes_encnet_tiny(**overrides: Any) -> TrainConfig:
    """EncNet with the tiny backbone on synthetic ContextScenes: a few minutes on a CPU.

    512 training images of 128 px (the size at which the tiny FCN provably cannot see the
    scene cue), batches of 16, 12 epochs = 384 iterations. Trained from scratch, so the lr
    (0.05, head 0.5) is far above the ImageNet-initialised recipe's 1e-3. On a 2-core CPU
    an epoch takes 6-15 s (one thread) when the CPU is not shared; EncNet passes the
    context-blind mIoU cap during training and the FCN cannot (the final scores of three
    seeds of each: ``benchmarks/results/ablation_lookalikes_4_8.json``). ``threads=1``: the
    tiny model gains little from a second thread, and on a CPU shared with other jobs two
    OpenMP threads can run 10x slower than one (measured here: 2 img/s instead of 40); pass
    ``threads=0`` to keep torch's. ``day_night=True`` adds the second piece of context that
    the ablation (``benchmarks/ablation.py``) trains on.

    ``encoder="shared_kmeans"`` (one smoothing factor, codewords from k-means of the first
    batch's descriptors) instead of the official encoding layer: with the official one,
    every trained run assigns all positions to the single codeword with the largest
    smoothing factor (1 live codeword of 32), which ``benchmarks/codewords.py`` measures
    against the other variants (``benchmarks/results/codewords.json``). Pass
    ``encoder="official"`` for the official layer.
    """
    return TrainConfig().replace(
        name="scenes_encnet_tiny", backbone="tiny", dataset="scenes", num_train_images=512,
        num_val_images=128, image_size=128, batch_size=16, lr=0.05, epochs=12, workers=0,
        threads=1, out="runs/scenes_encnet_tiny", encoder="shared_kmeans",
    ).replace(**overrides)


def scenes_fcn_tiny(**overrides: Any) -> TrainConfig:
    """The FCN baseline of :func:`scenes_encnet_tiny` (same data, schedule and budget)."""
    return scenes_encnet_tiny(name="scenes_fcn_tiny", arch="fcn", se_loss=False,
                              out="runs/scenes_fcn_tiny").replace(**overrides)


PRESETS: Dict[str, Callable[..., TrainConfig]] = {
    fn.__name__: fn
    for fn in (pcontext_encnet_r50, pcontext_encnet_r101, pcontext_encnet_r50s,
               pcontext_encnet_r101s, pcontext_fcn_r50, voc_encnet_r50, ade20k_encnet_r50s,
               ade20k_encnet_r101s, scenes_encnet_tiny,
               scenes_fcn_tiny)
}


def get_preset(name: str, **overrides: Any) -> TrainConfig:
    """The preset called ``name`` with ``overrides`` applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**overrides)


def parse_value(text: str, default: Any) -> Union[bool, int, float, str, Optional[Any]]:
    """Parse a CLI string into the type of a field's ``default`` (bools: on/off/true/false)."""
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return text


__all__ = [
    "TrainConfig", "ModelConfig", "DataConfig", "ScenesConfig", "OptimConfig", "RuntimeConfig",
    "PRESETS", "get_preset", "parse_value", "nest", "resume_changes", "LEAVES", "RANGES",
    "ConfigRangeError", "check_ranges",
] + list(PRESETS)
