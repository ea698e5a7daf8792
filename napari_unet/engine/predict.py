"""Tiled inference: image → class probabilities, and the automatic scale's first pass."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from napari_unet.engine.device import resolve_device
from napari_unet.engine.memory import check_fits, predict_bytes
from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.planes import to_planes
from napari_unet.engine.postprocess import foreground_mask, labels_from_probabilities
from napari_unet.engine.scale import (
    DEAD_BAND,
    MIN_OBJECTS,
    PROBE_SIDE,
    ScaleChoice,
    ScaleFn,
    checked_scale,
    inner_areas,
    pixel_size_choice,
    scale_for_area,
)
from napari_unet.engine.tiling import (
    CancelFn,
    ProgressFn,
    count_tiles,
    predict_plane,
    resize_planes,
    resize_probabilities,
    tile_geometry,
)
from napari_unet.engine.tta import dihedral
from napari_unet.validate import check_limit

DEFAULT_TILE = 512
# Nuclei are separated by background: a first-pass crop whose foreground covers more than this is
# not nuclei (pure noise: 100%; the sample images: 7–14%)
MAX_FOREGROUND = 0.9
NO_NUCLEI = "no measurable nuclei"
FOCUS_SHARE = 0.9  # a stack's planes with at least this share of the largest intensity spread are in focus
FOCUS_PLANES = 4  # in-focus planes of a stack the automatic scale is measured on (and the sharpest one)


DEFAULT_OVERLAP = 64  # 12.5% of the default tile: margins are cropped (overlap-tile), so this is seam-free


def predict(
    model: SegmentationModel,
    image: np.ndarray,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    scale: float | str = "auto",
    pixel_size_um: float | None = None,
    channel_axis: int | None = None,
    channel: int | None = None,
    tta: bool = False,
    amp: bool | None = None,
    compile: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    on_scale: ScaleFn | None = None,
    on_choice: Callable[[ScaleChoice], None] | None = None,
    keep_enlarged: bool = False,
) -> np.ndarray:
    """Class probabilities ``(*stack, K, H, W)`` float32 for ``image``, by tiled inference.

    ``scale`` resizes the image before the network (e.g. 2.0 for nuclei half the trained size);
    ``"auto"`` (default) chooses it (see :func:`napari_unet.engine.predict.choose_scale`: from
    ``pixel_size_um`` (µm per image pixel) when the model's is known, else from a quick first
    pass; 1.0 for models that record no training object size). ``on_scale(s)`` is told the scale used,
    ``on_choice(choice)`` the :class:`~napari_unet.engine.scale.ScaleChoice` (the scale and how it was chosen).
    ``tta`` averages the probabilities over the 8 flips/rotations (8× the time).
    ``amp`` (default: on for CUDA) runs the network in bfloat16 on CUDA only.
    ``progress(done, total)`` is called after each batch of tiles; when ``cancel()`` returns
    True the call raises :class:`~napari_unet.errors.Cancelled` before the next batch.
    ``keep_enlarged``: when the scale enlarges the image, return the probabilities at that
    enlarged size (for :func:`segment`, which separates small objects there).
    """
    planes = to_planes(image, model.config.in_channels, channel_axis=channel_axis, channel=channel)
    tile = check_limit("tile", tile)
    overlap = check_limit("overlap", overlap)
    batch_size = check_limit("batch size", batch_size)
    if scale == "auto":
        choice = choose_scale(
            model, image, pixel_size_um=pixel_size_um, channel_axis=channel_axis, channel=channel,
            tile=tile, overlap=overlap, batch_size=batch_size, device=device, amp=amp, compile=compile,
        )
    else:
        choice = ScaleChoice(checked_scale(scale), "given")
    scale = checked_scale(choice.scale)
    dev = resolve_device(device)
    amp = (dev.type == "cuda") if amp is None else (amp and dev.type == "cuda")
    net = model.prepared(dev, compile=compile)
    in_tile, out_tile, overlap, multiple = tile_geometry(model.net, tile, overlap)
    h, w = planes.spatial_shape
    work = (max(8, round(h * scale)), max(8, round(w * scale)))
    size = work if keep_enlarged and scale > 1 else (h, w)
    check_fits(
        predict_bytes(planes.data.shape[0], planes.data.shape[1], model.config.out_classes, size, work),
        f"Segmenting this {h}×{w} image ({planes.data.shape[0]} plane(s))",
        "segment it blockwise (napari-unet segment --block 2048, or napari_unet.blockwise)",
    )
    if on_scale is not None:
        on_scale(float(scale))
    if on_choice is not None:
        on_choice(choice)
    views = dihedral(8 if tta else 1)
    per_plane = count_tiles(work, in_tile, out_tile, overlap, multiple) * len(views)
    total = per_plane * planes.data.shape[0]
    norm = model.normalization
    # percentile normalisation uses the whole stack's bounds (empty planes stay dark); a package's own
    # preprocessing (bioimage.io) is applied as its specification says, plane by plane
    bounds = norm.stack_bounds(planes.data) if hasattr(norm, "stack_bounds") else None
    out = np.empty((planes.data.shape[0], model.config.out_classes, *size), dtype=np.float32)
    for i, plane in enumerate(planes.data):
        x = norm.apply(plane) if bounds is None else norm.apply_bounds(plane, bounds)
        if work != (h, w):
            x = resize_planes(x, work)
        p = np.zeros((model.config.out_classes, *x.shape[-2:]), dtype=np.float32)
        for v, (forward, inverse) in enumerate(views):
            p += inverse(predict_plane(
                net, forward(x), in_tile=in_tile, out_tile=out_tile, overlap=overlap,
                batch_size=max(1, batch_size), device=dev, multiple=multiple, amp=amp, progress=progress,
                cancel=cancel, done_before=i * per_plane + v * per_plane // len(views), total=total,
            ))
        if len(views) > 1:
            p /= len(views)
        out[i] = resize_probabilities(p, size)
    return out.reshape((*planes.stack_shape, *out.shape[1:]))


def choose_scale(
    model: Any,
    image: np.ndarray,
    *,
    pixel_size_um: float | None = None,
    channel_axis: int | None = None,
    channel: int | None = None,
    **predict_options: Any,
) -> ScaleChoice:
    """The scale ``"auto"`` means for ``image`` (a stack: a few of its in-focus planes, :func:`focus_planes`)
    with ``model``.

    Pixel sizes win when both are known and plausible; otherwise a first pass at scale 1 over a central crop
    (at most two crops, 512² then 1024²) measures the median area of the clear objects that do not
    touch the crop's edge (``scale.inner_areas``), and the scale brings it to the model's
    ``info.object_area``. A crop that is foreground almost everywhere holds no measurable nuclei:
    scale 1.0, ``how`` :data:`NO_NUCLEI`. ``predict_options`` go to the first pass.
    """
    by_pixels = pixel_size_choice(pixel_size_um, model.info.pixel_size_um)
    if by_pixels is not None:
        return by_pixels
    target = model.info.object_area
    if not target:
        return ScaleChoice(1.0, "unknown")

    planes = to_planes(image, model.config.in_channels, channel_axis=channel_axis, channel=channel)
    probed = planes.data[focus_planes(planes.data)]  # (N, C, H, W)
    predict_options = {k: v for k, v in predict_options.items() if k not in ("progress", "cancel", "tta")}
    post = replace(model.postprocess, min_size=max(4, model.postprocess.min_size // 16))
    for side in (PROBE_SIDE, 2 * PROBE_SIDE):
        crops = [plane[(slice(None), *central_window(*plane.shape[-2:], side))] for plane in probed]
        probs = [predict(model, crop, scale=1.0, channel_axis=0, **predict_options) for crop in crops]
        if float(np.mean([np.mean(foreground_mask(p, post)) for p in probs])) > MAX_FOREGROUND:
            # foreground nearly everywhere (noise, a texture): the "objects" are fragments of it, and
            # their size would send the image to the largest scale for nothing
            return ScaleChoice(1.0, NO_NUCLEI)
        areas = np.concatenate([inner_areas(labels_from_probabilities(p, post), p) for p in probs])
        if len(areas) >= MIN_OBJECTS or crops[0].shape[-2:] == probed.shape[-2:]:
            break
    if len(areas) < MIN_OBJECTS:
        return ScaleChoice(1.0, "unknown", float(np.median(areas)) if len(areas) else None)
    area = float(np.median(areas))
    s = scale_for_area(area, target)
    if abs(s - 1.0) < DEAD_BAND:
        s = 1.0
    return ScaleChoice(s, "object size", area)


def focus_planes(planes: np.ndarray, most: int = FOCUS_PLANES) -> list[int]:
    """Indices of the in-focus planes of ``(N, C, H, W)``: those whose intensity spread (a strided
    sample's standard deviation) is at least :data:`FOCUS_SHARE` of the largest, not planes of blur
    or noise; ``most`` of them evenly spaced (all when fewer), and the plane of largest spread.
    ``[0]`` for one plane. In a stack the nuclei cut near their tips look small on any one plane;
    several planes measure their size better."""
    if planes.shape[0] == 1:
        return [0]
    step = max(1, int(np.sqrt(planes.shape[-2] * planes.shape[-1] / 65536)))
    spread = np.array([float(np.std(np.asarray(p[:, ::step, ::step], dtype=np.float64))) for p in planes])
    best = int(np.argmax(spread))
    sharp = np.flatnonzero(spread >= FOCUS_SHARE * spread[best])
    picked = {int(sharp[round(i)]) for i in np.linspace(0, len(sharp) - 1, min(most, len(sharp)))}
    return sorted(picked | {best})


def central_window(h: int, w: int, side: int) -> tuple[slice, slice]:
    """Rows and columns of the central ``side`` × ``side`` window of an ``h`` × ``w`` plane (all of it
    along an axis shorter than ``side``)."""
    y0, x0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return slice(y0, y0 + side), slice(x0, x0 + side)
