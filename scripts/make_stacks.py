"""Synthetic z-stacks and time-lapses made from real mnfinder nuclei (MIT; training/validation data only).

* ``make_zstack``: each 2D nucleus of a crop becomes an ellipsoid: its mask and its real texture
  shrunk about its centre plane by plane, with a dimmer rim at the tips, at a given z/xy voxel
  ratio; blurred by an anisotropic PSF, with noise and empty (blur and noise only) planes above and
  below. Neighbours that touch in 2D touch in 3D. Ground truth: one id per nucleus in 3D.
* ``make_timelapse``: the nuclei of a crop move (1–3 px a frame, random directions that drift),
  rotate and stay inside the frame; ground truth keeps one id per nucleus.
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


def _render(image: np.ndarray, labels: np.ndarray, ids: np.ndarray, transforms: list, shape) -> tuple:
    """Paint each nucleus ``i`` (mask and texture) through its inverse map ``(factor, angle, shift)``."""
    out_img = np.zeros(shape, np.float32)
    out_lab = np.zeros(shape, np.int32)
    yy, xx = np.indices(shape, dtype=np.float32)
    for i, (factor, angle, (dy, dx), gain) in zip(ids, transforms):
        if factor <= 0:
            continue
        cy, cx = ndi.center_of_mass(labels == i)
        ty, tx = yy - cy - dy, xx - cx - dx
        c, s = np.cos(angle), np.sin(angle)
        sy, sx = (c * ty - s * tx) / factor + cy, (s * ty + c * tx) / factor + cx
        mask = ndi.map_coordinates((labels == i).astype(np.float32), [sy, sx], order=1) > 0.5
        tex = ndi.map_coordinates(image, [sy, sx], order=1)
        out_img[mask] = tex[mask] * gain
        out_lab[mask] = i
    return out_img, out_lab


def make_zstack(image: np.ndarray, labels: np.ndarray, ratio: float, rng: np.random.Generator, *,
                empty_planes: int = 4, noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """``(stack uint16 (Z, H, W), ground truth (Z, H, W))``; ``ratio`` = z spacing / xy pixel size."""
    ids = np.unique(labels)[1:]
    areas = ndi.sum(np.ones_like(labels), labels, ids)
    half = np.sqrt(areas / np.pi) * rng.uniform(0.7, 1.0, len(ids)) / ratio  # half depth in planes
    body = int(np.ceil(2 * half.max() * 1.3)) + 1
    depth = body + 2 * empty_planes
    zc = empty_planes + rng.uniform(half, np.maximum(half, body - half))
    background = float(np.median(image[labels == 0])) if (labels == 0).any() else float(image.min())
    planes, truth = [], []
    for z in range(depth):
        d = (z - zc) / np.maximum(half, 0.5)
        factor = np.sqrt(np.clip(1 - d**2, 0, 1))
        transforms = [(f, 0.0, (0.0, 0.0), 0.6 + 0.4 * f) for f in factor]
        img, lab = _render(image - background, labels, ids, transforms, labels.shape)
        planes.append(img)
        truth.append(lab)
    stack = np.stack(planes)
    stack = ndi.gaussian_filter(stack, sigma=(max(0.3, 2.5 / ratio), 1.0, 1.0))
    peak = float(np.percentile(stack, 99.9))
    stack = stack + background + rng.normal(0, noise * peak, stack.shape)
    return np.clip(stack, 0, 65535).astype(np.uint16), np.stack(truth)


def make_timelapse(image: np.ndarray, labels: np.ndarray, frames: int, rng: np.random.Generator, *,
                   speed: tuple[float, float] = (1.0, 3.0), noise: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    """``(frames uint16 (T, H, W), ground truth (T, H, W) with one id per nucleus)``."""
    ids = np.unique(labels)[1:]
    n = len(ids)
    heading = rng.uniform(0, 2 * np.pi, n)
    step = rng.uniform(*speed, n)
    spin = rng.uniform(-0.06, 0.06, n)
    pos = np.zeros((n, 2))
    background = float(np.median(image[labels == 0])) if (labels == 0).any() else float(image.min())
    movies, truth = [], []
    for t in range(frames):
        transforms = [(1.0, spin[k] * t, tuple(pos[k]), 1.0) for k in range(n)]
        img, lab = _render(image - background, labels, ids, transforms, labels.shape)
        movies.append(ndi.gaussian_filter(img, 1.0))
        truth.append(lab)
        heading += rng.normal(0, 0.3, n)
        pos += step[:, None] * np.stack([np.sin(heading), np.cos(heading)], axis=1)
    movie = np.stack(movies)
    peak = float(np.percentile(movie, 99.9))
    movie = movie + background + rng.normal(0, noise * peak, movie.shape)
    return np.clip(movie, 0, 65535).astype(np.uint16), np.stack(truth)
