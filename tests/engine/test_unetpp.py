"""UNet++: builds, round-trips through a checkpoint, folds BatchNorm, tiles seam-free, fine-tunes."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from napari_unet import load_model, predict
from napari_unet.engine.network import UNetConfig, UNetPlusPlus, build_network
from napari_unet.engine.prepare import fold_batchnorm
from napari_unet.io.checkpoint import ModelInfo, read_checkpoint, save_checkpoint
from napari_unet.training.pairs import export_pair
from tests.helpers import make_tiny_model

from .test_inference import _untiled


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("deep", [False, True])
def test_unetpp_builds_with_every_option(padding, deep):
    cfg = UNetConfig(depth=3, base_width=4, padding=padding, architecture="unetpp", deep_supervision=deep)
    net = build_network(cfg).eval()
    assert isinstance(net, UNetPlusPlus)
    n = net.tile_io(64)[0]
    x = torch.randn(2, 1, n, n)
    out = net(x)
    assert out.shape == (2, 3, net.output_size(n), net.output_size(n))
    heads = net.forward_all(x)
    assert len(heads) == (2 if deep else 1) and all(h.shape == out.shape for h in heads)
    assert torch.equal(heads[-1], out)
    # nested nodes: X^{0,1} and X^{0,2} exist (depth 3), each fed by all the nodes on its left
    assert len(net.nodes) == 2 and len(net.nodes[0]) == 2 and len(net.nodes[1]) == 1
    assert net.nodes[1][0][0].in_channels == 3 * 4


def test_config_says_unet_when_the_key_is_absent():
    old = {"in_channels": 1, "out_classes": 3, "depth": 4, "base_width": 16, "norm": "batch", "padding": "same"}
    assert UNetConfig.from_dict(old).architecture == "unet"
    assert "architecture" not in UNetConfig().to_dict()  # plain U-Nets keep the version-1 config keys
    pp = UNetConfig(architecture="unetpp", deep_supervision=True)
    assert UNetConfig.from_dict(pp.to_dict()) == pp
    with pytest.raises(ValueError, match="architecture"):
        UNetConfig(architecture="resnet")
    with pytest.raises(ValueError, match="deep_supervision"):
        UNetConfig(deep_supervision=True)


def test_unetpp_checkpoint_round_trip(tmp_path, misc):
    model = make_tiny_model(architecture="unetpp", deep_supervision=True)
    path = save_checkpoint(tmp_path / "pp.safetensors", model.net, ModelInfo(name="pp"))
    loaded = load_model(path)
    assert loaded.config == model.config and isinstance(loaded.net, UNetPlusPlus)
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, loaded.net.state_dict()[k]), k
    np.testing.assert_array_equal(predict(model, misc[:96, :96], device="cpu"),
                                  predict(loaded, misc[:96, :96], device="cpu"))
    torch.save(model.net.state_dict(), tmp_path / "plain.pt")  # a plain state dict: config inferred
    assert read_checkpoint(tmp_path / "plain.pt").config == model.config


def test_unetpp_batchnorm_folds_within_1e3(misc):
    net = make_tiny_model(architecture="unetpp").net
    x = torch.from_numpy(misc[None, None, :64, :64].astype(np.float32) / 255)
    fast = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    with torch.inference_mode():
        assert (torch.softmax(net(x), 1) - torch.softmax(fast(x), 1)).abs().max() < 1e-3


def test_unetpp_tiled_equals_untiled(misc):
    model = make_tiny_model(architecture="unetpp")
    tiled = predict(model, misc[:200, :232], tile=128, overlap=64, device="cpu")
    full = _untiled(model, misc[:200, :232])
    assert np.abs(tiled - full).max() < 1e-3


def test_finetune_unetpp_from_pairs_through_the_cli(tmp_path, misc, misc_labels):
    pairs = tmp_path / "pairs"
    export_pair(pairs, misc[:256, :256], misc_labels[:256, :256], source="misc.tif")
    export_pair(pairs, misc[256:, 256:], misc_labels[256:, 256:], source="misc.tif")
    base = save_checkpoint(tmp_path / "pp.safetensors", make_tiny_model(architecture="unetpp").net,
                           ModelInfo(name="pp"))
    out = tmp_path / "models" / "ft.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet", "train", "--pairs", str(pairs), "--base", str(base), "--out",
         str(out), "--epochs", "2", "--device", "cpu", "--json", "--steps-per-epoch", "2", "--batch-size", "2",
         "--threads", "1"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["event"] == "done"
    tuned = load_model(out)
    assert tuned.config.architecture == "unetpp"
    assert any(not torch.equal(v, tuned.net.state_dict()[k]) for k, v in read_checkpoint(base).state_dict.items()
               if v.is_floating_point())
