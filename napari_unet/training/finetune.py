"""Fine-tuning from a training-pairs folder (the engine behind ``napari-unet train``).

Emits JSON-serialisable events (documented in the README, "Fine-tuning events"):
``start``, ``progress``, ``checkpoint``, ``done`` and ``error``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.engine.device import resolve_device
from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.network import UNet, build_network
from napari_unet.engine.planes import to_planes
from napari_unet.engine.postprocess import choose_postprocess, median_object_area
from napari_unet.errors import InputError
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.models import load_model
from napari_unet.training.loop import Sample, TrainConfig, train, validation_probabilities
from napari_unet.training.pairs import Pair, read_pairs
from napari_unet.validate import check_limit, check_number

EventFn = Callable[[dict[str, Any]], None]
MIN_VAL_SIDE = 64
PARENT_ENV = "NAPARI_UNET_PARENT_PID"  # set by the background runner: stop if that process is gone


def parent_gone() -> bool:
    """True when this run was started by a process (napari) that has since died or been killed."""
    pid = os.environ.get(PARENT_ENV, "")
    return pid.isdigit() and os.getppid() != int(pid)


@dataclass
class FineTuneOptions:
    pairs: Path
    out: Path
    base: Path | None = None
    epochs: int = 30
    time_limit: float | None = None
    device: str = "auto"
    val_fraction: float = 0.2
    steps_per_epoch: int = 20
    batch_size: int = 4
    crop_size: int = 256
    lr: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:  # the API refuses what the CLI refuses
        self.epochs = check_limit("epochs", self.epochs)
        if self.time_limit is not None:
            self.time_limit = check_limit("time limit", self.time_limit)
        self.val_fraction = check_limit("validation fraction", self.val_fraction)
        self.steps_per_epoch = check_limit("steps per epoch", self.steps_per_epoch)
        self.batch_size = check_limit("batch size", self.batch_size)
        self.crop_size = check_number("crop size", self.crop_size, low=16, integer=True)
        self.lr = check_number("learning rate", self.lr, low=0, low_open=True)


def _sample(pair: Pair, model: SegmentationModel) -> Sample:
    planes = to_planes(pair.image, model.config.in_channels, channel_axis=-1 if pair.image.ndim == 3 else None)
    if planes.data.shape[0] != 1:
        raise InputError(f"pair {pair.name}: the image is not a single plane")
    return Sample(model.normalization.apply(planes.data[0]), pair.labels, pair.reviewed, pair.name)


def split_samples(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out whole pairs for validation; with a single pair, hold out a strip of it instead."""
    if len(samples) >= 2:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(samples))
        n_val = min(len(samples) - 1, max(1, round(val_fraction * len(samples))))
        return [samples[i] for i in order[n_val:]], [samples[i] for i in order[:n_val]]
    s = samples[0]
    h, w = s.labels.shape
    frac = min(max(val_fraction, 0.2), 0.5)
    axis = 0 if h >= w else 1
    length = (h, w)[axis]
    cut = length - max(MIN_VAL_SIDE, round(frac * length))
    if cut < MIN_VAL_SIDE:
        raise InputError("A single pair must be at least 128 pixels long to hold out validation crops.")
    sl_train = (slice(None, cut), slice(None)) if axis == 0 else (slice(None), slice(None, cut))
    sl_val = (slice(cut, None), slice(None)) if axis == 0 else (slice(None), slice(cut, None))
    reviewed = np.ones((h, w), bool) if s.reviewed is None else s.reviewed.copy()
    train_rev = np.zeros_like(reviewed)
    train_rev[sl_train] = reviewed[sl_train]
    val = Sample(s.image[(slice(None), *sl_val)], s.labels[sl_val], reviewed[sl_val], s.name + "[val]")
    return [Sample(s.image, s.labels, train_rev, s.name)], [val]


def run_finetune(
    options: FineTuneOptions, emit: EventFn, should_stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Fine-tune the base model on the pairs; save best weights atomically to ``options.out``.

    Returns the ``done`` event (also emitted). Errors raise NapariUnetError for the caller to report.
    """
    start = time.monotonic()
    pairs, skipped = read_pairs(options.pairs)
    if not pairs:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped) or "the folder holds no pairs"
        raise InputError(f"No usable training pairs in {options.pairs} ({reasons}).")
    base = load_model(options.base)
    samples = []
    for pair in pairs:
        try:
            samples.append(_sample(pair, base))
        except InputError as exc:  # e.g. an RGB plane for a single-channel model
            skipped.append((pair.name, str(exc)))
    if not samples:
        reasons = "; ".join(f"{n}: {r}" for n, r in skipped)
        raise InputError(f"No training pair in {options.pairs} fits the base model ({reasons}).")
    pairs = [p for p in pairs if p.name not in {n for n, _ in skipped}]
    train_s, val_s = split_samples(samples, options.val_fraction, options.seed)
    device = resolve_device(options.device)
    out = Path(options.out)
    if base.path is not None and out.resolve() == Path(base.path).resolve():
        raise InputError("The output checkpoint must not be the base checkpoint.")
    latest = out.with_name(out.stem + ".latest" + out.suffix)
    crop = min(options.crop_size, *[max(s.labels.shape) for s in train_s])
    crop = max(base.net.size_multiple, crop // base.net.size_multiple * base.net.size_multiple)
    config = TrainConfig(
        epochs=options.epochs, steps_per_epoch=options.steps_per_epoch, time_limit=options.time_limit,
        batch_size=options.batch_size, crop_size=crop, lr=options.lr, freeze_batchnorm=True,
        seed=options.seed, loss_points=max(2, options.steps_per_epoch // 2),  # a loss point every 2 steps
    )
    emit({
        "event": "start", "pairs_used": [p.name for p in pairs],
        "pairs_skipped": [{"name": n, "reason": r} for n, r in skipped],
        "train_samples": len(train_s), "val_samples": len(val_s), "device": str(device),
        "base": str(base.path or "default"),
        "parameters": {"epochs": options.epochs, "time_limit": options.time_limit, "lr": options.lr,
                       "batch_size": options.batch_size, "crop_size": crop, "val_fraction": options.val_fraction},
    })
    # Post-processing is part of how a model is used: the base is scored with post-processing
    # chosen on the validation pairs, and so is the fine-tuned model at the end (same grid, same data).
    truths, masks = [s.labels for s in val_s], [s.reviewed for s in val_s]
    base_probs = validation_probabilities(base.net, val_s, config, device)
    config.postprocess, base_f1 = choose_postprocess(base_probs, truths, base.postprocess, masks)
    base_name = base.info.name
    net = build_network(base.config)
    net.load_state_dict(base.net.state_dict())
    state: dict[str, Any] = {"base_f1": round(base_f1, 4), "postprocess": config.postprocess,
                             "val_objects": int(sum(len(np.unique(t[t > 0])) for t in truths)),
                             # its training data at scale 1, so scale="auto" sizes objects as trained
                             "object_area": round(median_object_area([s.labels for s in train_s]), 1) or None}

    def info(metrics: dict[str, Any]) -> ModelInfo:
        prov = {
            "data": f"{len(pairs)} training pairs from {Path(options.pairs).resolve()}",
            "base_model": base_name, "base_path": str(base.path or ""),
            "pairs_used": len(pairs), "epochs": metrics["epoch"],
            "validation_f1": round(float(metrics["val_f1"]), 4),
            "base_validation_f1": state["base_f1"],
            "validation_pairs": len(val_s), "validation_objects": state["val_objects"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        return ModelInfo(name=out.stem, classes=base.info.classes, normalization=base.info.normalization,
                         postprocess=state["postprocess"].to_dict(),
                         pixel_size_um=base.info.pixel_size_um, provenance=prov,
                         object_area=state["object_area"])

    def save(which: Path, model: UNet, metrics: dict[str, Any], kind: str) -> None:
        save_checkpoint(which, model, info(metrics))
        emit({"event": "checkpoint", "kind": kind, "path": str(which), "epoch": metrics["epoch"],
              "val_f1": metrics["val_f1"]})

    def on_event(event: dict[str, Any]) -> None:
        emit(event)
        if event["event"] == "progress":  # after validation (``loss`` events come between)
            save(latest, net, event, "latest")

    def on_best(model: UNet, metrics: dict[str, Any]) -> None:
        save(out, model, metrics, "best")
        if metrics["epoch"] == 0:  # the base model's score: the curve's starting point
            emit({"event": "progress", "epoch": 0, "step": 0, "train_loss": float("nan"), "val_f1": metrics["val_f1"],
                  "val_loss": metrics["val_loss"], "elapsed": round(time.monotonic() - start, 2), "eta": None})

    def stop() -> bool:
        return parent_gone() or (should_stop is not None and should_stop())

    result = train(net, train_s, val_s, config, device=device, on_event=on_event, on_best=on_best,
                   should_stop=stop, save_initial=True)
    new_probs = validation_probabilities(net, val_s, config, device)  # net holds the best weights
    state["postprocess"], f1 = choose_postprocess(new_probs, truths, config.postprocess, masks)
    save(out, net, {"epoch": result.best_epoch, "val_f1": f1}, "best")
    improved = f1 > base_f1
    done = {
        "event": "done", "base_f1": base_f1, "f1": f1, "improved": bool(improved),
        "postprocess": state["postprocess"].to_dict(),
        "best_epoch": result.best_epoch, "epochs": len(result.history), "path": str(out),
        "validation_pairs": len(val_s), "validation_objects": state["val_objects"],
        "latest_path": str(latest), "stopped_early": result.stopped_early,
        "seconds": round(time.monotonic() - start, 1),
        "seconds_per_epoch": round(result.seconds / max(1, len(result.history)), 2),
    }
    emit(done)
    return done
