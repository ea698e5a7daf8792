"""A loaded segmentation model: the network with its metadata, and its prepared copies per device."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_unet._version import __version__
from napari_unet.engine.network import UNet, UNetConfig
from napari_unet.engine.normalize import Normalization
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.prepare import prepare_for_inference

DEFAULT_CLASSES = ("background", "nucleus interior", "nucleus boundary")


@dataclass
class ModelInfo:
    """What a checkpoint says about its model besides the weights."""

    name: str = "unnamed"
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    normalization: dict[str, Any] = field(default_factory=lambda: Normalization().to_dict())
    pixel_size_um: float | None = None
    postprocess: dict[str, Any] = field(default_factory=lambda: PostprocessConfig().to_dict())
    object_area: float | None = None  # median object area (px) of the training data at scale 1
    provenance: dict[str, Any] = field(default_factory=dict)
    version: str = __version__

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Build from a dict, checking each known field's type (unknown fields are ignored)."""
        if not isinstance(data, dict):
            raise ValueError(f"info must be a JSON object, not {type(data).__name__}")
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key, kinds in _INFO_TYPES.items():
            if key in known and not isinstance(known[key], kinds):
                raise ValueError(f"info field {key!r} has the wrong type ({type(known[key]).__name__})")
        if not all(isinstance(c, str) for c in known.get("classes", [])):
            raise ValueError("info field 'classes' must be a list of names")
        px = known.get("pixel_size_um")
        if px is not None and (isinstance(px, bool) or not math.isfinite(px) or px <= 0):
            raise ValueError(f"pixel_size_um must be a positive number, not {px!r}")
        return cls(**known)


_INFO_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "classes": list, "normalization": dict, "pixel_size_um": (int, float, type(None)),
    "postprocess": dict, "provenance": dict, "version": str,
}


@dataclass
class SegmentationModel:
    """A network with its metadata; prepared copies per device are cached.

    ``semantic``: the classes are not nucleus/boundary probabilities (a foreign bioimage.io
    package), so labels are the most likely class per pixel, not watershed objects."""

    net: UNet
    info: ModelInfo
    path: Path | None = None
    semantic: bool = False
    _prepared: dict[str, torch.nn.Module] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def config(self) -> UNetConfig:
        return self.net.config

    @property
    def normalization(self) -> Normalization:
        return Normalization.from_dict(self.info.normalization)

    @property
    def postprocess(self) -> PostprocessConfig:
        """The post-processing parameters chosen for this model on its validation data."""
        return PostprocessConfig.from_dict(self.info.postprocess)

    def prepared(self, device: torch.device, *, compile: bool = False) -> torch.nn.Module:
        """The inference-ready network on ``device`` (BatchNorm folded, channels_last)."""
        key = f"{device}:{compile}"
        with self._lock:
            if key not in self._prepared:
                self._prepared[key] = prepare_for_inference(
                    self.net, device, channels_last=device.type != "mps", compile=compile
                )
            return self._prepared[key]

    def summary(self) -> dict[str, Any]:
        """Key facts for display: channels, classes, training data, validation F1."""
        prov = self.info.provenance
        return {
            "name": self.info.name,
            "path": str(self.path) if self.path else None,
            "in_channels": self.config.in_channels,
            "classes": self.info.classes,
            "trained_on": prov.get("data"),
            "validation_f1": prov.get("validation_f1"),
            "parameters": sum(p.numel() for p in self.net.parameters()),
        }
