import pytest
import torch

from napari_unet.engine.network import UNet, UNetConfig


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_same_padding_keeps_shape(norm):
    net = UNet(UNetConfig(in_channels=2, out_classes=3, depth=3, base_width=4, norm=norm)).eval()
    out = net(torch.randn(1, 2, 64, 48))
    assert out.shape == (1, 3, 64, 48)


def test_valid_padding_matches_output_size():
    net = UNet(UNetConfig(depth=3, base_width=4, padding="valid")).eval()
    n = net.valid_input_size(100)
    out = net(torch.randn(1, 1, n, n))
    assert out.shape[-1] == net.output_size(n) > 0
    assert net.output_size(n - 1) == 0 or n - 1 < 100


def test_config_round_trip_and_validation():
    cfg = UNetConfig(in_channels=3, out_classes=2, depth=5, base_width=8, norm="group", padding="valid")
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown model config keys"):
        UNetConfig.from_dict({"widht": 3})
    with pytest.raises(ValueError, match="norm"):
        UNetConfig(norm="layer")
