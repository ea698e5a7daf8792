"""Stacks as one image: 3D objects from a z-stack's per-plane probabilities, and identities kept
through time.

``labels_3d`` runs one seeded watershed over the stacked interior/boundary probabilities (a seed
per peak of the interior's 3D depth, foreground connected across planes, a missed plane bridged,
the smallest object counted in voxels); ``link_frames`` gives each object of a time-lapse the id
of the object it continues, by Hungarian assignment (:func:`scipy.optimize.linear_sum_assignment`)
on overlap, then on centroid distance, with a bounded gap; divisions and disappearances end a
track, new objects start one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.optimize import linear_sum_assignment
from skimage.morphology import h_maxima
from skimage.segmentation import relabel_sequential, watershed

from napari_unet.engine.postprocess import PostprocessConfig, drop_small, foreground_mask
from napari_unet.errors import InputError

STACK_MODES = ("planes", "3d", "time")
_NO = 1e6  # cost of a pair that may not be linked
DAUGHTER = 0.25  # a daughter of a division covers at least this share of its mother's area


def check_stack_mode(stack: str) -> str:
    """``stack`` when it is one of :data:`STACK_MODES`; else one sentence."""
    if stack not in STACK_MODES:
        raise InputError(f"Stack mode must be one of {', '.join(STACK_MODES)}, not {stack!r}.")
    return stack


def check_voxel_size(voxel_size: Sequence[float] | None) -> tuple[float, float, float] | None:
    """``(z, y, x)`` voxel size as positive floats (None stays None); else one sentence."""
    if voxel_size is None:
        return None
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError):
        raise InputError(f"Voxel size must be three numbers (Z Y X), not {voxel_size!r}.") from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise InputError(f"Voxel size must be three positive numbers (Z Y X), not {voxel_size!r}.")
    return values  # type: ignore[return-value]


def z_gap(voxel_size: tuple[float, float, float] | None) -> int:
    """Planes a 3D object may be missing in and stay one object: 1, or 0 when planes lie more than
    four pixel widths apart (then a nucleus spans few planes and a gap is more likely a real one)."""
    if voxel_size is None:
        return 1
    return 1 if voxel_size[0] / voxel_size[2] <= 4 else 0


SEED_DEPTH = 0.2  # a seed peak counts when it rises this share of the typical interior depth above its saddle
SEED_RISE = 0.3  # ... or when log(1 + depth) rises this above its saddle (1 + depth grows by about a third)


def _seeds_3d(depth: np.ndarray, parts: np.ndarray, n_parts: int, min_seed_size: int) -> np.ndarray:
    """Seed voxels of :func:`labels_3d`: the peaks of ``depth`` that rise :data:`SEED_DEPTH` of the
    median part's peak above their saddle, or that rise :data:`SEED_RISE` above it in
    ``log(1 + depth)`` and lie at least one voxel deep (a thin nucleus, one cut by the stack's side
    faces, beside a thick one: its peak is low, its rise small in voxels but large for its depth);
    and, as a plane's seeds are, every interior part of at least ``min_seed_size`` voxels that has
    no such peak (a nucleus whose interior lies apart from the others, however thin)."""
    inside = parts > 0
    peaks = ndi.maximum(depth, parts, np.arange(1, n_parts + 1))
    seeds = (h_maxima(depth, SEED_DEPTH * float(np.median(peaks))) > 0) & inside
    seeds |= (h_maxima(np.log1p(depth), SEED_RISE) > 0) & inside & (depth >= 1.0)
    lone = np.bincount(parts.ravel(), minlength=n_parts + 1) >= min_seed_size
    lone[np.unique(parts[seeds])] = False
    lone[0] = False
    return seeds | lone[parts]


def labels_3d(
    probs: np.ndarray,
    config: PostprocessConfig,
    *,
    voxel_size: tuple[float, float, float] | None = None,
    min_size: int | None = None,
) -> np.ndarray:
    """3D instance labels ``(Z, H, W)`` from per-plane probabilities ``(Z, K, H, W)``.

    With interior/boundary classes, foreground is ``P(interior) + P(boundary) / 2 >= threshold`` (the
    blurred gap between nuclei that touch in z looks like boundary, so boundary counts half) and the
    interior is ``P(interior) > seed_threshold``. One seed per peak of the interior's distance to its
    edge (in voxel units, so anisotropy counts) that rises :data:`SEED_DEPTH` of the typical peak
    above its saddle (``skimage.morphology.h_maxima``), or, at least a voxel deep, :data:`SEED_RISE`
    in ``log(1 + depth)``: nuclei whose interiors touch across planes still get a seed each, and so
    does a thin one beside thick ones (one cut by the stack's side faces); an interior part with no
    such peak is a seed of its own (from ``config.min_seed_size`` voxels), as in a plane (see
    :func:`_seeds_3d`). With 2 classes the distance is to the background. A watershed on the
    distance grows the seeds through the foreground; an object that narrows to a neck in z is cut
    there (:func:`split_at_z_necks`). An interior missing in one plane between two
    overlapping ones, where that plane has no foreground at all, is bridged (see :func:`z_gap`), so a
    nucleus the network missed in a plane stays one object, while two nuclei with a boundary between
    them in z stay two. ``min_size`` (default ``config.min_size``) is in voxels and applies to whole 3D
    objects, so a nucleus keeps its thin ends; an object cut by the stack's faces needs only the
    plane's edge size (``config.edge_size``), as in a plane.
    """
    if probs.ndim != 4 or probs.shape[1] < 2:
        raise ValueError("labels_3d needs probabilities shaped (Z, K, H, W) with K >= 2")
    if probs.shape[1] >= 3:
        foreground = (probs[:, 1] + 0.5 * probs[:, 2]) >= config.threshold
        inner = (probs[:, 1] > config.seed_threshold) & foreground
    else:
        foreground = foreground_mask(probs, config)
        inner = foreground.copy()
    if z_gap(voxel_size) and len(inner) > 2:
        bridge = np.zeros_like(inner)
        bridge[1:-1] = inner[:-2] & inner[2:] & ~foreground[1:-1]  # missed there, not a boundary between two
        inner |= bridge
        foreground |= bridge
    parts, n_parts = ndi.label(inner)  # face connectivity: across planes only where interiors overlap
    sampling = voxel_size or (1.0, 1.0, 1.0)
    depth = ndi.distance_transform_edt(parts > 0, sampling=sampling)
    depth = ndi.gaussian_filter(depth, sigma=[sampling[2] / v for v in sampling])  # one pixel width, in voxels
    markers = np.zeros(inner.shape, np.int32)
    if n_parts:
        markers, _ = ndi.label(_seeds_3d(depth, parts, n_parts, config.min_seed_size))
    labels = watershed(-depth, markers, mask=foreground)
    orphans, n = ndi.label(foreground & (labels == 0))
    if n:  # foreground without a seed is still an object
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    labels = split_at_z_necks(labels)
    size = config.min_size if min_size is None else min_size
    labels = drop_small(labels, size, min(size, config.edge_size))
    return relabel_sequential(labels)[0].astype(np.uint32, copy=False)


NECK = 0.6  # a plane whose section is below this share of the largest sections above and below it is a neck


def split_at_z_necks(labels: np.ndarray) -> np.ndarray:
    """3D ``labels`` with each object that narrows to a neck in z (a plane whose section is below
    :data:`NECK` of the largest sections on both sides, with at least two planes on each side) cut
    there: two nuclei stacked in z that share one seed. The neck plane goes to the side it overlaps more."""
    labels = labels.astype(np.int64, copy=True)
    next_id = int(labels.max()) + 1
    for i, box in enumerate(ndi.find_objects(labels), 1):
        if box is None:
            continue
        todo = [(i, box[0].start, box[0].stop)]
        while todo:
            label, z0, z1 = todo.pop()
            obj = labels[z0:z1, box[1], box[2]] == label
            area = obj.sum(axis=(1, 2)).astype(np.float64)
            best, cut = NECK, None
            for z in range(2, len(area) - 2):
                ratio = area[z] / max(min(area[:z].max(), area[z + 1 :].max()), 1.0)
                if ratio < best:
                    best, cut = ratio, z
            if cut is None:
                continue
            above = (obj[cut] & obj[cut - 1]).sum() >= (obj[cut] & obj[cut + 1]).sum()
            start = z0 + cut + (1 if above else 0)
            part = labels[start:z1, box[1], box[2]]
            part[part == label] = next_id
            todo += [(label, z0, start), (next_id, start, z1)]
            next_id += 1
    return labels


def link_frames(frames: np.ndarray, *, max_gap: int = 1, min_iou: float = 0.1, moving: bool = True) -> np.ndarray:
    """Labels ``(T, ...)`` whose objects keep one id through time; each frame's labels are independent.

    First, an object cut in two in one frame only (its pieces lie in one object of the frame before
    and one of the frame after) is made whole again. Then the objects of each frame are assigned to
    the tracks of the previous frame by Hungarian assignment: on IoU (at least ``min_iou``) first,
    then on centroid distance (within the larger object's equivalent diameter; only when ``moving``)
    for objects that moved off their old place; objects left over are assigned, the same way, to
    tracks last seen up to ``max_gap`` frames earlier. A track whose object splits into two that each
    lie largely inside it and cover at least :data:`DAUGHTER` of its area, none continuing it (a
    division), ends; unmatched objects start new tracks. Ids are numbered 1..N in order of appearance.
    """
    frames = np.asarray(frames)
    out = np.zeros(frames.shape, dtype=np.uint32)
    last_seen: dict[int, int] = {}  # track id → frame index
    next_id = 1
    for t, frame in enumerate(frames):
        cur = relabel_sequential(frame.astype(np.int64, copy=False))[0]
        if 0 < t < len(frames) - 1:
            cur = _heal_cuts(cur, frames[t - 1], frames[t + 1])
        n_cur = int(cur.max())
        mapping = np.zeros(n_cur + 1, dtype=np.int64)
        for s in range(t - 1, max(-1, t - 2 - max_gap), -1):  # the previous frame first, then the gap
            alive = [k for k, seen in last_seen.items() if seen == s]
            todo = mapping == 0
            todo[0] = False
            if not alive or not n_cur or not todo.any():
                continue
            old = out[s].astype(np.int64)
            memory = np.where(np.isin(old, alive), old, 0)
            found, ended = _assign(np.where(todo[cur], cur, 0), memory, n_cur, min_iou, moving)
            mapping[todo] = found[todo]
            for k in ended:  # a division ends its track for good
                last_seen.pop(k, None)
        for i in range(1, n_cur + 1):
            if mapping[i] == 0:
                mapping[i] = next_id
                next_id += 1
            last_seen[int(mapping[i])] = t
        out[t] = mapping[cur]
    return out


def _heal_cuts(cur: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``cur`` with two objects at most a pixel apart merged where both overlap most the same object
    of the frame before and the same object of the frame after, and together match each of those
    better (IoU) than either does alone: one nucleus cut in two in one frame only."""
    n = int(cur.max())
    if n < 2:
        return cur
    area = np.bincount(cur.ravel(), minlength=n + 1)
    tables = []
    for other in (before, after):
        inter = _overlap_table(cur, np.asarray(other, dtype=np.int64))
        other_area = inter.sum(0)
        inter[:, 0] = 0
        tables.append((inter, inter.argmax(1), other_area))
    touching = set()  # pairs of objects at most one pixel apart
    for axis in range(cur.ndim):
        a = np.moveaxis(cur, axis, 0)
        for step in (1, 2):
            pair = np.stack([a[:-step].ravel(), a[step:].ravel()])
            pair = pair[:, (pair[0] != pair[1]) & (pair[0] > 0) & (pair[1] > 0)]
            touching.update(map(tuple, np.unique(np.sort(pair, axis=0), axis=1).T.tolist()))
    parent = np.arange(n + 1)
    for i, j in sorted(touching):
        whole = True
        for inter, home, other_area in tables:
            k = home[i]
            if k == 0 or home[j] != k or inter[i, k] == 0 or inter[j, k] == 0:
                whole = False
                break
            iou = [inter[x, k] / (area[x] + other_area[k] - inter[x, k]) for x in (i, j)]
            both = inter[i, k] + inter[j, k]
            whole &= both / (area[i] + area[j] + other_area[k] - both) > max(iou)
        if whole:
            ri, rj = parent[i], parent[j]
            parent[parent == max(ri, rj)] = min(ri, rj)
    if (parent == np.arange(n + 1)).all():
        return cur
    return relabel_sequential(parent[cur])[0]


def _assign(
    cur: np.ndarray, memory: np.ndarray, n_cur: int, min_iou: float, moving: bool
) -> tuple[np.ndarray, list[int]]:
    """Track id for each object 1..n_cur of ``cur`` (0: none) from the open tracks in ``memory``,
    and the tracks that divided."""
    tracks, mem = np.unique(memory, return_inverse=True)
    mem = mem.reshape(memory.shape)
    n_mem = len(tracks)  # index 0 is background
    overlap = _overlap_table(cur, mem, n_cur)
    area_c, area_m = overlap.sum(1), overlap.sum(0)
    inter = overlap[1:, 1:].astype(np.float64)
    iou = inter / np.maximum(area_c[1:, None] + area_m[None, 1:] - inter, 1)
    cost = np.where(iou >= min_iou, 1.0 - iou, _NO)
    centre_c, centre_m = _centroids(cur, n_cur + 1)[1:], _centroids(mem, n_mem)[1:]
    dist = np.linalg.norm(centre_c[:, None, :] - centre_m[None, :, :], axis=-1)
    reach = 2 * np.sqrt(np.maximum(area_c[1:, None], area_m[None, 1:]) / np.pi)
    near = (cost >= _NO) & (dist <= reach) & moving
    cost[near] = 1.0 + dist[near] / reach[near]
    cost[area_c[1:] == 0] = _NO  # objects assigned already (absent from ``cur``)
    inside = inter / np.maximum(area_c[1:, None], 1)  # fraction of each object inside each old one
    # a division: no object continues the old one (IoU < 0.5) and two or more daughters (at least
    # DAUGHTER of its area, not a fragment that came apart from it) lie largely inside it
    daughters = (inside >= 0.3) & (iou < 0.5) & (area_c[1:, None] >= DAUGHTER * area_m[None, 1:])
    divided = (daughters.sum(0) >= 2) & (iou.max(0) < 0.5)
    cost[:, divided] = _NO
    rows, cols = linear_sum_assignment(cost)
    mapping = np.zeros(n_cur + 1, dtype=np.int64)
    ok = cost[rows, cols] < _NO
    mapping[rows[ok] + 1] = tracks[cols[ok] + 1]
    return mapping, tracks[1:][divided].tolist()


def _overlap_table(a: np.ndarray, b: np.ndarray, n_a: int = 0) -> np.ndarray:
    """Pixels shared by each label of ``a`` (rows 0..max(a.max(), ``n_a``)) and each label of ``b``
    (columns 0..b.max()); row and column 0 are the background, so the sums are the areas."""
    rows, cols = max(int(a.max()), n_a) + 1, int(b.max()) + 1
    pairs = a.ravel().astype(np.int64) * cols + b.ravel()
    return np.bincount(pairs, minlength=rows * cols).reshape(rows, cols)


def _centroids(labels: np.ndarray, n: int) -> np.ndarray:
    """``(n, ndim)`` centroids of labels 0..n-1 (NaN-free: empty labels sit at the origin)."""
    counts = np.maximum(np.bincount(labels.ravel(), minlength=n), 1)
    grids = np.indices(labels.shape, sparse=True)
    return np.stack(
        [
            np.bincount(labels.ravel(), weights=np.broadcast_to(g, labels.shape).ravel(), minlength=n) / counts
            for g in grids
        ],
        axis=1,
    )
