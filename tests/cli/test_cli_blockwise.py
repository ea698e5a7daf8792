"""``napari-unet segment big.zarr`` blockwise: a real dask scheduler and workers, Ctrl-C, never overwrite."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.helpers import interruptible

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_zarr(path: Path, image: np.ndarray, chunk: int = 128) -> Path:
    z = zarr.open_array(str(path), mode="w", shape=image.shape, chunks=(chunk, chunk), dtype=image.dtype)
    z[:] = image
    return path


def napari_unet(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "napari-unet"), *args], capture_output=True, text=True, timeout=timeout)


def stop(procs: list[subprocess.Popen]) -> None:
    """End the processes this test started (each leads its own session), by their id."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.fixture
def dask_cluster(tmp_path):
    """A real ``dask scheduler`` and two ``dask worker`` processes on 127.0.0.1."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    log = open(tmp_path / "cluster.log", "w")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=log, stderr=log, start_new_session=True)]
    try:
        for _ in range(2):
            procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nworkers", "1", "--nthreads", "1",
                                           "--no-dashboard", "--local-directory", str(tmp_path)],
                                          stdout=log, stderr=log, start_new_session=True))
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        stop(procs)
        log.close()


def test_cli_on_a_real_dask_cluster_matches_the_local_run(u2os, tmp_path, dask_cluster):
    image = np.tile(u2os[:384, :448], (1, 2))  # real nuclei, 384 x 896: 2 x 4 blocks of 256
    big = write_zarr(tmp_path / "big.zarr", image)
    remote = napari_unet("segment", str(big), "--block", "256", "--scheduler", dask_cluster,
                         "--out", str(tmp_path / "remote"), "--quiet")
    assert remote.returncode == 0, remote.stderr
    local = napari_unet("segment", str(big), "--block", "256", "--out", str(tmp_path / "local"), "--quiet")
    assert local.returncode == 0, local.stderr
    a = zarr.open_array(str(tmp_path / "remote" / "big_labels.zarr"), mode="r", path="0")[:]
    b = zarr.open_array(str(tmp_path / "local" / "big_labels.zarr"), mode="r", path="0")[:]
    assert a.max() > 50
    np.testing.assert_array_equal(a, b)
    assert "big_labels.zarr" in remote.stdout and "8 blocks" in remote.stdout

    again = napari_unet("segment", str(big), "--block", "256", "--scheduler", dask_cluster,
                        "--out", str(tmp_path / "remote"), "--quiet")
    assert again.returncode == 1 and "already exists" in again.stderr and "Traceback" not in again.stderr


def test_ctrl_c_cancels_cleanly(misc, tmp_path):
    big = write_zarr(tmp_path / "big.zarr", np.tile(misc, (2, 2)))
    proc = subprocess.Popen([str(BIN / "napari-unet"), "segment", str(big), "--block", "64", "--out",
                             str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=interruptible)
    seen = ""
    while seen.count("blocks [") < 3:  # the progress bar has moved: blocks are running
        ch = proc.stderr.read(1)
        assert ch, f"exited early: {seen}"
        seen += ch
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
