"""Layers too large to hold whole (dask, zarr, multiscale): which they are, and reading a region of one."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Image, Labels

from napari_unet.engine.memory import too_large

MAX_REGION = 4096  # largest side of a region exported from a lazy layer


def level0(layer: Image | Labels) -> Any:
    """The full-resolution array of a layer (level 0 of a multiscale one)."""
    return layer.data[0] if layer.multiscale else layer.data


def is_lazy(layer: Image | Labels) -> bool:
    """Multiscale, or data that is not a numpy array (dask, zarr, …): never read whole."""
    return bool(layer.multiscale) or not isinstance(layer.data, np.ndarray)


def wants_blockwise(layer: Image, plane: tuple[int, ...] | None) -> bool:
    """Segment block by block: a lazy layer, or what would be segmented is too large for memory
    (the CLI's rule, :func:`napari_unet.engine.memory.too_large`)."""
    if is_lazy(layer):
        return True
    shape = tuple(layer.data.shape)[: layer.ndim]  # without an RGB axis
    return too_large(shape[len(plane or ()):])


def plane_shape(layer: Image | Labels) -> tuple[int, int]:
    """(H, W) of the layer's full-resolution planes."""
    shape = tuple(level0(layer).shape)[: layer.ndim]
    return int(shape[-2]), int(shape[-1])


def visible_rect(layer: Image | Labels, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) of the layer's part shown on the canvas, in its data pixels; None if nothing."""
    corners = np.asarray(layer.corner_pixels)[:, -2:]
    (y0, x0), (y1, x1) = np.maximum(corners.min(0), 0), np.minimum(corners.max(0) + 1, shape)
    return (int(y0), int(x0), int(y1), int(x1)) if y1 > y0 and x1 > x0 else None


def read_region(layer: Image | Labels, plane: tuple[int, ...], rect: tuple[int, int, int, int]) -> np.ndarray:
    """Pixels ``rect = (y0, x0, y1, x1)`` of one plane (colour kept last), read from level 0 only."""
    y0, x0, y1, x1 = rect
    return np.asarray(level0(layer)[(*plane, slice(y0, y1), slice(x0, x1))])
