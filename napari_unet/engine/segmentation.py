"""Probabilities → instance labels at the image's size, whatever scale the network ran at."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import relabel_sequential

from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.planes import to_planes
from napari_unet.engine.postprocess import PostprocessConfig, labels_from_probabilities
from napari_unet.engine.scale import postprocess_at_scale
from napari_unet.engine.tiling import resize_probabilities


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


def labels_for_image(
    probs: np.ndarray,
    image: np.ndarray,
    model: SegmentationModel,
    scale: float,
    config: PostprocessConfig,
    *,
    sizes: str = "model",
    channel_axis: int | None = None,
    channel: int | None = None,
) -> np.ndarray:
    """Instance labels of ``image`` from ``predict(..., keep_enlarged=True)``'s probabilities at
    ``scale`` (:func:`napari_unet.engine.segmentation.instance_labels`; ``sizes`` as there)."""
    shape = probs.shape[-2:]
    if scale > 1:  # only an enlarging scale can have kept the probabilities at another size
        shape = to_planes(image, model.config.in_channels, channel_axis=channel_axis, channel=channel).spatial_shape
    return instance_labels(probs, shape, scale, config, sizes=sizes)
