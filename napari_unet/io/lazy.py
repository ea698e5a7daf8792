"""Lazy images: numpy, dask, zarr, OME-Zarr and TIFF (via tifffile ``aszarr``), read region by region.

A :class:`LazyImage` is a small picklable handle: workers of a dask cluster reopen the file
themselves and read only the region they need, so no process ever holds the whole image.
Also writes the labels output: an OME-Zarr (NGFF 0.4, zarr format 2) labels image.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.engine.planes import to_planes
from napari_unet.errors import InputError
from napari_unet.io.ome_zarr import Level, Multiscales, read_multiscales
from napari_unet.io.pixel_size import plausible_pixel_size
from napari_unet.io.tiff import open_tiff, plain_flags

NGFF_VERSION = "0.4"
LABELS_FORMAT = "napari-unet-labels"
LABELS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LazyImage:
    """Where the pixels are and how they map to ``(N, C, H, W)`` planes.

    ``kind`` is ``"zarr"`` or ``"tiff"`` (reopened by path wherever it is read) or ``"memory"``
    (``array`` is a numpy or dask array, read where the handle is).
    """

    kind: str
    shape: tuple[int, ...]
    dtype: str
    path: str | None = None
    component: str | None = None  # zarr array path inside the group, or TIFF series/level "s/l"
    array: Any = field(default=None, repr=False, compare=False)
    channel_axis: int | None = None
    channel: int | None = None
    pixel_size: tuple[float, float] | None = None  # (y, x) of the chosen level, where known

    def open(self) -> Any:
        """An array-like with numpy slicing (a zarr array, or the in-memory array)."""
        if self.kind == "memory":
            return self.array
        import zarr

        if self.kind == "zarr":
            return zarr.open_array(self.path, mode="r", path=self.component or "")
        import tifffile

        series, level = (int(v) for v in (self.component or "0/0").split("/"))
        store = tifffile.imread(self.path, aszarr=True, series=series, level=level, **plain_flags(self.path))
        return zarr.open_array(store, mode="r")

    # ----------------------------------------------------------------- the planes view
    def _axes(self) -> tuple[int | None, list[int], list[int]]:
        ndim = len(self.shape)
        ch = self.channel_axis
        if ch is None and ndim >= 3 and self.shape[-1] in (3, 4):
            ch = ndim - 1  # colour, as images.to_planes reads it
        if ch is not None:
            ch %= ndim
        rest = [a for a in range(ndim) if a != ch]
        return ch, rest[:-2], rest[-2:]

    def planes_shape(self, in_channels: int) -> tuple[tuple[int, ...], int, int, int]:
        """``(stack_shape, C, H, W)`` after the same checks as in-memory images (one sentence on error)."""
        dtype = np.dtype(self.dtype)
        dummy = np.broadcast_to(np.zeros((), np.uint8 if dtype.kind == "b" else dtype), self.shape)
        planes = to_planes(dummy, in_channels, channel_axis=self.channel_axis, channel=self.channel)
        _, c, h, w = planes.data.shape
        return planes.stack_shape, c, h, w

    def read(self, array: Any, plane: int, rows: slice, cols: slice) -> np.ndarray:
        """Region ``(C, h, w)`` of flat plane ``plane`` from ``array`` (what :meth:`open` returned)."""
        ch, stack, (ya, xa) = self._axes()
        index: list[Any] = [slice(None)] * len(self.shape)
        for axis, i in zip(stack, np.unravel_index(plane, [self.shape[a] for a in stack]) if stack else []):
            index[axis] = int(i)
        index[ya], index[xa] = rows, cols
        if ch is not None and self.channel is not None:
            index[ch] = slice(self.channel, self.channel + 1)
        data = np.asarray(array[tuple(index)])
        kept = [a for a in range(len(self.shape)) if not isinstance(index[a], int)]
        order = ([kept.index(ch)] if ch is not None else []) + [kept.index(ya), kept.index(xa)]
        data = np.transpose(data, order)
        return data if ch is not None else data[None]

    def channel_view(self, array: Any, plane: int, c: int) -> Any:
        """A lazy 2D view of one channel of one plane (for strided sampling)."""
        return _Channel(self, array, plane, c)


class _Channel:
    """One channel of one plane; slicing ``[::s, ::s]`` reads only that sample."""

    def __init__(self, image: LazyImage, array: Any, plane: int, c: int) -> None:
        self.image, self.array, self.plane, self.c = image, array, plane, c
        _, _, (ya, xa) = image._axes()
        self.shape = (image.shape[ya], image.shape[xa])
        self.size = self.shape[0] * self.shape[1]

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return self.image.read(self.array, self.plane, key[0], key[1])[self.c]


# --------------------------------------------------------------------------- opening inputs


def is_zarr_path(path: Path) -> bool:
    """A folder that is a zarr array or group (``.zarr`` / ``.ome.zarr``, or with zarr metadata)."""
    return path.is_dir() and (
        path.suffix == ".zarr" or any((path / n).exists() for n in (".zarray", ".zgroup", "zarr.json"))
    )


def stem(path: Path) -> str:
    """File name without ``.ome.zarr`` / ``.zarr`` / ``.ome.tif`` / ``.tif`` and the like."""
    name = path.name.rstrip("/")
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def open_lazy(
    source: Any,
    *,
    channel_axis: int | None = None,
    channel: int | None = None,
    pixel_size: float | None = None,
) -> LazyImage:
    """A :class:`LazyImage` for a numpy/dask/zarr array, or a path to a zarr folder or a TIFF.

    OME-Zarr: level 0, or with ``pixel_size`` (µm) the level whose pixel size is closest; the
    ``c`` axis of its metadata is the channel axis unless ``channel_axis`` is given.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if is_zarr_path(path):
            return _open_zarr(path, channel_axis, channel, pixel_size)
        if path.is_file():
            return _open_tiff(path, channel_axis, channel)
        raise InputError(f"{path}: no such file or zarr folder.")
    try:
        import zarr

        if isinstance(source, zarr.Array):
            store_path = _zarr_location(source)
            if store_path is not None:
                return LazyImage("zarr", tuple(source.shape), str(source.dtype), store_path[0], store_path[1],
                                 channel_axis=channel_axis, channel=channel)
    except ImportError:  # pragma: no cover - zarr is a core dependency
        pass
    if not hasattr(source, "shape") or not hasattr(source, "dtype"):
        source = np.asarray(source)
    return LazyImage("memory", tuple(int(n) for n in source.shape), str(np.dtype(source.dtype)), array=source,
                     channel_axis=channel_axis, channel=channel)


def _zarr_location(array: Any) -> tuple[str, str] | None:
    """(folder, array path) of a zarr array stored in a local folder, else None."""
    root = getattr(getattr(array, "store", None), "root", None)
    return (str(root), array.path) if root is not None else None


def _open_zarr(path: Path, channel_axis: int | None, channel: int | None, pixel_size: float | None) -> LazyImage:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds for bad folders
        raise InputError(f"{path}: not a readable zarr folder ({type(exc).__name__}).") from None
    component, size = "", None
    if isinstance(node, zarr.Group):
        ms = read_multiscales(dict(node.attrs), path)
        if ms is not None:
            level = _choose_level(ms, pixel_size)
            component, size = level.path, _yx(ms.level_scale(level))
            if channel_axis is None:
                channel_axis = ms.channel_axis
        else:
            arrays = [name for name, _ in node.arrays()]
            if len(arrays) != 1:
                raise InputError(f"{path}: a zarr group with {len(arrays)} arrays and no OME-Zarr metadata; "
                                 "point to one array folder inside it.")
            component = arrays[0]
        try:
            array = node[component]
        except Exception:  # noqa: BLE001 - zarr raises KeyError, FileNotFoundError, … for a missing array
            raise InputError(f"{path}: the OME-Zarr metadata names the array {component!r}, which is missing.") \
                from None
        if not isinstance(array, zarr.Array):
            raise InputError(f"{path}: {component!r} is a group, not an array.")
    else:
        array = node
    return LazyImage("zarr", tuple(array.shape), str(array.dtype), str(path), component,
                     channel_axis=channel_axis, channel=channel, pixel_size=size)


def _yx(scale: tuple[float, ...] | None) -> tuple[float, float] | None:
    """The y/x pixel size of a level, None when missing or implausible."""
    if scale is None or len(scale) < 2 or None in map(plausible_pixel_size, scale[-2:]):
        return None
    return scale[-2], scale[-1]


def _choose_level(ms: Multiscales, pixel_size: float | None) -> Level:
    """Level 0, or the level whose x scale is closest to ``pixel_size``."""
    scales = [_yx(ms.level_scale(level)) for level in ms.levels]
    if pixel_size is None or not pixel_size > 0 or not all(scales):
        return ms.levels[0]
    return min(zip(ms.levels, scales), key=lambda ls: abs(np.log(ls[1][1] / pixel_size)))[0]


def _open_tiff(path: Path, channel_axis: int | None, channel: int | None) -> LazyImage:

    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with open_tiff(path) as tif:
            series = tif.series[0]
            shape, dtype = tuple(series.shape), str(series.dtype)
            if channel_axis is None and "C" in series.axes and series.axes.index("C") < len(shape) - 2:
                channel_axis = series.axes.index("C")
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for bad files
        raise InputError(f"{path}: not a readable TIFF image ({type(exc).__name__}).") from None
    finally:
        logger.setLevel(level)
    if not shape or 0 in shape:
        raise InputError(f"{path}: not a readable TIFF image (no image data).")
    return LazyImage("tiff", shape, dtype, str(path), "0/0", channel_axis=channel_axis, channel=channel)


# --------------------------------------------------------------------------- labels output


def create_labels_zarr(
    path: Path, shape: tuple[int, ...], chunk: int, *, source: str | None = None, extra: dict | None = None
) -> Any:
    """Create an empty uint32 OME-Zarr labels image at ``path`` (which must not exist); returns
    the level-0 array. Chunks are ``(1, …, 1, chunk, chunk)``, Blosc-zstd compressed."""
    import zarr
    from numcodecs import Blosc

    root = zarr.open_group(str(path), mode="w-", zarr_format=2)
    ndim = len(shape)
    axes = [{"name": n, "type": "time" if n == "t" else "space"} for n in ("t", "z", "y", "x")[-ndim:]] \
        if ndim <= 4 else [{"name": f"dim_{i}"} for i in range(ndim - 2)] + [
            {"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    root.attrs.update({
        "multiscales": [{
            "version": NGFF_VERSION,
            "name": path.name,
            "axes": axes,
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * ndim}]}],
        }],
        "image-label": {"version": NGFF_VERSION, **({"source": {"image": source}} if source else {})},
        LABELS_FORMAT: {"format_version": LABELS_FORMAT_VERSION, **(extra or {})},
    })
    chunks = (1,) * (ndim - 2) + (min(chunk, shape[-2]), min(chunk, shape[-1]))
    return root.create_array(
        "0", shape=shape, chunks=chunks, dtype="uint32", fill_value=0,
        compressors=Blosc(cname="zstd", clevel=3, shuffle=Blosc.BITSHUFFLE),
        chunk_key_encoding={"name": "v2", "separator": "/"},
    )
