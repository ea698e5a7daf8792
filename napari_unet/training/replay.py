"""The replay set: crops of the shipped model's own training images (``sample_data/replay.npz``,
built by ``scripts/make_replay_set.py`` from mnfinder training-data), mixed into fine-tuning
batches so a fine-tune does not forget the original domain, and scored to check that it did not.

The base model's score on the replay set is the same in every fine-tune from that base, so it is
kept between fine-tunes (:func:`cached_counts`), keyed by everything it depends on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet.engine.model import DEFAULT_CLASSES, SegmentationModel
from napari_unet.engine.normalize import Normalization
from napari_unet.io.atomic import atomic_path
from napari_unet.io.dirs import user_dir
from napari_unet.training.loop import Sample
from napari_unet.training.verdict import ObjectCounts

SCORE_FORMAT = 1  # bump when the meaning of the kept counts changes: older files are then never read


def replay_path() -> Path:
    """The replay set inside the installed package."""
    return Path(str(files("napari_unet.sample_data") / "replay.npz"))


def fits_replay(model: SegmentationModel) -> bool:
    """True when the replay crops suit ``model``: one input channel, the shipped normalisation, the
    shipped classes (the crops are stored normalised as the shipped model normalises)."""
    return (model.config.in_channels == 1 and list(model.info.classes) == list(DEFAULT_CLASSES)
            and Normalization.from_dict(model.info.normalization) == Normalization())


def load_replay(model: SegmentationModel) -> tuple[list[Sample], list[Sample]]:
    """``(train, validation)`` replay samples for ``model``; both empty when they do not suit it."""
    path = replay_path()
    if not fits_replay(model) or not path.exists():
        return [], []
    with np.load(path) as data:
        def samples(which: str) -> list[Sample]:
            images = [img.astype(np.float32) for img in data[f"{which}_images"]]
            if f"{which}_range" in data:  # stored as uint8 steps between each crop's lowest and highest value
                images = [lo + img / 255 * (hi - lo) for img, (lo, hi) in zip(images, data[f"{which}_range"])]
            return [Sample(img.astype(np.float32), lab.astype(np.uint32), None, f"replay-{which}-{i}")
                    for i, (img, lab) in enumerate(zip(images, data[f"{which}_labels"]))]

        return samples("train"), samples("val")


def cache_dir() -> Path:
    """Where scores worth keeping between fine-tunes are kept (``NAPARI_UNET_CACHE_DIR`` overrides)."""
    return user_dir("cache", "NAPARI_UNET_CACHE_DIR")


def score_key(net: torch.nn.Module, settings: dict[str, Any]) -> str:
    """A digest of what a replay score depends on: the replay file, the network's weights and
    ``settings`` (post-processing, tiling, device kind)."""
    h = hashlib.sha256(f"replay-score {SCORE_FORMAT}".encode())
    h.update(replay_path().read_bytes())
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def cached_counts(key: str, compute: Callable[[], ObjectCounts]) -> ObjectCounts:
    """The counts kept under ``key``, or ``compute()``'s, kept for next time (written atomically;
    an unreadable or unwritable cache only costs the time to compute them again)."""
    path = cache_dir() / "replay-scores" / f"{key}.npz"
    try:
        with np.load(path) as data:
            return ObjectCounts(data["tp"], data["fn"], data["fp"])
    except (OSError, KeyError, ValueError):
        pass
    counts = compute()
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, tp=counts.tp, fn=counts.fn, fp=counts.fp)
    except OSError:
        pass
    return counts
