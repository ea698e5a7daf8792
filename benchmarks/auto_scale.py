"""How close does scale="auto" get? The sample images resized by known factors, the scale "auto"
chooses against the one the ground-truth areas call for, and the F1 at that scale.

    .venv/bin/python benchmarks/auto_scale.py [--model CKPT]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile

from napari_unet import load_model, segment
from napari_unet.engine.metrics import pooled_f1
from napari_unet.engine.postprocess import median_object_area
from napari_unet.engine.predict import choose_scale
from napari_unet.engine.tiling import resize_planes

SAMPLES = Path(__file__).resolve().parent.parent / "sample_data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model")
    args = ap.parse_args()
    model = load_model(args.model)
    print(f"model object_area {model.info.object_area}")
    for name in ("u2os", "misc"):
        img = tifffile.imread(SAMPLES / f"nuclei_{name}.tif").astype(np.float32)
        gt = tifffile.imread(SAMPLES / f"nuclei_{name}_labels.tif")
        for f in (0.4, 0.7, 1.0, 2.0):
            size = (round(img.shape[0] * f), round(img.shape[1] * f))
            x = resize_planes(img[None], size)[0]
            g = resize_planes(gt[None].astype(np.float32), size, nearest=True)[0].astype(np.int32)
            right = np.sqrt(model.info.object_area / median_object_area([g]))
            t = time.perf_counter()
            choice = choose_scale(model, x, device="cpu")
            seconds = time.perf_counter() - t
            f1 = pooled_f1([(g, segment(x, model, device="cpu", scale=choice.scale))])
            f1_one = pooled_f1([(g, segment(x, model, device="cpu", scale=1.0))])
            print(f"{name} ×{f}: auto {choice.scale:.2f} vs right {right:.2f} ({choice.scale / right:.3f}); "
                  f"F1@0.5 {f1:.3f} (scale 1: {f1_one:.3f}); choosing took {seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
