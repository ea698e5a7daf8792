"""Does running the 2D network also on resliced YZ and XZ views pay for near-isotropic z-stacks?

The same stacks as ``benchmarks/stack_3d.py`` at z/xy 1 (one layer and packed; the same random
draws) and StarDist's synthetic 3D sample: 3D object F1 at IoU 0.5 of ``labels_3d`` on the XY
probabilities alone, and on the mean of the XY, YZ and XZ probabilities (cellpose's ``do_3D``
averages its three views the same way), with the time of each.

    .venv/bin/python benchmarks/stack_orthogonal.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from make_stacks import crowded_crop, make_zstack  # noqa: E402
from mnfinder_data import load_split  # noqa: E402
from stack_3d import f1_3d  # noqa: E402

from napari_unet.engine.predict import predict  # noqa: E402
from napari_unet.engine.stack import labels_3d  # noqa: E402
from napari_unet.models import load_model  # noqa: E402


def cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The z/xy 1 stacks of ``stack_3d.py`` (drawn in its order) and StarDist's sample."""
    rng = np.random.default_rng(0)
    out = []
    for name, image, labels in load_split("validation-data")[:2]:
        img, lab = crowded_crop(image, labels, 192)
        for packed in (None, (np.rot90(img).copy(), np.rot90(lab).copy())):
            for ratio in (1.0, 3.0):
                stack, truth = make_zstack(img, lab, ratio, rng, below=packed)
                if ratio == 1.0:
                    out.append((name.split("/")[0] + (" packed" if packed else ""), stack, truth))
    sample = ROOT / "tests" / "data"
    out.append(("StarDist synthetic 3D", tifffile.imread(sample / "img3d.tif"), tifffile.imread(sample / "mask3d.tif")))
    return out


def main() -> None:
    torch.set_num_threads(1)
    model = load_model()
    print("| stack | nuclei | 3d F1, XY | 3d F1, mean of XY, YZ, XZ | s, XY | s, three views |")
    print("|---|---|---|---|---|---|")
    for title, stack, truth in cases():
        start = time.monotonic()
        xy = predict(model, stack, scale=1.0, device="cpu")  # (Z, K, Y, X)
        t_xy = time.monotonic() - start
        yz = predict(model, np.ascontiguousarray(stack.transpose(2, 0, 1)), scale=1.0, device="cpu")
        xz = predict(model, np.ascontiguousarray(stack.transpose(1, 0, 2)), scale=1.0, device="cpu")
        mean = (xy + yz.transpose(2, 1, 3, 0) + xz.transpose(2, 1, 0, 3)) / 3
        t_all = time.monotonic() - start
        print(f"| {title} | {len(np.unique(truth)) - 1} | {f1_3d(truth, labels_3d(xy, model.postprocess)):.3f} | "
              f"{f1_3d(truth, labels_3d(mean, model.postprocess)):.3f} | {t_xy:.0f} | {t_all:.0f} |", flush=True)


if __name__ == "__main__":
    main()
