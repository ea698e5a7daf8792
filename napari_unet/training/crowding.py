"""Copy-paste crowding: real nuclei, cut out with their masks from the training images, pasted
into training crops so that they touch other nuclei, at random scales.

Touching nuclei are what the network must learn to separate, and the training images have too
few of them; pasting real nuclei (not drawn shapes) keeps their texture and edges realistic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_unet.engine.tiling import resize_planes


@dataclass(frozen=True)
class Nucleus:
    """A normalised ``(C, h, w)`` patch and the nucleus mask inside it."""

    image: np.ndarray
    mask: np.ndarray


def nucleus_bank(
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], *, min_area: int = 30, margin: int = 2
) -> list[Nucleus]:
    """Every nucleus of ``[(image (C, H, W), labels, reviewed or None)]`` that is not cut by the
    image border and lies wholly in reviewed pixels."""
    bank = []
    for image, labels, reviewed in samples:
        h, w = labels.shape
        for i, sl in enumerate(ndi.find_objects(labels), start=1):
            if sl is None:
                continue
            (y0, y1), (x0, x1) = (sl[0].start, sl[0].stop), (sl[1].start, sl[1].stop)
            if y0 == 0 or x0 == 0 or y1 == h or x1 == w:
                continue
            y0, x0, y1, x1 = max(0, y0 - margin), max(0, x0 - margin), min(h, y1 + margin), min(w, x1 + margin)
            mask = labels[y0:y1, x0:x1] == i
            if mask.sum() < min_area or (reviewed is not None and not reviewed[y0:y1, x0:x1][mask].all()):
                continue
            bank.append(Nucleus(np.ascontiguousarray(image[:, y0:y1, x0:x1], dtype=np.float32), mask))
    return bank


def _transformed(rng: np.random.Generator, nucleus: Nucleus, zoom: float) -> tuple[np.ndarray, np.ndarray]:
    k, flip = int(rng.integers(4)), rng.random() < 0.5
    img, mask = np.rot90(nucleus.image, k, axes=(1, 2)), np.rot90(nucleus.mask, k)
    if flip:
        img, mask = img[:, :, ::-1], mask[:, ::-1]
    size = (max(3, round(mask.shape[0] * zoom)), max(3, round(mask.shape[1] * zoom)))
    img = resize_planes(img, size)
    mask = resize_planes(mask[None].astype(np.float32), size)[0] > 0.5
    return img, mask


def paste_touching(
    rng: np.random.Generator,
    image: np.ndarray,
    labels: np.ndarray,
    bank: list[Nucleus],
    scale: float,
    count: int,
    reviewed: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Paste ``count`` nuclei from ``bank`` into a crop whose objects are ``scale`` times their
    original size; each is slid out from an existing nucleus along a random direction until it
    no longer overlaps any nucleus, so it touches (within a pixel) the one it started from."""
    image, labels = image.copy(), labels.copy()
    reviewed = None if reviewed is None else reviewed.copy()
    h, w = labels.shape
    for _ in range(count):
        patch, mask = _transformed(rng, bank[int(rng.integers(len(bank)))], scale * np.exp(rng.uniform(-0.3, 0.3)))
        ph, pw = mask.shape
        fg = np.argwhere(labels > 0)
        if len(fg):
            cy, cx = fg[int(rng.integers(len(fg)))].astype(float)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        theta = rng.uniform(0, 2 * np.pi)
        dy, dx = np.sin(theta), np.cos(theta)
        for r in range(0, 2 * max(h, w)):
            y0, x0 = round(cy + r * dy - ph / 2), round(cx + r * dx - pw / 2)
            ys, xs = slice(max(0, y0), min(h, y0 + ph)), slice(max(0, x0), min(w, x0 + pw))
            if ys.start >= ys.stop or xs.start >= xs.stop:
                break  # slid out of the crop
            sub = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
            if not (sub & (labels[ys, xs] > 0)).any():
                if sub.sum() < 0.5 * mask.sum():
                    break  # mostly outside the crop
                alpha = np.clip(ndi.gaussian_filter(sub.astype(np.float32), 0.7), 0, 1)
                alpha = np.where(alpha < 0.02, 0, np.maximum(alpha, sub))  # a soft 1-2 px edge
                gain = rng.uniform(0.7, 1.3)
                part = patch[:, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0] * gain
                image[:, ys, xs] = image[:, ys, xs] * (1 - alpha) + part * alpha
                labels[ys, xs][sub] = labels.max() + 1
                if reviewed is not None:
                    reviewed[ys, xs][sub] = 1
                break
    return image, labels, reviewed
