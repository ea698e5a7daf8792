"""Synthetic z-stacks and time-lapses made from real mnfinder nuclei (MIT; training/validation data only).

* ``make_zstack``: each 2D nucleus of a crop becomes an ellipsoid: its mask and its real texture
  shrunk about its centre plane by plane, with a dimmer rim at the tips, at a given z/xy voxel
  ratio; blurred by an anisotropic PSF, with noise and empty (blur and noise only) planes above and
  below. A nucleus cut by the crop is shrunk about a point on the side it touches (its centroid
  moved onto that side; a corner when it touches two), so that in every plane it still reaches the
  stack's side face, in its truth as in its image. Neighbours that touch in 2D touch in 3D; with a
  second crop (``below``) a second layer of nuclei lies under the first, so nuclei also touch in z.
  Ground truth: one id per nucleus in 3D.
* ``make_timelapse``: the nuclei of a crop move (1–3 px a frame, random directions that drift),
  rotate, never overlap one another and stay inside the frame; ground truth keeps one id per nucleus.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def crowded_crop(image: np.ndarray, labels: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``side``² window of a 2D image holding the most nucleus pixels (objects cut by the window kept)."""
    fg = (labels > 0).astype(np.float64)
    if min(image.shape) <= side:
        return image[:side, :side].astype(np.float32), labels[:side, :side]
    density = ndi.uniform_filter(fg, side, mode="constant")
    half = side // 2
    inner = density[half : image.shape[0] - half, half : image.shape[1] - half]
    y, x = np.unravel_index(np.argmax(inner), inner.shape)
    lab = labels[y : y + side, x : x + side]
    lab = np.unique(lab, return_inverse=True)[1].reshape(lab.shape)
    return image[y : y + side, x : x + side].astype(np.float32), lab


def _face_centre(labels: np.ndarray, i: int) -> tuple:
    """The point about which ``make_zstack`` shrinks nucleus ``i``: its centroid, moved onto each side
    of the crop that the nucleus touches (onto a corner when it touches two adjacent sides; left as
    it is along an axis whose two opposite sides it both touches), so that every shrunk
    cross-section still touches that side, as those of a nucleus whose centre lies beyond the crop do."""
    mask = labels == i
    centre = np.array(ndi.center_of_mass(mask))
    for axis in (0, 1):
        first, last = np.take(mask, 0, axis).any(), np.take(mask, -1, axis).any()
        if first != last:
            centre[axis] = 0.0 if first else mask.shape[axis] - 1.0
    return tuple(centre)


def _warp(labels: np.ndarray, i: int, factor: float, angle: float, shift, shape, centre=None) -> tuple:
    """Source coordinates ``(sy, sx)`` of nucleus ``i`` scaled by ``factor`` about ``centre`` (default:
    the centre of mass of its visible part), rotated about it and shifted."""
    yy, xx = np.indices(shape, dtype=np.float32)
    cy, cx = ndi.center_of_mass(labels == i) if centre is None else centre
    ty, tx = yy - cy - shift[0], xx - cx - shift[1]
    c, s = np.cos(angle), np.sin(angle)
    return (c * ty - s * tx) / factor + cy, (s * ty + c * tx) / factor + cx


def _mask(labels: np.ndarray, i: int, coords) -> np.ndarray:
    return ndi.map_coordinates((labels == i).astype(np.float32), list(coords), order=1) > 0.5


def _render(
    image: np.ndarray, labels: np.ndarray, ids: np.ndarray, transforms: list, shape, centres: list | None = None
) -> tuple:
    """Paint each nucleus ``i`` (mask and texture) through its inverse map ``(factor, angle, shift, gain)``
    about its centre in ``centres`` (default: the centre of mass of its visible part)."""
    out_img = np.zeros(shape, np.float32)
    out_lab = np.zeros(shape, np.int32)
    for k, (i, (factor, angle, shift, gain)) in enumerate(zip(ids, transforms)):
        if factor <= 0:
            continue
        coords = _warp(labels, i, factor, angle, shift, shape, None if centres is None else centres[k])
        mask = _mask(labels, i, coords)
        tex = ndi.map_coordinates(image, list(coords), order=1)
        out_img[mask] = tex[mask] * gain
        out_lab[mask] = i
    return out_img, out_lab


def make_zstack(
    image: np.ndarray,
    labels: np.ndarray,
    ratio: float,
    rng: np.random.Generator,
    *,
    empty_planes: int = 4,
    noise: float = 0.03,
    below: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(stack uint16 (Z, H, W), ground truth (Z, H, W))``; ``ratio`` = z spacing / xy pixel size.

    Each nucleus's cross-sections are scaled about its centroid, or, for a nucleus cut by the crop,
    about a point on the side(s) it touches (``_face_centre``), so they reach the stack's side faces.

    ``below``: a second crop ``(image, labels)`` of the same size whose nuclei form a second layer
    under the first, so nuclei also touch in z (packed tissue).
    """
    layers = [(image, labels)] + ([below] if below is not None else [])
    halves = []
    for _, lab in layers:
        ids = np.unique(lab)[1:]
        areas = ndi.sum(np.ones_like(lab), lab, ids)
        halves.append(np.sqrt(areas / np.pi) * rng.uniform(0.7, 1.0, len(ids)) / ratio)  # half depth in planes
    top = max(h.max() for h in halves)
    body = int(np.ceil(2 * top * 1.3)) + 1
    # the second layer starts where the first one's thickest nuclei end, so the two layers touch
    offsets = [0.0, 2 * top] if below is not None else [0.0]
    depth = int(np.ceil(offsets[-1])) + body + 2 * empty_planes
    planes = np.zeros((depth,) + labels.shape, np.float32)
    truth = np.zeros((depth,) + labels.shape, np.int32)
    first_id = 0
    for (img, lab), half, offset in zip(layers, halves, offsets):
        ids = np.unique(lab)[1:]
        centres = [_face_centre(lab, i) for i in ids]
        zc = empty_planes + offset + rng.uniform(half, np.maximum(half, body - half))
        background = float(np.median(img[lab == 0])) if (lab == 0).any() else float(img.min())
        for z in range(depth):
            d = (z - zc) / np.maximum(half, 0.5)
            factor = np.sqrt(np.clip(1 - d**2, 0, 1))
            transforms = [(f, 0.0, (0.0, 0.0), 0.6 + 0.4 * f) for f in factor]
            plane, plab = _render(img - background, lab, ids, transforms, lab.shape, centres)
            inside = plab > 0
            planes[z][inside] = plane[inside]
            truth[z][inside] = plab[inside] + first_id
        first_id += int(lab.max())
    background = float(np.median(image[labels == 0])) if (labels == 0).any() else float(image.min())
    stack = ndi.gaussian_filter(planes, sigma=(max(0.3, 2.5 / ratio), 1.0, 1.0))
    peak = float(np.percentile(stack, 99.9))
    stack = stack + background + rng.normal(0, noise * peak, stack.shape)
    truth = np.unique(truth, return_inverse=True)[1].reshape(truth.shape).astype(np.int32)
    return np.clip(stack, 0, 65535).astype(np.uint16), truth


def make_timelapse(
    image: np.ndarray,
    labels: np.ndarray,
    frames: int,
    rng: np.random.Generator,
    *,
    speed: tuple[float, float] = (1.0, 3.0),
    noise: float = 0.03,
) -> tuple[np.ndarray, np.ndarray]:
    """``(frames uint16 (T, H, W), ground truth (T, H, W) with one id per nucleus)``.

    Nuclei move like cells in a monolayer: a move that would overlap another nucleus or take a
    nucleus's centre out of the frame is not made (the nucleus stays and turns).
    """
    ids = np.unique(labels)[1:]
    n = len(ids)
    heading = rng.uniform(0, 2 * np.pi, n)
    step = rng.uniform(*speed, n)
    spin = rng.uniform(-0.06, 0.06, n)
    pos = np.zeros((n, 2))
    centres = np.array(ndi.center_of_mass(np.ones_like(labels), labels, ids)).reshape(n, 2)
    shape = labels.shape
    masks = [_mask(labels, i, _warp(labels, i, 1.0, 0.0, (0.0, 0.0), shape)) for i in ids]
    background = float(np.median(image[labels == 0])) if (labels == 0).any() else float(image.min())
    movies, truth = [], []
    for t in range(frames):
        transforms = [(1.0, spin[k] * t, tuple(pos[k]), 1.0) for k in range(n)]
        img, lab = _render(image - background, labels, ids, transforms, shape)
        movies.append(ndi.gaussian_filter(img, 1.0))
        truth.append(lab)
        heading += rng.normal(0, 0.3, n)
        for k in rng.permutation(n):
            new = pos[k] + step[k] * np.array([np.sin(heading[k]), np.cos(heading[k])])
            centre = centres[k] + new
            if not (0 <= centre[0] < shape[0] and 0 <= centre[1] < shape[1]):
                heading[k] += np.pi
                continue
            mask = _mask(labels, ids[k], _warp(labels, ids[k], 1.0, spin[k] * (t + 1), tuple(new), shape))
            others = np.any([m for j, m in enumerate(masks) if j != k], axis=0) if n > 1 else np.zeros(shape, bool)
            if (mask & others).any():
                heading[k] += np.pi
                continue
            pos[k], masks[k] = new, mask
    movie = np.stack(movies)
    peak = float(np.percentile(movie, 99.9))
    movie = movie + background + rng.normal(0, noise * peak, movie.shape)
    return np.clip(movie, 0, 65535).astype(np.uint16), np.stack(truth)
