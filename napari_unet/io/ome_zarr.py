"""OME-Zarr ``multiscales`` metadata (NGFF 0.4 ``.zattrs``, 0.5 ``zarr.json``), read with checks.

The one reader of this metadata: every malformed field (no ``datasets``, an empty list, a dataset
without ``path``, a scale that is not a list of numbers…) is an :class:`InputError` with one
sentence, never a ``KeyError`` from deep inside.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_unet.errors import InputError


@dataclass(frozen=True)
class Level:
    """One resolution level: its array path and its per-axis scale (None when none is given)."""

    path: str
    scale: tuple[float, ...] | None


@dataclass(frozen=True)
class Multiscales:
    """The first ``multiscales`` entry: axis names, types and units, levels, and the global scale."""

    names: tuple[str | None, ...]
    types: tuple[str | None, ...]
    units: tuple[str | None, ...]
    levels: tuple[Level, ...]
    scale: tuple[float, ...] | None = None  # the entry's own coordinateTransformations, applied to every level

    @property
    def channel_axis(self) -> int | None:
        """The axis of type ``channel`` (or named ``c``)."""
        return next((i for i, (n, t) in enumerate(zip(self.names, self.types)) if t == "channel" or n == "c"), None)

    def level_scale(self, level: Level) -> tuple[float, ...] | None:
        """The level's scale times the global one, per axis."""
        if level.scale is None:
            return None
        if self.scale is None or len(self.scale) != len(level.scale):
            return level.scale
        return tuple(a * b for a, b in zip(level.scale, self.scale))


def group_attributes(path: Path | str) -> dict[str, Any] | None:
    """The attributes of the zarr group at ``path`` (``ome`` unnested), or None when it has none."""
    path = Path(path)
    for name in ("zarr.json", ".zattrs"):
        file = path / name
        if file.is_file():
            try:
                data = json.loads(file.read_text())
            except (OSError, ValueError, RecursionError):
                raise InputError(f"{file}: not readable JSON metadata.") from None
            if not isinstance(data, dict):
                raise InputError(f"{file}: the metadata is not a JSON object.")
            attrs = data.get("attributes", {}) if name == "zarr.json" else data
            return unnest(attrs) if isinstance(attrs, dict) else None
    return None


def unnest(attrs: dict[str, Any]) -> dict[str, Any]:
    """NGFF 0.5 keeps its metadata under ``ome``."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def read_multiscales(attrs: dict[str, Any], where: object) -> Multiscales | None:
    """The first multiscales entry of a group's attributes; None when there is none, one sentence
    (naming ``where``) when it is malformed."""
    multiscales = unnest(attrs).get("multiscales")
    if multiscales is None or multiscales == []:
        return None

    def bad(what: str) -> InputError:
        return InputError(f"{where}: the OME-Zarr multiscales metadata is malformed ({what}).")

    if not isinstance(multiscales, list) or not isinstance(multiscales[0], dict):
        raise bad("'multiscales' is not a list of objects")
    ms = multiscales[0]
    axes = ms.get("axes", [])
    if not isinstance(axes, list):
        raise bad("'axes' is not a list")
    names = tuple(_text(a.get("name")) if isinstance(a, dict) else _text(a) for a in axes)
    types = tuple(_text(a.get("type")) if isinstance(a, dict) else None for a in axes)
    units = tuple(_text(a.get("unit")) if isinstance(a, dict) else None for a in axes)
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise bad("no 'datasets' list" if not isinstance(datasets, list) else "'datasets' is empty")
    levels = []
    for i, d in enumerate(datasets):
        if not isinstance(d, dict) or not isinstance(d.get("path"), str) or not d["path"]:
            raise bad(f"dataset {i} has no 'path'")
        levels.append(Level(d["path"], _scale(d.get("coordinateTransformations"), bad, f"dataset {i}")))
    overall = _scale(ms.get("coordinateTransformations"), bad, "multiscales")
    return Multiscales(names, types, units, tuple(levels), overall)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _scale(transforms: Any, bad: Any, what: str) -> tuple[float, ...] | None:
    if transforms is None:
        return None
    if not isinstance(transforms, list):
        raise bad(f"the coordinateTransformations of {what} are not a list")
    for t in transforms:
        if isinstance(t, dict) and t.get("type") == "scale":
            values = t.get("scale")
            if not isinstance(values, list):
                raise bad(f"the scale of {what} is not a list of numbers")
            try:
                scale = tuple(float(v) for v in values)
            except (TypeError, ValueError):
                raise bad(f"the scale of {what} is not a list of numbers") from None
            if not scale or not all(math.isfinite(v) and v > 0 for v in scale):
                raise bad(f"the scale of {what} is not a list of positive numbers")
            return scale
    return None
