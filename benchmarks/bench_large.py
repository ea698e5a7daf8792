"""Large-image benchmark: blockwise segmentation (``napari_unet.blockwise``) vs the in-memory path.

The input is a synthetic mosaic built from the real sample image ``sample_data/nuclei_u2os.tif``
(768x869 uint16 nuclei), tiled with mirror flips to ``size x size`` and stored as a chunked zarr
on disk (written chunk by chunk, cached in ``--cache``). Each case runs as its own child process;
a monitor samples the resident memory of that child AND all its descendants (dask worker
processes included) every 0.1 s, so "peak RSS" is the peak of the sum over all processes of the
run. Also reported: wall time of the child (model loading, cluster start-up and output writing
included), megapixels per second, the largest single process (``getrusage`` of the children),
and the machine's load average before and after, since other jobs share the CPU.

Cases (``--cases``, comma-separated; ``SIZE:KIND``): ``memory`` is the in-memory path (the
zarr read into one numpy array, ``napari_unet.segment`` with the tile/overlap defaults, the labels
written as a TIFF); ``bN`` runs ``segment_blockwise(zarr, out, workers=N)`` with ``--block``
(default 2048) into a labels zarr, the cores shared among the N workers; ``bNtM`` the same with at
most M torch threads per worker (``b1t1`` against ``b2`` compares one core with two).

Run::

    .venv/bin/python benchmarks/bench_large.py [--cases 8192:memory,8192:b1,8192:b2,16384:b1,16384:b2] \\
        [--block 2048] [--cache /tmp/napari_unet_bench] [--json OUT]

Targets (2-core CPU, 1 worker): 8192^2 peak <= 1.0 GiB; 32768^2 completes with peak <= 1.5 GiB;
2 workers >= 1.6x one worker's throughput; blockwise 8192^2 time <= 1.2x the in-memory path.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "nuclei_u2os.tif"
GIB = 1024**3


def build_mosaic(size: int, cache: Path) -> Path:
    """``size x size`` uint16 zarr of the sample tiled with flips (built once, chunk by chunk)."""
    import tifffile
    import zarr

    path = cache / f"mosaic_{size}.zarr"
    done = path / ".complete"
    if done.exists():
        return path
    shutil.rmtree(path, ignore_errors=True)
    sample = tifffile.imread(SAMPLE)
    h, w = sample.shape
    period = np.block([[sample, sample[:, ::-1]], [sample[::-1], sample[::-1, ::-1]]])  # seamless 2h x 2w
    chunk = 1024
    z = zarr.open_array(str(path), mode="w", shape=(size, size), chunks=(chunk, chunk), dtype="uint16")
    for y in range(0, size, chunk):
        rows = (np.arange(y, min(y + chunk, size)) % (2 * h))[:, None]
        for x in range(0, size, chunk):
            cols = (np.arange(x, min(x + chunk, size)) % (2 * w))[None, :]
            z[y : y + chunk, x : x + chunk] = period[rows, cols]
    done.touch()
    return path


# --------------------------------------------------------------------------- one case (child)


def child(args: argparse.Namespace) -> None:
    import zarr

    from napari_unet import load_model, segment
    from napari_unet.blockwise.engine import BlockwiseOptions, segment_blockwise
    from napari_unet.io.tiff import write_tiff_atomic

    out = Path(args.out)
    model = load_model()
    if args.kind == "memory":
        image = np.asarray(zarr.open_array(args.zarr, mode="r")[:])
        labels = segment(image, model, scale=1.0)
        write_tiff_atomic(out / "labels.tif", labels)
        n = int(labels.max())
    else:
        workers, _, threads = args.kind[1:].partition("t")
        options = BlockwiseOptions(block=args.block, scale=1.0, threads=int(threads) if threads else None)
        workers = int(workers)
        r = segment_blockwise(args.zarr, out / "labels.zarr", model, options=options, workers=workers)
        n = sum(r.objects)
    print(json.dumps({"objects": n}), flush=True)


# --------------------------------------------------------------------------- the monitor


def tree_rss(pid: int) -> tuple[int, int]:
    """(sum of RSS over ``pid`` and its descendants, number of processes)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total, len(procs)


def run_case(size: int, kind: str, zarr_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    out = args.cache / f"out_{size}_{kind}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cmd = [sys.executable, __file__, "--child", "--kind", kind, "--zarr", str(zarr_path), "--out", str(out),
           "--block", str(args.block)]
    load_before = os.getloadavg()
    peak, peak_procs, stop = [0], [0], threading.Event()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    def monitor() -> None:
        while not stop.is_set():
            rss, n = tree_rss(proc.pid)
            if rss > peak[0]:
                peak[0], peak_procs[0] = rss, n
            time.sleep(0.1)

    thread = threading.Thread(target=monitor, daemon=True)
    thread.start()
    stdout, _ = proc.communicate()
    wall = time.perf_counter() - start
    stop.set()
    thread.join()
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    if proc.returncode != 0:
        raise SystemExit(f"case {size}:{kind} failed with exit status {proc.returncode}")
    objects = json.loads(stdout.strip().splitlines()[-1])["objects"]
    shutil.rmtree(out, ignore_errors=True)
    result = {
        "size": size, "kind": kind, "wall_s": wall, "megapixels_per_s": size * size / 1e6 / wall,
        "peak_rss_sum_gib": peak[0] / GIB, "processes_at_peak": peak_procs[0],
        "largest_process_gib_so_far": largest / GIB, "objects": objects,
        "load_before": load_before, "load_after": os.getloadavg(),
    }
    print(f"  {size:>6}^2 {kind:<7} wall {wall:8.1f} s  {result['megapixels_per_s']:6.2f} Mpx/s  peak RSS (sum over "
          f"{peak_procs[0]} processes) {result['peak_rss_sum_gib']:.2f} GiB  objects {objects}  load "
          f"{load_before[0]:.1f} -> {result['load_after'][0]:.1f}", flush=True)
    return result


def summary(results: list[dict[str, Any]]) -> None:
    by = {(r["size"], r["kind"]): r for r in results}
    print("\n== targets ==")

    def line(text: str, value: float | None, op: str, target: float) -> None:
        if value is None:
            print(f"{text:<52} {'n/a':>8}  (target {op} {target})  SKIP")
            return
        ok = value <= target if op == "<=" else value >= target
        print(f"{text:<52} {value:8.3f}  (target {op} {target})  {'PASS' if ok else 'FAIL'}")

    def get(size: int, kind: str, key: str) -> float | None:
        return by[(size, kind)][key] if (size, kind) in by else None

    line("8192^2 blockwise 1 worker peak RSS (GiB)", get(8192, "b1", "peak_rss_sum_gib"), "<=", 1.0)
    line("32768^2 blockwise 1 worker peak RSS (GiB)", get(32768, "b1", "peak_rss_sum_gib"), "<=", 1.5)
    for size in sorted({r["size"] for r in results}):
        one, two = get(size, "b1", "wall_s"), get(size, "b2", "wall_s")
        line(f"{size}^2 throughput 2 workers / 1 worker (cores shared)", one / two if one and two else None,
             ">=", 1.6)
        one = get(size, "b1t1", "wall_s")
        line(f"{size}^2 throughput 2 workers / 1 single-thread worker", one / two if one and two else None,
             ">=", 1.6)
    mem, b1 = get(8192, "memory", "wall_s"), get(8192, "b1", "wall_s")
    line("8192^2 time blockwise 1 worker / in-memory", b1 / mem if mem and b1 else None, "<=", 1.2)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="8192:memory,8192:b1,8192:b2,16384:b1,16384:b2")
    p.add_argument("--block", type=int, default=2048)
    p.add_argument("--cache", type=Path, default=Path("/tmp/napari_unet_bench"))
    p.add_argument("--json", type=Path)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--kind", help=argparse.SUPPRESS)
    p.add_argument("--zarr", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    cases = [(int(c.split(":")[0]), c.split(":")[1]) for c in args.cases.split(",")]
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"== napari-unet large-image benchmark: {os.cpu_count()} CPUs, block {args.block} ==", flush=True)
    results = []
    for size, kind in cases:
        t = time.perf_counter()
        path = build_mosaic(size, args.cache)
        if time.perf_counter() - t > 1:
            print(f"  built {path} in {time.perf_counter() - t:.0f} s", flush=True)
        results.append(run_case(size, kind, path, args))
    summary(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
