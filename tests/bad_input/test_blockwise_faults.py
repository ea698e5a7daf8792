"""Blockwise faults: out-of-range workers and scheduler addresses, a rival writer, SIGTERM and a full
disk each give one sentence (or a clean exit code) and leave no partial output behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.blockwise.engine import (
    BlockwiseOptions,
    check_scheduler,
    check_workers,
    dask_client,
    max_workers,
    segment_blockwise,
)
from napari_unet.cli.main import main
from napari_unet.engine.predict import NO_NUCLEI, choose_scale
from napari_unet.errors import InputError, InvalidParameter
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from tests.helpers import interruptible, make_tiny_model

OPTS = BlockwiseOptions(block=64, halo=16, tile=64, overlap=16, device="cpu", scale=1.0)


@pytest.fixture(scope="module")
def client():
    with dask_client(1) as c:
        yield c


@pytest.fixture
def tiny_ckpt(tmp_path):
    return save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, ModelInfo(name="tiny"))


def cli(argv) -> int:
    """The CLI in this process; argparse's refusals exit with their code."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code)


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".part-" in p.name or ".old-" in p.name)


def test_workers_are_bounded_by_the_cores(tmp_path, capsys):
    limit = max_workers()
    assert check_workers(limit) == limit and check_workers(None) == 1
    for bad in (limit + 1, 1000, 0, -3, 2.5):
        with pytest.raises(InvalidParameter) as err:
            check_workers(bad)
        assert "\n" not in str(err.value)
    start = time.perf_counter()
    code = cli(["segment", tmp_path / "img.tif", "--workers", "1000", "--out", tmp_path / "o"])
    err = capsys.readouterr().err
    assert code == 2 and "1000 workers is more than" in err and len(err.strip().splitlines()) == 1
    assert time.perf_counter() - start < 10 and not (tmp_path / "o").exists()  # no cluster was started


@pytest.mark.parametrize("address", ["not a url", "http://host:8786", "tcp://host", "tcp://host:99999", "tcp://:8786",
                                     "::"])
def test_scheduler_addresses_are_checked_before_connecting(address, tmp_path, capsys):
    start = time.perf_counter()
    with pytest.raises(InvalidParameter, match="not a dask scheduler address"):
        with dask_client(scheduler=address):
            pass
    code = cli(["segment", tmp_path / "img.tif", "--scheduler", address, "--out", tmp_path / "o"])
    err = capsys.readouterr().err
    assert code == 2 and "not a dask scheduler address" in err and "Traceback" not in err
    assert time.perf_counter() - start < 10  # refused up front: a connection attempt waits 20 s


def test_valid_scheduler_addresses_pass():
    for address in ("tcp://127.0.0.1:8786", "tls://node-1.cluster:8786", "localhost:8786", "tcp://[::1]:8786"):
        assert check_scheduler(address) == address


def test_a_rival_output_is_kept_and_the_message_names_only_existing_paths(misc, client, tmp_path):
    """Another process writes the same output while this run segments: its output is kept, this
    run's part folder is removed, and the sentence names no folder that does not exist."""
    out = tmp_path / "img_labels.zarr"

    def rival(done, total):
        if done and not out.exists():
            zarr.open_group(str(out), mode="w")

    with pytest.raises(InputError) as err:
        segment_blockwise(misc[:128, :128], out, make_tiny_model(), options=OPTS, client=client, progress=rival)
    text = str(err.value)
    assert "appeared while segmenting" in text and ".part-" not in text and "\n" not in text
    assert out.is_dir() and leftovers(tmp_path) == []


def test_auto_scale_on_pure_noise_falls_back_to_one(default_model):
    noise = np.random.default_rng(0).integers(0, 65535, (1024, 1024)).astype(np.uint16)
    start = time.perf_counter()
    choice = choose_scale(default_model, noise, device="cpu", tile=256, overlap=32)
    assert (choice.scale, choice.how) == (1.0, NO_NUCLEI)
    assert time.perf_counter() - start < 20


def test_auto_scale_on_nuclei_is_still_measured(default_model, u2os):
    small = u2os[::2, ::2]  # nuclei at half their size: the first pass sees them and enlarges
    choice = choose_scale(default_model, small, device="cpu", tile=256, overlap=32)
    assert choice.how == "object size" and choice.scale > 1.5


def _run_cli(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "napari_unet", *map(str, args)], stderr=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env, **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "cancelled")])
def test_a_signal_during_a_blockwise_run_exits_cleanly_and_leaves_nothing(tmp_path, u2os, tiny_ckpt, sig, code, word):
    """SIGTERM (timeout, kill, SLURM) like Ctrl-C: the part folder is removed, no atexit noise."""
    image = tmp_path / "big.tif"
    tifffile.imwrite(image, np.tile(u2os, (2, 2)))
    out = tmp_path / "out"
    proc = _run_cli(["segment", image, "--block", "128", "--out", out, "--model", tiny_ckpt, "--tile", "128",
                     "--overlap", "16", "--device", "cpu", "--scale", "1"], preexec_fn=interruptible)
    buf: list[str] = []
    reader = threading.Thread(target=lambda: buf.extend(iter(lambda: proc.stderr.read(1), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while "blocks [" not in "".join(buf) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "blocks [" in "".join(buf), "".join(buf)
    time.sleep(1.0)  # some blocks written into the part folder
    proc.send_signal(sig)
    assert proc.wait(60) == code
    reader.join(10)
    err = "".join(buf)
    assert f"{word}; unfinished outputs were removed" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    assert not out.exists() or list(out.iterdir()) == []


def _limit_file_size(limit: int):
    """A real write failure (EFBIG) past ``limit`` bytes, standing in for a full disk."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow
@pytest.mark.parametrize("limit", [64, 4096])
def test_a_full_disk_during_a_blockwise_run_leaves_no_part_folder(tmp_path, misc, tiny_ckpt, limit):
    """64 bytes: the labels zarr's metadata cannot be written; 4 KiB: its metadata can, blocks cannot."""
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, misc[:256, :256])
    out = tmp_path / "out"
    out.mkdir()
    proc = _run_cli(["segment", image, "--block", "128", "--out", out, "--model", tiny_ckpt, "--tile", "128",
                     "--overlap", "16", "--device", "cpu", "--scale", "1", "--quiet"],
                    preexec_fn=_limit_file_size(limit))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "larger than the disk" in lines[0], err
    assert list(out.iterdir()) == []
