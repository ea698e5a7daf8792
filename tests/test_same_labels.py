"""The labels the shipped model gives on the two samples, from the Python API and from the command
line, are bit-identical to reference files written by the released code (tests/data)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet import segment, segment_image
from tests.helpers import SAMPLES

DATA = Path(__file__).parent / "data"
CASES = [("nuclei_u2os", {}, "default_u2os_labels.tif"), ("nuclei_misc", {}, "default_misc_labels.tif"),
         ("nuclei_misc", {"scale": 1.6}, "default_misc_scale1.6_labels.tif")]


@pytest.mark.parametrize(("sample", "options", "reference"), CASES)
def test_api_labels_are_unchanged(default_model, sample, options, reference):
    image = tifffile.imread(SAMPLES / f"{sample}.tif")
    expected = tifffile.imread(DATA / reference)
    labels = segment(image, default_model, device="cpu", **options)
    assert labels.dtype == np.uint32
    np.testing.assert_array_equal(labels, expected)
    result = segment_image(default_model, image, device="cpu", **options)  # the step the CLI and the dock call
    np.testing.assert_array_equal(result.labels, expected)
    assert result.summary() == f"{len(np.unique(expected)) - 1} objects"


def test_cli_labels_are_unchanged(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "napari_unet", "segment", str(SAMPLES / "nuclei_u2os.tif"),
           str(SAMPLES / "nuclei_misc.tif"), "--out", str(out), "--device", "cpu", "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for sample, _, reference in CASES[:2]:
        np.testing.assert_array_equal(tifffile.imread(out / f"{sample}_labels.tif"), tifffile.imread(DATA / reference))
    proc = subprocess.run([*cmd[:4], str(SAMPLES / "nuclei_misc.tif"), "--out", str(tmp_path / "big"), "--device",
                           "cpu", "--quiet", "--scale", "1.6", "--min-size", "50"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "big" / "nuclei_misc_labels.tif"),
                                  tifffile.imread(DATA / CASES[2][2]))
