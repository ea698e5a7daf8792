"""The public Python API: ``load_model`` and ``segment`` (``predict`` lives in the engine)."""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.segmentation import segment_image
from napari_unet.models import load_model


def segment(
    image: np.ndarray,
    model: SegmentationModel | None = None,
    *,
    postprocess: PostprocessConfig | None = None,
    **options: Any,
) -> np.ndarray:
    """Instance labels (uint32, the image's stack and spatial shape) for ``image``: per plane, as 3D
    objects, or kept through time.

    Args:
        image: a 2D plane, a stack of planes, or channels (see ``channel_axis``/``channel``).
        model: defaults to the shipped nuclei model.
        postprocess: defaults to the model's own parameters, whose sizes (in training-scale
            pixels) follow the scale used; a given ``postprocess`` is in image pixels.
        options: ``stack="planes"|"3d"|"time"`` and ``voxel_size=(z, y, x)`` µm (see
            :func:`~napari_unet.engine.segmentation.segment_image`: 3D objects through Z, or ids kept
            through T), and options of :func:`~napari_unet.engine.predict.predict` (``scale="auto"``
            by default, ``tile``, ``device``, ``tta``, ``on_scale``, …).
    """
    model = model or load_model()
    return segment_image(model, image, postprocess=postprocess, sizes="model" if postprocess is None else "image",
                         **options).labels
