"""The replay set: crops of the shipped model's own training images (``sample_data/replay.npz``,
built by ``scripts/make_replay_set.py`` from mnfinder training-data), mixed into fine-tuning
batches so a fine-tune does not forget the original domain, and scored to check that it did not."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np

from napari_unet.engine.model import DEFAULT_CLASSES, SegmentationModel
from napari_unet.engine.normalize import Normalization
from napari_unet.training.loop import Sample


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
