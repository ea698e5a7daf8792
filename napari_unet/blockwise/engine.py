"""Blockwise segmentation of images larger than memory, run by ``dask.distributed``.

The image is cut into blocks (``block`` pixels square). Each block is read with a halo of
context (at least the network's receptive field and about two nucleus diameters), turned into
probabilities and instance labels, and only its core is written to a chunked zarr; objects that
cross block faces are then merged (:mod:`napari_unet.stitch`) and every block relabelled once, so
ids run 1..N per plane. A process holds a block at a time, never the whole image or result.

Blocks run as tasks on a dask cluster: an in-process one (one worker), a ``LocalCluster`` of
worker processes (``workers=N``), or an existing cluster (``scheduler="tcp://host:port"``).
Each worker loads the model once, from the checkpoint's bytes (safetensors), on its own device.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet.blockwise.stitch import BlockEdges, Rect, block_edges, merge_tables
from napari_unet.engine.device import resolve_device
from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.predict import DEFAULT_OVERLAP, DEFAULT_TILE, central_window, choose_scale, focus_planes
from napari_unet.engine.scale import PROBE_SIDE, ScaleChoice, checked_scale, postprocess_at_scale
from napari_unet.engine.segmentation import instance_labels
from napari_unet.engine.tiling import predict_plane, resize_planes, tile_geometry
from napari_unet.errors import (
    Cancelled,
    InputError,
    InvalidParameter,
    NapariUnetError,
    first_line,
    os_error_sentence,
)
from napari_unet.io.lazy import LABELS_FORMAT, LazyImage, create_labels_zarr, open_lazy
from napari_unet.models import load_model

DEFAULT_BLOCK = 2048
WORKERS_PER_CORE = 2  # the most local worker processes per CPU core
OBJECT_HALO = 96  # about two nucleus diameters (sample nuclei: median 30 px, largest 59 px across)
BAND = 8  # width of the face bands compared when stitching
ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockwiseOptions:
    """How to cut and run the image; ``halo=None`` picks the default (see :func:`default_halo`).

    ``scale="auto"`` chooses one scale per image from a first pass over its central crop (see
    :func:`auto_scale`). ``postprocess`` sizes are in training-scale pixels and follow the scale;
    ``min_size``, when given, is in image pixels and replaces the scaled one."""

    block: int = DEFAULT_BLOCK
    halo: int | None = None
    tile: int = DEFAULT_TILE
    overlap: int = DEFAULT_OVERLAP
    batch_size: int = 4  # tiles per forward pass on a GPU; CPUs run one tile at a time
    device: str = "auto"
    scale: float | str = "auto"
    postprocess: PostprocessConfig | None = None  # None: the model's own
    min_size: int | None = None
    threads: int | None = None  # at most this many torch threads per local worker (None: the cores shared)


@dataclass
class BlockwiseResult:
    """One image's outcome: the labels zarr written, objects per plane, or the error sentence."""

    source: str
    out: Path
    objects: list[int] = field(default_factory=list)
    blocks: int = 0
    shape: tuple[int, ...] = ()
    error: str | None = None
    scale: ScaleChoice | None = None  # the scale used and how it was chosen


def receptive_radius(depth: int) -> int:
    """Half the receptive field (pixels) of a 'same'-padding U-Net of ``depth`` levels."""
    encoder = sum(4 * 2**i for i in range(depth))  # two 3×3 convolutions per level
    decoder = sum(6 * 2**i for i in range(depth - 1))  # pooling, 2×2 up-convolution, two 3×3 convolutions
    return math.ceil((encoder + decoder) / 2)


FOCUS_SAMPLE = 64  # planes of a lazy stack sampled (their central PROBE_SIDE/2 square) to find those in focus


def auto_scale(image: LazyImage, model: SegmentationModel, options: BlockwiseOptions) -> ScaleChoice:
    """What ``scale="auto"`` means for a lazy image: its pixel size when both it and the model's are
    known, else :func:`~napari_unet.engine.predict.choose_scale` on the central crops of its in-focus
    planes (:func:`~napari_unet.engine.predict.focus_planes`, found on a small central square of up
    to :data:`FOCUS_SAMPLE` planes; only those squares and crops are read)."""
    stack_shape, _, h, w = image.planes_shape(model.config.in_channels)
    n = math.prod(stack_shape)
    array = image.open()
    which = [0]
    if n > 1:
        sampled = np.unique(np.linspace(0, n - 1, min(n, FOCUS_SAMPLE)).round().astype(int))
        square = central_window(h, w, PROBE_SIDE // 2)
        which = [int(sampled[i]) for i in focus_planes(np.stack([image.read(array, int(k), *square)
                                                                  for k in sampled]))]
    crops = np.stack([image.read(array, k, *central_window(h, w, 2 * PROBE_SIDE)) for k in which])  # (K, C, h, w)
    pixel = image.pixel_size[1] if image.pixel_size else None
    return choose_scale(model, crops, pixel_size_um=pixel, channel_axis=1, tile=options.tile,
                        overlap=options.overlap, device=options.device)


def default_halo(model: SegmentationModel, scale: float = 1.0) -> int:
    """Context around each block, in image pixels: the receptive field or two object diameters."""
    return math.ceil(max(receptive_radius(model.config.depth), OBJECT_HALO) / scale)


# --------------------------------------------------------------------------- on the workers


@dataclass(frozen=True)
class _Settings:
    """Identical for every block of one image."""

    image: LazyImage  # without in-memory data: blocks of those travel with the task
    out: str
    stack_shape: tuple[int, ...]
    options: BlockwiseOptions
    postprocess: PostprocessConfig
    digest: str
    threads: dict[str, int]  # torch threads per worker host (empty: torch's default)


@dataclass(frozen=True)
class _Job:
    plane: int
    index: tuple[int, int]
    core: Rect
    ext: Rect
    bounds: tuple[tuple[float, float], ...]


_MODELS: dict[str, SegmentationModel] = {}
_ARRAYS: dict[LazyImage, Any] = {}
_WORKER_LOCK = threading.Lock()


def _worker_model(digest: str, data: bytes) -> SegmentationModel:
    """The model for these checkpoint bytes, loaded once per process (never unpickled)."""
    with _WORKER_LOCK:
        if digest not in _MODELS:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "model.safetensors"
                path.write_bytes(data)
                _MODELS[digest] = load_model(path)
        return _MODELS[digest]


def _worker_array(image: LazyImage) -> Any:
    with _WORKER_LOCK:
        if image not in _ARRAYS:
            _ARRAYS.clear()
            _ARRAYS[image] = image.open()
        return _ARRAYS[image]


def _set_threads(threads: dict[str, int]) -> None:
    if not threads:
        return
    try:
        from distributed import get_worker

        host = get_worker().address.rsplit(":", 1)[0]
    except ValueError:  # not inside a worker
        return
    n = threads.get(host)
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _stack_index(settings: _Settings, plane: int) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(plane, settings.stack_shape)) if settings.stack_shape else ()


def _run_block(settings: _Settings, job: _Job, model_bytes: bytes, data: np.ndarray | None) -> BlockEdges:
    """Probabilities → labels for one block with its halo; writes the core, returns the face bands."""
    import zarr

    _set_threads(settings.threads)
    model = _worker_model(settings.digest, model_bytes)
    opts = settings.options
    dev = resolve_device(opts.device)
    (y0, y1, x0, x1), (ey0, ey1, ex0, ex1) = job.core, job.ext
    if data is None:
        data = settings.image.read(_worker_array(settings.image), job.plane, slice(ey0, ey1), slice(ex0, ex1))
    x = model.normalization.apply_bounds(data, list(job.bounds))
    h, w = x.shape[-2:]
    work = (max(8, round(h * opts.scale)), max(8, round(w * opts.scale)))
    if work != (h, w):
        x = resize_planes(x, work)
    in_tile, out_tile, overlap, multiple = tile_geometry(model.net, opts.tile, opts.overlap)
    amp = dev.type == "cuda"
    batch = 1 if dev.type == "cpu" else max(1, opts.batch_size)  # on CPU batching is no faster, only bigger
    p = predict_plane(model.prepared(dev), x, in_tile=in_tile, out_tile=out_tile, overlap=overlap,
                      batch_size=batch, device=dev, multiple=multiple, amp=amp)
    del x
    labels = instance_labels(p, (h, w), opts.scale, settings.postprocess, sizes="image")  # as segment() does
    del p
    core = labels[y0 - ey0 : y1 - ey0, x0 - ex0 : x1 - ex0]
    present = np.bincount(core.ravel(), minlength=int(labels.max()) + 1) > 0
    present[0] = False
    local = np.zeros(present.size, np.uint32)
    count = int(present.sum())
    local[present] = np.arange(1, count + 1, dtype=np.uint32)
    out = zarr.open_array(settings.out, mode="r+", path="0")
    out[(*_stack_index(settings, job.plane), slice(y0, y1), slice(x0, x1))] = local[core]
    return block_edges(labels, job.ext, job.core, local, count, BAND)


def _relabel_block(settings: _Settings, plane: int, core: Rect, lut: np.ndarray) -> None:
    """Map one block's local ids to the global ones, in place."""
    import zarr

    out = zarr.open_array(settings.out, mode="r+", path="0")
    where = (*_stack_index(settings, plane), slice(core[0], core[1]), slice(core[2], core[3]))
    out[where] = lut[out[where]]


# --------------------------------------------------------------------------- the cluster


def available_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def max_workers() -> int:
    """The most local worker processes: :data:`WORKERS_PER_CORE` per core (each runs the network
    on one thread; more only share the same cores and multiply the memory)."""
    return WORKERS_PER_CORE * available_cores()


def check_workers(workers: int | None) -> int:
    """``workers`` as a number of local processes (default 1), or one sentence when out of range."""
    if workers is None:
        return 1
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise InvalidParameter(f"The number of workers must be a whole number of at least 1, not {workers!r}.")
    limit = max_workers()
    if workers > limit:
        raise InvalidParameter(
            f"{workers} workers is more than this machine's {available_cores()} cores can run ({limit} at most, "
            f"{WORKERS_PER_CORE} per core); for more, start a dask cluster and pass its --scheduler address."
        )
    return int(workers)


_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ucx|ws|wss)://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                      r":(\d{1,5})/?$")


def check_scheduler(address: str) -> str:
    """A dask scheduler address (``tcp://host:port``, ``tls://…``, or ``host:port``), checked before
    any connection; one sentence otherwise."""
    match = _ADDRESS.match(address.strip()) if isinstance(address, str) else None
    if match is None or not 0 < int(match.group(1)) < 65536:
        raise InvalidParameter(f"{address!r} is not a dask scheduler address like tcp://host:8786.")
    return address.strip()


@contextmanager
def dask_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler`` if given, else a local cluster of ``workers``
    single-threaded processes (one worker: in this process, the least memory); at most
    :func:`max_workers` local processes."""
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        scheduler = check_scheduler(scheduler)
        try:
            client = Client(scheduler, timeout="20s", set_as_default=False)
        except (OSError, ValueError) as exc:  # TimeoutError is an OSError
            raise InputError(f"Could not reach the dask scheduler at {scheduler} ({first_line(exc)}).") from None
        try:
            yield client
        finally:
            client.close()
        return
    n = check_workers(workers)
    # dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers, which fixes glibc's mmap
    # threshold at 128 KiB: every tile's activations are then mapped and unmapped afresh, and a
    # worker process ran the network 1.5x slower than the same thread in this process (4096² mosaic)
    keep_malloc = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with warnings.catch_warnings(), dask.config.set(keep_malloc):
        warnings.filterwarnings("ignore", message="Port .* is already in use")  # its HTTP server moves on
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=n > 1, dashboard_address=None,
            silence_logs=logging.CRITICAL, memory_limit=0 if n == 1 else "auto",  # task errors: via futures
        )
    client = Client(cluster, set_as_default=False)  # other dask work in the process (napari's) stays local
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _threads_per_host(client: Any) -> dict[str, int]:
    """Torch threads for workers on this machine: its cores shared among its worker threads."""
    hosts: dict[str, int] = {}
    for address, n in client.nthreads().items():
        host = address.rsplit(":", 1)[0]
        hosts[host] = hosts.get(host, 0) + n
    cores = os.cpu_count() or 1  # other hosts: torch's default
    return {h: max(1, cores // n) for h, n in hosts.items() if h.endswith(("127.0.0.1", "localhost"))}


# --------------------------------------------------------------------------- the driver


def _model_bytes(model: SegmentationModel | str | Path | None) -> tuple[bytes, SegmentationModel]:
    """The checkpoint bytes to send to workers, and the model (for its settings)."""
    if isinstance(model, SegmentationModel):
        if model.path is not None and Path(model.path).is_file() and Path(model.path).suffix == ".safetensors":
            return Path(model.path).read_bytes(), model
        from napari_unet.io.checkpoint import save_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            path = save_checkpoint(Path(tmp) / "model.safetensors", model.net, model.info)
            return path.read_bytes(), model
    loaded = load_model(model)
    return Path(loaded.path).read_bytes(), loaded


class _Run:
    """One image: its blocks, their results, the merge, the relabel pass, the final rename."""

    def __init__(self, source: Any, out: Path, model: SegmentationModel, digest: str,
                 options: BlockwiseOptions, threads: dict[str, int], overwrite: bool, name: str) -> None:
        self.result = BlockwiseResult(name, out)
        self.out, self.overwrite = out, overwrite
        if out.exists() and not overwrite:
            raise InputError(f"{out} already exists; choose another output folder or pass --overwrite.")
        image = source if isinstance(source, LazyImage) else open_lazy(source)
        stack_shape, _, h, w = image.planes_shape(model.config.in_channels)
        self.memory = image.array if image.kind == "memory" else None
        self.image = replace(image, array=None) if image.kind == "memory" else image
        self.reader = image
        if options.scale == "auto":
            choice = auto_scale(image, model, options)
        else:
            choice = ScaleChoice(checked_scale(options.scale), "given")
        options = replace(options, scale=choice.scale)
        self.result.scale = choice
        multiple = max(16, model.net.size_multiple)
        block = -(-max(options.block, 64) // multiple) * multiple
        halo = options.halo if options.halo is not None else default_halo(model, options.scale)
        halo = -(-max(halo, 0) // multiple) * multiple
        options = replace(options, block=block, halo=halo)
        self.part = out.parent / f".{out.name}.part-{uuid.uuid4().hex[:8]}"
        chunk = 1024 if block % 1024 == 0 else block
        self.shape = (*stack_shape, h, w)
        try:  # a full disk, a bad plan or a signal: no part folder stays behind
            out.parent.mkdir(parents=True, exist_ok=True)
            create_labels_zarr(self.part, self.shape, chunk, source=name, extra={
                "block": block, "halo": halo, "tile": options.tile, "overlap": options.overlap,
                "scale": options.scale, "model": model.info.name,
                "postprocess": (options.postprocess or model.postprocess).to_dict(),
            })
            self._plan(image, model, options, threads, digest, stack_shape, h, w)
        except OSError as exc:
            self.discard()
            raise InputError(os_error_sentence(exc, out)) from None
        except BaseException:
            self.discard()
            raise

    def _plan(self, image: LazyImage, model: SegmentationModel, options: BlockwiseOptions, threads: dict[str, int],
              digest: str, stack_shape: tuple[int, ...], h: int, w: int) -> None:
        """The blocks of every plane, each with the plane's normalisation bounds."""
        block, halo = options.block, options.halo
        post = postprocess_at_scale(options.postprocess or model.postprocess, options.scale)
        if options.min_size is not None:
            post = post.with_min_size(options.min_size)
        self.settings = _Settings(self.image, str(self.part), stack_shape, options, post, digest, threads)
        norm = model.normalization
        array = image.open()
        n_planes = int(np.prod(stack_shape)) if stack_shape else 1
        n_channels = model.config.in_channels
        self.jobs: deque[_Job] = deque()
        self.cores: dict[tuple[int, int, int], Rect] = {}
        grid = [(i, j, (y, min(y + block, h), x, min(x + block, w)))
                for i, y in enumerate(range(0, h, block)) for j, x in enumerate(range(0, w, block))]
        for plane in range(n_planes):
            bounds = tuple(norm.bounds(image.channel_view(array, plane, c)) for c in range(n_channels))
            for i, j, core in grid:
                ext = (max(core[0] - halo, 0), min(core[1] + halo, h), max(core[2] - halo, 0), min(core[3] + halo, w))
                self.jobs.append(_Job(plane, (i, j), core, ext, bounds))
                self.cores[(plane, i, j)] = core
        self.result.blocks, self.result.shape = len(self.jobs), self.shape
        self.edges: dict[tuple[int, int, int], BlockEdges] = {}
        self.relabels: deque[tuple[int, Rect, np.ndarray]] = deque()
        self.pending = 0
        self.done = 0
        self.stage = 1

    def block_data(self, job: _Job) -> np.ndarray | None:
        if self.memory is None:
            return None
        ey0, ey1, ex0, ex1 = job.ext
        return self.reader.read(self.memory, job.plane, slice(ey0, ey1), slice(ex0, ex1))

    def merge(self) -> int:
        """Merge tables per plane; queue the relabel tasks; returns the blocks needing none."""
        skipped = 0
        planes = sorted({k[0] for k in self.cores})
        for plane in planes:
            keys = [k for k in self.cores if k[0] == plane]
            blocks = {k: self.edges[k] for k in keys}
            neighbours = {k: [(plane, k[1] + di, k[2] + dj) for di in (-1, 0, 1) for dj in (-1, 0, 1)
                              if (di or dj) and (plane, k[1] + di, k[2] + dj) in blocks] for k in keys}
            tables, n = merge_tables(blocks, neighbours)
            self.result.objects.append(n)
            for k in keys:
                lut = tables[k]
                if np.array_equal(lut, np.arange(lut.size)):
                    skipped += 1
                else:
                    self.relabels.append((plane, self.cores[k], lut))
        self.edges.clear()
        return skipped

    def finish(self) -> None:
        import zarr

        root = zarr.open_group(str(self.part), mode="r+")
        info = dict(root.attrs[LABELS_FORMAT])
        info["objects"] = self.result.objects
        root.attrs[LABELS_FORMAT] = info
        if self.out.exists():
            if not self.overwrite:  # the caller discards the part: name only what stays
                raise InputError(f"{self.out} appeared while segmenting (another run wrote it); it was kept and "
                                 "this run's result discarded (pass --overwrite to replace it).")
            trash = self.out.parent / f".{self.out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(self.out, trash)
            os.rename(self.part, self.out)
            _remove(trash)
        else:
            os.rename(self.part, self.out)

    def discard(self) -> None:
        """Remove the part folder. After a failed write zarr's I/O thread may still finish another
        write into it (creating it again), so it is looked at again for a moment."""
        for _ in range(6):
            _remove(self.part)
            time.sleep(0.05)
            if not self.part.exists():
                time.sleep(0.05)
                if not self.part.exists():
                    return


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _running(keys: set[str], dask_worker: Any = None) -> int:
    """On a worker: how many of the tasks ``keys`` are still running (a cancelled task that had
    started runs to its end; distributed cannot stop a thread)."""
    return sum(ts.key in keys for ts in dask_worker.state.executing)


def _wait_until_not_running(client: Any, keys: list[str], timeout: float = 30.0) -> None:
    """Until no worker runs any of the (cancelled) tasks ``keys``, at most ``timeout`` s: removing
    an output while a block still writes into it would leave part of it behind."""
    end, pending = time.monotonic() + timeout, set(keys)
    while pending and time.monotonic() < end:
        try:
            if not any(client.run(_running, pending).values()):
                return
        except Exception:  # noqa: BLE001 - a closing or unreachable cluster: nothing more to wait for
            return
        time.sleep(0.05)


def segment_blockwise(
    image: Any,
    out: Path | str,
    model: SegmentationModel | str | Path | None = None,
    *,
    options: BlockwiseOptions | None = None,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> BlockwiseResult:
    """Segment one image (numpy, dask, zarr array, or a path to a zarr folder / TIFF) block by
    block into the labels zarr ``out``; errors are raised (one sentence).

    ``progress(done, total)`` is called as blocks finish (on the calling thread); when ``cancel()``
    returns True the call stops the cluster's tasks, removes the partial output and raises
    :class:`~napari_unet.errors.Cancelled`. Safe to call from a worker thread (e.g. napari's).
    """
    (result,) = segment_many([(image, out)], model, options=options, client=client, workers=workers,
                             scheduler=scheduler, overwrite=overwrite, progress=progress, cancel=cancel)
    if result.error is not None:
        raise InputError(result.error)
    return result


def segment_many(
    items: Sequence[tuple[Any, Path | str]],
    model: SegmentationModel | str | Path | None = None,
    *,
    options: BlockwiseOptions | None = None,
    client: Any = None,
    workers: int | None = None,
    scheduler: str | None = None,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    cancel: CancelFn | None = None,
) -> list[BlockwiseResult]:
    """Segment several ``(image, out)`` pairs on one cluster, their blocks interleaved so that
    many small images spread over the workers too. A failing image gets ``error`` set (one
    sentence) and the others go on; cancel (or Ctrl-C) stops all and removes partial outputs."""
    options = options or BlockwiseOptions()
    data, loaded = _model_bytes(model)
    digest = hashlib.sha256(data).hexdigest()
    if client is None:
        with dask_client(workers, scheduler) as own:
            return _drive(items, loaded, data, digest, options, own, overwrite, progress, cancel)
    return _drive(items, loaded, data, digest, options, client, overwrite, progress, cancel)


def _drive(items, model, data, digest, options, client, overwrite, progress, cancel) -> list[BlockwiseResult]:
    threads = {h: min(n, options.threads or n) for h, n in _threads_per_host(client).items()}
    model_future = client.scatter(data, broadcast=True, hash=False)
    results: list[BlockwiseResult] = []
    active: list[_Run] = []
    done = total = 0
    window = 2 * max(1, sum(client.nthreads().values()))
    in_flight: dict[Any, tuple[_Run, str]] = {}
    ready = threading.Event()

    def report() -> None:
        if progress is not None:
            progress(done, total)

    def fail(run: _Run, message: str) -> None:
        nonlocal done
        run.result.error = message
        mine = [fut for fut, (r, *_) in in_flight.items() if r is run]
        client.cancel(mine)
        for fut in mine:
            del in_flight[fut]
        _wait_until_not_running(client, [fut.key for fut in mine])
        done += 2 * run.result.blocks - run.done
        run.jobs.clear()
        run.relabels.clear()
        run.discard()
        active.remove(run)

    try:
        for source, out in items:
            name = str(source) if isinstance(source, (str, Path)) else \
                str(source.path) if isinstance(source, LazyImage) and source.path else "<array>"
            try:
                run = _Run(source, Path(out), model, digest, options, threads, overwrite, name)
            except NapariUnetError as exc:
                results.append(BlockwiseResult(name, Path(out), error=str(exc)))
                continue
            active.append(run)
            results.append(run.result)
        total = 2 * sum(r.result.blocks for r in active)
        report()
        while active:
            for run in list(active):
                while len(in_flight) < window and (run.jobs or run.relabels):
                    if run.jobs:
                        job = run.jobs.popleft()
                        fut = client.submit(_run_block, run.settings, job, model_future, run.block_data(job),
                                            pure=False)
                        in_flight[fut] = (run, "block", job)
                    else:
                        plane, core, lut = run.relabels.popleft()
                        fut = client.submit(_relabel_block, run.settings, plane, core, lut, pure=False)
                        in_flight[fut] = (run, "relabel", None)
                    fut.add_done_callback(lambda _: ready.set())
                    run.pending += 1
            # the client is not the process's default (distributed.wait would need that): wake on a callback
            ready.wait(0.25)
            ready.clear()  # before looking, so that a task finishing meanwhile wakes the next round
            finished = [fut for fut in list(in_flight) if fut.done()]
            if cancel is not None and cancel():
                raise Cancelled("Segmentation was cancelled.")
            for fut in finished:
                if fut not in in_flight:
                    continue
                run, kind, job = in_flight.pop(fut)
                run.pending -= 1
                try:
                    value = fut.result()
                except NapariUnetError as exc:
                    fail(run, f"{run.result.source}: {exc}")
                    continue
                except Exception as exc:  # noqa: BLE001 - storage, memory, the network: this image fails
                    if isinstance(exc, OSError):
                        reason = os_error_sentence(exc, None if exc.filename is None else Path(exc.filename).name)
                        reason = reason[0].lower() + reason[1:-1]
                    else:
                        reason = f"{type(exc).__name__}: {first_line(exc)}"
                    fail(run, f"{run.result.source}: a block failed ({reason}).")
                    continue
                done += 1
                run.done += 1
                if kind == "block":
                    run.edges[(job.plane, *job.index)] = value
                if run.stage == 1 and not run.jobs and run.pending == 0:
                    run.stage = 2
                    skipped = run.merge()
                    done += skipped
                    run.done += skipped
                if run.stage == 2 and not run.relabels and run.pending == 0:
                    try:
                        run.finish()
                    except (NapariUnetError, OSError) as exc:
                        fail(run, os_error_sentence(exc, run.out) if isinstance(exc, OSError) else str(exc))
                        continue
                    active.remove(run)
            report()
    except BaseException:  # Cancelled, KeyboardInterrupt: stop the cluster's work, leave no partial output
        keys = [fut.key for fut in in_flight]
        client.cancel(list(in_flight))
        try:
            _wait_until_not_running(client, keys)  # a block already running still writes into its output
        finally:  # a second Ctrl-C while waiting still removes the partial outputs
            for run in active:
                run.discard()
        raise
    return results
