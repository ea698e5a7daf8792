"""Malformed OME-Zarr multiscales metadata, broken TIFF metadata and absurd pixel sizes: one sentence
(or the pixels read with the metadata ignored), from the opener, the pixel-size reader and the CLI."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.cli.main import main
from napari_unet.errors import InputError
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.io.image_files import read_image_file, write_labels_file
from napari_unet.io.lazy import open_lazy
from napari_unet.io.pixel_size import ome_zarr_pixel_size
from tests.helpers import make_tiny_model

AXES = [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space", "unit": "micrometer"}]
GOOD = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}]


def ome_zarr(path, datasets, axes=AXES):
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=(32, 32), dtype="uint8", chunks=(32, 32))[:] = 7
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    return path


BAD = {
    "no datasets": (None, "no 'datasets' list"),
    "empty datasets": ([], "'datasets' is empty"),
    "datasets a string": ("0", "no 'datasets' list"),
    "no path": ([{"coordinateTransformations": GOOD[0]["coordinateTransformations"]}], "dataset 0 has no 'path'"),
    "scale not numbers": ([{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": ["a", "b"]}]}],
                          "not a list of numbers"),
    "scale a string": ([{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": "0.5"}]}],
                       "not a list of numbers"),
    "negative scale": ([{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [-1, 0]}]}],
                       "positive numbers"),
    "transforms not a list": ([{"path": "0", "coordinateTransformations": "scale"}], "not a list"),
    "missing array": ([{"path": "9"}], "names the array '9', which is missing"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_malformed_multiscales_are_one_sentence(tmp_path, case):
    datasets, needle = BAD[case]
    path = ome_zarr(tmp_path / "img.ome.zarr", datasets)
    if datasets is None:
        attrs = json.loads((path / ".zattrs").read_text())
        del attrs["multiscales"][0]["datasets"]
        (path / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(InputError) as err:
        open_lazy(path)
    text = str(err.value)
    assert needle in text and "\n" not in text and text.startswith(str(path))
    if case != "missing array":  # the metadata reader is the same for the pixel size
        with pytest.raises(InputError, match="multiscales metadata is malformed"):
            ome_zarr_pixel_size(path)


def test_multiscales_not_a_list_and_unreadable_json(tmp_path):
    path = ome_zarr(tmp_path / "img.ome.zarr", GOOD)
    (path / ".zattrs").write_text(json.dumps({"multiscales": "yes"}))
    with pytest.raises(InputError, match="'multiscales' is not a list"):
        open_lazy(path)
    (path / ".zattrs").write_text("{not json")
    with pytest.raises(InputError, match="not readable JSON"):
        ome_zarr_pixel_size(path)


def test_good_multiscales_still_read(tmp_path):
    path = ome_zarr(tmp_path / "img.ome.zarr", GOOD)
    image = open_lazy(path)
    assert image.shape == (32, 32) and image.pixel_size == (0.5, 0.5)
    assert ome_zarr_pixel_size(path) == pytest.approx(0.5)


def test_cli_says_one_sentence_for_a_malformed_zarr_and_leaves_nothing(tmp_path, capsys):
    path = ome_zarr(tmp_path / "img.ome.zarr", [])
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, ModelInfo(name="tiny"))
    out = tmp_path / "out"
    code = main(["segment", str(path), "--model", str(ckpt), "--out", str(out), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines() == [f"napari-unet: error: {path}: the OME-Zarr multiscales metadata is "
                                        "malformed ('datasets' is empty)."]
    assert not out.exists() or not list(out.iterdir())


def test_garbage_imagej_description_is_ignored_with_a_warning(tmp_path):
    data = np.arange(3 * 40 * 48, dtype=np.uint16).reshape(3, 40, 48)
    path = tmp_path / "garbage.tif"
    tifffile.imwrite(path, data, metadata=None,
                     description="ImageJ=1.11a\nimages=abc\nchannels=zz\nframes=999999\nhyperstack=true\n")
    with pytest.warns(UserWarning, match="ImageJ metadata is unreadable .* ignored"):
        image = read_image_file(path)
    np.testing.assert_array_equal(image.data, data)
    assert image.axes is None and image.pixel_size_um is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = open_lazy(path)
        np.testing.assert_array_equal(lazy.read(lazy.open(), 2, slice(0, 40), slice(0, 48))[0], data[2])


def test_absurd_pixel_sizes_are_unknown_when_read_and_when_written(tmp_path):
    path = tmp_path / "tiny_px.tif"
    tifffile.imwrite(path, np.ones((16, 16), np.uint8), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": 1e-300, "PhysicalSizeY": 1e-300})
    assert read_image_file(path).pixel_size_um is None
    out = write_labels_file(tmp_path / "labels.tif", np.ones((16, 16), np.uint32), pixel_size_um=1e-300)
    with tifffile.TiffFile(out) as tif:
        assert "PhysicalSizeX" not in (tif.ome_metadata or "")
    ome = ome_zarr(tmp_path / "huge.ome.zarr",
                   [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1e300, 1e300]}]}])
    assert ome_zarr_pixel_size(ome) is None and open_lazy(ome).pixel_size is None


def test_one_dimensional_tiff_is_one_sentence(tmp_path, capsys):
    path = tmp_path / "line.tif"
    tifffile.imwrite(path, np.arange(100, dtype=np.uint16))
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, ModelInfo(name="tiny"))
    code = main(["segment", str(path), "--model", str(ckpt), "--out", str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "at least 2 (Y, X)" in err
    assert not (tmp_path / "out").exists()  # no output folder left behind for nothing written
    (tmp_path / "kept").mkdir()
    assert main(["segment", str(path), "--model", str(ckpt), "--out", str(tmp_path / "kept"), "--device", "cpu"]) == 1
    assert (tmp_path / "kept").is_dir()  # a folder the user had is never removed
