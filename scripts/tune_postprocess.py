"""Choose the post-processing parameters of a checkpoint on mnfinder's validation-data and store
them in the checkpoint (its ``info.postprocess``). Never reads test-data.

    .venv/bin/python scripts/tune_postprocess.py sample_data/nuclei_default.safetensors
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mnfinder_data import load_split  # noqa: E402

from napari_unet import load_model, predict  # noqa: E402
from napari_unet.checkpoint import save_checkpoint  # noqa: E402
from napari_unet.postprocess import PostprocessConfig, choose_postprocess  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    model = load_model(args.checkpoint)
    val = load_split("validation-data")
    probs = [predict(model, img, device="cpu") for _, img, _ in val]
    best, best_f1 = choose_postprocess(
        probs, [gt for _, _, gt in val], PostprocessConfig(), thresholds=(0.4, 0.5, 0.6),
        seed_thresholds=(0.5, 0.6, 0.7, 0.8), min_sizes=(30, 60, 100, 150, 200),
    )
    print(f"best on validation-data: F1@0.5 {best_f1:.4f}  {best}")
    if args.dry_run:
        return
    model.info.postprocess = best.to_dict()
    model.info.provenance["validation_f1"] = round(best_f1, 4)
    model.info.provenance["postprocess_chosen_on"] = "mnfinder validation-data (grid search)"
    save_checkpoint(args.checkpoint, model.net, model.info, dtype=torch.float16)
    print(f"stored {asdict(best)} in {args.checkpoint} (validation F1@0.5 {best_f1:.4f})")


if __name__ == "__main__":
    main()
