"""Blockwise throughput of 1 vs 2 local dask worker processes once the cluster is up.

``bench_large.py`` times whole runs (cluster start-up, model loading and the merge included);
this isolates how blocks scale over worker processes (one torch thread each) on a
``--size``² mosaic of the real U2OS sample (``bench_large.build_mosaic``), and shows what dask's
default ``MALLOC_TRIM_THRESHOLD_=65536`` (which ``napari_unet.blockwise`` unsets for its local
workers) costs::

    .venv/bin/python benchmarks/blockwise_workers.py [--size 4096] [--cache /tmp/napari_unet_bench]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_large import build_mosaic  # noqa: E402


def run(zarr_path: Path, workers: int, trim: bool) -> float:
    import dask
    from distributed import Client, LocalCluster

    from napari_unet import load_model
    from napari_unet.blockwise.engine import BlockwiseOptions, segment_blockwise

    model = load_model()
    environ = {} if trim else {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(environ), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster, set_as_default=False) as client, tempfile.TemporaryDirectory() as tmp:
        client.run(lambda: __import__("napari_unet.blockwise"))  # workers import torch before the clock
        start = time.perf_counter()
        segment_blockwise(zarr_path, Path(tmp) / "labels.zarr", model, client=client,
                          options=BlockwiseOptions(block=2048, scale=1.0, threads=1))
        return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--cache", type=Path, default=Path("/tmp/napari_unet_bench"))
    args = p.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    path = build_mosaic(args.size, args.cache)
    mpx = args.size**2 / 1e6
    times = {}
    for trim in (False, True):
        for workers in (1, 2):
            times[trim, workers] = t = run(path, workers, trim)
            label = "dask's MALLOC_TRIM_THRESHOLD_" if trim else "glibc default malloc"
            print(f"{args.size}^2  {workers} worker process(es), 1 thread each, {label:<30} {t:7.1f} s  "
                  f"{mpx / t:5.2f} Mpx/s", flush=True)
    for trim in (False, True):
        print(f"2 workers / 1 worker ({'trim' if trim else 'no trim'}): {times[trim, 1] / times[trim, 2]:.2f}x")
    print(f"1 worker, no trim / trim: {times[True, 1] / times[False, 1]:.2f}x faster")


if __name__ == "__main__":
    main()
