"""Build ``sample_data/replay.npz``: crops of the shipped model's own training images, replayed
during fine-tuning so the model does not forget them (and used to check that it did not).

Every third mnfinder ``training-data`` image (MIT; see sample_data/README.md) is kept for
validation, the others for training. Training (``train_*``): one 192×192 crop per image, centred on
the nucleus (of 16 drawn at random) that puts the most nuclei in it, normalised as the shipped
model normalises the whole image, stored as float16 with uint16 instance labels. Validation
(``val_*``): the 512×512 window (on a 32-pixel grid) holding the most nuclei of each validation
image, about 400 nuclei in all, so that the forgetting check can resolve a 0.02 change in F1;
normalised likewise, then stored as uint8 steps between the crop's lowest and highest value
(``val_range``) to stay small. mnfinder's ``test-data`` is not read.

    .venv/bin/python scripts/make_replay_set.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from skimage.segmentation import relabel_sequential

sys.path.insert(0, str(Path(__file__).parent))
from mnfinder_data import load_split  # noqa: E402

from napari_unet.engine.planes import to_planes  # noqa: E402
from napari_unet.io.atomic import atomic_path  # noqa: E402
from napari_unet.models import load_model  # noqa: E402

SIDE = 192
CANDIDATES = 16
VAL_SIDE = 512
GRID = 32


def densest_window(labels: np.ndarray, side: int) -> tuple[int, int]:
    """Top-left corner of the ``side``² window (on a :data:`GRID` grid) holding the most nuclei."""
    h, w = labels.shape
    corners = [(y, x) for y in range(0, max(1, h - side + 1), GRID) for x in range(0, max(1, w - side + 1), GRID)]
    return max(corners, key=lambda c: len(np.unique(labels[c[0] : c[0] + side, c[1] : c[1] + side])))


def main() -> None:
    model = load_model()
    rng = np.random.default_rng(0)
    crops: dict[str, list[np.ndarray]] = {"train_images": [], "train_labels": [], "val_images": [], "val_labels": [],
                                          "val_range": []}
    names = []
    for i, (name, image, labels) in enumerate(load_split("training-data")):
        planes = to_planes(image, 1, channel_axis=None)
        x = model.normalization.apply(planes.data[0])  # (1, H, W), as predict() normalises the whole plane
        h, w = labels.shape
        ys, xs = np.nonzero(labels)
        best = (-1, 0, 0)
        for k in rng.integers(len(ys), size=CANDIDATES):  # the candidate crop with the most nuclei
            y0 = int(np.clip(ys[k] - SIDE // 2, 0, h - SIDE))
            x0 = int(np.clip(xs[k] - SIDE // 2, 0, w - SIDE))
            best = max(best, (len(np.unique(labels[y0 : y0 + SIDE, x0 : x0 + SIDE])) - 1, y0, x0))
        _, y0, x0 = best  # drawn for every image, so the training crops do not depend on the validation ones
        if i % 3 == 2:
            y0, x0 = densest_window(labels, VAL_SIDE)
            crop = x[:, y0 : y0 + VAL_SIDE, x0 : x0 + VAL_SIDE]
            lo, hi = float(crop.min()), float(crop.max())
            crops["val_images"].append(np.round((crop - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8))
            crops["val_range"].append(np.array([lo, hi], np.float32))
            lab = relabel_sequential(labels[y0 : y0 + VAL_SIDE, x0 : x0 + VAL_SIDE])[0].astype(np.uint16)
            crops["val_labels"].append(lab)
            names.append(f"val {name} y={y0} x={x0} nuclei={int(lab.max())}")
            continue
        lab = relabel_sequential(labels[y0 : y0 + SIDE, x0 : x0 + SIDE])[0].astype(np.uint16)
        crops["train_images"].append(x[:, y0 : y0 + SIDE, x0 : x0 + SIDE].astype(np.float16))
        crops["train_labels"].append(lab)
        names.append(f"train {name} y={y0} x={x0} nuclei={int(lab.max())}")
    out = Path(__file__).resolve().parent.parent / "sample_data" / "replay.npz"
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.stack(v) for k, v in crops.items()}, names=np.array(names))
    print("\n".join(names))
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
