"""A crowded validation proxy built ONLY from mnfinder ``validation-data`` (never test-data).

Per validation image: a *composite* (its own nuclei cut out with their masks and pasted so that
each touches another nucleus, doubling the density), the image shrunk 0.5× (small nuclei), and
the composite shrunk 0.5× (small and crowded). Deterministic: the same files every run.

``--hard`` writes the *hard* proxy instead (:func:`build_hard_proxy`), again from validation-data
only: small nuclei (20–30 px across) packed with 1–2 px dark gaps, and one failure mode per variant
(bright condensed nuclei among dim ones, cytoplasmic signal around the nuclei, micronuclei beside
them, and all of them together).

    .venv/bin/python scripts/make_crowded_proxy.py --out crowded_proxy/
    .venv/bin/python scripts/make_crowded_proxy.py --hard --out hard_proxy/
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).parent))
from mnfinder_data import load_split, read_mask  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from napari_unet.engine.normalize import Normalization  # noqa: E402
from napari_unet.engine.postprocess import median_object_area  # noqa: E402
from napari_unet.engine.tiling import resize_planes  # noqa: E402
from napari_unet.training.crowding import Nucleus, nucleus_bank, paste_touching  # noqa: E402
from napari_unet.training.crowding import _transformed as transformed  # noqa: E402


def shrink(image: np.ndarray, labels: np.ndarray, factor: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    size = (round(image.shape[0] * factor), round(image.shape[1] * factor))
    small = resize_planes(image[None].astype(np.float32), size)[0]
    lab = resize_planes(labels[None].astype(np.float32), size, nearest=True)[0].astype(np.int32)
    return small, lab


def composite(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The image normalised, with its own nuclei cut out and pasted so that each touches another
    (twice the density): ``(float32 image, int32 labels)``."""
    img = Normalization().apply(image[None])
    labels = labels.astype(np.int32)
    bank = nucleus_bank([(img, labels, None)])
    comp, comp_lab, _ = paste_touching(rng, img, labels, bank, 1.0, int(labels.max()))
    return comp[0], comp_lab


def build_proxy(seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``[(name, float32 image, int32 labels)]``: composites, shrunk images, shrunk composites."""
    out = []
    for i, (name, image, labels) in enumerate(load_split("validation-data")):
        comp, comp_lab = composite(image, labels, np.random.default_rng(seed + i))
        tag = name.replace("/", "_")
        out.append((f"{tag}_composite", comp, comp_lab))
        out.append((f"{tag}_half", *shrink(Normalization().apply(image[None])[0], labels.astype(np.int32))))
        out.append((f"{tag}_composite_half", *shrink(comp, comp_lab)))
    return out


HARD_VARIANTS = ("touching", "bright", "cytoplasm", "micronuclei", "all")
GLOW = 0.8  # light in the 1-2 px gaps, as a fraction of the nuclei around them (out-of-focus glow)


@dataclass
class HardImage:
    """One hard-proxy image: the float32 image, the true nuclei, and where each failure mode lies."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    bright: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # ids of the condensed nuclei
    cytoplasm: np.ndarray | None = None  # bool mask of the cytoplasmic signal (no nucleus in it)
    micronuclei: np.ndarray | None = None  # bool mask of the micronuclei (not nuclei: not in labels)


def _banks() -> tuple[list[Nucleus], list[Nucleus]]:
    """Nuclei and micronuclei of validation-data, cut out with their masks (normalised per image)."""
    nuclei, micro = [], []
    for name, image, labels in load_split("validation-data"):
        img = Normalization().apply(image[None])
        nuclei += nucleus_bank([(img, labels.astype(np.int32), None)], min_area=200)
        mn_path = next(Path(p) for p in _split_paths(name))
        mn = read_mask(mn_path)
        micro += nucleus_bank([(img, mn, None)], min_area=6, margin=1)
    return nuclei, micro


def _split_paths(name: str) -> list[Path]:
    from mnfinder_data import mnfinder_root

    folder, stem = name.split("/")
    return [mnfinder_root() / "validation-data" / folder / "mn_masks" / f"{stem}.png"]


def _diameter(mask: np.ndarray) -> float:
    return float(2 * np.sqrt(mask.sum() / np.pi))


def _place(rng: np.random.Generator, near: list[np.ndarray], mask: np.ndarray, gap: int,
           anchors: np.ndarray) -> tuple[int, int] | None:
    """Top-left corner where ``mask`` lies wholly inside the canvas and more than ``gap`` px from every
    occupied pixel (``near[gap]``: the occupied pixels grown by ``gap``), slid out from a random
    anchor pixel along a random direction; None if it leaves the canvas first."""
    h, w = near[gap].shape
    ph, pw = mask.shape
    cy, cx = anchors[int(rng.integers(len(anchors)))].astype(float)
    theta = rng.uniform(0, 2 * np.pi)
    for r in range(0, 2 * max(h, w)):
        y0, x0 = round(cy + r * np.sin(theta) - ph / 2), round(cx + r * np.cos(theta) - pw / 2)
        if y0 < 0 or x0 < 0 or y0 + ph > h or x0 + pw > w:
            return None
        if not (mask & near[gap][y0 : y0 + ph, x0 : x0 + pw]).any():
            return y0, x0
    return None


def _grown(occupied: np.ndarray, gaps: int = 4) -> list[np.ndarray]:
    """``occupied`` grown by 0, 1, … ``gaps - 1`` px (Euclidean)."""
    dist = ndi.distance_transform_edt(~occupied) if occupied.any() else np.full(occupied.shape, np.inf)
    return [dist <= g for g in range(gaps)]


def build_hard_image(seed: int, variant: str, nuclei: list[Nucleus], micro: list[Nucleus],
                     size: int = 320, clusters: int = 4, fill: float = 0.5) -> HardImage:
    """One deterministic hard-proxy image of ``variant`` (:data:`HARD_VARIANTS`).

    Nuclei are rescaled to 20–30 px across, brought to about the same brightness, and packed in
    ``clusters`` clumps, each 1 or 2 px from its neighbours, until they cover ``fill`` of the image;
    the gaps between two nuclei hold :data:`GLOW` of their light and the whole image is blurred
    (σ 1.2 px) and noisy, as a crowded field at low magnification is. ``bright``: one nucleus in
    ten is condensed (shrunk to 0.55–0.75×, intensity ×3–6). ``cytoplasm``: a dim textured ring
    (3–14 px out) around every nucleus, with brighter perinuclear blobs in a third of the cells.
    ``micronuclei``: real micronuclei, 5–9 px across, pasted 2–3 px beside one nucleus in four.
    ``all``: every one of them.
    """
    rng = np.random.default_rng(seed)
    every = variant == "all"
    image = np.zeros((size, size), np.float32)
    labels = np.zeros((size, size), np.int32)
    bright: list[int] = []
    centres = rng.uniform(0.2 * size, 0.8 * size, (clusters, 2))
    near = _grown(labels > 0)
    for _ in range(800):
        if (labels > 0).mean() >= fill:
            break
        nucleus = nuclei[int(rng.integers(len(nuclei)))]
        condensed = (every or variant == "bright") and rng.random() < 1 / 10
        zoom = rng.uniform(20, 30) / _diameter(nucleus.mask) * (rng.uniform(0.55, 0.75) if condensed else 1.0)
        patch, mask = transformed(rng, nucleus, zoom)
        anchors = centres if labels.max() < clusters else np.argwhere(labels > 0)
        spot = _place(rng, near, mask, int(rng.integers(1, 3)), anchors)
        if spot is None:
            continue
        y0, x0 = spot
        region = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
        gain = 0.5 / max(float(np.median(patch[0][mask])), 0.05)  # every nucleus about as bright
        gain *= rng.uniform(3, 6) if condensed else rng.uniform(0.9, 1.1)
        image[region][mask] = patch[0][mask] * gain
        labels[region][mask] = labels.max() + 1
        if condensed:
            bright.append(int(labels.max()))
        near = _grown(labels > 0)
    out = HardImage(f"hard_{variant}_{seed}", image, labels, np.array(bright, np.int64))
    big = np.iinfo(np.int32).max
    gaps = (labels == 0) & (ndi.maximum_filter(labels, 5) != ndi.minimum_filter(np.where(labels > 0, labels, big), 5))
    gaps &= ndi.minimum_filter(np.where(labels > 0, labels, big), 5) < big  # between two nuclei
    weight = ndi.gaussian_filter((labels > 0).astype(np.float32), 2)
    around = ndi.gaussian_filter(np.where(labels > 0, np.minimum(image, 1.0), 0), 2) / np.maximum(weight, 1e-6)
    image = np.where(gaps, GLOW * around, image).astype(np.float32)
    if every or variant == "cytoplasm":
        dist, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
        owner = labels[iy, ix]
        reach = rng.uniform(8, 14, labels.max() + 1)[owner]
        cyto = (dist >= 3) & (dist <= reach)
        texture = ndi.gaussian_filter(rng.normal(size=labels.shape), 3)
        texture = 1 + 0.5 * texture / (texture.std() + 1e-9)
        level = rng.uniform(0.1, 0.3, labels.max() + 1)[owner]
        signal = level * np.clip(texture, 0.2, None)
        for i in np.flatnonzero(rng.random(labels.max() + 1) < 1 / 3):
            ring = np.argwhere(cyto & (owner == i))
            if i == 0 or not len(ring):
                continue
            cy, cx = ring[int(rng.integers(len(ring)))]
            blob = np.zeros(labels.shape, np.float32)
            blob[cy, cx] = 1
            sigma = rng.uniform(2.5, 4.5)
            blob = ndi.gaussian_filter(blob, sigma)
            signal += rng.uniform(0.3, 0.6) * blob / blob.max()
        image = np.where(cyto, np.maximum(image, signal * cyto), image).astype(np.float32)
        out.cytoplasm = cyto
    if every or variant == "micronuclei":
        mn = np.zeros(labels.shape, bool)
        for i in np.flatnonzero(rng.random(labels.max() + 1) < 1 / 4):
            own = np.argwhere(labels == i)
            if i == 0 or not len(own):
                continue
            m = micro[int(rng.integers(len(micro)))]
            patch, mask = transformed(rng, m, rng.uniform(5, 9) / max(_diameter(m.mask), 1.0))
            spot = _place(rng, _grown((labels > 0) | mn), mask, int(rng.integers(2, 4)), own)
            if spot is None:
                continue
            y0, x0 = spot
            region = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
            image[region][mask] = patch[0][mask] * rng.uniform(0.8, 1.2)
            mn[region] |= mask
        out.micronuclei = mn
        if out.cytoplasm is not None:
            out.cytoplasm &= ~mn
    image = ndi.gaussian_filter(image, 1.2) + rng.normal(0, 0.02, image.shape)  # optics blur the 1-2 px gaps
    out.image = image.astype(np.float32)
    return out


def build_hard_proxy(seeds: tuple[int, ...] = (0, 1)) -> list[HardImage]:
    """The hard proxy: every variant of :data:`HARD_VARIANTS` for each seed (validation-data only)."""
    nuclei, micro = _banks()
    return [build_hard_image(1000 * k + s, variant, nuclei, micro)
            for k, variant in enumerate(HARD_VARIANTS) for s in seeds]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="crowded_proxy")
    ap.add_argument("--hard", action="store_true", help="write the hard proxy (build_hard_proxy) instead")
    args = ap.parse_args()
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    if args.hard:
        for item in build_hard_proxy():
            tifffile.imwrite(out / "images" / f"{item.name}.tif", item.image)
            tifffile.imwrite(out / "labels" / f"{item.name}.tif", item.labels.astype(np.uint32))
            print(f"{item.name}: {item.image.shape}, {item.labels.max()} nuclei ({len(item.bright)} bright), "
                  f"median area {median_object_area([item.labels]):.0f} px")
        return
    for name, image, labels in build_proxy():
        tifffile.imwrite(out / "images" / f"{name}.tif", image.astype(np.float32))
        tifffile.imwrite(out / "labels" / f"{name}.tif", labels.astype(np.uint32))
        print(f"{name}: {image.shape}, {len(np.unique(labels)) - 1} nuclei, "
              f"median area {median_object_area([labels]):.0f} px")


if __name__ == "__main__":
    main()
