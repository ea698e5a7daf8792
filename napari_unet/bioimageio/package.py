"""Load a bioimage.io model package (.zip) as a napari-unet model, without running its code.

* Packages napari-unet exported (``config.napari_unet``) are rebuilt as napari-unet's own network
  from the stored config and the ``pytorch_state_dict`` tensors (read with ``weights_only=True``).
* Other 2D packages run their **torchscript** or **ONNX** weights (graphs, no Python). A package
  whose only usable weights are ``pytorch_state_dict`` + architecture source would have to import
  that source, i.e. run the package author's Python: refused unless ``trust_code=True``.
* The package's preprocessing is applied per image; its outputs become napari-unet's classes when
  they are foreground/boundary probabilities, otherwise the model is *semantic* (argmax labels).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import io
import lzma
import math
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from napari_unet.bioimageio.format import PACKAGE_FORMAT, PACKAGE_FORMAT_VERSION
from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.network import UNetConfig
from napari_unet.engine.normalize import Normalization
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.errors import CheckpointError, InputError, first_line
from napari_unet.io.checkpoint import Checkpoint, ModelInfo
from napari_unet.io.pixel_size import to_micrometres

_DESCRIPTION_FILES = ("rdf.yaml", "bioimageio.yaml")
_EPS = 1e-6


# Limits on what a package may hold, checked from the zip's directory before anything is read.
MAX_DESCRIPTION_BYTES = 1 << 20  # rdf.yaml / bioimageio.yaml: real ones are a few KiB
MAX_MEMBER_BYTES = 4 << 30  # any one file (weights included)
MAX_TOTAL_BYTES = 8 << 30  # all files together
MAX_RATIO = 100  # uncompressed / compressed size of a member (zeros deflate about 1000:1)
RATIO_FREE_BYTES = 1 << 20  # members this small may compress better (text, empty tensors)
MAX_MEMBERS = 10_000
_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.3g} MiB"


def check_zip(path: Path, z: zipfile.ZipFile) -> None:
    """Refuse a package whose zip directory declares members too large, too compressed, encrypted
    or in a compression this Python cannot read (nothing is decompressed)."""
    infos = z.infolist()
    if len(infos) > MAX_MEMBERS:
        raise CheckpointError(f"{path}: the package holds {len(infos)} files, more than the limit of {MAX_MEMBERS}.")
    total = 0
    for info in infos:
        name = info.filename
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{path}: the package member {name} is encrypted; napari-unet reads no encrypted "
                                  "packages.")
        if info.compress_type not in _METHODS:
            method = zipfile.compressor_names.get(info.compress_type, str(info.compress_type))
            raise CheckpointError(f"{path}: the package member {name} uses the compression '{method}', which "
                                  "napari-unet cannot read.")
        limit = MAX_DESCRIPTION_BYTES if name.endswith(_DESCRIPTION_FILES) else MAX_MEMBER_BYTES
        if info.file_size > limit:
            raise CheckpointError(f"{path}: the package member {name} is {_gib(info.file_size)} uncompressed, more "
                                  f"than the limit of {_gib(limit)}.")
        if info.file_size > RATIO_FREE_BYTES and info.file_size > MAX_RATIO * max(info.compress_size, 1):
            ratio = info.file_size / max(info.compress_size, 1)
            raise CheckpointError(f"{path}: the package member {name} expands {ratio:.0f}-fold when unpacked, more "
                                  f"than the limit of {MAX_RATIO}-fold (a zip bomb?).")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise CheckpointError(f"{path}: the package is {_gib(total)} uncompressed, more than the limit of "
                              f"{_gib(MAX_TOTAL_BYTES)}.")


def _open_zip(path: Path) -> zipfile.ZipFile:
    """The package's zip, its directory checked by :func:`check_zip`."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such package file.")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path}: not a readable zip file ({first_line(exc)}).") from None
    try:
        check_zip(path, z)
    except BaseException:
        z.close()
        raise
    return z


def _unpack(path: Path, z: zipfile.ZipFile, name: str) -> bytes:
    """One member's bytes (at most its declared, checked size); zip errors are one sentence."""
    try:
        with z.open(name) as member:
            return member.read()
    except KeyError:
        raise CheckpointError(f"{path}: the package lists {name} but does not contain it.") from None
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, OSError, ValueError,
            zlib.error, lzma.LZMAError) as exc:
        raise CheckpointError(f"{path}: the package member {name} cannot be unpacked ({first_line(exc)}).") from None


MAX_YAML_NODES = 100_000  # items of the description once its aliases are expanded (real ones: a few hundred)


class _AliasBomb(Exception):
    pass


def parse_yaml(text: bytes) -> Any:
    """YAML data with a safe loader; aliases are allowed only while the expanded document stays
    under :data:`MAX_YAML_NODES` items (an alias bomb expands a few KiB into billions)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    root = yaml.compose(text, Loader=loader)
    sizes: dict[int, int] = {}

    def expanded(node: Any) -> int:
        key = id(node)
        if key in sizes:
            if sizes[key] < 0:  # an alias to an enclosing node: infinite
                raise _AliasBomb
            return sizes[key]
        sizes[key] = -1
        children = node.value if isinstance(node.value, list) else []
        n = 1 + sum(expanded(c) for pair in children for c in (pair if isinstance(pair, tuple) else (pair,)))
        if n > MAX_YAML_NODES:
            raise _AliasBomb
        sizes[key] = n
        return n

    if root is None:
        return None
    expanded(root)
    return yaml.load(text, Loader=loader)  # noqa: S506 - a safe loader


def read_description(path: Path | str) -> dict[str, Any]:
    """The package's description (rdf.yaml / bioimageio.yaml) as a dict; YAML only, no code."""
    try:
        import yaml
    except ImportError:
        raise CheckpointError(
            "Reading bioimage.io packages needs the bioimageio extra: pip install 'napari-unet-nuclei[bioimageio]'."
        ) from None

    path = Path(path)
    with _open_zip(path) as z:
        names = [n for n in z.namelist() if n.endswith(_DESCRIPTION_FILES) and "/" not in n.strip("/")]
        if not names:
            raise CheckpointError(f"{path}: a zip file, but not a bioimage.io package (no rdf.yaml inside).")
        name = sorted(names, key=len)[0]
        text = _unpack(path, z, name)
    try:
        data = parse_yaml(text)
    except _AliasBomb:
        raise CheckpointError(f"{path}: the package description expands to more than {MAX_YAML_NODES} items "
                              "through YAML aliases (an alias bomb?).") from None
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{path}: the package description is not valid YAML.") from None
    if not isinstance(data, dict) or data.get("type") != "model":
        raise CheckpointError(f"{path}: the bioimage.io package does not describe a model.")
    return data


def _read_member(path: Path, source: Any) -> bytes:
    """The bytes of a file the description lists (``source`` and its ``sha256``, checked when given)."""
    name = str(source.get("source") if isinstance(source, dict) else source)
    if "://" in name:
        raise CheckpointError(f"{path}: the package points to {name} instead of including the file; "
                              "napari-unet downloads nothing.")
    with _open_zip(path) as z:
        data = _unpack(path, z, name.lstrip("./"))
    expected = source.get("sha256") if isinstance(source, dict) else None
    if expected is not None and hashlib.sha256(data).hexdigest() != str(expected).strip().lower():
        raise CheckpointError(f"{path}: the package member {name} does not match the sha256 its description "
                              "records (changed or damaged); it was not used.")
    return data


def load_package(path: Path | str, *, trust_code: bool = False) -> SegmentationModel:
    """A :class:`SegmentationModel` for the bioimage.io package at ``path`` (see the module doc)."""
    path = Path(path)
    rdf = read_description(path)
    try:
        config = rdf.get("config") or {}
        ours = (config.get("napari_unet") if isinstance(config, dict) else None) or {}
        if not isinstance(ours, dict):
            raise TypeError("config.napari_unet is not a mapping")
        if ours.get("format") == PACKAGE_FORMAT:
            return _load_own(path, rdf, ours)
        return _load_foreign(path, rdf, trust_code)
    except (AttributeError, TypeError, KeyError, ValueError, IndexError) as exc:
        # a description whose fields have the wrong types (the spec's validator is not run)
        raise CheckpointError(f"{path}: the package description is malformed ({first_line(exc)}).") from None


def _load_state_dict(path: Path, data: bytes) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - refused pickles and corrupt files alike
        raise CheckpointError(
            f"{path}: the package's state dict is not plain tensors ({type(exc).__name__})."
        ) from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: the package's state dict does not hold tensors.")
    return state


def _load_own(path: Path, rdf: dict[str, Any], ours: dict[str, Any]) -> SegmentationModel:
    version = ours.get("format_version", 0)
    if not isinstance(version, int) or version > PACKAGE_FORMAT_VERSION:
        raise CheckpointError(f"{path}: napari-unet package format {version!r} is newer than this napari-unet reads.")
    weights = (rdf.get("weights") or {}).get("pytorch_state_dict")
    if not weights:
        raise CheckpointError(f"{path}: the napari-unet package has no pytorch_state_dict weights.")
    try:
        config = UNetConfig.from_dict(dict(ours["model_config"]))
        info = ModelInfo.from_dict(dict(ours.get("info") or {}))
        Normalization.from_dict(info.normalization)  # validated now, as for checkpoints
        PostprocessConfig(**info.postprocess)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: the package's napari-unet config is invalid ({exc}).") from None
    state = _load_state_dict(path, _read_member(path, weights))
    return Checkpoint(config, state, info).model(path)


# ---------------------------------------------------------------------------------------------
# Foreign packages


def _axes(tensor: dict[str, Any]) -> list[dict[str, Any]]:
    """Axes as dicts with ``id`` and ``type`` (spec 0.5), also for 0.4's axes strings like 'bcyx'."""
    axes = tensor.get("axes")
    if isinstance(axes, str):
        kinds = {"b": "batch", "c": "channel", "y": "space", "x": "space", "z": "space", "t": "time"}
        names = {"b": "batch", "c": "channel"}
        shape = tensor.get("shape")
        out = []
        for i, a in enumerate(axes):
            entry: dict[str, Any] = {"id": names.get(a, a), "type": kinds.get(a, "index")}
            if a == "c" and isinstance(shape, list):
                entry["size"] = shape[i]
            elif isinstance(shape, dict) and a in "yx":
                entry["size"] = {"min": shape["min"][i], "step": shape["step"][i]}
            elif isinstance(shape, list):
                entry["size"] = shape[i]
            out.append(entry)
        return out
    return [dict(a, id=a.get("id") or a.get("type")) for a in axes or []]


def _steps(tensor: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
    return [(s.get("id") or s.get("name"), s.get("kwargs") or {}) for s in tensor.get(key) or []]


def _side(axis: dict[str, Any]) -> tuple[int, int]:
    """(min, step) of a spatial input axis; step 0 for a fixed size."""
    size = axis.get("size")
    if isinstance(size, int):
        return size, 0
    if isinstance(size, dict) and "min" in size:
        return int(size["min"]), int(size.get("step", 0))
    raise ValueError(f"axis {axis.get('id')} has a size napari-unet cannot tile ({size})")


def _check_same_size(inp: dict[str, Any], out: dict[str, Any], out_axes: list[dict[str, Any]]) -> None:
    """napari-unet blends output tiles onto the input grid: the output must have the input's y/x size."""
    shape = out.get("shape")
    if isinstance(shape, dict):  # spec 0.4: {reference_tensor, scale, offset}
        axes = out.get("axes", "")
        for i, a in enumerate(axes):
            if a in "yx" and (shape.get("scale", [1] * len(axes))[i] != 1 or shape.get("offset", [0] * len(axes))[i]):
                raise ValueError("its output is not the size of its input")
        return
    for a in out_axes:
        if a.get("type") != "space":
            continue
        size = a.get("size")
        same = isinstance(size, dict) and size.get("tensor_id") == inp.get("id") and not size.get("offset") \
            and size.get("axis_id", a["id"]) == a["id"] and a.get("scale", 1) == next(
                (b.get("scale", 1) for b in _axes(inp) if b["id"] == a["id"]), 1)
        if not same:
            raise ValueError(f"its output axis {a['id']} is not the size of the input's")


@dataclass
class PackagePreprocessing:
    """The package's input preprocessing, applied once per image to ``(C, H, W)`` planes."""

    steps: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def apply(self, planes: np.ndarray) -> np.ndarray:
        x = np.asarray(planes, dtype=np.float32)
        for name, kw in self.steps:
            x = _apply_step(name, kw, x)
        out = x.astype(np.float32, copy=False)
        out[~np.isfinite(out)] = 0.0
        return out


def _reduce_axes(kw: dict[str, Any]) -> tuple[int, ...]:
    axes = kw.get("axes") or ["y", "x"]
    axes = list(axes) if not isinstance(axes, str) else list(axes)
    return (0, 1, 2) if "channel" in axes or "c" in axes else (1, 2)


def _per_channel(value: Any, x: np.ndarray) -> np.ndarray:
    v = np.asarray(value, dtype=np.float32)
    return v.reshape(-1, 1, 1) if v.ndim else v


def _apply_step(name: str, kw: dict[str, Any], x: np.ndarray) -> np.ndarray:
    if name == "scale_range":
        axes = _reduce_axes(kw)
        lo = np.percentile(x, kw.get("min_percentile", 0.0), axis=axes, keepdims=True)
        hi = np.percentile(x, kw.get("max_percentile", 100.0), axis=axes, keepdims=True)
        return (x - lo) / (hi - lo + kw.get("eps", _EPS))
    if name == "zero_mean_unit_variance":
        axes = _reduce_axes(kw)
        return (x - x.mean(axis=axes, keepdims=True)) / (x.std(axis=axes, keepdims=True) + kw.get("eps", _EPS))
    if name == "fixed_zero_mean_unit_variance":
        return (x - _per_channel(kw["mean"], x)) / (_per_channel(kw["std"], x) + kw.get("eps", _EPS))
    if name == "scale_linear":
        return x * _per_channel(kw.get("gain", 1.0), x) + _per_channel(kw.get("offset", 0.0), x)
    if name == "clip":
        return np.clip(x, kw.get("min", -np.inf), kw.get("max", np.inf))
    if name == "binarize":
        return (x > kw["threshold"]).astype(np.float32)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if name == "ensure_dtype":
        return x
    raise ValueError(f"unsupported preprocessing step {name!r}")


_ROLE_WORDS = {
    "background": ("background", "bg"),
    "boundary": ("boundar", "border", "contour", "edge"),
    "foreground": ("foreground", "fg", "nucle", "cell", "interior", "object", "mask", "prob"),
}


def _role(name: str) -> str | None:
    name = name.lower()
    for role, words in _ROLE_WORDS.items():
        if any(w in name for w in words):
            return role
    return None


class PackageNet(nn.Module):
    """A package's network behind napari-unet's tiling interface.

    ``forward`` returns log class probabilities, so napari-unet's softmax gives back the
    probabilities of the mapped classes (see :func:`_class_mapping`).
    """

    def __init__(self, module: nn.Module, config: UNetConfig, *, min_side: int, step: int,
                 post: list[tuple[str, dict[str, Any]]], mapping: str, picks: list[int], channels: int) -> None:
        super().__init__()
        self.module, self.config, self.channels = module, config, channels
        self.min_side, self.step, self.post, self.mapping, self.picks = min_side, step, post, mapping, picks

    @property
    def size_multiple(self) -> int:
        return self.step or self.min_side

    def tile_io(self, tile: int) -> tuple[int, int]:
        if not self.step:
            return self.min_side, self.min_side
        side = max(self.min_side, self.min_side + math.ceil((tile - self.min_side) / self.step) * self.step)
        return side, side

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            y = self.module(x.contiguous())
        except RuntimeError as exc:  # a graph that does not accept this tile
            detail = (str(exc).strip().splitlines() or [""])[-1][:160]  # TorchScript puts the cause last
            raise InputError(f"The package's network failed on a {tuple(x.shape)} tile ({detail}).") from None
        if isinstance(y, (tuple, list)):
            y = y[0]
        expected = (x.shape[0], self.channels, *x.shape[-2:])
        if not isinstance(y, torch.Tensor) or tuple(y.shape) != expected:
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise CheckpointError(f"The package's network returned {got} for a {tuple(x.shape)} tile where its "
                                  f"description declares {expected}; its output was not used.")
        y = y.float()
        for name, kw in self.post:
            if name == "sigmoid":
                y = torch.sigmoid(y)
            elif name == "softmax":
                y = torch.softmax(y, dim=1)
            elif name == "scale_linear":
                gain, offset = (torch.as_tensor(kw.get(k, d), dtype=y.dtype, device=y.device)
                                for k, d in (("gain", 1.0), ("offset", 0.0)))
                y = y * (gain.reshape(-1, 1, 1) if gain.ndim else gain) + (
                    offset.reshape(-1, 1, 1) if offset.ndim else offset)
            elif name == "clip":
                y = y.clamp(kw.get("min"), kw.get("max"))
        return torch.log(self._classes(y).clamp_min(1e-7))

    def _classes(self, y: torch.Tensor) -> torch.Tensor:
        p = y[:, self.picks]
        if self.mapping == "bg_fg_boundary":
            return p / p.sum(dim=1, keepdim=True).clamp_min(1e-7)
        if self.mapping == "fg_boundary":
            fg = p[:, 0:1].clamp(0, 1)
            boundary = torch.minimum(p[:, 1:2].clamp(0, 1), fg)
            return torch.cat([1 - fg, fg - boundary, boundary], dim=1)
        if self.mapping == "fg":
            fg = p.clamp(0, 1)
            return torch.cat([1 - fg, fg], dim=1)
        return p if self.mapping == "probabilities" else torch.softmax(p, dim=1)


def _class_mapping(names: list[str], probabilities: bool) -> tuple[str, list[int], list[str]]:
    """How output channels become napari-unet classes: (mapping, channel indices, class names)."""
    roles = [_role(n) for n in names]
    if probabilities and len(names) >= 3 and {"background", "foreground", "boundary"} <= set(roles):
        picks = [roles.index("background"), roles.index("foreground"), roles.index("boundary")]
        return "bg_fg_boundary", picks, ["background", names[picks[1]], names[picks[2]]]
    if probabilities and len(names) == 2 and sorted(roles, key=str) == ["boundary", "foreground"]:
        picks = [roles.index("foreground"), roles.index("boundary")]
        return "fg_boundary", picks, ["background", names[picks[0]], names[picks[1]]]
    if probabilities and len(names) == 1 and roles[0] != "boundary":
        return "fg", [0], ["background", names[0]]
    return ("probabilities" if probabilities else "logits"), list(range(len(names))), list(names)


def _load_foreign(path: Path, rdf: dict[str, Any], trust_code: bool) -> SegmentationModel:
    inputs, outputs = rdf.get("inputs") or [], rdf.get("outputs") or []
    if len(inputs) != 1 or not outputs:
        raise CheckpointError(f"{path}: napari-unet runs packages with one input image; this one has {len(inputs)}.")
    try:
        in_axes, out_axes = _axes(inputs[0]), _axes(outputs[0])
        spatial = [a for a in in_axes if a.get("type") == "space"]
        if [a["id"] for a in spatial] != ["y", "x"] or any(a.get("type") in ("time", "index") for a in in_axes):
            raise ValueError(f"input axes {[a['id'] for a in in_axes]} are not a 2D image (y, x)")
        if [a["id"] for a in out_axes if a.get("type") == "space"] != ["y", "x"]:
            raise ValueError("the output is not a 2D image")
        _check_same_size(inputs[0], outputs[0], out_axes)
        (min_y, step_y), (min_x, step_x) = (_side(a) for a in spatial)
        channels = next((a for a in in_axes if a.get("type") == "channel"), None)
        in_channels = len(channels.get("channel_names") or []) or int(channels.get("size", 1)) if channels else 1
        out_channel = next((a for a in out_axes if a.get("type") == "channel"), None)
        names = list(out_channel.get("channel_names") or []) if out_channel else ["foreground"]
        if out_channel and not names:
            names = [f"class{i}" for i in range(int(out_channel.get("size", 1)))]
        pre = _steps(inputs[0], "preprocessing")
        post = _steps(outputs[0], "postprocessing")
        for name, _ in pre:
            _apply_step(name, {"threshold": 0, "mean": 0, "std": 1}, np.zeros((1, 2, 2), np.float32))
        unsupported = [n for n, _ in post if n not in ("sigmoid", "softmax", "scale_linear", "clip", "ensure_dtype")]
        if unsupported:
            raise ValueError(f"unsupported postprocessing {unsupported}")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: napari-unet cannot run this bioimage.io package ({exc}).") from None
    data_range = (outputs[0].get("data") or {}).get("range") if isinstance(outputs[0].get("data"), dict) else None
    probabilities = any(n in ("sigmoid", "softmax") for n, _ in post) or (
        isinstance(data_range, (list, tuple)) and None not in data_range and 0 <= data_range[0] and data_range[1] <= 1)
    if len(names) == 1 and not probabilities:
        raise CheckpointError(f"{path}: its one output channel is not a probability (no sigmoid/softmax, no 0–1 "
                              "range), so napari-unet cannot segment from it.")
    mapping, picks, classes = _class_mapping(names, probabilities)
    module = _foreign_module(path, rdf, trust_code)
    step = math.lcm(step_y, step_x) if step_y and step_x else 0
    depth = max(1, min(7, int(math.log2(step)) + 1)) if step and step & (step - 1) == 0 else 1
    config = UNetConfig(in_channels=in_channels, out_classes=len(classes), depth=depth)
    net = PackageNet(module, config, min_side=max(min_y, min_x), step=step, post=post, mapping=mapping, picks=picks,
                     channels=len(names))
    pixel = to_micrometres(spatial[-1].get("scale", 1.0), spatial[-1].get("unit"))
    info = ModelInfo(name=str(rdf.get("name", path.stem)), classes=classes, pixel_size_um=pixel,
                     provenance={"bioimageio_package": str(path), "description": rdf.get("description", "")})
    return PackageModel(net, info, path, preprocessing=PackagePreprocessing(pre),
                        semantic=mapping in ("probabilities", "logits"))


class OnnxModule(nn.Module):
    """ONNX weights run by ONNX Runtime on the CPU (a graph: no Python from the package)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        import onnxruntime as ort

        self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device)


def _onnx_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def _foreign_module(path: Path, rdf: dict[str, Any], trust_code: bool) -> nn.Module:
    weights = rdf.get("weights") or {}
    if not weights.get("torchscript") and weights.get("onnx") and _onnx_available():
        try:
            return OnnxModule(_read_member(path, weights["onnx"]))
        except CheckpointError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own kinds
            raise CheckpointError(
                f"{path}: the package's ONNX weights could not be read ({first_line(exc)})."
            ) from None
    if weights.get("torchscript"):
        data = _read_member(path, weights["torchscript"])
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(
                f"{path}: the package's torchscript weights could not be read ({first_line(exc)})."
            ) from None
        return module.eval()
    state_entry = weights.get("pytorch_state_dict")
    if not state_entry:
        kinds = ", ".join(weights) or "none"
        need = " (ONNX needs onnxruntime: pip install 'napari-unet-nuclei[bioimageio]')" if weights.get("onnx") else ""
        raise CheckpointError(
            f"{path}: napari-unet runs torchscript or ONNX (or its own) weights; this package has {kinds}{need}."
        )
    if not trust_code:
        raise CheckpointError(
            f"{path}: this package's only PyTorch weights need its architecture Python source to be imported, "
            "which would run the package author's code; load it with trust_code=True "
            "(CLI: --trust-package-code) only if you trust where it came from."
        )
    arch = state_entry.get("architecture") or {}
    callable_name = arch.get("callable")
    try:
        if arch.get("import_from"):
            factory = getattr(importlib.import_module(arch["import_from"]), callable_name)
        else:
            source = _read_member(path, arch)
            with tempfile.TemporaryDirectory() as tmp:
                file = Path(tmp) / "package_architecture.py"
                file.write_bytes(source)
                name = f"_napari_unet_package_{abs(hash(str(path)))}"
                spec = importlib.util.spec_from_file_location(name, file)
                module_obj = importlib.util.module_from_spec(spec)
                sys.modules[name] = module_obj
                spec.loader.exec_module(module_obj)
            factory = getattr(module_obj, callable_name)
        net = factory(**(arch.get("kwargs") or {}))
        net.load_state_dict(_load_state_dict(path, _read_member(path, state_entry)),
                            strict=bool(state_entry.get("strict", True)))
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - trusted foreign code can fail in any way
        raise CheckpointError(
            f"{path}: the package's architecture could not be built ({type(exc).__name__}: {first_line(exc)})."
        ) from None
    return net.eval()


@dataclass
class PackageModel(SegmentationModel):
    """A foreign bioimage.io package run through napari-unet's tiling and post-processing."""

    preprocessing: PackagePreprocessing = field(default_factory=PackagePreprocessing)

    @property
    def normalization(self) -> PackagePreprocessing:  # type: ignore[override]
        return self.preprocessing

    @property
    def postprocess(self) -> PostprocessConfig:
        return PostprocessConfig.from_dict(self.info.postprocess)

    def prepared(self, device: torch.device, *, compile: bool = False) -> nn.Module:
        """The package's network on ``device`` (torchscript graphs are not folded or compiled)."""
        key = str(device)
        with self._lock:
            if key not in self._prepared:
                self._prepared[key] = self.net.to(device).eval()
            return self._prepared[key]
