"""Automatic object scale, pixel-size scale, min_size following the scale, test-time augmentation,
and version-1 checkpoints segmenting exactly as before."""

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet import InputError, load_model, predict, segment
from napari_unet.engine.metrics import pooled_f1
from napari_unet.engine.postprocess import PostprocessConfig, median_object_area
from napari_unet.engine.predict import choose_scale
from napari_unet.engine.scale import postprocess_at_scale, scale_from_pixel_size
from napari_unet.engine.tiling import resize_planes
from napari_unet.engine.tta import dihedral
from tests.helpers import make_tiny_model

DATA = Path(__file__).parent.parent / "data"


def _resized(image, labels, factor):
    size = (round(image.shape[0] * factor), round(image.shape[1] * factor))
    img = resize_planes(image[None].astype(np.float32), size)[0]
    lab = resize_planes(labels[None].astype(np.float32), size, nearest=True)[0].astype(np.int32)
    return img, lab


@pytest.mark.parametrize("factor", [0.4, 2.0])
def test_auto_scale_is_within_15_percent_of_the_right_one(default_model, u2os, u2os_labels, factor):
    assert default_model.info.object_area, "the shipped model records its training object size"
    img, lab = _resized(u2os, u2os_labels, factor)
    right = np.sqrt(default_model.info.object_area / median_object_area([lab]))
    choice = choose_scale(default_model, img, device="cpu")
    assert choice.how == "object size"
    assert abs(choice.scale / right - 1) < 0.15, (choice, right)


def test_shrunk_sample_segments_nearly_as_well_as_the_original(default_model, u2os, u2os_labels):
    """The target: a gap of at most 0.05 F1@0.5 (benchmarks/auto_scale.py: 0.007 with the
    shipped model)."""
    small, small_lab = _resized(u2os, u2os_labels, 0.4)
    used = []
    f1_orig = pooled_f1([(u2os_labels, segment(u2os, default_model, device="cpu"))])
    f1_small = pooled_f1([(small_lab, segment(small, default_model, device="cpu", on_scale=used.append))])
    assert used[0] > 1.8  # enlarged before the network
    assert f1_small > f1_orig - 0.05, (f1_small, f1_orig)
    at_one = pooled_f1([(small_lab, segment(small, default_model, device="cpu", scale=1.0))])
    assert f1_small > at_one  # what "auto" is for


def test_pixel_sizes_give_the_scale(misc):
    assert scale_from_pixel_size(0.65, 0.325) == 2.0  # larger image pixels: objects look smaller
    assert scale_from_pixel_size(0.1625, 0.325) == 0.5
    model = make_tiny_model()
    model.info.pixel_size_um = 0.325
    used = []
    p = predict(model, misc[:64, :64], pixel_size_um=0.65, device="cpu", on_scale=used.append)
    assert used == [2.0] and p.shape == (3, 64, 64)
    with pytest.raises(InputError, match="Pixel sizes"):
        scale_from_pixel_size(0, 0.3)


def test_min_size_follows_the_scale():
    post = PostprocessConfig(min_size=150, min_seed_size=4)
    assert postprocess_at_scale(post, 2.0).min_size == 38  # a quarter of the pixels at 2x
    assert postprocess_at_scale(post, 0.5).min_size == 600
    assert postprocess_at_scale(post, 1.0) == post
    shaped = PostprocessConfig(min_size=150, seeds="shape", seed_h=3.0)
    assert postprocess_at_scale(shaped, 2.0).seed_h == 1.5  # a length: half as many pixels at 2x
    assert postprocess_at_scale(shaped, 0.5).seed_h == 6.0


def test_version1_checkpoint_segments_exactly_as_before(misc):
    """A checkpoint written before UNet++/scale existed (no architecture key, no object_area):
    labels identical to those computed with the code of that time (tests/data fixture)."""
    old = load_model(DATA / "v1_nuclei_default.safetensors")
    assert old.config.architecture == "unet" and old.info.object_area is None
    assert choose_scale(old, misc, device="cpu").scale == 1.0
    labels = segment(misc, old, device="cpu")
    np.testing.assert_array_equal(labels, tifffile.imread(DATA / "v1_default_misc_labels.tif"))


def test_dihedral_transforms_invert():
    x = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    views = dihedral(8)
    seen = {forward(x).tobytes() for forward, _ in views}
    assert len(seen) == 8
    for forward, inverse in views:
        np.testing.assert_array_equal(inverse(forward(x)), x)
    assert len(dihedral(4)) == 4


def test_tta_averages_eight_views(default_model, misc):
    model = default_model
    tta_calls, calls = [], []
    p = predict(model, misc[:96, :80], tile=64, device="cpu", scale=1.0, tta=True,
                progress=lambda d, t: tta_calls.append((d, t)))
    plain = predict(model, misc[:96, :80], tile=64, device="cpu", scale=1.0,
                    progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-4)
    assert tta_calls[-1][0] == tta_calls[-1][1] == 8 * calls[-1][1]  # 8 passes, all counted
    assert not np.allclose(p, plain, atol=1e-3)


def test_every_path_post_processes_an_enlarged_image_alike(default_model, u2os, tmp_path):
    """segment(), the CLI and the widget's worker (predict + instance_labels) label a small-nuclei
    image at its enlarged working size, with the same sizes, so they give identical labels."""
    from napari_unet.cli.main import main
    from napari_unet.engine.segmentation import instance_labels

    small = np.round(_resized(u2os, u2os, 0.4)[0]).astype(np.uint16)
    used = []
    api = segment(small, default_model, device="cpu", on_scale=used.append)
    assert used[0] > 1.8 and api.max() >= 20
    tifffile.imwrite(tmp_path / "small.tif", small)
    assert main(["segment", str(tmp_path / "small.tif"), "--out", str(tmp_path), "--device", "cpu", "--quiet"]) == 0
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "small_labels.tif"), api)
    probs = predict(default_model, small, device="cpu", keep_enlarged=True)
    assert probs.shape[-2:] != small.shape  # kept at the working size
    np.testing.assert_array_equal(instance_labels(probs, small.shape, used[0], default_model.postprocess), api)


def test_edge_min_size_follows_the_scale():
    post = PostprocessConfig(min_size=150, edge_min_size=30)
    assert postprocess_at_scale(post, 2.0).edge_min_size == 8
    assert postprocess_at_scale(PostprocessConfig(), 2.0).edge_min_size is None  # version-1: as min_size


def test_unclear_pieces_of_background_do_not_set_the_measured_size():
    """Many small pieces the network is unsure of (textured background) beside a few clear nuclei:
    the nuclei's area is measured, so "auto" does not enlarge the image for the pieces."""
    from napari_unet.engine.scale import inner_areas

    labels = np.zeros((200, 400), np.int32)
    probs = np.zeros((3, 200, 400), np.float32)
    probs[0] = 1.0
    n = 0
    for k in range(6):  # clear nuclei, 20 x 20
        n += 1
        labels[20:40, 10 + 60 * k : 30 + 60 * k] = n
    for k in range(20):  # unclear pieces, 5 x 5
        n += 1
        labels[100 + 10 * (k % 5) : 105 + 10 * (k % 5), 20 + 15 * (k // 5) : 25 + 15 * (k // 5)] = n
    probs[:, labels > 0] = np.array([0.4, 0.4, 0.2])[:, None]
    nuclei = (labels > 0) & (labels <= 6)
    probs[:, nuclei] = np.array([0.05, 0.9, 0.05])[:, None]
    assert np.median(inner_areas(labels)) == 25
    assert inner_areas(labels, probs).tolist() == [400] * 6
    few = np.where(labels <= 3, labels, labels + 100 * (labels > 6))  # only 3 clear: all objects measured
    few[(labels > 3) & (labels <= 6)] = 0
    assert len(inner_areas(few, probs)) == 23
