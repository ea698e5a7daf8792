"""Sparse pairs of reviewed objects: only they (with a ring of background) and the background the
user touched are reviewed, each object is exported once per image, and the image is the labels' own."""

import json

import numpy as np
import pytest
import tifffile
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


def _erased(shape, boxes):
    touched = np.zeros(shape, bool)
    for y0, x0, y1, x1 in boxes:
        touched[y0:y1, x0:x1] = True
    return touched


def test_erased_false_detections_alone_make_a_pair_exported_once(tmp_path, misc, misc_labels):
    labels = misc_labels.copy()
    far = ndi.distance_transform_edt(labels == 0) > 12
    far[:10], far[-10:], far[:, :10], far[:, -10:] = False, False, False, False
    bg = np.argwhere(far)
    (y, x), (v, u) = bg[0], bg[-1]  # two places far from every object, as if detections were erased there
    touched = _erased(labels.shape, [(y - 5, x - 5, y + 5, x + 5), (v - 5, u - 5, v + 5, u + 5)])
    touched &= labels == 0
    rec = export_reviewed_objects(tmp_path, misc, labels, [], touched)
    assert rec.object_ids == [] and rec.erased_regions == 2
    (pair,), skipped = read_pairs(tmp_path)
    assert not skipped and not pair.labels[pair.reviewed].any() and pair.reviewed.sum() == touched.sum()
    assert export_reviewed_objects(tmp_path, misc, labels, [], touched) is None  # the same erasures again
    more = touched | _erased(labels.shape, [(y - 8, x - 8, y + 8, x + 8)]) & (labels == 0)
    again = export_reviewed_objects(tmp_path, misc, labels, [], more)  # only the newly erased pixels
    pairs, _ = read_pairs(tmp_path)
    assert again.erased_regions == 1 and pairs[1].reviewed.sum() == (more & ~touched).sum()


def test_a_full_pair_with_empty_labels_is_still_refused(tmp_path, misc, misc_labels):
    export_pair(tmp_path, misc, misc_labels)
    name = next((tmp_path / "labels").iterdir()).name
    tifffile.imwrite(tmp_path / "labels" / name, np.zeros(misc_labels.shape, np.uint32))
    pairs, skipped = read_pairs(tmp_path)
    assert not pairs and "labels are empty" in skipped[0][1]


def test_a_cropped_pair_is_normalised_as_its_whole_plane_was(tmp_path, u2os, u2os_labels):
    from napari_unet.engine.planes import to_planes
    from napari_unet.models import load_model
    from napari_unet.training.finetune import _sample

    model = load_model()
    ids = [int(i) for i in np.unique(u2os_labels[:200, :200])[1:3]]
    rec = export_reviewed_objects(tmp_path, u2os, u2os_labels, ids)
    (pair,), _ = read_pairs(tmp_path)
    y0, x0, y1, x1 = rec.crop
    whole = model.normalization.apply(to_planes(u2os, 1).data[0])[:, y0:y1, x0:x1]
    own = model.normalization.apply(to_planes(pair.image, 1).data[0])
    assert np.abs(own - whole).max() > 0.05  # the crop's own percentiles are not the plane's
    np.testing.assert_allclose(_sample(pair, model).image, whole, atol=1e-5)
    # a manifest without them (an older pair) is normalised on its own, as before
    manifest = json.loads((tmp_path / "pairs.json").read_text())
    del manifest["pairs"][0]["percentiles"]
    (tmp_path / "pairs.json").write_text(json.dumps(manifest))
    (old,), _ = read_pairs(tmp_path)
    assert old.percentiles is None
    np.testing.assert_allclose(_sample(old, model).image, own)
