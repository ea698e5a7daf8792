"""Everyday helpers of the dock in a real napari viewer: the measurement table."""

from __future__ import annotations

import csv
from importlib.resources import files

import numpy as np
import pytest
import yaml
from qtpy.QtWidgets import QFileDialog

PLUGIN = yaml.safe_load((files("napari_unet") / "napari.yaml").read_text())["name"]  # the npe2 plugin name


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_CONFIG_DIR", str(tmp_path / "config"))


def _segmented(qtbot, make_napari_viewer, misc, scale: float, **options):
    """The dock after Segment on a 256² crop of the misc sample at ``scale`` (other options set first)."""
    viewer = make_napari_viewer()
    viewer.add_image(misc[:256, :256], name="crop")
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    w.seg.auto_scale.value, w.seg.scale.value, w.seg.tile.value = False, scale, 256
    for name, value in options.items():
        getattr(w.seg, name).value = value
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None and "crop labels" in viewer.layers and not w.seg.measuring,
                    timeout=60_000)  # the measurement table is made in a worker too
    return viewer, w


def test_features_table_has_a_row_per_object_follows_a_relabel_and_saves_as_csv(qtbot, make_napari_viewer, misc,
                                                                                 tmp_path, monkeypatch):
    viewer, w = _segmented(qtbot, make_napari_viewer, misc, 1.0)
    layer = viewer.layers["crop labels"]
    ids = np.unique(layer.data[layer.data > 0])
    table = layer.features
    assert len(ids) >= 3 and list(table["label"]) == list(ids)
    assert list(table["area"]) == [int((layer.data == i).sum()) for i in ids]
    first = misc[:256, :256][layer.data == ids[0]]
    assert table["intensity_max"][0] == first.max() and np.isclose(table["intensity_mean"][0], first.mean())
    assert {"centroid_row", "centroid_col", "eccentricity"} <= set(table.columns)
    w.seg.min_size.value = int(table["area"].median()) + 1  # re-label: the table follows
    qtbot.waitUntil(lambda: w.seg.writer.pending == 0 and len(layer.features) < len(ids), timeout=10_000)
    assert list(layer.features["label"]) == list(np.unique(layer.data[layer.data > 0]))
    out = tmp_path / "table.csv"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *args: (str(out), "CSV (*.csv)"))
    w.seg.table_btn.native.click()
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(layer.features) and [int(r["label"]) for r in rows] == list(layer.features["label"])
    assert f"{len(rows)} objects" in w.status.text()


def test_show_probabilities_adds_the_class_probabilities_as_an_image_layer(qtbot, make_napari_viewer, misc):
    viewer, w = _segmented(qtbot, make_napari_viewer, misc, 2.0, show_probs=True)
    probs = viewer.layers["crop probabilities"]
    classes = w.state.model.info.classes
    assert probs.data.shape == (len(classes), 512, 512)  # at the working size, drawn over the image
    np.testing.assert_allclose(probs.data.sum(axis=0), 1, atol=1e-4)
    assert tuple(probs.scale) == (1.0, 0.5, 0.5) and probs.metadata["classes"] == list(classes)
    labels = viewer.layers["crop labels"].data
    assert probs.data[1:].sum(axis=0)[::2, ::2][labels > 0].mean() > 0.5  # objects where the nuclei are


def test_undo_restores_the_labels_before_a_relabel_and_a_segment(qtbot, make_napari_viewer, misc):
    viewer, w = _segmented(qtbot, make_napari_viewer, misc, 1.0)
    layer = viewer.layers["crop labels"]
    first = layer.data.copy()
    w.seg.min_size.value = 5000  # every nucleus is smaller: all disappear
    qtbot.waitUntil(lambda: w.seg.writer.pending == 0 and layer.data.max() == 0, timeout=10_000)
    w.seg.scale.value = 2.0
    w.seg.run_btn.native.click()  # Segment again into the same layer
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=60_000)
    w.seg.undo_btn.native.click()
    assert layer.data.max() == 0 and "previous labels" in w.status.text()
    w.seg.undo_btn.native.click()
    np.testing.assert_array_equal(layer.data, first)
    qtbot.waitUntil(lambda: len(layer.features) == len(np.unique(first)) - 1, timeout=20_000)  # the table follows
    w.seg.undo_btn.native.click()  # the first result went into a new layer: nothing before it
    assert "nothing" not in w.status.text() and "no Segment or re-label to undo" in w.status.text()
    np.testing.assert_array_equal(layer.data, first)


def test_batch_segments_a_folder_like_the_command_line_and_never_overwrites(qtbot, make_napari_viewer, misc,
                                                                            tmp_path, default_model):
    import tifffile

    from napari_unet.engine.segmentation import segment_image

    images, out = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    crops = {"a": misc[:128, :128], "b": misc[128:256, :128], "c": misc[:128, 128:256]}
    for name, crop in crops.items():
        tifffile.imwrite(images / f"{name}.tif", crop)
    (images / "broken.tif").write_bytes(b"II*\x00garbage")
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    w.seg.auto_scale.value, w.seg.scale.value, w.seg.tile.value = False, 1.0, 256
    w.batch.source.value, w.batch.out.value = images, out
    w.batch.run_btn.native.click()
    qtbot.waitUntil(lambda: w.batch.worker is None, timeout=120_000)
    assert sorted(p.name for p in out.iterdir()) == ["a_labels.tif", "b_labels.tif", "c_labels.tif"]
    for name, crop in crops.items():  # what the engine gives with the same options
        expected = segment_image(default_model, crop, postprocess=w.seg.postprocess(), tile=256, scale=1.0).labels
        np.testing.assert_array_equal(tifffile.imread(out / f"{name}_labels.tif"), expected)
    assert "3 of 4 images" in w.batch.report.value and "broken.tif: " in w.batch.report.value
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    w.batch.run_btn.native.click()  # again: nothing is replaced, one sentence per file
    qtbot.waitUntil(lambda: w.batch.worker is None, timeout=60_000)
    assert w.batch.report.value.count("already exists; it was not replaced") == 3
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
