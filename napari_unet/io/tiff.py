"""Reading and atomically writing TIFF files."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import tifffile

from napari_unet.errors import InputError, os_error_sentence
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
        with tifffile.TiffFile(path) as tif:
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
