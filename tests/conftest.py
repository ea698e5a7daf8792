"""Shared fixtures: the real sample images (mnfinder nuclei) and tiny real models."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.engine.model import SegmentationModel
from napari_unet.models import load_model
from tests.helpers import SAMPLES, make_tiny_model

torch.set_num_threads(min(2, torch.get_num_threads()))
# kept scores (the base model's replay score) go to a folder of this run, not the user's cache
os.environ.setdefault("NAPARI_UNET_CACHE_DIR", tempfile.mkdtemp(prefix="napari-unet-cache-"))


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


@pytest.fixture
def tiny_model() -> SegmentationModel:
    return make_tiny_model()


_SLOW_FOLDERS = {"widget", "blockwise", "bioimageio"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gui`` marks tests in a real napari window; ``slow`` marks whole folders of long tests (real
    windows, dask clusters, bioimage.io validation) and single tests marked so, for ``-m "not slow"``."""
    for item in items:
        folder = item.path.parent.name
        if folder == "widget":
            item.add_marker(pytest.mark.gui)
        if folder in _SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
