"""Review in a real napari window: the doubt overlay, Next doubtful, Looks right, brush edits,
and the export of only the reviewed objects."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.training.pairs import read_pairs
from tests.widget.test_widget import _config_dir, _dock, _segment  # noqa: F401 - the fixture is autouse


@pytest.fixture
def reviewed(qtbot, make_napari_viewer, tmp_path, u2os):
    viewer = make_napari_viewer()
    viewer.add_image(u2os, name="u2os")
    _, w = _dock(viewer, tmp_path)
    _segment(qtbot, w)
    qtbot.waitUntil(lambda: "u2os labels" in viewer.layers, timeout=10_000)
    w.review.find_btn.native.click()
    qtbot.waitUntil(lambda: w.review.worker is None and w.review.review is not None, timeout=120_000)
    return viewer, w


def test_next_doubtful_looks_right_brush_and_sparse_export(qtbot, reviewed, tmp_path):
    viewer, w = reviewed
    r = w.review.review
    labels = viewer.layers["u2os labels"]
    overlay = viewer.layers["u2os labels doubt"]
    assert len(overlay.data) == len(r.rows) > 0
    assert [d.doubt for d in r.rows] == sorted((d.doubt for d in r.rows), reverse=True)
    doubtful = sum(d.doubt >= 0.5 for d in r.rows)
    assert w.review.count.value == f"0 reviewed · {doubtful} doubtful left"

    objects = [i for i, d in enumerate(r.rows) if not d.missed][:3]
    first = r.rows[objects[0]]
    center_before = viewer.camera.center
    while r.current != objects[0]:  # Next doubtful walks the ranking, most doubtful first
        w.review.next_btn.native.click()
    assert viewer.camera.center != center_before
    world = labels.data_to_world(np.array(first.centroid))
    np.testing.assert_allclose(viewer.camera.center[-2:], world[-2:], atol=1e-6)
    assert labels.selected_label == first.id and viewer.layers.selection.active is labels
    w.review.right_btn.native.click()  # Looks right: reviewed, and on to the next one
    assert first.id in r.reviewed and r.current != objects[0]

    second = max((d for d in r.rows if not d.missed and d.id != first.id), key=lambda d: d.area)
    labels.brush_size = 5
    labels.paint(tuple(int(round(c)) for c in second.centroid), 0)  # the eraser makes a hole in it
    qtbot.waitUntil(lambda: second.id in r.reviewed, timeout=5000)
    assert (labels.data == second.id).any()  # a brush edit reviews the object
    assert r.touched is not None and r.touched.any()  # and the erased pixels count as background
    assert w.review.count.value.startswith("2 reviewed · ")

    overlay.visible = False  # the overlay can be hidden; the section keeps working
    w.review.export_btn.native.click()
    pairs, problems = read_pairs(tmp_path / "pairs")
    assert not problems and len(pairs) == 1
    pair = pairs[0]
    kept = set(np.unique(pair.labels[pair.reviewed])) - {0}
    assert len(kept) == 2  # only the two reviewed objects count
    everything = set(np.unique(pair.labels)) - {0}
    assert len(everything) > len(kept)  # other objects are in the crop but not reviewed
    assert "Exported 2 objects of" in w.status.text()
    w.review.export_btn.native.click()  # nothing new: not exported twice
    assert len(read_pairs(tmp_path / "pairs")[0]) == 1
    assert "already exported" in w.status.text()

    # a doubtful object that is a false detection: erased whole, it exports as reviewed background
    others = labels.data > 0
    false = next(d for d in r.rows if not d.missed and d.id not in r.reviewed and d.area >= 16
                 and not (ndi.binary_dilation(labels.data == d.id, iterations=8) & others
                          & (labels.data != d.id)).any())
    where = tuple(int(c) for c in np.argwhere(labels.data == false.id)[0])
    labels.fill(where, 0)
    qtbot.waitUntil(lambda: r.touched is not None and r.touched[where], timeout=5000)
    w.review.export_btn.native.click()
    assert "Exported 1 erased region of" in w.status.text()
    pairs, problems = read_pairs(tmp_path / "pairs")
    assert not problems and len(pairs) == 2
    assert not pairs[1].labels[pairs[1].reviewed].any()  # only background is reviewed in it


def test_finetune_from_ten_reviewed_objects_gives_an_honest_verdict(qtbot, reviewed, tmp_path):
    viewer, w = reviewed
    r = w.review.review
    w.review.next_btn.native.click()
    while len(r.reviewed) < 10:
        w.review.right_btn.native.click()  # Looks right, then on to the next one
    w.review.export_btn.native.click()
    assert w.corrections.count.value == "1 pair in the folder"
    w.ft.epochs.value = 2
    w.ft.extra_args = ("--steps-per-epoch", "2", "--batch-size", "2")
    w.ft.start_btn.native.click()
    qtbot.waitUntil(lambda: not w.ft.session.active, timeout=240_000)
    done = w.ft.session.last_done
    assert done is not None, w.ft.status.value
    assert "held-out object" in done["verdict"] and done["verdict"] in w.ft.status.value  # what it rests on
    assert w.ft.use_btn.enabled == done["improved"]
    if not done["improved"]:
        assert "keeping the current model" in w.ft.status.value
