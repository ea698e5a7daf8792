"""Training-pairs folders: corrected labels exported from napari, read back for fine-tuning.

Layout (documented in the README, "Training-pairs folder")::

    PAIRS/images/<name>.tif     image plane as the user saw it (original dtype)
    PAIRS/labels/<name>.tif     uint32 instance labels, 0 = background
    PAIRS/reviewed/<name>.tif   optional uint8, nonzero = reviewed pixels (absent = all reviewed)
    PAIRS/pairs.json            manifest, written last: a pair is listed only once complete

A pair of reviewed objects (:func:`export_reviewed_objects`) lists their label ids in its manifest
entry (``object_ids``) with a fingerprint of the image plane (``image_key``): objects already
exported from the same image are not exported again. Reviewed background the user erased or
painted (erased false detections) is exported too, even without any reviewed object (a
background-only pair: empty labels, a reviewed mask); background pixels already exported from the
same image (read back from those pairs' reviewed masks) are not exported again. ``erased_regions``
records how many erased regions a pair holds. ``percentiles`` holds the values of the whole source
plane at :data:`PERCENTILES` (a single-channel plane), so a pair cropped from it is normalised as the
plane was when it was segmented. Older manifests simply lack these fields.

Every manifest update happens under an exclusive lock on ``PAIRS/.napari-unet-pairs.lock``, so
several napari windows or processes can export into one folder at once without losing pairs.
Pair files that are not listed (a crash between the files and the manifest) are reported as
orphans and re-listed by :func:`repair_pairs` (``napari-unet pairs repair PAIRS``).

Cellpose-style folders (``X.tif`` beside ``X_masks.tif``) are read too.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage as ndi

from napari_unet.engine.normalize import percentile_values
from napari_unet.errors import InputError, NapariUnetError, os_error_sentence
from napari_unet.io.atomic import atomic_path
from napari_unet.io.locking import exclusive_lock
from napari_unet.io.tiff import read_image
from napari_unet.training.verdict import erased_regions

FORMAT = "napari-unet-pairs"
FORMAT_VERSION = 1
MANIFEST = "pairs.json"
LOCK_NAME = ".napari-unet-pairs.lock"
LOCK_TIMEOUT = 30.0  # seconds to wait for another process's manifest update
CONTEXT = 32  # pixels of context kept around an exported rectangle
RING = 3  # pixels of background around each reviewed object that count as reviewed
PERCENTILES = (0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 50.0, 95.0, 98.0, 99.0, 99.5, 99.8, 99.9, 100.0)


@dataclass
class PairRecord:
    """One manifest entry."""

    name: str
    source: str = ""
    plane: list[int] = field(default_factory=list)
    crop: list[int] | None = None  # [y0, x0, y1, x1] of the saved region in the source plane
    time: str = ""
    model: str = ""
    edited_pixels: int | None = None
    reviewed: bool = False  # a reviewed mask file exists
    object_ids: list[int] | None = None  # the reviewed label ids of an object-wise export
    image_key: str = ""  # fingerprint of the image plane the object ids belong to
    erased_regions: int | None = None  # erased regions (reviewed background away from objects) in the pair
    percentiles: list[float] | None = None  # the source plane's values at PERCENTILES (single channel)


@dataclass
class Pair:
    """A validated pair loaded into memory."""

    name: str
    image: np.ndarray  # (H, W) or (H, W, C) as saved
    labels: np.ndarray  # (H, W) uint32
    reviewed: np.ndarray | None  # (H, W) bool or None
    percentiles: list[float] | None = None  # the source plane's values at PERCENTILES, when recorded


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.exists():
        return {"format": FORMAT, "version": FORMAT_VERSION, "pairs": []}
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("pairs"), list):
            raise ValueError("not a napari-unet pairs manifest")
        if not isinstance(data.get("version"), int) or data["version"] > FORMAT_VERSION:
            raise ValueError(f"pairs format version {data.get('version')!r} is newer than this napari-unet reads "
                             f"({FORMAT_VERSION}); please upgrade napari-unet-nuclei")
    except OSError as exc:
        raise InputError(os_error_sentence(exc, path)) from None
    except ValueError as exc:
        raise InputError(f"{path}: the pairs manifest is unreadable ({exc}).") from None
    return data


def _write_manifest(folder: Path, data: dict[str, Any]) -> None:
    with atomic_path(folder / MANIFEST) as tmp:
        tmp.write_text(json.dumps(data, indent=1))


def _manifest_lock(folder: Path):
    return exclusive_lock(folder / LOCK_NAME, timeout=LOCK_TIMEOUT, what=f"The pairs folder {folder}")


def _write_new(path: Path, data: np.ndarray) -> None:
    """Write atomically and never overwrite an existing file."""
    with atomic_path(path, overwrite=False) as tmp:
        tifffile.imwrite(tmp, data, compression="zlib")


def _unique_name(folder: Path, source: str, plane: tuple[int, ...]) -> str:
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in Path(source or "image").stem)[:40]
    where = "-".join(map(str, plane))
    stamp = time.strftime("%Y%m%d-%H%M%S")
    while True:
        name = f"{stem}{'-p' + where if where else ''}-{stamp}-{secrets.token_hex(2)}"
        if not (folder / "images" / f"{name}.tif").exists():
            return name


def export_pair(
    folder: Path | str,
    image: np.ndarray,
    labels: np.ndarray,
    *,
    rect: tuple[int, int, int, int] | None = None,
    reviewed: np.ndarray | None = None,
    source: str = "",
    plane: tuple[int, ...] = (),
    model: str = "",
    edited_pixels: int | None = None,
    origin: tuple[int, int] = (0, 0),
    object_ids: list[int] | None = None,
    image_key: str = "",
    allow_background: bool = False,
) -> PairRecord:
    """Write a new pair for one image plane and its corrected labels; return its manifest entry.

    ``rect = (y0, x0, y1, x1)`` limits the reviewed region to a rectangle (the saved crop keeps
    some context around it); ``reviewed`` gives an arbitrary reviewed mask instead. ``origin``:
    where ``image[0, 0]`` lies in the source plane, when only a region of a large plane is given.
    ``object_ids`` and ``image_key`` are recorded as given (see :func:`export_reviewed_objects`).
    ``allow_background``: a reviewed region without any object is exported (reviewed background only).
    The values of a single-channel ``image`` at :data:`PERCENTILES` are recorded before any crop.
    """
    folder = Path(folder)
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise InputError(f"The image plane is {image.shape[:2]} but the labels are {labels.shape}.")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min(initial=0) < 0:
        raise InputError("Labels must be non-negative integers.")
    if not labels.any() and not allow_background:
        raise InputError("The labels are empty; paint some objects before exporting.")
    percentiles = percentile_values(image, PERCENTILES) if image.ndim == 2 else None
    crop = None
    if rect is not None:
        y0, x0, y1, x1 = (int(v) for v in rect)
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(labels.shape[0], y1), min(labels.shape[1], x1)
        if y1 - y0 < 8 or x1 - x0 < 8:
            raise InputError("The rectangle is smaller than 8×8 pixels inside the image.")
        cy0, cx0 = max(0, y0 - CONTEXT), max(0, x0 - CONTEXT)
        cy1, cx1 = min(labels.shape[0], y1 + CONTEXT), min(labels.shape[1], x1 + CONTEXT)
        mask = np.zeros(labels.shape, bool)
        mask[y0:y1, x0:x1] = True
        if reviewed is not None:
            mask &= np.asarray(reviewed, bool)
        image, labels, reviewed = image[cy0:cy1, cx0:cx1], labels[cy0:cy1, cx0:cx1], mask[cy0:cy1, cx0:cx1]
        oy, ox = (int(v) for v in origin)
        crop = [cy0 + oy, cx0 + ox, cy1 + oy, cx1 + ox]
        if not (reviewed.any() if allow_background else labels[reviewed].any()):
            raise InputError("There are no labelled objects inside the rectangle.")
    if reviewed is not None and np.asarray(reviewed).shape != labels.shape:
        raise InputError("The reviewed mask does not have the shape of the labels.")

    try:
        for sub in ("images", "labels", "reviewed"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        name = _unique_name(folder, source, plane)
        _write_new(folder / "images" / f"{name}.tif", image)
        _write_new(folder / "labels" / f"{name}.tif", labels.astype(np.uint32))
        if reviewed is not None:
            _write_new(folder / "reviewed" / f"{name}.tif", np.asarray(reviewed).astype(np.uint8))
        record = PairRecord(
            name=name, source=source, plane=list(plane), crop=crop, time=time.strftime("%Y-%m-%dT%H:%M:%S"),
            model=model, edited_pixels=edited_pixels, reviewed=reviewed is not None,
            object_ids=object_ids, image_key=image_key, percentiles=percentiles,
            erased_regions=None if reviewed is None else int(erased_regions(labels, np.asarray(reviewed)).max()),
        )
        with _manifest_lock(folder):  # read-modify-write: another exporter may be doing the same
            manifest = _read_manifest(folder)
            manifest["pairs"].append(asdict(record))
            _write_manifest(folder, manifest)
    except OSError as exc:
        raise InputError(f"Could not save the training pair: {os_error_sentence(exc)}") from None
    return record


def image_fingerprint(image: np.ndarray) -> str:
    """A short fingerprint of an image plane's pixels, shape and type: which image objects came from."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha1(f"{image.shape}{image.dtype.str}".encode())
    digest.update(memoryview(image).cast("B"))
    return digest.hexdigest()[:20]


def exported_object_ids(folder: Path | str, key: str) -> set[int]:
    """The label ids already exported from the image with fingerprint ``key`` into ``folder``."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        return set()
    return {int(i) for p in _read_manifest(folder)["pairs"] if isinstance(p, dict) and p.get("image_key") == key
            for i in (p.get("object_ids") or []) if isinstance(i, int)}


def exported_background(folder: Path | str, key: str, shape: tuple[int, int],
                        origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Background pixels of the plane (``shape``, its corner at ``origin`` in the source plane)
    already exported as reviewed from the image with fingerprint ``key`` into ``folder``."""
    folder = Path(folder)
    out = np.zeros(shape, bool)
    if not (folder / MANIFEST).exists():
        return out
    for p in _read_manifest(folder)["pairs"]:
        if not (isinstance(p, dict) and p.get("image_key") == key and p.get("reviewed") and p.get("crop")):
            continue
        try:
            reviewed = read_image(folder / "reviewed" / f"{p['name']}.tif") != 0
            labels = read_image(folder / "labels" / f"{p['name']}.tif")
        except (NapariUnetError, OSError, ValueError):
            continue  # a missing or damaged pair: read_pairs reports it
        y0, x0 = p["crop"][0] - origin[0], p["crop"][1] - origin[1]
        if reviewed.shape != labels.shape or y0 < 0 or x0 < 0:
            continue
        h, w = min(reviewed.shape[0], shape[0] - y0), min(reviewed.shape[1], shape[1] - x0)
        if h > 0 and w > 0:
            out[y0:y0 + h, x0:x0 + w] |= reviewed[:h, :w] & (labels[:h, :w] == 0)
    return out


def export_reviewed_objects(
    folder: Path | str,
    image: np.ndarray,
    labels: np.ndarray,
    reviewed_ids: list[int] | set[int] | np.ndarray,
    touched: np.ndarray | None = None,
    *,
    ring: int = RING,
    source: str = "",
    plane: tuple[int, ...] = (),
    model: str = "",
    origin: tuple[int, int] = (0, 0),
) -> PairRecord | None:
    """Write a sparse pair: only the reviewed objects (and ``ring`` pixels of background around
    them) and the background the user painted or erased (``touched``) count for training; the rest
    of the plane is ignored by the loss. With no reviewed object, the touched background alone (the
    user's erased false detections) makes the pair. Objects and touched background already exported
    from this image are left out; returns None (writing nothing) when nothing is left. The saved
    image is cropped to the reviewed region with :data:`CONTEXT` pixels around it."""
    image, labels = np.asarray(image), np.asarray(labels)
    if image.shape[:2] != labels.shape:
        raise InputError(f"The image plane is {image.shape[:2]} but the labels are {labels.shape}.")
    if touched is not None and np.asarray(touched).shape != labels.shape:
        raise InputError("The painted-pixels mask does not have the shape of the labels.")
    key = image_fingerprint(image)
    wanted = {int(i) for i in np.asarray(list(reviewed_ids)).ravel() if int(i) > 0}
    present = wanted & set(np.unique(labels).tolist())
    background = np.zeros(labels.shape, bool) if touched is None else np.asarray(touched, bool) & (labels == 0)
    if not present and not background.any():
        raise InputError("None of the reviewed objects is in the labels, and no background was erased.")
    new = sorted(present - exported_object_ids(folder, key))
    if background.any():
        background &= ~exported_background(folder, key, labels.shape, origin)
    if not new and not background.any():
        return None
    objects = np.isin(labels, new)
    near = ndi.binary_dilation(objects, iterations=ring) if ring > 0 and new else objects
    mask = objects | (near & (labels == 0)) | background
    ys, xs = np.nonzero(mask)
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    y0, x0 = max(0, min(y0, y1 - 8)), max(0, min(x0, x1 - 8))  # the rectangle is at least 8×8
    y1, x1 = max(y1, y0 + 8), max(x1, x0 + 8)
    edited = None if touched is None else int(np.count_nonzero(touched))
    return export_pair(folder, image, labels, rect=(y0, x0, y1, x1), reviewed=mask, source=source, plane=plane,
                       model=model, edited_pixels=edited, origin=origin, object_ids=new, image_key=key,
                       allow_background=True)


def count_pairs(folder: Path | str) -> int:
    """Number of pairs listed in a napari-unet pairs folder (0 if none yet)."""
    folder = Path(folder)
    try:
        return len(_read_manifest(folder)["pairs"]) if folder.is_dir() else 0
    except InputError:
        return 0


def _load_pair(name: str, image_path: Path, labels_path: Path, reviewed_path: Path | None,
               percentiles: list[float] | None = None) -> Pair:
    image = read_image(image_path)
    labels = read_image(labels_path)
    if image.ndim == 3 and image.shape[-1] not in (3, 4) and image.shape[0] <= 4:
        image = np.moveaxis(image, 0, -1)  # (C, H, W) → (H, W, C)
    if labels.ndim != 2:
        raise InputError(f"labels are {labels.ndim}D; one 2D plane is expected")
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels have data type {labels.dtype}; integers are expected")
    if image.shape[:2] != labels.shape:
        raise InputError(f"image is {image.shape[:2]} but labels are {labels.shape}")
    if not labels.any() and reviewed_path is None:
        raise InputError("labels are empty")
    reviewed = None
    if reviewed_path is not None:  # a sparse pair: reviewed background alone (erased false detections) is fine
        reviewed = read_image(reviewed_path) != 0
        if reviewed.shape != labels.shape:
            raise InputError(f"reviewed mask is {reviewed.shape} but labels are {labels.shape}")
        if not reviewed.any():
            raise InputError("the reviewed region is empty")
    return Pair(name, image, labels.astype(np.uint32), reviewed, percentiles if image.ndim == 2 else None)


def _percentiles(entry: Any) -> list[float] | None:
    """A manifest entry's ``percentiles`` when it is a non-decreasing list of finite numbers, one
    for each of :data:`PERCENTILES`; None otherwise (the pair is then normalised on its own)."""
    values = entry.get("percentiles") if isinstance(entry, dict) else None
    if not isinstance(values, list) or len(values) != len(PERCENTILES):
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values):
        return None
    return [float(v) for v in values] if all(a <= b for a, b in zip(values, values[1:])) else None


def _manifest_names(manifest: dict[str, Any]) -> list[str]:
    return [p["name"] for p in manifest["pairs"] if isinstance(p, dict) and isinstance(p.get("name"), str)]


def _listed_names(folder: Path) -> list[str]:
    return _manifest_names(_read_manifest(folder))


def find_orphans(folder: Path | str, listed: list[str] | None = None) -> list[str]:
    """Names of pair files in ``images/`` or ``labels/`` that the manifest does not list
    (``listed``: the manifest's names when the caller has already read them)."""
    folder = Path(folder)
    if not (folder / MANIFEST).exists():
        return []
    listed_set = set(_listed_names(folder) if listed is None else listed)
    found = {p.stem for sub in ("images", "labels") for p in (folder / sub).glob("*.tif") if not p.name.startswith(".")}
    return sorted(found - listed_set)


def repair_pairs(folder: Path | str) -> tuple[list[str], list[tuple[str, str]]]:
    """Re-list complete orphan pairs in the manifest; return (re-listed names, (name, reason) left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such pairs folder.")
    relisted, left = [], []
    try:
        with _manifest_lock(folder):
            manifest = _read_manifest(folder)
            for name in find_orphans(folder, _manifest_names(manifest)):
                image_path, labels_path = folder / "images" / f"{name}.tif", folder / "labels" / f"{name}.tif"
                rev = folder / "reviewed" / f"{name}.tif"
                try:
                    _load_pair(name, image_path, labels_path, rev if rev.exists() else None)
                except (NapariUnetError, ValueError) as exc:
                    left.append((name, _reason(exc, image_path, labels_path)))
                    continue
                record = PairRecord(name=name, source="(re-listed by repair)", reviewed=rev.exists(),
                                    time=time.strftime("%Y-%m-%dT%H:%M:%S"))
                manifest["pairs"].append(asdict(record))
                relisted.append(name)
            if relisted:
                _write_manifest(folder, manifest)
    except OSError as exc:
        raise InputError(f"Could not repair {folder}: {os_error_sentence(exc)}") from None
    return relisted, left


def _reason(exc: Exception, image_path: Path, labels_path: Path) -> str:
    """Why a pair cannot be used, without repeating its file paths."""
    return str(exc).replace(f"{image_path}: ", "").replace(f"{labels_path}: ", "")


def read_pairs(folder: Path | str) -> tuple[list[Pair], list[tuple[str, str]]]:
    """Valid pairs of a folder, and ``(name, reason)`` for each pair skipped (also warned).

    Unlisted pair files (orphans) are warned about too; ``repair_pairs`` re-lists complete ones.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such pairs folder.")
    candidates: list[tuple[str, Path, Path, Path | None]] = []
    recorded: dict[str, list[float] | None] = {}  # the source planes' percentiles, by pair name
    if (folder / MANIFEST).exists() or (folder / "images").is_dir():
        if (folder / MANIFEST).exists():
            manifest = _read_manifest(folder)
            names = _manifest_names(manifest)
            recorded = {p["name"]: _percentiles(p) for p in manifest["pairs"] if isinstance(p, dict)
                        and isinstance(p.get("name"), str)}
            orphans = find_orphans(folder, names)
            if orphans:
                warnings.warn(
                    f"{len(orphans)} pair file(s) in {folder} are not listed in {MANIFEST} ({', '.join(orphans[:5])}"
                    f"{', …' if len(orphans) > 5 else ''}); run 'napari-unet pairs repair {folder}' to re-list them.",
                    stacklevel=2,
                )
        else:  # no manifest: an image without a labels file (an export stopped before it) is no pair
            images = sorted(p.stem for p in (folder / "images").glob("*.tif") if not p.name.startswith("."))
            names = [n for n in images if (folder / "labels" / f"{n}.tif").exists()]
            if len(names) < len(images):
                warnings.warn(f"{len(images) - len(names)} image(s) in {folder / 'images'} have no labels file "
                              "and are not used.", stacklevel=2)
        for name in names:
            rev = folder / "reviewed" / f"{name}.tif"
            candidates.append((name, folder / "images" / f"{name}.tif", folder / "labels" / f"{name}.tif",
                               rev if rev.exists() else None))
    else:  # cellpose style: X.tif beside X_masks.tif
        for mask in sorted(folder.glob("*_masks.tif*")):
            stem = mask.name.split("_masks.tif")[0]
            image = next((p for p in (folder / f"{stem}.tif", folder / f"{stem}.tiff") if p.exists()), None)
            candidates.append((stem, image or folder / f"{stem}.tif", mask, None))
    pairs, skipped = [], []
    for name, image_path, labels_path, reviewed_path in candidates:
        try:
            pairs.append(_load_pair(name, image_path, labels_path, reviewed_path, recorded.get(name)))
        except (NapariUnetError, ValueError) as exc:
            reason = _reason(exc, image_path, labels_path)
            skipped.append((name, reason))
            warnings.warn(f"Skipping pair {name!r}: {reason}", stacklevel=2)
    return pairs, skipped
