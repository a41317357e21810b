"""The pieces of a training run: model, data, optimizer, schedule, one step, validation.

:func:`encnet_lite.train.train` assembles them; chapters can also call them one by one
(e.g. :func:`train_step` in a hand-written loop, :func:`step_call` to time one step,
:func:`validate` on a trained model).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from .distributed import SINGLE, DistInfo
from .errors import DataError, EncnetError
from .losses import SegmentationLoss
from .metrics import ConfusionMatrix
from .presets import ConfigRangeError, TrainConfig

# ---------------------------------------------------------------------------- device, AMP


DEVICE_FIX = "use auto, cpu or cuda (cuda:N for the N-th GPU)"


class DeviceError(EncnetError, ValueError):
    """A device that is not here, or that this library cannot run models on."""


def resolve_device(name: str = "auto", flag: Optional[str] = None) -> torch.device:
    """The device ``name`` means, checked to exist here: ``"auto"`` is the CUDA device when
    one is visible (this process's GPU under torchrun), else the CPU; ``"cuda"`` is the
    current CUDA device; ``"cpu"``, ``"cuda:N"`` and ``"mps"`` are as named.

    Anything else is a :class:`DeviceError` that names ``flag`` (a command line's option,
    e.g. ``"--device"``; else ``device=``) and the fix.
    """
    label = f"{flag} {name}" if flag else f"device={name!r}"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):  # 'Expected one of cpu, cuda, ...', 'Invalid device'
        raise DeviceError(f"{label}: not a device torch knows; {DEVICE_FIX}") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"{label}: this library runs models on cpu, cuda or mps, not "
                          f"{device.type}; {DEVICE_FIX}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index is not None and device.index >= count):
            raise DeviceError(f"{label}: no such CUDA GPU is visible ({count} found); "
                              f"{DEVICE_FIX}")
        if device.index is None:  # torchrun's process sets its own GPU as the current one
            device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"{label}: MPS is not available here; {DEVICE_FIX}")
    return device


def resolve_amp(amp: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for ``amp`` on ``device``, or None for full fp32.

    ``"auto"`` is off on CPU (bf16 autocast there is slower than fp32 on most CPUs). On a
    CUDA GPU, ``"auto"`` and ``"on"`` pick bf16 only where the GPU computes it natively
    (compute capability >= 8.0: A100, L4, H100, RTX 30xx on), else fp16, which
    :func:`make_scaler` pairs with a grad scaler (T4, V100). ``torch.cuda.is_bf16_supported()``
    is not the test: it says True on a T4 (sm75), where bf16 is emulated and slow.
    ``"on"`` on CPU is bf16; ``"bf16"`` / ``"fp16"`` force a dtype (``"bf16"`` on a GPU
    without native bf16 is refused).
    """
    if amp == "off" or (amp == "auto" and device.type != "cuda"):
        return None
    native_bf16 = device.type != "cuda" or _cuda_has_native_bf16(device)
    if amp in ("auto", "on"):
        return torch.bfloat16 if native_bf16 else torch.float16
    if amp == "bf16" and not native_bf16:
        major, minor = torch.cuda.get_device_capability(device)
        raise DeviceError(f"amp='bf16': this GPU (compute capability {major}.{minor}) has no "
                         "native bf16 (it needs 8.0 or more); use amp='fp16' or 'auto'")
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp={amp!r}: choose one of auto, on, off, bf16, fp16")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _cuda_has_native_bf16(device: torch.device) -> bool:
    """Compute capability >= 8.0 (Ampere and later); ROCm GPUs answer for themselves."""
    if getattr(torch.version, "hip", None):
        return torch.cuda.is_bf16_supported()
    return tuple(torch.cuda.get_device_capability(device)) >= (8, 0)


def resolve_channels_last(value: str, device: torch.device) -> bool:
    return value == "on" or (value == "auto" and device.type == "cuda")


def make_scaler(amp_dtype: Optional[torch.dtype], device: torch.device) -> torch.amp.GradScaler:
    """A grad scaler, enabled only for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)


# ---------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, num_classes: int) -> nn.Module:
    """The model named by ``cfg.model.arch`` + ``cfg.model.backbone`` (``encnet_resnet50``),
    given the options its class takes (:attr:`~encnet_lite.models.SegmentationModel.options`)
    from ``cfg.model`` and its backbone's ``weights_backbone`` from ``cfg.runtime``."""
    from . import models

    m = cfg.model
    name = f"{m.arch}_{m.backbone}"
    builder = getattr(models, name, None)
    if builder is None:
        raise ValueError(f"encnet_lite.models has no builder {name!r}")
    options = {k: getattr(m, k) for k in models.ARCHITECTURES[m.arch].options}
    return builder(num_classes=num_classes,
                   weights_backbone=cfg.runtime.weights_backbone or None, **options)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside ``torch.compile`` and ``DistributedDataParallel`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.SGD:
    """SGD, momentum 0.9, weight decay 1e-4 (on every parameter, as the official code)."""
    from .models import param_groups

    o = cfg.optim
    return torch.optim.SGD(param_groups(unwrap(model), o.lr, o.head_lr_mult), lr=o.lr,
                           momentum=o.momentum, weight_decay=o.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, total_iters: int,
                    power: float = 0.9) -> torch.optim.lr_scheduler.LRScheduler:
    """Poly schedule, stepped once per iteration: ``lr_t = lr_0 (1 - t / T) ** power``."""
    return torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=total_iters,
                                                 power=power)


# ---------------------------------------------------------------------------- data


def build_datasets(cfg: TrainConfig) -> Tuple[Dataset, Dataset]:
    """``(train, val)`` datasets (:func:`build_dataset`) with the recipe's joint transforms.

    Raises :class:`encnet_lite.data.DatasetNotFoundError` (with the command that prepares
    the data) when a PASCAL root is missing.
    """
    from . import data

    d = cfg.data
    if d.dataset == "scenes":
        # Flip only: a random rescale would shrink the cue-object gap the task relies on.
        return (build_dataset(cfg, "train", data.RandomHorizontalFlip(0.5)),
                build_dataset(cfg, "val"))
    return (build_dataset(cfg, d.train_split, data.train_transform(d.crop_size, d.base_size)),
            build_dataset(cfg, "val", data.val_transform(d.crop_size)))


def build_dataset(cfg: TrainConfig, split: str, transform: Optional[Callable] = None,
                  data_root: Optional[str] = None) -> Dataset:
    """The ``split`` of ``cfg``'s dataset, the one place a config chooses its data: the
    ContextScenes stream (:func:`scenes_dataset`; ``"train"`` has ``num_train_images``,
    other splits ``num_val_images``), or the folder dataset (:func:`dataset_class`) in
    ``data_root`` (default: the config's, else ``data/<dataset>``). Without ``transform``
    a folder split gives full images (evaluation)."""
    if cfg.data.dataset == "scenes":
        s = cfg.scenes
        count = s.num_train_images if split == "train" else s.num_val_images
        return scenes_dataset(cfg, split, count, transform=transform)
    root = data_root or cfg.runtime.data_root or f"data/{cfg.data.dataset}"
    return dataset_class(cfg.data.dataset)(root, split=split, transform=transform)


def dataset_class(name: str) -> Callable[..., Dataset]:
    """The dataset class of a config's ``dataset`` read from a folder (``pcontext``, ``voc``,
    ``ade20k``): each takes ``(root, split=..., transform=...)``."""
    from . import data

    classes = {"pcontext": data.PascalContext, "voc": data.PascalVOC, "ade20k": data.ADE20K}
    if name not in classes:
        raise ValueError(f"dataset {name!r} is not read from a folder; choose one of "
                         f"{sorted(classes)}")
    return classes[name]


def scenes_dataset(cfg: TrainConfig, split: str, num_images: int,
                   transform: Optional[Callable] = None) -> Dataset:
    """The ContextScenes ``split`` that ``cfg``'s data fields describe (size, seed, look-alike
    density, ``day_night``): the one place a config becomes a ContextScenes."""
    from . import data

    s = cfg.scenes
    return data.ContextScenes(num_images, size=s.image_size, seed=s.data_seed, split=split,
                              transform=transform,
                              lookalikes=(s.min_lookalikes, s.max_lookalikes),
                              day_night=s.day_night)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index``'s augmentation in ``epoch`` (a fixed 63-bit mix)."""
    return ((seed * 1_000_003 + epoch) * 998_244_353 + index) % (2**63 - 1)


class SeededSamples(Dataset):
    """Wraps a dataset so that ``ds[(index, seed)]`` runs its random transforms under
    ``torch.manual_seed(seed)`` without touching the caller's RNG.

    The augmentation of a sample is then a function of (run seed, epoch, index) only: the
    same with 0 or 8 loader workers, after a resume mid-epoch, and on whichever process
    of a multi-process run loads it.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Tuple[int, int]) -> Any:
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class TrainSampler(Sampler):
    """This process's share of a seeded shuffle, iteration-aligned across processes.

    Epoch ``e`` shuffles all indices with ``seed + e`` and cuts them into global batches of
    ``global_batch`` (the incomplete last batch is dropped). Global batch ``t`` is
    ``perm[t*B : (t+1)*B]``; process ``r`` of ``W`` loads the ``r``-th contiguous slice of
    ``B / W`` of it, so ``W`` processes together see exactly the batches one process would.
    :meth:`set_epoch` chooses the epoch and how many batches to skip (resume mid-epoch).
    Yields ``(index, augmentation seed)`` for :class:`SeededSamples`.
    """

    def __init__(self, num_samples: int, global_batch: int, seed: int = 0,
                 info: DistInfo = SINGLE):
        if global_batch % info.world_size:
            n = info.world_size  # each process takes an equal share of the global batch
            raise ConfigRangeError("batch_size", global_batch, f"not divisible by the {n} "
                                   f"processes; give a multiple of {n}",
                                   n * max(1, global_batch // n))
        if num_samples < global_batch:
            raise DataError(f"{num_samples} training images are fewer than one batch "
                            f"({global_batch}): give more (--num-train-images for the "
                            "scenes) or a smaller --batch-size")
        self.num_samples, self.global_batch, self.seed, self.info = (
            num_samples, global_batch, seed, info)
        self.local_batch = global_batch // info.world_size
        self.batches_per_epoch = num_samples // global_batch
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_batches

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.skip) * self.local_batch

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.num_samples, generator=g).tolist()
        lo = self.info.rank * self.local_batch
        for t in range(self.skip, self.batches_per_epoch):
            start = t * self.global_batch + lo
            for index in perm[start : start + self.local_batch]:
                yield index, sample_seed(self.seed, self.epoch, index)


def train_loader(dataset: Dataset, sampler: TrainSampler, workers: int,
                 pin_memory: bool = False) -> DataLoader:
    """The DataLoader over :class:`SeededSamples`. Its own ``generator`` keeps it from
    drawing from the global RNG (which would shift dropout masks after a resume)."""
    return DataLoader(SeededSamples(dataset), batch_size=sampler.local_batch, sampler=sampler,
                      num_workers=workers, pin_memory=pin_memory, drop_last=True,
                      persistent_workers=workers > 0, generator=torch.Generator())


class ShardSampler(Sampler):
    """Indices ``rank, rank + W, ...``: a split of the validation set with no repeats (unlike
    ``DistributedSampler``, which pads and so would count some images twice)."""

    def __init__(self, num_samples: int, info: DistInfo = SINGLE):
        self.indices = list(range(info.rank, num_samples, info.world_size))

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def val_loader(dataset: Dataset, batch_size: int, workers: int, info: DistInfo = SINGLE,
               pin_memory: bool = False) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), info),
                      num_workers=workers, pin_memory=pin_memory)


# ---------------------------------------------------------------------------- one step


def forward_context(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """``torch.autocast`` for ``amp_dtype`` (a no-op context for fp32)."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


HALF_DTYPES = (torch.float16, torch.bfloat16)


def to_device(images: Tensor, masks: Tensor, device: torch.device,
              channels_last: bool = False) -> Tuple[Tensor, Tensor]:
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, masks.to(device, non_blocking=True)


def train_step(model: nn.Module, images: Tensor, masks: Tensor, loss_fn: Callable,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               amp_dtype: Optional[torch.dtype] = None) -> Tensor:
    """One SGD step on ``images: (B, 3, H, W)``, ``masks: (B, H, W)``.

    Returns the detached loss terms ``(total, main, aux, se)`` as one fp32 tensor of 4.
    """
    with forward_context(images.device, amp_dtype):
        outputs = model(images)
    # The loss in fp32: cross-entropy over many pixels is where fp16/bf16 would lose bits.
    # Only half precision is raised; a float64 model keeps its float64 loss.
    outputs = {k: v.float() if torch.is_tensor(v) and v.dtype in HALF_DTYPES else v
               for k, v in outputs.items()}
    terms = loss_fn(outputs, masks)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(terms.total).backward()
    scaler.step(optimizer)
    scaler.update()
    return torch.stack([t.detach().float() for t in terms])


def step_call(model: nn.Module, images: Tensor, masks: Tensor,
              amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
              lr: float = 1e-4) -> Callable[[], Tensor]:
    """A call without arguments that runs one :func:`train_step` of ``model`` on
    ``images: (B, 3, H, W)``, ``masks: (B, H, W)`` (on their device), each call a new step:
    what :func:`encnet_lite.measure.timed_rounds` times.

    The model is moved to the images' device in training mode (``channels_last``: model
    and images in that memory format), with plain SGD at ``lr``, a gradient scaler for
    ``amp_dtype`` and the default :class:`~encnet_lite.losses.SegmentationLoss`.
    """
    model = model.to(images.device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    scaler, loss_fn = make_scaler(amp_dtype, images.device), SegmentationLoss()
    return lambda: train_step(model, images, masks, loss_fn, optimizer, scaler, amp_dtype)


# ---------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(model: nn.Module, loader: Iterable, num_classes: int, device: torch.device,
             info: DistInfo = SINGLE, amp_dtype: Optional[torch.dtype] = None,
             channels_last: bool = False, ignore_index: int = 255,
             progress: bool = False) -> ConfusionMatrix:
    """Single-scale predictions of ``model`` over ``loader`` (batches ``images: (B, 3, H, W)``,
    ``masks: (B, H, W)``), counted in a :class:`~encnet_lite.metrics.ConfusionMatrix`.

    Under torchrun every process scores its shard and the matrices are summed, so every
    process returns the whole split's matrix. The model's train/eval mode is restored.
    Its :meth:`~encnet_lite.metrics.ConfusionMatrix.compute` gives pixAcc / mIoU / IoU.
    """
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    cm = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    try:
        for images, masks in tqdm(loader, desc="val", leave=False,
                                  disable=not (progress and info.is_main)):
            images, masks = to_device(images, masks, device, channels_last)
            with forward_context(device, amp_dtype):
                logits = model(images)["main"]
            cm.update(logits.argmax(1), masks)
    finally:
        model.train(was_training)
    if info.enabled:
        cm.all_reduce()  # a process with an empty shard adds zeros
    return cm


# ---------------------------------------------------------------------------- process state


@contextlib.contextmanager
def process_state(threads: int = 0) -> Iterator[None]:
    """Run a block with ``torch.set_num_threads(threads)`` (0: torch's current count), then
    put back the thread count and every global RNG (torch, CUDA, NumPy, random): a library
    call such as :func:`encnet_lite.train.train` leaves its caller's process as it was."""
    from .checkpoint import rng_state, set_rng_state

    before_threads, before_rng = torch.get_num_threads(), rng_state()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before_threads)
        set_rng_state(before_rng)
