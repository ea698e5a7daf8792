"""A loaded segmentation model: the network with its metadata, and its prepared copies per device."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from napari_unet.engine.network import UNet, UNetConfig
from napari_unet.engine.normalize import Normalization
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.prepare import prepare_for_inference
from napari_unet.io.checkpoint import Checkpoint, ModelInfo


@dataclass
class SegmentationModel:
    """A network with its metadata; prepared copies per device are cached."""

    net: UNet
    info: ModelInfo
    path: Path | None = None
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

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, path: Path | None = None) -> SegmentationModel:
        return cls(ckpt.build(path or "<memory>"), ckpt.info, path)

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
