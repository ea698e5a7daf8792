"""Which predicted objects are wrong: unmatched, merged, split; a swallowed speck is no merge."""

import numpy as np

from napari_unet.engine.metrics import object_errors, wrong_objects


def four_nuclei() -> np.ndarray:
    """Two touching nuclei (1, 2), a large one (3) and a lone one (4)."""
    gt = np.zeros((100, 100), np.int32)
    gt[5:25, 5:25], gt[5:25, 25:45] = 1, 2
    gt[50:80, 50:80] = 3
    gt[5:25, 60:80] = 4
    return gt


def test_unmatched_merged_and_split_objects_are_wrong():
    gt = four_nuclei()
    pred = np.zeros_like(gt)
    pred[5:25, 5:45] = 1  # 1 and 2 merged
    pred[50:80, 50:65], pred[50:80, 65:80] = 2, 3  # 3 split in two
    pred[5:25, 60:80] = 4  # right
    pred[85:95, 5:15] = 5  # nothing there
    assert wrong_objects(gt, pred).tolist() == [1, 2, 3, 5]


def test_a_swallowed_speck_is_no_merge():
    gt = np.zeros((60, 60), np.int32)
    gt[10:40, 10:40] = 1
    gt[40:42, 20:22] = 2  # a 4-pixel speck beside the nucleus
    pred = np.zeros_like(gt)
    pred[10:42, 10:40] = 1
    assert wrong_objects(gt, pred).tolist() == []
    gt[40:50, 10:40] = 2  # a real second nucleus
    pred[10:50, 10:40] = 1
    assert wrong_objects(gt, pred).tolist() == [1]


def test_object_errors_count_merges_misses_and_false_objects():
    gt = four_nuclei()
    pred = np.zeros_like(gt)
    pred[5:30, 5:45] = 1  # 1 and 2 merged (IoU 0.4 with each)
    pred[5:25, 60:80] = 4  # right
    pred[85:95, 5:15] = 5  # nothing there
    pred[48:58, 48:58] = 6  # mostly inside 3 (64 of 100 px): too small to match it, yet not false
    err = object_errors(gt, pred)
    assert err.merges.tolist() == [1]
    assert err.missed.tolist() == [1, 2, 3]
    assert err.false.tolist() == [5]
