import numpy as np

from napari_unet.engine.metrics import class_scores, instance_scores, overlaps, pooled_f1


def test_identical_and_empty():
    a = np.zeros((20, 20), int)
    a[2:8, 2:8] = 5
    a[10:18, 10:18] = 9
    s = instance_scores(a, a)
    assert s.f1[0.5] == 1.0 and s.f1[0.9] == 1.0 and s.mean_matched_iou == 1.0
    assert instance_scores(a, np.zeros_like(a)).f1[0.5] == 0.0
    assert instance_scores(np.zeros_like(a), np.zeros_like(a)).f1[0.5] == 1.0


def test_partial_overlap_counts():
    gt = np.zeros((20, 40), int)
    gt[0:10, 0:10] = 1
    gt[0:10, 20:30] = 2
    pred = np.zeros_like(gt)
    pred[0:10, 0:7] = 1  # IoU 0.7 with gt 1
    pred[15:20, 35:40] = 2  # false positive
    s = instance_scores(gt, pred)
    assert s.tp[0.5] == 1 and s.tp[0.7] == 1 and s.tp[0.8] == 0
    assert abs(s.f1[0.5] - 2 / 4) < 1e-9
    assert abs(overlaps(gt, pred).iou[0] - 0.7) < 1e-9
    assert abs(pooled_f1([(gt, pred), (gt, gt)]) - (2 * 3 / 8)) < 1e-9


def test_labels_without_background():
    a = np.ones((10, 10), int)
    assert instance_scores(a, a).f1[0.5] == 1.0


def test_class_scores():
    gt = np.array([[0, 1], [2, 2]])
    pr = np.array([[0, 1], [2, 1]])
    s = class_scores(gt, pr, 3)
    assert s["iou"] == [1.0, 0.5, 0.5]


def test_stacks_are_scored_plane_by_plane():
    plane = np.zeros((20, 20), int)
    plane[2:8, 2:8] = 1
    stack = np.stack([plane, plane])  # the same label id in both planes, as segment writes stacks
    s = instance_scores(stack, stack)
    assert s.f1[0.5] == 1.0 and s.n_true == 2
