"""The dock widget in a real napari viewer under Xvfb (pytest-xvfb), with real models and data."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import QElapsedTimer, QTimer

from napari_unet import segment
from napari_unet._widget import UNetWidget
from napari_unet.checkpoint import ModelInfo, save_checkpoint
from napari_unet.pairs import read_pairs

from .conftest import make_tiny_model


@pytest.fixture
def widget(make_napari_viewer, tmp_path, misc):
    viewer = make_napari_viewer()
    viewer.add_image(misc, name="misc")
    w = UNetWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.pairs_edit.setText(str(tmp_path / "pairs"))
    w._refresh_pairs()
    return w


def _segment(qtbot, w, timeout=60_000):
    w.segment()
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def test_manifest_validates_with_imports():
    npe2 = shutil.which("npe2") or str(Path(sys.executable).parent / "npe2")
    proc = subprocess.run([npe2, "validate", "--imports", "napari-unet"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_manifest_contributes_widget_and_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-unet", "U-Net")
    assert isinstance(widget, UNetWidget)
    viewer.open_sample("napari-unet", "nuclei_misc")
    assert viewer.layers[-1].data.shape == (512, 512)
    assert widget.image_combo.currentText() == viewer.layers[-1].name


def test_segment_matches_engine_and_relabels_without_network(qtbot, widget, misc, default_model):
    w = widget
    _segment(qtbot, w)
    layer = w.viewer.layers["misc labels"]
    expected = segment(misc, default_model, postprocess=w.postprocess_config(), device="cpu",
                       scale=w.scale.value())
    np.testing.assert_array_equal(layer.data, expected)
    assert w.inference_runs == 1
    before, min_size = layer.data.copy(), w.min_size.value()
    w.min_size.setValue(5000)  # every nucleus is smaller: all disappear, without running the network
    qtbot.waitUntil(lambda: w.relabel_pending == 0 and layer.data.max() == 0, timeout=10_000)
    assert w.inference_runs == 1
    w.min_size.setValue(min_size)
    qtbot.waitUntil(lambda: w.relabel_pending == 0, timeout=10_000)
    np.testing.assert_array_equal(layer.data, before)
    _segment(qtbot, w)  # unedited layer: updated in place, not stacked
    assert [la.name for la in w.viewer.layers] == ["misc", "misc labels"]


def test_edited_layer_is_never_overwritten(qtbot, widget):
    w = widget
    _segment(qtbot, w)
    layer = w.viewer.layers["misc labels"]
    layer.paint((10, 10), 999)  # a user's brush stroke
    edited = layer.data.copy()
    w.min_size.setValue(60)
    qtbot.waitUntil(lambda: w.relabel_pending == 0, timeout=10_000)
    np.testing.assert_array_equal(layer.data, edited)
    _segment(qtbot, w)
    np.testing.assert_array_equal(w.viewer.layers["misc labels"].data, edited)
    assert "misc labels [2]" in w.viewer.layers


def test_cancel_stops_quickly(qtbot, widget, misc):
    w = widget
    w.viewer.layers["misc"].data = np.tile(misc, (4, 4))  # 2048², many tiles
    w.tile.setValue(128)
    w.overlap.setValue(32)
    w.segment()
    qtbot.waitUntil(lambda: w.seg_progress.value() >= 1, timeout=30_000)
    t0 = time.monotonic()
    w.cancel_segment()
    qtbot.waitUntil(lambda: w.worker is None, timeout=5_000)
    assert time.monotonic() - t0 < 1.0
    assert "misc labels" not in w.viewer.layers
    assert "cancelled" in w.status.text()


def test_stack_current_plane(qtbot, make_napari_viewer, misc):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([misc, misc[::-1], misc[:, ::-1]]), name="stack")
    w = UNetWidget(viewer)
    viewer.dims.set_current_step(0, 2)
    _segment(qtbot, w)
    data = viewer.layers["stack labels"].data
    assert data.shape == (3, 512, 512)
    assert data[2].max() > 0 and data[0].max() == 0 and data[1].max() == 0


def test_paint_then_export_pair_and_rectangle(qtbot, widget, misc):
    w = widget
    w.export_corrections()
    assert "no labels layer" in w.status.text()
    _segment(qtbot, w)
    w.export_corrections()
    assert "unchanged" in w.status.text()
    layer = w.viewer.layers["misc labels"]
    layer.selected_label = 500
    layer.paint((400, 400), 500)  # add a nucleus with the brush
    w.export_corrections()
    pairs, skipped = read_pairs(w.pairs_dir())
    assert len(pairs) == 1 and not skipped
    np.testing.assert_array_equal(pairs[0].labels, layer.data)
    np.testing.assert_array_equal(pairs[0].image, misc)
    assert "1 pair in folder" in w.pairs_label.text()
    w.viewer.add_shapes([[[100, 100], [100, 300], [300, 300], [300, 100]]], shape_type="rectangle")
    w.rect_check.setChecked(True)
    w.export_corrections()
    pairs, _ = read_pairs(w.pairs_dir())
    assert len(pairs) == 2 and pairs[1].reviewed.sum() == 200 * 200


def test_bad_checkpoint_shows_notification_and_keeps_model(widget, tmp_path):
    from napari.utils.notifications import notification_manager

    w = widget
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage")
    before = w.model
    n = len(notification_manager.records)
    assert not w.select_model(bad)
    assert w.model is before
    assert "bad.safetensors" in w.status.text()
    assert any("bad.safetensors" in str(r.message) for r in notification_manager.records[n:])


def test_no_image_layer_message(make_napari_viewer):
    w = UNetWidget(make_napari_viewer())
    w.segment()
    assert "no image layer" in w.status.text()


def _heartbeat(qtbot, until, timeout_ms):
    """Largest gap (s) between 10 ms timer beats while ``until()`` is False."""
    gaps, clock = [], QElapsedTimer()
    clock.start()
    last = [clock.elapsed()]

    def beat():
        now = clock.elapsed()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.timeout.connect(beat)
    timer.start(10)
    qtbot.waitUntil(until, timeout=timeout_ms)
    timer.stop()
    return max(gaps) / 1000


def test_napari_stays_responsive_while_segmenting(qtbot, widget, misc):
    w = widget
    w.viewer.layers["misc"].data = np.tile(misc, (2, 2))
    w.segment()
    assert _heartbeat(qtbot, lambda: w.worker is None, 120_000) < 0.5


def test_finetune_streams_into_plot_and_gates(qtbot, widget, misc, misc_labels, tmp_path):
    w = widget
    tiny = save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, ModelInfo(name="tiny"))
    assert w.select_model(tiny)
    w.viewer.add_labels(misc_labels, name="misc labels")
    w.export_corrections()
    w.epochs.setValue(3)
    w.finetune_extra_args = ("--steps-per-epoch", "2", "--batch-size", "2")
    w.finetune()
    gap = _heartbeat(qtbot, lambda: w.last_done is not None, 180_000)
    assert gap < 0.5
    assert w.plot.points("val_f1") == 3
    done = w.last_done
    assert "F1" in w.ft_status.text()
    assert w.use_new_btn.isEnabled() == done["improved"]
    assert any(v in w.model_combo.itemText(i) for i in range(w.model_combo.count()) for v in ["from_tiny"])


def test_rgb_image_needs_and_accepts_a_channel(qtbot, make_napari_viewer, misc):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([misc, misc // 2, misc // 3], -1), name="rgb", rgb=True)
    w = UNetWidget(viewer)
    _segment(qtbot, w)
    assert "choose a channel" in w.status.text() and "rgb labels" not in viewer.layers
    w.channel_combo.setCurrentIndex(1)  # channel 0
    _segment(qtbot, w)
    assert viewer.layers["rgb labels"].data.shape == (512, 512)
