"""The training recipe: the U-Net paper's separation weight map, copy-paste crowding, artefacts."""

import itertools

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_unet.engine.network import UNetConfig, build_network
from napari_unet.engine.normalize import Normalization
from napari_unet.training.augment import add_artefacts, low_resolution
from napari_unet.training.crowding import nucleus_bank, paste_touching
from napari_unet.training.loop import IGNORE, Sample, TrainConfig, class_targets, separation_weights, train


def _discs(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return labels


def test_weight_map_is_highest_in_the_gap_between_touching_discs():
    for gap_centres in (((24, 20), (24, 37)), ((24, 20), (24, 36))):  # 1-px gap, then touching
        labels = _discs((48, 64), gap_centres, 8)
        w = separation_weights(labels, class_targets(labels), w0=10, sigma=5)
        peak = np.argwhere(w >= w.max() - 1e-6)
        assert (np.abs(peak[:, 0] - 24) <= 3).all()
        assert ((peak[:, 1] >= 27) & (peak[:, 1] <= 29)).all(), peak  # between the facing edges
        assert w.max() > 10  # w_c + nearly w0
        far = w[:, :8]  # background far from both discs: class weight only
        assert np.allclose(far, 1.0, atol=1e-2)  # background is the most frequent class


def test_weight_map_matches_a_direct_computation():
    labels = np.zeros((14, 16), np.int32)
    labels[2:6, 2:7] = 1
    labels[2:6, 8:12] = 2
    labels[8:12, 4:10] = 3
    labels[13, 15] = 4
    target = class_targets(labels)
    target[0, 0] = IGNORE
    w0, sigma = 7.0, 2.5
    got = separation_weights(labels, target, w0, sigma)
    counts = np.array([(target == k).sum() for k in range(3)], float)
    wc = np.sqrt(counts.max() / counts)
    pts = {i: np.argwhere(labels == i) for i in range(1, 5)}
    for y, x in itertools.product(range(14), range(16)):
        d = sorted(np.sqrt(((p - (y, x)) ** 2).sum(1)).min() for p in pts.values())
        k = target[y, x]
        expect = 0.0 if k == IGNORE else wc[k]
        if k in (0, 2):
            expect += w0 * np.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
        assert abs(got[y, x] - expect) < 1e-4, (y, x, got[y, x], expect)


def test_copy_paste_places_real_nuclei_touching_others(misc, misc_labels):
    img = Normalization().apply(misc[None])
    bank = nucleus_bank([(img, misc_labels.astype(np.int32), None)])
    assert 5 <= len(bank) <= 14  # nuclei cut by the image border are left out
    rng = np.random.default_rng(0)
    crop, lab = img[:, 100:356, 100:356], misc_labels[100:356, 100:356].astype(np.int32)
    out, new_lab, _ = paste_touching(rng, crop, lab, bank, 1.0, 6)
    added = [i for i in np.unique(new_lab) if i > lab.max()]
    assert len(added) >= 3
    for i in added:
        mask = new_lab == i
        assert not (mask & (lab > 0)).any()  # no overlap with what was there
        ring = ndi.binary_dilation(mask, iterations=2) & ~mask
        assert ((new_lab[ring] > 0) & (new_lab[ring] != i)).any()  # touches another nucleus
        assert out[0][mask].mean() > out[0][new_lab == 0].mean()  # a bright real nucleus
    untouched = ndi.binary_dilation(new_lab != lab, iterations=3)
    np.testing.assert_array_equal(out[:, ~untouched], crop[:, ~untouched])


def test_artefacts_change_the_image_not_the_labels(misc, misc_labels):
    img = Normalization().apply(misc[None])[:, :128, :128]
    lab = misc_labels[:128, :128].astype(np.int32)
    changed = [add_artefacts(np.random.default_rng(s), img, lab, 1.0) for s in range(6)]
    assert all(np.isfinite(c).all() and c.shape == img.shape for c in changed)
    assert sum(not np.allclose(c, img) for c in changed) >= 5


def test_low_resolution_fills_the_gap_between_touching_objects_and_keeps_the_size():
    img = np.zeros((1, 96, 96), np.float32)
    img[0, 30:60, 20:46] = img[0, 30:60, 48:74] = 1.0  # two bars, a 2-px dark gap between them
    out = low_resolution(np.random.default_rng(0), img, factors=(3.0, 3.0))
    assert out.shape == img.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert out[0, 45, 46:48].min() > 0.4  # the coarser camera no longer resolves the gap
    assert abs(out.sum() - img.sum()) / img.sum() < 0.02 and out[0, 45, 30] > 0.9  # same objects, same size
    same = low_resolution(np.random.default_rng(0), img, factors=(1.0, 1.0))
    np.testing.assert_allclose(same, img, atol=1e-5)


def test_training_with_weight_map_copy_paste_and_artefacts(misc, misc_labels):
    torch.manual_seed(0)
    img = Normalization().apply(misc[None])
    s = Sample(img, misc_labels.astype(np.int32))
    net = build_network(UNetConfig(depth=3, base_width=4, architecture="unetpp", deep_supervision=True))
    config = TrainConfig(epochs=2, steps_per_epoch=3, batch_size=2, crop_size=96, val_tile=256,
                         weight_map=True, copy_paste=1.0, artefacts=1.0, low_resolution=1.0)
    result = train(net, [s], [s], config)
    assert len(result.history) == 2 and all(np.isfinite(h["train_loss"]) for h in result.history)
