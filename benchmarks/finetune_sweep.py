"""Fine-tuning settings for a few sparse corrections and a small CPU budget, measured.

A simulated user corrects 20 random nuclei (sparse reviewed masks: each nucleus and a ring of
context) on one image of a shifted kind (``benchmarks/finetune_usefulness.py``: contrast-inverted +
blurred, or shrunk 0.35× + shot noise, from mnfinder U2OS training/validation-data) and fine-tunes
the shipped model with one setting. Measured: F1 at IoU 0.5 on other images of that kind (before
→ after), F1 on mnfinder validation-data (the original domain: forgetting), the verdict, CPU
seconds and steps per CPU-minute. Runs in this process with ``torch.set_num_threads(--threads)``.

    .venv/bin/python benchmarks/finetune_sweep.py --kind inverted --setting base --setting lr2e-3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from finetune_usefulness import KINDS  # noqa: E402
from mnfinder_data import load_split  # noqa: E402

from napari_unet import load_model, segment  # noqa: E402
from napari_unet.engine.metrics import pooled_f1  # noqa: E402
from napari_unet.training.finetune import FineTuneOptions, run_finetune  # noqa: E402
from napari_unet.training.pairs import export_pair  # noqa: E402

SETTINGS = {  # name: FineTuneOptions overrides (steps = epochs × steps_per_epoch)
    "base": {},
    "lr2e-3": {"lr": 2e-3},
    "lr2e-4": {"lr": 2e-4},
    "decoder": {"layers": "decoder"},
    "no-replay": {"replay": False},
    "l2sp": {"l2sp": 1e-3},
    "crop256": {"crop_size": 256},
    "steps120": {"epochs": 6},
}


def sparse_review(labels: np.ndarray, n: int, rng: np.random.Generator, ring: int = 8) -> np.ndarray:
    """A reviewed mask of ``n`` random objects, each with a ``ring``-pixel margin of context."""
    ids = rng.choice(np.unique(labels[labels > 0]), size=n, replace=False)
    return ndi.binary_dilation(np.isin(labels, ids), iterations=ring)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--kind", choices=sorted(KINDS), default="inverted")
    ap.add_argument("--setting", action="append", choices=sorted(SETTINGS))
    ap.add_argument("--objects", type=int, default=20)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--held-out", type=int, default=4, help="other images of the kind to measure")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--scale", default="auto", help="scale for the images of the shifted kind (a number or auto)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scale = args.scale if args.scale == "auto" else float(args.scale)
    shift = KINDS[args.kind]
    data = [(n, *shift(img, lab)) for split in ("training-data", "validation-data")
            for n, img, lab in load_split(split) if "U2OS" in n]
    (name, image, labels), others = data[0], data[1 : 1 + args.held_out]
    original = load_split("validation-data")
    base = load_model()
    reviewed = sparse_review(labels, args.objects, np.random.default_rng(0))
    before = pooled_f1([(lab, segment(img, base, device="cpu", scale=scale)) for _, img, lab in others])
    orig_before = pooled_f1([(lab, segment(img, base, device="cpu")) for _, img, lab in original])
    print(f"{args.kind}: corrected {args.objects} nuclei of {name}; base F1 on {len(others)} other images "
          f"{before:.3f}, on validation-data {orig_before:.3f}", flush=True)
    results = []
    for setting in args.setting or ["base"]:
        with tempfile.TemporaryDirectory() as tmp:
            export_pair(Path(tmp) / "pairs", image, labels, reviewed=reviewed, source=name.replace("/", "_"))
            opts = {"epochs": max(1, args.steps // 20), "steps_per_epoch": 20, "batch_size": 4,
                    "crop_size": 160, **SETTINGS[setting]}
            cpu, wall = time.process_time(), time.monotonic()
            done = run_finetune(FineTuneOptions(pairs=Path(tmp) / "pairs", out=Path(tmp) / "ft.safetensors",
                                                device="cpu", **opts), lambda e: None)
            cpu, wall = time.process_time() - cpu, time.monotonic() - wall
            tuned = load_model(Path(tmp) / "ft.safetensors")
            after = pooled_f1([(lab, segment(img, tuned, device="cpu", scale=scale)) for _, img, lab in others])
            orig_after = pooled_f1([(lab, segment(img, tuned, device="cpu")) for _, img, lab in original])
        r = {"kind": args.kind, "setting": setting, **opts, "steps": done["steps"], "cpu_s": round(cpu, 1),
             "wall_s": round(wall, 1), "steps_per_cpu_min": round(done["steps"] / cpu * 60, 1),
             "f1_before": round(before, 4), "f1_after": round(after, 4),
             "original_f1_before": round(orig_before, 4), "original_f1_after": round(orig_after, 4),
             "improved": done["improved"], "verdict": done["verdict"], "train_scale": done["train_scale"],
             "eval_scale": args.scale}
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
