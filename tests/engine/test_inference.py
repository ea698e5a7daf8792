"""Tiled inference: seams, every input kind, progress and cancel, preparation, devices."""

import numpy as np
import pytest
import torch

from napari_unet import Cancelled, InputError, predict, segment
from napari_unet.engine.prepare import fold_batchnorm, prepare_for_inference
from napari_unet.engine.tiling import mirror_pad, plan_tiles
from tests.helpers import make_tiny_model


def _untiled(model, image):
    """One forward pass of the prepared network over the whole (mirror-padded) image."""
    x = model.normalization.apply(image[None].astype(np.float32))
    m = model.net.size_multiple
    h, w = x.shape[-2:]
    pad = 64
    ph, pw = (-(h + 2 * pad)) % m, (-(w + 2 * pad)) % m
    x = mirror_pad(x, (pad, pad + ph, pad, pad + pw))
    net = model.prepared(torch.device("cpu"))
    with torch.inference_mode():
        p = torch.softmax(net(torch.from_numpy(x)[None]), 1)[0].numpy()
    return p[:, pad : pad + h, pad : pad + w]


@pytest.mark.parametrize("tile, overlap", [(512, 64), (256, 128)])
def test_tiled_matches_untiled_away_from_border(default_model, u2os, tile, overlap):
    """No seams, with an overlap of 12.5% of the tile: tiles (aligned to the pooling grid, margins
    cropped) agree with one untiled pass."""
    tiled = predict(default_model, u2os, tile=tile, overlap=overlap, device="cpu", scale=1.0)
    full = _untiled(default_model, u2os)
    assert tiled.shape == full.shape == (3, 768, 869)
    inner = (slice(None), slice(96, -96), slice(96, -96))  # image borders legitimately differ
    err = np.abs(tiled[inner] - full[inner]).max()
    assert err < 0.02, f"seam error {err}"
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-4)


def test_tile_plan_covers_the_plane():
    for multiple in (None, 8):
        grid = plan_tiles((300, 517), 128, 128, 32, multiple=multiple)
        th, tw = grid.out_tile
        cover = np.zeros(grid.canvas, int)
        for y, x in grid.starts:
            cover[y : y + th, x : x + tw] += 1
        assert cover.min() >= 1
    assert grid.out_tile == (112, 120) and len(grid.starts) == 4 * 6
    ys = sorted({y for y, _ in grid.starts})
    assert min(np.diff(ys)) >= 112 - 32 - 8  # tiles shrink so neighbours overlap ~32 px, not more
    small = plan_tiles((40, 50), 128, 128, 32, multiple=8)
    assert len(small.starts) == 1 and small.out_tile == (72, 88)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, bool])
def test_dtypes(misc, dtype):
    model = make_tiny_model()
    img = misc[:64, :80]
    img = img > img.mean() if dtype is bool else (img.astype(dtype) - (50 if dtype is np.int32 else 0))
    p = predict(model, img, tile=64, overlap=16, device="cpu")
    assert p.shape == (3, 64, 80) and p.dtype == np.float32 and np.isfinite(p).all()


def test_nan_inf_and_constant_images(misc):
    model = make_tiny_model()
    img = misc[:64, :64].astype(np.float32)
    img[5:9, 5:9] = np.nan
    img[20, 20] = np.inf
    img[30, 30] = -np.inf
    assert np.isfinite(predict(model, img, tile=64, device="cpu")).all()
    for const in (np.zeros((64, 64), np.uint16), np.full((64, 64), np.nan, np.float32)):
        labels = segment(const, model, tile=64, device="cpu")
        assert labels.shape == (64, 64) and labels.dtype == np.uint32


def test_image_smaller_than_tile_and_odd_sizes(default_model, misc):
    small = misc[100:141, 200:253]  # 41×53
    labels = segment(small, default_model, tile=256, overlap=32, device="cpu")
    assert labels.shape == (41, 53)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10)), "empty"),
        (np.zeros((5, 100)), "at least 8×8"),
        (np.zeros(100), "at least 2"),
        (np.array([["a", "b"]]), "data type"),
        (np.zeros((16, 16), complex), "data type"),
    ],
)
def test_bad_images_give_one_sentence(image, message):
    with pytest.raises(InputError, match=message):
        predict(make_tiny_model(), image, device="cpu")


def test_rgb_needs_a_channel_for_a_grayscale_model(misc):
    rgb = np.stack([misc[:64, :64], misc[:64, :64] // 2, np.zeros((64, 64), np.uint8)], -1)
    model = make_tiny_model()
    with pytest.raises(InputError, match="3 channel.*expects 1"):
        predict(model, rgb, device="cpu")
    p = predict(model, rgb, channel=0, tile=64, device="cpu")
    np.testing.assert_allclose(p, predict(model, rgb[..., 0], tile=64, device="cpu"), atol=1e-6)
    with pytest.raises(InputError, match="Channel 5"):
        predict(model, rgb, channel=5, device="cpu")


def test_multichannel_model_channel_first_and_last(misc):
    model = make_tiny_model(in_channels=2)
    two = np.stack([misc[:64, :64], misc[64:128, :64]])  # (C, H, W)
    a = predict(model, two, channel_axis=0, tile=64, device="cpu")
    b = predict(model, np.moveaxis(two, 0, -1), channel_axis=-1, tile=64, device="cpu")
    assert a.shape == (3, 64, 64)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_stacks_are_processed_plane_by_plane_with_the_whole_stacks_normalisation(misc):
    model = make_tiny_model()
    planes = np.stack([misc[:64, :64], misc[64:128, 64:128], misc[128:192, :64]])
    p = predict(model, planes, tile=64, device="cpu")
    assert p.shape == (3, 3, 64, 64)
    reordered = predict(model, planes[[1, 2, 0]], tile=64, device="cpu")  # same stack, same bounds
    np.testing.assert_allclose(p[1], reordered[0], atol=1e-6)
    tz = planes.reshape(1, 3, 64, 64).repeat(2, 0)  # (T, Z, Y, X)
    assert segment(tz, model, tile=64, device="cpu").shape == (2, 3, 64, 64)


def test_progress_and_cancel(misc):
    model = make_tiny_model()
    calls = []
    predict(model, misc, tile=64, overlap=16, batch_size=2, device="cpu", progress=lambda d, t: calls.append((d, t)))
    total = calls[-1][1]
    assert total > 4 and calls[-1][0] == total
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    seen = []
    with pytest.raises(Cancelled):
        predict(model, misc, tile=64, overlap=16, batch_size=2, device="cpu",
                progress=lambda d, t: seen.append(d), cancel=lambda: len(seen) >= 1)
    assert len(seen) == 1  # stopped before the second batch


def test_rescale_option_keeps_output_shape(misc):
    p = predict(make_tiny_model(), misc[:100, :120], scale=0.5, tile=64, device="cpu")
    assert p.shape == (3, 100, 120)
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-4)
    with pytest.raises(InputError, match="Scale"):
        predict(make_tiny_model(), misc, scale=0)


def test_prepared_network_matches_within_1e3(default_model, misc):
    x = torch.from_numpy(default_model.normalization.apply(misc[None, :128, :128]))[None]
    net = default_model.net.eval()
    fast = prepare_for_inference(net, torch.device("cpu"))
    with torch.inference_mode():
        a = torch.softmax(net(x), 1)
        b = torch.softmax(fast(x.contiguous(memory_format=torch.channels_last)), 1)
    assert (a - b).abs().max() < 1e-3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_batchnorm(net).modules())


def test_unknown_or_absent_devices(misc):
    with pytest.raises(InputError, match="Unknown device"):
        predict(make_tiny_model(), misc, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            predict(make_tiny_model(), misc, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_mixed_precision_agrees_with_cpu(default_model, misc):
    cpu = predict(default_model, misc, device="cpu")
    gpu = predict(default_model, misc, device="cuda")
    assert np.abs(cpu - gpu).max() < 0.05


def test_valid_padding_model_tiles(misc):
    model = make_tiny_model(padding="valid")
    p = predict(model, misc[:100, :90], tile=64, overlap=8, device="cpu")
    assert p.shape == (3, 100, 90) and np.isfinite(p).all()
