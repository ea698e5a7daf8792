"""The training loop on a small real crop: targets, augmentation, loss going down, F1 going up."""

import json

import numpy as np
import torch

from napari_unet.engine.network import UNet, UNetConfig
from napari_unet.engine.normalize import Normalization
from napari_unet.training.augment import AugmentConfig, random_crop
from napari_unet.training.loop import (
    IGNORE,
    Sample,
    TrainConfig,
    WeightAverage,
    _batch_loss,
    class_targets,
    cross_entropy,
    segmentation_loss,
    train,
)


def test_class_targets_and_reviewed_mask(misc_labels):
    t = class_targets(misc_labels)
    assert set(np.unique(t)) == {0, 1, 2}
    assert (t[misc_labels == 0] == 0).all()
    reviewed = np.zeros(misc_labels.shape, bool)
    reviewed[:100] = True
    t2 = class_targets(misc_labels, reviewed)
    assert (t2[100:] == IGNORE).all() and (t2[:100] == t[:100]).all()


def test_augmented_crops_keep_image_and_labels_aligned(misc, misc_labels):
    rng = np.random.default_rng(1)
    img = Normalization().apply(misc[None])
    for _ in range(5):
        x, y, r = random_crop(rng, img, misc_labels, None, 96, AugmentConfig(noise=0, blur_prob=0, gamma=0,
                                                                              intensity=0))
        assert x.shape == (1, 96, 96) and y.shape == (96, 96) and r is None
        if (y > 0).sum() > 200 and (y == 0).sum() > 200:
            assert x[0][y > 0].mean() > x[0][y == 0].mean()  # nuclei are brighter than background


def test_loss_ignores_unreviewed_pixels():
    logits = torch.randn(1, 3, 8, 8)
    target = torch.full((1, 8, 8), IGNORE)
    assert float(segmentation_loss(logits, target, 3, 1)) == 0.0
    target[0, :4] = 1
    assert float(segmentation_loss(logits, target, 3, 1)) > 0


def test_a_sparse_crop_weighs_as_if_a_floor_of_its_pixels_were_reviewed():
    """Own crops first, replay after: 10 reviewed pixels of a 32² own crop, all wrong, beside a
    replay crop predicted perfectly. Pooled, they would weigh 10 of 1034 pixels; the own part's
    cross-entropy is averaged over max(10, floor · 1024) pixels and weighs its share of the crops."""
    target = torch.zeros(2, 32, 32, dtype=torch.long)
    target[0] = IGNORE
    target[0, 0, :10] = 0
    logits = torch.zeros(2, 3, 32, 32)
    logits[0, 1] = 8.0  # the own crop says "interior" where the user erased
    logits[1, 0] = 8.0  # the replay crop is right
    wrong = float(torch.nn.functional.cross_entropy(logits[:1, :, 0, :10], target[:1, 0, :10]))  # per pixel
    pooled = float(cross_entropy(logits, target, 3.0))
    assert abs(pooled - 10 * wrong / 1034) < 1e-3  # what a sparse crop weighed without the balance
    for floor, expected in ((0.2, 10 * wrong / (0.2 * 1024)), (0.0, wrong)):
        config = TrainConfig(dice_weight=0.0, reviewed_floor=floor)
        balanced = float(_batch_loss(logits, target, None, 1, config))
        assert abs(balanced - (expected + float(cross_entropy(logits[1:], target[1:], 3.0))) / 2) < 1e-3
    config = TrainConfig(dice_weight=0.0, reviewed_floor=0.2)
    assert abs(float(_batch_loss(logits, target, None, 2, config)) - pooled) < 1e-6  # no replay: pooled


def test_training_reduces_loss_and_improves_f1(misc, misc_labels):
    torch.manual_seed(0)
    img = Normalization().apply(misc[None])
    train_s = [Sample(img[:, :, :320], misc_labels[:, :320])]
    val_s = [Sample(img[:, :, 320:], misc_labels[:, 320:])]
    net = UNet(UNetConfig(depth=3, base_width=8))
    config = TrainConfig(epochs=6, steps_per_epoch=10, batch_size=4, crop_size=96, lr=3e-3,
                         val_tile=256, augment=AugmentConfig(scale_min=0.8, scale_max=1.25))
    events = []
    result = train(net, train_s, val_s, config, on_event=events.append)
    # between validations, the running train loss at each half epoch (a short run still draws a curve)
    assert [(e["event"], e["epoch"]) for e in events[:3]] == [("loss", 0.5), ("progress", 1), ("loss", 1.5)]
    halves = [e for e in events if e["event"] == "loss"]
    assert [e["epoch"] for e in halves] == [0.5, 1.5, 2.5, 3.5, 4.5, 5.5] and halves[0]["step"] == 5
    assert json.loads(json.dumps(halves[-1], allow_nan=False)) == halves[-1]  # strict JSON
    events = [e for e in events if e["event"] == "progress"]
    losses = [e["val_loss"] for e in events]
    assert len(events) == 6
    assert events[-1]["train_loss"] < events[0]["train_loss"]
    assert halves[-1]["train_loss"] < halves[0]["train_loss"]
    assert min(losses) < losses[0]
    assert result.best_f1 > result.initial_f1 + 0.2


def test_valid_padding_network_trains(misc, misc_labels):
    img = Normalization().apply(misc[None])
    net = UNet(UNetConfig(depth=2, base_width=4, padding="valid"))
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=2, crop_size=64, val_tile=128)
    result = train(net, [Sample(img, misc_labels)], [Sample(img[:, :200, :200], misc_labels[:200, :200])], config)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])


def test_the_weight_average_moves_a_share_of_the_way_each_step():
    net = torch.nn.Linear(2, 1)
    with torch.no_grad():
        net.weight.fill_(0.0)
    average = WeightAverage(net, 0.75)
    with torch.no_grad():
        net.weight.fill_(1.0)
    average.update(net)
    average.update(net)
    trained = average.swap_in(net)
    assert torch.allclose(net.weight, torch.full((1, 2), 1 - 0.75**2))  # 0 → 0.25 → 0.4375
    assert torch.allclose(trained["weight"], torch.ones(1, 2))  # what was trained, to go on from


def test_with_a_weight_average_the_kept_weights_move_less_from_the_start(misc, misc_labels):
    """The same run with and without the average: the same steps are taken (the average only
    watches them), and the weights kept are the average's, nearer the initial ones."""
    img = Normalization().apply(misc[None])
    start = UNet(UNetConfig(depth=2, base_width=4)).state_dict()
    moved, losses = {}, {}
    for ema in (0.0, 0.8):
        net = UNet(UNetConfig(depth=2, base_width=4))
        net.load_state_dict(start)
        config = TrainConfig(epochs=2, steps_per_epoch=3, batch_size=2, crop_size=64, lr=3e-3, ema=ema)
        result = train(net, [Sample(img, misc_labels)], [], config)
        losses[ema] = [h["train_loss"] for h in result.history]
        moved[ema] = sum(float(((net.state_dict()[k] - v) ** 2).sum()) for k, v in start.items()
                         if v.is_floating_point())
    assert np.allclose(losses[0.8], losses[0.0], rtol=1e-4)  # the second epoch trained on from the same weights
    assert 0 < moved[0.8] < moved[0.0]
