import json
import os
import pickle

import numpy as np
import pytest
import torch

from napari_unet import CheckpointError, load_model, predict
from napari_unet.engine.network import UNet, UNetConfig
from napari_unet.io.checkpoint import ModelInfo, read_checkpoint, save_checkpoint
from tests.helpers import SAMPLES, make_tiny_model


def test_round_trip_keeps_weights_config_and_metadata(tmp_path, misc):
    model = make_tiny_model()
    info = ModelInfo(name="t", pixel_size_um=0.32, provenance={"epochs": 3, "data": "x"})
    path = save_checkpoint(tmp_path / "m.safetensors", model.net, info)
    loaded = load_model(path)
    assert loaded.config == model.config
    assert loaded.info.pixel_size_um == 0.32 and loaded.info.provenance["epochs"] == 3
    for k, v in model.net.state_dict().items():
        assert torch.equal(v, loaded.net.state_dict()[k]), k
    a = predict(model, misc[:128, :128], device="cpu")
    b = predict(loaded, misc[:128, :128], device="cpu")
    np.testing.assert_array_equal(a, b)
    assert oct(path.stat().st_mode & 0o777) != "0o600"  # the temp file's private mode is not kept


def test_float16_storage_halves_size(tmp_path):
    net = make_tiny_model().net
    full = save_checkpoint(tmp_path / "a.safetensors", net, ModelInfo())
    half = save_checkpoint(tmp_path / "b.safetensors", net, ModelInfo(), dtype=torch.float16)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    assert load_model(half).net.down[0][0].weight.dtype == torch.float32


def test_plain_state_dict_pt_is_loaded_with_inferred_config(tmp_path):
    net = UNet(UNetConfig(in_channels=2, out_classes=3, depth=3, base_width=4, norm="group"))
    torch.save(net.state_dict(), tmp_path / "plain.pt")
    ckpt = read_checkpoint(tmp_path / "plain.pt")
    assert ckpt.config == net.config
    torch.save({"state_dict": net.state_dict(), "config": net.config.to_dict()}, tmp_path / "wrapped.pth")
    assert load_model(tmp_path / "wrapped.pth").config == net.config


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with open(path, "wb") as f:
            pickle.dump({"state_dict": _Payload(str(marker))}, f, protocol=protocol)
        with pytest.raises(CheckpointError, match="evil.pt: refused"):
            load_model(path)
        assert not marker.exists()
    torch.save({"w": torch.zeros(1), "evil": _Payload(str(marker))}, tmp_path / "evil2.pt")
    assert not marker.exists()  # torch.save itself does not call __reduce__'s callable
    with pytest.raises(CheckpointError, match="refused"):
        load_model(tmp_path / "evil2.pt")
    assert not marker.exists()


def test_truncated_and_foreign_files(tmp_path):
    good = save_checkpoint(tmp_path / "good.safetensors", make_tiny_model().net, ModelInfo())
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="trunc.safetensors: not a readable checkpoint"):
        load_model(tmp_path / "trunc.safetensors")
    (tmp_path / "notes.safetensors").write_text("hello, not a model\n")
    with pytest.raises(CheckpointError, match="notes.safetensors"):
        load_model(tmp_path / "notes.safetensors")
    (tmp_path / "broken.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match="broken.pt: refused"):
        load_model(tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "absent.safetensors")


def test_tensors_not_fitting_config(tmp_path):
    from safetensors.torch import load_file, safe_open, save_file

    good = save_checkpoint(tmp_path / "good.safetensors", make_tiny_model().net, ModelInfo())
    with safe_open(str(good), "pt") as f:
        header = f.metadata()
    config = json.loads(header["config"])
    config["base_width"] = 8
    header["config"] = json.dumps(config)
    save_file(load_file(str(good)), str(tmp_path / "bad.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match="bad.safetensors: the tensors do not fit the model config"):
        load_model(tmp_path / "bad.safetensors")
    header["format_version"] = "99"
    save_file(load_file(str(good)), str(tmp_path / "future.safetensors"), metadata=header)
    with pytest.raises(CheckpointError, match="newer"):
        load_model(tmp_path / "future.safetensors")


def test_shipped_model_loads_with_metadata(default_model):
    s = default_model.summary()
    assert s["in_channels"] == 1 and len(s["classes"]) == 3
    assert "mnfinder" in s["trained_on"]
    assert 0 < s["validation_f1"] <= 1


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    net = make_tiny_model(padding="valid").net
    for n in range(200):  # vary the header length until its first byte is 0x80
        path = save_checkpoint(tmp_path / "m.safetensors", net, ModelInfo(name="x" * n))
        if path.read_bytes()[0] == 0x80:
            break
    else:
        pytest.skip("no header length with a 0x80 first byte in range")
    model = load_model(path)
    assert model.config.padding == "valid" and model.info.name == "x" * n


def test_checkpoints_without_a_seed_mode_keep_threshold_seeds():
    """The previous shipped checkpoint stores no seed mode: it loads with threshold seeds; the
    shipped one stores shape seeds."""
    old = load_model(SAMPLES.parent / "tests" / "data" / "v1_nuclei_default.safetensors")
    assert "seeds" not in old.info.postprocess and old.postprocess.seeds == "threshold"
    shipped = load_model(SAMPLES / "nuclei_default.safetensors")
    assert shipped.postprocess.seeds == "shape" and shipped.postprocess.seed_h == 3.0
