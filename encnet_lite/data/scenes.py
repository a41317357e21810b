"""ContextScenes: synthetic images in which some pixels can only be labelled from global context.

Each image is one of ``num_kinds`` scene kinds: ``harbour``, ``street`` and (default)
``railway``. A horizontal band along the top or the bottom edge carries the scene's *cue*: a
textured strip of ``water``, ``house`` fronts or ``rails``, one cue class per kind, each easy
to recognise locally. The rest of the image is ``ground``, a neutral texture drawn the same way
whatever the kind, with 4-8 *look-alike* objects on it: grey rounded rectangles drawn by the
very same code for every kind. Their class depends on the scene only: ``boat`` in a harbour,
``car`` in a street, ``wagon`` by a railway.

Why a context-blind model is capped. At ``size=128`` every cue pixel lies at least
``CUE_GAP`` = 36 px (Chebyshev distance) from every look-alike pixel. A network whose output
at a pixel depends only on input pixels less than that far away (the tiny FCN: its 52 px
receptive field, ``models.receptive_field``, reaches at most 29 px from the pixel) therefore sees,
around a look-alike pixel, only ground and look-alikes, whose distribution is the same for
every kind (the layout and its random numbers are drawn before, and independently of, the
kind). Its prediction there is independent of the true class. If it sends a fraction ``q_j``
of look-alike pixels to look-alike class ``j`` (kinds are balanced, so each class holds
``1/K`` of those pixels), class ``j`` gets ``IoU_j = q_j / (1 + (K - 1) q_j)``; that is
concave, so the best split is ``q_j = 1/K`` and

- the look-alike classes' mean IoU <= 1 / (2K - 1) (K = 3: 0.200; K = 2: 0.333); a single
  class can reach 1/K by taking more than its share, at the others' expense;
- mIoU <= (C - K + K / (2K - 1)) / C with C classes, even if every other class is perfect
  (K = 3, C = 7: **65.7 %**; K = 2, C = 5: **73.3 %**); a constant guess gets
  (C - K + 1/K) / C (61.9 % and 70.0 %);
- look-alike pixel accuracy <= 1/K, so pixAcc <= 1 - (1 - 1/K) * f with f the look-alike
  share of pixels (about 12 % here: pixAcc <= ~92 % for K = 3).

A model that encodes the whole image (EncNet) can reach 100 %. :func:`blind_caps` computes
these numbers; the tests check the construction and the cap on generated data.

Smaller images: every distance scales with ``size / 128``; below 128 the gap shrinks
(``size=64``: 18 px) and the tiny FCN's receptive field can reach the cue, so the task becomes
partly solvable locally and the cap no longer binds. Random rescaling (``transform``) has
the same effect when it shrinks the image. At ``size >= 128`` the guarantee holds.

Labels: ``ground`` is a real class (id 0), so mIoU covers every pixel; nothing is ignored.
Images are normalised like the real datasets (ImageNet ``MEAN``/``STD``). Generation is
deterministic per ``(seed, split, index)``, needs no files and runs at over a thousand images
per second on one core.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
import torch

from .common import IGNORE_INDEX, normalize

KINDS = ("harbour", "street", "railway")
CUE_CLASSES = ("water", "house", "rails")  # one per kind, same order as KINDS
LOOKALIKE_CLASSES = ("boat", "car", "wagon")  # one per kind, same order as KINDS
CUE_GAP = 36  # px at size 128: min Chebyshev distance cue <-> look-alike
# Look-alike objects per image, (fewest, most), both included. 4-8 rather than 2-4: with
# 2-4 (about 6 % of the pixels on look-alikes) the per-pixel loss alone (no SE-loss) taught
# the context vector to separate the scenes in only some seeds within the preset's budget
# (benchmarks/results/ablation*.json). ``lookalikes=`` chooses another range.
LOOKALIKES = (4, 8)
BASE_SIZE = 128
SPLITS = ("train", "val")

_COLORS = {  # palette (mask colours), not image colours
    "ground": (176, 160, 120), "water": (30, 100, 210), "house": (190, 60, 40),
    "rails": (100, 80, 60), "boat": (250, 200, 0), "car": (230, 40, 170),
    "wagon": (0, 200, 170),
}


class Scene(NamedTuple):
    """One rendered scene before normalisation."""

    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    mask: np.ndarray  # (H, W) int64 class ids
    kind: int  # index into ``scene_kinds``
    band: Tuple[int, int]  # rows [start, stop) of the cue band
    boxes: List[Tuple[int, int, int, int]]  # look-alike boxes (y0, x0, h, w)


def blind_caps(num_kinds: int = 3, num_classes: Optional[int] = None,
               lookalike_fraction: Optional[float] = None) -> Dict[str, float]:
    """Best scores a model blind to the scene cue can reach (see the module docstring).

    Returns ``lookalike_iou`` (per look-alike class), ``miou`` (every other class perfect),
    ``miou_constant_guess`` and, when ``lookalike_fraction`` is given, ``pixacc``.
    """
    k = num_kinds
    c = num_classes if num_classes is not None else 1 + 2 * k
    caps = {
        "lookalike_iou": 1.0 / (2 * k - 1),
        "miou": (c - k + k / (2 * k - 1)) / c,
        "miou_constant_guess": (c - k + 1.0 / k) / c,
        "lookalike_pixacc": 1.0 / k,
    }
    if lookalike_fraction is not None:
        caps["pixacc"] = 1.0 - (1.0 - 1.0 / k) * lookalike_fraction
    return caps


def blind_guess(mask: np.ndarray, context_classes: List[int],
                rng: np.random.Generator) -> np.ndarray:
    """The best context-blind labelling: the true mask, except that every look-alike pixel
    gets a look-alike class drawn uniformly at random, independently of the truth."""
    pred = np.array(mask, copy=True)
    look = np.isin(mask, context_classes)
    pred[look] = np.asarray(context_classes)[rng.integers(len(context_classes), size=look.sum())]
    return pred


class ContextScenes(torch.utils.data.Dataset):
    """Synthetic scenes whose look-alike objects need global context (module docstring).

    ``ds[i] -> (image (3, size, size) float32 normalised, mask (size, size) int64)``.

    Args:
        num_images: dataset length (images are generated on the fly).
        size: image side in pixels; the no-local-cue guarantee holds for ``size >= 128``.
        seed: which images; ``split`` picks a disjoint stream for ``"train"`` and ``"val"``.
        transform: optional joint transform ``(image, mask) -> (image, mask)``.
        split: ``"train"`` or ``"val"``.
        num_kinds: 2 (harbour, street) or 3 (adds railway).
        lookalikes: (fewest, most) look-alike objects per image, both included. The blind
            caps do not depend on it; how strong the per-pixel signal about the scene is does.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, num_images: int = 1000, size: int = BASE_SIZE, seed: int = 0,
                 transform: Optional[Callable] = None, split: str = "train",
                 num_kinds: int = 3, lookalikes: Tuple[int, int] = LOOKALIKES):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if num_kinds not in (2, 3):
            raise ValueError(f"num_kinds must be 2 or 3, got {num_kinds}")
        lo, hi = (int(v) for v in lookalikes)
        if not 1 <= lo <= hi:
            raise ValueError(f"lookalikes must be (fewest, most) with 1 <= fewest <= most, "
                             f"got {tuple(lookalikes)}")
        self.lookalikes = (lo, hi)
        if size < 32:
            raise ValueError(f"size must be at least 32 px, got {size}")
        self.num_images, self.size, self.seed = int(num_images), int(size), int(seed)
        self.transform, self.split, self.num_kinds = transform, split, num_kinds
        self.scene_kinds: List[str] = list(KINDS[:num_kinds])
        self.cue_class_names = list(CUE_CLASSES[:num_kinds])
        self.lookalike_class_names = list(LOOKALIKE_CLASSES[:num_kinds])
        self.classes: List[str] = ["ground"] + self.cue_class_names + self.lookalike_class_names
        self.num_classes = len(self.classes)
        self.cue_classes = [1 + k for k in range(num_kinds)]
        self.context_classes = [1 + num_kinds + k for k in range(num_kinds)]
        self.palette = np.array([_COLORS[c] for c in self.classes], dtype=np.uint8)
        # Geometry, scaled from the 128 px design.
        s = self.size / BASE_SIZE
        self.cue_gap = math.ceil(CUE_GAP * s)
        self._band = (max(2, round(22 * s)), max(2, round(30 * s)))
        self._obj_h = (max(2, round(12 * s)), max(2, round(20 * s)))
        self._obj_w = (max(3, round(18 * s)), max(3, round(34 * s)))
        if self._band[1] + self.cue_gap + self._obj_h[1] > self.size:
            raise ValueError(f"size {size} is too small for a cue band, the gap and objects")
        # Bilinear upsampling matrix for the smooth ground texture (5x5 control grid).
        self._up = _linear_upsampler(5, self.size)
        yy, xx = np.mgrid[0 : self.size, 0 : self.size]
        self._yy, self._xx = yy.astype(np.float32), xx.astype(np.float32)

    # ------------------------------------------------------------------ public helpers
    def __len__(self) -> int:
        return self.num_images

    def scene_kind_index(self, i: int) -> int:
        """Index (into ``scene_kinds``) of image ``i``'s kind. Kinds are exactly balanced."""
        return self._check_index(i) % self.num_kinds

    def scene_kind(self, i: int) -> str:
        """Name of image ``i``'s scene kind, e.g. ``"harbour"``."""
        return self.scene_kinds[self.scene_kind_index(i)]

    def caps(self, lookalike_fraction: Optional[float] = None) -> Dict[str, float]:
        """:func:`blind_caps` for this dataset's number of kinds and classes."""
        return blind_caps(self.num_kinds, self.num_classes, lookalike_fraction)

    def mask(self, i: int) -> np.ndarray:
        """The ``(H, W)`` label map of image ``i`` (untransformed), e.g. for statistics."""
        return self.render(i).mask

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        scene = self.render(i)
        image, mask = normalize(scene.image), torch.from_numpy(scene.mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def render(self, i: int, kind: Optional[int] = None) -> Scene:
        """Draw image ``i`` (unnormalised). ``kind`` overrides its scene kind while keeping
        every other random choice: the layout and ground are drawn before the kind is used,
        which is what makes the look-alikes' surroundings identical across kinds."""
        i = self._check_index(i)
        kind = self.scene_kind_index(i) if kind is None else int(kind)
        split_id = SPLITS.index(self.split)
        layout_seq, cue_seq = np.random.SeedSequence([self.seed, split_id, i]).spawn(2)
        rng = np.random.default_rng(layout_seq)
        n = self.size

        # 1) layout: cue band edge and height, then the look-alike boxes beyond the gap.
        band_h = int(rng.integers(self._band[0], self._band[1] + 1))
        top = bool(rng.random() < 0.5)
        band = (0, band_h) if top else (n - band_h, n)
        # Object rows must be >= gap rows away from the nearest band row.
        lo, hi = (band_h - 1 + self.cue_gap, n) if top else (0, n - band_h - self.cue_gap + 1)
        boxes = []
        for _ in range(int(rng.integers(self.lookalikes[0], self.lookalikes[1] + 1))):
            h = int(rng.integers(self._obj_h[0], self._obj_h[1] + 1))
            w = int(rng.integers(self._obj_w[0], self._obj_w[1] + 1))
            y0 = int(rng.integers(lo, hi - h + 1))
            x0 = int(rng.integers(0, n - w + 1))
            boxes.append((y0, x0, h, w))

        # 2) neutral ground: jittered beige + smooth blotches (same for every kind).
        base = np.array([0.56, 0.52, 0.44], np.float32) + rng.uniform(-0.05, 0.05, 3).astype(
            np.float32)
        blotch = self._up @ rng.normal(0.0, 0.06, (5, 5)).astype(np.float32) @ self._up.T
        image = base + blotch[:, :, None]
        mask = np.zeros((n, n), dtype=np.int64)

        # 3) look-alike objects: identical drawing code whatever the kind.
        lookalike = 1 + self.num_kinds + kind
        for y0, x0, h, w in boxes:
            grey = np.float32(rng.uniform(0.62, 0.8))
            inside, body = self._rounded_box(y0, x0, h, w)
            win = (slice(y0, y0 + h), slice(x0, x0 + w))
            patch = image[win]
            patch[inside] = 0.18  # dark outline
            patch[body] = grey
            # a window strip in the upper part of the body
            wy = slice(max(1, round(0.2 * h)), max(2, round(0.45 * h)))
            wx = slice(max(2, round(0.15 * w)), w - max(2, round(0.15 * w)))
            strip = np.zeros_like(body)
            strip[wy, wx] = True
            patch[strip & body] = (0.25, 0.3, 0.4)
            mask[win][inside] = lookalike

        # 4) pixel noise, drawn before the kind-dependent cue so it is kind-independent.
        noise = rng.standard_normal((n, n, 3), dtype=np.float32) * np.float32(0.03)

        # 5) the cue band: the only kind-dependent pixels (own random stream).
        cue_rng = np.random.default_rng(cue_seq)
        r0, r1 = band
        image[r0:r1] = _CUE_PAINTERS[kind](self, cue_rng, r1 - r0)
        mask[r0:r1] = 1 + kind

        image += noise
        np.clip(image, 0.0, 1.0, out=image)
        return Scene(image, mask, kind, band, boxes)

    # ------------------------------------------------------------------ drawing helpers
    def _check_index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += self.num_images
        if not 0 <= i < self.num_images:
            raise IndexError(f"index {i} out of range for {self.num_images} images")
        return i

    def _rounded_box(self, y0: int, x0: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
        """Boolean ``(h, w)`` masks: the rounded rectangle and its body without the outline."""
        y = self._yy[:h, :1] + 0.5
        x = self._xx[:1, :w] + 0.5
        r = max(2.0, min(h, w) * 0.3)

        def rounded(inset: float) -> np.ndarray:
            rr = max(r - inset, 0.5)
            dy = np.maximum(np.abs(y - h / 2) - (h / 2 - inset - rr), 0.0)
            dx = np.maximum(np.abs(x - w / 2) - (w / 2 - inset - rr), 0.0)
            return dy * dy + dx * dx <= rr * rr

        return rounded(0.0), rounded(1.0)

    def _paint_water(self, rng: np.random.Generator, h: int) -> np.ndarray:
        y, x = self._yy[:h, :1], self._xx[:1, :]
        base = np.array([0.12, 0.33, 0.66], np.float32) + rng.uniform(-0.04, 0.04, 3).astype(
            np.float32)
        period, wavelength = rng.uniform(5, 8), rng.uniform(14, 24)
        amp, phase = rng.uniform(1.0, 2.5), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * (y + amp * np.sin(2 * np.pi * x / wavelength + phase)) / period)
        out = np.broadcast_to(base, (h, self.size, 3)).copy()
        out[wave > 0.75] = (0.85, 0.92, 1.0)  # white crests
        return out

    def _paint_houses(self, rng: np.random.Generator, h: int) -> np.ndarray:
        s = self.size / BASE_SIZE
        widths = []
        while sum(widths) < self.size:
            widths.append(int(rng.integers(max(4, round(12 * s)), max(5, round(22 * s)) + 1)))
        starts = np.cumsum([0] + widths[:-1])
        house = np.repeat(np.arange(len(widths)), widths)[: self.size]  # house id per column
        xl = np.arange(self.size) - starts[house]  # column inside its house
        walls = np.array([0.72, 0.32, 0.22], np.float32) + rng.uniform(
            -0.08, 0.08, (len(widths), 3)).astype(np.float32)
        out = np.broadcast_to(walls[house][None], (h, self.size, 3)).copy()
        roof = max(1, round(0.3 * h))
        out[:roof] = (0.3, 0.12, 0.1)
        y = np.arange(h)[:, None]
        windows = (y >= roof + 2) & ((y - roof) % 8 >= 3) & ((y - roof) % 8 < 6) & \
                  (xl[None] % 7 >= 2) & (xl[None] % 7 < 5)
        out[windows] = (0.95, 0.85, 0.4)
        return out

    def _paint_rails(self, rng: np.random.Generator, h: int) -> np.ndarray:
        s = self.size / BASE_SIZE
        out = np.empty((h, self.size, 3), np.float32)
        out[:] = np.array([0.34, 0.32, 0.31], np.float32) + rng.uniform(-0.03, 0.03, 3).astype(
            np.float32)
        y, x = np.arange(h)[:, None], np.arange(self.size)[None]
        offset = int(rng.integers(0, 9))
        sleepers = ((x + offset) % 9 < 4) & (y >= round(0.2 * h)) & (y < round(0.8 * h))
        out[sleepers] = (0.45, 0.3, 0.18)
        t = max(1, round(2 * s))
        for frac in (0.35, 0.65):
            r = round(frac * h)
            out[r : r + t] = (0.78, 0.78, 0.82)
        return out


_CUE_PAINTERS = (ContextScenes._paint_water, ContextScenes._paint_houses,
                 ContextScenes._paint_rails)


def _linear_upsampler(m: int, n: int) -> np.ndarray:
    """``(n, m)`` matrix ``U`` with ``U @ g`` the linear interpolation of ``g`` (m points)
    onto n pixel centres: ``U @ G @ U.T`` upsamples an ``(m, m)`` grid bilinearly."""
    pos = (np.arange(n) + 0.5) / n * (m - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, m - 2)
    frac = pos - lo
    up = np.zeros((n, m), np.float32)
    up[np.arange(n), lo] = 1 - frac
    up[np.arange(n), lo + 1] = frac
    return up
