"""The dock's stack option in a real napari window: 3D objects give one labels layer with 3D ids."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet._widget.segment_options import STACK_CHOICES

pytestmark = pytest.mark.gui


def test_3d_objects_option_gives_one_labels_layer_with_3d_ids(qtbot, make_napari_viewer, misc):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([misc[:160, :160]] * 4), name="stack", scale=(2.0, 0.5, 0.5))
    _, w = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "U-Net")
    assert list(STACK_CHOICES) == list(w.seg.stack.choices)
    w.seg.stack.value = "3D objects"
    w.seg.run_btn.native.click()
    qtbot.waitUntil(lambda: w.seg.worker is None, timeout=120_000)
    labels = [layer for layer in viewer.layers if layer.name.startswith("stack labels")]
    assert len(labels) == 1
    data = np.asarray(labels[0].data)
    assert data.shape == (4, 160, 160) and data.max() > 2
    assert all(np.array_equal(p, data[0]) for p in data)  # each nucleus one id through the planes
    assert "3D objects" in w.status.text()
    np.testing.assert_allclose(labels[0].scale, (2.0, 0.5, 0.5))


def test_stack_option_follows_the_layers_axis_names(make_napari_viewer, misc):
    viewer = make_napari_viewer()
    viewer.add_image(misc[:64, :64], name="plane")
    _, w = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "U-Net")
    assert w.seg.stack.value == "current plane"
    viewer.add_image(np.stack([misc[:64, :64]] * 3), name="movie", axis_labels=("t", "y", "x"))
    w.seg.image.value = viewer.layers["movie"]
    assert w.seg.stack.value == "track through time"
    viewer.add_image(np.stack([misc[:64, :64]] * 3), name="z", axis_labels=("z", "y", "x"))
    w.seg.image.value = viewer.layers["z"]
    assert w.seg.stack.value == "3D objects"
