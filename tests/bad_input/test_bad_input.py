"""The bad-input matrix: every case from the hostile test pass gets one sentence (or correct
handling) through the CLI and the API, with no traceback and nothing lost or half-written."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tifffile
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from napari_unet import InputError, NapariUnetError, PostprocessConfig, predict
from napari_unet.cli.main import main
from napari_unet.errors import os_error_sentence
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.io.tiff import read_image
from napari_unet.models import load_model
from napari_unet.training.finetune import FineTuneOptions
from napari_unet.training.pairs import MANIFEST, export_pair
from napari_unet.training.runner import LOCK_NAME, FineTuneRequest, FineTuneRunner
from tests.helpers import SAMPLES, interruptible, make_tiny_model

FAST = ["--quiet", "--tile", "128", "--overlap", "16", "--device", "cpu"]


@pytest.fixture
def tiny_ckpt(tmp_path):
    return save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, ModelInfo(name="tiny"))


@pytest.fixture
def small_image(tmp_path, misc):
    path = tmp_path / "in" / "img.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, misc[:128, :128])
    return path


def run(argv, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr) and checks there's no traceback."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, out, err


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("napari-unet: error")]
    assert lines, err
    return lines[0]


# --- 2. outputs never overwrite silently ---------------------------------------------------------

def test_inputs_with_the_same_stem_are_refused_before_anything_runs(tmp_path, misc, tiny_ckpt, capsys):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        tifffile.imwrite(tmp_path / sub / "img.tif", misc[:64, :64])
    out = tmp_path / "out"
    code, _, err = run(["segment", tmp_path / "a/img.tif", tmp_path / "b/img.tif", "--out", out,
                        "--model", tiny_ckpt, *FAST], capsys)
    assert code == 1 and "would both be written to" in one_error_line(err)
    assert not out.exists() or not list(out.iterdir())


def test_existing_output_is_kept_unless_overwrite(tmp_path, small_image, tiny_ckpt, capsys):
    out = small_image.parent / "img_labels.tif"  # e.g. the user's ground truth
    tifffile.imwrite(out, np.full((128, 128), 7, np.uint32))
    before = out.read_bytes()
    code, _, err = run(["segment", small_image, "--out", small_image.parent, "--model", tiny_ckpt, *FAST], capsys)
    assert code == 1 and "already exists; pass --overwrite" in one_error_line(err)
    assert out.read_bytes() == before
    code, _, _ = run(["segment", small_image, "--out", small_image.parent, "--model", tiny_ckpt, "--overwrite",
                      *FAST], capsys)
    assert code == 0 and out.read_bytes() != before


def test_folders_are_expanded_and_labels_files_skipped(tmp_path, small_image, tiny_ckpt, capsys):
    tifffile.imwrite(small_image.parent / "img_labels.tif", np.ones((128, 128), np.uint32))
    tifffile.imwrite(small_image.parent / "other_masks.tif", np.ones((128, 128), np.uint32))
    out = tmp_path / "out"
    code, stdout, err = run(["segment", small_image.parent, "--out", out, "--model", tiny_ckpt, *FAST], capsys)
    assert code == 0, err
    assert "img_labels.tif: skipped" in err and "other_masks.tif: skipped" in err
    assert sorted(p.name for p in out.iterdir()) == ["img_labels.tif"]


def test_api_writer_never_overwrites(tmp_path):
    from napari_unet.io.tiff import write_tiff_atomic

    path = write_tiff_atomic(tmp_path / "x.tif", np.ones((8, 8), np.uint8))
    with pytest.raises(FileExistsError):
        write_tiff_atomic(path, np.zeros((8, 8), np.uint8))
    assert read_image(path).max() == 1
    assert not [p for p in tmp_path.iterdir() if p.name != "x.tif"]  # no temp file left behind


# --- 3. every number validated at the edge ---------------------------------------------------------

@pytest.mark.parametrize("argv, needle", [
    (["--threshold", "nan"], "--threshold: must be a finite number"),
    (["--threshold", "5"], "--threshold: must be between 0 and 1"),
    (["--seed-threshold", "-0.1"], "--seed-threshold: must be between 0 and 1"),
    (["--min-size", "-3"], "--min-size: must be at least 0"),
    (["--tile", "512.5"], "--tile: must be a whole number"),
    (["--tile", "abc"], "--tile: must be a number"),
    (["--overlap", "-1"], "--overlap: must be at least 0"),
    (["--batch-size", "0"], "--batch-size: must be between 1 and 1024"),
    (["--scale", "inf"], "--scale: must be a finite number"),
])
def test_segment_refuses_meaningless_numbers(argv, needle, small_image, capsys):
    code, _, err = run(["segment", small_image, "--out", small_image.parent, *argv], capsys)
    assert code == 2 and needle in one_error_line(err)
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["--time-limit", "0"], "--time-limit: must be above 0"),
    (["--batch-size", "0"], "--batch-size: must be between 1 and 1024"),
    (["--epochs", "0"], "--epochs: must be between 1 and 100000"),
    (["--val-fraction", "1.5"], "--val-fraction: must be between 0.05 and 0.9"),
    (["--nice", "40"], "--nice: must be between 0 and 19"),
])
def test_train_refuses_meaningless_numbers(argv, needle, tmp_path, capsys):
    code, _, err = run(["train", "--pairs", tmp_path, "--out", tmp_path / "m.safetensors", *argv], capsys)
    assert code == 2 and needle in one_error_line(err)


@pytest.mark.parametrize("kwargs, needle", [
    ({"tile": 512.5}, "tile must be a whole number"),
    ({"tile": 8}, "tile must be between 16"),
    ({"overlap": -4}, "overlap must be at least 0"),
    ({"batch_size": 0}, "batch size must be between 1"),
    ({"scale": float("nan")}, "scale must be a finite number"),
])
def test_api_predict_refuses_meaningless_numbers(kwargs, needle, tiny_model, misc):
    with pytest.raises(InputError, match=needle):
        predict(tiny_model, misc[:64, :64], **kwargs)


def test_api_postprocess_and_finetune_options_are_checked(tmp_path):
    for bad in ({"threshold": float("nan")}, {"threshold": 5}, {"seed_threshold": "0.5"}, {"min_size": -1}):
        with pytest.raises(InputError):
            PostprocessConfig(**bad)
    for bad in ({"time_limit": 0}, {"batch_size": 0}, {"epochs": 2.5}, {"epochs": 100001}, {"val_fraction": 1.0}):
        with pytest.raises(InputError):
            FineTuneOptions(pairs=tmp_path, out=tmp_path / "m.safetensors", **bad)


def test_image_too_large_for_memory_is_refused_up_front(tiny_model):
    huge = np.broadcast_to(np.uint16(5), (100_000, 100_000))  # 20 GB if it were real; costs nothing here
    start = time.monotonic()
    with pytest.raises(InputError, match="needs about .* GiB of memory but only"):
        predict(tiny_model, huge)
    assert time.monotonic() - start < 10


# --- checkpoints: bad files are refused at load, in one sentence ------------------------------------

def _ckpt_with(tmp_path, name, *, config=None, info=None, tensors=None):
    src = save_checkpoint(tmp_path / "src.safetensors", make_tiny_model().net, ModelInfo())
    with safe_open(str(src), framework="pt") as f:
        meta = dict(f.metadata())
    state = load_file(str(src))
    if config is not None:
        meta["config"] = config
    if info is not None:
        meta["info"] = info
    if tensors is not None:
        state = tensors(state)
    path = tmp_path / name
    save_file(state, str(path), metadata=meta)
    return path


def _nan_weights(state):
    state = dict(state)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 4)
    state[key] = torch.full_like(state[key], float("nan"))
    return state


@pytest.mark.parametrize("kind, needle", [
    ("nan", "NaN or infinite values"),
    ("huge", "more than the 1,000,000,000 napari-unet accepts"),
    ("info_list", "info must be a JSON object"),
    ("threshold_string", "threshold must be a number"),
    ("config_list", "config must be a JSON object"),
    ("empty_pt", "the checkpoint file is empty"),
    ("folder", "is not a file"),
])
def test_bad_checkpoints_get_one_sentence_from_cli_and_api(kind, needle, tmp_path, small_image, capsys):
    cfg = make_tiny_model().config.to_dict()
    if kind == "nan":
        path = _ckpt_with(tmp_path, "nan.safetensors", tensors=_nan_weights)
    elif kind == "huge":
        path = _ckpt_with(tmp_path, "huge.safetensors", config=json.dumps({**cfg, "base_width": 1_000_000}))
    elif kind == "info_list":
        path = _ckpt_with(tmp_path, "info.safetensors", info="[1, 2]")
    elif kind == "threshold_string":
        path = _ckpt_with(tmp_path, "thr.safetensors", info=json.dumps({"postprocess": {"threshold": "high"}}))
    elif kind == "config_list":
        path = _ckpt_with(tmp_path, "cfg.safetensors", config="[]")
    elif kind == "empty_pt":
        path = tmp_path / "empty.pt"
        path.write_bytes(b"")
    else:
        path = tmp_path / "a_folder.safetensors"
        path.mkdir()
    with pytest.raises(NapariUnetError, match=needle):
        load_model(path)
    code, _, err = run(["segment", small_image, "--out", tmp_path / "out", "--model", path, *FAST], capsys)
    assert code == 1 and needle in one_error_line(err) and str(path) in err
    assert not (tmp_path / "out" / "img_labels.tif").exists()


# --- 4. OS errors, Ctrl-C, broken pipes ----------------------------------------------------------------

def test_os_errors_become_sentences():
    import errno

    assert os_error_sentence(PermissionError(errno.EACCES, "Permission denied", "/x")) == "/x: permission denied."
    full = OSError(errno.ENOSPC, "No space left on device")
    assert os_error_sentence(full, "out.tif") == "out.tif: the disk is full."
    assert "is a folder" in os_error_sentence(IsADirectoryError(errno.EISDIR, "Is a directory", "/d"))


def test_unwritable_output_folder_is_refused_before_running(tmp_path, small_image, tiny_ckpt, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = run(["segment", small_image, "--out", blocker / "sub", "--model", tiny_ckpt, *FAST], capsys)
    assert code == 1 and "Cannot write to the output folder" in one_error_line(err) and "Nothing was segmented" in err
    code, _, err = run(["segment", small_image, "--out", blocker, "--model", tiny_ckpt, *FAST], capsys)
    assert code == 1 and "output folder is a file" in one_error_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_checkpoint(tmp_path, tiny_ckpt, capsys):
    tiny_ckpt.chmod(0)
    with pytest.raises(NapariUnetError, match="permission denied"):
        load_model(tiny_ckpt)


def test_train_checks_its_paths_before_training(tmp_path, misc, misc_labels, tiny_ckpt, capsys):
    pairs = tmp_path / "pairs"
    export_pair(pairs, misc[:256, :256], misc_labels[:256, :256])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    base = ["train", "--pairs", pairs, "--base", tiny_ckpt, "--epochs", "1"]
    cases = [
        (["--out", tmp_path], "--out is a folder"),
        (["--out", blocker / "m.safetensors"], "Cannot write to the output folder"),
        (["--out", tiny_ckpt], "already exists; pass --overwrite"),
    ]
    for extra, needle in cases:
        code, _, err = run([*base, *extra], capsys)
        assert code == 1 and needle in one_error_line(err), err
    (pairs / MANIFEST).write_text("[1, 2]")
    code, _, err = run([*base, "--out", tmp_path / "m.safetensors"], capsys)
    assert code == 1 and "pairs manifest is unreadable" in one_error_line(err)


def test_runner_reports_an_unlockable_pairs_folder_in_one_sentence(tmp_path, misc, misc_labels):
    pairs = tmp_path / "pairs"
    export_pair(pairs, misc[:256, :256], misc_labels[:256, :256])
    (pairs / LOCK_NAME).mkdir()  # a real OSError (IsADirectoryError) from the lock, even as root
    runner = FineTuneRunner(FineTuneRequest(pairs), lambda e: None)
    with pytest.raises(NapariUnetError, match="Cannot lock the pairs folder"):
        runner.start()
    assert not runner.running


def _wait_for(predicate, timeout=120):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_ctrl_c_during_segment_is_one_line_and_leaves_no_partial_file(tmp_path, u2os):
    big = tmp_path / "big.tif"
    tifffile.imwrite(big, np.tile(u2os, (2, 2)))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "napari_unet", "segment", big, "--out", out, "--tile", "256",
                             "--device", "cpu"], stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    buf = []

    def reader():
        for ch in iter(lambda: proc.stderr.read(1), ""):
            buf.append(ch)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert _wait_for(lambda: "tiles" in "".join(buf)), "".join(buf)  # progress bar: inference is running
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    t.join(10)
    err = "".join(buf)
    assert "Traceback" not in err and "Interrupted; 0 of 1 outputs written." in err
    assert not out.exists() or not list(out.iterdir())  # no half-written or temp file


def test_closed_stdout_does_not_stop_the_run(tmp_path, misc, tiny_ckpt):
    for i in range(3):
        tifffile.imwrite(tmp_path / f"im{i}.tif", misc[:96, :96])
    out = tmp_path / "out"
    cmd = (f"{sys.executable} -m napari_unet segment {tmp_path}/im0.tif {tmp_path}/im1.tif {tmp_path}/im2.tif "
           f"--out {out} --model {tiny_ckpt} {' '.join(FAST)} | head -n 1")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"im{i}_labels.tif" for i in range(3)]


# --- 5. input formats ---------------------------------------------------------------------------------

def test_lzw_compressed_tiff_is_read(tmp_path, misc, tiny_ckpt, capsys):
    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, misc, compression="lzw")  # needs imagecodecs, as Fiji writes it
    assert np.array_equal(read_image(path), misc)
    code, _, err = run(["segment", path, "--out", tmp_path / "o", "--model", tiny_ckpt, *FAST], capsys)
    assert code == 0, err


def test_two_channel_image_needs_and_accepts_a_channel(tmp_path, misc, tiny_ckpt, capsys):
    path = tmp_path / "two.tif"
    tifffile.imwrite(path, np.stack([misc[:256, :256], misc[:256, :256] // 2], axis=-1))
    code, _, err = run(["segment", path, "--out", tmp_path / "o", "--model", tiny_ckpt, *FAST], capsys)
    assert code == 1 and "2 channel(s) but the model expects 1; choose a channel" in one_error_line(err)
    code, _, err = run(["segment", path, "--out", tmp_path / "o", "--model", tiny_ckpt, "--channel", "0", *FAST],
                       capsys)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "o" / "two_labels.tif").shape == (256, 256)
    chw = tmp_path / "chw.tif"
    tifffile.imwrite(chw, np.stack([misc[:256, :256]] * 2))
    code, _, err = run(["segment", chw, "--out", tmp_path / "o", "--model", tiny_ckpt, "--channel-axis", "0",
                        "--channel", "1", *FAST], capsys)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "o" / "chw_labels.tif").shape == (256, 256)


def test_multi_series_tiff_needs_series(tmp_path, misc, tiny_ckpt, capsys):
    path = tmp_path / "multi.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(misc[:64, :64])
        tif.write(misc[:96, :80])
    code, _, err = run(["segment", path, "--out", tmp_path / "o", "--model", tiny_ckpt, *FAST], capsys)
    assert code == 1 and "holds 2 image series" in one_error_line(err) and "--series" in err
    code, _, err = run(["segment", path, "--out", tmp_path / "o", "--model", tiny_ckpt, "--series", "1", *FAST],
                       capsys)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "o" / "multi_labels.tif").shape == (96, 80)


def test_concurrent_reads_leave_tifffile_logging_working(caplog):
    threads = [threading.Thread(target=read_image, args=(SAMPLES / "nuclei_misc.tif",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger = logging.getLogger("tifffile")
    assert logger.level != logging.CRITICAL
    with caplog.at_level(logging.WARNING, logger="tifffile"):
        logger.warning("still heard")
    assert "still heard" in caplog.text


# --- 6. evaluate: linear, pooled, and suspicious of intensity images -----------------------------------

def test_evaluate_is_linear_and_pools_a_total(tmp_path, capsys):
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 2**31, (1024, 1024)).astype(np.uint32) for _ in range(2))  # a million objects each
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b)
    gt = SAMPLES / "nuclei_misc_labels.tif"
    start = time.monotonic()
    code, out, err = run(["evaluate", tmp_path / "a.tif", tmp_path / "b.tif", gt, gt], capsys)
    assert code == 0 and time.monotonic() - start < 60
    assert "TOTAL (pooled over all files)" in out and "precision" in out
    code, out, _ = run(["evaluate", tmp_path / "a.tif", tmp_path / "b.tif", gt, gt, "--json"], capsys)
    total = json.loads(out)["total"]
    assert total["files"] == 2 and total["n_true"] == 14 + len(np.unique(b)) - (b == 0).any()  # b is the truth


def test_evaluate_refuses_or_warns_about_intensity_images(tmp_path, capsys):
    gt = SAMPLES / "nuclei_misc_labels.tif"
    tifffile.imwrite(tmp_path / "float.tif", np.random.default_rng(0).random((512, 512), np.float32))
    code, _, err = run(["evaluate", tmp_path / "float.tif", gt], capsys)
    assert code == 1 and "labels must be integers" in one_error_line(err)
    code, _, err = run(["evaluate", SAMPLES / "nuclei_misc.tif", gt], capsys)
    assert code == 0 and "looks like an intensity image" in err
    code, _, err = run(["evaluate", gt, gt], capsys)
    assert "intensity" not in err


def _limit_file_size(limit: int):
    """A real write failure (EFBIG) past ``limit`` bytes, standing in for a full disk."""
    import resource

    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_sentence_and_leaves_nothing_half_written(tmp_path, misc, misc_labels, tiny_ckpt):
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, misc)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "napari_unet", "segment", image, "--out", out, "--model", tiny_ckpt,
                           *FAST], capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(256))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stdout
    assert "larger than the disk" in proc.stderr
    assert not out.exists()  # no label file, no temp file, and the output folder it created is gone

    pairs = tmp_path / "pairs"
    export_pair(pairs, misc[:256, :256], misc_labels[:256, :256])
    export_pair(pairs, misc[256:, 256:], misc_labels[256:, 256:])
    proc = subprocess.run([sys.executable, "-m", "napari_unet", "train", "--pairs", pairs, "--base", tiny_ckpt,
                           "--out", tmp_path / "m.safetensors", "--epochs", "1", "--steps-per-epoch", "1",
                           "--device", "cpu", "--json"],
                          capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(4096))
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1 and events[-1]["event"] == "error", proc.stderr
    assert "larger than the disk" in events[-1]["message"] and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.safetensors").exists()

    script = ("import numpy as np, sys; from napari_unet.training.pairs import export_pair\n"
              "from napari_unet import NapariUnetError\n"
              "noise = np.random.default_rng(0).integers(0, 65535, (512, 512)).astype(np.uint16)\n"
              f"try: export_pair({str(pairs)!r}, noise, np.ones((512, 512), np.uint32))\n"
              "except NapariUnetError as e: print(e); sys.exit(1)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          preexec_fn=_limit_file_size(16384))
    assert proc.returncode == 1 and "Could not save the training pair" in proc.stdout, proc.stderr
    assert len(read_pairs_names(pairs)) == 2  # the manifest still lists exactly the two good pairs
    assert len(list((pairs / "images").iterdir())) == 2  # and no temp file was left behind


def read_pairs_names(folder):
    return [e["name"] for e in json.loads((folder / MANIFEST).read_text())["pairs"]]
