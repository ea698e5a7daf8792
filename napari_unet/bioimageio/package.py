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

import importlib
import importlib.util
import io
import math
import sys
import tempfile
import zipfile
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
from napari_unet.errors import CheckpointError, InputError
from napari_unet.io.checkpoint import Checkpoint, ModelInfo
from napari_unet.io.pixel_size import to_micrometres

_DESCRIPTION_FILES = ("rdf.yaml", "bioimageio.yaml")
_EPS = 1e-6


def read_description(path: Path | str) -> dict[str, Any]:
    """The package's description (rdf.yaml / bioimageio.yaml) as a dict; YAML only, no code."""
    try:
        import yaml
    except ImportError:
        raise CheckpointError(
            "Reading bioimage.io packages needs the bioimageio extra: pip install 'napari-unet-nuclei[bioimageio]'."
        ) from None

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such package file.")
    try:
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(_DESCRIPTION_FILES) and "/" not in n.strip("/")]
            if not names:
                raise CheckpointError(f"{path}: a zip file, but not a bioimage.io package (no rdf.yaml inside).")
            data = yaml.safe_load(z.read(sorted(names, key=len)[0]))
    except (zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable zip file ({exc}).") from None
    except yaml.YAMLError:
        raise CheckpointError(f"{path}: the package description is not valid YAML.") from None
    if not isinstance(data, dict) or data.get("type") != "model":
        raise CheckpointError(f"{path}: the bioimage.io package does not describe a model.")
    return data


def _read_member(path: Path, source: Any) -> bytes:
    name = str(source.get("source") if isinstance(source, dict) else source)
    if "://" in name:
        raise CheckpointError(f"{path}: the package points to {name} instead of including the file; "
                              "napari-unet downloads nothing.")
    try:
        with zipfile.ZipFile(path) as z:
            return z.read(name.lstrip("./"))
    except KeyError:
        raise CheckpointError(f"{path}: the package lists {name} but does not contain it.") from None


def load_package(path: Path | str, *, trust_code: bool = False) -> SegmentationModel:
    """A :class:`SegmentationModel` for the bioimage.io package at ``path`` (see the module doc)."""
    path = Path(path)
    rdf = read_description(path)
    ours = (rdf.get("config") or {}).get("napari_unet") or {}
    if ours.get("format") == PACKAGE_FORMAT:
        return _load_own(path, rdf, ours)
    return _load_foreign(path, rdf, trust_code)


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
                 post: list[tuple[str, dict[str, Any]]], mapping: str, picks: list[int]) -> None:
        super().__init__()
        self.module, self.config = module, config
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
            detail = (str(exc).strip().splitlines() or [""])[-1][:160]
            raise InputError(f"The package's network failed on a {tuple(x.shape)} tile ({detail}).") from None
        if isinstance(y, (tuple, list)):
            y = y[0]
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
    net = PackageNet(module, config, min_side=max(min_y, min_x), step=step, post=post, mapping=mapping, picks=picks)
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
            raise CheckpointError(f"{path}: the package's ONNX weights could not be read ({exc}).") from None
    if weights.get("torchscript"):
        data = _read_member(path, weights["torchscript"])
        try:
            module = torch.jit.load(io.BytesIO(data), map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{path}: the package's torchscript weights could not be read ({exc}).") from None
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
        raise CheckpointError(f"{path}: the package's architecture could not be built ({type(exc).__name__}: {exc}).") \
            from None
    return net.eval()


@dataclass
class PackageModel(SegmentationModel):
    """A foreign bioimage.io package run through napari-unet's tiling and post-processing."""

    preprocessing: PackagePreprocessing = field(default_factory=PackagePreprocessing)
    semantic: bool = False

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
