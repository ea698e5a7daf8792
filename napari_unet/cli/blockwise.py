"""The CLI's blockwise path: ``napari-unet segment big.zarr --block 2048 --workers 2 [--scheduler URL]``."""

from __future__ import annotations

import argparse
import atexit
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from napari_unet.blockwise.engine import (
    DEFAULT_BLOCK,
    WORKERS_PER_CORE,
    BlockwiseOptions,
    check_scheduler,
    check_workers,
    segment_many,
)
from napari_unet.engine.memory import too_large
from napari_unet.engine.segmentation import count_sentence
from napari_unet.errors import Cancelled, InvalidParameter, NapariUnetError
from napari_unet.io.lazy import is_zarr_path, open_lazy, stem
from napari_unet.models import load_model


def add_arguments(parser: argparse.ArgumentParser, number: Callable[..., Callable[[str], int]]) -> None:
    """The blockwise options of ``segment``; ``number(name, integer=True, low=..)`` makes checked types."""
    parser.add_argument("--block", type=number("--block", integer=True, low=64, high=65536),
                        help=f"segment block by block, blocks of this size (default {DEFAULT_BLOCK} when blockwise); "
                        "output <name>_labels.zarr")
    parser.add_argument("--halo", type=number("--halo", integer=True, low=0, high=8192),
                        help="context around each block in pixels (default: receptive field or two nucleus diameters)")
    parser.add_argument("--workers", type=_checked(check_workers, number("--workers", integer=True, low=1)),
                        help=f"local dask worker processes (default 1, in this process; at most {WORKERS_PER_CORE} "
                        "per CPU core)")
    parser.add_argument("--scheduler", type=_checked(check_scheduler),
                        help="address of an existing dask scheduler, e.g. tcp://host:8786")


def _checked(check: Callable[[Any], Any], parse: Callable[[str], Any] = str) -> Callable[[str], Any]:
    """An argparse type: ``check(parse(text))``, its one sentence as argparse's message."""

    def convert(text: str) -> Any:
        try:
            return check(parse(text))
        except InvalidParameter as exc:
            raise argparse.ArgumentTypeError(str(exc).rstrip(".")) from None

    convert.__name__ = getattr(parse, "__name__", "value")
    return convert


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by ``timeout``, ``kill`` and batch schedulers), handled like Ctrl-C."""


@contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (so outputs are cleaned up) instead of
    killing the process; zarr's exit hook is quietened, as its I/O thread may be mid-write then."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except KeyboardInterrupt:
        _quiet_zarr_exit()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class SignalStop:
    """Ctrl-C (SIGINT) and SIGTERM ask a blockwise run to stop: the handler only records the signal
    and the run, which polls :meth:`requested`, stops the cluster's tasks and removes its partial
    outputs. A signal never lands inside a library's code (where it could be swallowed); a second
    one interrupts at once. SIGINT stays ignored where the caller ignores it (a background job)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> SignalStop:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        if self.signum is not None or (kind is not None and issubclass(kind, KeyboardInterrupt)):
            _quiet_zarr_exit()


def _quiet_zarr_exit() -> None:
    """zarr closes its event loop at exit; after an interrupt its I/O thread can still be running,
    and Python would print 'Exception ignored in atexit callback … Cannot close a running event loop'."""
    try:
        from zarr.core import sync
    except ImportError:  # pragma: no cover - another zarr layout
        return
    cleanup = getattr(sync, "cleanup_resources", None)
    if cleanup is None:
        return
    logging.getLogger(sync.__name__).setLevel(logging.CRITICAL)

    def quiet() -> None:
        try:
            cleanup()
        except RuntimeError:
            pass

    atexit.unregister(cleanup)
    atexit.register(quiet)


def wants_blockwise(args: argparse.Namespace) -> bool:
    """Blockwise when asked (--block/--workers/--scheduler), or for zarr folders and very large TIFFs."""
    if args.block or args.workers or args.scheduler:
        return True
    for path in map(Path, args.inputs):
        if is_zarr_path(path):
            return True
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the path that reads it warns
                image = open_lazy(path)
        except NapariUnetError:
            continue  # the in-memory path reports it
        if len(image.shape) >= 2 and too_large(image.shape):  # fewer axes: the in-memory path says so
            return True  # very large, or would not fit in memory whole: blocks bound the memory instead
    return False


class BlockProgress:
    """A one-line progress bar over blocks on stderr."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream, self.start, self.last = stream, time.monotonic(), -1

    def __call__(self, done: int, total: int) -> None:
        if done == self.last:
            return
        self.last = done
        filled = int(30 * done / max(total, 1))
        bar = "#" * filled + "-" * (30 - filled)
        self.stream.write(f"\rblocks [{bar}] {done}/{total} {time.monotonic() - self.start:6.1f}s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def run_blockwise(args: argparse.Namespace) -> int:
    """Segment every input blockwise on one dask cluster; one line per image; exit status."""
    # A Ctrl-C that lands inside one of dask's event-loop callbacks makes tornado log a traceback;
    # the user gets the one-line "cancelled" instead (the cluster's real errors come back through
    # the futures, not this logger).
    logging.getLogger("tornado.application").setLevel(logging.CRITICAL)
    if getattr(args, "stain", "fluorescence") != "fluorescence":
        print(f"napari-unet: error: --stain {args.stain} is not available for blockwise segmentation (zarr folders, "
              "very large images, --block); convert the image first or segment it whole.", file=sys.stderr)
        return 1
    try:
        model = load_model(args.model, trust_code=args.trust_package_code)
    except NapariUnetError as exc:
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return 1
    chosen = {"threshold": args.threshold, "seed_threshold": args.seed_threshold}
    post = replace(model.postprocess, **{k: v for k, v in chosen.items() if v is not None})
    options = BlockwiseOptions(  # "auto": one scale per image, from a first pass over its centre
        block=args.block or DEFAULT_BLOCK, halo=args.halo, tile=args.tile, overlap=args.overlap,
        batch_size=args.batch_size, device=args.device, scale=args.scale, postprocess=post,
        min_size=args.min_size,
    )
    out_dir = Path(args.out)
    items, failures = [], 0
    for path in map(Path, args.inputs):
        try:
            items.append((open_lazy(path, channel=args.channel), out_dir / f"{stem(path)}_labels.zarr"))
        except NapariUnetError as exc:
            print(f"napari-unet: error: {exc}", file=sys.stderr)
            failures += 1
    if not items:
        return 1
    start = time.monotonic()
    stop = SignalStop()
    try:
        with stop:
            results = segment_many(
                items, model, options=options, workers=args.workers, scheduler=args.scheduler,
                overwrite=args.overwrite, progress=None if args.quiet else BlockProgress(), cancel=stop.requested,
            )
    except (Cancelled, KeyboardInterrupt) as exc:
        terminated = isinstance(exc, Terminated) or stop.signum == signal.SIGTERM
        print(f"\nnapari-unet: {'terminated' if terminated else 'cancelled'}; unfinished outputs were removed.",
              file=sys.stderr)
        return 143 if terminated else 130
    except NapariUnetError as exc:
        print(f"napari-unet: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - a cluster or storage failure: one sentence, not a traceback
        print(f"napari-unet: error: blockwise segmentation failed ({type(exc).__name__}: {exc}).", file=sys.stderr)
        return 2
    for (image, _), r in zip(items, results):
        if r.error is not None:
            message = r.error if r.error.startswith(str(image.path)) else f"{image.path}: {r.error}"
            print(f"napari-unet: error: {message}", file=sys.stderr)
            failures += 1
            continue
        print(f"{image.path} -> {r.out}  ({count_sentence(r.objects)}, {r.shape}, {r.blocks} blocks, "
              f"scale {r.scale.scale:.2f} ({r.scale.how}), {time.monotonic() - start:.1f} s)")
    return 1 if failures else 0
