"""Objects worth correcting: a doubt score per labelled object, and the nuclei the labels likely miss.

The score combines what inference already has: how much an object changes under flips/rotations
(test-time augmentation), the class entropy inside it and on its rim, signs of two nuclei in one
object (several interior seeds, a boundary line inside) or of one nucleus cut in two (a weak split
line), faintness, size/shape outliers against the image's own objects, and the object's pixel noise
against its signal in the image. Its weights are a tiny logistic regression fitted on mnfinder
``training-data`` (as it is, and made dim, crowded and noisy) by ``benchmarks/doubt_auc.py`` (docs/review.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.measure import regionprops
from skimage.segmentation import clear_border

from napari_unet.engine.metrics import overlaps
from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.planes import to_planes
from napari_unet.engine.postprocess import PostprocessConfig, foreground_mask, labels_from_probabilities
from napari_unet.engine.predict import choose_scale, predict
from napari_unet.engine.scale import checked_scale, postprocess_at_scale
from napari_unet.engine.segmentation import instance_labels
from napari_unet.engine.tiling import resize_probabilities
from napari_unet.engine.tta import dihedral
from napari_unet.errors import InputError

FEATURES = (
    "disagree", "tta", "tta_worst", "entropy_inside", "entropy_rim", "faint", "extra_seeds", "inner_boundary",
    "weak_split", "area_high", "area_low", "solidity_low", "eccentricity_high",
    "noise",
)
# Fitted by benchmarks/doubt_auc.py on mnfinder training-data and dim, crowded, shrunk-noisy and hazy
# versions of its images (never validation-data), except "disagree" (how far an object is from the
# model's own; always 0 when the labels are the model's, so it cannot be fitted there): fixed so that
# an object the model does not see at all gets a doubt above 0.95. "noise" weighs negatively: beside
# "faint" and "entropy_inside" it discounts faintness that is only a noisy image's (docs/review.md).
INTERCEPT = -4.849
WEIGHTS = (8.0, 2.643, 0.584, 4.587, 2.857, 5.022, -0.927, -1.565, 1.756, 4.345, 2.167, 0.008, -1.557, -7.980)
DISAGREE_REASON = "differs from the model's objects"

REASONS = {
    "disagree": DISAGREE_REASON, "tta": "boundary unclear", "tta_worst": "boundary unclear",
    "entropy_inside": "boundary unclear", "entropy_rim": "boundary unclear",
    "faint": "faint", "extra_seeds": "may be two nuclei", "inner_boundary": "may be two nuclei",
    "weak_split": "may be one nucleus cut in two", "area_high": "may be two nuclei", "area_low": "may be debris",
    "solidity_low": "may be two nuclei", "eccentricity_high": "may be debris",
    "noise": "faint in the image",
}
NO_NUCLEUS = "no nucleus seen here"
NOT_NUCLEUS = "may not be a nucleus"
UNCLEAR_INSIDE = 0.45  # a cut nucleus' pieces are clear inside; above this entropy, pieces of background
MISSED = "possibly missed"
Z_CLIP = 5.0


@dataclass(frozen=True)
class Doubt:
    """One row of the review table: a labelled object (``missed=False``, ``id`` = its label) or a
    likely missed nucleus (``missed=True``, ``id`` = candidate number)."""

    id: int
    missed: bool
    centroid: tuple[float, float]  # (y, x) in image pixels
    bbox: tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive
    area: int
    doubt: float  # 0 (trusted) … 1 (worth checking)
    reason: str


@dataclass
class Views:
    """What the model says about one plane: class probabilities at the image's size (averaged over
    the views), its own labels (first view), the labels of every view, and the scale used."""

    probabilities: np.ndarray  # (K, H, W)
    labels: np.ndarray  # (H, W) uint32
    view_labels: list[np.ndarray]
    scale: float
    config: PostprocessConfig  # post-processing in image pixels
    image: np.ndarray | None = None  # (H, W) the plane's intensities (mean over channels), if known


def _one_plane(image: np.ndarray, in_channels: int, channel_axis: int | None, channel: int | None) -> np.ndarray:
    planes = to_planes(image, in_channels, channel_axis=channel_axis, channel=channel)
    if planes.data.shape[0] != 1:
        raise InputError("Review works on one plane at a time; pick a plane of the stack.")
    return planes.data[0]


def intensity_plane(image: np.ndarray, in_channels: int, *, channel_axis: int | None = None,
                    channel: int | None = None) -> np.ndarray:
    """The one plane of ``image`` as the model reads it, averaged over channels: ``(H, W)`` float32."""
    return _one_plane(image, in_channels, channel_axis, channel).astype(np.float32).mean(axis=0)


def predict_views(
    model: SegmentationModel,
    image: np.ndarray,
    *,
    views: int = 4,
    scale: float | str = "auto",
    postprocess: PostprocessConfig | None = None,
    probabilities: np.ndarray | None = None,
    channel_axis: int | None = None,
    channel: int | None = None,
    **predict_options: Any,
) -> Views:
    """Predict one plane under ``views`` (1, 4 or 8) flips/rotations and label each view with the
    engine's post-processing. ``probabilities`` (``predict(..., keep_enlarged=True)`` at this
    ``scale``) stand for the first view and save its prediction."""
    x = _one_plane(image, model.config.in_channels, channel_axis, channel)
    shape = x.shape[-2:]
    if scale == "auto":
        scale = choose_scale(model, x, channel_axis=0, **predict_options).scale
    scale = checked_scale(scale)
    sizes = "model" if postprocess is None else "image"
    config = postprocess or model.postprocess
    image_config = config if sizes == "image" else postprocess_at_scale(config, scale)
    mean, labels, view_labels = None, None, []
    for v, (forward, inverse) in enumerate(dihedral(views)):
        if v == 0 and probabilities is not None:
            p = np.asarray(probabilities, dtype=np.float32)
            if p.ndim != 3 or p.shape[0] != model.config.out_classes:
                raise InputError(f"The probabilities are {p.shape}; one plane's (classes, Y, X) are expected.")
        else:
            p = inverse(predict(model, forward(x), scale=scale, channel_axis=0, keep_enlarged=True,
                                **predict_options))
        lab = instance_labels(p, shape, scale, config, sizes=sizes)
        view_labels.append(lab)
        labels = lab if labels is None else labels
        p = resize_probabilities(p, shape)
        mean = p.copy() if mean is None else mean + p
    mean /= len(view_labels)
    return Views(mean, labels, view_labels, scale, image_config, x.astype(np.float32).mean(axis=0))


def doubt_image(probabilities: np.ndarray) -> np.ndarray:
    """Per-pixel doubt for an overlay: the class entropy of ``(K, H, W)`` probabilities, 0 … 1."""
    p = np.clip(np.asarray(probabilities, dtype=np.float32), 1e-6, 1.0)
    return (-(p * np.log(p)).sum(axis=0) / np.log(p.shape[0])).astype(np.float32)


def _robust_z(values: np.ndarray) -> np.ndarray:
    if len(values) < 5:
        return np.zeros_like(values)
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    spread = max(mad, 0.05 * abs(med), 1e-6)
    return np.clip((values - med) / spread, -Z_CLIP, Z_CLIP)


def object_features(labels: np.ndarray, views: Views) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """``(ids, X, regions)``: one row of :data:`FEATURES` per object of ``labels``."""
    labels = np.asarray(labels)
    regions = regionprops(labels.astype(np.int64))
    ids = np.array([r.label for r in regions], dtype=np.int64)
    X = np.zeros((len(ids), len(FEATURES)), dtype=np.float64)
    if not len(ids):
        return ids, X, regions
    col = {name: k for k, name in enumerate(FEATURES)}
    p = views.probabilities
    fg, interior, boundary = 1.0 - p[0], p[1], p[min(2, p.shape[0] - 1)]
    entropy = doubt_image(p)
    best = np.zeros((len(views.view_labels), int(ids.max()) + 1))
    for v, lab in enumerate(views.view_labels):
        ov = overlaps(labels, lab)
        np.maximum.at(best[v], ov.gt_ids.astype(np.int64), ov.iou)
    X[:, col["disagree"]] = 1.0 - best[0, ids]  # the labels against the model's own (first view)
    if len(best) > 1:  # against the flipped/rotated views
        X[:, col["tta"]] = 1.0 - best[1:, ids].mean(axis=0)
        X[:, col["tta_worst"]] = 1.0 - best[1:, ids].min(axis=0)
    seed_threshold, min_seed = views.config.seed_threshold, views.config.min_seed_size
    if views.image is not None:  # pixel noise: what a 1 px Gaussian smooths away
        residual = views.image - ndi.gaussian_filter(views.image, 1.0)
        floor = float(np.percentile(views.image, 1))
    square = np.ones((3, 3), bool)
    h, w = labels.shape
    for row, r in enumerate(regions):
        y0, x0, y1, x1 = r.bbox
        ys, xs = slice(max(0, y0 - 3), min(h, y1 + 3)), slice(max(0, x0 - 3), min(w, x1 + 3))
        crop = labels[ys, xs]
        m = crop == r.label
        rim = ndi.binary_dilation(m, square, iterations=2) & ~ndi.binary_erosion(m, square)
        inner = ndi.binary_erosion(m, square, iterations=2)
        X[row, col["entropy_inside"]] = entropy[ys, xs][m].mean()
        X[row, col["entropy_rim"]] = entropy[ys, xs][rim].mean()
        X[row, col["faint"]] = 1.0 - fg[ys, xs][m].mean()
        seeds, n = ndi.label((interior[ys, xs] > seed_threshold) & m)
        n_seeds = int((np.bincount(seeds.ravel())[1:] >= min_seed).sum()) if n else 0
        X[row, col["extra_seeds"]] = min(max(n_seeds - 1, 0), 2) / 2
        # a split line inside: boundary pixels away from the rim, against the object's diameter
        line = (boundary[ys, xs][inner] > 0.5).sum()
        X[row, col["inner_boundary"]] = min(1.0, line / (2 * np.sqrt(r.area / np.pi)))
        contact = m & ndi.binary_dilation((crop != 0) & (crop != r.label), square)
        X[row, col["weak_split"]] = 1.0 - boundary[ys, xs][contact].mean() if contact.any() else 0.0
        if views.image is not None:  # the object's pixel noise against its signal above the image's floor
            signal = views.image[ys, xs][m].mean() - floor
            X[row, col["noise"]] = min(1.0, residual[ys, xs][m].std() / signal) if signal > 0 else 1.0
    z_area = _robust_z(np.log([r.area for r in regions]))
    z_solidity = _robust_z(np.array([r.solidity for r in regions]))
    z_ecc = _robust_z(np.array([r.eccentricity for r in regions]))
    X[:, col["area_high"]], X[:, col["area_low"]] = np.maximum(z_area, 0) / Z_CLIP, np.maximum(-z_area, 0) / Z_CLIP
    X[:, col["solidity_low"]] = np.maximum(-z_solidity, 0) / Z_CLIP
    X[:, col["eccentricity_high"]] = np.maximum(z_ecc, 0) / Z_CLIP
    return ids, X, regions


def doubt_from_features(X: np.ndarray) -> np.ndarray:
    """The doubt (0 … 1) of feature rows, by the fitted logistic formula."""
    return 1.0 / (1.0 + np.exp(-(INTERCEPT + np.asarray(X) @ np.asarray(WEIGHTS))))


def trusted_objects(plane: np.ndarray, probabilities: np.ndarray, config: PostprocessConfig,
                    reviewed: np.ndarray, max_doubt: float, labels: np.ndarray | None = None) -> np.ndarray:
    """The model's own objects it does not doubt: a label image of those with doubt below
    ``max_doubt`` (one view) that touch neither a reviewed pixel nor the border. ``plane``: the image
    ``(H, W)``; ``probabilities``: the model's ``(K, H, W)`` on it, at the scale ``config`` is for;
    ``labels``: what ``config`` makes of them, when already made."""
    labels = labels_from_probabilities(probabilities, config) if labels is None else labels
    ids, X, _ = object_features(labels, Views(probabilities, labels, [labels], 1.0, config, plane))
    keep = ids[doubt_from_features(X) < max_doubt]
    off = np.setdiff1d(keep, labels[np.asarray(reviewed, bool)])
    return clear_border(np.where(np.isin(labels, off), labels, 0))


def _reason(x: np.ndarray) -> str:
    """The words for the strongest sign; disagreement with the model only when nothing else shows."""
    if x[FEATURES.index("faint")] > 0.75:
        return NO_NUCLEUS
    contributions = np.asarray(WEIGHTS) * x
    contributions[0] = 0.0
    if contributions.max() < 0.5 and x[0] > 0.3:
        return DISAGREE_REASON
    strongest = FEATURES[int(np.argmax(contributions))]
    if strongest in ("weak_split", "entropy_inside") and x[FEATURES.index("entropy_inside")] > UNCLEAR_INSIDE:
        return NOT_NUCLEUS  # unclear inside (and maybe at its contacts): fragments of a textured background
    return REASONS[strongest]


def missed_candidates(labels: np.ndarray, views: Views, typical_area: float) -> list[Doubt]:
    """Foreground blobs with no object (below the threshold of ``views.config``, or dropped as too
    small): nuclei the labels may lack. ``typical_area`` is the usual nucleus area in image pixels."""
    p = views.probabilities
    fg, interior = 1.0 - p[0], p[1]
    blobs = ndi.binary_opening(foreground_mask(p, views.config) & (np.asarray(labels) == 0), np.ones((3, 3), bool))
    comp, n = ndi.label(blobs)
    out = []
    min_area = max(views.config.min_seed_size, 0.1 * typical_area)
    for k, sl in enumerate(ndi.find_objects(comp), start=1):
        m = comp[sl] == k
        area = int(m.sum())
        if area < min_area or interior[sl][m].max() < 0.5:
            continue
        doubt = float(fg[sl][m].mean() * min(1.0, area / (0.3 * typical_area)))
        cy, cx = (c.mean() + s.start for c, s in zip(np.nonzero(m), sl))
        out.append(Doubt(0, True, (float(cy), float(cx)), (sl[0].start, sl[1].start, sl[0].stop, sl[1].stop),
                         area, doubt, MISSED))
    out.sort(key=lambda d: -d.doubt)
    return [replace(d, id=i) for i, d in enumerate(out, start=1)]


def review_table(
    model: SegmentationModel,
    image: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    probabilities: np.ndarray | None = None,
    scale: float | str = "auto",
    views: int = 4,
    postprocess: PostprocessConfig | None = None,
    **predict_options: Any,
) -> list[Doubt]:
    """The objects of ``labels`` (default: the model's own segmentation) and the likely missed
    nuclei, most doubtful first. ``views`` flips/rotations are predicted (1 = no augmentation,
    fastest); ``probabilities`` from ``predict(..., keep_enlarged=True)`` at ``scale`` save one.
    ``predict_options`` (device, tile, channel_axis, …) go to :func:`predict`."""
    v = predict_views(model, image, views=views, scale=scale, postprocess=postprocess,
                      probabilities=probabilities, **predict_options)
    if labels is None:
        labels = v.labels
    labels = np.asarray(labels)
    if labels.shape != v.labels.shape:
        raise InputError(f"The labels are {labels.shape} but the image plane is {v.labels.shape}.")
    ids, X, regions = object_features(labels, v)
    doubts = doubt_from_features(X)
    rows = [
        Doubt(int(i), False, (float(r.centroid[0]), float(r.centroid[1])), tuple(int(b) for b in r.bbox),
              int(r.area), float(d), _reason(x))
        for i, r, d, x in zip(ids, regions, doubts, X)
    ]
    areas = [r.area for r in regions]
    typical = float(np.median(areas)) if len(areas) >= 3 else float(model.info.object_area or 500) / v.scale**2
    rows += missed_candidates(labels, v, typical)
    rows.sort(key=lambda d: -d.doubt)
    return rows
