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
from napari_unet.engine.postprocess import (
    PostprocessConfig,
    choose_postprocess,
    foreground_mask,
    labels_from_probabilities,
)
from napari_unet.engine.scale import DEAD_BAND, scale_for_area
from napari_unet.engine.tiling import resize_planes
from napari_unet.errors import InputError
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.models import load_model
from napari_unet.training.loop import Sample, TrainConfig, train, validation_probabilities
from napari_unet.training.pairs import PERCENTILES, Pair, read_pairs
from napari_unet.training.replay import cached_counts, load_replay, score_key
from napari_unet.training.review import trusted_objects
from napari_unet.training.verdict import (
    MIN_HELD_OBJECTS,
    TERRITORY_RADII,
    TRUSTED_DOUBT,
    ObjectCounts,
    erased_regions,
    judge,
    object_counts,
    reviewed_objects,
    territories,
    trusted_kept,
    whole_counts,
)
from napari_unet.validate import check_limit, check_number

EventFn = Callable[[dict[str, Any]], None]
CONTEXT = 32  # pixels of image kept around held-out territories in their validation crops
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
    lr: float = 2.5e-4  # with l2sp 1.0: measured on dim review loops (docs/benchmarks.md), no forgetting
    seed: int = 0
    replay: bool = True  # mix the shipped model's training crops into every batch (when they suit the base);
    # the verdict scores the replay validation crops either way
    replay_fraction: float = 0.5
    l2sp: float = 1.0  # L2-SP penalty weight (pull towards the base weights); 0 = off
    layers: str = "all"  # "all" (BatchNorm statistics frozen) or "decoder"
    ema: float = 0.9  # the weights validated and kept are their moving average with this decay (0 = the last);
    # measured on dim review loops (docs/benchmarks.md): a whole-image fine-tune that forgot no longer did

    def __post_init__(self) -> None:  # the API refuses what the CLI refuses
        self.epochs = check_limit("epochs", self.epochs)
        if self.time_limit is not None:
            self.time_limit = check_limit("time limit", self.time_limit)
        self.val_fraction = check_limit("validation fraction", self.val_fraction)
        self.steps_per_epoch = check_limit("steps per epoch", self.steps_per_epoch)
        self.batch_size = check_limit("batch size", self.batch_size)
        self.crop_size = check_number("crop size", self.crop_size, low=16, integer=True)
        self.lr = check_number("learning rate", self.lr, low=0, low_open=True)
        self.replay_fraction = check_number("replay fraction", self.replay_fraction, low=0, high=0.9)
        self.l2sp = check_number("L2-SP weight", self.l2sp, low=0)
        self.ema = check_number("weight-average decay", self.ema, low=0, high=0.999)
        if self.layers not in ("all", "decoder"):
            raise InputError(f"Layers to train must be 'all' or 'decoder', not {self.layers!r}.")


def _sample(pair: Pair, model: SegmentationModel) -> Sample:
    """The pair as the model sees it: normalised as its whole source plane was when the pair
    records that plane's percentiles (a crop's own percentiles differ), else on its own."""
    planes = to_planes(pair.image, model.config.in_channels, channel_axis=-1 if pair.image.ndim == 3 else None)
    if planes.data.shape[0] != 1:
        raise InputError(f"pair {pair.name}: the image is not a single plane")
    plane, norm = planes.data[0], model.normalization
    if pair.percentiles is not None and plane.shape[0] == 1:
        return Sample(norm.apply_bounds(plane, [norm.bounds_from(PERCENTILES, pair.percentiles)]), pair.labels,
                      pair.reviewed, pair.name)
    return Sample(norm.apply(plane), pair.labels, pair.reviewed, pair.name)


def _reviewed_areas(samples: list[Sample]) -> np.ndarray:
    areas = [np.bincount(s.labels.ravel())[reviewed_objects(s.labels, s.reviewed)] for s in samples]
    return np.concatenate(areas) if areas else np.zeros(0)


def training_scale(samples: list[Sample], model: SegmentationModel) -> float:
    """The scale that brings the reviewed objects to the size ``model`` was trained at (as
    ``scale="auto"`` would, from their true areas); 1.0 when the model records no size."""
    areas = _reviewed_areas(samples)
    if not model.info.object_area or not len(areas):
        return 1.0
    s = scale_for_area(float(np.median(areas)), model.info.object_area)
    return 1.0 if abs(s - 1.0) < DEAD_BAND else s


def rescale_sample(s: Sample, scale: float) -> Sample:
    """``s`` resized by ``scale`` (bilinear image, nearest labels and reviewed mask)."""
    if scale == 1.0:
        return s
    size = (max(8, round(s.labels.shape[0] * scale)), max(8, round(s.labels.shape[1] * scale)))
    labels = resize_planes(s.labels[None], size, nearest=True)[0].astype(np.uint32)
    reviewed = None if s.reviewed is None else resize_planes(s.reviewed[None], size, nearest=True)[0] > 0.5
    return Sample(resize_planes(s.image, size), labels, reviewed, s.name)


@dataclass
class HeldOut:
    """Validation crops of held-out units: each sample's ``reviewed`` is its territories' union;
    ``regions[k]`` are the territory ids of crop k that are erased regions; crop k is
    ``windows[k]`` of pair ``sources[k]`` (the verdict scores it there, on the whole pair's labels)."""

    samples: list[Sample]
    territories: list[np.ndarray]
    n_objects: int
    n_regions: int
    regions: list[list[int]]
    sources: list[int]
    windows: list[tuple[slice, slice]]


def hold_out_objects(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], HeldOut]:
    """Hold out reviewed units (objects and erased regions, not only whole pairs) for validation.

    ``round(fraction · n)`` of the n reviewed units, at least ``min(n // 3, 10)`` and one, and at
    most n − 1, drawn at random across all pairs; their territories (an erased region: its pixels)
    are removed from the training pairs' reviewed masks (ignored by the loss) and cropped out as
    validation samples.
    """
    units, region_maps = [], []
    for k, s in enumerate(samples):
        regions = erased_regions(s.labels, s.reviewed)
        region_maps.append(regions)
        units += [(k, i, False) for i in reviewed_objects(s.labels, s.reviewed).tolist()]
        units += [(k, r, True) for r in range(1, int(regions.max(initial=0)) + 1)]
    n = len(units)
    if n < 2:
        raise InputError("Fine-tuning needs at least 2 reviewed objects or erased regions: some to learn from "
                         "and some to check the result on.")
    n_val = min(n - 1, max(1, round(fraction * n), min(n // 3, 10)))
    rng = np.random.default_rng(seed)
    held = [units[j] for j in rng.permutation(n)[:n_val]]
    areas = _reviewed_areas(samples)
    radius = TERRITORY_RADII * float(np.sqrt(np.median(areas) / np.pi)) if len(areas) else 0.0
    train_s, val_s, terrs, region_ids, sources, windows = [], [], [], [], [], []
    for k, s in enumerate(samples):
        ids = np.array([i for kk, i, bg in held if kk == k and not bg], dtype=s.labels.dtype)
        held_regions = [r for kk, r, bg in held if kk == k and bg]
        if not len(ids) and not held_regions:
            train_s.append(s)
            continue
        regions = region_maps[k]
        terr = territories(s.labels, s.reviewed, ids, radius) if len(ids) else np.zeros(s.labels.shape, np.int64)
        terr = terr.astype(np.int64)
        offset = int(s.labels.max(initial=0))  # erased regions get ids above every object's
        placed = []
        for r in held_regions:  # what a held-out object's territory already covers stays scored there
            px = (regions == r) & (terr == 0)
            if px.any():
                terr[px] = offset + r
                placed.append(offset + r)
        region_ids.append(placed)
        reviewed = (np.ones(s.labels.shape, bool) if s.reviewed is None else s.reviewed) & (terr == 0)
        train_s.append(Sample(s.image, s.labels, reviewed, s.name))
        ys, xs = np.nonzero(terr)
        m = CONTEXT
        sl = (slice(max(0, ys.min() - m), ys.max() + 1 + m), slice(max(0, xs.min() - m), xs.max() + 1 + m))
        val_s.append(Sample(s.image[(slice(None), *sl)], s.labels[sl], terr[sl] > 0, s.name + "[held-out]"))
        terrs.append(terr[sl])
        sources.append(k)
        windows.append(sl)
    n_regions = sum(len(r) for r in region_ids)
    train_s = [s for s in train_s if s.reviewed is None or s.reviewed.any()]  # all of it held out: nothing to learn
    return train_s, HeldOut(val_s, terrs, sum(1 for _, _, bg in held if not bg), n_regions, region_ids,
                            sources, windows)


def _counts(whole: dict[int, np.ndarray], labels: dict[int, np.ndarray], held: HeldOut,
            post: PostprocessConfig) -> ObjectCounts:
    """Per-unit counts of the held-out units, each scored on the labels of its whole pair (``whole``
    and ``labels``: probabilities and what ``post`` made of them, by pair index), as the user saw it:
    post-processing a crop labels objects near its edges (and the smallest kept) otherwise than the
    whole plane does. An erased region half covered by foreground still holds a false detection
    (:func:`training.verdict.object_counts`)."""
    return ObjectCounts.concat([
        object_counts(s.labels, labels[k][w], t, r, foreground=foreground_mask(whole[k][(slice(None), *w)], post))
        for s, t, r, k, w in zip(held.samples, held.territories, held.regions, held.sources, held.windows)
    ])


def _labelled(whole: dict[int, np.ndarray], post: PostprocessConfig) -> dict[int, np.ndarray]:
    """Each whole pair's labels, made once for the held-out units and the trusted objects alike."""
    return {k: labels_from_probabilities(p, post) for k, p in whole.items()}


def _crops(whole: dict[int, np.ndarray], held: HeldOut) -> list[np.ndarray]:
    """The held-out crops' probabilities, cut from their whole pairs'."""
    return [whole[k][(slice(None), *w)] for k, w in zip(held.sources, held.windows)]


def _whole_probabilities(net: UNet, samples: list[Sample], which: list[int], config: TrainConfig,
                         device: Any) -> dict[int, np.ndarray]:
    return dict(zip(which, validation_probabilities(net, [samples[k] for k in which], config, device)))


def _replay_counts(net: UNet, samples: list[Sample], config: TrainConfig, device: Any,
                   post: PostprocessConfig) -> ObjectCounts:
    probs = validation_probabilities(net, samples, config, device)
    return ObjectCounts.concat([whole_counts(s.labels, labels_from_probabilities(p, post))
                                for s, p in zip(samples, probs)])


def _trusted(samples: list[Sample], whole: dict[int, np.ndarray], labels: dict[int, np.ndarray],
             sparse: list[int], post: PostprocessConfig) -> list[np.ndarray]:
    """The trusted objects (:func:`training.review.trusted_objects`) of each sparse pair: what the
    base model found off the reviewed pixels and does not doubt, which a fine-tune must keep finding."""
    return [trusted_objects(samples[k].image.mean(axis=0), whole[k], post, samples[k].reviewed, TRUSTED_DOUBT,
                            labels[k])
            for k in sparse]


def _kept(labels: dict[int, np.ndarray], sparse: list[int], trusted: list[np.ndarray]) -> tuple[int, int]:
    found = [trusted_kept(t, labels[k]) for k, t in zip(sparse, trusted)]
    return sum(k for k, _ in found), sum(n for _, n in found)


def run_finetune(
    options: FineTuneOptions, emit: EventFn, should_stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Fine-tune the base model on the pairs; save best weights atomically to ``options.out``.

    Some reviewed objects are held out (:func:`hold_out_objects`); the pairs are resized so their
    objects have the size the base was trained at (:func:`training_scale`), and that size is
    recorded as the new model's ``object_area`` so ``scale="auto"`` chooses as the base did.
    Returns the ``done`` event (also emitted). Errors raise NapariUnetError for the caller to report.

    ``done`` fields: ``improved`` (offer the new model: :func:`training.verdict.judge`), ``verdict`` (one
    sentence: the change ± its bootstrap standard deviation, how many objects and erased regions it
    rests on, and why not when not better), ``base_f1`` /
    ``f1`` (F1 at IoU 0.5 pooled from the held-out units' counts, each model with its
    post-processing tuned there when at least 5 objects are held out, else the base's),
    ``delta_f1`` / ``delta_f1_sd`` / ``no_gain_share`` (their difference, its bootstrap standard
    deviation over the same units, and the share of those resamples without a gain: one counting
    rule for all), ``validation_objects`` /
    ``validation_regions`` / ``validation_pairs`` (held-out objects, held-out erased regions, and the
    pairs they are in), ``train_objects``, ``trusted_objects`` / ``trusted_kept`` (the base model's
    undoubted objects off the reviewed pixels of sparse pairs, and how many the new model still finds),
    ``replay_base_f1`` / ``replay_f1`` (the replay
    validation crops, base with its own post-processing, new model with its new one; None when the
    replay set does not suit the base; scored even with ``replay=False``), ``replay_delta_sd`` (the
    bootstrap standard deviation of their change over the replay objects), ``replay_objects``,
    ``train_scale`` (the pairs' resize factor) and ``object_area``,
    ``postprocess``, ``best_epoch``, ``epochs``, ``steps``, ``path``, ``latest_path``,
    ``stopped_early``, ``seconds``, ``seconds_per_epoch``. ``progress`` events' ``val_f1`` is the F1
    on the held-out objects (it chooses the best epoch; the replay set is scored on that one).
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
    train_scale = training_scale(samples, base)
    samples = [rescale_sample(s, train_scale) for s in samples]
    areas = _reviewed_areas(samples)
    object_area = (round(float(np.median(areas)), 1) or None) if len(areas) else None
    train_s, held = hold_out_objects(samples, options.val_fraction, options.seed)
    replay_train, replay_val = load_replay(base)  # forgetting is checked even when replay does not train
    replay_train = replay_train if options.replay else []
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
        train_layers=options.layers, l2sp=options.l2sp, ema=options.ema,
        replay_fraction=options.replay_fraction if replay_train else 0.0,
    )
    n_train = int(len(_reviewed_areas(train_s)))
    emit({
        "event": "start", "pairs_used": [p.name for p in pairs],
        "pairs_skipped": [{"name": n, "reason": r} for n, r in skipped],
        "train_samples": len(train_s), "val_samples": len(held.samples), "device": str(device),
        "base": str(base.path or "default"), "train_objects": n_train, "validation_objects": held.n_objects,
        "validation_regions": held.n_regions, "replay_samples": len(replay_train), "train_scale": round(train_scale, 3),
        "parameters": {"epochs": options.epochs, "time_limit": options.time_limit, "lr": options.lr,
                       "batch_size": options.batch_size, "crop_size": crop, "val_fraction": options.val_fraction,
                       "replay_fraction": config.replay_fraction, "l2sp": options.l2sp, "layers": options.layers,
                       "ema": options.ema},
    })
    # Post-processing is part of how a model is used: the base is scored with post-processing
    # chosen on the held-out objects, and so is the fine-tuned model at the end (same grid, same data).
    truths, masks = [s.labels for s in held.samples], [s.reviewed for s in held.samples]
    sparse = [k for k, s in enumerate(samples) if s.reviewed is not None]
    scored = sorted(set(sparse) | set(held.sources))  # pairs predicted whole, by each model once
    base_whole = _whole_probabilities(base.net, samples, scored, config, device)
    base_probs = _crops(base_whole, held)
    # tuned only on enough held-out objects: on erased regions alone (or a few objects) the best
    # post-processing is the one that finds nothing, for the base and the new model alike
    tune = held.n_objects >= MIN_HELD_OBJECTS
    config.postprocess = choose_postprocess(base_probs, truths, base.postprocess, masks)[0] if tune \
        else base.postprocess
    base_labels = _labelled(base_whole, config.postprocess)
    base_counts = _counts(base_whole, base_labels, held, config.postprocess)
    base_f1 = base_counts.f1()  # one counting rule (per-unit counts) for the scores, the change and its ±
    replay_base = None
    if replay_val:  # the same for every fine-tune from this base: computed once, then kept
        key = score_key(base.net, {"postprocess": base.postprocess.to_dict(), "tile": config.val_tile,
                                   "overlap": config.val_overlap, "device": device.type})
        replay_base = cached_counts(key, lambda: _replay_counts(base.net, replay_val, config, device,
                                                                base.postprocess))
    trusted = _trusted(samples, base_whole, base_labels, sparse, config.postprocess)
    del base_whole, base_probs, base_labels  # whole planes' probabilities and labels: not kept through training
    base_name = base.info.name
    net = build_network(base.config)
    net.load_state_dict(base.net.state_dict())
    state: dict[str, Any] = {"base_f1": round(base_f1, 4), "postprocess": config.postprocess}

    def info(metrics: dict[str, Any]) -> ModelInfo:
        prov = {
            "data": f"{len(pairs)} training pairs from {Path(options.pairs).resolve()}",
            "base_model": base_name, "base_path": str(base.path or ""),
            "pairs_used": len(pairs), "epochs": metrics["epoch"],
            "validation_f1": round(float(metrics["val_f1"]), 4),
            "base_validation_f1": state["base_f1"],
            "validation_pairs": len(held.samples), "validation_objects": held.n_objects,
            "train_scale": round(train_scale, 3),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        # object_area: the reviewed objects' median area at the scale they were trained at, so
        # scale="auto" brings new images of the same kind to that size, as the base model did
        return ModelInfo(name=out.stem, classes=base.info.classes, normalization=base.info.normalization,
                         postprocess=state["postprocess"].to_dict(),
                         pixel_size_um=base.info.pixel_size_um, provenance=prov, object_area=object_area)

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

    result = train(net, train_s, held.samples, config, device=device, on_event=on_event,
                   on_best=on_best, should_stop=stop, save_initial=True, replay=replay_train)
    new_whole = _whole_probabilities(net, samples, scored, config, device)  # net holds the best weights
    if tune:
        state["postprocess"], _ = choose_postprocess(_crops(new_whole, held), truths, config.postprocess, masks)
    new_labels = _labelled(new_whole, state["postprocess"])
    new_counts = _counts(new_whole, new_labels, held, state["postprocess"])
    replay_new = _replay_counts(net, replay_val, config, device, state["postprocess"]) if replay_val else None
    kept = _kept(new_labels, sparse, trusted)
    v = judge(base_counts, new_counts, held.n_objects, held.n_regions,
              None if replay_base is None else (replay_base, replay_new), options.seed, kept)
    save(out, net, {"epoch": result.best_epoch, "val_f1": v.f1}, "best")
    done = {
        "event": "done", "base_f1": v.base_f1, "f1": v.f1, "improved": bool(v.improved), "verdict": v.text,
        "delta_f1": round(v.delta, 4), "delta_f1_sd": None if not np.isfinite(v.spread) else round(v.spread, 4),
        "no_gain_share": round(v.no_gain, 3),
        "postprocess": state["postprocess"].to_dict(),
        "best_epoch": result.best_epoch, "epochs": len(result.history), "path": str(out),
        "steps": result.history[-1]["step"] if result.history else 0,
        "validation_pairs": len(held.samples), "validation_objects": held.n_objects,
        "validation_regions": held.n_regions, "train_objects": n_train,
        "trusted_objects": kept[1], "trusted_kept": kept[0],
        "replay_base_f1": v.replay[0] if v.replay else None, "replay_f1": v.replay[1] if v.replay else None,
        "replay_delta_sd": None if not np.isfinite(v.replay_spread) else round(v.replay_spread, 4),
        "replay_objects": int(sum(len(np.unique(s.labels)) - 1 for s in replay_val)),
        "train_scale": round(train_scale, 3), "object_area": object_area,
        "latest_path": str(latest), "stopped_early": result.stopped_early,
        "seconds": round(time.monotonic() - start, 1),
        "seconds_per_epoch": round(result.seconds / max(1, len(result.history)), 2),
    }
    emit(done)
    return done
