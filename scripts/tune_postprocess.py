"""Choose the post-processing parameters of a checkpoint on mnfinder's validation-data and store
them in the checkpoint (its ``info.postprocess``). Never reads test-data.

    .venv/bin/python scripts/tune_postprocess.py sample_data/nuclei_default.safetensors
"""

from __future__ import annotations

import argparse
import itertools
import sys
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from mnfinder_data import load_split  # noqa: E402

from napari_unet import load_model, predict  # noqa: E402
from napari_unet.checkpoint import save_checkpoint  # noqa: E402
from napari_unet.metrics import pooled_f1  # noqa: E402
from napari_unet.postprocess import PostprocessConfig, labels_from_probabilities  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("checkpoint")
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    model = load_model(args.checkpoint)
    val = load_split("validation-data")
    probs = [predict(model, img, device="cpu") for _, img, _ in val]
    scored = []
    for thr, seed, size in itertools.product((0.4, 0.5, 0.6), (0.5, 0.6, 0.7, 0.8), (30, 60, 100, 150, 200)):
        config = PostprocessConfig(threshold=thr, seed_threshold=seed, min_size=size)
        f1 = pooled_f1([(gt, labels_from_probabilities(p, config)) for (_, _, gt), p in zip(val, probs)])
        scored.append((f1, config))
    scored.sort(key=lambda t: -t[0])
    for f1, config in scored[:5]:
        print(f"F1@0.5 {f1:.4f}  {config}")
    best_f1, best = scored[0]
    if args.dry_run:
        return
    model.info.postprocess = best.to_dict()
    model.info.provenance["validation_f1"] = round(best_f1, 4)
    model.info.provenance["postprocess_chosen_on"] = "mnfinder validation-data (grid search)"
    save_checkpoint(args.checkpoint, model.net, model.info, dtype=torch.float16)
    print(f"stored {asdict(best)} in {args.checkpoint} (validation F1@0.5 {best_f1:.4f})")


if __name__ == "__main__":
    main()
