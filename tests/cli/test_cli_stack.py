"""``segment --stack planes|3d|time`` and ``--voxel-size``: the default from the file's axes, the voxel
size from OME/ImageJ metadata, and one sentence where blockwise segmentation cannot link a stack."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.cli.main import main
from napari_unet.io.image_files import read_image_file
from tests.helpers import SAMPLES


def nuclei(side: int = 160) -> np.ndarray:
    return tifffile.imread(SAMPLES / "nuclei_misc.tif")[:side, :side]


def test_voxel_size_and_stack_mode_come_from_ome_and_imagej_metadata(tmp_path):
    stack = np.stack([nuclei(64)] * 3)
    tifffile.imwrite(tmp_path / "ome.tif", stack, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 2.0, "PhysicalSizeZUnit": "µm", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    ome = read_image_file(tmp_path / "ome.tif")
    assert (ome.stack_mode, ome.voxel_size) == ("3d", (2.0, 0.5, 0.5))
    tifffile.imwrite(tmp_path / "ij.tif", stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    ij = read_image_file(tmp_path / "ij.tif")
    assert (ij.stack_mode, ij.voxel_size) == ("3d", (1.5, 0.25, 0.25))
    tifffile.imwrite(tmp_path / "t.tif", stack, imagej=True, metadata={"axes": "TYX"})
    assert read_image_file(tmp_path / "t.tif").stack_mode == "time"
    tifffile.imwrite(tmp_path / "plain.tif", stack)
    assert (read_image_file(tmp_path / "plain.tif").stack_mode, read_image_file(tmp_path / "plain.tif").voxel_size) \
        == ("planes", None)


def test_cli_tracks_a_time_lapse_by_default_and_planes_on_request(tmp_path, capsys):
    movie = np.stack([np.roll(nuclei(), (2 * t, 3 * t), axis=(0, 1)) for t in range(3)])
    tifffile.imwrite(tmp_path / "movie.tif", movie, imagej=True, metadata={"axes": "TYX"})
    args = ["segment", str(tmp_path / "movie.tif"), "--device", "cpu", "--scale", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "time")]) == 0
    assert "tracks" in capsys.readouterr().out
    tracked = tifffile.imread(tmp_path / "time" / "movie_labels.tif")
    moved = np.roll(tracked[0], (4, 6), axis=(0, 1))
    inner = (moved > 0) & (tracked[2] > 0)
    inner[:12], inner[:, :14] = False, False
    assert tracked[0].max() > 3 and (moved[inner] == tracked[2][inner]).mean() > 0.99
    assert main([*args, "--out", str(tmp_path / "planes"), "--stack", "planes"]) == 0
    planes = tifffile.imread(tmp_path / "planes" / "movie_labels.tif")
    assert all(p.max() == len(np.unique(p)) - 1 for p in planes)  # ids 1..n on every frame
    assert np.array_equal(planes[0] > 0, tracked[0] > 0)


def test_cli_3d_from_ome_axes_keeps_the_voxel_size(tmp_path, capsys):
    stack = np.stack([nuclei()] * 4)
    tifffile.imwrite(tmp_path / "z.tif", stack, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeZ": 0.9, "PhysicalSizeX": 0.6, "PhysicalSizeY": 0.6})
    assert main(["segment", str(tmp_path / "z.tif"), "--out", str(tmp_path), "--device", "cpu", "--scale", "1",
                 "--quiet"]) == 0
    assert "3D objects" in capsys.readouterr().out
    out = read_image_file(tmp_path / "z_labels.tif")
    assert out.voxel_size == (0.9, 0.6, 0.6)
    labels = out.data
    assert labels.max() > 3 and all(np.array_equal(p, labels[0]) for p in labels)  # one id through the planes


def test_cli_refuses_3d_for_blockwise_stacks_in_one_sentence(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "z.tif", np.stack([nuclei()] * 2))
    code = main(["segment", str(tmp_path / "z.tif"), "--out", str(tmp_path), "--stack", "3d", "--block", "64"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "\n" not in err and "plane by plane" in err
    assert not (tmp_path / "z_labels.tif").exists()
    with pytest.raises(SystemExit) as bad:
        main(["segment", str(tmp_path / "z.tif"), "--out", str(tmp_path), "--voxel-size", "1", "0", "1"])
    assert bad.value.code == 2
