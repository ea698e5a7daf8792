import numpy as np
import pytest
from skimage.draw import disk

from napari_unet.engine.postprocess import PostprocessConfig, labels_from_probabilities
from napari_unet.errors import InvalidParameter
from napari_unet.training.loop import class_targets


def _probs_from_labels(labels):
    t = class_targets(labels)
    return np.stack([(t == k).astype(np.float32) for k in range(3)])


def test_touching_nuclei_are_split():
    labels = np.zeros((80, 120), np.int32)
    labels[disk((40, 40), 20)] = 1
    labels[disk((40, 75), 20)] = 2  # overlaps: touching pair
    out = labels_from_probabilities(_probs_from_labels(labels))
    assert out.dtype == np.uint32 and out.max() == 2
    assert len(np.unique(out[labels == 1])) == 2 or (out[labels == 1] > 0).all()
    assert out[40, 30] != out[40, 85]


def test_min_size_and_thresholds():
    labels = np.zeros((60, 60), np.int32)
    labels[disk((30, 30), 10)] = 1
    labels[2:5, 2:5] = 2
    probs = _probs_from_labels(labels)
    assert labels_from_probabilities(probs, PostprocessConfig(min_size=20)).max() == 1
    assert labels_from_probabilities(probs, PostprocessConfig(min_size=1, min_seed_size=1)).max() == 2
    assert labels_from_probabilities(probs * 0 + np.array([1, 0, 0])[:, None, None]).max() == 0


def test_two_class_and_stacks():
    labels = np.zeros((60, 100), np.int32)
    labels[disk((30, 30), 14)] = 1
    labels[disk((30, 70), 14)] = 2
    fg = (labels > 0).astype(np.float32)
    two = np.stack([1 - fg, fg])
    assert labels_from_probabilities(two).max() == 2
    stack = np.stack([two, two[:, :, ::-1]])
    assert labels_from_probabilities(stack).shape == (2, 60, 100)


def test_objects_cut_by_the_edge_have_their_own_min_size():
    """A nucleus cut by the image edge shows only part of its area: ``edge_min_size`` keeps it,
    while an inner object of the same size is still dropped; without it nothing changes."""
    labels = np.zeros((100, 100), np.int32)
    labels[disk((50, 50), 4)] = 1  # ~50 px, inside
    labels[disk((50, 1), 5, shape=labels.shape)] = 2  # ~50 px visible, cut by the left edge
    labels[disk((20, 80), 12)] = 3  # large, inside
    p = _probs_from_labels(labels)
    old = labels_from_probabilities(p, PostprocessConfig(min_size=100, min_seed_size=1, threshold=0.5,
                                                         seed_threshold=0.5))
    assert old.max() == 1  # only the large one
    new = labels_from_probabilities(p, PostprocessConfig(min_size=100, min_seed_size=1, threshold=0.5,
                                                         seed_threshold=0.5, edge_min_size=20))
    assert new.max() == 2 and new[50, 1] > 0 and new[50, 50] == 0
    assert PostprocessConfig(min_size=10, edge_min_size=30).edge_size == 10  # never stricter than min_size


def _necked_pair():
    """Interior probability 1 over two discs joined by a ~10 px neck (one region above any threshold)."""
    interior = np.zeros((60, 90), np.float32)
    interior[disk((30, 30), 12)] = 1
    interior[disk((30, 52), 12)] = 1
    return np.stack([1 - interior, interior, np.zeros_like(interior)])


def test_shape_seeds_split_a_neck_that_one_threshold_cannot():
    probs = _necked_pair()
    assert labels_from_probabilities(probs, PostprocessConfig(min_size=10)).max() == 1
    shaped = labels_from_probabilities(probs, PostprocessConfig(min_size=10, seeds="shape", seed_h=2.0))
    assert shaped.max() == 2 and shaped[30, 25] != shaped[30, 57]
    # a neck as thick as the discs is no neck: one object
    assert labels_from_probabilities(probs, PostprocessConfig(min_size=10, seeds="shape", seed_h=9.0)).max() == 1


def test_configs_without_the_seed_mode_label_as_before():
    """A config stored before the seed mode existed loads as ``seeds="threshold"`` and labels alike;
    an unknown mode or a seed height out of range is one sentence."""
    old = {"threshold": 0.5, "seed_threshold": 0.8, "min_size": 10, "min_seed_size": 4, "edge_min_size": 30}
    config = PostprocessConfig.from_dict(old)
    assert config.seeds == "threshold"
    probs = _necked_pair()
    np.testing.assert_array_equal(labels_from_probabilities(probs, config),
                                  labels_from_probabilities(probs, PostprocessConfig(**old)))
    with pytest.raises(InvalidParameter, match="seeds must be one of"):
        PostprocessConfig(seeds="peaks")
    with pytest.raises(InvalidParameter, match="seed h"):
        PostprocessConfig(seed_h=0)
