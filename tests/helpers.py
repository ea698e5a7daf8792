"""Helpers shared by the tests: where the real samples are, and tiny real models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.network import UNetConfig, build_network
from napari_unet.io.checkpoint import ModelInfo

SAMPLES = Path(__file__).parent.parent / "sample_data"


def make_tiny_model(in_channels: int = 1, seed: int = 0, **config) -> SegmentationModel:
    """A tiny U-Net (or UNet++ with ``architecture="unetpp"``) with random weights and non-trivial
    BatchNorm statistics."""
    torch.manual_seed(seed)
    cfg = UNetConfig(in_channels=in_channels, out_classes=3, depth=3, base_width=4, **config)
    net = build_network(cfg)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    net.eval()
    return SegmentationModel(net, ModelInfo(name="tiny"))


class TinyFgBoundaryNet(nn.Module):
    """Not a U-Net: three convolutions giving foreground and boundary logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.body = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(6, 2, 1))
        with torch.no_grad():  # foreground where bright, boundary where the intensity changes
            self.body[-1].bias.copy_(torch.tensor([0.5, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_foreign_package(tmp: Path, image: np.ndarray, *, torchscript: bool = False, onnx: bool = False,
                          source: str | None = None, names: tuple[str, str] = ("foreground", "boundaries"),
                          softmax: bool = False) -> Path:
    """A spec-0.5 package for ``TinyFgBoundaryNet`` (zero-mean/unit-variance input, sigmoid outputs)."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bmz

    tmp.mkdir(parents=True, exist_ok=True)
    net = TinyFgBoundaryNet().eval()
    x = image.astype(np.float32)[None, None]
    xn = (x - x.mean()) / (x.std() + 1e-6)
    with torch.no_grad():
        logits = net(torch.from_numpy(xn))
        y = (torch.softmax(logits, dim=1) if softmax else torch.sigmoid(logits)).numpy()
    np.save(tmp / "in.npy", x)
    np.save(tmp / "out.npy", y)
    weights = {}
    if torchscript:
        torch.jit.script(net).save(str(tmp / "net.pt"))
        weights["torchscript"] = bmz.TorchscriptWeightsDescr(source=tmp / "net.pt", pytorch_version=bmz.Version("2.13"))
    if onnx:
        side = torch.export.Dim("side", min=4, max=1024) * 4
        torch.onnx.export(net, (torch.from_numpy(xn),), str(tmp / "net.onnx"), dynamo=True, opset_version=18,
                          input_names=["image"], dynamic_shapes=({2: side, 3: torch.export.Dim("sx", min=4,
                                                                                             max=1024) * 4},),
                          external_data=False, verbose=False)
        weights["onnx"] = bmz.OnnxWeightsDescr(source=tmp / "net.onnx", opset_version=18)
    if source is not None:
        (tmp / "arch.py").write_text(source)
        torch.save(net.state_dict(), tmp / "state.pt")
        weights["pytorch_state_dict"] = bmz.PytorchStateDictWeightsDescr(
            source=tmp / "state.pt", pytorch_version=bmz.Version("2.13"),
            architecture=bmz.ArchitectureFromFileDescr(source=tmp / "arch.py", callable="TinyFgBoundaryNet"))
    side = bmz.ParameterizedSize(min=16, step=4)
    descr = bmz.ModelDescr(
        name="tiny fg boundary", description="hand-built test package", authors=[bmz.Author(name="Tester")],
        cite=[bmz.CiteEntry(text="test", doi=bmz.Doi("10.1007/978-3-319-24574-4_28"))], license="MIT",
        inputs=[bmz.InputTensorDescr(
            id=bmz.TensorId("image"), test_tensor=bmz.FileDescr(source=tmp / "in.npy"),
            axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier("dapi")]),
                  bmz.SpaceInputAxis(id=bmz.AxisId("y"), size=side), bmz.SpaceInputAxis(id=bmz.AxisId("x"), size=side)],
            preprocessing=[bmz.ZeroMeanUnitVarianceDescr(kwargs=bmz.ZeroMeanUnitVarianceKwargs(
                axes=[bmz.AxisId("y"), bmz.AxisId("x")]))])],
        outputs=[bmz.OutputTensorDescr(
            id=bmz.TensorId("prediction"), test_tensor=bmz.FileDescr(source=tmp / "out.npy"),
            axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier(n) for n in names]),
                  bmz.SpaceOutputAxis(id=bmz.AxisId("y"), size=bmz.SizeReference(tensor_id="image", axis_id="y")),
                  bmz.SpaceOutputAxis(id=bmz.AxisId("x"), size=bmz.SizeReference(tensor_id="image", axis_id="x"))],
            postprocessing=[bmz.SoftmaxDescr() if softmax else bmz.SigmoidDescr()])],
        weights=bmz.WeightsDescr(**weights),
    )
    return save_bioimageio_package(descr, output_path=tmp / "package.zip")


def interruptible() -> None:
    """``preexec_fn`` for a command a test sends Ctrl-C to: SIGINT back to its default, as in a
    terminal, even when the test runner was started with SIGINT ignored (a background job)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
