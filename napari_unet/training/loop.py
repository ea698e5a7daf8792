"""The training loop shared by the default model's training and by fine-tuning.

Targets are three classes (background, nucleus interior, nucleus boundary) made from instance
labels; the loss is weighted cross-entropy + soft Dice; pixels marked unreviewed are ignored.
The cross-entropy weights are either a fixed boundary-class weight or the U-Net paper's
separation weight map (class balance + a large weight on the thin gaps between touching nuclei).
Validation runs the real tiled inference + post-processing and scores instance F1.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from napari_unet.engine.metrics import pooled_f1
from napari_unet.engine.network import UNet
from napari_unet.engine.postprocess import PostprocessConfig, labels_from_probabilities
from napari_unet.engine.prepare import prepare_for_inference
from napari_unet.engine.tiling import predict_plane, tile_geometry
from napari_unet.training.augment import AugmentConfig, add_artefacts, jitter_intensity, low_resolution, transform_crop
from napari_unet.training.crowding import Nucleus, nucleus_bank, paste_touching

IGNORE = 255
EventFn = Callable[[dict[str, Any]], None]


@dataclass
class Sample:
    """One training or validation image: normalised ``(C, H, W)`` float32 and instance labels."""

    image: np.ndarray
    labels: np.ndarray
    reviewed: np.ndarray | None = None  # bool (H, W); None = all reviewed
    name: str = ""


@dataclass
class TrainConfig:
    """Hyper-parameters; serialisable to JSON for provenance."""

    epochs: int = 50
    steps_per_epoch: int = 50
    time_limit: float | None = None  # seconds, whichever of epochs/time comes first
    batch_size: int = 8
    crop_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    boundary_weight: float = 3.0  # class weight of the boundary class without the weight map
    dice_weight: float = 1.0
    weight_map: bool = False  # the U-Net paper's separation weights instead of boundary_weight
    w0: float = 10.0  # weight of the touching-border term
    sigma: float = 5.0  # its width, in pixels of the training images (scaled with each crop)
    copy_paste: float = 0.0  # probability that a crop gets real nuclei pasted touching others
    copy_paste_count: tuple[int, int] = (3, 12)  # how many, drawn uniformly
    artefacts: float = 0.0  # probability that a crop gets imaging artefacts (augment.add_artefacts)
    low_resolution: float = 0.0  # probability that a crop is made coarser (augment.low_resolution)
    freeze_batchnorm: bool = False  # keep BN statistics fixed (fine-tuning on few images)
    train_layers: str = "all"  # "all", or "decoder": the encoder's weights stay fixed
    replay_fraction: float = 0.0  # share of each batch drawn from ``train(replay=...)`` samples
    l2sp: float = 0.0  # weight of the L2-SP penalty: squared distance of the weights to the initial ones
    ema: float = 0.0  # decay of an exponential moving average of the weights, started at the initial ones;
    # when > 0 the average is what is validated and returned (0 = the weights as trained)
    reviewed_floor: float = 0.2  # with replay: the own crops' cross-entropy is averaged over their reviewed
    # pixels, or over this share of their pixels when fewer are reviewed (a sparse pair's few pixels
    # weigh more than their pixel count, less than a dense crop; on dim, 0 forgot and 0.05 lost nuclei)
    val_tile: int = 512
    val_overlap: int = 128
    loss_points: int = 2  # ``loss`` events per epoch (the running train loss between validations)
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    best_state: dict[str, torch.Tensor]
    best_f1: float
    best_epoch: int
    initial_f1: float
    history: list[dict[str, Any]]
    stopped_early: bool
    seconds: float


def class_targets(labels: np.ndarray, reviewed: np.ndarray | None = None) -> np.ndarray:
    """0 background, 1 interior, 2 boundary (inner object edge, so touching objects stay apart)."""
    target = np.zeros(labels.shape, dtype=np.int64)
    fg = labels > 0
    boundary = find_boundaries(labels, mode="inner") & fg
    target[fg] = 1
    target[boundary] = 2
    if reviewed is not None:
        target[~reviewed.astype(bool)] = IGNORE
    return target


def separation_weights(
    labels: np.ndarray, target: np.ndarray, w0: float = 10.0, sigma: float = 5.0, *, max_class_weight: float = 10.0
) -> np.ndarray:
    """The U-Net paper's weight map ``w = w_c + w0 · exp(-(d1 + d2)² / (2σ²))`` (float32).

    ``w_c`` balances the classes of ``target`` (0/1/2, IGNORE): class k gets
    ``sqrt(n_most_frequent / n_k)``, capped at ``max_class_weight``; IGNORE pixels weigh 0. ``d1``, ``d2`` are the
    distances to the nearest and second-nearest object of ``labels`` (0 inside an object); the
    border term is added on background and boundary pixels (not on object interiors), so the
    gaps and contact lines between touching objects get up to ``w0`` extra. Distances beyond
    ``4σ`` from an object are treated as infinite (a term below ``w0 · e⁻⁸``).
    """
    counts = np.bincount(target[target != IGNORE].ravel(), minlength=3).astype(float)
    present = counts > 0
    wc = np.ones(len(counts))
    if present.any():
        wc[present] = np.minimum(np.sqrt(counts.max() / counts[present]), max_class_weight)
    weights = np.where(target == IGNORE, 0.0, wc[np.where(target == IGNORE, 0, target)]).astype(np.float32)
    if w0 <= 0 or sigma <= 0:
        return weights
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    margin = int(np.ceil(4 * sigma)) + 1
    h, w = labels.shape
    for i, sl in enumerate(ndi.find_objects(labels), start=1):
        if sl is None:
            continue
        ys = slice(max(0, sl[0].start - margin), min(h, sl[0].stop + margin))
        xs = slice(max(0, sl[1].start - margin), min(w, sl[1].stop + margin))
        d = ndi.distance_transform_edt(labels[ys, xs] != i)
        a, b = d1[ys, xs], d2[ys, xs]
        d2[ys, xs] = np.minimum(b, np.maximum(a, d))
        d1[ys, xs] = np.minimum(a, d)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    border[np.isinf(d2) | (target == 1) | (target == IGNORE)] = 0
    return weights + border.astype(np.float32)


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, boundary_weight: float,
                  pixel_weights: torch.Tensor | None = None, floor: float = 0.0) -> torch.Tensor:
    """Weighted cross-entropy over the valid (not IGNORE) pixels: per-pixel ``pixel_weights`` when
    given, else the boundary class weighs ``boundary_weight``; normalised by the weights' sum over
    valid pixels, or by ``floor`` × the number of pixels when that is larger (as if at least that
    share of the pixels were valid)."""
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    ce_map = F.cross_entropy(logits, target, ignore_index=IGNORE, reduction="none")
    if pixel_weights is None:
        pixel_weights = torch.where(target == 2, boundary_weight if logits.shape[1] >= 3 else 1.0, 1.0)
    w = pixel_weights * valid
    return (ce_map * w).sum() / torch.clamp(w.sum(), min=max(1e-6, floor * target.numel()))


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 − soft Dice, the mean over classes, pooled over the batch's valid pixels."""
    k = logits.shape[1]
    valid = target != IGNORE
    if not valid.any():
        return logits.sum() * 0.0
    probs = torch.softmax(logits, dim=1) * valid[:, None]
    onehot = F.one_hot(torch.where(valid, target, 0), k).permute(0, 3, 1, 2) * valid[:, None]
    inter = (probs * onehot).sum((0, 2, 3))
    denom = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + 1) / (denom + 1)).mean()


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    boundary_weight: float,
    dice_weight: float,
    pixel_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted cross-entropy (:func:`cross_entropy`) + soft Dice (:func:`soft_dice`), ignoring IGNORE pixels."""
    return cross_entropy(logits, target, boundary_weight, pixel_weights) + dice_weight * soft_dice(logits, target)


def validation_probabilities(
    net: UNet, samples: list[Sample], config: TrainConfig, device: torch.device
) -> list[np.ndarray]:
    """Class probabilities of each validation sample, with the real tiled inference."""
    fast = prepare_for_inference(net, device, channels_last=device.type != "mps")
    in_tile, out_tile, overlap, multiple = tile_geometry(net, config.val_tile, config.val_overlap)
    return [
        predict_plane(
            fast, s.image, in_tile=in_tile, out_tile=out_tile, overlap=overlap,
            batch_size=4, device=device, multiple=multiple,
        )
        for s in samples
    ]


def evaluate(
    net: UNet, samples: list[Sample], config: TrainConfig, device: torch.device
) -> tuple[float, float]:
    """Validation (loss, instance F1 at IoU 0.5) with the real tiled inference."""
    pairs, losses = [], []
    for s, probs in zip(samples, validation_probabilities(net, samples, config, device)):
        target = torch.from_numpy(class_targets(s.labels, s.reviewed))[None]
        logp = torch.log(torch.from_numpy(probs).clamp_min(1e-6))[None]
        losses.append(float(segmentation_loss(logp, target, config.boundary_weight, config.dice_weight)))
        pred = labels_from_probabilities(probs, config.postprocess)
        gt = s.labels
        if s.reviewed is not None:
            pred = np.where(s.reviewed, pred, 0)
            gt = np.where(s.reviewed, gt, 0)
        pairs.append((gt, pred))
    return float(np.mean(losses)), pooled_f1(pairs)


def trainable_parameters(net: UNet, layers: str) -> list[torch.nn.Parameter]:
    """The parameters a run trains: ``"all"``, or ``"decoder"`` (all but the encoder's, which are frozen)."""
    if layers not in ("all", "decoder"):
        raise ValueError(f"train_layers must be 'all' or 'decoder', not {layers!r}")
    frozen = {id(p) for p in net.down.parameters()} if layers == "decoder" else set()
    for p in net.parameters():
        p.requires_grad_(id(p) not in frozen)
    return [p for p in net.parameters() if id(p) not in frozen]


def _set_train_mode(net: UNet, freeze_batchnorm: bool) -> None:
    net.train()
    if freeze_batchnorm:
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.eval()


def train(
    net: UNet,
    train_samples: list[Sample],
    val_samples: list[Sample],
    config: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    on_event: EventFn | None = None,
    on_best: Callable[[UNet, dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    save_initial: bool = False,
    replay: list[Sample] | None = None,
) -> TrainResult:
    """Train ``net`` in place; returns the best weights by validation F1 (then loss).

    ``on_event`` receives a ``progress`` dict after each epoch's validation and, between them,
    ``loss`` dicts (``epoch`` fractional, e.g. 0.5: the mean train loss since the epoch began,
    ``config.loss_points`` per epoch); ``on_best(net_with_best_weights, metrics)`` is
    called whenever validation improves (and once before training if ``save_initial``);
    ``should_stop()`` ends training after the current step. ``replay``: samples of the data the
    network was trained on before, mixed into every batch (``config.replay_fraction``) so that a
    fine-tune does not forget them.
    """
    if not train_samples:
        raise ValueError("no training samples")
    device = torch.device(device)
    emit = on_event or (lambda e: None)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    net.to(device)
    params = trainable_parameters(net, config.train_layers)
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0 if config.l2sp else config.weight_decay)
    anchor = [p.detach().clone() for p in params] if config.l2sp else []
    average = WeightAverage(net, config.ema) if config.ema else None
    total_steps = config.epochs * config.steps_per_epoch
    weights = np.array([s.labels.size for s in train_samples], dtype=float)
    weights /= weights.sum()
    bank = nucleus_bank([(s.image, s.labels, s.reviewed) for s in train_samples]) if config.copy_paste else []
    start = time.monotonic()

    net.eval()
    val_loss, best_f1 = evaluate(net, val_samples, config, device) if val_samples else (float("nan"), 0.0)
    initial_f1, best_loss = best_f1, val_loss
    best_state, best_epoch = copy.deepcopy(net.state_dict()), 0
    if save_initial and on_best is not None:
        on_best(net, {"epoch": 0, "step": 0, "val_f1": best_f1, "val_loss": val_loss})
    history: list[dict[str, Any]] = []
    step, stopped = 0, False
    every = max(1, config.steps_per_epoch // max(1, config.loss_points))
    for epoch in range(1, config.epochs + 1):
        _set_train_mode(net, config.freeze_batchnorm)
        losses: list[float] = []
        for i in range(config.steps_per_epoch):
            elapsed = time.monotonic() - start
            frac = step / total_steps
            if config.time_limit:
                frac = max(frac, elapsed / config.time_limit)
            if frac >= 1 or (should_stop is not None and should_stop()):
                stopped = True
                break
            for g in opt.param_groups:
                g["lr"] = config.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac)))
            xb, yb, wb, n_own = _batch(rng, train_samples, weights, config, net.tile_io(config.crop_size)[0], bank,
                                       replay)
            heads = net.forward_all(xb.to(device))
            oh, ow = heads[0].shape[-2:]
            if (oh, ow) != yb.shape[-2:]:  # valid convolutions: targets of the output's centre
                dy, dx = (yb.shape[-2] - oh) // 2, (yb.shape[-1] - ow) // 2
                yb = yb[:, dy : dy + oh, dx : dx + ow]
                wb = None if wb is None else wb[:, dy : dy + oh, dx : dx + ow]
            yb, wb = yb.to(device), None if wb is None else wb.to(device)
            loss = sum(_batch_loss(logits, yb, wb, n_own, config) for logits in heads) / len(heads)
            if anchor:
                loss = loss + config.l2sp * sum(((p - p0) ** 2).sum() for p, p0 in zip(params, anchor))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if average is not None:
                average.update(net)
            losses.append(loss.item())
            step += 1
            if config.loss_points > 1 and (i + 1) % every == 0 and i + 1 < config.steps_per_epoch:
                emit(_loss_event(step / config.steps_per_epoch, step, losses, start, config))
        if not losses:
            break
        net.eval()
        trained = average.swap_in(net) if average is not None else None
        if val_samples:
            val_loss, val_f1 = evaluate(net, val_samples, config, device)
        else:
            val_loss, val_f1 = float("nan"), float("nan")
        elapsed = time.monotonic() - start
        eta = elapsed / epoch * (config.epochs - epoch)
        if config.time_limit:
            eta = min(eta, max(0.0, config.time_limit - elapsed))
        record = {
            "epoch": epoch, "epochs_done": round(step / config.steps_per_epoch, 3),  # < epoch if stopped early
            "step": step, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
            "val_f1": val_f1, "elapsed": round(elapsed, 2), "eta": round(eta, 2),
        }
        history.append(record)
        emit({"event": "progress", **record})
        improved = val_samples and (val_f1 > best_f1 or (val_f1 == best_f1 and val_loss < best_loss))
        if improved or not val_samples:
            best_f1, best_loss, best_epoch = val_f1, val_loss, epoch
            best_state = copy.deepcopy(net.state_dict())
            if on_best is not None:
                on_best(net, record)
        if trained is not None:
            net.load_state_dict(trained)
        if stopped:
            break
    net.load_state_dict(best_state)
    net.eval()
    return TrainResult(best_state, best_f1, best_epoch, initial_f1, history, stopped,
                       time.monotonic() - start)


class WeightAverage:
    """An exponential moving average of a network's floating-point weights (Polyak averaging), started
    at the weights it holds when made: after each step ``avg ← decay · avg + (1 − decay) · w``. Few
    steps on few crops make the last weights jump with the last crops drawn; their average moves less.
    Not ``torch.optim.swa_utils.AveragedModel``: that one starts at the weights after the first step,
    and a network copy besides; this one starts at the base, which keeps a share in the average."""

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, net: torch.nn.Module) -> None:
        current = net.state_dict()
        for k, v in self.state.items():
            v.lerp_(current[k].detach(), 1 - self.decay)

    def swap_in(self, net: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Load the average into ``net``; returns the weights it held (to load back and train on)."""
        trained = copy.deepcopy(net.state_dict())
        net.load_state_dict({**trained, **self.state})
        return trained


def _loss_event(epoch: float, step: int, losses: list[float], start: float, config: TrainConfig) -> dict[str, Any]:
    """A ``loss`` event between validations: the mean train loss of the epoch so far."""
    elapsed = time.monotonic() - start
    eta = elapsed / epoch * (config.epochs - epoch)
    if config.time_limit:
        eta = min(eta, max(0.0, config.time_limit - elapsed))
    return {"event": "loss", "epoch": round(epoch, 3), "step": step, "train_loss": float(np.mean(losses)),
            "elapsed": round(elapsed, 2), "eta": round(eta, 2)}


def _batch_loss(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None, n_own: int,
                config: TrainConfig) -> torch.Tensor:
    """The loss of a batch whose first ``n_own`` crops are the run's own samples and the rest replay.
    The cross-entropy of each part is averaged over that part's valid pixels (the own part's as if at
    least ``config.reviewed_floor`` of its pixels were reviewed) and weighs its share of the crops,
    so a sparse pair's few reviewed pixels are not drowned by the replay crops' many, nor made to
    outweigh them; the Dice term is pooled over the whole batch (on a part holding only erased
    background it would push every foreground probability down)."""
    def part(sl: slice, floor: float = 0.0) -> torch.Tensor:
        return cross_entropy(logits[sl], target[sl], config.boundary_weight, None if weights is None else weights[sl],
                             floor)

    n = logits.shape[0]
    if n_own >= n:
        balanced = part(slice(None))
    else:
        balanced = (n_own * part(slice(0, n_own), config.reviewed_floor) + (n - n_own) * part(slice(n_own, None))) / n
    return balanced + config.dice_weight * soft_dice(logits, target)


def _batch(
    rng: np.random.Generator,
    samples: list[Sample],
    weights: np.ndarray,
    config: TrainConfig,
    size: int,
    bank: list[Nucleus],
    replay: list[Sample] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
    """A batch of augmented crops, their class targets, (with the weight map) pixel weights and how
    many crops come from ``samples``: the last ``round(batch_size · replay_fraction)`` come from
    ``replay`` when given."""
    xs, ys, ws = [], [], []
    n_replay = min(config.batch_size - 1, round(config.batch_size * config.replay_fraction)) if replay else 0
    chosen = [samples[i] for i in rng.choice(len(samples), size=config.batch_size - n_replay, p=weights)]
    if n_replay:
        chosen += [replay[i] for i in rng.choice(len(replay), size=n_replay)]
    for s in chosen:
        rev = None if s.reviewed is None else s.reviewed.astype(np.uint8)
        img, lab, rev, mag = transform_crop(rng, s.image, s.labels, rev, size, config.augment)
        if bank and rng.random() < config.copy_paste:
            lo, hi = config.copy_paste_count
            img, lab, rev = paste_touching(rng, img, lab, bank, mag, int(rng.integers(lo, hi + 1)), rev)
        if config.artefacts and rng.random() < config.artefacts:
            img = add_artefacts(rng, img, lab, mag)
        if config.low_resolution and rng.random() < config.low_resolution:
            img = low_resolution(rng, img)
        xs.append(jitter_intensity(rng, img, config.augment).astype(np.float32))
        target = class_targets(lab, rev)
        ys.append(target)
        if config.weight_map:
            ws.append(separation_weights(lab, target, config.w0, config.sigma * mag))
    w = torch.from_numpy(np.stack(ws)) if ws else None
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys)), w, config.batch_size - n_replay
