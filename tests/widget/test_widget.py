"""The dock widget in a real napari viewer under Xvfb (pytest-xvfb), with real models and data."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from magicgui.widgets import Container, Label
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QApplication, QMessageBox
from skimage import data

from napari_unet import segment
from napari_unet._widget import UNetWidget
from napari_unet._widget.dock import KEEP, STOP
from napari_unet._widget.stepped_add import add_in_steps
from napari_unet.engine.predict import choose_scale
from napari_unet.engine.scale import postprocess_at_scale
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.training.pairs import read_pairs
from napari_unet.training.runner import FineTuneBusy, FineTuneRequest, FineTuneRunner
from napari_unet.training.versions import list_versions, models_dir_for
from tests.helpers import make_tiny_model


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    """Settings go to a temporary folder, never the real home."""
    monkeypatch.setenv("NAPARI_UNET_CONFIG_DIR", str(tmp_path / "config"))


def _dock(viewer, tmp_path=None):
    dock, w = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "U-Net")
    if tmp_path is not None:
        w.corrections.folder.value = tmp_path / "pairs"
    return dock, w


@pytest.fixture
def widget(make_napari_viewer, tmp_path, misc):
    viewer = make_napari_viewer()
    viewer.add_image(misc, name="misc")
    return _dock(viewer, tmp_path)[1]


def _segment(qtbot, w, timeout=60_000):
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=timeout)


def test_manifest_validates_with_imports():
    npe2 = shutil.which("npe2") or str(Path(sys.executable).parent / "npe2")
    proc = subprocess.run([npe2, "validate", "--imports", "napari-unet-nuclei"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_manifest_contributes_widget_and_samples(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "U-Net")
    assert isinstance(widget, UNetWidget)
    viewer.open_sample("napari-unet-nuclei", "nuclei_misc")
    assert viewer.layers[-1].data.shape == (512, 512)
    assert widget.seg.image.value is viewer.layers[-1]  # the typed picker follows the layer list


def test_fits_a_laptop_and_explains_every_control(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    dock, w = _dock(viewer)
    assert 360 <= w.sizeHint().width() <= 420
    assert dock.minimumSizeHint().width() <= 420 and dock.minimumSizeHint().height() <= 600
    assert viewer.window._qt_window.minimumSizeHint().height() <= 740
    assert viewer.window._qt_window.minimumSizeHint().width() <= 1366
    # nothing is cut off at the dock's minimum width: the scrolled content fits inside it
    assert w.scroll.widget().minimumSizeHint().width() <= w.minimumSizeHint().width() <= 360
    w.models.extra.append(Path("/models/" + "a_very_long_model_file_name_" * 4 + ".safetensors"))
    w.models.refresh()
    assert w.minimumSizeHint().width() <= 360
    assert not w.advanced.isExpanded()  # tile, overlap, batch, device folded away
    for section in (w.models.main, w.seg.main, w.seg.advanced, w.corrections.main, w.ft.top, w.ft.bottom):
        for control in section:
            if not isinstance(control, (Label, Container)):
                assert len(control.tooltip or "") > 20, control.label or control.text


def test_sections_explain_themselves_and_a_reopened_dock_takes_the_selected_labels(make_napari_viewer, misc):
    viewer = make_napari_viewer()
    viewer.add_image(misc, name="misc")
    first, second = (viewer.add_labels(np.zeros(misc.shape, np.uint16), name=n) for n in ("first", "second"))
    for selected in (first, second):  # whichever the plain list would show first, the selected one is taken
        viewer.layers.selection.active = selected
        _, w = _dock(viewer)
        assert w.corrections.labels.value is selected
        viewer.window.remove_dock_widget("all")
    assert set(w.sections) == {"Model", "Segment", "Corrections", "Fine-tune", "Batch"}
    for title, section in w.sections.items():
        assert len(section.button.toolTip()) > 40, title


def test_segment_matches_engine_and_relabels_without_network(qtbot, widget, misc, default_model):
    w = widget
    assert w.seg.auto_scale.value and not w.seg.scale.enabled  # automatic scale by default, as in segment()
    _segment(qtbot, w)
    layer = w.viewer.layers["misc labels"]
    chosen = choose_scale(default_model, misc, device="cpu").scale
    expected = segment(misc, default_model, postprocess=postprocess_at_scale(w.seg.postprocess(), chosen),
                       device="cpu", scale=chosen)
    np.testing.assert_array_equal(layer.data, expected)
    assert f"scale {chosen:.2f} (chosen automatically)" in w.seg.summary.value
    assert "⚠" not in w.seg.summary.value  # the sample looks like the training images: no warning
    assert w.seg.progress.value == w.seg.progress.max
    assert w.corrections.labels.value is layer and w.corrections.image.value is w.viewer.layers["misc"]
    assert w.corrections.what.value == "Export 'misc labels' with 'misc'"
    before, min_size = layer.data.copy(), w.seg.min_size.value
    w.seg.min_size.value = 5000  # every nucleus is smaller: all disappear, without running the network
    qtbot.waitUntil(lambda: w.seg.writer.pending == 0 and layer.data.max() == 0, timeout=10_000)
    w.seg.min_size.value = min_size
    qtbot.waitUntil(lambda: w.seg.writer.pending == 0 and layer.data.max() > 0, timeout=10_000)
    np.testing.assert_array_equal(layer.data, before)
    _segment(qtbot, w)  # unedited layer: updated in place, not stacked
    assert [la.name for la in w.viewer.layers] == ["misc", "misc labels"]


def test_labels_added_in_steps_end_as_add_labels_does(qtbot, make_napari_viewer, misc):
    """napari's build of a new labels layer is split over turns of the event loop; once done, the
    layer is selected, visible, drawn, and has the same overlays (built as visuals) as add_labels'."""
    viewer = make_napari_viewer()
    viewer.add_image(misc, name="misc")
    data = np.zeros(misc.shape, np.uint16)
    plain = viewer.add_labels(data.copy(), name="plain")
    layer = add_in_steps(viewer, data, name="stepped", scale=(2, 2))
    assert layer in viewer.layers and not layer.visible  # nothing shown in the turn that added it
    assert viewer.layers.selection.active is plain
    qtbot.waitUntil(lambda: layer.visible, timeout=5_000)
    assert viewer.layers.selection.active is layer and tuple(layer.scale) == (2, 2)
    overlays = lambda la: {k: o.visible for k, o in la._overlays.items()}  # noqa: E731
    assert overlays(layer) == overlays(plain)
    canvas = viewer.window._qt_viewer.canvas
    assert len(canvas._layer_overlay_to_visual[layer]) == len(canvas._layer_overlay_to_visual[plain]) >= 2
    container = viewer.window._qt_viewer.controls
    controls = container.widgets
    gone = add_in_steps(viewer, data, name="removed at once")
    assert gone not in canvas.layer_to_visual and gone not in controls  # napari's builders held back
    viewer.layers.remove(gone)  # built at once, so napari's removal finds what it removes
    assert gone not in canvas.layer_to_visual and gone not in controls
    picked = add_in_steps(viewer, data, name="selected by hand at once")
    viewer.layers.selection.active = picked  # napari shows its controls: built at once
    assert picked in canvas.layer_to_visual and container.currentWidget() is controls[picked]
    qtbot.waitUntil(lambda: picked.visible, timeout=10_000)  # the remaining steps (slow on a busy machine)
    assert gone not in viewer.layers and not gone.visible  # ... did nothing to the removed layer


def test_layers_added_in_steps_survive_moves_3d_clear_and_close(qtbot, make_napari_viewer):
    """Two layers mid-build, moved, shown in 3D, then all layers cleared and the viewer closed:
    napari's handlers find what they need at every point (no error), and a later add completes."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.float32), name="i")
    add_in_steps(viewer, np.zeros((64, 64), np.uint16), name="a")
    b = add_in_steps(viewer, np.zeros((64, 64), np.uint16), name="b")
    viewer.layers.move(viewer.layers.index(b), 0)
    viewer.dims.ndisplay = 3
    qtbot.wait(50)
    viewer.layers.clear()
    qtbot.wait(300)
    c = add_in_steps(viewer, np.zeros((64, 64), np.uint16), name="c")
    qtbot.waitUntil(lambda: c.visible, timeout=5_000)
    add_in_steps(viewer, np.zeros((64, 64), np.uint16), name="d")
    viewer.close()
    qtbot.wait(300)


def test_auto_scale_on_small_nuclei_and_a_scale_set_by_hand(qtbot, make_napari_viewer, u2os, default_model):
    """The U2OS sample shrunk 0.4×: automatic scale enlarges it back (and scales min size down);
    a scale set by hand is used as given."""
    from skimage.transform import rescale

    small = rescale(u2os.astype(np.float32), 0.4, anti_aliasing=True, preserve_range=True).astype(np.uint16)
    viewer = make_napari_viewer()
    viewer.add_image(small, name="small")
    _, w = _dock(viewer)
    _segment(qtbot, w)
    auto = w.seg.writer.state.result(viewer.layers["small labels"]).scale
    assert 2.0 <= auto <= 3.0 and w.seg.scale.value == round(auto, 2)  # shown in the (greyed) box
    min_size = postprocess_at_scale(w.seg.postprocess(), auto).min_size
    assert min_size < w.seg.min_size.value and f"min size {min_size} px" in w.seg.summary.value
    assert f"scale {auto:.2f} (chosen automatically)" in w.status.text()
    w.seg.auto_scale.value = False
    w.seg.scale.value = 1.0
    assert w.seg.scale.enabled
    _segment(qtbot, w)
    assert "scale 1.00 (as set)" in w.seg.summary.value
    assert w.seg.writer.state.result(viewer.layers["small labels"]).scale == 1.0


def test_napari_ctrl_z_undoes_a_relabel_like_a_brush_stroke(qtbot, widget):
    w = widget
    _segment(qtbot, w)
    layer = w.viewer.layers["misc labels"]
    first = layer.data.copy()
    w.seg.min_size.value = 5000  # every nucleus is smaller: the re-label empties the layer
    qtbot.waitUntil(lambda: w.seg.writer.pending == 0 and layer.data.max() == 0, timeout=10_000)
    w.viewer.layers.selection.active = layer
    canvas = w.viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # napari's own key binding
    np.testing.assert_array_equal(layer.data, first)
    assert w.seg.writer.unedited(layer)  # the dock's earlier result, not a user's edit
    layer.paint((10, 10), 999)  # a brush stroke after it is an edit, and Ctrl+Z takes it back alone
    assert not w.seg.writer.unedited(layer)
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    np.testing.assert_array_equal(layer.data, first)
    w.seg.min_size.value = 60  # still the dock's own result: re-labelled in place, not a new layer
    qtbot.waitUntil(lambda: w.seg.writer.pending == 0 and not np.array_equal(layer.data, first), timeout=10_000)
    assert [la.name for la in w.viewer.layers] == ["misc", "misc labels"]


def test_edited_layer_is_never_overwritten(qtbot, widget):
    w = widget
    _segment(qtbot, w)
    layer = w.viewer.layers["misc labels"]
    layer.paint((10, 10), 999)  # a user's brush stroke
    edited = layer.data.copy()
    w.seg.min_size.value = 60
    qtbot.waitUntil(lambda: w.seg.writer.pending == 0, timeout=10_000)
    np.testing.assert_array_equal(layer.data, edited)
    _segment(qtbot, w)
    np.testing.assert_array_equal(w.viewer.layers["misc labels"].data, edited)
    assert "misc labels [2]" in w.viewer.layers


def test_cancel_stops_quickly_and_removing_the_image_leaves_no_layer(qtbot, widget, misc):
    w = widget
    w.viewer.layers["misc"].data = np.tile(misc, (4, 4))  # 2048², many tiles
    w.seg.tile.value, w.seg.overlap.value = 128, 32
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: "misc labels" in w.viewer.layers, timeout=5_000)  # added right after the click
    assert not w.viewer.layers["misc labels"].data.any()
    qtbot.waitUntil(lambda: w.seg.progress.value >= 1, timeout=30_000)
    stopped = []  # when the worker thread ends (timed in that thread: napari's main-thread work not counted)
    w.seg.worker.finished.connect(lambda: stopped.append(time.monotonic()), Qt.ConnectionType.DirectConnection)
    t0 = time.monotonic()
    w.seg.cancel_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None and bool(stopped), timeout=5_000)
    assert stopped[0] - t0 < 1.0
    qtbot.waitUntil(lambda: "misc labels" not in w.viewer.layers, timeout=5_000)  # the empty layer goes too
    assert "cancelled" in w.status.text()
    w.seg.run_btn.native.click()
    assert w.seg.progress.value == 0  # progress starts afresh
    qtbot.waitUntil(lambda: w.seg.progress.value >= 1, timeout=30_000)
    w.viewer.layers.remove("misc")
    qtbot.waitUntil(lambda: w.seg.worker is None and len(w.viewer.layers) == 0, timeout=5_000)
    assert "removed" in w.status.text()


def test_stack_current_plane_and_per_plane_counts(qtbot, make_napari_viewer, misc):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([misc, misc[::-1], misc[:, ::-1]]), name="stack")
    _, w = _dock(viewer)
    viewer.dims.set_current_step(0, 2)
    _segment(qtbot, w)
    data = viewer.layers["stack labels"].data
    assert data.shape == (3, 512, 512)
    assert data[2].max() > 0 and data[0].max() == 0 and data[1].max() == 0
    viewer.layers.remove("stack labels")
    w.seg.stack.value = "whole stack"
    _segment(qtbot, w)
    n = len(np.unique(viewer.layers["stack labels"].data[0])) - 1
    assert f"~{n} objects per plane, 3 planes" in w.status.text()


def test_export_pairs_only_what_belongs_together(qtbot, make_napari_viewer, tmp_path, misc, u2os):
    viewer = make_napari_viewer()
    viewer.add_image(misc, name="field_01")
    viewer.add_image(misc[::-1].copy(), name="field_02")  # same size: the dangerous case
    _, w = _dock(viewer, tmp_path)
    c = w.corrections
    c.export_btn.native.click()
    assert "no labels layer" in w.status.text()
    w.seg.image.value = viewer.layers["field_01"]
    _segment(qtbot, w)
    layer = viewer.layers["field_01 labels"]
    viewer.layers.selection.active = viewer.layers["field_02"]
    assert c.image.value is viewer.layers["field_01"] and not c.image.enabled
    c.export_btn.native.click()
    assert "unchanged" in w.status.text()
    layer.paint((400, 400), 500)  # add a nucleus with the brush
    c.image.value = viewer.layers["field_02"]  # even forced, the wrong image is refused
    c.export_btn.native.click()
    assert "was segmented from 'field_01', not 'field_02'" in w.status.text()
    assert not (tmp_path / "pairs").exists()
    c._follow_labels()
    c.export_btn.native.click()
    pairs, skipped = read_pairs(tmp_path / "pairs")
    assert len(pairs) == 1 and not skipped
    np.testing.assert_array_equal(pairs[0].labels, layer.data)
    np.testing.assert_array_equal(pairs[0].image, misc)
    c.export_btn.native.click()
    assert "already exported" in w.status.text() and len(read_pairs(tmp_path / "pairs")[0]) == 1
    assert "1 pair in the folder" in c.count.value
    # labels the widget did not make: the user picks the image, and the shapes must match
    viewer.add_labels(np.ones(u2os.shape, np.uint16), name="drawn")
    c.labels.value = viewer.layers["drawn"]
    assert c.image.enabled
    c.image.value = viewer.layers["field_02"]
    c.export_btn.native.click()
    assert "'drawn' (768×869) does not fit 'field_02' (512×512)" in w.status.text()
    viewer.add_shapes([[[100, 100], [100, 300], [300, 300], [300, 100]]], shape_type="rectangle", name="box")
    c.labels.value, c.region.value = layer, viewer.layers["box"]
    c._follow_labels()
    c.export_btn.native.click()
    pairs, _ = read_pairs(tmp_path / "pairs")
    assert len(pairs) == 2 and pairs[1].reviewed.sum() == 200 * 200


def test_settings_and_pairs_folder_are_remembered(make_napari_viewer, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    _, w = _dock(viewer, tmp_path)
    w.seg.tile.value, w.ft.epochs.value = 256, 7
    w.seg.auto_scale.value, w.seg.scale.value = False, 1.5
    viewer.window.remove_dock_widget("all")
    _, w2 = _dock(make_napari_viewer())
    assert Path(w2.corrections.folder.value) == tmp_path / "pairs"
    assert (w2.seg.tile.value, w2.ft.epochs.value) == (256, 7)
    assert (w2.seg.auto_scale.value, w2.seg.scale.value, w2.seg.scale.enabled) == (False, 1.5, True)
    w2.restore_btn.native.click()
    assert (w2.seg.tile.value, w2.ft.epochs.value) == (512, 30)
    assert (w2.seg.auto_scale.value, w2.seg.scale.enabled) == (True, False)
    assert (tmp_path / "config" / "settings.json").is_file()


def test_bad_checkpoint_shows_notification_and_keeps_model(widget, tmp_path):
    from napari.utils.notifications import notification_manager

    w = widget
    bad = tmp_path / "bad_name.safetensors"
    bad.write_bytes(b"garbage")
    before = w.state.model
    n = len(notification_manager.records)
    assert not w.models.select(bad)
    assert w.state.model is before
    assert "bad_name.safetensors" in w.status.text()
    assert any("bad_name.safetensors" in str(r.message) for r in notification_manager.records[n:])


def test_no_image_layer_message(make_napari_viewer):
    _, w = _dock(make_napari_viewer())
    w.seg.run_btn.native.click()
    assert "no image layer" in w.status.text()


def test_rgb_histology_runs_by_default_warns_and_takes_a_stain(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(data.immunohistochemistry()[:256, :256], name="ihc", rgb=True)
    _, w = _dock(viewer)
    w.seg.auto_scale.value, w.seg.scale.value, w.seg.tile.value = False, 1.0, 256
    _segment(qtbot, w)  # channel "auto" on a colour image runs (blue) and says it looks wrong
    assert viewer.layers["ihc labels"].data.shape == (256, 256)
    assert "hematoxylin" in w.seg.summary.value and "hematoxylin" in w.status.text()
    w.seg.stain.value, w.seg.channel.value = "hematoxylin", None
    _segment(qtbot, w)
    assert viewer.layers["ihc labels"].data.max() > 0 and "colour" not in w.seg.summary.value, w.seg.summary.value


# ------------------------------------------------------------------ fine-tuning lifecycle
def _tiny_setup(viewer, tmp_path, misc, misc_labels):
    viewer.add_image(misc, name="misc")
    _, w = _dock(viewer, tmp_path)
    tiny = save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, ModelInfo(name="tiny"))
    assert w.models.select(tiny)
    viewer.add_labels(misc_labels, name="truth")
    w.corrections.labels.value = viewer.layers["truth"]
    w.corrections.image.value = viewer.layers["misc"]
    w.corrections.export_btn.native.click()
    assert "Exported" in w.status.text(), w.status.text()
    return w


def _answer_close_question(text):
    """Click the close dialog's button named ``text`` (None: press Enter, the default button)."""
    from qtpy.QtCore import QTimer

    def click():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            return QTimer.singleShot(50, click)
        names = sorted(b.text().replace("&", "") for b in box.buttons())
        assert names == ["Cancel", KEEP, STOP], names
        if text is None:
            assert box.defaultButton().text() == KEEP  # the safe choice
            box.defaultButton().click()
        else:
            next(b for b in box.buttons() if b.text().replace("&", "") == text).click()

    QTimer.singleShot(50, click)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_finetune_streams_into_plot_and_lists_only_usable_versions(qtbot, make_napari_viewer, tmp_path, misc,
                                                                    misc_labels):
    w = _tiny_setup(make_napari_viewer(), tmp_path, misc, misc_labels)
    w.ft.epochs.value = 3
    w.ft.extra_args = ("--steps-per-epoch", "2", "--batch-size", "2")
    w.ft.start_btn.native.click()
    assert not w.ft.start_btn.enabled
    # the child's exit is seen by the runner's reader thread first, then by the dock (a queued event)
    qtbot.waitUntil(lambda: not w.ft.session.active and w.ft.start_btn.enabled, timeout=180_000)
    done = w.ft.session.last_done
    assert w.ft.plot.points("val_f1") == 4  # the base model's score at epoch 0, then 3 epochs
    assert w.ft.plot.series["val_f1"][0][0] == 0
    # the train loss also every half epoch, so a short run draws a curve
    assert w.ft.plot.series["train_loss"][0] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert f"{done['base_f1']:.3f} → {done['f1']:.3f} on 1 pair(s)" in w.ft.status.value
    assert w.ft.use_btn.enabled == done["improved"]
    versions = list_versions(models_dir_for(tmp_path / "pairs"))
    labels = [w.models.model.choices]
    if done["improved"]:
        assert [v.path for v in versions] == [Path(done["path"])] and versions[0].val_objects > 0
        assert any("val pair" in str(c) for c in labels)
    else:
        assert versions == [] and Path(done["path"]).parent.name == "rejected"


def test_dock_close_reopen_cancel_rerun_and_napari_close(qtbot, make_napari_viewer, tmp_path, misc, misc_labels):
    viewer = make_napari_viewer()
    w = _tiny_setup(viewer, tmp_path, misc, misc_labels)
    w.ft.epochs.value, w.ft.time_budget.value = 10000, 3600
    w.ft.extra_args = ("--steps-per-epoch", "2", "--batch-size", "2")
    w.ft.start_btn.native.click()
    session = w.ft.session
    qtbot.waitUntil(lambda: any(e["event"] == "progress" and e["epoch"] >= 1 for e in session.history),
                    timeout=120_000)
    pid = session.pid
    with pytest.raises(FineTuneBusy, match=f"process {pid}\\)"):  # the training child, not napari
        FineTuneRunner(FineTuneRequest(tmp_path / "pairs"), lambda event: None).start()
    assert pid != os.getpid()
    _answer_close_question("Cancel")  # the dock comes back, the training untouched
    viewer.window.remove_dock_widget("all")
    qtbot.waitUntil(lambda: w.parent() is not None, timeout=5_000)
    assert session.active and w.ft.cancel_btn.enabled and w.seg.run_btn.enabled
    _answer_close_question(None)  # the default: keep it running
    viewer.window.remove_dock_widget("all")
    assert session.active and not _gone(pid)
    _, w2 = _dock(viewer)  # reopened: reattached to the run, plot and state come back
    assert w2.ft.session is session and not w2.ft.start_btn.enabled and w2.ft.cancel_btn.enabled
    assert w2.ft.plot.points("val_f1") >= 2
    w2.ft.cancel_btn.native.click()
    # the child's exit is seen by the runner's reader thread first, then by the dock (a queued event)
    qtbot.waitUntil(lambda: not session.active and w2.ft.start_btn.enabled, timeout=60_000)
    assert _gone(pid)
    assert w2.ft.status.value.startswith("Cancelled"), w2.ft.status.value
    w2.ft.start_btn.native.click()  # an immediate re-run is accepted
    assert session.active and session.pid != pid, w2.status.text()
    pid = session.pid
    qtbot.waitUntil(lambda: session.runner.started, timeout=120_000)
    _answer_close_question(STOP)  # closing the dock: stop it
    viewer.window.remove_dock_widget("all")
    qtbot.waitUntil(lambda: not session.active, timeout=60_000)
    assert _gone(pid)
    _, w3 = _dock(viewer)
    w3.ft.start_btn.native.click()
    qtbot.waitUntil(lambda: session.runner.started, timeout=120_000)
    pid, t0 = session.pid, time.monotonic()
    viewer.close()  # closing napari stops the training process within seconds
    assert _gone(pid) and time.monotonic() - t0 < 30  # stopped, not left running (seconds; more on a busy machine)


def test_reopened_dock_remembers_which_image_labels_belong_to(qtbot, make_napari_viewer, misc):
    viewer = make_napari_viewer()
    viewer.add_image(misc, name="a")
    viewer.add_image(misc[::-1].copy(), name="b")
    _, w = _dock(viewer)
    w.seg.image.value = viewer.layers["a"]
    _segment(qtbot, w)
    viewer.window.remove_dock_widget("all")
    viewer.layers.selection.active = viewer.layers["b"]  # the closed dock no longer reacts
    _, w2 = _dock(viewer)
    w2.corrections.labels.value = viewer.layers["a labels"]
    assert w2.corrections.image.value is viewer.layers["a"] and not w2.corrections.image.enabled


def test_notifications_show_names_literally(qtbot, make_napari_viewer):
    """napari's pop-up cut off the bottom of its line: "nuclei_u2os" read "nuclei u2os"."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    viewer = make_napari_viewer(show=True)
    _, w = _dock(viewer)

    def popup(text):
        w.state.info(text)
        label = NapariQtNotification._instances[-1].message
        assert label.text() == text  # handed over verbatim
        assert label.contentsRect().height() >= label.fontMetrics().height()  # room for the whole line
        return label.grab().toImage()

    popup("nuclei_u2os_labels")
    assert popup("________") != popup("        ")  # the underscores are drawn (napari alone: both blank)


def test_dock_shows_the_min_size_used_and_follows_a_relabel(qtbot, widget, misc):
    """The summary and status line give the min size in image pixels at the chosen scale, and
    change with every re-label (count and min size)."""
    w = widget
    w.seg.auto_scale.value, w.seg.scale.value = False, 1.6  # objects enlarged: the model's min size shrinks
    _segment(qtbot, w)
    layer = w.viewer.layers["misc labels"]
    used = postprocess_at_scale(w.seg.postprocess(), 1.6).min_size
    assert used < w.seg.min_size.value
    n = len(np.unique(layer.data)) - 1
    assert f"{n} objects; scale 1.60 (as set), min size {used} px" in w.seg.summary.value
    assert f"{n} objects" in w.status.text()
    areas = np.bincount(layer.data.ravel())[1:]
    w.seg.min_size.value = round(float(np.median(areas[areas > 0])) * 1.6**2)  # about half the objects go
    qtbot.waitUntil(lambda: w.seg.writer.pending == 0 and len(np.unique(layer.data)) - 1 < n, timeout=20_000)
    m = len(np.unique(layer.data)) - 1
    used = postprocess_at_scale(w.seg.postprocess(), 1.6).min_size
    assert f"{m} objects; scale 1.60 (as set), min size {used} px" in w.seg.summary.value
    assert f"Re-labelled 'misc labels': {m} objects" in w.status.text()


@pytest.mark.slow
def test_semantic_package_from_the_dock_gives_class_labels(qtbot, make_napari_viewer, tmp_path, misc):
    """A bioimage.io package whose classes are not nuclei: the dock writes the class map, as segment() does,
    and a post-processing change leaves it alone."""
    pytest.importorskip("bioimageio.spec")
    from tests.helpers import build_foreign_package

    image = misc[:128, :160]
    package = build_foreign_package(tmp_path / "pkg", image, torchscript=True, names=("apple", "pear"), softmax=True)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="crop")
    _, w = _dock(viewer)
    assert w.models.select(package) and w.state.model.semantic
    w.seg.tile.value, w.seg.overlap.value = 192, 0
    w.seg.writer.prepare(viewer.layers["crop"])  # the empty layer a slow run adds at the click gets the class map
    _segment(qtbot, w)
    qtbot.waitUntil(lambda: "crop labels" in viewer.layers, timeout=60_000)  # added in steps (slow on a busy machine)
    layer = viewer.layers["crop labels"]
    w.seg.writer.discard(layer)  # what the end of a run does to an empty layer that got no result
    assert layer in viewer.layers  # a class map has no probabilities kept, but it is a result
    expected = segment(image, w.state.model, device="cpu", tile=192, overlap=0)
    np.testing.assert_array_equal(layer.data, expected)
    assert set(np.unique(layer.data)) <= {0, 1} and "classes" in w.seg.summary.value
    w.seg.threshold.value = 0.9  # a nuclei post-processing value: no re-label of a class map
    qtbot.wait(300)
    assert w.seg.writer.pending == 0
    np.testing.assert_array_equal(layer.data, expected)
