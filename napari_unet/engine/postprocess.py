"""Probabilities → uint32 instance labels (seeded watershed), cheap to re-run on stored probabilities."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import local_maxima, reconstruction
from skimage.segmentation import relabel_sequential, watershed

from napari_unet.errors import InvalidParameter
from napari_unet.validate import LIMITS, check_limit, check_number

SEED_MODES = ("threshold", "shape")


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds on the class probabilities and the smallest object kept (pixels)."""

    threshold: float = 0.5  # foreground = P(interior) + P(boundary) above this
    seed_threshold: float = 0.6  # seeds = connected regions of P(interior) above this
    min_size: int = 30
    min_seed_size: int = 4
    # objects touching the plane's edge are partly outside it: kept from this size (None: min_size)
    edge_min_size: int | None = None
    # "threshold": one seed per connected region of P(interior) > seed_threshold; "shape": the
    # interior region's shape decides: one seed per h-maximum (height seed_h px) of its distance
    # transform, so two nuclei joined by a thin neck of interior get two seeds (2D planes only: 3D
    # objects of engine.stack choose their own seeds). seed_h is in training-scale pixels, like the sizes
    seeds: str = "threshold"
    seed_h: float = 2.0

    def __post_init__(self) -> None:  # checked here so every path (API, CLI, checkpoint) refuses alike
        if self.seeds not in SEED_MODES:
            raise InvalidParameter(f"seeds must be one of {', '.join(SEED_MODES)}, not {self.seeds!r}.")
        object.__setattr__(self, "seed_h", check_number("seed h", self.seed_h, low=0, high=100, low_open=True))
        sizes = ("min_size", "min_seed_size") + (("edge_min_size",) if self.edge_min_size is not None else ())
        for name in ("threshold", "seed_threshold"):
            object.__setattr__(self, name, check_limit(name.replace("_", " "), getattr(self, name)))
        for name in sizes:  # every size has the limits of min size
            object.__setattr__(self, name, check_number(name.replace("_", " "), getattr(self, name),
                                                        **LIMITS["min size"]))

    @property
    def edge_size(self) -> int:
        """The smallest object kept where it touches the plane's edge."""
        return self.min_size if self.edge_min_size is None else min(self.edge_min_size, self.min_size)

    def with_min_size(self, min_size: int) -> PostprocessConfig:
        """This config with a min size the user set: it applies at the plane's edge too."""
        return replace(self, min_size=min_size, edge_min_size=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PostprocessConfig:
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def labels_from_probabilities(probs: np.ndarray, config: PostprocessConfig | None = None) -> np.ndarray:
    """Instance labels for probabilities shaped ``(..., K, H, W)``; leading axes are planes.

    With 3 classes (background, interior, boundary) touching nuclei are split by a watershed
    from interior seeds; with 2 classes (background, foreground) by a distance-transform watershed.
    """
    config = config or PostprocessConfig()
    lead = probs.shape[:-3]
    flat = probs.reshape((-1, *probs.shape[-3:]))
    out = np.zeros((flat.shape[0], *flat.shape[-2:]), dtype=np.uint32)
    for i, p in enumerate(flat):
        out[i] = _label_plane(p, config)
    return out.reshape((*lead, *out.shape[-2:]))


def foreground_mask(probs: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """The pixels post-processing labels: not background, P(interior) + P(boundary) above the
    threshold (``probs`` shaped ``(..., K, H, W)``)."""
    return (1.0 - probs[..., 0, :, :]) > config.threshold


def _label_plane(p: np.ndarray, c: PostprocessConfig) -> np.ndarray:
    if p.shape[0] < 2:
        raise ValueError("post-processing needs at least 2 classes (background + foreground)")
    foreground = foreground_mask(p, c)
    if p.shape[0] >= 3:
        interior = p[1]
        seeds_mask = (interior > c.seed_threshold) & foreground
        elevation = -interior
    else:
        dist = ndi.distance_transform_edt(foreground)
        seeds_mask = dist > 0.5 * ndi.maximum_filter(dist, size=9)
        seeds_mask &= foreground & (dist > 1)
        elevation = -dist
    seeds, _ = ndi.label(seeds_mask)
    seeds = drop_small(seeds, c.min_seed_size)
    if c.seeds == "shape":
        seeds = shape_seeds(seeds > 0, c.seed_h)
    labels = watershed(elevation, seeds, mask=foreground)
    orphans, n = ndi.label(foreground & (labels == 0))
    if n:  # foreground without a seed is still an object
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    labels, _, _ = relabel_sequential(drop_small(labels, c.min_size, c.edge_size))
    return labels.astype(np.uint32, copy=False)


def shape_seeds(region: np.ndarray, h: float) -> np.ndarray:
    """Labelled seeds of a seed region from its shape: the region cut at its necks. Each h-maximum
    of its distance transform (a bulge at least ``h`` px thicker than the neck joining it to the
    next one) is grown over its bulge; a region with one bulge stays one seed, as with a threshold."""
    dist = ndi.distance_transform_edt(region)
    # the h-maxima transform: every maximum lowered by h, the rest flooded up to it; its regional
    # maxima are the bulges (two equal peaks joined above their height - h are one)
    peaks = local_maxima(reconstruction(dist - h, dist, method="dilation")) & region
    parts, n = ndi.label(region)
    has_peak = np.zeros(n + 1, bool)
    has_peak[parts[peaks]] = True
    seeds, _ = ndi.label(peaks | (region & ~has_peak[parts]))
    return watershed(-dist, seeds, mask=region)


def drop_small(labels: np.ndarray, min_size: int, edge_size: int | None = None) -> np.ndarray:
    """Zero out labelled objects (of a plane or a volume) smaller than ``min_size`` pixels
    (``edge_size`` for those that touch the image's edge, cut by it)."""
    if min_size <= 1 or not labels.any():
        return labels
    areas = np.bincount(labels.ravel())
    small = areas < min_size
    if edge_size is not None and edge_size < min_size:
        edge = edge_ids(labels)
        small[edge] = areas[edge] < edge_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def edge_ids(labels: np.ndarray) -> np.ndarray:
    """The labels (0 included) present on the image's faces (a plane's first/last rows and columns)."""
    return np.unique(np.concatenate([np.take(labels, [0, -1], axis=a).ravel() for a in range(labels.ndim)]))


def median_object_area(labels: Sequence[np.ndarray]) -> float:
    """Median pixel area of the labelled objects in ``labels`` (0 if there are none)."""
    areas = [np.bincount(np.asarray(lab).ravel())[1:] for lab in labels]
    areas = np.concatenate(areas) if areas else np.zeros(0)
    areas = areas[areas > 0]
    return float(np.median(areas)) if areas.size else 0.0


def choose_postprocess(
    probs: Sequence[np.ndarray],
    truths: Sequence[np.ndarray],
    base: PostprocessConfig | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    *,
    thresholds: Sequence[float] = (0.5,),
    seed_thresholds: Sequence[float] = (0.6, 0.8),
    min_sizes: Sequence[int] = (),
) -> tuple[PostprocessConfig, float]:
    """Grid-search thresholds and minimum size on validation probabilities; returns the config
    with the best pooled F1 at IoU 0.5 (ties keep the earlier, i.e. the base-like, setting).

    The base's own values are always tried first; minimum sizes default to fractions of the
    median object area of ``truths``.
    """
    from napari_unet.engine.metrics import pooled_f1

    base = base or PostprocessConfig()
    typical = median_object_area(truths)
    sizes = min_sizes or [int(f * typical) for f in (0.05, 0.15, 0.3)]
    masks = masks or [None] * len(truths)
    best, best_f1 = base, -1.0
    grid = itertools.product(
        dict.fromkeys((base.threshold, *thresholds)),
        dict.fromkeys((base.seed_threshold, *seed_thresholds)),
        dict.fromkeys((base.min_size, *sizes)),
    )
    for thr, seed, size in grid:
        config = replace(base, threshold=thr, seed_threshold=seed, min_size=size)
        pairs = []
        for p, gt, m in zip(probs, truths, masks):
            pred = labels_from_probabilities(p, config)
            pairs.append((gt, pred) if m is None else (np.where(m, gt, 0), np.where(m, pred, 0)))
        f1 = pooled_f1(pairs)
        if f1 > best_f1:
            best, best_f1 = config, f1
    return best, best_f1
