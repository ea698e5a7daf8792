"""Build ``sample_data/replay.npz``: crops of the shipped model's own training images, replayed
during fine-tuning so the model does not forget them (and used to check that it did not).

One 192×192 crop per mnfinder ``training-data`` image (MIT; see sample_data/README.md), centred on
the nucleus (of 16 drawn at random) that puts the most nuclei in it, normalised as the shipped
model normalises the whole image, stored as float16 with uint16 instance labels. Every third crop
is kept for validation (``val_*``), the others for training (``train_*``). mnfinder's
``test-data`` is not read.

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


def main() -> None:
    model = load_model()
    rng = np.random.default_rng(0)
    crops: dict[str, list[np.ndarray]] = {"train_images": [], "train_labels": [], "val_images": [], "val_labels": []}
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
        _, y0, x0 = best
        lab = relabel_sequential(labels[y0 : y0 + SIDE, x0 : x0 + SIDE])[0].astype(np.uint16)
        which = "val" if i % 3 == 2 else "train"
        crops[f"{which}_images"].append(x[:, y0 : y0 + SIDE, x0 : x0 + SIDE].astype(np.float16))
        crops[f"{which}_labels"].append(lab)
        names.append(f"{which} {name} y={y0} x={x0} nuclei={int(lab.max())}")
    out = Path(__file__).resolve().parent.parent / "sample_data" / "replay.npz"
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{k: np.stack(v) for k, v in crops.items()}, names=np.array(names))
    print("\n".join(names))
    print(f"{out}: {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
