"""Choose the post-processing parameters of a checkpoint on mnfinder's validation-data and store
them in the checkpoint (its ``info.postprocess``). Never reads test-data.

Each validation image is run at the scale ``scale="auto"`` chooses for it, and the sizes tried
are in training-scale pixels (converted per image, as ``segment`` does).

    .venv/bin/python scripts/tune_postprocess.py sample_data/nuclei_default.safetensors

The checkpoint's seed mode (``seeds``, ``seed_h``) is kept while the grid runs; ``--seeds`` and
``--seed-h`` set it first, and ``--no-grid`` keeps the stored thresholds and sizes (only the seeds
change, and the validation F1 is measured and stored):

    .venv/bin/python scripts/tune_postprocess.py sample_data/nuclei_default.safetensors \
        --seeds shape --seed-h 3 --no-grid
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
from napari_unet.engine.metrics import pooled_f1  # noqa: E402
from napari_unet.engine.model import SegmentationModel  # noqa: E402
from napari_unet.engine.postprocess import PostprocessConfig  # noqa: E402
from napari_unet.engine.segmentation import instance_labels  # noqa: E402
from napari_unet.io.checkpoint import save_checkpoint  # noqa: E402

GRID = {"threshold": (0.4, 0.5, 0.6), "seed_threshold": (0.6, 0.7, 0.8), "min_size": (60, 100, 150, 200),
        "edge_min_size": (None, 15, 30, 60)}


def tune(
    model: SegmentationModel, data: list[tuple[str, np.ndarray, np.ndarray]], *, scale: float | str = "auto",
    tta: bool = False, grid: dict[str, tuple] | None = None,
) -> tuple[PostprocessConfig, float, list[np.ndarray], list[float]]:
    """Best post-processing (pooled F1@0.5) on ``[(name, image, labels)]``, labelled as
    ``segment`` does (:func:`napari_unet.engine.segmentation.instance_labels`); also the probabilities and the
    scale used for each image. ``grid`` (default :data:`GRID`; ``{}``: the model's own values only)."""
    probs, scales = [], []
    for _, img, _ in data:
        probs.append(predict(model, img, device="cpu", scale=scale, tta=tta, on_scale=scales.append,
                             keep_enlarged=True))
    grid = GRID if grid is None else grid
    best, best_f1 = model.postprocess, -1.0
    for values in itertools.product(*grid.values()):
        config = replace(model.postprocess, **dict(zip(grid, values)))
        f1 = pooled_f1([(gt, instance_labels(p, img.shape[-2:], s, config))
                        for (_, img, gt), p, s in zip(data, probs, scales)])
        if f1 > best_f1:
            best, best_f1 = config, f1
    return best, best_f1, probs, scales


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint")
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--seeds", choices=("threshold", "shape"), help="set the seed mode before tuning")
    ap.add_argument("--seed-h", type=float, help="set the shape seeds' height (training-scale px)")
    ap.add_argument("--no-grid", action="store_true", help="keep the stored thresholds and sizes")
    args = ap.parse_args()
    model = load_model(args.checkpoint)
    seeds = {k: v for k, v in (("seeds", args.seeds), ("seed_h", args.seed_h)) if v is not None}
    model.info.postprocess = replace(model.postprocess, **seeds).to_dict()
    best, best_f1, _, scales = tune(model, load_split("validation-data"), grid={} if args.no_grid else None)
    print(f"best on validation-data: F1@0.5 {best_f1:.4f}  {best}  (scales {[round(s, 2) for s in scales]})")
    if args.dry_run:
        return
    model.info.postprocess = best.to_dict()
    model.info.provenance["validation_f1"] = round(best_f1, 4)
    if args.no_grid:
        model.info.provenance["postprocess_chosen_on"] = (
            f"{model.info.provenance.get('postprocess_chosen_on', '')}; seeds {best.seeds} (seed_h {best.seed_h})"
            " chosen on mnfinder validation-data and the hard crowded proxy (benchmarks/hard_proxy.py)")
    else:
        model.info.provenance["postprocess_chosen_on"] = "mnfinder validation-data (grid search, scale='auto')"
    save_checkpoint(args.checkpoint, model.net, model.info, dtype=torch.float16)
    print(f"stored {asdict(best)} in {args.checkpoint} (validation F1@0.5 {best_f1:.4f})")


if __name__ == "__main__":
    main()
