"""napari sample data: real nuclei images shipped with the plugin (mnfinder, MIT licence)."""

from __future__ import annotations

from importlib.resources import files

import tifffile


def _load(stem: str, name: str):
    data = tifffile.imread(str(files("napari_unet.sample_data") / f"{stem}.tif"))
    return [(data, {"name": name}, "image")]


def nuclei_u2os():
    """U2OS nuclei, DAPI, 768×869 uint16."""
    return _load("nuclei_u2os", "nuclei_u2os")


def nuclei_misc():
    """Nuclei, 512×512 uint8."""
    return _load("nuclei_misc", "nuclei_misc")
