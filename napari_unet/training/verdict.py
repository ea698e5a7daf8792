"""The fine-tune verdict: held-out reviewed units, scored unit by unit, with a bootstrap.

A reviewed *unit* is a reviewed object or an *erased region*: a connected region of reviewed
background away from any labelled object (where the user erased a false detection). Some units are
held out of training: an object with its *territory* (the reviewed pixels nearer to it than to any
other labelled object, up to a few object radii), so false detections around it count too; an
erased region with its own pixels. Each unit gives (true positive, false positive, false negative)
counts at IoU 0.5 (an erased region: no true object, and a false positive for each predicted object
lying mostly on it or covering most of it); F1 pools them, and the uncertainty of a change in F1 comes
from resampling the held-out units (a paired bootstrap: both models scored on the same draw): a gain
is offered when at most :data:`MAX_NO_GAIN` of the resamples show none (a one-sided 95% bootstrap
test). The base model's undoubted objects off the reviewed pixels (*trusted objects*) show whether nuclei are
still found.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import expand_labels, relabel_sequential

from napari_unet.engine.metrics import overlaps

MIN_COVERED = 0.9  # an object counts as reviewed when this share of its pixels is reviewed
TERRITORY_RADII = 3.0  # a held-out object's territory reaches this many object radii beyond it
MAX_FORGETTING = 0.02  # largest replay F1 drop a fine-tune may cost and still be offered
MAX_NO_GAIN = 0.05  # a gain is offered only when at most this share of the paired resamples shows none
MIN_HELD_OBJECTS = 5  # fewer held-out objects (and trusted objects) cannot show that nuclei are still found
# A gain on held-out erased regions alone is not offered on its own: a model that finds fewer nuclei
# also finds fewer false ones there. Nuclei still found are shown by held-out reviewed objects, or by
# the *trusted objects*: the base model's own objects, off every reviewed pixel, that it does not doubt.
TRUSTED_DOUBT = 0.1  # a base object below this doubt, lying off the reviewed pixels, is trusted
MAX_LOST = 0.05  # largest share of the trusted objects a fine-tune may lose (IoU < 0.5) and still be offered
BOOTSTRAP = 1000
REGION_GAP = 4  # reviewed background this close to a labelled object belongs to the object's ring
MIN_REGION = 16  # smaller pieces of reviewed background (brush specks) are no erased region


def reviewed_objects(labels: np.ndarray, reviewed: np.ndarray | None) -> np.ndarray:
    """Ids of the labelled objects whose pixels are (at least 90%) reviewed."""
    ids, area = np.unique(labels, return_counts=True)
    if reviewed is None:
        return ids[ids > 0]
    ids_r, area_r = np.unique(labels[reviewed], return_counts=True)
    covered = dict(zip(ids_r.tolist(), area_r.tolist()))
    keep = [i for i, a in zip(ids.tolist(), area.tolist()) if i > 0 and covered.get(i, 0) >= MIN_COVERED * a]
    return np.array(keep, dtype=labels.dtype)


def erased_regions(labels: np.ndarray, reviewed: np.ndarray | None) -> np.ndarray:
    """Label image (1..n) of the erased regions: connected reviewed background at least
    :data:`REGION_GAP` pixels from every labelled object and :data:`MIN_REGION` pixels large.
    A fully reviewed plane (``reviewed`` None) has none: its background is scored around its objects."""
    if reviewed is None:
        return np.zeros(labels.shape, np.int32)
    near = ndi.binary_dilation(labels > 0, iterations=REGION_GAP) if labels.any() else np.zeros(labels.shape, bool)
    regions, n = ndi.label(np.asarray(reviewed, bool) & ~near)
    if not n:
        return regions
    keep = np.bincount(regions.ravel()) >= MIN_REGION
    keep[0] = False
    return relabel_sequential(np.where(keep[regions], regions, 0))[0].astype(np.int32)


def territories(labels: np.ndarray, reviewed: np.ndarray | None, held: np.ndarray, radius: float) -> np.ndarray:
    """Label image of the held-out objects' territories (id = the object's id, 0 elsewhere)."""
    grown = expand_labels(labels, distance=max(1, round(radius)))
    out = np.where(np.isin(grown, held), grown, 0)
    return out if reviewed is None else np.where(reviewed, out, 0)


@dataclass
class ObjectCounts:
    """Per held-out object: true positive (0/1), false negative (0/1), false positives around it."""

    tp: np.ndarray
    fn: np.ndarray
    fp: np.ndarray

    def f1(self, index: np.ndarray | None = None) -> float:
        """Pooled F1 over the objects (or a resample of them, ``index``). Units without a true object
        among them (erased regions only) score the share of units left without a false detection:
        their pooled F1 would be 0 while any one false detection remains, however many were removed."""
        tp, fn, fp = (a if index is None else a[index] for a in (self.tp, self.fn, self.fp))
        if len(tp) and not tp.sum() + fn.sum():
            return float(np.mean(fp == 0))
        denom = 2 * tp.sum() + fn.sum() + fp.sum()
        return float(2 * tp.sum() / denom) if denom else 1.0

    @staticmethod
    def concat(parts: list[ObjectCounts]) -> ObjectCounts:
        return ObjectCounts(*(np.concatenate([getattr(p, k) for p in parts] or [np.zeros(0, int)])
                              for k in ("tp", "fn", "fp")))


def object_counts(truth: np.ndarray, pred: np.ndarray, territory: np.ndarray,
                  regions: np.ndarray | list[int] = (), foreground: np.ndarray | None = None) -> ObjectCounts:
    """Score ``pred`` against ``truth`` in each territory of ``territory`` (ids = unit ids).

    Ids in ``regions`` are erased regions: no true object (no true positive, no false negative),
    and a false positive for each unmatched predicted object with at least half its pixels on it or
    covering at least half of it (a false detection the user erased reaches past the region, which
    stops short of the labelled objects beside it). With the model's ``foreground`` (a boolean
    image), a region at least half covered by foreground holds a false positive even where no object
    was kept: a detection that fell just below the smallest size kept is not erased, and comes back
    with a slightly different crop or tiling."""
    ids = np.unique(territory)
    ids = ids[ids > 0]
    is_region = np.isin(ids, np.asarray(regions, dtype=ids.dtype))
    pred_area = np.bincount(pred.ravel().astype(np.int64))
    unit_area = np.bincount(territory.ravel().astype(np.int64))
    inside = territory > 0
    gt = np.where(inside, truth, 0)
    pr = np.where(inside, pred, 0)
    ov = overlaps(gt, pr)
    hit = ov.iou >= 0.5
    matched_gt, matched_pr = set(ov.gt_ids[hit].tolist()), set(ov.pred_ids[hit].tolist())
    tp = np.array([int(i in matched_gt and not r) for i, r in zip(ids.tolist(), is_region.tolist())], dtype=int)
    # each unmatched predicted object is a false positive of the territory holding most of it
    fp = np.zeros(len(ids), dtype=int)
    where = {t: k for k, t in enumerate(ids.tolist())}
    m = pr > 0
    keys, counts = np.unique(np.stack([pr[m], territory[m]]), axis=1, return_counts=True)
    best: dict[int, tuple[int, int]] = {}
    for (p, t), c in zip(keys.T.tolist(), counts.tolist()):
        if p not in matched_pr and c > best.get(p, (0, 0))[0]:
            best[p] = (c, t)
    for p, (c, t) in best.items():
        if not is_region[where[t]] or 2 * c >= pred_area[p] or 2 * c >= unit_area[t]:
            fp[where[t]] += 1
    if foreground is not None and is_region.any():
        covered = np.bincount(territory[foreground & inside].astype(np.int64), minlength=len(unit_area))
        for k in np.flatnonzero(is_region & (fp == 0)):
            fp[k] = int(2 * covered[ids[k]] >= unit_area[ids[k]])
    return ObjectCounts(tp, np.where(is_region, 0, 1 - tp), fp)


def resampled_changes(before: ObjectCounts, after: ObjectCounts, seed: int = 0) -> np.ndarray:
    """F1 after − F1 before on :data:`BOOTSTRAP` resamples of the units (both models on each draw);
    empty for fewer than 2 units."""
    n = len(before.tp)
    if n < 2:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    return np.array([after.f1(i) - before.f1(i) for i in rng.integers(0, n, size=(BOOTSTRAP, n))])


def bootstrap_change(before: ObjectCounts, after: ObjectCounts, seed: int = 0) -> tuple[float, float]:
    """``(F1 after − F1 before, its bootstrap standard deviation)`` over resampled objects."""
    draws = resampled_changes(before, after, seed)
    return after.f1() - before.f1(), float(np.std(draws)) if len(draws) else float("nan")


def whole_counts(truth: np.ndarray, pred: np.ndarray) -> ObjectCounts:
    """Per-object counts over a fully annotated crop: every pixel belongs to its nearest true object's
    territory, so the pooled F1 is the crop's instance F1 (used for the replay crops)."""
    ids = np.unique(truth)
    ids = ids[ids > 0]
    if not len(ids):
        return ObjectCounts(np.zeros(0, int), np.zeros(0, int), np.zeros(0, int))
    return object_counts(truth, pred, territories(truth, None, ids, float(max(truth.shape))))


def trusted_kept(trusted: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """``(kept, n)``: how many of the ``n`` trusted objects (a label image) ``pred`` still finds at IoU 0.5."""
    n = int(np.count_nonzero(np.unique(trusted)))
    if not n:
        return 0, 0
    ov = overlaps(trusted, pred)
    return len(set(ov.gt_ids[ov.iou >= 0.5].tolist())), n


def lost_nuclei(trusted: tuple[int, int] | None) -> bool:
    """True when more than :data:`MAX_LOST` of the trusted objects (``(kept, n)``) are no longer found."""
    return bool(trusted and trusted[1]) and trusted[0] < (1 - MAX_LOST) * trusted[1]


def nuclei_shown(n_objects: int, trusted: tuple[int, int] | None) -> bool:
    """True when enough held-out objects, or trusted objects, can show that nuclei are still found."""
    return max(n_objects, trusted[1] if trusted else 0) >= MIN_HELD_OBJECTS


@dataclass
class Verdict:
    """The judgement of a fine-tune: unit F1 before/after on the held-out units, the change, its
    bootstrap standard deviation and the share of resamples without a gain (the same counts), the
    replay F1 before/after, whether to offer it and, when not, why (a key of :data:`WHY_NOT`)."""

    base_f1: float
    f1: float
    delta: float
    spread: float
    replay: tuple[float, float] | None
    replay_spread: float
    improved: bool
    text: str
    trusted: tuple[int, int] | None = None
    no_gain: float = 0.0
    why_not: str | None = None


WHY_NOT = {  # why a fine-tuned model is not offered, in the order they are checked
    "forgot": "forgot: replay F1 {before:.2f} → {after:.2f} ({change})",
    "lost": "lost nuclei: {lost} of the {trusted} objects the model was sure of are no longer found ({change}{kept})",
    "few": (f"not offered: fewer than {MIN_HELD_OBJECTS} held-out objects cannot show that nuclei are still "
            "found; review more objects ({change}{kept})"),
    "unsure": "not sure: no gain in {no_gain:.0%} of resamples of your held-out units ({change}{kept})",
    "no gain": "no gain on your objects: {change}{kept}",
}


def judge(before: ObjectCounts, after: ObjectCounts, n_objects: int, n_regions: int = 0,
          replay: tuple[ObjectCounts, ObjectCounts] | None = None, seed: int = 0,
          trusted: tuple[int, int] | None = None) -> Verdict:
    """Offer the fine-tuned model only when the held-out units' F1 rose in all but at most
    :data:`MAX_NO_GAIN` of the paired bootstrap resamples (a gain within its own noise is no gain),
    nuclei are shown to be still found (at least :data:`MIN_HELD_OBJECTS` held-out objects, or as
    many trusted objects), at most :data:`MAX_LOST` of the trusted objects were lost (``trusted``:
    kept, of how many), and the replay F1 fell by at most :data:`MAX_FORGETTING`. Scores, change,
    ± and the share without a gain all come from the same per-unit counts."""
    delta = after.f1() - before.f1()
    draws = resampled_changes(before, after, seed)
    spread = float(np.std(draws)) if len(draws) else float("nan")
    no_gain = float(np.mean(draws <= 0)) if len(draws) else float(delta <= 0)
    pair, replay_spread = None, float("nan")
    if replay is not None and len(replay[0].tp):
        pair = (replay[0].f1(), replay[1].f1())
        replay_spread = bootstrap_change(*replay, seed)[1]
    checks = {"forgot": pair is not None and pair[0] - pair[1] > MAX_FORGETTING, "lost": lost_nuclei(trusted),
              "few": delta > 0 and not nuclei_shown(n_objects, trusted),
              "unsure": delta > 0 and no_gain > MAX_NO_GAIN, "no gain": delta <= 0}
    why = next((k for k in WHY_NOT if checks[k]), None)
    text = verdict_text(delta, spread, n_objects, pair, why, n_regions, trusted, no_gain)
    return Verdict(before.f1(), after.f1(), delta, spread, pair, replay_spread, why is None, text, trusted,
                   no_gain, why)


def units_text(n_objects: int, n_regions: int) -> str:
    """``"3 objects and 4 erased regions"`` (either part left out when zero)."""
    parts = [f"{n_objects} object{'s' if n_objects != 1 else ''}"] if n_objects or not n_regions else []
    if n_regions:
        parts.append(f"{n_regions} erased region{'s' if n_regions != 1 else ''}")
    return " and ".join(parts)


def verdict_text(delta: float, spread: float, n_objects: int, replay: tuple[float, float] | None,
                 why_not: str | None, n_regions: int = 0, trusted: tuple[int, int] | None = None,
                 no_gain: float = 0.0) -> str:
    """The verdict in words: the change on the user's held-out units (± its uncertainty, on how many
    objects and erased regions), the trusted objects still found, the replay F1 before → after, and
    why the model is not offered when it is not (``why_not``, a key of :data:`WHY_NOT`)."""
    pm = "" if not np.isfinite(spread) else f" ± {spread:.2f}"
    held = units_text(n_objects, n_regions).replace(" object", " held-out object", 1)
    if not n_objects and n_regions:
        held = held.replace(" erased region", " held-out erased region", 1)
    change = f"{delta:+.2f}{pm} F1 on {held}"
    n_trusted = trusted[1] if trusted else 0
    kept = "" if not n_trusted else f", {trusted[0]} of {n_trusted} trusted objects still found"
    kept += "" if replay is None else f", replay F1 {replay[0]:.2f} → {replay[1]:.2f}"
    if why_not is None:
        return f"{change}{kept}"
    before, after = replay if replay is not None else (float("nan"), float("nan"))
    return WHY_NOT[why_not].format(before=before, after=after, change=change, kept=kept, no_gain=no_gain,
                                   lost=n_trusted - (trusted[0] if trusted else 0), trusted=n_trusted)
