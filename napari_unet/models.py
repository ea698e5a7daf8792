"""Loading models: a checkpoint (.safetensors), a bioimage.io package (.zip), or the shipped default."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from napari_unet.engine.model import SegmentationModel
from napari_unet.io.checkpoint import read_checkpoint


def default_model_path() -> Path:
    """The shipped nuclei model inside the installed package."""
    return Path(str(files("napari_unet.sample_data") / "nuclei_default.safetensors"))


def load_model(path: Path | str | None = None, *, trust_code: bool = False) -> SegmentationModel:
    """Load a checkpoint (``None`` = the shipped default nuclei model) or a bioimage.io package (.zip).

    ``trust_code`` allows a package whose only weights need its Python source (see bioimageio_import).
    """
    path = Path(path) if path is not None else default_model_path()
    if path.suffix.lower() == ".zip":
        from napari_unet.bioimageio.package import load_package

        return load_package(path, trust_code=trust_code)
    return read_checkpoint(path).model(path)

