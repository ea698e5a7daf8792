"""One segmentation: image → probabilities → labels at the image's size, whatever scale the network
ran at. :func:`segment_image` is the step the Python API, the command line and the dock all call;
:func:`instance_labels` the post-processing step the blockwise engine and re-labelling share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.segmentation import relabel_sequential

from napari_unet.engine.domain import domain_stats, domain_warning, is_colour
from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.planes import to_planes
from napari_unet.engine.postprocess import PostprocessConfig, labels_from_probabilities
from napari_unet.engine.predict import predict
from napari_unet.engine.scale import ScaleChoice, ScaleFn, postprocess_at_scale
from napari_unet.engine.stack import check_stack_mode, check_voxel_size, labels_3d, link_frames
from napari_unet.engine.stain import apply_stain
from napari_unet.engine.tiling import resize_probabilities
from napari_unet.errors import InputError


@dataclass(frozen=True)
class Segmentation:
    """What one segmentation produced, and the numbers it actually used.

    ``labels``: uint32 with the image's stack and spatial shape: objects numbered 1..N per plane
    (``stack="planes"``), through the whole z-stack (``"3d"``) or through time with one id per
    track (``"time"``), or class indices for a ``semantic`` model. ``probabilities``: ``(*stack, K, h, w)`` at the
    working size (enlarged when ``scale.scale > 1``). ``min_size_used``: the smallest object kept,
    in image pixels (None for a semantic model)."""

    labels: np.ndarray
    probabilities: np.ndarray
    scale: ScaleChoice
    postprocess: PostprocessConfig | None
    semantic: bool = False
    warning: str | None = None  # the image does not look like the model's training images (one sentence)
    stack: str = "planes"  # "planes", "3d" (ids through Z) or "time" (ids kept through T)

    @property
    def min_size_used(self) -> int | None:
        return None if self.postprocess is None else self.postprocess.min_size

    @property
    def counts(self) -> list[int]:
        """Objects (or classes present, for a semantic model) per 2D plane; for 3D objects and tracks,
        one number: the objects (or tracks) of the whole stack."""
        if self.stack != "planes" and not self.semantic:
            return [int(len(np.unique(self.labels)) - (1 if (self.labels == 0).any() else 0))]
        return object_counts(self.labels)

    def summary(self) -> str:
        """``"114 objects"``, ``"~12 objects per plane, 5 planes"``, ``"52 3D objects"``, ``"9 tracks"``."""
        what = {"3d": "3D objects", "time": "tracks"}.get(self.stack, "objects")
        return count_sentence(self.counts, "classes" if self.semantic else what)


def object_counts(labels: np.ndarray) -> list[int]:
    """Distinct non-zero labels per 2D plane (labels are numbered per plane, so a stack's maximum is no count)."""
    planes = labels.reshape(-1, *labels.shape[-2:])
    return [int(len(np.unique(p)) - (1 if (p == 0).any() else 0)) for p in planes]


def count_sentence(counts: list[int], what: str = "objects") -> str:
    """The one way results are counted for the user: ``"114 objects"`` or ``"~12 objects per plane, 5 planes"``."""
    if len(counts) == 1:
        return f"{counts[0]} {what}"
    return f"~{round(float(np.mean(counts))) if counts else 0} {what} per plane, {len(counts)} planes"


def segment_image(
    model: SegmentationModel,
    image: np.ndarray,
    *,
    postprocess: PostprocessConfig | None = None,
    sizes: str = "model",
    min_size: int | None = None,
    stain: str = "fluorescence",
    on_scale: ScaleFn | None = None,
    on_choice: Callable[[ScaleChoice], None] | None = None,
    stack: str = "planes",
    voxel_size: tuple[float, float, float] | None = None,
    **predict_options: Any,
) -> Segmentation:
    """Segment ``image``: :func:`~napari_unet.engine.predict.predict` then labels at the image's size.

    Args:
        model: the model; a ``semantic`` one gives class indices (argmax), others instance labels.
        image: a plane or stack (see :func:`~napari_unet.engine.predict.predict` for channels).
        postprocess: defaults to the model's own; its sizes are in the model's training-scale pixels
            (``sizes="model"``: they follow the scale) or in image pixels (``sizes="image"``).
        min_size: a min size in image pixels that replaces the config's (at the plane's edge too).
        stain: the image kind (:data:`~napari_unet.engine.stain.STAINS`), applied before normalisation.
        on_scale, on_choice: told the scale used (a float, and the ``ScaleChoice``: the scale and how).
        stack: ``"planes"`` (each plane on its own), ``"3d"`` (objects through the leading stack axis,
            Z; ``min_size`` then counts voxels) or ``"time"`` (ids kept through the first stack axis, T;
            a ``(T, Z, H, W)`` stack is linked as 3D objects). See :mod:`napari_unet.engine.stack`.
        voxel_size: ``(z, y, x)`` in µm for ``"3d"``: the anisotropy; its x also gives ``pixel_size_um``
            to the automatic scale when that is not given.
        predict_options: passed to ``predict`` (scale, tile, overlap, device, channel_axis, …).
    """
    choices: list[ScaleChoice] = []

    def chosen(choice: ScaleChoice) -> None:
        choices.append(choice)
        if on_choice is not None:
            on_choice(choice)

    stack = check_stack_mode(stack)
    voxel_size = check_voxel_size(voxel_size)
    if voxel_size is not None and predict_options.get("pixel_size_um") is None:
        predict_options["pixel_size_um"] = voxel_size[2]
    colour = stain == "fluorescence" and is_colour(image, predict_options.get("channel_axis"))
    image, predict_options["channel_axis"], predict_options["channel"] = apply_stain(
        image, stain, channel_axis=predict_options.get("channel_axis"), channel=predict_options.get("channel"))
    semantic = model.semantic
    if stack != "planes" and not semantic:
        _check_stack_shape(model, image, stack, predict_options)
    probs = predict(model, image, on_scale=on_scale, on_choice=chosen, keep_enlarged=not semantic, **predict_options)
    choice = choices[0]
    if semantic:
        return Segmentation(probs.argmax(axis=-3).astype(np.uint32), probs, choice, None, semantic=True)
    config = postprocess or model.postprocess
    if min_size is not None:
        if sizes == "model":
            config, sizes = postprocess_at_scale(config, choice.scale), "image"
        config = config.with_min_size(min_size)
    used = config if sizes == "image" else postprocess_at_scale(config, choice.scale)
    planes = to_planes(image, model.config.in_channels, channel_axis=predict_options["channel_axis"],
                       channel=predict_options["channel"])
    shape = planes.spatial_shape
    if stack == "3d" or (stack == "time" and probs.ndim == 5):
        labels = np.stack([labels_3d(np.stack([resize_probabilities(p, shape) for p in volume]), used,
                                     voxel_size=voxel_size)
                           for volume in probs.reshape((-1, *probs.shape[-4:]))]).reshape((*probs.shape[:-3], *shape))
    else:
        labels = instance_labels(probs, shape, choice.scale, config, sizes=sizes)
    if stack == "time":
        labels = link_frames(labels)
    stats = domain_stats(planes.data[:, 0], labels.reshape(-1, *shape), normalization=model.normalization,
                         colour=colour, object_area=model.info.object_area, scale=choice.scale, stain=stain)
    return Segmentation(labels, probs, choice, used, warning=domain_warning(stats), stack=stack)


def _check_stack_shape(model: SegmentationModel, image: np.ndarray, stack: str, options: dict[str, Any]) -> None:
    """One sentence unless ``image`` has the stack axes ``stack`` needs: ``"3d"`` one or two (Z or
    T, Z) with at least 2 planes, ``"time"`` one or two (T or T, Z) with at least 2 frames."""
    lead = to_planes(image, model.config.in_channels, channel_axis=options.get("channel_axis"),
                     channel=options.get("channel")).stack_shape
    what = "z-planes" if stack == "3d" else "time frames"
    if not 1 <= len(lead) <= 2 or lead[0 if stack == "time" else -1] < 2:
        raise InputError(f"Stack mode {stack!r} needs an image with at least 2 {what} before Y and X; "
                         f"this one has stack axes {lead or '()'}.")


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

        probs = resize_probabilities(probs, shape)
    return labels_from_probabilities(probs, config if in_image_px else postprocess_at_scale(config, scale))


def labels_at_scale(probs: np.ndarray, config: PostprocessConfig, shape: tuple[int, int]) -> np.ndarray:
    """Instance labels from probabilities at an enlarged working size, sampled down to ``shape``
    (nearest pixel centre) and renumbered 1..N per plane. Small touching objects are separated
    where they are large; ``config`` sizes are in working-size pixels."""

    labels = labels_from_probabilities(probs, config)
    big = labels.shape[-2:]
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * big[0] / shape[0]).astype(np.intp), big[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * big[1] / shape[1]).astype(np.intp), big[1] - 1)
    small = labels[..., rows[:, None], cols[None, :]]
    flat = small.reshape((-1, *shape))
    for i, plane in enumerate(flat):
        flat[i] = relabel_sequential(plane)[0]
    return flat.reshape(small.shape)

