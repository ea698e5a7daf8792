"""Image files with their metadata (axis names, pixel size), and labels written with the same.

TIFF, OME-TIFF and ImageJ hyperstacks are read by :func:`~napari_unet.io.tiff.read_image`; their
axes (``TZCYX``…) and pixel size come from the metadata, so the channel axis is known rather than
guessed from the shape. PNG and JPEG (8- or 16-bit) are read with Pillow; a colour file whose
channels are equal is read as grey.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_unet.errors import InputError
from napari_unet.io.lazy import stem
from napari_unet.io.pixel_size import plausible_pixel_size, tiff_pixel_size, tiff_z_spacing
from napari_unet.io.tiff import open_tiff, read_image, write_tiff_atomic

PIL_SUFFIXES = (".png", ".jpg", ".jpeg")
CHANNEL_AXES = "CS"  # tifffile's axis letters for channels and colour samples


@dataclass(frozen=True)
class ImageFile:
    """An image's pixels, its axis letters (tifffile's, e.g. ``ZCYX``; None if unknown), pixel size
    and z-plane spacing (µm)."""

    data: np.ndarray
    axes: str | None = None
    pixel_size_um: float | None = None
    z_spacing_um: float | None = None

    @property
    def stack_mode(self) -> str:
        """How a stack is segmented by default: ``"time"`` when the axes name T, ``"3d"`` when they name
        Z (more than one plane), else ``"planes"``."""
        axes, shape = self.axes or "", self.data.shape
        if "T" in axes and shape[axes.index("T")] > 1:
            return "time"
        if "Z" in axes and shape[axes.index("Z")] > 1:
            return "3d"
        return "planes"

    @property
    def voxel_size(self) -> tuple[float, float, float] | None:
        """``(z, y, x)`` µm when both the plane spacing and the pixel size are known."""
        if self.z_spacing_um is None or self.pixel_size_um is None:
            return None
        return self.z_spacing_um, self.pixel_size_um, self.pixel_size_um

    @property
    def channel_axis(self) -> int | None:
        """Index of the channel (or colour sample) axis named by the metadata."""
        if not self.axes:
            return None
        return next((self.axes.index(a) for a in CHANNEL_AXES if a in self.axes), None)

    @property
    def labels_axes(self) -> str | None:
        """Axis letters of labels computed from this image (its axes without channels)."""
        return "".join(a for a in self.axes if a not in CHANNEL_AXES) if self.axes else None


def read_image_file(path: Path | str, *, series: int | None = None) -> ImageFile:
    """Read a TIFF/OME-TIFF/ImageJ TIFF or a PNG/JPEG with its axes and pixel size."""
    path = Path(path)
    if path.suffix.lower() in PIL_SUFFIXES:
        return ImageFile(*_read_pil(path))
    data = read_image(path, series=series)
    axes = pixel = spacing = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # read_image warned about unreadable metadata already
            with open_tiff(path) as tif:
                s = tif.series[series or 0]
                if tif.is_ome or tif.is_imagej:
                    axes = s.axes if len(s.axes) == data.ndim else None
                pixel = plausible_pixel_size(tiff_pixel_size(tif, series or 0))
                spacing = tiff_z_spacing(tif, series or 0)
    except Exception:  # noqa: BLE001 - metadata is optional; the pixels were read fine
        pass
    return ImageFile(data, axes, pixel, spacing)


def _read_pil(path: Path) -> tuple[np.ndarray, str | None]:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path}: no such file.")
    try:
        with Image.open(path) as im:
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode in ("LA", "1"):
                im = im.convert("L")
            data = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable {path.suffix[1:].upper()} image ({type(exc).__name__}).") from None
    if data.ndim == 3:
        data = data[..., :3]  # alpha carries no intensity
        if (data == data[..., :1]).all():
            data = data[..., 0]  # grey saved as colour
    if data.size == 0:
        raise InputError(f"{path}: holds no image data.")
    return data, ("YXS" if data.ndim == 3 else "YX")


def write_labels_file(
    path: Path | str, labels: np.ndarray, *, axes: str | None = None, pixel_size_um: float | None = None,
    z_spacing_um: float | None = None, overwrite: bool = False,
) -> Path:
    """Write labels as a TIFF; with known axes or pixel size as an OME-TIFF carrying them (and the
    TIFF resolution tags, and the z spacing), so the labels overlay the image at the same physical size."""
    axes = axes if axes and len(axes) == labels.ndim and set(axes) <= set("TZYX") else None
    pixel_size_um = plausible_pixel_size(pixel_size_um)  # an absurd one is not written (nor writable)
    if axes is None and pixel_size_um is None:
        return write_tiff_atomic(path, labels, overwrite=overwrite)
    metadata: dict[str, object] = {"axes": axes or ("ZYX"[-labels.ndim:] if labels.ndim <= 3 else None)}
    if metadata["axes"] is None:
        metadata = {}
    kwargs: dict[str, object] = {}
    if pixel_size_um is not None:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeXUnit="µm",
                        PhysicalSizeY=pixel_size_um, PhysicalSizeYUnit="µm")
        kwargs.update(resolution=(1e4 / pixel_size_um, 1e4 / pixel_size_um), resolutionunit="CENTIMETER")
    if z_spacing_um is not None and metadata.get("axes") and "Z" in str(metadata["axes"]):
        metadata.update(PhysicalSizeZ=z_spacing_um, PhysicalSizeZUnit="µm")
    return write_tiff_atomic(path, labels, overwrite=overwrite, ome=True, metadata=metadata, **kwargs)


IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
LABEL_SUFFIXES = ("_labels", "_masks", "_mask", "_label")


def expand_inputs(names: list[str] | list[Path]) -> tuple[list[Path], list[str]]:
    """Input paths (folders expanded to the images inside; labels files by their name skipped), and
    one sentence for each thing skipped."""
    paths, notes = [], []
    for name in names:
        path = Path(name)
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if path.is_dir() else [path]
        if path.is_dir() and not found:
            notes.append(f"{path}: folder holds no TIFF images; nothing to do there.")
        for p in found:
            if stem(p).lower().endswith(LABEL_SUFFIXES):
                notes.append(f"{p}: skipped, its name says it is a labels file, not an image.")
            else:
                paths.append(p)
    return paths, notes


def labels_path_for(image_path: Path, out_dir: Path) -> Path:
    """Where the labels of ``image_path`` go: ``<out_dir>/<stem>_labels.tif``."""
    return Path(out_dir) / f"{stem(image_path)}_labels.tif"
