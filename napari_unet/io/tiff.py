"""Reading and atomically writing TIFF files."""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from napari_unet.errors import InputError, first_line, os_error_sentence
from napari_unet.io.atomic import atomic_path


class _QuietInThisThread(logging.Filter):
    """Drops tifffile's log records emitted by a thread that is inside :func:`read_image`.

    A filter instead of changing the logger's level: the level is shared by all threads, so
    concurrent reads would leave it stuck at CRITICAL.
    """

    local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "quiet", False)


_FILTER = _QuietInThisThread()
logging.getLogger("tifffile").addFilter(_FILTER)


_PLAIN = {"is_imagej": False, "is_ome": False}  # read the pages as stored, without the description's layout


def open_tiff(path: Path | str, **kwargs: Any) -> tifffile.TiffFile:
    """An open ``TiffFile`` whose series can be listed: when its ImageJ or OME description is
    unreadable, the file is reopened ignoring that metadata (with a warning) so the pixels are read."""
    tif = tifffile.TiffFile(path, **kwargs)
    try:
        tif.series  # noqa: B018 - parses the ImageJ/OME description
        return tif
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for a bad description
        if not (tif.is_imagej or tif.is_ome):
            tif.close()
            raise
        tif.close()
        warnings.warn(f"{path}: its {'ImageJ' if tif.is_imagej else 'OME'} metadata is unreadable "
                      f"({first_line(exc)}) and was ignored; the pixels are read as stored.", stacklevel=2)
    return tifffile.TiffFile(path, **kwargs, **_PLAIN)


def plain_flags(path: Path | str) -> dict[str, bool]:
    """The ``TiffFile`` flags :func:`open_tiff` needed for ``path`` (empty when its metadata is fine)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        open_tiff(path).close()
    return dict(_PLAIN) if caught else {}


def read_image(path: Path | str, *, series: int | None = None) -> np.ndarray:
    """Read a TIFF into an array; a missing or unreadable file is an InputError.

    A file holding several image series needs ``series`` (its index); one series is read as is.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file.")
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    _FILTER.local.quiet = True  # its warnings about broken files become our one sentence
    try:
        with open_tiff(path) as tif:
            n = len(tif.series)
            if n == 0:
                raise InputError(f"{path}: not a readable TIFF image (no image data).")
            if series is None and n > 1:
                shapes = ", ".join(str(tuple(s.shape)) for s in tif.series[:4])
                raise InputError(
                    f"{path}: holds {n} image series ({shapes}{', …' if n > 4 else ''}); "
                    f"choose one with --series 0..{n - 1} (series= in Python)."
                )
            index = series or 0
            if not 0 <= index < n:
                raise InputError(f"{path}: has no series {index}; it holds {n} (0..{n - 1}).")
            data = tif.series[index].asarray()
    except InputError:
        raise
    except OSError as exc:
        raise InputError(os_error_sentence(exc, path)) from None
    except MemoryError:
        raise InputError(f"{path}: too large to read into memory.") from None
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for bad files
        detail = (str(exc).splitlines() or [""])[0][:160]
        if "imagecodecs" in detail:
            detail = f"its compression needs the 'imagecodecs' package: pip install imagecodecs; {detail}"
        raise InputError(
            f"{path}: not a readable TIFF image ({type(exc).__name__}{': ' + detail if detail else ''})."
        ) from None
    finally:
        _FILTER.local.quiet = False
    if data.size == 0:
        raise InputError(f"{path}: not a readable TIFF image (no image data).")
    return data


def write_tiff_atomic(path: Path | str, data: np.ndarray, *, overwrite: bool = False, **kwargs) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename.

    An existing file is never replaced unless ``overwrite=True`` (FileExistsError otherwise).
    """
    with atomic_path(path, overwrite=overwrite) as tmp:
        tifffile.imwrite(tmp, data, compression="zlib", **kwargs)
    return Path(path)
