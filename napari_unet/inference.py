"""The segmentation engine: a loaded model, ``predict`` (image → probabilities) and ``segment``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import Checkpoint, ModelInfo, read_checkpoint
from .device import resolve_device
from .images import to_planes
from .memory import check_fits, predict_bytes
from .model import UNet, UNetConfig
from .normalize import Normalization
from .postprocess import PostprocessConfig
from .prepare import prepare_for_inference
from .scale import ScaleFn, checked_scale, choose_scale, instance_labels
from .tiling import CancelFn, ProgressFn, count_tiles, predict_plane, resize_planes, resize_probabilities, tile_geometry
from .tta import dihedral
from .validate import check_limit

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 64  # 12.5% of the default tile: margins are cropped (overlap-tile), so this is seam-free


@dataclass
class SegmentationModel:
    """A network with its metadata; prepared copies per device are cached."""

    net: UNet
    info: ModelInfo
    path: Path | None = None
    _prepared: dict[str, torch.nn.Module] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def config(self) -> UNetConfig:
        return self.net.config

    @property
    def normalization(self) -> Normalization:
        return Normalization.from_dict(self.info.normalization)

    @property
    def postprocess(self) -> PostprocessConfig:
        """The post-processing parameters chosen for this model on its validation data."""
        return PostprocessConfig.from_dict(self.info.postprocess)

    @classmethod
    def from_checkpoint(cls, ckpt: Checkpoint, path: Path | None = None) -> SegmentationModel:
        return cls(ckpt.build(path or "<memory>"), ckpt.info, path)

    def prepared(self, device: torch.device, *, compile: bool = False) -> torch.nn.Module:
        """The inference-ready network on ``device`` (BatchNorm folded, channels_last)."""
        key = f"{device}:{compile}"
        with self._lock:
            if key not in self._prepared:
                self._prepared[key] = prepare_for_inference(
                    self.net, device, channels_last=device.type != "mps", compile=compile
                )
            return self._prepared[key]

    def summary(self) -> dict[str, Any]:
        """Key facts for display: channels, classes, training data, validation F1."""
        prov = self.info.provenance
        return {
            "name": self.info.name,
            "path": str(self.path) if self.path else None,
            "in_channels": self.config.in_channels,
            "classes": self.info.classes,
            "trained_on": prov.get("data"),
            "validation_f1": prov.get("validation_f1"),
            "parameters": sum(p.numel() for p in self.net.parameters()),
        }


def default_model_path() -> Path:
    """The shipped nuclei model inside the installed package."""
    return Path(str(files("napari_unet.sample_data") / "nuclei_default.safetensors"))


def load_model(path: Path | str | None = None, *, trust_code: bool = False) -> SegmentationModel:
    """Load a checkpoint (``None`` = the shipped default nuclei model) or a bioimage.io package (.zip).

    ``trust_code`` allows a package whose only weights need its Python source (see bioimageio_import).
    """
    path = Path(path) if path is not None else default_model_path()
    if path.suffix.lower() == ".zip":
        from .bioimageio_import import load_package

        return load_package(path, trust_code=trust_code)
    return SegmentationModel.from_checkpoint(read_checkpoint(path), path)


def predict(
    model: SegmentationModel,
    image: np.ndarray,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    device: str | torch.device = "auto",
    scale: float | str = "auto",
    pixel_size_um: float | None = None,
    channel_axis: int | None = None,
    channel: int | None = None,
    tta: bool = False,
    amp: bool | None = None,
    compile: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
    on_scale: ScaleFn | None = None,
    keep_enlarged: bool = False,
) -> np.ndarray:
    """Class probabilities ``(*stack, K, H, W)`` float32 for ``image``, by tiled inference.

    ``scale`` resizes the image before the network (e.g. 2.0 for nuclei half the trained size);
    ``"auto"`` (default) chooses it (see :func:`napari_unet.scale.choose_scale`: from
    ``pixel_size_um`` (µm per image pixel) when the model's is known, else from a quick first
    pass; 1.0 for models that record no training object size). ``on_scale(s)`` is told the scale used.
    ``tta`` averages the probabilities over the 8 flips/rotations (8× the time).
    ``amp`` (default: on for CUDA) runs the network in bfloat16 on CUDA only.
    ``progress(done, total)`` is called after each batch of tiles; when ``cancel()`` returns
    True the call raises :class:`~napari_unet.errors.Cancelled` before the next batch.
    ``keep_enlarged``: when the scale enlarges the image, return the probabilities at that
    enlarged size (for :func:`segment`, which separates small objects there).
    """
    planes = to_planes(image, model.config.in_channels, channel_axis=channel_axis, channel=channel)
    tile = check_limit("tile", tile)
    overlap = check_limit("overlap", overlap)
    batch_size = check_limit("batch size", batch_size)
    if scale == "auto":
        scale = choose_scale(
            model, image, pixel_size_um=pixel_size_um, channel_axis=channel_axis, channel=channel,
            tile=tile, overlap=overlap, batch_size=batch_size, device=device, amp=amp, compile=compile,
        ).scale
    scale = checked_scale(scale)
    dev = resolve_device(device)
    amp = (dev.type == "cuda") if amp is None else (amp and dev.type == "cuda")
    net = model.prepared(dev, compile=compile)
    in_tile, out_tile, overlap, multiple = tile_geometry(model.net, tile, overlap)
    h, w = planes.spatial_shape
    work = (max(8, round(h * scale)), max(8, round(w * scale)))
    size = work if keep_enlarged and scale > 1 else (h, w)
    check_fits(
        predict_bytes(planes.data.shape[0], planes.data.shape[1], model.config.out_classes, size, work),
        f"Segmenting this {h}×{w} image ({planes.data.shape[0]} plane(s))",
        "segment it blockwise (napari-unet segment --block 2048, or napari_unet.blockwise)",
    )
    if on_scale is not None:
        on_scale(float(scale))
    views = dihedral(8 if tta else 1)
    per_plane = count_tiles(work, in_tile, out_tile, overlap, multiple) * len(views)
    total = per_plane * planes.data.shape[0]
    norm = model.normalization
    out = np.empty((planes.data.shape[0], model.config.out_classes, *size), dtype=np.float32)
    for i, plane in enumerate(planes.data):
        x = norm.apply(plane)
        if work != (h, w):
            x = resize_planes(x, work)
        p = np.zeros((model.config.out_classes, *x.shape[-2:]), dtype=np.float32)
        for v, (forward, inverse) in enumerate(views):
            p += inverse(predict_plane(
                net, forward(x), in_tile=in_tile, out_tile=out_tile, overlap=overlap,
                batch_size=max(1, batch_size), device=dev, multiple=multiple, amp=amp, progress=progress,
                cancel=cancel, done_before=i * per_plane + v * per_plane // len(views), total=total,
            ))
        if len(views) > 1:
            p /= len(views)
        out[i] = resize_probabilities(p, size)
    return out.reshape((*planes.stack_shape, *out.shape[1:]))


def segment(
    image: np.ndarray,
    model: SegmentationModel | None = None,
    *,
    postprocess: PostprocessConfig | None = None,
    **options: Any,
) -> np.ndarray:
    """Instance labels (uint32, the image's stack and spatial shape) for ``image``.

    ``postprocess`` defaults to the model's own parameters, whose sizes (in training-scale
    pixels) follow the scale used; a given ``postprocess`` is in image pixels.
    ``options`` are passed to :func:`predict` (``scale="auto"`` by default).
    """
    model = model or load_model()
    used: list[float] = []
    report = options.pop("on_scale", None)

    def on_scale(s: float) -> None:
        used.append(s)
        if report is not None:
            report(s)

    semantic = getattr(model, "semantic", False)  # a package whose classes are not nuclei/boundary
    probs = predict(model, image, on_scale=on_scale, keep_enlarged=not semantic, **options)
    if semantic:
        return probs.argmax(axis=-3).astype(np.uint32)
    return labels_for_image(probs, image, model, used[0], postprocess or model.postprocess,
                            sizes="model" if postprocess is None else "image",
                            channel_axis=options.get("channel_axis"), channel=options.get("channel"))


def labels_for_image(
    probs: np.ndarray,
    image: np.ndarray,
    model: SegmentationModel,
    scale: float,
    config: PostprocessConfig,
    *,
    sizes: str = "model",
    channel_axis: int | None = None,
    channel: int | None = None,
) -> np.ndarray:
    """Instance labels of ``image`` from ``predict(..., keep_enlarged=True)``'s probabilities at
    ``scale`` (:func:`napari_unet.scale.instance_labels`; ``sizes`` as there)."""
    shape = probs.shape[-2:]
    if scale > 1:  # only an enlarging scale can have kept the probabilities at another size
        shape = to_planes(image, model.config.in_channels, channel_axis=channel_axis, channel=channel).spatial_shape
    return instance_labels(probs, shape, scale, config, sizes=sizes)
