"""The shipped model on the hard crowded proxy (``scripts/make_crowded_proxy.py --hard``), per
failure mode, and on mnfinder validation-data: one row per post-processing candidate.

Every image goes through :func:`napari_unet.segment_image` (scale ``"auto"``, CPU) with the
candidate's post-processing stored in the model, as the dock and the command line run it (the
automatic scale's first pass uses it too). Counted per variant: F1 at IoU 0.5 and 0.75, merges
(a predicted object holding ≥ 25% of two or more true nuclei), misses (a true nucleus matched at
IoU 0.5 by nothing), false objects (a predicted object mostly outside every true nucleus), of them
those mostly on the cytoplasmic signal and on micronuclei, and the condensed bright nuclei missed.
Never reads mnfinder's test-data.

    .venv/bin/python benchmarks/hard_proxy.py [--model CKPT] [--candidates today "shape seeds"] [--json OUT]
    .venv/bin/python benchmarks/hard_proxy.py --sweep [--heights 1 2 3] [--seed-thresholds 0.8] [--thresholds 0.5]
    .venv/bin/python benchmarks/hard_proxy.py --timing [--candidates today "shape seeds"]

``--sweep`` labels the model's probabilities (computed once) with shape seeds of each height, seed
threshold and threshold; ``--timing`` times ``segment_image`` and its post-processing on a 1024²
image. Candidates set the seed mode explicitly, so the rows do not depend on the checkpoint's own.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from bench_inference import make_image  # noqa: E402
from make_crowded_proxy import HARD_VARIANTS, HardImage, build_hard_proxy  # noqa: E402
from mnfinder_data import load_split  # noqa: E402

from napari_unet import load_model  # noqa: E402
from napari_unet.engine.metrics import instance_scores, object_errors, pool_scores  # noqa: E402
from napari_unet.engine.model import SegmentationModel  # noqa: E402
from napari_unet.engine.predict import predict  # noqa: E402
from napari_unet.engine.segmentation import instance_labels, segment_image  # noqa: E402

# post-processing / normalisation changes tried on top of the model's own values
CANDIDATES: dict[str, dict[str, dict]] = {
    "today": {"postprocess": {"seeds": "threshold"}},
    "shape seeds": {"postprocess": {"seeds": "shape", "seed_h": 3.0}},
    "shape seeds, threshold 0.6": {"postprocess": {"seeds": "shape", "seed_h": 3.0, "threshold": 0.6}},
    "shape seeds, min size 60": {"postprocess": {"seeds": "shape", "seed_h": 3.0, "min_size": 60}},
    "shape seeds, normalisation 99.95": {"postprocess": {"seeds": "shape", "seed_h": 3.0},
                                         "normalization": {"high": 99.95}},
}


def with_candidate(model: SegmentationModel, changes: dict[str, dict]) -> SegmentationModel:
    """A copy of ``model`` whose stored post-processing and normalisation carry ``changes``."""
    out = copy.copy(model)
    out.info = copy.deepcopy(model.info)
    out.info.postprocess.update(changes.get("postprocess", {}))
    out.info.normalization.update(changes.get("normalization", {}))
    return out


def errors_row(items: list[HardImage], preds: list[np.ndarray]) -> dict[str, float]:
    """Pooled F1s and summed error counts of ``preds`` on ``items``."""
    scores = pool_scores([instance_scores(it.labels, p, (0.5, 0.75)) for it, p in zip(items, preds)], (0.5, 0.75))
    row = {"n": scores.n_true, "f1_50": scores.f1[0.5], "f1_75": scores.f1[0.75],
           "merges": 0, "missed": 0, "false": 0, "false_cytoplasm": 0, "false_micronuclei": 0, "bright_missed": 0,
           "bright": 0}
    for it, p in zip(items, preds):
        err = object_errors(it.labels, p)
        row["merges"] += len(err.merges)
        row["missed"] += len(err.missed)
        row["false"] += len(err.false)
        row["bright"] += len(it.bright)
        row["bright_missed"] += len(np.intersect1d(err.missed, it.bright))
        for key, mask in (("false_cytoplasm", it.cytoplasm), ("false_micronuclei", it.micronuclei)):
            if mask is None:
                continue
            area = np.bincount(p.ravel(), minlength=int(p.max()) + 1)
            on = np.bincount(p[mask].ravel(), minlength=int(p.max()) + 1)
            row[key] += int((on[err.false] > 0.5 * area[err.false]).sum())
    return row


def evaluate(model: SegmentationModel, proxy: list[HardImage], validation: list) -> dict:
    """Per-variant rows on the hard proxy, the pooled row, validation-data F1@0.5 (full pipeline)."""
    preds = [segment_image(model, it.image, device="cpu").labels for it in proxy]
    out = {v: errors_row([it for it in proxy if it.name.startswith(f"hard_{v}_")],
                         [p for it, p in zip(proxy, preds) if it.name.startswith(f"hard_{v}_")])
           for v in HARD_VARIANTS}
    out["overall"] = errors_row(proxy, preds)
    val = [instance_scores(gt, segment_image(model, img, device="cpu").labels, (0.5,)) for _, img, gt in validation]
    out["validation_f1_50"] = pool_scores(val, (0.5,)).f1[0.5]
    return out


def sweep(model: SegmentationModel, proxy: list[HardImage], validation: list, heights: list[float],
          seed_thresholds: list[float], thresholds: list[float]) -> None:
    """Shape-seed settings on the model's probabilities (computed once, scale "auto" chosen with
    the model's own post-processing)."""
    cache = []
    for img, gt in [(it.image, it.labels) for it in proxy] + [(img, gt) for _, img, gt in validation]:
        scales: list[float] = []
        probs = predict(model, img, device="cpu", on_scale=scales.append, keep_enlarged=True)
        cache.append((img, gt, probs, scales[0]))
    base = model.postprocess
    grid = [base] + [replace(base, seeds="shape", seed_h=h, seed_threshold=s, threshold=t)
                     for h, s, t in itertools.product(heights, seed_thresholds, thresholds)]
    n = len(proxy)
    for config in grid:
        preds = [instance_labels(p, img.shape[-2:], s, config) for img, _, p, s in cache]
        hard = errors_row(proxy, preds[:n])
        val = pool_scores([instance_scores(gt, pr, (0.5,)) for (_, gt, _, _), pr in zip(cache[n:], preds[n:])], (0.5,))
        print(f"{config.seeds:9s} h {config.seed_h:3.1f} seed_thr {config.seed_threshold:.1f}"
              f" thr {config.threshold:.1f}:"
              f" hard F1@0.5 "
              f"{hard['f1_50']:.4f} @0.75 {hard['f1_75']:.4f} merges {hard['merges']} missed {hard['missed']} "
              f"false {hard['false']} | validation F1@0.5 {val.f1[0.5]:.4f}", flush=True)


def timing(model: SegmentationModel, names: list[str], size: int = 1024, repeats: int = 3) -> None:
    """Median seconds of ``segment_image`` (scale 1, CPU, end to end) and of its post-processing
    alone on a ``size``² image (the U2OS sample mirror-extended, as ``bench_inference.py``), the
    candidates timed round-robin after one warm-up each."""
    image = make_image(size)
    models = {name: with_candidate(model, CANDIDATES[name]) for name in names}
    probs = predict(model, image, device="cpu", scale=1.0)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for r in range(repeats + 1):
        for name, m in models.items():
            t0 = time.perf_counter()
            segment_image(m, image, device="cpu", scale=1.0)
            t1 = time.perf_counter()
            instance_labels(probs, image.shape, 1.0, m.postprocess)
            if r:
                runs[name].append((t1 - t0, time.perf_counter() - t1))
    for name, values in runs.items():
        total, post = np.median([v[0] for v in values]), np.median([v[1] for v in values])
        print(f"{name}: {size}² segment {total:.2f} s (post-processing {post:.2f} s), "
              f"{torch.get_num_threads()} thread(s), median of {repeats}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model")
    ap.add_argument("--candidates", nargs="*", default=list(CANDIDATES))
    ap.add_argument("--sweep", action="store_true", help="sweep seed settings on cached probabilities instead")
    ap.add_argument("--heights", type=float, nargs="*", default=[1.0, 2.0, 3.0, 4.0, 5.0])
    ap.add_argument("--seed-thresholds", type=float, nargs="*", default=[0.5, 0.8])
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.5])
    ap.add_argument("--timing", action="store_true", help="time the candidates on a 1024² image instead")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    if args.timing:
        timing(model, args.candidates)
        return
    proxy = build_hard_proxy()
    validation = load_split("validation-data")
    print(f"hard proxy: {len(proxy)} images, {sum(int(it.labels.max()) for it in proxy)} nuclei")
    if args.sweep:
        sweep(model, proxy, validation, args.heights, args.seed_thresholds, args.thresholds)
        return
    results = {}
    for name in args.candidates:
        t = time.perf_counter()
        results[name] = res = evaluate(with_candidate(model, CANDIDATES[name]), proxy, validation)
        print(f"== {name} (validation-data F1@0.5 {res['validation_f1_50']:.4f}; {time.perf_counter() - t:.0f} s)")
        for key in (*HARD_VARIANTS, "overall"):
            r = res[key]
            print(f"  {key:12s} n {r['n']:4d}  F1@0.5 {r['f1_50']:.3f}  F1@0.75 {r['f1_75']:.3f}"
                  f"  merges {r['merges']:3d}  missed {r['missed']:3d}  false {r['false']:3d}"
                  f" (cytoplasm {r['false_cytoplasm']}, micronuclei {r['false_micronuclei']})"
                  f"  bright missed {r['bright_missed']}/{r['bright']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
