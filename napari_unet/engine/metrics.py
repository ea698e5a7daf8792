"""Segmentation metrics: per-class IoU/Dice and instance F1 at IoU thresholds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass(frozen=True)
class Overlaps:
    """Every (ground-truth, predicted) object pair that shares pixels, with its IoU; 0 excluded.

    Sparse: memory and time grow with the number of touching pairs, never with label values.
    """

    gt_ids: np.ndarray  # object ids of the pairs
    pred_ids: np.ndarray
    iou: np.ndarray
    n_true: int
    n_pred: int


def overlaps(gt: np.ndarray, pred: np.ndarray) -> Overlaps:
    """The overlapping object pairs of two label images of the same shape."""
    gt, pred = np.asarray(gt).ravel(), np.asarray(pred).ravel()
    if gt.shape != pred.shape:
        raise ValueError("ground truth and prediction must have the same shape")
    g_ids, g = np.unique(gt, return_inverse=True)
    p_ids, p = np.unique(pred, return_inverse=True)
    g_area, p_area = np.bincount(g), np.bincount(p)
    both = (gt != 0) & (pred != 0)
    keys, inter = np.unique(g[both].astype(np.int64) * len(p_ids) + p[both], return_counts=True)
    gi, pi = keys // len(p_ids), keys % len(p_ids)
    iou = inter / (g_area[gi] + p_area[pi] - inter)
    n_true = len(g_ids) - int(g_ids[0] == 0)
    n_pred = len(p_ids) - int(p_ids[0] == 0)
    return Overlaps(g_ids[gi], p_ids[pi], iou, n_true, n_pred)


def _matched_ious(gt: np.ndarray, pred: np.ndarray, min_iou: float) -> tuple[int, int, np.ndarray]:
    """One-to-one matching maximising total IoU among pairs with IoU ≥ ``min_iou``.

    Solved per connected group of candidate pairs (above 0.5 every object has at most one
    candidate, so groups are tiny), which keeps it linear in the number of objects.
    """
    ov = overlaps(gt, pred)
    keep = ov.iou >= min_iou
    gi, pi, iou = ov.gt_ids[keep], ov.pred_ids[keep], ov.iou[keep]
    if not len(iou):
        return ov.n_true, ov.n_pred, np.zeros(0)
    rows = np.unique(gi, return_inverse=True)[1]
    cols = np.unique(pi, return_inverse=True)[1]
    nr, nc = rows.max() + 1, cols.max() + 1
    graph = coo_matrix((np.ones(len(iou)), (rows, nr + cols)), shape=(nr + nc, nr + nc))
    _, group = connected_components(graph, directed=False)
    pair_group = group[rows]
    size = np.bincount(pair_group)
    single = size[pair_group] == 1  # most pairs: one candidate on both sides, nothing to solve
    matched = [iou[single]]
    multi = np.flatnonzero(~single)
    order = multi[np.argsort(pair_group[multi], kind="stable")]
    bounds = np.flatnonzero(np.diff(pair_group[order])) + 1
    for idx in np.split(order, bounds) if len(order) else []:
        r = np.unique(rows[idx], return_inverse=True)[1]
        c = np.unique(cols[idx], return_inverse=True)[1]
        m = np.zeros((r.max() + 1, c.max() + 1))
        m[r, c] = iou[idx]
        a, b = linear_sum_assignment(-m)
        matched.append(m[a, b][m[a, b] > 0])
    return ov.n_true, ov.n_pred, np.concatenate(matched)


@dataclass
class InstanceScores:
    """Counts and F1 at each IoU threshold, plus mean IoU of the pairs matched at 0.5."""

    n_true: int
    n_pred: int
    tp: dict[float, int] = field(default_factory=dict)
    f1: dict[float, float] = field(default_factory=dict)
    mean_matched_iou: float = 0.0

    @property
    def precision(self) -> float:
        """Fraction of predicted objects matched at IoU 0.5."""
        return self.tp.get(0.5, 0) / self.n_pred if self.n_pred else 1.0

    @property
    def recall(self) -> float:
        """Fraction of true objects matched at IoU 0.5."""
        return self.tp.get(0.5, 0) / self.n_true if self.n_true else 1.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tp"] = {str(k): v for k, v in self.tp.items()}
        d["f1"] = {str(k): v for k, v in self.f1.items()}
        d["precision"], d["recall"] = self.precision, self.recall
        return d


def instance_scores(gt: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS, *, volume: bool = False) -> InstanceScores:
    """Match objects one-to-one (max total IoU among pairs with IoU ≥ 0.5) and score F1 = 2TP / (n_true + n_pred).

    Arrays with more than 2 dimensions are stacks of 2D planes (labels are per plane, as
    ``segment`` writes them): planes are matched separately and the counts pooled. With ``volume``
    the objects of the whole array are matched (3D objects, IoU in voxels).
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError("ground truth and prediction must have the same shape")
    n_true = n_pred = 0
    parts = []
    shape = gt.shape if volume else gt.shape[-2:]
    for g, p in zip(gt.reshape(-1, *shape), pred.reshape(-1, *shape)):
        nt, np_, m = _matched_ious(g, p, min(min(thresholds), 0.5))
        n_true, n_pred = n_true + nt, n_pred + np_
        parts.append(m)
    matched = np.concatenate(parts)
    scores = InstanceScores(n_true, n_pred)
    for t in thresholds:
        tp = int((matched >= t).sum())
        scores.tp[t] = tp
        total = n_true + n_pred
        scores.f1[t] = 2 * tp / total if total else 1.0
    good = matched[matched >= 0.5]
    scores.mean_matched_iou = float(good.mean()) if good.size else 0.0
    return scores


def pool_scores(parts: list[InstanceScores], thresholds=THRESHOLDS) -> InstanceScores:
    """Scores over several images: counts and matches added up, F1 recomputed from the totals,
    mean matched IoU weighted by each image's matches at 0.5."""
    n_true, n_pred = sum(s.n_true for s in parts), sum(s.n_pred for s in parts)
    pooled = InstanceScores(n_true, n_pred)
    for t in thresholds:
        pooled.tp[t] = sum(s.tp[t] for s in parts)
        pooled.f1[t] = 2 * pooled.tp[t] / (n_true + n_pred) if n_true + n_pred else 1.0
    matched = sum(s.tp.get(0.5, 0) for s in parts)
    if matched:
        pooled.mean_matched_iou = sum(s.mean_matched_iou * s.tp.get(0.5, 0) for s in parts) / matched
    return pooled


def pooled_f1(pairs: list[tuple[np.ndarray, np.ndarray]], threshold: float = 0.5) -> float:
    """F1 at ``threshold`` over several images, counting matches across all of them."""
    parts = [instance_scores(gt, pred, (threshold,)) for gt, pred in pairs]
    return pool_scores(parts, (threshold,)).f1[threshold]


def class_scores(gt_classes: np.ndarray, pred_classes: np.ndarray, n_classes: int) -> dict[str, list[float]]:
    """Per-class IoU and Dice between two class maps (NaN where a class is absent from both)."""
    iou, dice = [], []
    for k in range(n_classes):
        a, b = gt_classes == k, pred_classes == k
        inter, sa, sb = np.logical_and(a, b).sum(), a.sum(), b.sum()
        union = sa + sb - inter
        iou.append(float(inter / union) if union else float("nan"))
        dice.append(float(2 * inter / (sa + sb)) if sa + sb else float("nan"))
    return {"iou": iou, "dice": dice}


def _coverage(gt: np.ndarray, pred: np.ndarray, part: float) -> tuple[Overlaps, np.ndarray, np.ndarray, np.ndarray]:
    """The overlapping pairs; which pairs have the prediction holding ≥ ``part`` of the true object
    (``big``), of those which true objects are at least a tenth of the prediction (``sizable``);
    and the number of sizable true objects each predicted id holds (its merge count)."""
    ov = overlaps(gt, pred)
    g_area = np.bincount(gt.ravel().astype(np.int64))
    p_area = np.bincount(pred.ravel().astype(np.int64))
    ga, pa = g_area[ov.gt_ids.astype(np.int64)], p_area[ov.pred_ids.astype(np.int64)]
    inter = ov.iou * (ga + pa) / (1 + ov.iou)
    big = inter >= part * ga  # the predicted object holds a good part of the true one
    sizable = big & (ga >= 0.1 * pa)
    merges = np.bincount(ov.pred_ids[sizable].astype(np.int64), minlength=len(p_area))
    return ov, big, inter, merges


def wrong_objects(gt: np.ndarray, pred: np.ndarray, min_iou: float = 0.5, part: float = 0.25) -> np.ndarray:
    """The ids of the predicted objects of one plane that are wrong: matched to no true object at
    IoU ≥ ``min_iou``, or part of a merge (covering ≥ ``part`` of two or more true objects that
    are each at least a tenth of the prediction: a speck swallowed by a nucleus is no merge) or of
    a split (one of two or more covering ≥ ``part`` of one true object each)."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    ov, big, _, merges = _coverage(gt, pred, part)
    g_area = np.bincount(gt.ravel().astype(np.int64))
    p_area = np.bincount(pred.ravel().astype(np.int64))
    splits = np.bincount(ov.gt_ids[big].astype(np.int64), minlength=len(g_area))
    ids = np.flatnonzero(p_area)
    ids = ids[ids > 0]
    matched = np.zeros(len(p_area), bool)
    matched[ov.pred_ids[ov.iou >= min_iou].astype(np.int64)] = True
    in_split = np.zeros(len(p_area), bool)
    in_split[ov.pred_ids[big & (splits[ov.gt_ids.astype(np.int64)] >= 2)].astype(np.int64)] = True
    wrong = ~matched[ids] | (merges[ids] >= 2) | in_split[ids]
    return ids[wrong]


@dataclass(frozen=True)
class ObjectErrors:
    """The errors of one plane's prediction, by kind (ids; a true object may be both merged and missed)."""

    merges: np.ndarray  # predicted ids covering ≥ part of two or more true objects (as in wrong_objects)
    missed: np.ndarray  # true ids matched by no predicted object at IoU ≥ min_iou
    false: np.ndarray  # predicted ids lying mostly (more than half their pixels) outside every true object


def object_errors(gt: np.ndarray, pred: np.ndarray, min_iou: float = 0.5, part: float = 0.25) -> ObjectErrors:
    """Merges, misses and false objects of the prediction ``pred`` of one plane against ``gt``."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    ov, _, inter, merges = _coverage(gt, pred, part)
    p_area = np.bincount(pred.ravel().astype(np.int64))
    g_ids = np.unique(gt)
    g_ids = g_ids[g_ids > 0]
    p_ids = np.flatnonzero(p_area)
    p_ids = p_ids[p_ids > 0]
    inside = np.bincount(ov.pred_ids.astype(np.int64), weights=inter, minlength=len(p_area))
    missed = np.setdiff1d(g_ids, ov.gt_ids[ov.iou >= min_iou])
    return ObjectErrors(p_ids[merges[p_ids] >= 2], missed, p_ids[inside[p_ids] < 0.5 * p_area[p_ids]])
