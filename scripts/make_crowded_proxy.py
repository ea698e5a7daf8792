"""A crowded validation proxy built ONLY from mnfinder ``validation-data`` (never test-data).

Per validation image: a *composite* (its own nuclei cut out with their masks and pasted so that
each touches another nucleus, doubling the density), the image shrunk 0.5× (small nuclei), and
the composite shrunk 0.5× (small and crowded). Deterministic: the same files every run.

    .venv/bin/python scripts/make_crowded_proxy.py --out crowded_proxy/
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
from mnfinder_data import load_split  # noqa: E402

from napari_unet.engine.normalize import Normalization  # noqa: E402
from napari_unet.engine.postprocess import median_object_area  # noqa: E402
from napari_unet.engine.tiling import resize_planes  # noqa: E402
from napari_unet.training.crowding import nucleus_bank, paste_touching  # noqa: E402


def shrink(image: np.ndarray, labels: np.ndarray, factor: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    size = (round(image.shape[0] * factor), round(image.shape[1] * factor))
    small = resize_planes(image[None].astype(np.float32), size)[0]
    lab = resize_planes(labels[None].astype(np.float32), size, nearest=True)[0].astype(np.int32)
    return small, lab


def composite(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The image normalised, with its own nuclei cut out and pasted so that each touches another
    (twice the density): ``(float32 image, int32 labels)``."""
    img = Normalization().apply(image[None])
    labels = labels.astype(np.int32)
    bank = nucleus_bank([(img, labels, None)])
    comp, comp_lab, _ = paste_touching(rng, img, labels, bank, 1.0, int(labels.max()))
    return comp[0], comp_lab


def build_proxy(seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, float32 image, int32 labels)]``: composites, shrunk images, shrunk composites."""
    out = []
    for i, (name, image, labels) in enumerate(load_split("validation-data")):
        comp, comp_lab = composite(image, labels, np.random.default_rng(seed + i))
        tag = name.replace("/", "_")
        out.append((f"{tag}_composite", comp, comp_lab))
        out.append((f"{tag}_half", *shrink(Normalization().apply(image[None])[0], labels.astype(np.int32))))
        out.append((f"{tag}_composite_half", *shrink(comp, comp_lab)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="crowded_proxy")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    for name, image, labels in build_proxy():
        tifffile.imwrite(out / "images" / f"{name}.tif", image.astype(np.float32))
        tifffile.imwrite(out / "labels" / f"{name}.tif", labels.astype(np.uint32))
        print(f"{name}: {image.shape}, {len(np.unique(labels)) - 1} nuclei, "
              f"median area {median_object_area([labels]):.0f} px")


if __name__ == "__main__":
    main()
