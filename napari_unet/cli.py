"""The ``napari-unet`` command line: ``segment``, ``evaluate`` (and ``train``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from .device import DEVICES
from .errors import NapariUnetError
from .inference import DEFAULT_OVERLAP, DEFAULT_TILE, load_model, predict
from .metrics import THRESHOLDS, instance_scores
from .postprocess import labels_from_probabilities
from .scale import postprocess_at_scale
from .tiff import read_image, write_tiff_atomic


class ProgressBar:
    """A one-line text progress bar on stderr."""

    def __init__(self, label: str, stream=sys.stderr) -> None:
        self.label, self.stream, self.start = label, stream, time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {done}/{total} tiles {time.monotonic() - self.start:5.1f}s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _fail(message: str) -> int:
    print(f"napari-unet: error: {message}", file=sys.stderr)
    return 1


def cmd_segment(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.model)
    except NapariUnetError as exc:
        return _fail(str(exc))
    chosen = {"threshold": args.threshold, "seed_threshold": args.seed_threshold}
    base_post = replace(model.postprocess, **{k: v for k, v in chosen.items() if v is not None})
    out_dir = Path(args.out)
    failures = 0
    for path in map(Path, args.inputs):
        start = time.monotonic()
        used: list[float] = []
        try:
            image = read_image(path)
            probs = predict(
                model, image, tile=args.tile, overlap=args.overlap, batch_size=args.batch_size,
                device=args.device, scale=args.scale, channel=args.channel, tta=args.tta,
                progress=None if args.quiet else ProgressBar(path.name), on_scale=used.append,
            )
            post = postprocess_at_scale(base_post, used[0])  # the model's min_size is at training scale
            if args.min_size is not None:
                post = replace(post, min_size=args.min_size)  # the user's is in image pixels
            labels = labels_from_probabilities(probs, post)
            out = write_tiff_atomic(out_dir / f"{path.stem}_labels.tif", labels)
        except (NapariUnetError, OSError) as exc:
            message = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            print(f"napari-unet: error: {message}", file=sys.stderr)
            failures += 1
            continue
        n = int(sum(len(np.unique(p)) - (p == 0).any() for p in labels.reshape(-1, *labels.shape[-2:])))
        print(f"{path} -> {out}  ({n} objects, {labels.shape}, scale {used[0]:.2f}, "
              f"{time.monotonic() - start:.1f} s)")
    return 1 if failures else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    paths = args.files
    if len(paths) % 2:
        return _fail("evaluate takes pairs of files: PRED.tif GT.tif [PRED.tif GT.tif ...].")
    results = []
    for pred_path, gt_path in zip(paths[::2], paths[1::2]):
        try:
            pred, gt = read_image(pred_path), read_image(gt_path)
        except NapariUnetError as exc:
            return _fail(str(exc))
        if pred.shape != gt.shape:
            return _fail(f"{pred_path} has shape {pred.shape} but {gt_path} has {gt.shape}.")
        s = instance_scores(gt, pred)
        results.append({"prediction": str(pred_path), "ground_truth": str(gt_path), **s.to_dict()})
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
        return 0
    for r in results:
        f1 = "  ".join(f"F1@{t}={r['f1'][str(t)]:.3f}" for t in THRESHOLDS)
        print(f"{r['prediction']} vs {r['ground_truth']}: {r['n_pred']} predicted, {r['n_true']} true")
        print(f"  {f1}  mean matched IoU={r['mean_matched_iou']:.3f}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading
    import traceback

    import torch

    from .finetune import FineTuneOptions, run_finetune
    from .runner import FolderLock

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.nice:
        os.nice(args.nice)  # a background fine-tune should yield the CPU to the user's viewer
    stop = threading.Event()

    def request_stop(signum, frame) -> None:  # finish the current step, save, report
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    def emit(event: dict) -> None:
        if args.json:
            print(json.dumps(event), flush=True)
        elif event["event"] == "progress":
            print(f"epoch {event['epoch']}: train loss {event['train_loss']:.4f}, val loss "
                  f"{event['val_loss']:.4f}, val F1 {event['val_f1']:.3f}, {event['elapsed']:.0f} s", flush=True)
        elif event["event"] == "done":
            verdict = "better than" if event["improved"] else "NOT better than"
            print(f"done: validation F1 {event['f1']:.3f} vs base {event['base_f1']:.3f} ({verdict} the base); "
                  f"best weights in {event['path']}", flush=True)
        elif event["event"] == "error":
            print(f"napari-unet: error: {event['message']}", file=sys.stderr, flush=True)

    options = FineTuneOptions(
        pairs=Path(args.pairs), out=Path(args.out), base=Path(args.base) if args.base else None,
        epochs=args.epochs, time_limit=args.time_limit, device=args.device, val_fraction=args.val_fraction,
        steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size, seed=args.seed,
    )
    lock = FolderLock(Path(args.pairs)) if not args.no_lock and Path(args.pairs).is_dir() else None
    try:
        if lock is not None:
            lock.acquire()
        run_finetune(options, emit, should_stop=stop.is_set)
    except NapariUnetError as exc:
        emit({"event": "error", "message": str(exc)})
        return 1
    except Exception as exc:  # noqa: BLE001 - report, then keep the traceback for the log
        traceback.print_exc()
        emit({"event": "error", "message": f"Fine-tuning failed unexpectedly ({type(exc).__name__}: {exc})."})
        return 2
    finally:
        if lock is not None:
            lock.release()
    return 0


def _scale_arg(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', not {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-unet", description="U-Net segmentation for microscopy.")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser("segment", help="segment TIFF images into instance labels")
    seg.add_argument("inputs", nargs="+", help="TIFF images")
    seg.add_argument("--model", help="checkpoint (.safetensors or .pt); default: shipped nuclei model")
    seg.add_argument("--out", default=".", help="output folder (default: current folder)")
    seg.add_argument("--device", default="auto", choices=DEVICES)
    seg.add_argument("--tile", type=int, default=DEFAULT_TILE)
    seg.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    seg.add_argument("--batch-size", type=int, default=4)
    seg.add_argument("--scale", type=_scale_arg, default="auto",
                     help="resize factor before the network, or 'auto' (default): chosen from the objects' size")
    seg.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations (8x slower)")
    seg.add_argument("--channel", type=int, help="channel to use from a multichannel image")
    seg.add_argument("--threshold", type=float, help="foreground probability threshold (default: the model's)")
    seg.add_argument("--seed-threshold", type=float, help="seed (interior) threshold (default: the model's)")
    seg.add_argument("--min-size", type=int,
                     help="smallest object kept, in image pixels (default: the model's, following the scale)")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)

    ev = sub.add_parser("evaluate", help="instance F1 / IoU of predicted labels against ground truth")
    ev.add_argument("files", nargs="+", help="PRED.tif GT.tif [PRED.tif GT.tif ...]")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("train", help="fine-tune a model on a training-pairs folder")
    tr.add_argument("--pairs", required=True, help="training-pairs folder (or cellpose-style folder)")
    tr.add_argument("--base", help="base checkpoint (default: shipped nuclei model)")
    tr.add_argument("--out", required=True, help="where to write the fine-tuned checkpoint (best weights)")
    tr.add_argument("--epochs", type=int, default=30)
    tr.add_argument("--time-limit", type=float, help="seconds; stops at epochs or time, whichever first")
    tr.add_argument("--device", default="auto", choices=DEVICES)
    tr.add_argument("--val-fraction", type=float, default=0.2)
    tr.add_argument("--steps-per-epoch", type=int, default=20)
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    tr.add_argument("--nice", type=int, default=0, help="lower the process priority by this much (0-19)")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    tr.add_argument("--no-lock", action="store_true", help="do not lock the pairs folder (the caller holds it)")
    tr.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)
