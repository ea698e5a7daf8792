"""The review loop, with a simulated user: how far do k reviewed objects take the model?

On one image of a kind the shipped model handles badly (``finetune_usefulness.KINDS``, built from
mnfinder U2OS training/validation-data: contrast-inverted + blurred, or shrunk 0.35× + shot noise)
the "user" reviews k objects — chosen (a) by the doubt ranking (``training.review.review_table``)
or (b) at random among the model's objects — and corrects each to the ground truth: the true
nuclei under a reviewed object (or under a "possibly missed" candidate) become the reviewed
objects of a sparse pair, and what the model labelled where there is no nucleus is erased
(reviewed background). "whole" corrects the entire image (a full pair). Each pair set is
fine-tuned with a fixed amount of work (steps, not seconds) in this process, and the verdict
decides which model the user keeps. Measured: F1@0.5 on *other* images of the kind with the model
kept (and with the fine-tuned one whatever the verdict), F1 on mnfinder validation-data (the
original domain: forgetting), CPU minutes.

    .venv/bin/python benchmarks/review_loop.py [--kind inverted --kind small-noisy] [--k 0 5 10 20 50]
                                               [--steps 60] [--threads 2] [--json out.json] [--png out.png]
                                               [--lr 5e-4] [--replay-fraction 0.5] [--l2sp 0] [--layers all] [--ema 0.9]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from finetune_usefulness import KINDS  # noqa: E402
from mnfinder_data import load_split  # noqa: E402

from napari_unet import load_model, segment  # noqa: E402
from napari_unet.engine.metrics import pooled_f1  # noqa: E402
from napari_unet.errors import NapariUnetError  # noqa: E402
from napari_unet.training.finetune import FineTuneOptions, run_finetune  # noqa: E402
from napari_unet.training.pairs import export_pair, export_reviewed_objects  # noqa: E402
from napari_unet.training.review import Doubt, review_table  # noqa: E402


def correct(rows: list[Doubt], predicted: np.ndarray, truth: np.ndarray) -> tuple[set[int], np.ndarray]:
    """What a user who reviews ``rows`` ends with: the true objects there (ids in ``truth``) and the
    background they erased (model objects, or checked candidates, where there is no nucleus)."""
    ids: set[int] = set()
    touched = np.zeros(truth.shape, bool)
    for row in rows:
        if row.missed:
            y0, x0, y1, x1 = row.bbox
            region = np.zeros(truth.shape, bool)
            region[y0:y1, x0:x1] = True
        else:
            region = predicted == row.id
        under = truth[region]
        found, counts = np.unique(under[under > 0], return_counts=True)
        ids |= {int(i) for i, c in zip(found, counts) if c >= 10}
        touched |= region & (truth == 0)
    return ids, touched


def evaluate(model, images: list[tuple[np.ndarray, np.ndarray]]) -> float:
    return pooled_f1([(lab, segment(img, model, device="cpu")) for img, lab in images])


def run(kind: str, ks: list[int], steps: int, held_out: int, seed: int, tune: dict | None = None,
        choices: tuple[str, ...] = ("doubt", "random", "whole")) -> list[dict]:
    shift = KINDS[kind]
    data = [(n, *shift(img, lab)) for split in ("training-data", "validation-data")
            for n, img, lab in load_split(split) if "U2OS" in n]
    (name, image, truth), others = data[0], [(img, lab) for _, img, lab in data[1 : 1 + held_out]]
    original = [(img, lab) for _, img, lab in load_split("validation-data")]
    base = load_model()
    f1_base, orig_base = evaluate(base, others), evaluate(base, original)
    predicted = segment(image, base, device="cpu")
    start = time.process_time()
    table = review_table(base, image, predicted, device="cpu")
    review_cpu = time.process_time() - start
    objects = [r for r in table if not r.missed]
    rng = np.random.default_rng(seed)
    print(f"{kind}: {name}, {len(np.unique(truth)) - 1} true nuclei, {len(objects)} model objects, "
          f"{len(table) - len(objects)} candidates; ranking {review_cpu:.1f} CPU s; base F1 {f1_base:.3f} on "
          f"{len(others)} other images, {orig_base:.3f} on validation-data", flush=True)
    rows = [{"kind": kind, "k": 0, "choice": "-", "f1": f1_base, "f1_tuned": f1_base, "original_f1": orig_base,
             "original_f1_tuned": orig_base, "cpu_min": 0.0, "improved": False, "verdict": "no fine-tune"}]
    plans: list[tuple[int | str, str, list[Doubt] | None]] = []
    for k in [k for k in ks if k > 0]:
        plans.append((k, "doubt", table[:k]))
        plans.append((k, "random", [objects[i] for i in rng.permutation(len(objects))[:k]]))
    plans = [p for p in plans if p[1] in choices]
    if "whole" in choices:
        plans.append(("whole", "-", None))
    for k, choice, chosen in plans:
        with tempfile.TemporaryDirectory() as tmp:
            pairs = Path(tmp) / "pairs"
            if chosen is None:
                export_pair(pairs, image, truth, source="user")
                n_true = len(np.unique(truth)) - 1
            else:
                ids, touched = correct(chosen, predicted, truth)
                if not ids and not touched.any():
                    print(f"  k={k} {choice}: nothing reviewed to export; skipped", flush=True)
                    rows.append({**rows[0], "k": k, "choice": choice, "true_objects": 0,
                                 "verdict": "nothing reviewed to export"})
                    continue
                export_reviewed_objects(pairs, image, truth, ids, touched, source="user")  # erased regions too
                n_true = len(ids)
            epochs = -(-steps // 20)  # validations every 20 steps or fewer, ``steps`` in all
            options = FineTuneOptions(pairs=pairs, out=Path(tmp) / "ft.safetensors", device="cpu", epochs=epochs,
                                      steps_per_epoch=-(-steps // epochs), seed=seed, **(tune or {}))
            cpu = time.process_time()
            try:
                done = run_finetune(options, lambda event: None)
            except NapariUnetError as exc:  # e.g. fewer than 2 true nuclei among the reviewed objects
                print(f"  k={k} {choice}: {n_true} true nuclei reviewed; not fine-tuned: {exc}", flush=True)
                rows.append({**rows[0], "k": k, "choice": choice, "true_objects": n_true, "verdict": str(exc)})
                continue
            cpu = (time.process_time() - cpu) / 60
            tuned = load_model(options.out)
            kept = tuned if done["improved"] else base
            f1_tuned, orig_tuned = evaluate(tuned, others), evaluate(tuned, original)
        row = {"kind": kind, "k": k, "choice": choice, "true_objects": n_true,
               "f1": f1_tuned if done["improved"] else f1_base, "f1_tuned": f1_tuned,
               "original_f1": orig_tuned if kept is tuned else orig_base, "original_f1_tuned": orig_tuned,
               "cpu_min": round(cpu, 2), "steps": done.get("steps"), "improved": bool(done["improved"]),
               "verdict": done.get("verdict", ""), "validation_objects": done.get("validation_objects"),
               "validation_regions": done.get("validation_regions"), "replay_base_f1": done.get("replay_base_f1"),
               "replay_f1": done.get("replay_f1"), "settings": tune or {}}
        rows.append(row)
        print(f"  k={k} {choice}: F1 {row['f1']:.3f} (fine-tuned {f1_tuned:.3f}), original {row['original_f1']:.3f} "
              f"(fine-tuned {orig_tuned:.3f}), {cpu:.2f} CPU min, {row['verdict']}", flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = ["| kind | k | F1 new images, doubt | random | F1 original domain, doubt | random | CPU min |",
           "|---|---|---|---|---|---|---|"]
    for kind in dict.fromkeys(r["kind"] for r in rows):
        for k in dict.fromkeys(r["k"] for r in rows if r["kind"] == kind):
            at = {r["choice"]: r for r in rows if r["kind"] == kind and r["k"] == k}
            d, rnd = at.get("doubt", at.get("-")), at.get("random", at.get("-"))

            def cell(r: dict | None, key: str) -> str:
                return "–" if r is None else f"{r[key]:.3f}" + ("" if r[key] == r[key + "_tuned"] or key == "cpu_min"
                                                             else f" ({r[key + '_tuned']:.3f})")
            cpu = max(r["cpu_min"] for r in at.values())
            out.append(f"| {kind} | {k} | {cell(d, 'f1')} | {cell(rnd, 'f1')} | {cell(d, 'original_f1')} | "
                       f"{cell(rnd, 'original_f1')} | {cpu:.2f} |")
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """F1 on new images against k, doubt-ranked (solid) and random (dashed), one colour per kind."""
    from PIL import Image, ImageDraw

    w, h, m = 640, 420, 50
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    ks = sorted({r["k"] for r in rows if isinstance(r["k"], int)}) + ["whole"]
    x = {k: m + i * (w - 2 * m) / max(1, len(ks) - 1) for i, k in enumerate(ks)}
    lo = min(r["f1"] for r in rows) - 0.02

    def y(f1: float) -> float:
        return h - m - (f1 - lo) / (1.0 - lo) * (h - 2 * m)

    draw.line([(m, h - m), (w - m, h - m)], fill="black")
    draw.line([(m, m), (m, h - m)], fill="black")
    for k in ks:
        draw.text((x[k] - 8, h - m + 8), str(k), fill="black")
    for f in np.linspace(lo, 1.0, 5):
        draw.text((5, y(f) - 6), f"{f:.2f}", fill="black")
    draw.text((w // 2 - 90, h - 20), "objects reviewed (k)", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for colour, kind in zip(colours, dict.fromkeys(r["kind"] for r in rows)):
        for choice, dash in (("doubt", False), ("random", True)):
            pts = [(x[r["k"]], y(r["f1"])) for r in rows if r["kind"] == kind
                   and (r["choice"] in (choice, "-"))]
            pts.sort()
            for a, b in zip(pts, pts[1:]):
                if dash:
                    for t in np.linspace(0, 1, 12)[::2]:
                        s = min(1.0, t + 1 / 12)
                        draw.line([(a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t),
                                   (a[0] + (b[0] - a[0]) * s, a[1] + (b[1] - a[1]) * s)], fill=colour, width=2)
                else:
                    draw.line([a, b], fill=colour, width=3)
        draw.text((w - m - 150, m + 15 * colours.index(colour)), f"{kind} (dashed: random)", fill=colour)
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kind", action="append", choices=sorted(KINDS))
    ap.add_argument("--k", type=int, nargs="+", default=[0, 5, 10, 20, 50])
    ap.add_argument("--steps", type=int, default=60, help="fine-tuning steps per run (fixed work)")
    ap.add_argument("--held-out", type=int, default=4, help="other images of the kind to measure on")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, help="fine-tuning learning rate (default: FineTuneOptions')")
    ap.add_argument("--replay-fraction", type=float, help="share of each batch from the replay set")
    ap.add_argument("--l2sp", type=float, help="L2-SP weight (pull towards the base weights)")
    ap.add_argument("--layers", choices=["all", "decoder"])
    ap.add_argument("--ema", type=float, help="decay of the weights' moving average that is validated and kept")
    ap.add_argument("--crop", type=int, help="training crop size")
    ap.add_argument("--choice", nargs="+", default=["doubt", "random", "whole"], choices=["doubt", "random", "whole"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = {"lr": "lr", "replay_fraction": "replay_fraction", "l2sp": "l2sp", "layers": "layers", "crop": "crop_size",
             "ema": "ema"}
    tune = {field: getattr(args, arg) for arg, field in names.items() if getattr(args, arg) is not None}
    rows = [r for kind in args.kind or ["inverted", "small-noisy"]
            for r in run(kind, args.k, args.steps, args.held_out, args.seed, tune, tuple(args.choice))]
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.png:
        plot(rows, args.png)


if __name__ == "__main__":
    main()
