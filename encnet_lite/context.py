"""The Context Encoding Module: encoded scene context -> channel attention + SE logits.

From a feature map ``x: (B, C, H, W)`` the module computes, as the official EncNet code does:

1. ``e: (B, C)``: 1x1 conv + BN + ReLU, the :class:`~encnet_lite.encoding.Encoding` layer
   ``(B, K, C)``, BatchNorm1d over the K codewords, ReLU, mean over K;
2. ``gamma = sigmoid(Linear(e)): (B, C)``, one gate per channel, conditioned on the scene;
3. the attended map ``relu(x + x * gamma)`` (residual form; ``x * gamma`` is the paper's
   equation, available with ``residual=False``);
4. optionally, SE logits ``Linear(e): (B, num_classes)`` for the Semantic Encoding loss.

It also measures how the codewords are used (a collapsed encoder assigns every position to
one codeword): :func:`live_codewords`, :func:`assignment_perplexity`,
:func:`largest_scale_share` on assignments ``(..., K)`` (all three:
:func:`assignment_health`), and :func:`codeword_health` on a whole model; :func:`codeword_usage` tabulates classes x codewords
(:func:`shared_favourites`: the codewords that several classes prefer).
"""

from __future__ import annotations

from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .encoding import Encoding


class ContextOutput(NamedTuple):
    """Everything the module computes, by name (chapters plot ``gamma`` and ``e``)."""

    x: Tensor  # attended feature map (B, C, H, W)
    e: Tensor  # encoded context (B, C)
    gamma: Tensor  # channel gates in (0, 1): (B, C)
    se: Tensor | None  # SE logits (B, num_classes), or None without num_classes


def apply_attention(x: Tensor, gamma: Tensor, residual: bool = True) -> Tensor:
    """Gate the channels of ``x: (B, C, H, W)`` with ``gamma: (B, C)``.

    ``residual=True`` gives the official ``relu(x + x * gamma)``: a channel is scaled by
    ``1 + gamma`` in [1, 2], so a gate near 0 leaves the FCN feature intact instead of
    erasing it. ``residual=False`` gives the paper's ``x * gamma``.
    """
    scaled = x * gamma[:, :, None, None]
    return F.relu(x + scaled) if residual else scaled


class ContextEncoding(nn.Module):
    """Context Encoding Module.

    Args:
        in_channels: C, channels of the input map (also the codeword dimension D).
        num_codes: K, number of codewords (32 in the paper).
        num_classes: when given, also predict SE logits (class presence) from ``e``.
        residual: ``relu(x + x * gamma)`` (official) if True, else ``x * gamma``.
        encoder: the :class:`~encnet_lite.encoding.Encoding` variant (one of
            :data:`~encnet_lite.encoding.VARIANTS`; "official" is the official code's).
    """

    def __init__(
        self,
        in_channels: int,
        num_codes: int = 32,
        num_classes: int | None = None,
        residual: bool = True,
        encoder: str = "official",
    ) -> None:
        super().__init__()
        self.residual = residual
        self.project = nn.Sequential(
            nn.Conv2d(in_channels, in_channels, kernel_size=1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
        )
        self.encoding = Encoding(in_channels, num_codes, variant=encoder)
        # BatchNorm1d on (B, K, C) normalises each codeword's aggregate separately.
        self.code_norm = nn.BatchNorm1d(num_codes)
        self.fc_gamma = nn.Linear(in_channels, in_channels)
        self.fc_se = nn.Linear(in_channels, num_classes) if num_classes else None

    def encode(self, x: Tensor) -> Tensor:
        """The encoded context ``e: (B, D)`` of ``x: (B, D, h, w)``."""
        codes = self.encoding(self.project(x))  # (B, K, D)
        return F.relu(self.code_norm(codes)).mean(dim=1)

    def assignments(self, x: Tensor) -> Tensor:
        """Soft assignments ``(B, H*W, K)`` of the projected descriptors to the codewords."""
        return self.encoding.assign(self.project(x))

    def forward(self, x: Tensor) -> ContextOutput:
        e = self.encode(x)
        gamma = torch.sigmoid(self.fc_gamma(e))
        se = self.fc_se(e) if self.fc_se is not None else None
        attended = apply_attention(x, gamma, self.residual)
        return ContextOutput(attended, e, gamma, se)


# --- codeword health: is the encoder using its K codewords? ------------------------------


def codeword_shares(assign: Tensor) -> Tensor:
    """Share of positions each codeword wins (is the argmax of): ``assign: (..., K)`` soft
    assignments -> ``(K,)`` float64, summing to 1."""
    k = assign.shape[-1]
    winners = assign.detach().reshape(-1, k).argmax(-1)
    return torch.bincount(winners.cpu(), minlength=k).double() / max(winners.numel(), 1)


def live_codewords(assign: Tensor, threshold: float = 0.01) -> int:
    """Number of codewords that win at least ``threshold`` (default 1 %) of the positions
    of ``assign: (..., K)``. 1 means the encoder has collapsed onto a single codeword."""
    return int((codeword_shares(assign) >= threshold).sum())


def assignment_perplexity(assign: Tensor) -> float:
    """``exp(H(p))`` of the mean assignment ``p_k = mean_i a_ik`` of ``assign: (..., K)``:
    the effective number of codewords the positions' weight is spread over (1 to K)."""
    k = assign.shape[-1]
    p = assign.detach().reshape(-1, k).double().mean(0).cpu()
    p = p / p.sum()
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return float(entropy.exp())


def largest_scale_share(assign: Tensor, scale: Tensor) -> float:
    """Share of the positions of ``assign: (..., K)`` whose winner is the codeword with the
    largest ``scale: (K,)`` (the least negative one). Near 1: the winner is decided by the
    smoothing factors, not by where the descriptors lie. NaN when no single codeword has the
    largest scale (e.g. one factor shared by all): the question does not arise."""
    scale = scale.detach()
    if int((scale == scale.max()).sum()) > 1:
        return float("nan")
    return float(codeword_shares(assign)[int(scale.argmax())])


def assignment_health(assign: Tensor, scale: Tensor) -> Dict[str, float]:
    """The three measures of codeword use of ``assign: (..., K)`` under factors ``scale:
    (K,)``: ``live_codewords`` (as a float), ``assignment_perplexity`` and
    ``largest_scale_share`` (NaN where no single codeword has the largest scale)."""
    return {"live_codewords": float(live_codewords(assign)),
            "assignment_perplexity": assignment_perplexity(assign),
            "largest_scale_share": largest_scale_share(assign, scale)}


def codeword_usage(assignments: Tensor, masks: Tensor, num_classes: int,
                   ignore_index: int = 255) -> Tensor:
    """Mean soft assignment of each class's pixels to each codeword.

    ``assignments: (B, h, w, K)`` on the feature grid, ``masks: (B, H, W)`` full size ->
    ``(num_classes, K)``; row ``c`` sums to 1 when class ``c`` occurs, and is 0 otherwise.
    Each grid cell takes the label at its centre ("nearest-exact" sampling, as
    :func:`encnet_lite.data.transforms.resize` resamples masks), not its top-left pixel.
    """
    b, h, w, k = assignments.shape
    grid = F.interpolate(masks[:, None].float(), size=(h, w), mode="nearest-exact")
    labels = grid.long().reshape(-1).cpu()
    weights = assignments.detach().reshape(-1, k).float().cpu()
    keep = labels != ignore_index
    labels, weights = labels[keep], weights[keep]
    if len(labels) and int(labels.max()) >= num_classes:
        raise ValueError(f"masks hold class {int(labels.max())} >= num_classes={num_classes}; "
                         "pass the dataset's num_classes (and its ignore_index)")
    sums = torch.zeros(num_classes, k).index_add_(0, labels, weights)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1)
    return sums / counts[:, None]


def shared_favourites(usage: Tensor) -> List[Tuple[int, List[int]]]:
    """Codewords that are the favourite (largest mean assignment) of two or more classes.

    ``usage: (num_classes, K)`` from :func:`codeword_usage` (absent classes, all-zero rows,
    are skipped) -> ``[(codeword, [class ids])]``, the codewords shared by most classes
    first. Classes that share a favourite look alike to the encoder: their descriptors
    fall near the same codeword.
    """
    present = [c for c in range(usage.shape[0]) if float(usage[c].sum()) > 0]
    by_code: Dict[int, List[int]] = {}
    for c in present:
        by_code.setdefault(int(usage[c].argmax()), []).append(c)
    shared = [(k, members) for k, members in by_code.items() if len(members) > 1]
    return sorted(shared, key=lambda item: (-len(item[1]), item[0]))


def dominant_groups(masks: Tensor, num_classes: int, most: int = 4,
                    ignore_index: int = 255) -> Tensor:
    """Group images by their most frequent labelled class, keeping the ``most`` largest
    groups: ``masks: (N, H, W)`` -> ``(N,)`` class ids, -1 for an image outside those groups
    or without a labelled pixel (ties between groups of equal size: the lower class id)."""
    groups = torch.full((len(masks),), -1, dtype=torch.long)
    for i, mask in enumerate(masks):
        labels = mask[mask != ignore_index].long()
        if labels.numel():
            groups[i] = int(torch.bincount(labels, minlength=num_classes).argmax())
    sizes = torch.bincount(groups[groups >= 0], minlength=num_classes)
    keep = torch.argsort(-sizes, stable=True)[:most]
    keep = keep[sizes[keep] > 0]
    groups[~torch.isin(groups, keep)] = -1
    return groups


def find_context_encoding(model: nn.Module) -> Optional[ContextEncoding]:
    """The model's (first) :class:`ContextEncoding` module, or None (e.g. an FCN)."""
    return next((m for m in model.modules() if isinstance(m, ContextEncoding)), None)


@torch.no_grad()
def codeword_health(model: nn.Module, images: Tensor) -> Dict[str, float]:
    """How the model's encoding layer uses its codewords on ``images: (B, 3, H, W)``.

    Returns ``live_codewords`` (:func:`live_codewords`, as a float), ``assignment_perplexity``
    and ``largest_scale_share`` (absent where no single codeword has the largest scale) over
    every position of every image; ``{}`` for a model
    without a Context Encoding Module. Runs in eval mode without gradients (the module's
    input is caught with a forward hook) and restores the training mode.
    """
    module = find_context_encoding(model)
    if module is None:
        return {}
    caught: List[Tensor] = []
    hook = module.register_forward_pre_hook(lambda _m, args: caught.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(images.to(device))
        assign = module.assignments(caught[0])  # (B, N, K)
    finally:
        hook.remove()
        model.train(was_training)
    health = assignment_health(assign, module.encoding.smoothing())
    if health["largest_scale_share"] != health["largest_scale_share"]:
        del health["largest_scale_share"]  # NaN (one shared factor): JSON stays plain
    return health


# --- analysis helpers (chapters measure how well gamma / e tell scene kinds apart) ------


def separation_ratio(features: Tensor, labels: Tensor) -> float:
    """Between-group over within-group variance of ``features: (N, D)`` grouped by
    ``labels: (N,)`` (both summed over the D dimensions; a Fisher-style ratio).

    0 when every group has the same mean; large when groups are tight and far apart.
    """
    features = features.detach().double()
    mean = features.mean(0)
    between = within = features.new_zeros(())
    for g in labels.unique():
        part = features[labels == g]
        between = between + len(part) * (part.mean(0) - mean).pow(2).sum()
        within = within + (part - part.mean(0)).pow(2).sum()
    return float(between / within.clamp_min(1e-12))


def nearest_centroid_accuracy(train_features: Tensor, train_labels: Tensor,
                              test_features: Tensor, test_labels: Tensor) -> float:
    """Accuracy of classifying ``test_features: (M, D)`` by the nearest group mean of
    ``train_features: (N, D)``: how well a vector identifies its group on held-out data.

    Centred on the training mean and computed in float64: the groups of an untrained
    layer can differ by ~1e-5 around values of ~0.5, and ``cdist``'s float32
    matrix-product form cancels such differences away (it then reports near chance).
    """
    train, test = train_features.detach().double(), test_features.detach().double()
    offset = train.mean(0)
    train, test = train - offset, test - offset
    groups = train_labels.unique()
    centroids = torch.stack([train[train_labels == g].mean(0) for g in groups])
    pred = groups[torch.cdist(test, centroids).argmin(1)]
    return float((pred == test_labels).float().mean())


def kind_separation(val: Dict[str, Tensor], ref: Dict[str, Tensor],
                    keys: Sequence[str] = ("gamma", "e")) -> Dict[str, Dict[str, float]]:
    """How well each vector named in ``keys`` tells the scene kinds apart on held-out images.

    ``val``, ``ref``: :func:`collect_context` outputs (``key: (N, D)``, ``"kind": (N,)``);
    ``ref`` only supplies the kinds' centroids. Per key: ``ratio``
    (:func:`separation_ratio` on ``val``), ``accuracy`` (:func:`nearest_centroid_accuracy`
    of ``val`` against ``ref``'s centroids) and ``spread`` (the std over ``val``'s images,
    averaged over the D entries: how much the vector varies at all).
    """
    return {key: {
        "ratio": separation_ratio(val[key], val["kind"]),
        "accuracy": nearest_centroid_accuracy(ref[key], ref["kind"], val[key], val["kind"]),
        "spread": float(val[key].double().std(0).mean()),
    } for key in keys}


@torch.no_grad()
def collect_context(model: nn.Module, dataset, num_images: int | None = None,
                    keys: Sequence[str] = ("gamma", "e", "se"),
                    batch_size: int = 32, crop_size: int | None = None) -> Dict[str, Tensor]:
    """Run ``model`` (eval mode) over the first ``num_images`` of ``dataset`` and stack, per
    image, each of ``keys`` on the CPU as ``(N, ...)``.

    A key is one of the model's outputs (``"gamma"`` ``(N, D)``, ``"e"`` ``(N, D)``, ``"se"``
    ``(N, C)``, ...; those it does not return are left out), or ``"assign"``: the soft
    assignments ``(N, h, w, K)`` of ``EncNet.assignments``, ``"image"``: the inputs
    ``(N, 3, H, W)``, ``"mask"``: the labels ``(N, H, W)``. ``crop_size``: centre-crop each
    image and mask to it first (padding smaller ones with the ignore label), so that images
    of different sizes (PASCAL-Context) stack into one batch. Adds ``"kind"`` ``(N,)`` when
    the dataset has ``scene_kind_index`` (ContextScenes).
    """
    from .data.transforms import CenterCrop

    n = len(dataset) if num_images is None else min(num_images, len(dataset))
    crop = CenterCrop(crop_size) if crop_size else None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts: Dict[str, list] = {}
    try:
        for start in range(0, n, batch_size):
            pairs = [dataset[i] for i in range(start, min(start + batch_size, n))]
            if crop is not None:
                pairs = [crop(image, mask) for image, mask in pairs]
            images = torch.stack([image for image, _ in pairs])
            got = dict(model(images.to(device)))
            if "assign" in keys:
                got["assign"] = model.assignments(images.to(device))
            got["image"], got["mask"] = images, torch.stack([mask for _, mask in pairs])
            for key in (k for k in keys if k in got):
                value = got[key].cpu()  # labels stay integers, the rest float32
                parts.setdefault(key, []).append(value if key == "mask" else value.float())
    finally:
        model.train(was_training)
    result = {key: torch.cat(chunks) for key, chunks in parts.items()}
    if hasattr(dataset, "scene_kind_index"):
        result["kind"] = torch.tensor([dataset.scene_kind_index(i) for i in range(n)])
    return result


def context_scores(model: nn.Module, val_set, ref_set) -> Dict[str, object]:
    """How well a trained model's encoded context ``e`` describes held-out scenes.

    ``val_set`` / ``ref_set``: ContextScenes-like datasets (``scene_kind_index``); the kind
    centroids of ``e`` come from ``ref_set``. Returns ``kind_ratio``
    (:func:`separation_ratio` of ``e`` by kind on ``val_set``) and ``kind_centroid``
    (:func:`nearest_centroid_accuracy`, a fraction); with an SE branch also
    ``presence_right`` (fraction of (image, class) presence answers right at 0.5),
    ``presence_images`` (fraction of images with every answer right) and
    ``presence_probs`` ``(N, C)``, the SE layer's probabilities for the ``N`` val images.
    A plain function of its arguments, so a ``functools.partial`` of it is a picklable
    :func:`encnet_lite.ablation.run_grid` probe.
    """
    from .losses import presence_targets

    val = collect_context(model, val_set, keys=("e", "se", "mask"))
    ref = collect_context(model, ref_set, keys=("e",))
    e = kind_separation(val, ref, keys=("e",))["e"]
    scores: Dict[str, object] = {"kind_ratio": e["ratio"], "kind_centroid": e["accuracy"]}
    if "se" in val:
        probs = torch.sigmoid(val["se"])
        right = (probs > 0.5).float() == presence_targets(val["mask"], probs.shape[1])
        scores.update(presence_right=float(right.float().mean()),
                      presence_images=float(right.all(1).float().mean()),
                      presence_probs=probs)
    return scores
