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

A second piece of context (``day_night=True``). Each image is also ``day`` or ``night``,
independently of its kind (times are balanced within every kind). The time's cue is a strip
of sky along the band's outer edge, labelled ``day sky`` (plain light blue) or ``night sky``
(dark, with stars): like the cue band, a class the network must segment, so its features
tell the times apart. The time decides the class of 3-6 small dark *birds* (about 12x15 px,
some 5 % of the pixels), drawn by the same code by day and by night beyond the same gap:
``pigeon`` by day, ``bat`` by night. The same argument caps a blind model's bird classes at
IoU 1/3 each; a model that reads the kind but not the time is capped at ``mIoU_kind_only``
(87.9 % with 11 classes). This is the case the SE-loss is for: the birds are too few pixels
for the per-pixel loss alone to teach the context vector the time within the ablation's
budget, while the SE-loss asks every image which birds (and skies) it holds, small or
not (``benchmarks/results/ablation.json``). With ``day_night=False`` (the default) the
images are exactly those drawn without it.

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
# The second, independent piece of context (``day_night=True``): the time of day.
TIMES = ("day", "night")
SKY_CLASSES = ("day sky", "night sky")  # its cue, one per time, same order as TIMES
BIRD_CLASSES = ("pigeon", "bat")  # the objects it decides, one per time, same order
SKY_ROWS = 7  # px at size 128: the sky strip along the band's outer edge
BIRDS = (3, 6)  # birds per image (fewest, most)
BIRD_H, BIRD_W = (10, 14), (13, 18)  # bird height and width ranges, px at size 128
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
    "wagon": (0, 200, 170), "pigeon": (150, 220, 40), "bat": (150, 60, 220),
    "day sky": (140, 200, 250), "night sky": (20, 20, 90),
}


class Scene(NamedTuple):
    """One rendered scene before normalisation."""

    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    mask: np.ndarray  # (H, W) int64 class ids
    kind: int  # index into ``scene_kinds``
    band: Tuple[int, int]  # rows [start, stop) of the cue band
    boxes: List[Tuple[int, int, int, int]]  # look-alike boxes (y0, x0, h, w)
    time: int = 0  # index into ``TIMES`` (always 0, day, unless ``day_night``)
    birds: Tuple[Tuple[int, int, int, int], ...] = ()  # bird boxes (y0, x0, h, w)


def blind_caps(num_kinds: int = 3, num_classes: Optional[int] = None,
               lookalike_fraction: Optional[float] = None, num_times: int = 1,
               bird_fraction: float = 0.0) -> Dict[str, float]:
    """Best scores a model blind to the scene cue can reach (see the module docstring).

    Returns fractions, named as :meth:`~encnet_lite.metrics.ConfusionMatrix.compute`'s
    scores: ``lookalike_IoU`` (per look-alike class), ``mIoU`` (every other class perfect),
    ``mIoU_constant_guess``, ``lookalike_pixAcc`` and, when ``lookalike_fraction`` is given,
    ``pixAcc``. With ``num_times=2`` (``day_night``) the birds are capped the same way
    (``bird_IoU``), and ``mIoU_kind_only`` is the cap of a model that reads the scene kind but
    not the time; ``bird_fraction`` (the birds' share of the pixels) then enters the
    ``pixAcc`` cap.
    """
    k, t = num_kinds, num_times
    birds = t if t > 1 else 0  # sky and bird classes exist only with several times of day
    c = num_classes if num_classes is not None else 1 + 2 * k + 2 * birds
    bird_share = birds / (2 * t - 1)  # summed bird IoU caps (0 without birds)
    caps = {
        "lookalike_IoU": 1.0 / (2 * k - 1),
        "mIoU": (c - k - birds + k / (2 * k - 1) + bird_share) / c,
        "mIoU_constant_guess": (c - k - birds + 1.0 / k + (1.0 / t if birds else 0.0)) / c,
        "lookalike_pixAcc": 1.0 / k,
    }
    if birds:
        caps["bird_IoU"] = 1.0 / (2 * t - 1)
        caps["mIoU_kind_only"] = (c - birds + bird_share) / c
    if lookalike_fraction is not None:
        # (1 - 1/t) is 0 with a single time: no bird term then
        caps["pixAcc"] = 1.0 - (1.0 - 1.0 / k) * lookalike_fraction - \
            (1.0 - 1.0 / t) * bird_fraction
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
        day_night: add a second, independent piece of context (module docstring): each
            image is also ``day`` or ``night`` (a strip of day or night sky at the band's
            edge), and 3-6 small birds, drawn the same whatever the time, are ``pigeon`` by
            day and ``bat`` by night.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, num_images: int = 1000, size: int = BASE_SIZE, seed: int = 0,
                 transform: Optional[Callable] = None, split: str = "train",
                 num_kinds: int = 3, lookalikes: Tuple[int, int] = LOOKALIKES,
                 day_night: bool = False):
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
        self.day_night = bool(day_night)
        self.num_times = len(TIMES) if self.day_night else 1
        self.sky_class_names = list(SKY_CLASSES) if self.day_night else []
        self.bird_class_names = list(BIRD_CLASSES) if self.day_night else []
        self.classes: List[str] = ["ground"] + self.cue_class_names + \
            self.lookalike_class_names + self.sky_class_names + self.bird_class_names
        self.num_classes = len(self.classes)
        self.cue_classes = [1 + k for k in range(num_kinds)]
        self.context_classes = [1 + num_kinds + k for k in range(num_kinds)]
        t = len(self.sky_class_names)
        self.sky_classes = [1 + 2 * num_kinds + j for j in range(t)]
        self.bird_classes = [1 + 2 * num_kinds + t + j for j in range(t)]
        self.palette = np.array([_COLORS[c] for c in self.classes], dtype=np.uint8)
        # Geometry, scaled from the 128 px design.
        s = self.size / BASE_SIZE
        self.cue_gap = math.ceil(CUE_GAP * s)
        self._band = (max(2, round(22 * s)), max(2, round(30 * s)))
        self._obj_h = (max(2, round(12 * s)), max(2, round(20 * s)))
        self._obj_w = (max(3, round(18 * s)), max(3, round(34 * s)))
        self._sky_rows = max(1, round(SKY_ROWS * s))
        self._bird_h = tuple(max(2, round(v * s)) for v in BIRD_H)
        self._bird_w = tuple(max(3, round(v * s)) for v in BIRD_W)
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

    def time_index(self, i: int) -> int:
        """Index (into ``TIMES``) of image ``i``'s time of day: always 0 (day) unless
        ``day_night``. Times are balanced within every scene kind, independently of it."""
        return (self._check_index(i) // self.num_kinds) % self.num_times

    def caps(self, lookalike_fraction: Optional[float] = None,
             bird_fraction: float = 0.0) -> Dict[str, float]:
        """:func:`blind_caps` for this dataset's number of kinds, times and classes."""
        return blind_caps(self.num_kinds, self.num_classes, lookalike_fraction, self.num_times,
                          bird_fraction)

    def mask(self, i: int) -> np.ndarray:
        """The ``(H, W)`` label map of image ``i`` (untransformed), e.g. for statistics."""
        return self.render(i).mask

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        scene = self.render(i)
        image, mask = normalize(scene.image), torch.from_numpy(scene.mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def render(self, i: int, kind: Optional[int] = None, time: Optional[int] = None) -> Scene:
        """Draw image ``i`` (unnormalised). ``kind`` (``time``) overrides its scene kind
        (time of day) while keeping every other random choice: the layout and ground are
        drawn before either is used, which is what makes the look-alikes' and the birds'
        surroundings identical across kinds and times."""
        i = self._check_index(i)
        kind = self.scene_kind_index(i) if kind is None else int(kind)
        time = self.time_index(i) if time is None else int(time)
        split_id = SPLITS.index(self.split)
        # spawn(3)'s first two children are spawn(2)'s: without day_night the images are
        # exactly those drawn before birds existed.
        layout_seq, cue_seq, bird_seq = np.random.SeedSequence(
            [self.seed, split_id, i]).spawn(3)
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

        # 3b) birds (day_night only): identical drawing code whatever the time.
        birds = self._draw_birds(np.random.default_rng(bird_seq), image, mask, boxes, lo, hi,
                                 self.bird_classes[time]) if self.day_night else ()

        # 4) pixel noise, drawn before the kind-dependent cue so it is kind-independent.
        noise = rng.standard_normal((n, n, 3), dtype=np.float32) * np.float32(0.03)

        # 5) the cue band: the only kind-dependent pixels (own random stream).
        cue_rng = np.random.default_rng(cue_seq)
        r0, r1 = band
        image[r0:r1] = _CUE_PAINTERS[kind](self, cue_rng, r1 - r0)
        mask[r0:r1] = 1 + kind
        if self.day_night:  # the time's cue: a sky strip along the band's outer edge
            sky = slice(r0, r0 + self._sky_rows) if top else slice(r1 - self._sky_rows, r1)
            image[sky] = self._paint_sky(cue_rng, time)
            mask[sky] = self.sky_classes[time]

        image += noise
        np.clip(image, 0.0, 1.0, out=image)
        return Scene(image, mask, kind, band, boxes, time, tuple(birds))

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

    def _draw_birds(self, rng: np.random.Generator, image: np.ndarray, mask: np.ndarray,
                    boxes: List[Tuple[int, int, int, int]], lo: int, hi: int, label: int
                    ) -> List[Tuple[int, int, int, int]]:
        """Draw ``BIRDS`` (fewest, most) small dark birds in rows ``[lo, hi)`` (beyond the cue
        gap), each placed clear of the look-alikes and earlier birds when one of 20 tries
        finds room; returns their boxes."""
        n = self.size
        birds = []
        for _ in range(int(rng.integers(BIRDS[0], BIRDS[1] + 1))):
            h = int(rng.integers(self._bird_h[0], self._bird_h[1] + 1))
            w = int(rng.integers(self._bird_w[0], self._bird_w[1] + 1))
            for _ in range(20):
                y0 = int(rng.integers(lo, hi - h + 1))
                x0 = int(rng.integers(0, n - w + 1))
                if not any(y0 < by + bh and by < y0 + h and x0 < bx + bw and bx < x0 + w
                           for by, bx, bh, bw in boxes + birds):
                    break
            shape, _ = self._rounded_box(y0, x0, h, w)
            win = (slice(y0, y0 + h), slice(x0, x0 + w))
            image[win][shape] = 0.12  # a dark body
            image[y0 + h // 3, x0 + w // 4] = (0.9, 0.85, 0.3)  # an eye
            mask[win][shape] = label
            birds.append((y0, x0, h, w))
        return birds

    def _paint_sky(self, rng: np.random.Generator, time: int) -> np.ndarray:
        """The ``(sky rows, size, 3)`` sky strip: plain light blue by day, dark blue with
        scattered stars by night."""
        out = np.empty((self._sky_rows, self.size, 3), np.float32)
        if time == 0:
            out[:] = (0.55, 0.75, 0.95)
        else:
            out[:] = (0.05, 0.07, 0.2)
            out[rng.random((self._sky_rows, self.size)) < 0.08] = (0.95, 0.95, 0.8)
        return out

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
