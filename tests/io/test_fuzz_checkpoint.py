"""Seeded fuzzing of the checkpoint reader: byte-level mutations of a real checkpoint and of
PyTorch files (including a malicious pickle) never give a traceback and never run code."""

from __future__ import annotations

import io
import os
import pickle
import time

import numpy as np
import torch

from napari_unet.errors import CheckpointError
from napari_unet.io.checkpoint import ModelInfo, read_checkpoint, save_checkpoint
from tests.helpers import make_tiny_model

N_SAFETENSORS = 4000
N_TORCH = 1500


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _mutate(data: bytes, rng: np.random.Generator, header_end: int) -> bytes:
    """One random mutation: flips, overwrites, truncation, insertion or deletion; biased to the header."""
    buf = bytearray(data)
    kind = rng.integers(6)
    hot = header_end if rng.random() < 0.7 else len(buf)  # most interesting bytes are in the header
    if kind == 0:  # flip a few bits
        for _ in range(rng.integers(1, 9)):
            i = rng.integers(hot)
            buf[i] ^= 1 << rng.integers(8)
    elif kind == 1:  # overwrite a run with random bytes
        i = rng.integers(hot)
        n = rng.integers(1, 17)
        buf[i : i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    elif kind == 2:  # truncate
        buf = buf[: rng.integers(len(buf))]
    elif kind == 3:  # insert bytes
        i = rng.integers(hot)
        buf[i:i] = rng.integers(0, 256, rng.integers(1, 17), dtype=np.uint8).tobytes()
    elif kind == 4:  # delete bytes
        i = rng.integers(hot)
        del buf[i : i + rng.integers(1, 17)]
    else:  # replace a digit in the header (sizes, offsets, config numbers)
        digits = [i for i in range(min(hot, len(buf))) if 48 <= buf[i] <= 57]
        if digits:
            buf[digits[rng.integers(len(digits))]] = int(rng.integers(48, 58))
    return bytes(buf)


def _read_all_the_way(path) -> None:
    """What load_model does: read, then build the network (size, shape and NaN checks)."""
    read_checkpoint(path).build(path)


def _fuzz(tmp_path, seed_bytes: bytes, suffix: str, n: int, seed: int, header_end: int) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    outcomes = {"refused": 0, "loaded": 0}
    path = tmp_path / f"fuzz{suffix}"
    for _ in range(n):
        path.write_bytes(_mutate(seed_bytes, rng, header_end))
        try:
            _read_all_the_way(path)
            outcomes["loaded"] += 1
        except CheckpointError as exc:
            assert str(exc).endswith("."), str(exc)  # one sentence
            assert "\n" not in str(exc)
            outcomes["refused"] += 1
        # anything else propagates and fails the test with the mutated file's seed state
    return outcomes


def test_fuzzed_safetensors_checkpoints_never_crash_the_reader(tmp_path):
    ckpt = save_checkpoint(tmp_path / "seed.safetensors", make_tiny_model().net, ModelInfo(name="seed"))
    data = ckpt.read_bytes()
    header_end = 8 + int.from_bytes(data[:8], "little")
    start = time.monotonic()
    outcomes = _fuzz(tmp_path, data, ".safetensors", N_SAFETENSORS, seed=7, header_end=header_end)
    elapsed = time.monotonic() - start
    assert sum(outcomes.values()) == N_SAFETENSORS
    assert outcomes["refused"] > N_SAFETENSORS // 4  # the mutations do hit the checks
    print(f"{N_SAFETENSORS} safetensors mutations in {elapsed:.1f} s: {outcomes}")


def test_fuzzed_pytorch_files_never_crash_or_run_code(tmp_path):
    marker = tmp_path / "pwned"
    state = make_tiny_model().net.state_dict()
    zipped = io.BytesIO()
    torch.save(state, zipped)
    legacy = io.BytesIO()
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    evil = pickle.dumps({"state_dict": _Payload(str(marker))}, protocol=2)
    start = time.monotonic()
    total = {"refused": 0, "loaded": 0}
    for i, seed_bytes in enumerate((zipped.getvalue(), legacy.getvalue(), evil)):
        n = N_TORCH // 3
        out = _fuzz(tmp_path, seed_bytes, ".pt", n, seed=100 + i, header_end=min(len(seed_bytes), 512))
        for k, v in out.items():
            total[k] += v
    assert not marker.exists(), "a mutated pickle ran code"
    assert sum(total.values()) == N_TORCH // 3 * 3
    print(f"{N_TORCH} PyTorch-file mutations in {time.monotonic() - start:.1f} s: {total}")
