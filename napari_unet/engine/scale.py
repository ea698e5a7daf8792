"""Object scale: the resize factor that brings an image's objects to the size the model was trained at.

A *scale* s > 1 enlarges the image before the network (objects smaller than the model's), s < 1
shrinks it. ``scale="auto"`` picks s either from pixel sizes (when both the image's and the
model's are known) or from a quick first pass that measures the median object area.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_unet.engine.postprocess import PostprocessConfig, edge_ids
from napari_unet.errors import InputError
from napari_unet.validate import check_number

SCALE_LIMITS = (0.1, 10.0)  # what a given scale may be
SCALE_RANGE = (0.25, 4.0)  # what "auto" may choose (training augments 0.5–2×, tiles allow more)
# |s − 1| below this: keep 1.0. Training resizes crops 0.5–2×, so objects within about ±20% of the
# training size are well inside what the network saw; resizing them only costs interpolation (on
# mnfinder validation-data a 0.84 "auto" cost the U2OS image 0.023 F1 against scale 1).
DEAD_BAND = 0.2
PROBE_SIDE = 512  # side of the central crop the first pass runs on (1024 when that has few objects)
MIN_OBJECTS = 5
# An object is *clear* when its pixels' most likely class has this mean probability. Only clear
# objects are measured when there are enough of them: textured background (cytoplasm around dim
# nuclei) breaks into many small unclear pieces that would otherwise set the median. On mnfinder
# training-data made dim, they sent "auto" to 1.5–2.5 where 0.88–0.93 was right (docs/benchmarks.md).
CLEAR = 0.8

ScaleFn = Callable[[float], None]


@dataclass(frozen=True)
class ScaleChoice:
    """The chosen scale and how: ``"given"``, ``"pixel size"``, ``"object size"``, or
    ``"unknown"`` (1.0: the model records no training object size, or too few objects were found)."""

    scale: float
    how: str
    measured_area: float | None = None  # median object area (px) found by the first pass
    note: str = ""  # how, in words, when there is more to say than ``how``

    def describe(self) -> str:
        """One phrase for the user: ``"scale 0.5 from pixel sizes (image 0.325 µm, model 0.65 µm)"``."""
        if self.note:
            return self.note
        if self.how == "object size" and self.measured_area is not None:
            return f"scale {self.scale:.2f} from the objects' size (median {self.measured_area:.0f} px)"
        if self.how == "unknown":
            return f"scale {self.scale:.2f} (the objects' size could not be measured)"
        return f"scale {self.scale:.2f} ({'as set' if self.how == 'given' else self.how})"


def checked_scale(scale: Any) -> float:
    """A given scale as a float, or one sentence when it is not a number in :data:`SCALE_LIMITS`."""
    if isinstance(scale, str):
        raise InputError(f"Scale must be a number or 'auto', not {scale!r}.")
    scale = check_number("scale", scale)
    if not SCALE_LIMITS[0] <= scale <= SCALE_LIMITS[1]:
        raise InputError(f"Scale {scale} is outside the supported range {SCALE_LIMITS[0]}–{SCALE_LIMITS[1]:g}.")
    return scale


def scale_from_pixel_size(image_pixel_um: float, model_pixel_um: float) -> float:
    """``image_pixel_um / model_pixel_um``: an image with larger pixels than the model's training
    images shows its objects smaller, so it is enlarged by that ratio (0.65 µm vs 0.325 µm → 2.0)."""
    if not (image_pixel_um > 0 and model_pixel_um > 0 and np.isfinite(image_pixel_um * model_pixel_um)):
        raise InputError(f"Pixel sizes must be positive numbers, not {image_pixel_um} and {model_pixel_um}.")
    return float(image_pixel_um / model_pixel_um)


def pixel_size_choice(image_um: float | None, model_um: float | None) -> ScaleChoice | None:
    """The scale from pixel sizes, clamped to :data:`SCALE_RANGE`; None when either is unknown or
    their ratio is outside :data:`SCALE_LIMITS` (metadata that cannot be right is treated as unknown)."""
    if image_um is None or not model_um:
        return None
    try:
        ratio = scale_from_pixel_size(image_um, model_um)
    except InputError:
        return None
    if not SCALE_LIMITS[0] <= ratio <= SCALE_LIMITS[1]:
        return None
    scale = float(np.clip(ratio, *SCALE_RANGE))
    note = f"scale {scale:.3g} from pixel sizes (image {image_um:g} µm, model {model_um:g} µm)"
    if scale != ratio:
        note += f"; their ratio {ratio:.3g} is beyond what auto chooses ({SCALE_RANGE[0]}–{SCALE_RANGE[1]:g})"
    return ScaleChoice(scale, "pixel size", note=note)


def scale_for_area(measured_area: float, model_area: float) -> float:
    """The scale that makes objects of ``measured_area`` px cover ``model_area`` px, clamped to
    :data:`SCALE_RANGE`."""
    s = float(np.sqrt(model_area / measured_area))
    return float(np.clip(s, *SCALE_RANGE))


def postprocess_at_scale(config: PostprocessConfig, scale: float) -> PostprocessConfig:
    """A model's post-processing sizes are in training-scale pixels; at ``scale`` an object covers
    ``1/scale²`` as many image pixels, so ``min_size`` and ``min_seed_size`` shrink (or grow) with it
    (and the seed height ``seed_h``, a length, with ``scale``: divided by it)."""
    if scale == 1.0:
        return config
    edge = config.edge_min_size
    return replace(config, min_size=max(1, round(config.min_size / scale**2)),
                   min_seed_size=max(1, round(config.min_seed_size / scale**2)), seed_h=config.seed_h / scale,
                   edge_min_size=None if edge is None else max(1, round(edge / scale**2)))


def inner_areas(labels: np.ndarray, probabilities: np.ndarray | None = None) -> np.ndarray:
    """Areas of the objects that do not touch the border (cut objects would look small); with the
    ``(K, H, W)`` ``probabilities`` they came from, of the clear ones (:data:`CLEAR`) when at least
    :data:`MIN_OBJECTS` are."""
    areas = np.bincount(labels.ravel())
    keep = np.ones(len(areas), bool)
    keep[0] = False
    keep[edge_ids(labels)] = False
    keep &= areas > 0
    if probabilities is not None and keep.any():
        sure = np.bincount(labels.ravel(), weights=np.asarray(probabilities).max(axis=0).ravel(), minlength=len(areas))
        clear = keep & (sure >= CLEAR * areas)
        if clear.sum() >= MIN_OBJECTS:
            keep = clear
    return areas[keep]
