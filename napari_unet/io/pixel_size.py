"""Physical pixel sizes (µm) from image metadata and napari layers.

Sources: OME-TIFF (``PhysicalSizeX``), ImageJ TIFF (``XResolution`` + ``unit``), OME-Zarr
multiscales (``coordinateTransformations`` of the first dataset), a napari layer's ``scale``.
The scale they imply is :func:`napari_unet.engine.scale.pixel_size_choice`.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

_UM_PER_UNIT = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "\\u00b5m": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3,
    "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6, "å": 1e-4,
    "angstrom": 1e-4, "pm": 1e-6, "picometer": 1e-6,
}


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
    """Pixel size (µm) along x of an OME-Zarr image (NGFF 0.4 ``.zattrs`` or 0.5 ``zarr.json``)."""
    path = Path(path)
    attrs: dict[str, Any] = {}
    for name in ("zarr.json", ".zattrs"):
        if (path / name).is_file():
            try:
                data = json.loads((path / name).read_text())
            except (OSError, ValueError):
                return None
            attrs = data.get("attributes", data) if name == "zarr.json" else data
            attrs = attrs.get("ome", attrs)
            break
    multiscales = attrs.get("multiscales") or []
    if not multiscales:
        return None
    ms = multiscales[0]
    axes = ms.get("axes") or []
    names = [a.get("name") if isinstance(a, dict) else a for a in axes]
    if "x" not in names:
        return None
    i = names.index("x")
    unit = axes[i].get("unit") if isinstance(axes[i], dict) else None
    scale = 1.0
    transforms = (ms.get("datasets") or [{}])[0].get("coordinateTransformations", []) + ms.get(
        "coordinateTransformations", [])
    for t in transforms:
        if t.get("type") == "scale" and len(t.get("scale", [])) == len(names):
            scale *= float(t["scale"][i])
    return to_micrometres(scale, unit)


def layer_pixel_size(layer: Any) -> float | None:
    """Pixel size (µm) of a napari layer from its ``scale`` (and ``units``, napari ≥ 0.6).

    A layer whose units are a length gives its scale in that unit; a scale other than 1 with no
    length unit is read as micrometres (the convention of napari's microscopy readers); a scale
    of 1 in pixels says nothing.
    """
    scale = float(layer.scale[-1])
    units = getattr(layer, "units", None)
    unit = str(units[-1]) if units is not None and len(units) else None
    if unit is not None:
        known = to_micrometres(scale, unit)
        if known is not None:
            return known
    return scale if scale != 1.0 and math.isfinite(scale) and scale > 0 else None
