"""Export a napari-unet checkpoint as a bioimage.io model package (spec 0.5, a zip file).

The package holds the network four ways: ``pytorch_state_dict`` weights with the architecture
source (napari-unet's ``model.py``, so any reader can rebuild it), ``torchscript`` and ``onnx``
weights (graphs that run without Python source; ONNX when it exports cleanly) and napari-unet's
own config under ``config.napari_unet`` (so napari-unet rebuilds its network without running
anything from the package). Test tensors are computed from
the shipped sample image with napari-unet's own ``predict``; nothing in the package refers to a
URL. Needs the ``bioimageio`` extra (``pip install napari-unet-nuclei[bioimageio]``).
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import io
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet._version import __version__
from napari_unet.bioimageio.format import PACKAGE_FORMAT, PACKAGE_FORMAT_VERSION
from napari_unet.engine import network as model_module
from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.postprocess import labels_from_probabilities
from napari_unet.engine.predict import predict
from napari_unet.errors import InputError, NapariUnetError
from napari_unet.io.atomic import atomic_path
from napari_unet.io.checkpoint import read_checkpoint

ARCHITECTURE_FILE = "napari_unet_model.py"
ARCHITECTURE_CALLABLE = "NapariUNet"
HALO = 64  # output pixels each side that depend on image context beyond the tile (half the default overlap)
SAMPLE_IMAGE = "nuclei_misc.tif"
ONNX_OPSET = 18
TEST_SIDE = 256  # test tensors: the centre 256×256 of the sample image
INPUT_ID, OUTPUT_ID = "raw", "probabilities"

CITATIONS = {
    "unet": ("Ronneberger O., Fischer P., Brox T. (2015). U-Net: Convolutional Networks for Biomedical "
             "Image Segmentation. MICCAI 2015.", "10.1007/978-3-319-24574-4_28"),
    "unetpp": ("Zhou Z., Rahman Siddiquee M. M., Tajbakhsh N., Liang J. (2018). UNet++: A Nested U-Net "
               "Architecture for Medical Image Segmentation. DLMIA 2018.", "10.1007/978-3-030-00889-5_1"),
}

_ARCHITECTURE_ENTRY = f'''

class {ARCHITECTURE_CALLABLE}(UNet):
    """napari-unet's network built from its config as keyword arguments (bioimage.io entry point).

    It outputs logits; the package's postprocessing applies a softmax over the channel axis.
    """

    def __init__(self, **config):
        super().__init__(UNetConfig(**config))
'''


def _need_bioimageio() -> None:
    try:
        import bioimageio.spec  # noqa: F401
    except ImportError:
        raise InputError(
            "Writing or reading bioimage.io packages needs the bioimageio extra: "
            "pip install 'napari-unet-nuclei[bioimageio]'."
        ) from None


def architecture_source() -> str:
    """The self-contained source that rebuilds napari-unet's network from its config kwargs."""
    return inspect.getsource(model_module) + _ARCHITECTURE_ENTRY


def _shape_seeds(postprocess: dict[str, Any]) -> str:
    """How shape seeds split the seed region, for the model card ('' for threshold seeds)."""
    if postprocess.get("seeds", "threshold") != "shape":
        return ""
    return (f" split into one seed per bulge (h-maxima, height {postprocess.get('seed_h')} px, of its distance "
            "transform)")


def _channel_name(text: str) -> str:
    name = "".join(c if c.isalnum() else "_" for c in text.lower()).strip("_")
    return name if name and name[0].isalpha() else f"c_{name}"


def _sample_image() -> np.ndarray:
    import tifffile

    return tifffile.imread(str(files("napari_unet.sample_data") / SAMPLE_IMAGE))


def sample_crop(image: np.ndarray, multiple: int, side: int = TEST_SIDE) -> np.ndarray:
    """The centre ``side``×``side`` crop of the sample image as float32 (sides a multiple of ``multiple``)."""
    side = max(multiple, side // multiple * multiple)
    y, x = (max(0, (n - side) // 2) for n in image.shape[-2:])
    return np.ascontiguousarray(image[y : y + side, x : x + side], dtype=np.float32)


def _cover(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A 2:1 RGB picture: the image, and the image with the segmented nuclei outlined in colour."""
    from skimage.segmentation import find_boundaries

    lo, hi = np.percentile(image, [1, 99.8])
    gray = (np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)
    left = np.repeat(gray[..., None], 3, axis=2)
    right = left.copy()
    rng = np.random.default_rng(0)
    colours = rng.integers(80, 256, size=(int(labels.max()) + 1, 3), dtype=np.uint8)
    edges = find_boundaries(labels, mode="inner")
    right[edges] = colours[labels[edges]]
    return np.concatenate([left, right], axis=1)


def _documentation(name: str, ckpt_info: Any, arch: str, f1_note: str) -> str:
    prov = ckpt_info.provenance
    train = prov.get("data") or "not recorded"
    val = prov.get("validation_data") or "not recorded"
    classes = ", ".join(ckpt_info.classes)
    pixel = f"{ckpt_info.pixel_size_um} µm" if ckpt_info.pixel_size_um else "not recorded"
    return f"""# {name}

A 2D {'UNet++' if arch == 'unetpp' else 'U-Net'} for nuclei segmentation, exported by
napari-unet {__version__}.

## Input
One image plane (`raw`, axes batch, channel, y, x), any intensity range: the package's
preprocessing maps the {ckpt_info.normalization.get('low')} / {ckpt_info.normalization.get('high')}
percentiles of each image to 0 / 1 (`scale_range`). Pixel size the model was trained at: {pixel}.

## Output
`probabilities` (batch, channel, y, x): per-pixel class probabilities ({classes}), summing to 1
(softmax over channels, done by the package's postprocessing). Instance labels come from a seeded
watershed: foreground = 1 − P(background) > {ckpt_info.postprocess.get('threshold')}, seeds =
P(interior) > {ckpt_info.postprocess.get('seed_threshold')}{_shape_seeds(ckpt_info.postprocess)}, objects smaller than
{ckpt_info.postprocess.get('min_size')} pixels dropped (napari-unet does this for you).
Tiles should overlap by twice the halo ({HALO} pixels each side).

## Training
Training data: {train}.
Validation data: {val}.

# Validation
{f1_note}

## Provenance
```json
{json.dumps(prov, indent=2, default=str)}
```
"""


def _f1_note(info: Any) -> str:
    prov = info.provenance
    f1 = prov.get("validation_f1")
    if f1 is None:
        return "No validation F1 was recorded in this checkpoint's provenance."
    note = (f"Instance F1 at IoU 0.5 on the validation data ({prov.get('validation_data') or 'see provenance'}): "
            f"**{float(f1):.3f}**, measured by napari-unet when the checkpoint was trained.")
    if prov.get("base_validation_f1") is not None:
        note += f" The base model ({prov.get('base_model', 'unknown')}) scored {float(prov['base_validation_f1']):.3f}."
    return note


def export_bioimageio(
    model_path: Path | str,
    out_zip: Path | str,
    *,
    name: str | None = None,
    authors: list[str] | None = None,
    license: str = "MIT",
    cover: Path | str | None = None,
    description: str | None = None,
    onnx: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write ``model_path`` (a napari-unet checkpoint) as a bioimage.io package ``out_zip``.

    ONNX weights are added when ``onnx`` and the network exports cleanly (checked with ONNX Runtime).
    The zip is written atomically; an existing ``out_zip`` is an InputError unless ``overwrite``.
    """
    _need_bioimageio()
    out_zip = Path(out_zip)
    if out_zip.exists() and not overwrite:
        raise InputError(f"{out_zip} already exists; choose another name or pass overwrite (--overwrite).")
    if out_zip.suffix.lower() != ".zip":
        raise InputError(f"{out_zip}: a bioimage.io package is a .zip file; name the output *.zip.")
    ckpt = read_checkpoint(model_path)
    model = ckpt.model(Path(model_path))
    if model.config.padding != "same":
        raise InputError(f"{model_path}: only models with 'same' padding can be exported to bioimage.io.")
    if model.config.in_channels != 1:
        raise InputError(f"{model_path}: only single-channel models can be exported (the sample image is grey).")
    shown = name or model.info.name.replace("_", " ")
    if len(shown.strip()) < 5:
        raise InputError(f"The package name {shown.strip()!r} is too short; bioimage.io needs at least 5 characters.")
    if cover is not None and not Path(cover).is_file():
        raise InputError(f"{cover}: no such cover image.")
    with tempfile.TemporaryDirectory(prefix="napari-unet-bmz-") as tmp:
        descr = _describe(model, Path(tmp), name=name, authors=authors, license=license,
                          cover=Path(cover) if cover else None, description=description, onnx=onnx)
        from bioimageio.spec import save_bioimageio_package

        package = save_bioimageio_package(descr, output_path=Path(tmp) / "package.zip")
        try:
            with atomic_path(out_zip, overwrite=overwrite) as part:
                shutil.copyfile(package, part)
        except FileExistsError:
            raise InputError(f"{out_zip} appeared while exporting; it was not replaced.") from None
    return out_zip


def _describe(
    model: SegmentationModel, tmp: Path, *, name: str | None, authors: list[str] | None, license: str,
    cover: Path | None, description: str | None, onnx: bool,
) -> Any:
    from bioimageio.spec.model import v0_5 as bmz

    info, config = model.info, model.config
    arch = str(getattr(config, "architecture", "unet") or "unet")
    name = name or info.name.replace("_", " ")
    import imageio.v3 as iio

    sample = _sample_image()
    if cover is None:
        cover = tmp / "cover.png"
        iio.imwrite(cover, _cover(sample, labels_from_probabilities(predict(model, sample, device="cpu", scale=1.0),
                                                                    model.postprocess)))
    image = sample_crop(sample, model.net.size_multiple)
    # napari-unet's own prediction, one tile over the whole crop: what the package must reproduce
    probs = predict(model, image, tile=max(image.shape), overlap=0, device="cpu", scale=1.0)
    np.save(tmp / "test_input.npy", image[None, None])
    np.save(tmp / "test_output.npy", probs[None].astype(np.float32))
    iio.imwrite(tmp / "sample_input.tif", image)
    iio.imwrite(tmp / "sample_output.tif", probs.astype(np.float32))
    (tmp / ARCHITECTURE_FILE).write_text(architecture_source())
    net = model.net.float().eval()
    torch.save({k: v.detach().cpu().float() for k, v in net.state_dict().items()}, tmp / "weights.pt")
    ts_comment = _save_torchscript(net, tmp / "weights_torchscript.pt")
    onnx_note = _save_onnx(net, tmp / "weights.onnx", model.net.size_multiple) if onnx else "not requested"
    (tmp / "README.md").write_text(_documentation(name, info, arch, _f1_note(info)))
    (tmp / "LICENSE_DATA.md").write_text((files("napari_unet.sample_data") / "README.md").read_text())

    multiple = model.net.size_multiple
    min_side = -(-(2 * HALO + multiple) // multiple) * multiple
    unit = {"unit": "micrometer", "scale": float(info.pixel_size_um)} if info.pixel_size_um else {}

    def space_in(axis: str) -> Any:
        return bmz.SpaceInputAxis(id=bmz.AxisId(axis), size=bmz.ParameterizedSize(min=min_side, step=multiple),
                                  **unit)

    def space_out(axis: str) -> Any:
        return bmz.SpaceOutputAxisWithHalo(
            id=bmz.AxisId(axis), halo=HALO, size=bmz.SizeReference(tensor_id=bmz.TensorId(INPUT_ID),
                                                                   axis_id=bmz.AxisId(axis)), **unit)

    norm = model.normalization
    inputs = [bmz.InputTensorDescr(
        id=bmz.TensorId(INPUT_ID),
        description="One image plane, any intensity range (normalised by the preprocessing).",
        axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=[bmz.Identifier("intensity")]),
              space_in("y"), space_in("x")],
        test_tensor=bmz.FileDescr(source=tmp / "test_input.npy"),
        sample_tensor=bmz.FileDescr(source=tmp / "sample_input.tif"),
        data=bmz.IntervalOrRatioDataDescr(type="float32"),
        # bioimageio.core pads by the halo before predicting: mirror, as napari-unet does ("mode" is
        # given explicitly, or the serialiser drops it and readers see the default constant padding)
        pad=bmz.ReflectPadding(mode="reflect"),
        preprocessing=[bmz.ScaleRangeDescr(kwargs=bmz.ScaleRangeKwargs(
            axes=[bmz.AxisId("y"), bmz.AxisId("x")], min_percentile=norm.low, max_percentile=norm.high))],
    )]
    class_names = [bmz.Identifier(_channel_name(c)) for c in info.classes]
    outputs = [bmz.OutputTensorDescr(
        id=bmz.TensorId(OUTPUT_ID),
        description=f"Per-pixel probabilities of the classes {', '.join(info.classes)} (softmax over channels).",
        axes=[bmz.BatchAxis(), bmz.ChannelAxis(channel_names=class_names), space_out("y"), space_out("x")],
        test_tensor=bmz.FileDescr(source=tmp / "test_output.npy"),
        sample_tensor=bmz.FileDescr(source=tmp / "sample_output.tif"),
        data=bmz.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[bmz.SoftmaxDescr(kwargs=bmz.SoftmaxKwargs(axis=bmz.AxisId("channel")))],
    )]
    torch_version = bmz.Version(torch.__version__.split("+")[0])
    weights = bmz.WeightsDescr(
        pytorch_state_dict=bmz.PytorchStateDictWeightsDescr(
            source=tmp / "weights.pt",
            architecture=bmz.ArchitectureFromFileDescr(
                source=tmp / ARCHITECTURE_FILE, callable=bmz.Identifier(ARCHITECTURE_CALLABLE),
                kwargs=config.to_dict()),
            pytorch_version=torch_version,
        ),
        torchscript=bmz.TorchscriptWeightsDescr(
            source=tmp / "weights_torchscript.pt", pytorch_version=torch_version,
            parent="pytorch_state_dict", comment=ts_comment),
        onnx=bmz.OnnxWeightsDescr(source=tmp / "weights.onnx", opset_version=ONNX_OPSET,
                                  parent="pytorch_state_dict", comment=onnx_note)
        if (tmp / "weights.onnx").is_file() else None,
    )
    cite = [bmz.CiteEntry(text=CITATIONS["unet"][0], doi=bmz.Doi(CITATIONS["unet"][1]))]
    if arch == "unetpp":
        cite.append(bmz.CiteEntry(text=CITATIONS["unetpp"][0], doi=bmz.Doi(CITATIONS["unetpp"][1])))
    ours = {
        "format": PACKAGE_FORMAT,
        "format_version": PACKAGE_FORMAT_VERSION,
        "model_config": config.to_dict(),
        "info": json.loads(json.dumps(asdict(info), default=str)),
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "napari_unet_version": __version__,
        "test_tensor_prediction": "napari-unet predict(tile=whole plane, overlap=0, device='cpu')",
    }
    return bmz.ModelDescr(
        name=name,
        description=description or (f"2D {'UNet++' if arch == 'unetpp' else 'U-Net'} nuclei segmentation "
                                    "(background / interior / boundary probabilities), trained with napari-unet."),
        authors=[bmz.Author(name=a) for a in (authors or ["napari-unet user"])],
        cite=cite,
        license=bmz.LicenseId(license),
        documentation=bmz.FileDescr(source=tmp / "README.md"),
        covers=[bmz.FileDescr(source=cover)],
        attachments=[bmz.FileDescr(source=tmp / "LICENSE_DATA.md")],
        tags=["napari-unet", "unet", "2d", "nuclei", "instance-segmentation", "semantic-segmentation",
              "fluorescence-light-microscopy", "pytorch"],
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        config=bmz.Config(bioimageio=bmz.BioimageioConfig(reproducibility_tolerance=[
            bmz.ReproducibilityTolerance(absolute_tolerance=1e-3, relative_tolerance=0.0,
                                         mismatched_elements_per_million=0)]), napari_unet=ours),
        version=bmz.Version("0.1.0"),
    )


def _save_onnx(net: torch.nn.Module, path: Path, multiple: int) -> str:
    """Export to ONNX (torch.export, dynamic batch and size); a failure leaves the package without ONNX."""
    import copy

    try:
        import onnxruntime as ort
    except ImportError:
        return "not exported: onnx/onnxruntime are not installed"
    net = copy.deepcopy(net).eval()
    x = torch.zeros(1, net.config.in_channels, 16 * multiple, 16 * multiple)
    shapes = ({0: torch.export.Dim("batch", min=1, max=256), 2: torch.export.Dim("side_y", min=1, max=4096) * multiple,
               3: torch.export.Dim("side_x", min=1, max=4096) * multiple},)
    try:
        with _quiet_exporter():
            torch.onnx.export(net, (x,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                              input_names=[INPUT_ID], output_names=["logits"], dynamic_shapes=shapes,
                              external_data=False, verbose=False)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        check = torch.rand(2, net.config.in_channels, 3 * multiple, 5 * multiple)
        with torch.no_grad():
            diff = float(abs(session.run(None, {INPUT_ID: check.numpy()})[0] - net(check).numpy()).max())
        if diff > 1e-3:
            raise ValueError(f"ONNX Runtime differs from PyTorch by {diff:.2g}")
    except Exception as exc:  # noqa: BLE001 - any exporter failure: ship torchscript only
        path.unlink(missing_ok=True)
        return f"not exported: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return f"torch.onnx.export (dynamo) by napari-unet {__version__}, opset {ONNX_OPSET}"


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the ONNX exporter's progress prints, log lines and warnings."""
    import warnings

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _save_torchscript(net: torch.nn.Module, path: Path) -> str:
    """Script the network (keeps size-dependent branches); fall back to tracing if scripting fails."""
    import copy

    net = copy.deepcopy(net).eval()
    # TorchScript compiles properties too; the config-reading ones are not needed by forward()
    props = [n for n, v in inspect.getmembers(type(net)) if isinstance(v, property)]
    net.__class__ = type(type(net).__name__, (type(net),), {"__jit_unused_properties__": props})
    try:
        scripted = torch.jit.script(net)
        how = "torch.jit.script"
    except Exception as exc:  # noqa: BLE001 - any scripting failure: trace instead
        try:
            scripted = torch.jit.trace(net, torch.zeros(1, net.config.in_channels, 256, 256))
        except Exception:  # noqa: BLE001
            raise NapariUnetError(f"The network could not be converted to TorchScript ({exc}).") from None
        how = "torch.jit.trace on a 256×256 input"
    scripted.save(str(path))
    return f"converted with {how} by napari-unet {__version__}"
