"""The public Python API: ``load_model`` and ``segment`` (``predict`` lives in the engine)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.segmentation import Segmentation, segment_image
from napari_unet.errors import NapariUnetWarning
from napari_unet.io.image_files import read_image_file, write_labels_file
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
        options: ``stain`` (``"fluorescence"``, ``"dark nuclei"``, ``"hematoxylin"``),
            ``stack="planes"|"3d"|"time"`` and ``voxel_size=(z, y, x)`` µm (see
            :func:`~napari_unet.engine.segmentation.segment_image`: 3D objects through Z, or ids kept
            through T), and the options of :func:`~napari_unet.engine.predict.predict`
            (``scale="auto"`` by default, ``tile``, ``device``, ``tta``, ``on_scale``, …).

    Warns with :class:`~napari_unet.errors.NapariUnetWarning` (one sentence) when the image does not
    look like the model's training images (a bright background, a colour image, most of it labelled).
    """
    model = model or load_model()
    result = segment_image(model, image, postprocess=postprocess, sizes="model" if postprocess is None else "image",
                           **options)
    if result.warning is not None:
        warnings.warn(result.warning, NapariUnetWarning, stacklevel=2)
    return result.labels


def segment_file(
    model: SegmentationModel,
    path: Path | str,
    out: Path | str,
    *,
    overwrite: bool = False,
    series: int | None = None,
    channel_axis: int | None = None,
    stack: str | None = None,
    voxel_size: tuple[float, float, float] | None = None,
    **options: Any,
) -> Segmentation:
    """Read the image file ``path``, segment it and write its labels to ``out`` (a TIFF, atomically;
    an existing file is a FileExistsError unless ``overwrite``): the step of ``napari-unet segment``
    and of the dock's Batch. The file's pixel size goes to the scale choice and into the labels.

    ``channel_axis``, ``stack`` (``"planes"``, ``"3d"``, ``"time"``) and ``voxel_size`` default to
    what the file's metadata says; ``options`` go to
    :func:`~napari_unet.engine.segmentation.segment_image` (``postprocess``, ``stain``, ``scale``, …).
    """
    file = read_image_file(path, series=series)
    voxel_size = voxel_size or file.voxel_size
    result = segment_image(model, file.data, pixel_size_um=file.pixel_size_um,
                           channel_axis=channel_axis if channel_axis is not None else file.channel_axis,
                           stack=stack or file.stack_mode, voxel_size=voxel_size, **options)
    write_labels_file(out, result.labels, axes=file.labels_axes, pixel_size_um=file.pixel_size_um,
                      z_spacing_um=voxel_size[0] if voxel_size else None, overwrite=overwrite)
    return result
