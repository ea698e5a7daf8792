"""The fine-tune verdict: held-out objects, replay (no forgetting), crops on reviewed pixels, scale."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet import load_model
from napari_unet.engine.metrics import pooled_f1
from napari_unet.engine.predict import choose_scale
from napari_unet.training.augment import AugmentConfig, transform_crop
from napari_unet.training.finetune import FineTuneOptions, hold_out_objects, run_finetune
from napari_unet.training.loop import Sample
from napari_unet.training.pairs import export_pair
from napari_unet.training.replay import cached_counts, load_replay, replay_path, score_key
from napari_unet.training.verdict import (
    MAX_FORGETTING,
    ObjectCounts,
    bootstrap_change,
    judge,
    object_counts,
    reviewed_objects,
    trusted_kept,
    verdict_text,
    whole_counts,
)
from tests.helpers import make_tiny_model


def _discs(shape, centres, r=6):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint32)
    for i, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = i
    return labels


def test_crops_land_on_reviewed_pixels():
    labels = _discs((768, 768), [(y, x) for y in range(32, 768, 64) for x in range(32, 768, 64)], r=12)
    reviewed = np.zeros(labels.shape, np.uint8)
    reviewed[400:440, 600:640] = 1  # one corrected nucleus in a large image: 0.3% of it
    image = labels[None].astype(np.float32)
    rng = np.random.default_rng(0)
    crops = [transform_crop(rng, image, labels, reviewed, 64, AugmentConfig()) for _ in range(20)]
    assert all(rev.any() for _, _, rev, _ in crops)
    assert np.mean([rev.mean() for _, _, rev, _ in crops]) > 0.1


def test_a_small_reviewed_region_is_a_crop_centre_as_often_as_a_large_one():
    labels = np.zeros((512, 512), np.uint32)  # reviewed background only: two erased false detections
    reviewed = np.zeros(labels.shape, np.uint8)
    reviewed[20:140, 20:140] = 1  # 14,400 pixels
    reviewed[440:452, 440:452] = 1  # 144 pixels
    image = np.zeros((1, *labels.shape), np.float32)
    rng = np.random.default_rng(0)
    config = AugmentConfig(scale_min=1.0, scale_max=1.0, elastic_prob=0.0)
    crops = [transform_crop(rng, image, labels, reviewed, 48, config)[2] for _ in range(200)]
    small = np.mean([rev.any() and rev.mean() < 0.2 for rev in crops])  # a big region fills ≥ 1/4 of its crops
    assert 0.35 < small < 0.65


def test_verdict_counts_objects_and_false_detections_around_them():
    truth = _discs((100, 200), [(20, 20), (20, 60), (20, 100), (20, 140), (20, 180)])
    pred = truth.copy()
    pred[truth == 4] = 0  # missed
    pred[truth == 5] = 0
    pred[60:66, 100:106] = 9  # a false detection nearest to object 3
    territory = np.where(np.isin(truth, [1, 2, 3, 4, 5]), truth, 0)
    territory[40:100, 80:120] = 3
    counts = object_counts(truth, pred, territory)
    assert counts.tp.tolist() == [1, 1, 1, 0, 0] and counts.fp.tolist() == [0, 0, 1, 0, 0]
    assert counts.f1() == pytest.approx(6 / (6 + 2 + 1))
    delta, spread = bootstrap_change(counts, object_counts(truth, truth, territory))
    assert delta == pytest.approx(1 - 6 / 9) and 0 < spread < delta
    text = verdict_text(delta, spread, 5, (0.93, 0.88), "forgot")
    assert "5 held-out objects" in text and "±" in text and "forgot" in text and "0.93 → 0.88" in text


def _units(found: int, n: int, false: int = 0) -> ObjectCounts:
    """Counts of n objects of which the first ``found`` are found, with ``false`` false detections."""
    tp = (np.arange(n) < found).astype(int)
    return ObjectCounts(tp, 1 - tp, (np.arange(n) < false).astype(int))


def test_the_change_and_its_spread_come_from_the_same_per_unit_counts():
    before, after = _units(4, 10, false=3), _units(8, 10, false=1)
    v = judge(before, after, n_objects=10)
    assert (v.base_f1, v.f1) == (before.f1(), after.f1()) and v.delta == pytest.approx(v.f1 - v.base_f1)
    draws = [after.f1(i) - before.f1(i) for i in np.random.default_rng(0).integers(0, 10, size=(1000, 10))]
    assert v.spread == pytest.approx(np.std(draws)) and abs(np.mean(draws) - v.delta) < v.spread / 4
    assert v.improved and v.text == f"{v.delta:+.2f} ± {v.spread:.2f} F1 on 10 held-out objects"
    assert not judge(after, before, n_objects=10).improved


def test_a_gain_within_its_uncertainty_is_not_offered():
    # two more of 8 objects found and one lost: a gain in most resamples, none in about a fifth
    noisy = judge(_units(5, 8), ObjectCounts(*(np.array(a) for a in ([0, 1, 1, 1, 1, 1, 1, 1],
                                                                      [1, 0, 0, 0, 0, 0, 0, 0], [0] * 8))), 8)
    assert noisy.delta > 0 and 0.05 < noisy.no_gain < 0.5 and noisy.why_not == "unsure"
    assert not noisy.improved and noisy.text.startswith(f"not sure: no gain in {noisy.no_gain:.0%} of resamples")
    # three more of 8 found and none lost: a gain in all but the resamples that miss all three
    clear = judge(_units(5, 8), _units(8, 8), n_objects=8)
    assert clear.no_gain == pytest.approx((5 / 8) ** 8, abs=0.015) and clear.improved
    assert judge(_units(10, 40), _units(30, 40), n_objects=40).no_gain == 0.0


def test_forgetting_is_judged_on_replay_objects_with_its_spread():
    truth = _discs((64, 256), [(32, x) for x in range(16, 256, 32)])
    missed = truth.copy()
    missed[truth == 3] = 0
    assert whole_counts(truth, missed).f1() == pytest.approx(14 / 15) == pooled_f1([(truth, missed)])
    base = _units(400, 400)
    for lost, offered in ((8, True), (24, False)):  # an F1 drop of 0.010 / 0.031 on 400 replay objects
        v = judge(_units(3, 10), _units(8, 10), 10, replay=(base, _units(400 - lost, 400)))
        assert v.improved == offered and v.replay[0] - v.replay[1] == pytest.approx(lost / (800 - lost))
        assert 0 < v.replay_spread < MAX_FORGETTING
        assert ("forgot" in v.text) != offered


def test_objects_are_held_out_with_their_territory():
    labels = _discs((128, 256), [(y, x) for y in (20, 60, 100) for x in range(20, 256, 40)])
    reviewed = labels > 0  # sparse: only the objects themselves, and one object left half-reviewed
    reviewed[90:111, 90:101] = False
    assert len(reviewed_objects(labels, reviewed)) == labels.max() - 1
    sample = Sample(np.zeros((1, *labels.shape), np.float32), labels, ndi.binary_dilation(reviewed, iterations=3))
    train, held = hold_out_objects([sample], 0.2, seed=0)
    n = len(reviewed_objects(labels, sample.reviewed))
    assert held.n_objects == max(round(0.2 * n), n // 3) == sum(len(np.unique(t)) - 1 for t in held.territories)
    # the held-out objects and their surroundings are not trained on
    assert not (train[0].reviewed & ~sample.reviewed).any()
    assert sample.reviewed.sum() - train[0].reviewed.sum() == sum(int((t > 0).sum()) for t in held.territories)


@pytest.mark.slow
def test_a_pair_set_that_contradicts_the_model_is_not_offered(tmp_path, u2os, u2os_labels):
    """Nuclei painted as background on a normal image: the fine-tune must not be offered as better."""
    crop = (slice(0, 384), slice(0, 384))
    labels = u2os_labels[crop].copy()
    keep = np.unique(labels[labels > 0])[:3]
    labels[~np.isin(labels, keep)] = 0  # every other nucleus "corrected" to background, all reviewed
    export_pair(tmp_path / "pairs", u2os[crop], labels)
    done = run_finetune(
        FineTuneOptions(pairs=tmp_path / "pairs", out=tmp_path / "ft.safetensors", epochs=2, steps_per_epoch=8,
                        batch_size=4, crop_size=128, lr=2e-3, device="cpu"),
        lambda e: None,
    )
    assert not done["improved"]
    assert done["verdict"].startswith(("forgot: replay F1", "no gain")) and "held-out object" in done["verdict"]
    assert done["replay_base_f1"] > 0.8  # the replay set was scored


@pytest.mark.slow
def test_auto_scale_after_fine_tuning_stays_with_the_base_choice(tmp_path, u2os, u2os_labels):
    """Nuclei 1.6× the trained size: the fine-tuned model must choose about the base model's scale."""
    image = ndi.zoom(u2os, 1.6, order=1)
    labels = ndi.zoom(u2os_labels, 1.6, order=0)
    export_pair(tmp_path / "pairs", image[:560, :640], labels[:560, :640])
    base = load_model()
    nxt = image[640:]
    before = choose_scale(base, nxt, device="cpu")
    done = run_finetune(
        FineTuneOptions(pairs=tmp_path / "pairs", out=tmp_path / "ft.safetensors", epochs=1, steps_per_epoch=4,
                        batch_size=2, crop_size=128, device="cpu"),
        lambda e: None,
    )
    after = choose_scale(load_model(tmp_path / "ft.safetensors"), nxt, device="cpu")
    assert before.how == after.how == "object size" and before.scale < 0.8
    assert abs(after.scale / before.scale - 1) <= 0.15
    assert done["object_area"] == pytest.approx(base.info.object_area, rel=0.25)


def test_replay_set_ships_with_the_package_and_suits_only_matching_models():
    train, val = load_replay(load_model())
    assert len(train) >= 16 and len(val) >= 8 and replay_path().stat().st_size < 3e6
    assert all(s.image.shape[0] == 1 and s.image.shape[1:] == s.labels.shape and s.labels.any() for s in train + val)
    assert load_replay(make_tiny_model(in_channels=2)) == ([], [])


def test_erased_regions_alone_score_the_share_left_clean():
    # six held-out erased regions: the base model detects something on each, the fine-tuned one on one
    base = ObjectCounts(np.zeros(6, int), np.zeros(6, int), np.ones(6, int))
    tuned = ObjectCounts(np.zeros(6, int), np.zeros(6, int), np.array([0, 0, 0, 0, 0, 1]))
    assert base.f1() == 0.0 and tuned.f1() == pytest.approx(5 / 6)  # pooled F1 would read 0 for both
    delta, spread = bootstrap_change(base, tuned)
    assert delta == pytest.approx(5 / 6) and 0 < spread < 0.3
    clean = ObjectCounts(np.zeros(6, int), np.zeros(6, int), np.zeros(6, int))
    assert clean.f1() == 1.0


def test_verdict_counts_false_objects_on_held_out_erased_regions():
    truth = _discs((64, 160), [(30, 30)])
    territory = np.where(truth > 0, 1, 0)
    territory[10:50, 80:120] = 7  # an erased region: the user removed a false detection there
    pred = truth.copy()
    pred[25:35, 95:105] = 2  # detected again, wholly on the erased region
    pred[5:12, 130:150] = 3  # another one mostly outside any reviewed pixels: not counted
    pred[45:52, 110:160] = 4  # touches the region with a small part only: not counted either
    counts = object_counts(truth, pred, territory, regions=[7])
    assert counts.tp.tolist() == [1, 0] and counts.fn.tolist() == [0, 0] and counts.fp.tolist() == [0, 1]
    assert counts.f1() == pytest.approx(2 / 3)
    clean = object_counts(truth, truth, territory, regions=[7])
    assert clean.f1() == 1.0
    delta, _ = bootstrap_change(counts, clean)
    text = verdict_text(delta, 0.05, 1, None, None, n_regions=4)
    assert text == "+0.33 ± 0.05 F1 on 1 held-out object and 4 erased regions"
    # erased regions alone, or a few objects, cannot show that nuclei are still found: not offered
    text = verdict_text(1.0, 0.0, 0, (0.91, 0.90), "few", n_regions=2)
    assert text == "not offered: fewer than 5 held-out objects cannot show that nuclei are still found; review " \
                   "more objects (+1.00 ± 0.00 F1 on 2 held-out erased regions, replay F1 0.91 → 0.90)"
    few = judge(_units(0, 8), _units(8, 8), n_objects=3, n_regions=5)  # a clear gain, mostly erased regions
    assert few.no_gain == 0.0 and not few.improved and few.text.startswith("not offered")


def test_a_false_detection_covering_an_erased_region_counts_though_it_reaches_past_it():
    """The region stops short of the objects beside it; the false detection the user erased did not."""
    truth = _discs((64, 160), [(30, 30)])
    territory = np.where(truth > 0, 1, 0)
    territory[20:40, 90:110] = 7  # 400 px erased, trimmed back from a larger false detection
    pred = truth.copy()
    pred[12:48, 82:118] = 2  # covers the whole region; only 400 of its 1296 px lie on it
    counts = object_counts(truth, pred, territory, regions=[7])
    assert counts.fp.tolist() == [0, 1]
    pred[30:40, 100:110] = 0  # now it covers only three quarters of the region: still counted
    assert object_counts(truth, pred, territory, regions=[7]).fp.tolist() == [0, 1]
    pred[20:40, 90:110] = 0
    pred[20:24, 90:110] = 2  # an object grazing the region's edge: 80 of its px on it, a fifth of the region
    assert object_counts(truth, pred, territory, regions=[7]).fp.tolist() == [0, 0]


def test_an_erased_region_still_under_foreground_is_not_repaired():
    """A false detection that merely fell below the smallest size kept is still there."""
    truth = _discs((64, 160), [(30, 30)])
    territory = np.where(truth > 0, 1, 0)
    territory[20:40, 90:110] = 7
    pred = truth.copy()  # no object kept on the region
    foreground = pred > 0
    assert object_counts(truth, pred, territory, regions=[7], foreground=foreground).fp.tolist() == [0, 0]
    foreground[22:40, 90:110] = True  # 360 of its 400 px still foreground, too small to be kept
    assert object_counts(truth, pred, territory, regions=[7], foreground=foreground).fp.tolist() == [0, 1]
    foreground[22:40, 90:110] = False
    foreground[20:28, 90:110] = True  # 160 of 400 px: less than half, repaired
    assert object_counts(truth, pred, territory, regions=[7], foreground=foreground).fp.tolist() == [0, 0]


def test_trusted_objects_stand_for_nuclei_still_found():
    """Erased regions alone are offered when the base model's undoubted objects are still found,
    and refused when the fine-tune lost more than a few of them."""
    gain = (_units(0, 6), _units(6, 6))  # six erased regions whose false detections are gone (as units)
    few_regions = ObjectCounts(np.zeros(6, int), np.zeros(6, int), np.array([1, 1, 1, 1, 1, 1]))
    gone = ObjectCounts(np.zeros(6, int), np.zeros(6, int), np.zeros(6, int))
    assert few_regions.f1() == 0.0 and gone.f1() == 1.0
    v = judge(few_regions, gone, n_objects=0, n_regions=6, trusted=(40, 40))
    assert v.improved and v.text == "+1.00 ± 0.00 F1 on 6 held-out erased regions, 40 of 40 trusted objects still found"
    lost = judge(few_regions, gone, n_objects=0, n_regions=6, trusted=(30, 40))
    assert not lost.improved and lost.text.startswith("lost nuclei: 10 of the 40 objects the model was sure of")
    assert not judge(few_regions, gone, n_objects=0, n_regions=6, trusted=(3, 3)).improved  # too few to show
    assert not judge(*gain, n_objects=6, trusted=(30, 40)).improved  # objects gained, trusted ones lost
    truth = _discs((64, 160), [(30, 30), (30, 80), (30, 130)])
    pred = truth.copy()
    pred[truth == 2] = 0
    assert trusted_kept(truth, pred) == (2, 3) and trusted_kept(np.zeros((4, 4), np.uint32), pred) == (0, 0)


def test_trusted_objects_lie_off_the_reviewed_pixels_and_the_border(u2os, default_model):
    from napari_unet.engine.predict import predict
    from napari_unet.training.review import Views, doubt_from_features, object_features, trusted_objects

    plane = u2os.astype(np.float32)
    probs = predict(default_model, u2os, scale=1.0)
    config = default_model.postprocess
    reviewed = np.zeros(u2os.shape, bool)
    reviewed[: u2os.shape[0] // 2] = True
    trusted = trusted_objects(plane, probs, config, reviewed, 0.1)
    ids = np.unique(trusted)[1:]
    assert len(ids) >= 3
    assert not trusted[reviewed].any()
    edge = np.concatenate([trusted[0], trusted[-1], trusted[:, 0], trusted[:, -1]])
    assert not edge.any()
    _, X, _ = object_features(trusted, Views(probs, trusted, [trusted], 1.0, config, plane))
    assert (doubt_from_features(X) < 0.1).all()


def test_a_background_only_pair_fine_tunes_and_is_judged_on_erased_regions(tmp_path, tiny_model):
    """Only erased false detections reviewed: the pair loads and the fine-tune holds out erased regions."""
    from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
    from napari_unet.training.pairs import export_reviewed_objects, read_pairs

    rng = np.random.default_rng(0)
    spots = [(y, x) for y in range(24, 128, 40) for x in range(24, 128, 40)]
    image = (rng.normal(20, 3, (128, 128)) + 200 * (_discs((128, 128), spots) > 0)).astype(np.uint16)
    labels = np.zeros(image.shape, np.uint32)  # every bright spot was a false detection, erased
    touched = ndi.binary_dilation(_discs((128, 128), spots) > 0, iterations=2)
    rec = export_reviewed_objects(tmp_path / "pairs", image, labels, [], touched)
    assert rec.erased_regions == len(spots)
    (pair,), _ = read_pairs(tmp_path / "pairs")
    assert not pair.labels.any() and pair.reviewed.any()
    base = save_checkpoint(tmp_path / "tiny.safetensors", tiny_model.net, ModelInfo(name="tiny"))
    done = run_finetune(
        FineTuneOptions(pairs=tmp_path / "pairs", out=tmp_path / "ft.safetensors", base=base, epochs=1,
                        steps_per_epoch=2, batch_size=2, crop_size=64, device="cpu"),
        lambda e: None,
    )
    assert done["validation_objects"] == 0 and done["validation_regions"] == max(round(0.2 * 9), 9 // 3)
    assert done["delta_f1"] == pytest.approx(done["f1"] - done["base_f1"], abs=1e-4)
    assert f"on {done['validation_regions']} held-out erased regions" in done["verdict"]
    assert not done["improved"] and done["trusted_objects"] == 0  # no held-out or trusted object: not offered
    # post-processing tuned on erased regions alone would be the one that finds nothing: the base's is kept
    assert done["postprocess"] == load_model(base).postprocess.to_dict()
    assert load_model(done["path"]).config == tiny_model.config


def test_base_replay_score_is_computed_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_CACHE_DIR", str(tmp_path))
    net = load_model().net
    key = score_key(net, {"postprocess": {"threshold": 0.5}, "device": "cpu"})
    assert key != score_key(net, {"postprocess": {"threshold": 0.4}, "device": "cpu"})
    calls = []

    def compute() -> ObjectCounts:
        calls.append(1)
        return ObjectCounts(np.array([1, 0, 1]), np.array([0, 1, 0]), np.array([2, 0, 0]))

    first = cached_counts(key, compute)
    again = cached_counts(key, compute)
    assert len(calls) == 1 and again.f1() == first.f1() and list(again.fp) == [2, 0, 0]
    (kept,) = (tmp_path / "replay-scores").iterdir()
    kept.write_bytes(b"not an npz")  # a damaged file is computed again, and replaced
    assert cached_counts(key, compute).f1() == first.f1() and len(calls) == 2
    assert cached_counts(key, compute).f1() == first.f1() and len(calls) == 2
