"""Turn user images of any supported layout into ``(N, C, H, W)`` planes, with clear errors.

Layouts: ``(H, W)`` grayscale; ``(H, W, C)`` multichannel when ``C`` is 2, 3 or 4 or a
``channel_axis`` is given; anything with more leading axes is a stack (Z, T, …) processed
plane by plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet.errors import InputError

MIN_SIDE = 8


@dataclass(frozen=True)
class Planes:
    """An image viewed as planes: ``data`` is ``(N, C, H, W)``; ``stack_shape`` the leading axes."""

    data: np.ndarray
    stack_shape: tuple[int, ...]

    @property
    def spatial_shape(self) -> tuple[int, int]:
        return self.data.shape[-2], self.data.shape[-1]


def _check_dtype(image: np.ndarray) -> np.ndarray:
    if image.dtype == bool:
        return image.astype(np.uint8)
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InputError(
            f"The image has data type {image.dtype}; only integer or floating-point images "
            "can be segmented."
        )
    return image


def find_channel_axis(image: np.ndarray, channel_axis: int | None = None) -> int | None:
    """The channel axis of ``image`` (non-negative), or None: ``channel_axis`` when given, else a last
    axis of length 2, 3 or 4 on a 3D+ image."""
    if channel_axis is not None:
        if not -image.ndim <= channel_axis < image.ndim:
            raise InputError(f"channel_axis {channel_axis} does not exist in an image of {image.ndim} axes.")
        return channel_axis % image.ndim
    if image.ndim >= 3 and image.shape[-1] in (2, 3, 4) and image.shape[-2] > 4:
        return image.ndim - 1
    return None


def to_planes(
    image: np.ndarray,
    in_channels: int,
    *,
    channel_axis: int | None = None,
    channel: int | None = None,
) -> Planes:
    """View ``image`` as ``(N, C, H, W)`` planes matching a model with ``in_channels`` inputs.

    ``channel_axis`` marks the channel axis explicitly; otherwise a last axis of length 3 or 4
    on a 3D+ image is read as channels. ``channel`` picks one channel for a single-channel model.
    """
    try:
        image = np.asarray(image)
    except Exception as exc:  # noqa: BLE001 - e.g. ragged lists
        raise InputError(f"The image could not be read as an array ({exc}).") from exc
    image = _check_dtype(image)
    if image.size == 0:
        raise InputError(f"The image is empty (shape {image.shape}).")
    if image.ndim < 2:
        raise InputError(f"The image has {image.ndim} dimension(s); at least 2 (Y, X) are needed.")
    channel_axis = find_channel_axis(image, channel_axis)
    if channel_axis is not None:
        image = np.moveaxis(image, channel_axis, -3)
        if image.ndim < 3:
            raise InputError("An image with a channel axis needs two more axes (Y, X).")
    else:
        image = image[..., None, :, :]
    n_channels = image.shape[-3]
    if channel is not None:
        if not 0 <= channel < n_channels:
            raise InputError(f"Channel {channel} was chosen but the image has {n_channels} channel(s).")
        image = image[..., channel : channel + 1, :, :]
        n_channels = 1
    if n_channels != in_channels:
        raise InputError(
            f"The image has {n_channels} channel(s) but the model expects {in_channels}; "
            "choose a channel or use a model trained for this many channels."
        )
    h, w = image.shape[-2:]
    if h < MIN_SIDE or w < MIN_SIDE:
        raise InputError(f"The image is {h}×{w} pixels; at least {MIN_SIDE}×{MIN_SIDE} is needed.")
    stack_shape = tuple(image.shape[:-3])
    return Planes(image.reshape((-1, *image.shape[-3:])), stack_shape)
