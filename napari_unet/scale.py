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

from .errors import InputError
from .images import to_planes
from .postprocess import PostprocessConfig, edge_ids, labels_from_probabilities
from .validate import check_number

SCALE_LIMITS = (0.1, 10.0)  # what a given scale may be
SCALE_RANGE = (0.25, 4.0)  # what "auto" may choose (training augments 0.5–2×, tiles allow more)
# |s − 1| below this: keep 1.0. Training resizes crops 0.5–2×, so objects within about ±20% of the
# training size are well inside what the network saw; resizing them only costs interpolation (on
# mnfinder validation-data a 0.84 "auto" cost the U2OS image 0.023 F1 against scale 1).
DEAD_BAND = 0.2
PROBE_SIDE = 512  # side of the central crop the first pass runs on (1024 when that has few objects)
MIN_OBJECTS = 5

ScaleFn = Callable[[float], None]


@dataclass(frozen=True)
class ScaleChoice:
    """The chosen scale and how: ``"given"``, ``"pixel size"``, ``"object size"``, or
    ``"unknown"`` (1.0: the model records no training object size, or too few objects were found)."""

    scale: float
    how: str
    measured_area: float | None = None  # median object area (px) found by the first pass


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


def scale_for_area(measured_area: float, model_area: float) -> float:
    """The scale that makes objects of ``measured_area`` px cover ``model_area`` px, clamped to
    :data:`SCALE_RANGE`."""
    s = float(np.sqrt(model_area / measured_area))
    return float(np.clip(s, *SCALE_RANGE))


def postprocess_at_scale(config: PostprocessConfig, scale: float) -> PostprocessConfig:
    """A model's post-processing sizes are in training-scale pixels; at ``scale`` an object covers
    ``1/scale²`` as many image pixels, so ``min_size`` and ``min_seed_size`` shrink (or grow) with it."""
    if scale == 1.0:
        return config
    edge = config.edge_min_size
    return replace(config, min_size=max(1, round(config.min_size / scale**2)),
                   min_seed_size=max(1, round(config.min_seed_size / scale**2)),
                   edge_min_size=None if edge is None else max(1, round(edge / scale**2)))


def instance_labels(probs: np.ndarray, shape: tuple[int, int], scale: float, config: PostprocessConfig, *,
                    sizes: str = "model") -> np.ndarray:
    """Instance labels at the image's plane ``shape`` from probabilities computed at ``scale``: the
    one post-processing step of ``segment``, the CLI, the blockwise engine and the widget.

    Probabilities kept at an enlarged working size (``scale > 1``) are labelled there, where small
    touching objects are large enough to split, then sampled down; others are resized to ``shape``
    if needed and labelled at it. ``config``'s sizes are in the model's training-scale pixels
    (``sizes="model"``, a model's own values) or in image pixels (``sizes="image"``, values a user typed).
    """
    if sizes not in ("model", "image"):
        raise ValueError(f"sizes must be 'model' or 'image', not {sizes!r}")
    in_image_px = sizes == "image"
    if probs.shape[-2:] != tuple(shape):
        if scale > 1:
            return labels_at_scale(probs, postprocess_at_scale(config, 1 / scale) if in_image_px else config, shape)
        from .tiling import resize_probabilities

        probs = resize_probabilities(probs, shape)
    return labels_from_probabilities(probs, config if in_image_px else postprocess_at_scale(config, scale))


def labels_at_scale(probs: np.ndarray, config: PostprocessConfig, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels from probabilities at an enlarged working size, sampled down to ``shape``
    (nearest pixel centre) and renumbered 1..N per plane. Small touching objects are separated
    where they are large; ``config`` sizes are in working-size pixels."""
    from skimage.segmentation import relabel_sequential

    labels = labels_from_probabilities(probs, config)
    big = labels.shape[-2:]
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * big[0] / shape[0]).astype(np.intp), big[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * big[1] / shape[1]).astype(np.intp), big[1] - 1)
    small = labels[..., rows[:, None], cols[None, :]]
    flat = small.reshape((-1, *shape))
    for i, plane in enumerate(flat):
        flat[i] = relabel_sequential(plane)[0]
    return flat.reshape(small.shape)


def choose_scale(
    model: Any,
    image: np.ndarray,
    *,
    pixel_size_um: float | None = None,
    channel_axis: int | None = None,
    channel: int | None = None,
    **predict_options: Any,
) -> ScaleChoice:
    """The scale ``"auto"`` means for ``image`` (a stack: its first plane) with ``model``.

    Pixel sizes win when both are known; otherwise a first pass at scale 1 over a central crop
    measures the median area of the objects that do not touch the crop's edge, and the scale
    brings it to the model's ``info.object_area``. ``predict_options`` go to the first pass.
    """
    model_px = model.info.pixel_size_um
    if pixel_size_um is not None and model_px:
        return ScaleChoice(float(np.clip(scale_from_pixel_size(pixel_size_um, model_px), *SCALE_RANGE)), "pixel size")
    target = model.info.object_area
    if not target:
        return ScaleChoice(1.0, "unknown")
    from .inference import predict  # inference imports this module

    planes = to_planes(image, model.config.in_channels, channel_axis=channel_axis, channel=channel)
    plane = planes.data[0]  # (C, H, W)
    predict_options = {k: v for k, v in predict_options.items() if k not in ("progress", "cancel", "tta")}
    for side in (PROBE_SIDE, 2 * PROBE_SIDE):
        crop = _central_crop(plane, side)
        probs = predict(model, crop, scale=1.0, channel_axis=0, **predict_options)
        post = replace(model.postprocess, min_size=max(4, model.postprocess.min_size // 16))
        areas = _inner_areas(labels_from_probabilities(probs, post))
        if len(areas) >= MIN_OBJECTS or crop.shape[-2:] == plane.shape[-2:]:
            break
    if len(areas) < MIN_OBJECTS:
        return ScaleChoice(1.0, "unknown", float(np.median(areas)) if len(areas) else None)
    area = float(np.median(areas))
    s = scale_for_area(area, target)
    if abs(s - 1.0) < DEAD_BAND:
        s = 1.0
    return ScaleChoice(s, "object size", area)


def _central_crop(plane: np.ndarray, side: int) -> np.ndarray:
    h, w = plane.shape[-2:]
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return plane[:, y0 : y0 + side, x0 : x0 + side]


def _inner_areas(labels: np.ndarray) -> np.ndarray:
    """Areas of the objects that do not touch the border (cut objects would look small)."""
    areas = np.bincount(labels.ravel())
    keep = np.ones(len(areas), bool)
    keep[0] = False
    keep[edge_ids(labels)] = False
    keep &= areas > 0
    return areas[keep]
