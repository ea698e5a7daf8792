"""Read the nuclei data shipped inside the ``mnfinder`` package (MIT; ``pip install --no-deps mnfinder``).

Only ``training-data`` and ``validation-data`` are read here: ``test-data`` is reserved for the
project's held-out evaluation and must not be used for training or for choosing anything.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage as ndi

ALLOWED = ("training-data", "validation-data")


def mnfinder_root() -> Path:
    spec = importlib.util.find_spec("mnfinder")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("mnfinder is not installed: pip install --no-deps mnfinder==1.2.3")
    return Path(spec.submodule_search_locations[0])


def read_mask(path: Path) -> np.ndarray:
    """RGBA PNG → instance labels: alpha > 0 is nucleus, each RGB colour one nucleus;
    a colour covering separate blobs is split into connected components."""
    a = np.array(Image.open(path)).astype(np.int64)
    fg = a[..., 3] > 0
    col = (a[..., 0] << 16) | (a[..., 1] << 8) | a[..., 2]
    out = np.zeros(fg.shape, dtype=np.int32)
    n = 0
    for c in np.unique(col[fg]):
        comp, k = ndi.label(fg & (col == c))
        out[comp > 0] = comp[comp > 0] + n
        n += k
    return out


def load_split(split: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, image, labels)]`` for ``training-data`` or ``validation-data``."""
    if split not in ALLOWED:
        raise ValueError(f"{split!r} is not allowed here (test-data is reserved)")
    out = []
    for img_path in sorted((mnfinder_root() / split).glob("*/images/*.tif")):
        mask_path = img_path.parent.parent / "nucleus_masks" / (img_path.stem + ".png")
        if not mask_path.exists():
            continue
        name = f"{img_path.parent.parent.name}/{img_path.stem}"
        out.append((name, tifffile.imread(img_path), read_mask(mask_path)))
    return out
