"""Segment on lazy image layers (dask, zarr) in a real napari viewer under Xvfb: block by block on a
real in-process dask cluster into a zarr that backs the labels layer, editing, region export, Cancel."""

from __future__ import annotations

import json
import multiprocessing
import shutil
import threading

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from distributed import Client, SpecCluster
from distributed.core import Status
from napari.layers import Image, Shapes
from qtpy.QtGui import QDesktopServices

from napari_unet._widget.regions import wants_blockwise
from napari_unet.blockwise.engine import BlockwiseOptions, segment_blockwise
from napari_unet.engine.memory import too_large
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.io.pixel_size import layer_pixel_size
from napari_unet.training.pairs import read_pairs
from tests.blockwise.test_blockwise import mosaic, read_labels
from tests.helpers import make_tiny_model


@pytest.fixture(autouse=True)
def _dirs(tmp_path, monkeypatch):
    """Settings and labels of in-memory images go to temporary folders, never the real home."""
    monkeypatch.setenv("NAPARI_UNET_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("NAPARI_UNET_DATA_DIR", str(tmp_path / "data"))


@pytest.fixture
def big(u2os, tmp_path):
    """A 1024² mosaic of the real U2OS nuclei, as a chunked zarr on disk."""
    image = mosaic(u2os, (1024, 1024))
    path = tmp_path / "images" / "mosaic.zarr"
    z = zarr.open_array(str(path), mode="w", shape=image.shape, chunks=(256, 256), dtype=image.dtype)
    z[:] = image
    return image, path


def _dock(viewer, block):
    _, w = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "U-Net")
    w.seg.blockwise.block, w.seg.device.value = block, "cpu"
    return w


def _cluster_threads() -> list[str]:
    """The threads of an in-process dask cluster: its event loop and its worker's task threads."""
    return [t.name for t in threading.enumerate() if t.name == "IO loop" or "Dask-Default-Threads" in t.name]


def test_lazy_layer_goes_blockwise_into_an_editable_zarr(qtbot, make_napari_viewer, big, tmp_path):
    image, path = big
    viewer = make_napari_viewer(show=True)  # shown: the canvas reports the part of the labels in view
    viewer.open(str(path), plugin="napari")  # napari's own reader: a dask array, its source path kept
    layer = viewer.layers[-1]
    assert not isinstance(layer.data, np.ndarray)
    w = _dock(viewer, 512)
    ticks = []
    w.seg.job.tick.connect(lambda done, total: ticks.append((done, total)))
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=120_000)

    labels = viewer.layers[f"{layer.name} labels"]
    out = path.parent / "mosaic_labels.zarr"  # beside the image
    assert isinstance(labels.data, zarr.Array) and labels.metadata["napari_unet_zarr"] == str(out)
    assert ticks[-1] == (8, 8) and len(ticks) >= 3  # 4 blocks, then their relabel pass
    assert w.seg.progress.value == w.seg.progress.max == 8
    options = BlockwiseOptions(block=512, tile=w.seg.tile.value, overlap=w.seg.overlap.value,
                               batch_size=w.seg.batch.value, device="cpu", postprocess=w.seg.postprocess())
    direct = segment_blockwise(image, tmp_path / "direct.zarr", w.state.model, options=options, workers=1)
    np.testing.assert_array_equal(labels.data[:], read_labels(direct.out))
    assert direct.objects[0] > 100 and f"{direct.objects[0]} objects" in w.seg.summary.value

    # the brush writes through to the zarr on disk, and the layer counts as corrected
    assert w.corrections.labels.value is labels and w.corrections.image.value is layer
    w.corrections.export_btn.native.click()
    assert "unchanged since segmentation" in w.status.text()
    labels.paint((600, 600), 4242)
    assert read_labels(out)[600, 600] == 4242

    # export only the rectangle (plus context), reading only that region of both layers
    shapes = viewer.add_shapes([np.array([[500, 520], [500, 700], [690, 700], [690, 520]])],
                               shape_type="rectangle", name="region")
    assert isinstance(shapes, Shapes)
    w.reset_choices()
    w.corrections.region.value = shapes
    w.corrections.folder.value = tmp_path / "pairs"
    w.corrections.export_btn.native.click()
    pairs, skipped = read_pairs(tmp_path / "pairs")
    assert len(pairs) == 1 and not skipped, w.status.text()
    manifest = json.loads((tmp_path / "pairs" / "pairs.json").read_text())["pairs"]
    assert manifest[0]["crop"] == [468, 488, 722, 732]  # in the plane's coordinates
    np.testing.assert_array_equal(pairs[0].image, image[468:722, 488:732])
    np.testing.assert_array_equal(pairs[0].labels, read_labels(out)[468:722, 488:732])
    assert pairs[0].reviewed[32:-32, 32:-32].all() and not pairs[0].reviewed[:32].any()

    # without a rectangle: the part shown on the canvas
    w.corrections.region.value = None
    viewer.camera.center, viewer.camera.zoom = (600, 620), 8
    qtbot.waitUntil(lambda: np.ptp(labels.corner_pixels, axis=0).max() < 200, timeout=5_000)
    (y0, x0), (y1, x1) = labels.corner_pixels
    assert 500 < y0 < 600 < y1 < 700 and 500 < x0 < 620 < x1 < 700
    w.corrections.export_btn.native.click()
    manifest = json.loads((tmp_path / "pairs" / "pairs.json").read_text())["pairs"]
    assert len(manifest) == 2 and manifest[1]["crop"] == [y0 - 32, x0 - 32, y1 + 1 + 32, x1 + 1 + 32], w.status.text()


def test_cancel_leaves_nothing_running_and_existing_output_is_kept(qtbot, make_napari_viewer, big, tmp_path):
    image, path = big
    viewer = make_napari_viewer()
    viewer.add_image(zarr.open_array(str(path), mode="r"), name="mosaic")  # a zarr array, no source path
    w = _dock(viewer, 256)  # 16 blocks
    kept = tmp_path / "data" / "labels" / "mosaic_labels.zarr"
    kept.mkdir(parents=True)
    (kept / "precious.txt").write_text("keep")
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.progress.value >= 1, timeout=60_000)
    assert _cluster_threads() and not multiprocessing.active_children()  # one worker, in this process
    assert dask.config.get("scheduler", None) != "dask.distributed"  # napari's own dask reads stay local
    w.seg.cancel_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=10_000)
    assert [la.name for la in viewer.layers] == ["mosaic"] and "cancelled" in w.status.text()
    assert all(c.status == "closed" for c in Client._instances)
    assert all(c.status == Status.closed for c in SpecCluster._instances)
    qtbot.waitUntil(lambda: not _cluster_threads(), timeout=10_000)
    assert sorted(p.name for p in kept.parent.iterdir()) == ["mosaic_labels.zarr"]  # no partial output

    # a multiscale layer: level 0 is segmented; the existing output is kept, the new one gets "-2"
    viewer.layers.clear()
    level0 = zarr.open_array(str(path), mode="r")
    viewer.add_image([level0, level0[::2, ::2]], multiscale=True, name="mosaic")
    w.seg.blockwise.block = 512
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=120_000)
    assert (kept / "precious.txt").read_text() == "keep"
    labels = viewer.layers["mosaic labels"]
    assert labels.metadata["napari_unet_zarr"] == str(kept.parent / "mosaic_labels-2.zarr")
    assert labels.data.shape == image.shape and read_labels(kept.parent / "mosaic_labels-2.zarr").max() > 100

    # closing napari mid-run stops the cluster and leaves no partial output
    w.seg.blockwise.block = 256
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.progress.value >= 1, timeout=60_000)
    viewer.close()
    qtbot.waitUntil(lambda: not _cluster_threads(), timeout=15_000)
    assert sorted(p.name for p in kept.parent.iterdir()) == ["mosaic_labels-2.zarr", "mosaic_labels.zarr"]


_READS: list[tuple[int, ...]] = []  # module level: the in-process dask worker runs the same function


def _record(block: np.ndarray, block_info=None) -> np.ndarray:
    """Notes which chunk of the image is read (dask also calls it once on an empty array)."""
    if block_info is not None:
        _READS.append(tuple(block_info[0]["chunk-location"]))
    return block


def test_current_plane_of_a_lazy_stack_reads_only_what_it_needs(qtbot, make_napari_viewer, misc, tmp_path):
    """A dask stack: Segment reads only the current plane, Export only the chunks around the rectangle."""
    reads = _READS
    planes = np.stack([misc, misc[::-1], misc[:, ::-1]])
    stack = da.from_array(planes, chunks=(1, 128, 128)).map_blocks(_record, dtype=misc.dtype)
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 1)
    w = _dock(viewer, 256)
    reads.clear()  # napari drew plane 0, then plane 1
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=60_000)
    assert reads and {r[0] for r in reads} == {1}  # plane 1 only

    labels = viewer.layers["stack labels"]
    assert labels.data.shape == (1, 512, 512) and tuple(labels.translate) == (1, 0, 0)
    options = BlockwiseOptions(block=256, tile=w.seg.tile.value, overlap=w.seg.overlap.value, scale="auto",
                               batch_size=w.seg.batch.value, device="cpu", postprocess=w.seg.postprocess())
    direct = segment_blockwise(planes[1], tmp_path / "direct.zarr", w.state.model, options=options, workers=1)
    np.testing.assert_array_equal(labels.data[0], read_labels(direct.out))

    labels.paint((0, 150, 150), 777)  # data coordinates: the zarr holds one plane
    shapes = viewer.add_shapes([np.array([[100, 100], [100, 200], [200, 200], [200, 100]])],
                               shape_type="rectangle", name="region")
    w.reset_choices()
    w.corrections.region.value, w.corrections.folder.value = shapes, tmp_path / "pairs"
    viewer.dims.set_current_step(0, 0)
    w.corrections.export_btn.native.click()
    assert "holds plane (1,) only" in w.status.text()
    viewer.dims.set_current_step(0, 1)
    reads.clear()
    w.corrections.export_btn.native.click()
    (pair,), _ = read_pairs(tmp_path / "pairs")
    np.testing.assert_array_equal(pair.image, planes[1, 68:232, 68:232])
    assert pair.labels[150 - 68, 150 - 68] == 777
    assert set(reads) == {(1, 0, 0), (1, 0, 1), (1, 1, 0), (1, 1, 1)}  # the chunks around the rectangle


def test_which_layers_go_blockwise(misc):
    """Lazy or multiscale data always; numpy only from 8192² planes (the CLI's rule) or when too large."""
    huge = np.broadcast_to(np.uint8(0), (8192, 8192))  # a numpy array that takes no memory
    assert wants_blockwise(Image(huge, contrast_limits=(0, 1)), None)
    assert not wants_blockwise(Image(misc), None)
    assert not wants_blockwise(Image(np.stack([misc] * 3)), (1,))
    assert wants_blockwise(Image(da.from_array(misc)), None)
    assert wants_blockwise(Image([misc, misc[::2, ::2]], multiscale=True), None)
    assert too_large((8192, 8192)) and not too_large((4096, 4096))
    assert too_large((10**6, 4096, 4096))  # a stack whose probabilities would need terabytes


def test_bad_lazy_input_is_one_sentence_and_leaves_nothing(qtbot, make_napari_viewer, misc, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(np.stack([misc] * 3, axis=-1)), rgb=True, name="rgb")
    w = _dock(viewer, 256)
    w.seg.run_btn.native.click()  # a colour image for a one-channel model, no channel chosen
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=30_000)
    assert "3 channel" in w.status.text() and "Traceback" not in w.status.text()
    assert [la.name for la in viewer.layers] == ["rgb"]
    assert not any((tmp_path / "data" / "labels").iterdir())
    w.seg.channel.value = 0
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=60_000)
    assert viewer.layers["rgb labels"].data.shape == misc.shape, w.status.text()


def test_removing_the_image_mid_run_stops_it_and_leaves_nothing(qtbot, make_napari_viewer, misc, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(da.from_array(misc), name="misc")
    w = _dock(viewer, 128)  # 16 blocks
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.progress.value >= 1, timeout=60_000)
    viewer.layers.remove("misc")
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=10_000)
    assert len(viewer.layers) == 0 and "removed" in w.status.text()
    left = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "data" / "labels").rglob("*"))
    assert not left  # the partial output is gone


def test_ome_zarr_opened_by_napari_keeps_its_pixel_size_and_its_labels_are_listed(qtbot, make_napari_viewer,
                                                                                  tmp_path, misc, monkeypatch):
    """napari's built-in reader leaves the OME-Zarr scale out (the layer's scale is 1): the dock reads
    it from the zarr's metadata, and automatic scale follows it (image 0.5 µm, model 0.25 µm: scale 2)."""
    path = tmp_path / "images" / "cells.ome.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", shape=misc.shape, dtype=misc.dtype, chunks=(256, 256))[:] = misc
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "yx"], "datasets": [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.5, 0.5]}]}]}]
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari")
    layer = viewer.layers[-1]
    assert tuple(layer.scale) == (1.0, 1.0) and layer_pixel_size(layer) == 0.5
    w = _dock(viewer, 1024)
    assert w.seg.saved.results.choices == () and not w.seg.saved.main.visible  # nothing saved yet: no row
    tiny = save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net,
                           ModelInfo(name="tiny", pixel_size_um=0.25))
    assert w.models.select(tiny)
    w.seg.tile.value, w.seg.overlap.value = 256, 32
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=120_000)
    labels = viewer.layers[f"{layer.name} labels"]
    assert w.state.result(labels).scale == 2.0 and "scale 2.00 (chosen automatically)" in w.seg.summary.value

    # the saved labels are listed, and Open folder asks the system to show the folder that holds them
    out = path.parent / "cells_labels.zarr"
    assert w.seg.saved.results.value == str(out)
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url) or True)
    w.seg.saved.open_btn.native.click()
    assert [u.toLocalFile() for u in opened] == [str(path.parent)]
    # labels zarrs in the labels folder are listed too (not other folders), after the dock's own
    shutil.copytree(out, tmp_path / "data" / "labels" / "other_labels.zarr")
    (tmp_path / "data" / "labels" / "not_labels.zarr").mkdir()
    viewer.window.remove_dock_widget("all")
    w = _dock(viewer, 1024)
    assert w.seg.saved.results.choices == (str(out), str(tmp_path / "data" / "labels" / "other_labels.zarr"))
    assert w.minimumSizeHint().width() <= 360  # long paths do not widen the dock (a laptop's limit)
