"""Checkpoint files: a safetensors file whose header carries the config and metadata as JSON.

Loading never executes code from the file: safetensors holds only raw tensors and strings, and
plain PyTorch ``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``.
The format is documented in the README ("Checkpoint format").
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from napari_unet.engine.model import ModelInfo, SegmentationModel
from napari_unet.engine.network import UNet, UNetConfig, build_network
from napari_unet.engine.normalize import Normalization
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.errors import CheckpointError, os_error_sentence
from napari_unet.io.atomic import atomic_path

FORMAT = "napari-unet-checkpoint"
FORMAT_VERSION = 1
MAX_PARAMETERS = 10**9  # a config asking for more is refused before anything is allocated


@dataclass
class Checkpoint:
    """A network config, its weights and its metadata."""

    config: UNetConfig
    state_dict: dict[str, torch.Tensor]
    info: ModelInfo

    def model(self, path: Path | None = None) -> SegmentationModel:
        """The segmentation model this checkpoint describes (``path`` names it in messages)."""
        return SegmentationModel(self.build(path or "<memory>"), self.info, path)

    def build(self, path: Path | str = "<memory>") -> UNet:
        """Rebuild the network; a mismatch between tensors and config is a CheckpointError.

        Sizes and shapes are checked on a weightless ("meta") copy first, so a config asking for a
        huge network fails in one sentence instead of allocating; non-finite weights are refused.
        """
        with torch.device("meta"):
            skeleton = build_network(self.config)
        n_params = sum(p.numel() for p in skeleton.parameters())
        if n_params > MAX_PARAMETERS:
            raise CheckpointError(
                f"{path}: the config describes a network of {n_params:,} parameters, more than the "
                f"{MAX_PARAMETERS:,} napari-unet accepts; the file is corrupt or not meant for napari-unet."
            )
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
        for key, tensor in self.state_dict.items():
            if key in expected and tuple(tensor.shape) != expected[key]:
                raise CheckpointError(
                    f"{path}: the tensors do not fit the model config ({key} is {tuple(tensor.shape)}, "
                    f"the config needs {expected[key]})."
                )
        for key, tensor in self.state_dict.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(
                    f"{path}: the weights contain NaN or infinite values ({key}); the training that "
                    "wrote it diverged, so it cannot segment anything. Use an earlier checkpoint."
                )
        net = skeleton  # the weights are assigned into it: no second construction, no random init
        state = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone()
                 for k, v in self.state_dict.items()}
        try:
            net.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = lines[1] if len(lines) > 1 else (lines[0] if lines else type(exc).__name__)
            raise CheckpointError(
                f"{path}: the tensors do not fit the model config ({first[:200]})."
            ) from None
        net.eval()
        return net


def save_checkpoint(
    path: Path | str,
    net: UNet,
    info: ModelInfo,
    *,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``net`` and ``info`` atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    tensors = {}
    for k, v in net.state_dict().items():
        v = v.detach().cpu()
        if v.is_floating_point() and not k.endswith(("running_mean", "running_var")):
            v = v.to(dtype)
        tensors[k] = v.contiguous()
    header = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(net.config.to_dict()),
        "info": json.dumps(asdict(info)),
    }
    data = save(tensors, metadata=header)  # serialised in memory: write errors then surface as OSError
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def read_checkpoint(path: Path | str) -> Checkpoint:
    """Read a napari-unet ``.safetensors`` checkpoint or a plain PyTorch state dict."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file.")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file.")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise CheckpointError(os_error_sentence(exc, path)) from None
    if not head:
        raise CheckpointError(f"{path}: the checkpoint file is empty.")
    if path.suffix in (".pt", ".pth"):
        return _read_torch(path)
    # safetensors: 8-byte little-endian header length, then the JSON header's "{"
    if head[8:9] != b"{" and (head[:2] == b"PK" or head[:1] == b"\x80"):
        return _read_torch(path)  # a PyTorch zip or pickle under another extension
    return _read_safetensors(path)


def _read_safetensors(path: Path) -> Checkpoint:
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated, corrupt or another kind of file: "
            f"{_first_line(exc)})."
        ) from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{path}: a safetensors file, but not a napari-unet checkpoint (no format header).")
    version = header.get("format_version", "0")
    if not version.isdigit() or int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than (or unknown to) this "
            f"napari-unet, which reads up to {FORMAT_VERSION}; please upgrade napari-unet-nuclei."
        )
    try:
        config_dict = json.loads(header["config"])
        if not isinstance(config_dict, dict):
            raise ValueError(f"config must be a JSON object, not {type(config_dict).__name__}")
        config = UNetConfig.from_dict(config_dict)
        info = ModelInfo.from_dict(json.loads(header.get("info", "{}")))
        Normalization.from_dict(info.normalization)  # validate now, not at first use
        PostprocessConfig(**info.postprocess)
    except (KeyError, ValueError, TypeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's config is invalid ({exc}).") from None
    return Checkpoint(config, tensors, info)


def _read_torch(path: Path) -> Checkpoint:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if ln.strip().startswith("Unsupported")), "")
        raise CheckpointError(
            f"{path}: refused, it is not a plain-tensor PyTorch file that can be loaded without running "
            f"code{f' ({detail})' if detail else ''}; only plain tensors are accepted."
        ) from None
    except OSError as exc:
        raise CheckpointError(os_error_sentence(exc, path)) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for corrupt files
        detail = f"{type(exc).__name__}: {_first_line(exc)}"
        raise CheckpointError(f"{path}: not a readable PyTorch file ({detail}).") from None
    config_dict: dict[str, Any] | None = None
    if isinstance(obj, dict) and "state_dict" in obj:
        config_dict = obj.get("config")
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors.")
    if not all(isinstance(k, str) for k in obj):
        raise CheckpointError(f"{path}: does not hold a state dict of named tensors.")
    obj = {k.removeprefix("module."): v for k, v in obj.items()}
    try:
        if config_dict is not None and not isinstance(config_dict, dict):
            raise ValueError(f"config must be a dict, not {type(config_dict).__name__}")
        config = UNetConfig.from_dict(config_dict) if config_dict else infer_config(obj)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise CheckpointError(f"{path}: the state dict is not a napari-unet U-Net ({exc}).") from None
    return Checkpoint(config, obj, ModelInfo(name=path.stem))


def _first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if it has none), shortened."""
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
    return line[:120]


def infer_config(state: dict[str, torch.Tensor]) -> UNetConfig:
    """Recover a UNetConfig from the tensor names and shapes of a plain state dict."""
    first = state["down.0.0.weight"]
    depth = len({k.split(".")[1] for k in state if k.startswith("down.")})
    if "down.0.1.running_mean" in state:
        norm = "batch"
    elif "down.0.1.weight" in state:
        norm = "group"
    else:
        norm = "none"
    nested = "heads.0.weight" in state  # UNet++
    heads = len({k.split(".")[1] for k in state if k.startswith("heads.")})
    return UNetConfig(
        in_channels=int(first.shape[1]),
        out_classes=int(state["heads.0.weight" if nested else "head.weight"].shape[0]),
        depth=depth,
        base_width=int(first.shape[0]),
        norm=norm,
        architecture="unetpp" if nested else "unet",
        deep_supervision=nested and heads > 1,
    )
