"""Pixel sizes from OME-TIFF / ImageJ / OME-Zarr / napari layers, scale="auto", and image formats in."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_unet import load_model, segment
from napari_unet.cli.main import main
from napari_unet.engine.predict import predict
from napari_unet.engine.scale import pixel_size_choice
from napari_unet.errors import InputError
from napari_unet.io.checkpoint import read_checkpoint, save_checkpoint
from napari_unet.io.image_files import read_image_file, write_labels_file
from napari_unet.io.pixel_size import layer_pixel_size, ome_zarr_pixel_size, to_micrometres
from napari_unet.models import default_model_path
from tests.helpers import make_tiny_model


def test_units_and_ratio():
    assert to_micrometres(325, "nm") == pytest.approx(0.325)
    assert to_micrometres(0.325, "micron") == 0.325
    assert to_micrometres(1, "pixel") is None and to_micrometres(-1, "µm") is None
    assert pixel_size_choice(0.325, 0.65).scale == 0.5
    assert pixel_size_choice(None, 0.65) is None and pixel_size_choice(0.325, None) is None
    assert pixel_size_choice(0.01, 0.65) is None  # a ratio no microscope gives: metadata treated as unknown
    far = pixel_size_choice(0.1, 0.65)  # 0.15: plausible, but beyond what auto chooses
    assert far.scale == 0.25 and "beyond what auto chooses" in far.describe()


def test_ome_tiff_and_imagej_metadata(tmp_path, misc):
    crop = misc[:64, :96]
    tifffile.imwrite(tmp_path / "a.ome.tif", np.stack([crop, crop // 2]), ome=True,
                     metadata={"axes": "CYX", "PhysicalSizeX": 325, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 325, "PhysicalSizeYUnit": "nm"})
    f = read_image_file(tmp_path / "a.ome.tif")
    assert f.axes == "CYX" and f.channel_axis == 0 and f.pixel_size_um == pytest.approx(0.325)
    hyper = np.zeros((3, 2, 2, 64, 96), np.uint16)  # T, Z, C, Y, X
    tifffile.imwrite(tmp_path / "b.tif", hyper, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"axes": "TZCYX", "unit": "micron"})
    g = read_image_file(tmp_path / "b.tif")
    assert g.axes == "TZCYX" and g.channel_axis == 2 and g.labels_axes == "TZYX"
    assert g.pixel_size_um == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "plain.tif", crop)
    assert read_image_file(tmp_path / "plain.tif").pixel_size_um is None


def test_ome_zarr_multiscales(tmp_path):
    v04 = tmp_path / "v04.zarr"
    v04.mkdir()
    (v04 / ".zattrs").write_text(json.dumps({"multiscales": [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.325, 0.325]}]},
                     {"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.65, 0.65]}]}],
    }]}))
    assert ome_zarr_pixel_size(v04) == pytest.approx(0.325)
    v05 = tmp_path / "v05.zarr"
    v05.mkdir()
    (v05 / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {"ome": {
        "version": "0.5", "multiscales": [{
            "axes": [{"name": "y", "type": "space", "unit": "nanometer"},
                     {"name": "x", "type": "space", "unit": "nanometer"}],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [650, 650]}]}],
        }]}}}))
    assert ome_zarr_pixel_size(v05) == pytest.approx(0.65)
    (tmp_path / "nounit.zarr").mkdir()
    (tmp_path / "nounit.zarr" / ".zattrs").write_text(json.dumps({"multiscales": [{
        "axes": [{"name": "y"}, {"name": "x"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2, 2]}]}]}]}))
    assert ome_zarr_pixel_size(tmp_path / "nounit.zarr") is None


def test_napari_layer_scale():
    napari = pytest.importorskip("napari")
    data = np.zeros((32, 32), np.uint8)
    assert layer_pixel_size(napari.layers.Image(data, scale=(0.325, 0.325))) == pytest.approx(0.325)
    assert layer_pixel_size(napari.layers.Image(data)) is None
    with_units = napari.layers.Image(data, scale=(325, 325), units=("nm", "nm"))
    assert layer_pixel_size(with_units) == pytest.approx(0.325)


def test_ome_tiff_auto_scale_end_to_end_through_cli(tmp_path, misc):
    """An OME-TIFF at 0.325 µm and a model trained at 0.65 µm: scale 0.5, chosen and reported."""
    ckpt = read_checkpoint(default_model_path())
    model_path = save_checkpoint(tmp_path / "at065.safetensors", ckpt.build(),
                                 replace(ckpt.info, pixel_size_um=0.65))
    # the sample at twice the resolution: nuclei twice as many pixels wide, as at 0.325 µm
    fine = np.kron(misc[:256, :256], np.ones((2, 2), misc.dtype))
    tifffile.imwrite(tmp_path / "fine.ome.tif", fine, ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325})
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet", "segment", str(tmp_path / "fine.ome.tif"), "--model", str(model_path),
         "--scale", "auto", "--out", str(out), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "scale 0.5 from pixel sizes (image 0.325 µm, model 0.65 µm)" in proc.stderr
    labels_file = read_image_file(out / "fine_labels.tif")
    assert labels_file.pixel_size_um == pytest.approx(0.325) and labels_file.axes == "YX"
    model = load_model(model_path)
    at_half = segment(fine, model, scale=0.5, device="cpu")
    np.testing.assert_array_equal(labels_file.data, at_half)
    assert not np.array_equal(at_half, segment(fine, model, scale=1.0, device="cpu"))
    np.testing.assert_array_equal(predict(model, fine, scale="auto", pixel_size_um=0.325, device="cpu"),
                                  predict(model, fine, scale=0.5, device="cpu"))


def test_imagej_hyperstack_channel_from_metadata(tmp_path, misc):
    crop = misc[:96, :128]
    noise = np.random.default_rng(0).integers(0, 255, crop.shape, dtype=np.uint8)
    stack = np.stack([np.stack([noise, crop]), np.stack([noise, crop[::-1]])])  # Z, C, Y, X
    tifffile.imwrite(tmp_path / "hyper.tif", stack, imagej=True, resolution=(1 / 0.4, 1 / 0.4),
                     metadata={"axes": "ZCYX", "unit": "micron"})
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, make_tiny_model().info)
    assert main(["segment", str(tmp_path / "hyper.tif"), "--model", str(ckpt), "--channel", "1",
                 "--out", str(tmp_path / "out"), "--quiet", "--tile", "64", "--overlap", "16"]) == 0
    out = read_image_file(tmp_path / "out" / "hyper_labels.tif")
    assert out.data.shape == (2, 96, 128) and out.axes == "ZYX"
    assert out.pixel_size_um == pytest.approx(0.4)
    expected = segment(stack[:, 1], make_tiny_model(), tile=64, overlap=16, stack="3d", voxel_size=(1.0, 0.4, 0.4))
    np.testing.assert_array_equal(out.data, expected)  # a Z axis: 3D objects by default


def test_png_and_jpeg_inputs(tmp_path, misc):
    crop = misc[:128, :128]
    Image.fromarray(crop).save(tmp_path / "grey.png")
    Image.fromarray(np.stack([crop] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(crop).save(tmp_path / "photo.jpg", quality=95)
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, make_tiny_model().info)
    assert main(["segment", str(tmp_path / "grey.png"), str(tmp_path / "rgb.png"), str(tmp_path / "photo.jpg"),
                 "--model", str(ckpt), "--out", str(tmp_path / "out"), "--quiet", "--tile", "64"]) == 0
    expected = segment(crop, make_tiny_model(), tile=64)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "grey_labels.tif"), expected)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "rgb_labels.tif"), expected)
    assert tifffile.imread(tmp_path / "out" / "photo_labels.tif").shape == crop.shape
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="not a readable PNG"):
        read_image_file(tmp_path / "bad.png")


def test_labels_written_with_axes_and_pixel_size(tmp_path):
    labels = np.zeros((2, 3, 16, 16), np.uint32)
    labels[..., 4:8, 4:8] = 7
    write_labels_file(tmp_path / "l.tif", labels, axes="TZYX", pixel_size_um=0.325)
    back = read_image_file(tmp_path / "l.tif")
    assert back.axes == "TZYX" and back.pixel_size_um == pytest.approx(0.325)
    np.testing.assert_array_equal(back.data, labels)
    with pytest.raises(FileExistsError):
        write_labels_file(tmp_path / "l.tif", labels, axes="TZYX", pixel_size_um=0.325)
