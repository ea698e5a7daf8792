"""Segmentation metrics: per-class IoU/Dice and instance F1 at IoU thresholds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def iou_matrix(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """IoU between every ground-truth object (rows) and predicted object (columns); 0 excluded."""
    gt = np.asarray(gt).ravel().astype(np.int64)
    pred = np.asarray(pred).ravel().astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError("ground truth and prediction must have the same shape")
    gt, pred = _dense(gt), _dense(pred)
    ng, npred = int(gt.max()) + 1, int(pred.max()) + 1
    inter = coo_matrix((np.ones_like(gt), (gt, pred)), shape=(ng, npred)).toarray()
    area_g, area_p = inter.sum(1, keepdims=True), inter.sum(0, keepdims=True)
    union = area_g + area_p - inter
    iou = np.divide(inter, union, out=np.zeros(inter.shape, float), where=union > 0)
    return iou[1:, 1:]


def _dense(labels: np.ndarray) -> np.ndarray:
    """Relabel to 0..n keeping 0 as background."""
    return np.unique(np.r_[0, labels], return_inverse=True)[1][1:]


@dataclass
class InstanceScores:
    """Counts and F1 at each IoU threshold, plus mean IoU of the pairs matched at 0.5."""

    n_true: int
    n_pred: int
    tp: dict[float, int] = field(default_factory=dict)
    f1: dict[float, float] = field(default_factory=dict)
    mean_matched_iou: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tp"] = {str(k): v for k, v in self.tp.items()}
        d["f1"] = {str(k): v for k, v in self.f1.items()}
        return d


def _matched_ious(gt: np.ndarray, pred: np.ndarray) -> tuple[int, int, np.ndarray]:
    iou = iou_matrix(gt, pred)
    if not (iou.shape[0] and iou.shape[1]):
        return iou.shape[0], iou.shape[1], np.zeros(0)
    rows, cols = linear_sum_assignment(-iou)
    return iou.shape[0], iou.shape[1], iou[rows, cols]


def instance_scores(gt: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS) -> InstanceScores:
    """Match objects one-to-one (Hungarian on IoU) and score F1 = 2TP / (n_true + n_pred).

    Arrays with more than 2 dimensions are stacks of 2D planes (labels are per plane, as
    ``segment`` writes them): planes are matched separately and the counts pooled.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError("ground truth and prediction must have the same shape")
    n_true = n_pred = 0
    parts = []
    for g, p in zip(gt.reshape(-1, *gt.shape[-2:]), pred.reshape(-1, *pred.shape[-2:])):
        nt, np_, m = _matched_ious(g, p)
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


def pooled_f1(pairs: list[tuple[np.ndarray, np.ndarray]], threshold: float = 0.5) -> float:
    """F1 at ``threshold`` over several images, counting matches across all of them."""
    tp = n = 0
    for gt, pred in pairs:
        s = instance_scores(gt, pred, (threshold,))
        tp += s.tp[threshold]
        n += s.n_true + s.n_pred
    return 2 * tp / n if n else 1.0


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
