"""Does the doubt score point to the wrong objects? ROC AUC of ``review`` doubt for "this object
is wrong" (no true object matched at IoU ≥ 0.5, or part of a merge/split), per image set, with
the shipped model and its own segmentation.

Sets: mnfinder training-data and shifted versions of its images (dim, crowded, shrunk-noisy, hazy:
the only sets the weights are fitted on, ``--fit``, each weighing the same, see ``FIT_SETS``),
validation-data, shifted versions of validation-data (contrast-inverted + blurred; shrunk 0.35× with
shot noise; crowded composites; dim with a cytoplasmic background; hazy: out-of-focus nuclei of
another layer) and the project's two samples. With ``--fit`` the AUC of the weights the module had
(the shipped ones) is printed beside the refit's. Also reports how many "possibly missed"
candidates lie on a true nucleus that no object matched, and the review time on the U2OS sample
against plain segmentation. Each image is segmented at the scale its true nuclei call for.

    .venv/bin/python benchmarks/doubt_auc.py [--views 4] [--fit] [--cache DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi
from scipy.stats import rankdata

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from finetune_usefulness import dim_cytoplasm, hazy  # noqa: E402
from make_crowded_proxy import build_proxy, composite, shrink  # noqa: E402
from mnfinder_data import load_split  # noqa: E402

from napari_unet.api import segment  # noqa: E402
from napari_unet.engine.metrics import overlaps, wrong_objects  # noqa: E402
from napari_unet.engine.normalize import Normalization  # noqa: E402
from napari_unet.engine.postprocess import median_object_area  # noqa: E402
from napari_unet.engine.scale import DEAD_BAND, postprocess_at_scale, scale_for_area  # noqa: E402
from napari_unet.models import load_model  # noqa: E402
from napari_unet.training import review  # noqa: E402

SAMPLES = ROOT / "sample_data"


def _norm(image: np.ndarray) -> np.ndarray:
    return Normalization().apply(np.asarray(image, np.float32)[None])[0]


def inverted_blurred(image, labels, rng):
    x = _norm(image)
    return ndi.gaussian_filter(1.0 - x, 2.0), labels


def shrunk_noisy(image, labels, rng):
    x, lab = shrink(_norm(image), labels, 0.35)
    return rng.poisson(np.clip(x, 0, None) * 20.0).astype(np.float32) / 20.0, lab


def crowded_composites(images, seed: int = 0):
    """Each image's own nuclei pasted so that each touches another (``make_crowded_proxy.composite``)."""
    return [(f"{n.replace('/', '_')}_composite", *composite(im, lab, np.random.default_rng(seed + i)))
            for i, (n, im, lab) in enumerate(images)]


# The weights are fitted on these sets only: mnfinder training-data and the same shifts applied to
# training-data images (every FIT_STEP-th), so that the fit sees the kinds of objects the model gets
# wrong on dim and crowded images. Validation-data and everything made from it are scored, never fitted.
FIT_SETS = ("training-data", "train shrunk_noisy", "train dim_cytoplasm", "train crowded", "train hazy")
FIT_STEP = 2


def image_sets() -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    val = load_split("validation-data")
    sets = {"validation-data": val}
    for shift in (inverted_blurred, shrunk_noisy, dim_cytoplasm):
        rng = np.random.default_rng(0)
        sets[f"val {shift.__name__}"] = [(n, *shift(im, lab, rng)) for n, im, lab in val]
    sets["val crowded"] = [e for e in build_proxy() if e[0].endswith("_composite")]
    sets["val hazy"] = [(n, *hazy(im, lab)) for n, im, lab in val]  # a shift never fitted on
    sets["samples"] = [(n, tifffile.imread(SAMPLES / f"nuclei_{n}.tif"),
                        tifffile.imread(SAMPLES / f"nuclei_{n}_labels.tif")) for n in ("u2os", "misc")]
    train = load_split("training-data")
    sets["training-data"] = train
    some = train[::FIT_STEP]
    for shift in (shrunk_noisy, dim_cytoplasm):
        rng = np.random.default_rng(1)
        sets[f"train {shift.__name__}"] = [(n, *shift(im, lab, rng)) for n, im, lab in some]
    sets["train crowded"] = crowded_composites(some, seed=1)
    sets["train hazy"] = [(n, *hazy(im, lab)) for n, im, lab in some]
    assert not set(FIT_SETS) & {k for k in sets if k.startswith("val")}
    return sets


def predicted(model, image, views: int, cache: Path | None, scale: float) -> review.Views:
    """The model's views of one image at ``scale`` (read from / written to ``cache`` when given)."""
    if cache is not None and cache.exists():
        d = np.load(cache)
        return review.Views(d["probabilities"].astype(np.float32), d["labels"], list(d["view_labels"]),
                            float(d["scale"]), postprocess_at_scale(model.postprocess, float(d["scale"])),
                            review.intensity_plane(image, model.config.in_channels))
    t = time.perf_counter()
    v = review.predict_views(model, image, views=views, device="cpu", scale=scale)
    print(f"    predicted in {time.perf_counter() - t:.1f} s", flush=True)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, probabilities=v.probabilities.astype(np.float16), labels=v.labels,
                 view_labels=np.stack(v.view_labels), scale=v.scale)
    return v


def right_scale(model, gt: np.ndarray) -> float:
    """The scale the true nuclei call for, as a user who knows them would set it (the doubt is
    measured here, not the automatic scale, which shifted images can fool)."""
    s = scale_for_area(median_object_area([gt]), model.info.object_area)
    return 1.0 if abs(s - 1.0) < DEAD_BAND else s


def measure(v: review.Views, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Features and truth of one image's objects, and its missed-candidate hits."""
    ids, X, _ = review.object_features(v.labels, v)
    wrong = np.isin(ids, wrong_objects(gt, v.labels))
    areas = np.bincount(v.labels.ravel())[1:]
    typical = float(np.median(areas[areas > 0])) if (areas > 0).sum() >= 3 else 500.0
    cands = review.missed_candidates(v.labels, v, typical)
    ov = overlaps(gt, v.labels)
    found = set(ov.gt_ids[ov.iou >= 0.5].tolist())
    hits = 0
    for c in cands:
        y, x = (int(round(c.centroid[0])), int(round(c.centroid[1])))
        g = int(gt[y, x])
        hits += bool(g and g not in found)
    missed_total = len(set(np.unique(gt[gt > 0]).tolist()) - found)
    return {"X": X, "wrong": wrong, "cand": np.array([len(cands), hits, missed_total])}


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties count half)."""
    pos, neg = label.sum(), (~label).sum()
    if not pos or not neg:
        return float("nan")
    r = rankdata(score)
    return float((r[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def auc_with(weights: tuple[float, tuple], X: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC of the doubt with ``weights`` = (intercept, feature weights) instead of the module's."""
    current, (review.INTERCEPT, review.WEIGHTS) = (review.INTERCEPT, review.WEIGHTS), weights
    try:
        return auc(review.doubt_from_features(X), y)
    finally:
        review.INTERCEPT, review.WEIGHTS = current


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0,
                 sample_weight: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """L2-regularised logistic regression by Newton's method: (intercept, weights)."""
    s = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, float)
    A = np.hstack([np.ones((len(X), 1)), X])
    w = np.zeros(A.shape[1])
    reg = np.full(A.shape[1], l2)
    reg[0] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-A @ w))
        g = A.T @ (s * (p - y)) + reg * w
        H = (A * (s * p * (1 - p))[:, None]).T @ A + np.diag(reg + 1e-9)
        step = np.linalg.solve(H, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return float(w[0]), w[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--fit", action="store_true", help="fit the weights on training-data and print them")
    ap.add_argument("--cache", default=None, help="folder for measured features (reused when present)")
    ap.add_argument("--sets", default=None, help="comma-separated subset of sets")
    ap.add_argument("--cached-only", action="store_true", help="only the images whose views are cached")
    ap.add_argument("--no-timing", action="store_true", help="skip the review time on the U2OS sample")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model()
    sets = image_sets()
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    measured: dict[str, list[dict[str, np.ndarray]]] = {}
    for set_name, items in sets.items():
        measured[set_name] = []
        for name, image, gt in items:
            path = Path(args.cache) / f"{set_name}_{name}_{args.views}.npz".replace("/", "_").replace(" ", "_") \
                if args.cache else None
            if args.cached_only and not (path and path.exists()):
                continue
            m = measure(predicted(model, image, args.views, path, right_scale(model, gt)), gt)
            print(f"  {set_name} {name}: {len(m['wrong'])} objects, {m['wrong'].sum()} wrong", flush=True)
            measured[set_name].append(m)
    fit_sets = [k for k in FIT_SETS if k in measured]
    shipped = review.INTERCEPT, review.WEIGHTS
    if args.fit and fit_sets:
        X = np.concatenate([m["X"] for k in fit_sets for m in measured[k]])
        y = np.concatenate([m["wrong"] for k in fit_sets for m in measured[k]]).astype(float)
        fixed = review.FEATURES.index("disagree")  # always 0 on the model's own labels: kept as set
        free = [k for k in range(X.shape[1]) if k != fixed]
        # every fitted set weighs the same, however many objects it holds (one shift must not decide)
        set_size = {k: sum(len(m["wrong"]) for m in measured[k]) for k in fit_sets}
        weight = np.concatenate([np.full(len(m["wrong"]), 1.0 / set_size[k])
                                 for k in fit_sets for m in measured[k]]) * len(y) / len(fit_sets)
        b, w_free = fit_logistic(X[:, free], y, sample_weight=weight)
        w = np.array(review.WEIGHTS, dtype=float)
        w[free] = w_free
        review.INTERCEPT, review.WEIGHTS = b, tuple(w)
        print(f"fitted on {', '.join(fit_sets)}: {len(y)} objects, {int(y.sum())} wrong")
        print(f"INTERCEPT = {b:.3f}\nWEIGHTS = ({', '.join(f'{x:.3f}' for x in w)})")
    print(f"\n{'set':26s} {'objects':>7s} {'wrong':>6s} {'AUC':>6s} {'shipped':>8s} {'AUC tta':>8s} {'cands':>6s} "
          f"{'on missed':>9s} {'missed':>6s}")
    for set_name, ms in measured.items():
        X = np.concatenate([m["X"] for m in ms])
        y = np.concatenate([m["wrong"] for m in ms]).astype(bool)
        c = np.sum([m["cand"] for m in ms], axis=0)
        print(f"{set_name:26s} {len(y):7d} {y.sum():6d} {auc(review.doubt_from_features(X), y):6.3f} "
              f"{auc_with(shipped, X, y):8.3f} "
              f"{auc(X[:, review.FEATURES.index('tta')], y):8.3f} {c[0]:6d} {c[1]:9d} {c[2]:6d}")
    if args.cached_only or args.no_timing:
        return
    u2os = tifffile.imread(SAMPLES / "nuclei_u2os.tif")
    for label, fn in (("segment", lambda: segment(u2os, model, device="cpu")),
                      (f"review_table ({args.views} views)", lambda: review.review_table(
                          model, u2os, views=args.views, device="cpu"))):
        t = time.perf_counter()
        fn()
        print(f"U2OS sample, {label}: {time.perf_counter() - t:.1f} s")


if __name__ == "__main__":
    main()
