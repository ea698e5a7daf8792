"""The measurement table of a labels image: one row per object."""

from __future__ import annotations

import numpy as np
from skimage.measure import regionprops_table

PROPERTIES = ("label", "area", "centroid", "intensity_mean", "intensity_max", "eccentricity")


def measure_objects(labels: np.ndarray, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Label, area (px), centroid (row, column), mean/max intensity of ``image`` (per channel for a
    colour image, channels last) and eccentricity of every object of a 2D ``labels`` image."""
    if labels.ndim != 2:
        raise ValueError(f"measure_objects needs a 2D labels image, not {labels.ndim}D")
    props = PROPERTIES if image is not None else tuple(p for p in PROPERTIES if not p.startswith("intensity"))
    table = regionprops_table(np.asarray(labels), intensity_image=None if image is None else np.asarray(image),
                              properties=props)
    names = {"centroid-0": "centroid_row", "centroid-1": "centroid_col"}
    return {names.get(k, k): v for k, v in table.items()}
