"""Reading and atomically writing TIFF files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile

from .atomic import atomic_path
from .errors import InputError


def read_image(path: Path | str) -> np.ndarray:
    """Read a TIFF into an array; a missing or unreadable file is an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # its warnings about broken files become our one sentence
    try:
        data = tifffile.imread(path)
    except Exception as exc:  # noqa: BLE001 - tifffile raises many kinds for bad files
        raise InputError(f"{path}: not a readable TIFF image ({type(exc).__name__}).") from None
    finally:
        logger.setLevel(level)
    if data.size == 0:
        raise InputError(f"{path}: not a readable TIFF image (no image data).")
    return data


def write_tiff_atomic(path: Path | str, data: np.ndarray, **kwargs) -> Path:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, data, compression="zlib", **kwargs)
    return Path(path)
