"""3D objects and tracks: plane-wise labels vs greedy previous-plane stitching vs ``stack="3d"``/``"time"``.

Data (``scripts/make_stacks.py``): crowded crops of mnfinder validation-data nuclei swept into
ellipsoids at two z/xy voxel ratios, with empty planes of blur and noise above and below, as one
layer and as two layers touching in z (packed); the same crops moving and rotating as time-lapses
(nuclei never overlap one another, as in a monolayer). Also StarDist's synthetic 3D sample (``tests/data``).

* 3D object F1 at IoU 0.5 (objects matched in voxels) of: plane-wise labels (ids made unique per
  plane), greedy stitching (cellpose's rule: each 2D object takes the id of the previous plane's
  object it overlaps most if IoU ≥ 0.25, else a new id), and ``stack="3d"``; objects found on the
  empty planes; what those planes gave when each plane was normalised on its own. A nucleus cut
  by the crop reaches the stack's side faces in the truth as in the image.
* Time: correct-link fraction (a true nucleus present in frames t and t+1, matched at IoU ≥ 0.5 in
  both, with the same predicted id) for greedy previous-frame stitching and ``stack="time"``.

All three use the same probabilities.  ``.venv/bin/python benchmarks/stack_3d.py [--side 192] [--seed 0]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
from make_stacks import crowded_crop, make_timelapse, make_zstack  # noqa: E402
from mnfinder_data import load_split  # noqa: E402

from napari_unet.engine.metrics import instance_scores, overlaps  # noqa: E402
from napari_unet.engine.predict import predict  # noqa: E402
from napari_unet.engine.segmentation import instance_labels, segment_image  # noqa: E402
from napari_unet.models import load_model  # noqa: E402


def unique_per_plane(labels: np.ndarray) -> np.ndarray:
    """Plane-wise labels as they are: ids restart on every plane, so each plane's objects are distinct."""
    out = labels.astype(np.int64)
    offset = 0
    for z in range(len(out)):
        m = out[z] > 0
        out[z][m] += offset
        offset = max(offset, int(out[z].max()))
    return out


def greedy_stitch(labels: np.ndarray, threshold: float = 0.25) -> np.ndarray:
    """Cellpose's stitch rule: each object takes the id of the previous plane's object of best IoU
    (if ≥ ``threshold``), else a new id."""
    out = np.zeros(labels.shape, np.int64)
    out[0] = labels[0]
    next_id = int(labels[0].max()) + 1
    for z in range(1, len(labels)):
        cur = labels[z].astype(np.int64)
        ov = overlaps(out[z - 1], cur)
        best: dict[int, tuple[float, int]] = {}
        for g, p, iou in zip(ov.gt_ids, ov.pred_ids, ov.iou):
            if iou >= threshold and iou > best.get(int(p), (0.0, 0))[0]:
                best[int(p)] = (float(iou), int(g))
        for i in np.unique(cur)[1:]:
            if int(i) in best:
                out[z][cur == i] = best[int(i)][1]
            else:
                out[z][cur == i] = next_id
                next_id += 1
    return out


def correct_links(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int, int]:
    """(correct, total) links of true nuclei between consecutive frames, and (correct, total) among
    the links whose nucleus was found (IoU ≥ 0.5) in both frames: the linking alone."""
    match = []
    for g, p in zip(truth, pred):
        ov = overlaps(g, p)
        keep = ov.iou >= 0.5
        match.append(dict(zip(ov.gt_ids[keep].tolist(), ov.pred_ids[keep].tolist())))
    correct = total = found = 0
    for t in range(len(truth) - 1):
        both = set(np.unique(truth[t])[1:].tolist()) & set(np.unique(truth[t + 1])[1:].tolist())
        for k in both:
            total += 1
            a, b = match[t].get(k), match[t + 1].get(k)
            correct += a is not None and a == b
            found += a is not None and b is not None
    return correct, total, correct, found


def f1_3d(truth: np.ndarray, pred: np.ndarray) -> float:
    return instance_scores(truth, pred, thresholds=(0.5,), volume=True).f1[0.5]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", type=int, default=192)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the stacks' random shapes, depths and noise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    data = load_split("validation-data")[:2]
    rng = np.random.default_rng(args.seed)
    print(f"torch threads 1, {torch.get_num_threads()} thread(s); seed {args.seed}; sets from {[d[0] for d in data]}")
    print(
        "| stack | ratio z/xy | nuclei | scale | plane-wise F1 | greedy F1 | 3d F1 | objects on empty planes "
        "(planes / 3d (of their own) / planes normalised alone) | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    cases = []
    for name, image, labels in data:
        img, lab = crowded_crop(image, labels, args.side)
        for ratio in (1.0, 3.0):
            stack, truth = make_zstack(img, lab, ratio, rng)
            cases.append((f"{name.split('/')[0]}", ratio, stack, truth, 4))
        for ratio in (1.0, 3.0):  # packed: a second layer (the crop turned a quarter) under the first
            stack, truth = make_zstack(img, lab, ratio, rng, below=(np.rot90(img).copy(), np.rot90(lab).copy()))
            cases.append((f"{name.split('/')[0]} packed (2 layers)", ratio, stack, truth, 4))
    sample = ROOT / "tests" / "data"
    if (sample / "img3d.tif").exists():
        cases.append(
            (
                "stardist synthetic 3D",
                1.0,
                tifffile.imread(sample / "img3d.tif"),
                tifffile.imread(sample / "mask3d.tif"),
                0,
            )
        )
    for title, ratio, stack, truth, empty in cases:
        start = time.monotonic()
        result = segment_image(model, stack, stack="3d", voxel_size=(ratio, 1.0, 1.0), device="cpu")
        planes = instance_labels(
            result.probabilities, stack.shape[-2:], result.scale.scale, result.postprocess, sizes="image"
        )
        seconds = time.monotonic() - start
        ends = np.concatenate([planes[:empty], planes[len(planes) - empty :]])
        on_empty = int(sum(len(np.unique(p)) - 1 for p in ends))
        ends3d = np.concatenate([result.labels[:empty], result.labels[len(planes) - empty :]])
        on_empty_3d = int(sum(len(np.unique(p)) - 1 for p in ends3d))
        middle = np.unique(result.labels[empty : len(planes) - empty]) if empty else np.unique(result.labels)
        only_empty = len(np.setdiff1d(np.unique(ends3d), middle))  # 3D objects of their own there
        if empty:
            alone = [
                predict(model, p, scale=result.scale.scale, device="cpu")
                for p in np.concatenate([stack[:empty], stack[len(stack) - empty :]])
            ]
            old = sum(
                len(
                    np.unique(
                        instance_labels(a, stack.shape[-2:], result.scale.scale, result.postprocess, sizes="image")
                    )
                )
                - 1
                for a in alone
            )
        else:
            old = 0
        greedy = greedy_stitch(planes)
        print(
            f"| {title} | {ratio:g} | {len(np.unique(truth)) - 1} | {result.scale.scale:.2f} | "
            f"{f1_3d(truth, unique_per_plane(planes)):.3f} | {f1_3d(truth, greedy):.3f} | "
            f"{f1_3d(truth, result.labels):.3f} | {on_empty} / {on_empty_3d} ({only_empty}) / {old} | "
            f"{seconds:.0f} |",
            flush=True,
        )
    print()
    print("| time-lapse | px/frame | nuclei | frames | greedy links | time links | time links, nuclei found | s |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, image, labels), speed in [(d, s) for s in ((1.0, 3.0), (5.0, 9.0)) for d in data]:
        img, lab = crowded_crop(image, labels, args.side)
        movie, truth = make_timelapse(img, lab, args.frames, rng, speed=speed)
        start = time.monotonic()
        result = segment_image(model, movie, stack="time", device="cpu")
        seconds = time.monotonic() - start
        planes = instance_labels(
            result.probabilities, movie.shape[-2:], result.scale.scale, result.postprocess, sizes="image"
        )
        g_ok, total, _, _ = correct_links(truth, greedy_stitch(planes))
        t_ok, _, _, found = correct_links(truth, result.labels)
        print(
            f"| {name.split('/')[0]} | {speed[0]:g}–{speed[1]:g} | {len(np.unique(truth)) - 1} | {args.frames} | "
            f"{g_ok / total:.3f} ({g_ok}/{total}) | {t_ok / total:.3f} ({t_ok}/{total}) | "
            f"{t_ok / max(found, 1):.3f} ({t_ok}/{found}) | {seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
