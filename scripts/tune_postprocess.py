"""Choose the post-processing parameters of a checkpoint on mnfinder's validation-data and store
them in the checkpoint (its ``info.postprocess``). Never reads test-data.

Each validation image is run at the scale ``scale="auto"`` chooses for it, and the sizes tried
are in training-scale pixels (converted per image, as ``segment`` does).

    .venv/bin/python scripts/tune_postprocess.py sample_data/nuclei_default.safetensors
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from mnfinder_data import load_split  # noqa: E402

from napari_unet import load_model, predict  # noqa: E402
from napari_unet.checkpoint import save_checkpoint  # noqa: E402
from napari_unet.inference import SegmentationModel  # noqa: E402
from napari_unet.metrics import pooled_f1  # noqa: E402
from napari_unet.postprocess import PostprocessConfig, labels_from_probabilities  # noqa: E402
from napari_unet.scale import postprocess_at_scale  # noqa: E402

GRID = {"threshold": (0.4, 0.5, 0.6), "seed_threshold": (0.5, 0.6, 0.7, 0.8), "min_size": (30, 60, 100, 150, 200)}


def tune(
    model: SegmentationModel, data: list[tuple[str, np.ndarray, np.ndarray]], *, scale: float | str = "auto",
    tta: bool = False,
) -> tuple[PostprocessConfig, float, list[np.ndarray], list[float]]:
    """Best post-processing (pooled F1@0.5) on ``[(name, image, labels)]``; also the
    probabilities and the scale used for each image."""
    probs, scales = [], []
    for _, img, _ in data:
        probs.append(predict(model, img, device="cpu", scale=scale, tta=tta, on_scale=scales.append))
    base = model.postprocess
    best, best_f1 = base, -1.0
    for thr, seed in itertools.product(GRID["threshold"], GRID["seed_threshold"]):
        # min_size only filters the final objects: label once, filter per size
        unfiltered = [labels_from_probabilities(p, postprocess_at_scale(
            replace(base, threshold=thr, seed_threshold=seed, min_size=1), s)) for p, s in zip(probs, scales)]
        for size in GRID["min_size"]:
            config = replace(base, threshold=thr, seed_threshold=seed, min_size=size)
            pairs = [(gt, _drop_small(lab, postprocess_at_scale(config, s).min_size))
                     for (_, _, gt), lab, s in zip(data, unfiltered, scales)]
            f1 = pooled_f1(pairs)
            if f1 > best_f1:
                best, best_f1 = config, f1
    return best, best_f1, probs, scales


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """What ``labels_from_probabilities`` does with ``min_size`` last (objects are not renumbered:
    the scores do not depend on the numbering)."""
    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    model = load_model(args.checkpoint)
    best, best_f1, _, scales = tune(model, load_split("validation-data"))
    print(f"best on validation-data: F1@0.5 {best_f1:.4f}  {best}  (scales {[round(s, 2) for s in scales]})")
    if args.dry_run:
        return
    model.info.postprocess = best.to_dict()
    model.info.provenance["validation_f1"] = round(best_f1, 4)
    model.info.provenance["postprocess_chosen_on"] = "mnfinder validation-data (grid search, scale='auto')"
    save_checkpoint(args.checkpoint, model.net, model.info, dtype=torch.float16)
    print(f"stored {asdict(best)} in {args.checkpoint} (validation F1@0.5 {best_f1:.4f})")


if __name__ == "__main__":
    main()
