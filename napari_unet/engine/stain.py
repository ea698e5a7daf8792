"""Image kinds: turn a brightfield or colour-stained image into what a fluorescence nuclei model
expects (bright nuclei on a dark background), before normalisation."""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2hed

from napari_unet.engine.planes import find_channel_axis
from napari_unet.errors import InputError

STAINS = ("fluorescence", "dark nuclei", "hematoxylin")
"""``fluorescence``: the image as is (bright nuclei on dark). ``dark nuclei``: dark nuclei on a
bright background (brightfield), inverted. ``hematoxylin``: the hematoxylin of an H&E/IHC colour
image, by colour deconvolution (:func:`skimage.color.rgb2hed`)."""


def apply_stain(
    image: np.ndarray, stain: str, *, channel_axis: int | None = None, channel: int | None = None
) -> tuple[np.ndarray, int | None, int | None]:
    """``image`` as bright nuclei on dark for ``stain``, with the ``channel_axis`` and ``channel`` to
    use on the result (both None once a single-channel image was made; unchanged for fluorescence).

    ``dark nuclei``: the chosen channel, or the mean of the channels, negated (float32: the
    percentile normalisation that follows maps it to 0..1). ``hematoxylin``: needs 3 colour channels.
    """
    if stain not in STAINS:
        raise InputError(f"Unknown stain {stain!r}; choose one of: {', '.join(STAINS)}.")
    if stain == "fluorescence":
        return image, channel_axis, channel
    image = np.asarray(image)
    axis = find_channel_axis(image, channel_axis)
    if stain == "hematoxylin":
        if axis is None or image.shape[axis] != 3:
            raise InputError("The hematoxylin stain needs a colour (RGB) image with 3 channels.")
        rgb = np.moveaxis(image, axis, -1)
        return rgb2hed(rgb)[..., 0].astype(np.float32), None, None
    if axis is None:
        grey = image.astype(np.float32)
    else:
        planes = np.moveaxis(image, axis, -1).astype(np.float32)
        if channel is not None:
            if not 0 <= channel < planes.shape[-1]:
                raise InputError(f"Channel {channel} was chosen but the image has {planes.shape[-1]} channel(s).")
            grey = planes[..., channel]
        else:
            grey = planes.mean(axis=-1)
    return np.negative(grey), None, None

