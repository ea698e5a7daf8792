"""Shared fixtures: the real sample images (mnfinder nuclei) and tiny real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.network import UNetConfig, build_network
from napari_unet.io.checkpoint import ModelInfo
from napari_unet.models import load_model

SAMPLES = Path(__file__).parent.parent / "sample_data"

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def u2os() -> np.ndarray:
    """768×869 uint16 DAPI image of U2OS nuclei."""
    return tifffile.imread(SAMPLES / "nuclei_u2os.tif")


@pytest.fixture(scope="session")
def u2os_labels() -> np.ndarray:
    return tifffile.imread(SAMPLES / "nuclei_u2os_labels.tif")


@pytest.fixture(scope="session")
def misc() -> np.ndarray:
    """512×512 uint8 nuclei image."""
    return tifffile.imread(SAMPLES / "nuclei_misc.tif")


@pytest.fixture(scope="session")
def misc_labels() -> np.ndarray:
    return tifffile.imread(SAMPLES / "nuclei_misc_labels.tif")


@pytest.fixture(scope="session")
def default_model() -> SegmentationModel:
    return load_model()


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


@pytest.fixture
def tiny_model() -> SegmentationModel:
    return make_tiny_model()
