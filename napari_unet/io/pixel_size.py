"""Physical pixel sizes (µm) from image metadata and napari layers.

Sources: OME-TIFF (``PhysicalSizeX``), ImageJ TIFF (``XResolution`` + ``unit``), OME-Zarr
multiscales (``coordinateTransformations`` of the first dataset), a napari layer's ``scale``.
The scale they imply is :func:`napari_unet.engine.scale.pixel_size_choice`.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from napari_unet.errors import InputError
from napari_unet.io.ome_zarr import group_attributes, read_multiscales

_UM_PER_UNIT = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3,
    "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6, "å": 1e-4,
    "angstrom": 1e-4, "pm": 1e-6, "picometer": 1e-6,
}
PLAUSIBLE_PIXEL_UM = (1e-5, 1e5)  # 10 pm to 10 cm per pixel: outside, the metadata is wrong


def to_micrometres(value: Any, unit: str | None) -> float | None:
    """``value`` in ``unit`` as micrometres; None when the unit is not a length or the value is unusable."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    factor = _UM_PER_UNIT.get(str(unit).strip().lower()) if unit is not None else None
    if factor is None or not math.isfinite(value) or value <= 0:
        return None
    return value * factor


def ome_xml_pixel_size(xml: str, image: int = 0, axis: str = "X") -> float | None:
    """``PhysicalSizeX`` (``axis="Z"``: ``PhysicalSizeZ``, the plane spacing), with its unit (µm by
    default), of image ``image`` in an OME-XML document."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"]
    if not pixels:
        return None
    p = pixels[min(image, len(pixels) - 1)].attrib
    return to_micrometres(p.get(f"PhysicalSize{axis}"), p.get(f"PhysicalSize{axis}Unit", "µm"))


def tiff_pixel_size(tif: Any, series: int = 0) -> float | None:
    """Pixel size (µm) of an open ``tifffile.TiffFile``: OME metadata, else ImageJ's unit + resolution."""
    if tif.is_ome and tif.ome_metadata:
        return ome_xml_pixel_size(tif.ome_metadata, series)
    if tif.is_imagej:
        unit = (tif.imagej_metadata or {}).get("unit")
        tag = tif.pages[0].tags.get("XResolution")
        if unit is None or tag is None:
            return None
        num, den = tag.value
        return to_micrometres(den / num if num else None, unit)
    return None


def tiff_z_spacing(tif: Any, series: int = 0) -> float | None:
    """Spacing of z-planes (µm) of an open ``tifffile.TiffFile``: OME ``PhysicalSizeZ``, else ImageJ's
    ``spacing`` with its unit; None when the file does not say."""
    if tif.is_ome and tif.ome_metadata:
        return ome_xml_pixel_size(tif.ome_metadata, series, axis="Z")
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        return to_micrometres(meta.get("spacing"), meta.get("unit"))
    return None


def ome_zarr_pixel_size(path: Path | str) -> float | None:
    """Pixel size (µm) along x of an OME-Zarr image (level 0); None when unknown, one sentence
    (:class:`InputError`) when its multiscales metadata is malformed."""
    attrs = group_attributes(path)
    ms = read_multiscales(attrs, path) if attrs else None
    if ms is None or "x" not in ms.names:
        return None
    i = ms.names.index("x")
    scale = ms.level_scale(ms.levels[0])
    value = scale[i] if scale is not None and len(scale) == len(ms.names) else 1.0
    return plausible_pixel_size(to_micrometres(value, ms.units[i]))


def plausible_pixel_size(value: float | None) -> float | None:
    """``value`` (µm) when it is a pixel size an image can have (:data:`PLAUSIBLE_PIXEL_UM`), else None
    (``PhysicalSizeX = 1e-300`` is unknown, not a scale of 10^300)."""
    if value is None or not math.isfinite(value) or not PLAUSIBLE_PIXEL_UM[0] <= value <= PLAUSIBLE_PIXEL_UM[1]:
        return None
    return float(value)


def layer_pixel_size(layer: Any) -> float | None:
    """Pixel size (µm) of a napari layer from its ``scale`` (and ``units``, napari ≥ 0.6).

    A layer whose units are a length gives its scale in that unit; a scale other than 1 with no
    length unit is read as micrometres (the convention of napari's microscopy readers); a scale
    of 1 in pixels says nothing, unless the layer came from an OME-Zarr that says
    (:func:`layer_source_pixel_size`).
    """
    scale = float(layer.scale[-1])
    units = getattr(layer, "units", None)
    unit = str(units[-1]) if units is not None and len(units) else None
    if unit is not None:
        known = to_micrometres(scale, unit)
        if known is not None:
            return known
    if scale != 1.0 and math.isfinite(scale) and scale > 0:
        return scale
    return layer_source_pixel_size(layer)


def layer_source_pixel_size(layer: Any) -> float | None:
    """Pixel size (µm) of an OME-Zarr a layer was opened from when the layer's own scale is all 1
    (napari's built-in reader leaves the multiscales scale out); None otherwise or when unknown,
    malformed or unreadable."""
    if any(float(s) != 1.0 for s in layer.scale):
        return None
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path or not Path(path).is_dir():
        return None
    try:
        return ome_zarr_pixel_size(path)
    except (InputError, OSError):
        return None
