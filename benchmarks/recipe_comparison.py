"""Training recipes side by side: instance F1@0.5, F1@0.75 and mean matched IoU on mnfinder
``validation-data`` and on the crowded proxy built from it (scripts/make_crowded_proxy.py), with
``scale="auto"``; CPU time to segment a 1024² image. Post-processing is chosen per model on
validation-data (scripts/tune_postprocess.py's grid), as for the shipped model. Never reads test-data.

    .venv/bin/python benchmarks/recipe_comparison.py shipped=sample_data/nuclei_default.safetensors \\
        weights=runs/weights.safetensors ... [--tta NAME] [--threads 2] [--json out.json] [--cache rows.json]

``--cache`` keeps each row's accuracy (keyed by the checkpoint's bytes), so rows can be scored as
their training ends; the 1024² timings are always measured again, all rows in the same run.

A model without ``info.object_area`` (checkpoints from before scale="auto") is given the median
nucleus area of mnfinder training-data, which is what every model here was trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_crowded_proxy import build_proxy  # noqa: E402
from mnfinder_data import load_split  # noqa: E402
from tune_postprocess import tune  # noqa: E402

from napari_unet import load_model, predict, segment  # noqa: E402
from napari_unet.engine.metrics import instance_scores  # noqa: E402
from napari_unet.engine.postprocess import median_object_area  # noqa: E402


def pooled(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """F1@0.5, F1@0.75 and mean IoU of the pairs matched at 0.5, pooled over images."""
    tp5 = tp75 = n = 0
    iou_sum = 0.0
    for gt, pred in pairs:
        s = instance_scores(gt, pred, (0.5, 0.75))
        tp5, tp75, n = tp5 + s.tp[0.5], tp75 + s.tp[0.75], n + s.n_true + s.n_pred
        iou_sum += s.mean_matched_iou * s.tp[0.5]
    return {"f1_50": 2 * tp5 / n, "f1_75": 2 * tp75 / n, "iou": iou_sum / max(tp5, 1)}


def time_1024(model, image: np.ndarray, tta: bool, repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        predict(model, image, device="cpu", scale=1.0, tta=tta)
        best = min(best, time.perf_counter() - t)
    return best


def accuracy(model, val, proxy, tta: bool) -> dict:
    post, _, _, scales = tune(model, val, tta=tta)
    model.info.postprocess = post.to_dict()
    val_pairs, _ = segmented(model, val, tta)
    proxy_pairs, proxy_scales = segmented(model, proxy, tta)
    return {
        "validation": pooled(val_pairs), "proxy": pooled(proxy_pairs),
        "postprocess": post.to_dict(), "val_scales": [round(s, 2) for s in scales],
        "proxy_scales": [round(s, 2) for s in proxy_scales],
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "architecture": model.config.architecture,
    }


def segmented(model, data, tta: bool) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[float]]:
    """(ground truth, labels) of each image segmented as a user would (``segment``, scale="auto",
    the model's post-processing), and the scale chosen for each."""
    pairs, scales = [], []
    for _, img, gt in data:
        pairs.append((gt, segment(img, model, device="cpu", scale="auto", tta=tta, on_scale=scales.append)))
    return pairs, scales


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="NAME=CHECKPOINT")
    ap.add_argument("--tta", action="append", default=[], help="also score NAME with test-time augmentation")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    ap.add_argument("--cache", help="JSON file of rows already scored (reused when the checkpoint is unchanged)")
    ap.add_argument("--no-timing", action="store_true", help="score accuracy only (to fill the cache)")
    ap.add_argument("--tta-only", action="store_true", help="only the --tta rows")
    ap.add_argument("--timing-only", action="store_true", help="only the 1024² timings, all rows in this run")
    args = ap.parse_args()
    cache = json.loads(Path(args.cache).read_text()) if args.cache and Path(args.cache).exists() else {}
    torch.set_num_threads(args.threads)
    val = load_split("validation-data")
    proxy = build_proxy()
    train_area = median_object_area([lab for _, _, lab in load_split("training-data")])
    rng_img = val[0][1].astype(np.float32)
    big = np.pad(rng_img, ((0, 1024 - rng_img.shape[0]), (0, 1024 - rng_img.shape[1])), mode="reflect")
    print(f"validation-data: {len(val)} images, {sum(len(np.unique(g)) - 1 for *_, g in val)} nuclei; "
          f"proxy: {len(proxy)} images, {sum(len(np.unique(g)) - 1 for *_, g in proxy)} nuclei; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    rows = {}
    jobs = [(spec, False) for spec in args.models if not args.tta_only] + [
        (next(s for s in args.models if s.split("=", 1)[0] == name), True) for name in args.tta]
    for spec, tta in jobs:
        name, path = spec.split("=", 1)
        model = load_model(path)
        if not model.info.object_area:
            model.info.object_area = train_area
        label = f"{name} + TTA(8)" if tta else name
        if args.timing_only:
            seconds = time_1024(model, big, tta, repeats=1 if tta else 3)
            print(f"{label}: {model.config.architecture}, {sum(p.numel() for p in model.net.parameters())} "
                  f"parameters, 1024² (scale 1) {seconds:.2f} s", flush=True)
            continue
        key = f"{label}:{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]}"
        if key not in cache:
            cache[key] = accuracy(model, val, proxy, tta)
            if args.cache:
                Path(args.cache).write_text(json.dumps(cache, indent=1))
        rows[label] = dict(cache[key])
        model.info.postprocess = rows[label]["postprocess"]
        rows[label]["seconds_1024"] = (float("nan") if args.no_timing
                                       else time_1024(model, big, tta, repeats=1 if tta else 2))
        r = rows[label]
        print(f"{label}: val {r['validation']}  proxy {r['proxy']}  1024² {r['seconds_1024']:.2f} s  "
              f"post {r['postprocess']}  scales val {r['val_scales']} proxy {r['proxy_scales']}", flush=True)
    if not rows:
        return
    ref = next(iter(rows.values()))["seconds_1024"]
    print("\n| model | val F1@0.5 | val F1@0.75 | val mIoU | proxy F1@0.5 | proxy F1@0.75 | proxy mIoU "
          "| 1024² CPU s (× first row) |")
    print("|---|---|---|---|---|---|---|---|")
    for label, r in rows.items():
        v, p = r["validation"], r["proxy"]
        print(f"| {label} | {v['f1_50']:.3f} | {v['f1_75']:.3f} | {v['iou']:.3f} | {p['f1_50']:.3f} | "
              f"{p['f1_75']:.3f} | {p['iou']:.3f} | {r['seconds_1024']:.2f} ({r['seconds_1024'] / ref:.2f}×) |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
