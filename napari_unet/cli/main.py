"""The ``napari-unet`` command line: ``segment``, ``evaluate``, ``train`` and ``pairs repair``.

Every failure reaches the user as one sentence on stderr with a non-zero exit code (2 for bad
arguments, 1 for bad inputs, 130 for Ctrl-C); outputs are written atomically and never replace an
existing file unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import NoReturn

import numpy as np

from napari_unet.api import segment_file
from napari_unet.cli.blockwise import Terminated, terminate_like_interrupt
from napari_unet.cli.blockwise import add_arguments as add_blockwise_arguments
from napari_unet.engine.device import DEVICES
from napari_unet.engine.metrics import THRESHOLDS, instance_scores, pool_scores
from napari_unet.engine.predict import DEFAULT_OVERLAP, DEFAULT_TILE
from napari_unet.engine.scale import SCALE_LIMITS, ScaleChoice
from napari_unet.engine.stain import STAINS
from napari_unet.errors import InputError, InvalidParameter, NapariUnetError, os_error_sentence
from napari_unet.io.image_files import expand_inputs, labels_path_for
from napari_unet.io.tiff import read_image
from napari_unet.models import load_model
from napari_unet.validate import LIMITS, check_number


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


def _say(line: str) -> None:
    """Print a result line; if stdout was closed (``| head``), keep working silently."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        _silence_stdout()


def _silence_stdout() -> None:
    """Replace a closed stdout (``| head``) so later prints and the exit flush don't fail."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until the process ends


def _output_paths(inputs: list[Path], out_dir: Path, overwrite: bool) -> tuple[list[Path], list[str]]:
    """Output path per input, and the problems that must stop the run before anything is written."""
    outputs = [labels_path_for(p, out_dir) for p in inputs]
    problems = []
    seen: dict[Path, Path] = {}
    for src, out in zip(inputs, outputs):
        if out in seen and seen[out].resolve() != src.resolve():
            problems.append(f"{seen[out]} and {src} would both be written to {out}; segment them into "
                            "different --out folders or rename one.")
        seen.setdefault(out, src)
        if not overwrite and out.exists():
            problems.append(f"{out} already exists; pass --overwrite to replace it, or choose another --out.")
    if out_dir.exists() and not out_dir.is_dir():
        problems.insert(0, f"{out_dir}: the output folder is a file.")
    return outputs, problems


def _check_writable(folder: Path) -> str | None:
    """None if files can be created in ``folder`` (created if missing); else one sentence."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"Cannot write to the output folder: {os_error_sentence(exc, folder)}"
    return None


def _note_scale(path: Path, choice: ScaleChoice, asked: float | str) -> None:
    """Say how an automatic scale was chosen from pixel sizes (the scale itself is in the result line)."""
    if asked == "auto" and choice.how == "pixel size":
        print(f"napari-unet: {path}: {choice.describe()}.", file=sys.stderr)


def cmd_segment(args: argparse.Namespace) -> int:
    from napari_unet.cli.blockwise import run_blockwise, wants_blockwise

    if wants_blockwise(args):  # zarr folders, very large images, --block/--workers/--scheduler
        if args.stack in ("3d", "time"):
            return _fail(f"--stack {args.stack} needs the whole stack in memory, but these images are segmented "
                         "blockwise (zarr, too large for memory, or --block/--workers), which labels plane by plane "
                         "and does not link objects across blocks in z or time; use --stack planes or a smaller crop.")
        return run_blockwise(args)
    inputs, notes = expand_inputs(args.inputs)
    for note in notes:
        print(f"napari-unet: note: {note}", file=sys.stderr)
    if not inputs:
        return _fail("no images to segment.")
    out_dir = Path(args.out)
    created = not out_dir.exists()
    try:
        return _segment_into(args, inputs, out_dir)
    finally:
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # nothing was written: leave no empty output folder behind


def _segment_into(args: argparse.Namespace, inputs: list[Path], out_dir: Path) -> int:
    """The in-memory ``segment`` run over ``inputs`` into ``out_dir``: outputs checked first, then each image."""
    outputs, problems = _output_paths(inputs, out_dir, args.overwrite)
    problem = problems[0] if problems else _check_writable(out_dir)
    if problem:
        for extra in problems[1:]:
            print(f"napari-unet: error: {extra}", file=sys.stderr)
        return _fail(f"{problem} Nothing was segmented.")
    try:
        model = load_model(args.model, trust_code=args.trust_package_code)
        chosen = {"threshold": args.threshold, "seed_threshold": args.seed_threshold}
        post = replace(model.postprocess, **{k: v for k, v in chosen.items() if v is not None})
    except NapariUnetError as exc:
        return _fail(str(exc))
    failures = written = 0
    try:
        for path, out in zip(inputs, outputs):
            start = time.monotonic()
            try:
                result = segment_file(
                    model, path, out, overwrite=args.overwrite, series=args.series, channel_axis=args.channel_axis,
                    postprocess=post, min_size=args.min_size, tile=args.tile, overlap=args.overlap,
                    batch_size=args.batch_size, device=args.device, scale=args.scale, channel=args.channel,
                    tta=args.tta, stain=args.stain, on_choice=partial(_note_scale, path, asked=args.scale),
                    progress=None if args.quiet else ProgressBar(path.name),
                    stack=args.stack, voxel_size=args.voxel_size,
                )
                labels, counts, scale, summary = result.labels, result.counts, result.scale.scale, result.summary()
                if result.warning is not None:
                    print(f"napari-unet: warning: {path}: {result.warning}", file=sys.stderr)
                del result  # the probabilities
            except FileExistsError:
                failures += 1
                print(f"napari-unet: error: {out} appeared while segmenting; it was not replaced.", file=sys.stderr)
                continue
            except (NapariUnetError, OSError, MemoryError) as exc:
                failures += 1
                if isinstance(exc, OSError):
                    message = os_error_sentence(exc)
                elif isinstance(exc, MemoryError):
                    message = "not enough memory to segment it"
                else:
                    message = str(exc)
                message = message if message.startswith(str(path)) else f"{path}: {message}"
                print(f"napari-unet: error: {message}", file=sys.stderr)
                continue
            written += 1
            _say(f"{path} -> {out}  ({summary}, {labels.shape}, scale {scale:.2f}, {time.monotonic() - start:.1f} s)")
            if not any(counts):
                print(f"napari-unet: note: {path}: no objects found; check the image, --threshold or the model.",
                      file=sys.stderr)
    except KeyboardInterrupt as exc:
        how = "Terminated" if isinstance(exc, Terminated) else "Interrupted"
        print(f"\nnapari-unet: {how}; {written} of {len(inputs)} outputs written.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    return 1 if failures else 0


def _read_labels(path: str, role: str) -> np.ndarray:
    data = read_image(path)
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != bool:
        raise InputError(f"{path}: the {role} has data type {data.dtype}; labels must be integers "
                         "(is it an intensity image rather than a labels image?).")
    if data.dtype.kind == "i" and data.min(initial=0) < 0:
        raise InputError(f"{path}: the {role} has negative values; labels must be 0 (background) or positive.")
    return data


def _warn_if_not_labels(path: str, labels: np.ndarray) -> None:
    """Warn when a "labels" image looks like intensities: in real labels, neighbouring foreground
    pixels almost always carry the same id; in an intensity image they rarely do."""
    a, b = labels[..., :, :-1], labels[..., :, 1:]
    both = (a != 0) & (b != 0)
    if both.sum() > 100 and (a != b)[both].mean() > 0.05:
        print(f"napari-unet: warning: {path}: {100 * (a != b)[both].mean():.0f}% of neighbouring pixels have "
              "different ids; it looks like an intensity image, not labels.", file=sys.stderr)


def cmd_evaluate(args: argparse.Namespace) -> int:
    paths = args.files
    if len(paths) % 2:
        return _fail("evaluate takes pairs of files: PRED.tif GT.tif [PRED.tif GT.tif ...].")
    results, scores, failures = [], [], 0
    for pred_path, gt_path in zip(paths[::2], paths[1::2]):
        try:
            pred, gt = _read_labels(pred_path, "prediction"), _read_labels(gt_path, "ground truth")
            if pred.shape != gt.shape:
                raise InputError(f"{pred_path} has shape {pred.shape} but {gt_path} has {gt.shape}.")
        except NapariUnetError as exc:
            failures += 1
            print(f"napari-unet: error: {exc}", file=sys.stderr)
            continue
        s = instance_scores(gt, pred)
        _warn_if_not_labels(pred_path, pred)
        scores.append(s)
        results.append({"prediction": str(pred_path), "ground_truth": str(gt_path), **s.to_dict()})
    pooled = {"files": len(results), **pool_scores(scores).to_dict()}
    if args.json:
        _say(json.dumps(results[0] if len(results) == 1 and not failures else
                        {"files": results, "total": pooled}, indent=2))
        return 1 if failures else 0
    rows = [(f"{r['prediction']} vs {r['ground_truth']}", r) for r in results]
    if len(results) > 1:
        rows.append(("TOTAL (pooled over all files)", pooled))
    for title, r in rows:
        f1 = "  ".join(f"F1@{t}={r['f1'][str(t)]:.3f}" for t in THRESHOLDS)
        _say(f"{title}: {r['n_pred']} predicted, {r['n_true']} true, precision {r['precision']:.3f}, "
             f"recall {r['recall']:.3f}")
        _say(f"  {f1}  mean matched IoU={r['mean_matched_iou']:.3f}")
    return 1 if failures else 0


def cmd_pairs(args: argparse.Namespace) -> int:
    from napari_unet.training.pairs import repair_pairs

    try:
        relisted, left = repair_pairs(args.folder)
    except NapariUnetError as exc:
        return _fail(str(exc))
    for name in relisted:
        _say(f"re-listed {name}")
    for name, reason in left:
        print(f"napari-unet: note: {name} left unlisted: {reason}", file=sys.stderr)
    _say(f"{len(relisted)} pair(s) re-listed, {len(left)} incomplete left as they are.")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import os
    import signal
    import threading
    import traceback

    import torch

    from napari_unet.training.finetune import FineTuneOptions, run_finetune
    from napari_unet.training.runner import FolderLock

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
        elif event["event"] == "loss":
            print(f"epoch {event['epoch']}: train loss {event['train_loss']:.4f}, {event['elapsed']:.0f} s", flush=True)
        elif event["event"] == "done":
            verdict = "better than" if event["improved"] else "NOT better than"
            print(f"done: validation F1 {event['f1']:.3f} vs base {event['base_f1']:.3f} ({verdict} the base); "
                  f"best weights in {event['path']}", flush=True)
            if event.get("verdict"):
                print(f"verdict: {event['verdict']}.", flush=True)
        elif event["event"] == "error":
            print(f"napari-unet: error: {event['message']}", file=sys.stderr, flush=True)

    problem = _check_train_paths(Path(args.pairs), Path(args.out), args.overwrite)
    if problem:
        emit({"event": "error", "message": problem})
        return 1
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
    except OSError as exc:  # disk full, permissions changed mid-run, ...
        emit({"event": "error", "message": f"Fine-tuning stopped: {os_error_sentence(exc)}"})
        return 1
    except MemoryError:
        emit({"event": "error", "message": "Fine-tuning ran out of memory; use a smaller --batch-size."})
        return 1
    except Exception as exc:  # noqa: BLE001 - report, then keep the traceback for the log
        traceback.print_exc()
        emit({"event": "error", "message": f"Fine-tuning failed unexpectedly ({type(exc).__name__}: {exc})."})
        return 2
    finally:
        if lock is not None:
            lock.release()
    return 0


def _check_train_paths(pairs: Path, out: Path, overwrite: bool) -> str | None:
    """One sentence if the pairs folder or the output cannot be used; checked before training."""
    if not pairs.exists():
        return f"{pairs}: no such pairs folder."
    if not pairs.is_dir():
        return f"{pairs}: the pairs folder is a file, not a folder."
    if out.is_dir():
        return f"{out}: --out is a folder; give a file name such as {out / 'model.safetensors'}."
    if out.exists() and not overwrite:
        return f"{out} already exists; pass --overwrite to replace it, or choose another --out."
    return _check_writable(out.parent)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage dump), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"napari-unet: error: {message} (see '{self.prog} --help').\n")


def _number(name: str, *, integer: bool = False, **bounds: float) -> Callable[[str], float | int]:
    """An argparse type: a number checked by :func:`check_number` (NaN, ranges, whole numbers)."""

    def parse(text: str) -> float | int:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, not {text!r}") from None
        try:
            return check_number(name, value, integer=integer, **bounds)
        except InvalidParameter as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{name} ").rstrip(".")) from None

    parse.__name__ = name  # argparse names the type in its messages
    return parse


def _limit(flag: str, name: str) -> Callable[[str], float | int]:
    """An argparse type for the number the API calls ``name``, with its limits from :data:`LIMITS`."""
    return _number(flag, **LIMITS[name])


def _scale(text: str) -> float | str:
    return "auto" if text == "auto" else _number("--scale", low=SCALE_LIMITS[0], high=SCALE_LIMITS[1])(text)


def cmd_export_bioimageio(args: argparse.Namespace) -> int:
    from napari_unet.bioimageio.export import export_bioimageio

    authors = [a.strip() for a in args.authors.split(",") if a.strip()] if args.authors else None
    try:
        out = export_bioimageio(args.model, args.out, name=args.name, authors=authors, license=args.license,
                                cover=args.cover, overwrite=args.overwrite)
    except NapariUnetError as exc:
        return _fail(str(exc))
    print(f"{args.model} -> {out}  (bioimage.io model package; check it with: bioimageio test {out})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="napari-unet", description="U-Net segmentation for microscopy.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    seg = sub.add_parser("segment", help="segment images (TIFF, OME-TIFF, ImageJ, PNG, JPEG) into instance labels")
    seg.add_argument("inputs", nargs="+", help="TIFF images, or folders of them (labels files are skipped)")
    seg.add_argument("--model", help="checkpoint (.safetensors or .pt) or bioimage.io package (.zip); "
                     "default: shipped nuclei model")
    seg.add_argument("--trust-package-code", action="store_true",
                     help="allow a bioimage.io package whose weights need its own Python source (runs that code)")
    seg.add_argument("--out", default=".", help="output folder (default: current folder)")
    seg.add_argument("--device", default="auto", choices=DEVICES)
    seg.add_argument("--tile", type=_limit("--tile", "tile"), default=DEFAULT_TILE)
    seg.add_argument("--overlap", type=_limit("--overlap", "overlap"), default=DEFAULT_OVERLAP)
    seg.add_argument("--batch-size", type=_limit("--batch-size", "batch size"), default=4)
    seg.add_argument("--scale", type=_scale, default="auto",
                     help="resize factor before the network, or 'auto' (default): the image's pixel size over "
                          "the model's when both are known, else chosen from the objects' size")
    seg.add_argument("--tta", action="store_true", help="average over the 8 flips/rotations (8x slower)")
    seg.add_argument("--channel", type=_number("--channel", integer=True, low=0),
                     help="channel to use from a multichannel image")
    seg.add_argument("--stain", choices=STAINS, default="fluorescence",
                     help="the image kind: fluorescence (bright nuclei on dark, default), 'dark nuclei' "
                          "(dark nuclei on a bright background) or hematoxylin (H&E/IHC colour images)")
    seg.add_argument("--channel-axis", type=_number("--channel-axis", integer=True),
                     help="which axis holds the channels (e.g. -1 for Y,X,C; 0 for C,Y,X); default: a last "
                          "axis of 2-4 is read as channels")
    seg.add_argument("--series", type=_number("--series", integer=True, low=0),
                     help="which image series of a multi-series TIFF to segment")
    seg.add_argument("--threshold", type=_limit("--threshold", "threshold"),
                     help="foreground probability threshold, 0-1 (default: the model's)")
    seg.add_argument("--seed-threshold", type=_limit("--seed-threshold", "seed threshold"),
                     help="seed (interior) threshold, 0-1 (default: the model's)")
    seg.add_argument("--min-size", type=_limit("--min-size", "min size"),
                     help="smallest object kept, in image pixels (default: the model's, following the scale)")
    seg.add_argument("--stack", choices=("planes", "3d", "time"),
                     help="a stack's planes on their own, as 3D objects (through Z) or tracked through time (ids "
                          "kept through T); default: from the file's axes (T: time, Z: 3d), else planes")
    seg.add_argument("--voxel-size", nargs=3, type=_number("--voxel-size", low=1e-9), metavar=("Z", "Y", "X"),
                     help="voxel size in µm for --stack 3d (default: OME PhysicalSizeZ/X or ImageJ spacing)")
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    add_blockwise_arguments(seg, _number)
    seg.set_defaults(func=cmd_segment)

    ev = sub.add_parser("evaluate", help="instance F1 / IoU of predicted labels against ground truth")
    ev.add_argument("files", nargs="+", help="PRED.tif GT.tif [PRED.tif GT.tif ...]")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=cmd_evaluate)

    tr = sub.add_parser("train", help="fine-tune a model on a training-pairs folder")
    tr.add_argument("--pairs", required=True, help="training-pairs folder (or cellpose-style folder)")
    tr.add_argument("--base", help="base checkpoint (default: shipped nuclei model)")
    tr.add_argument("--out", required=True, help="where to write the fine-tuned checkpoint (best weights)")
    tr.add_argument("--epochs", type=_limit("--epochs", "epochs"), default=30)
    tr.add_argument("--time-limit", type=_limit("--time-limit", "time limit"),
                    help="seconds (> 0); stops at epochs or time, whichever first")
    tr.add_argument("--device", default="auto", choices=DEVICES)
    tr.add_argument("--val-fraction", type=_limit("--val-fraction", "validation fraction"), default=0.2)
    tr.add_argument("--steps-per-epoch", type=_limit("--steps-per-epoch", "steps per epoch"),
                    default=20)
    tr.add_argument("--batch-size", type=_limit("--batch-size", "batch size"), default=4)
    tr.add_argument("--threads", type=_number("--threads", integer=True, low=0, high=1024), default=0,
                    help="torch CPU threads (0: torch's default)")
    tr.add_argument("--nice", type=_number("--nice", integer=True, low=0, high=19), default=0,
                    help="lower the process priority by this much (0-19)")
    tr.add_argument("--seed", type=_number("--seed", integer=True, low=0), default=0)
    tr.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    tr.add_argument("--json", action="store_true", help="one JSON event per line on stdout")
    tr.add_argument("--no-lock", action="store_true", help="do not lock the pairs folder (the caller holds it)")
    tr.set_defaults(func=cmd_train)

    pr = sub.add_parser("pairs", help="maintain a training-pairs folder")
    pr_sub = pr.add_subparsers(dest="action", required=True, parser_class=_Parser)
    rep = pr_sub.add_parser("repair", help="re-list complete pair files missing from pairs.json")
    rep.add_argument("folder", help="training-pairs folder")
    rep.set_defaults(func=cmd_pairs)

    bx = sub.add_parser("export-bioimageio", help="write a checkpoint as a bioimage.io model package (.zip)")
    bx.add_argument("model", help="napari-unet checkpoint (.safetensors)")
    bx.add_argument("out", help="package to write (.zip); never overwritten unless --overwrite")
    bx.add_argument("--name", help="model name (default: the checkpoint's)")
    bx.add_argument("--authors", help="comma-separated author names")
    bx.add_argument("--license", default="MIT", help="SPDX licence id of the model (default: MIT)")
    bx.add_argument("--cover", help="cover image (PNG); default: drawn from a segmentation of the sample image")
    bx.add_argument("--overwrite", action="store_true", help="replace an existing OUT.zip")
    bx.set_defaults(func=cmd_export_bioimageio)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line; every failure is one sentence on stderr and a non-zero exit code."""
    try:
        args = build_parser().parse_args(argv)
        with terminate_like_interrupt():  # SIGTERM (timeout, kill, batch systems) ends like Ctrl-C
            return args.func(args)
    except KeyboardInterrupt as exc:
        print(f"\nnapari-unet: {'Terminated' if isinstance(exc, Terminated) else 'Interrupted'}.", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:
        _silence_stdout()
        return 0
