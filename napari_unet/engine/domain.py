"""Does an image look like what the model was trained on? One sentence when it does not."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet.engine.normalize import Normalization
from napari_unet.engine.planes import find_channel_axis

_SAMPLE = 512  # the statistics are read from a strided view of at most about this many pixels a side


@dataclass(frozen=True)
class DomainStats:
    """What the check looks at: ``colour`` (an RGB image segmented as fluorescence),
    ``background`` (median of the normalised image the network sees: near 0 for fluorescence),
    ``labelled`` (fraction of pixels in objects), ``size_ratio`` (median object area over the
    model's training object area, at the scale used; None when either is unknown), ``stain`` (the
    image kind chosen)."""

    colour: bool
    background: float
    labelled: float
    size_ratio: float | None
    stain: str = "fluorescence"


def domain_stats(
    seen: np.ndarray,
    labels: np.ndarray,
    *,
    normalization: Normalization,
    colour: bool = False,
    object_area: float | None = None,
    scale: float = 1.0,
    stain: str = "fluorescence",
) -> DomainStats:
    """:class:`DomainStats` of ``seen`` (the single-channel image the network was given, 2D or a
    stack) and its instance ``labels`` (same spatial shape)."""
    plane = _first_plane(seen)
    step = max(1, max(plane.shape) // _SAMPLE)
    small = np.asarray(plane[::step, ::step], dtype=np.float32)
    normalised = normalization.apply(small[None])[0]
    lab = _first_plane(labels)
    ratio = None
    if object_area and (lab > 0).any():
        areas = np.bincount(lab.ravel())[1:]
        areas = areas[areas > 0]
        ratio = float(np.median(areas)) * scale * scale / object_area
    return DomainStats(colour, float(np.median(normalised)), float((lab > 0).mean()), ratio, stain)


def domain_warning(stats: DomainStats) -> str | None:
    """One sentence naming what looks unlike the model's training images and what to try, or None."""
    if stats.colour and (stats.background > 0.3 or stats.labelled > 0.5):
        return ("This looks like a colour brightfield or histology image, but the model is for fluorescent "
                "nuclei: choose the stain 'hematoxylin' (H&E, IHC) or 'dark nuclei'.")
    if stats.background > 0.5:
        if stats.stain != "fluorescence":
            return (f"The background is still bright after the '{stats.stain}' conversion: check the stain "
                    "(fluorescence for bright nuclei on dark), or choose a single channel.")
        return ("The background is bright, but the model expects bright nuclei on a dark background: "
                "choose the stain 'dark nuclei' if the nuclei are dark.")
    if stats.labelled > 0.6:
        return (f"{stats.labelled:.0%} of the image was labelled, far more than in the model's training images: "
                "check the stain and the scale, or fine-tune on a few corrected objects.")
    if stats.size_ratio is not None and not 0.1 <= stats.size_ratio <= 10:
        return (f"The objects found are {stats.size_ratio:.2g} times the size of the model's training nuclei: "
                "check the scale, or fine-tune on a few corrected objects.")
    return None


def is_colour(image: np.ndarray, channel_axis: int | None = None) -> bool:
    """Whether ``image`` has 3 colour channels (RGB)."""
    axis = find_channel_axis(image, channel_axis)
    return axis is not None and image.shape[axis] == 3


def _first_plane(array: np.ndarray) -> np.ndarray:
    return array.reshape((-1, *array.shape[-2:]))[0] if array.ndim > 2 else array
