"""Sparse pairs of reviewed objects: only they (with a ring of background) and the background the
user touched are reviewed, each object is exported once per image, and the image is the labels' own."""

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet import InputError
from napari_unet.training.pairs import export_pair, export_reviewed_objects, read_pairs


def test_only_reviewed_objects_are_reviewed(tmp_path, u2os, u2os_labels):
    ids = [int(i) for i in np.unique(u2os_labels)[1:4]]
    touched = np.zeros(u2os_labels.shape, bool)
    touched[700:720, 10:30] = True  # erased background, far from the objects
    touched[u2os_labels == 50] = True  # painted over another, unreviewed object: not background
    rec = export_reviewed_objects(tmp_path, u2os, u2os_labels, ids, touched, source="nuclei_u2os.tif")
    (pair,), skipped = read_pairs(tmp_path)
    assert not skipped and rec.object_ids == ids
    y0, x0, y1, x1 = rec.crop
    np.testing.assert_array_equal(pair.image, u2os[y0:y1, x0:x1])  # the image the labels belong to
    np.testing.assert_array_equal(pair.labels, u2os_labels[y0:y1, x0:x1])
    full = np.zeros(u2os_labels.shape, bool)
    full[y0:y1, x0:x1] = pair.reviewed
    reviewed_labels = set(np.unique(u2os_labels[full]).tolist())
    assert reviewed_labels - {0} <= set(ids)  # no other object is reviewed, even in part
    for i in ids:
        assert full[u2os_labels == i].all()
    ring = ndi.binary_dilation(np.isin(u2os_labels, ids), iterations=3) & (u2os_labels == 0)
    assert full[ring].all()
    assert full[700:720, 10:30].all() and not full[u2os_labels == 50].any()
    assert full.sum() == np.isin(u2os_labels, ids).sum() + ring.sum() + 400


def test_second_export_of_same_ids_writes_nothing(tmp_path, misc, misc_labels):
    first = export_reviewed_objects(tmp_path, misc, misc_labels, [1, 2])
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    manifest = (tmp_path / "pairs.json").read_text()
    assert export_reviewed_objects(tmp_path, misc, misc_labels, [2, 1]) is None
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == files
    assert (tmp_path / "pairs.json").read_text() == manifest
    third = export_reviewed_objects(tmp_path, misc, misc_labels, [1, 2, 3])  # only the new one
    assert first.object_ids == [1, 2] and third.object_ids == [3]
    pairs, _ = read_pairs(tmp_path)
    assert set(np.unique(pairs[1].labels[pairs[1].reviewed]).tolist()) == {0, 3}
    other = misc.copy()
    other[0, 0] += 1  # another image: its objects are its own
    assert export_reviewed_objects(tmp_path, other, misc_labels, [1]).object_ids == [1]


def test_old_manifest_entries_still_read(tmp_path, misc, misc_labels):
    export_pair(tmp_path, misc, misc_labels)
    manifest = json.loads((tmp_path / "pairs.json").read_text())
    for entry in manifest["pairs"]:  # as written before object-wise export existed
        del entry["object_ids"], entry["image_key"]
    (tmp_path / "pairs.json").write_text(json.dumps(manifest))
    assert export_reviewed_objects(tmp_path, misc, misc_labels, [1]).object_ids == [1]
    assert len(read_pairs(tmp_path)[0]) == 2


def test_reviewed_ids_not_in_labels_is_one_sentence(tmp_path, misc, misc_labels):
    with pytest.raises(InputError, match="None of the reviewed objects"):
        export_reviewed_objects(tmp_path, misc, misc_labels, [9999])
    assert not (tmp_path / "pairs.json").exists()
