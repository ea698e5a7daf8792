"""Training-time augmentation: random crops with rotation, flips, rescaling (0.5–2×), the
U-Net paper's elastic deformation, and intensity jitter — all in one resampling per crop — plus
optional imaging artefacts (dim non-nuclear signal, uneven illumination, low contrast, 8-bit
quantisation, dim nuclei) and low resolution (an image taken with larger pixels, then enlarged as
``scale="auto"`` enlarges small nuclei)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from napari_unet.engine.tiling import resize_planes


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms."""

    scale_min: float = 0.5
    scale_max: float = 2.0
    elastic_sigma: float = 10.0  # px of displacement std on a coarse 3×3 grid (U-Net paper)
    elastic_prob: float = 0.5
    intensity: float = 0.2  # contrast/brightness jitter amplitude
    gamma: float = 0.3
    noise: float = 0.05
    blur_prob: float = 0.2

    def to_dict(self) -> dict:
        return asdict(self)


def random_crop(
    rng: np.random.Generator,
    image: np.ndarray,
    labels: np.ndarray,
    reviewed: np.ndarray | None,
    size: int,
    config: AugmentConfig,
    *,
    foreground_bias: float = 0.7,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """A ``size``² crop of ``(C, H, W)`` ``image`` and its labels (and reviewed mask), transformed.

    With probability ``foreground_bias`` the crop is centred on a labelled pixel.
    """
    img, lab, rev, _ = transform_crop(rng, image, labels, reviewed, size, config, foreground_bias=foreground_bias)
    return jitter_intensity(rng, img, config).astype(np.float32), lab, rev


def transform_crop(
    rng: np.random.Generator,
    image: np.ndarray,
    labels: np.ndarray,
    reviewed: np.ndarray | None,
    size: int,
    config: AugmentConfig,
    *,
    foreground_bias: float = 0.7,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    """:func:`random_crop` before the intensity jitter, with the crop's magnification ``s``
    (objects are ``s`` times their size in ``image``)."""
    h, w = labels.shape
    # Crops are centred where the loss counts: on reviewed pixels (a labelled one with probability
    # ``foreground_bias``), so a sparsely reviewed image does not yield crops of ignored pixels.
    counted = labels if reviewed is None else np.where(reviewed > 0, labels, 0)
    if foreground_bias and rng.random() < foreground_bias and counted.any():
        cy, cx = _random_pixel(rng, counted)
    elif reviewed is not None and reviewed.any():
        cy, cx = _random_pixel(rng, reviewed, by_region=True)
    else:
        cy, cx = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
    # magnification s > 1 enlarges objects: output pixel step in the source is 1 / s
    s = float(np.exp(rng.uniform(np.log(config.scale_min), np.log(config.scale_max))))
    theta = rng.uniform(0, 2 * np.pi)
    flip = rng.random() < 0.5
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]]) / s
    if flip:
        rot = rot @ np.array([[1.0, 0.0], [0.0, -1.0]])
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    gy, gx = np.meshgrid(r, r, indexing="ij")
    coords = np.einsum("ij,jhw->ihw", rot, np.stack([gy, gx]))
    coords[0] += cy
    coords[1] += cx
    if rng.random() < config.elastic_prob and config.elastic_sigma > 0:
        coarse = rng.normal(0, config.elastic_sigma, size=(2, 3, 3))
        coords += ndi.zoom(coarse, (1, size / 3, size / 3), order=3, mode="nearest")[:, :size, :size] / s
    img = np.stack([ndi.map_coordinates(c, coords, order=1, mode="mirror") for c in image])
    lab = ndi.map_coordinates(labels, coords, order=0, mode="mirror")
    rev = None if reviewed is None else ndi.map_coordinates(reviewed, coords, order=0, mode="mirror")
    return img, lab, rev, s


def _random_pixel(rng: np.random.Generator, mask: np.ndarray, *, by_region: bool = False) -> tuple[float, float]:
    """A random nonzero pixel of ``mask`` (sampled on a 4-pixel grid unless that misses it); with
    ``by_region``, of a connected region of ``mask`` drawn with equal chances, whatever its size."""
    step = 4 if mask[::4, ::4].any() else 1  # tiny objects can fall between the subsampled pixels
    grid = mask[::step, ::step] > 0
    if by_region:
        regions, n = ndi.label(grid)
        grid = regions == rng.integers(1, n + 1)
    ys, xs = np.nonzero(grid)
    k = rng.integers(len(ys))
    return ys[k] * float(step), xs[k] * float(step)


def jitter_intensity(rng: np.random.Generator, img: np.ndarray, c: AugmentConfig) -> np.ndarray:
    if c.blur_prob and rng.random() < c.blur_prob:
        img = ndi.gaussian_filter(img, (0, *(2 * [rng.uniform(0.5, 1.5)])))
    if c.gamma:
        g = float(np.exp(rng.uniform(-c.gamma, c.gamma)))
        img = np.clip(img, 0, None) ** g
    img = img * rng.uniform(1 - c.intensity, 1 + c.intensity) + rng.uniform(-c.intensity, c.intensity) / 2
    if c.noise:
        img = img + rng.normal(0, rng.uniform(0, c.noise), img.shape)
    return img


def low_resolution(rng: np.random.Generator, img: np.ndarray, factors: tuple[float, float] = (1.5, 3.0)) -> np.ndarray:
    """``(C, H, W)`` ``img`` as if taken with pixels ``k`` times larger (``k`` drawn from
    ``factors``) and enlarged back to its size with the resize inference uses: same object size,
    the detail a coarser camera loses (the thin gaps between touching nuclei first)."""
    k = float(rng.uniform(*factors))
    h, w = img.shape[-2:]
    small = resize_planes(img, (max(1, round(h / k)), max(1, round(w / k))))
    return resize_planes(small, (h, w))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Smooth random field scaled to [-1, 1]."""
    f = ndi.gaussian_filter(rng.normal(size=shape), sigma, mode="wrap")
    return f / max(float(np.abs(f).max()), 1e-6)


def add_artefacts(rng: np.random.Generator, img: np.ndarray, labels: np.ndarray, scale: float) -> np.ndarray:
    """Imaging conditions the training images rarely show, on a normalised ``(C, H, W)`` crop whose
    objects are ``scale`` times their original size; each kind is applied with probability 1/2:
    dim textured signal around nuclei (cytoplasm) and dim debris, dim nuclei among bright ones,
    uneven illumination, and low contrast with coarse (8-bit-like) quantisation."""
    shape = labels.shape
    fg = labels > 0
    img = img.copy()
    if rng.random() < 0.5 and fg.any():  # dim cytoplasm-like signal around the nuclei
        dist = ndi.distance_transform_edt(~fg)
        reach = rng.uniform(3, 15) * scale
        texture = 0.5 + 0.5 * _smooth_noise(rng, shape, max(1.0, 2 * scale))
        cyto = np.clip(1 - dist / reach, 0, 1) ** 0.5 * (dist > 0) * texture
        img += rng.uniform(0.05, 0.35) * cyto
    if rng.random() < 0.5:  # dim structured debris
        blobs = np.clip(_smooth_noise(rng, shape, max(1.0, rng.uniform(2, 8) * scale)) - 0.3, 0, None)
        img += rng.uniform(0.05, 0.25) * blobs / max(float(blobs.max()), 1e-6) * ~fg
    if rng.random() < 0.5 and fg.any():  # some nuclei much dimmer than others
        factors = rng.uniform(0.3, 1.2, size=int(labels.max()) + 1)
        factors[0] = 1.0
        img = img * factors[labels]
    if rng.random() < 0.5:  # uneven illumination
        field = 1 + rng.uniform(0.1, 0.5) * _smooth_noise(rng, shape, shape[0] / 3)
        img = img * field
    if rng.random() < 0.5:  # low contrast, then quantised to few grey levels and stretched back
        levels = rng.uniform(6, 40)
        offset = rng.uniform(0, 0.3)
        img = (np.round((img + offset) * levels) / levels - offset) + rng.normal(0, 0.5 / levels, img.shape)
    return img
