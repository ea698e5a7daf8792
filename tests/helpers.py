"""Helpers shared by the tests: where the real samples are, and tiny real models."""

from __future__ import annotations

from pathlib import Path

import torch

from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.network import UNetConfig, build_network
from napari_unet.io.checkpoint import ModelInfo

SAMPLES = Path(__file__).parent.parent / "sample_data"


def make_tiny_model(in_channels: int = 1, seed: int = 0, **config) -> SegmentationModel:
    """A tiny U-Net (or UNet++ with ``architecture="unetpp"``) with random weights and non-trivial
    BatchNorm statistics."""
    torch.manual_seed(seed)
    cfg = UNetConfig(in_channels=in_channels, out_classes=3, depth=3, base_width=4, **config)
    net = build_network(cfg)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    return SegmentationModel(net, ModelInfo(name="tiny"))
