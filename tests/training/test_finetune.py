"""Fine-tuning: the train command's JSON events, the background runner, cancel, crash, lock, versions."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from napari_unet import load_model
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.training.pairs import export_pair
from napari_unet.training.runner import LOCK_NAME, FineTuneBusy, FineTuneRequest, FineTuneRunner, FolderLock
from napari_unet.training.versions import list_versions, models_dir_for
from tests.helpers import make_tiny_model

FAST = ("--steps-per-epoch", "2", "--batch-size", "2", "--threads", "1")


@pytest.fixture
def pairs_dir(tmp_path, misc, misc_labels):
    folder = tmp_path / "pairs"
    export_pair(folder, misc[:256, :256], misc_labels[:256, :256], source="misc.tif")
    export_pair(folder, misc[256:, 256:], misc_labels[256:, 256:], source="misc.tif")
    return folder


@pytest.fixture
def tiny_ckpt(tmp_path):
    return save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, ModelInfo(name="tiny"))


def test_train_command_streams_json_and_gates(tmp_path, pairs_dir, tiny_ckpt):
    out = tmp_path / "models" / "ft.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet", "train", "--pairs", str(pairs_dir), "--base", str(tiny_ckpt),
         "--out", str(out), "--epochs", "2", "--device", "cpu", "--json", *FAST],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done"
    assert kinds.count("progress") == 3 and "checkpoint" in kinds  # epoch 0 (the base model's score), 1, 2
    assert [e["epoch"] for e in events if e["event"] == "loss"] == [0.5, 1.5]  # train loss between validations
    start, done = events[0], events[-1]
    assert len(start["pairs_used"]) == 2 and start["device"] == "cpu"
    base_point = next(e for e in events if e["event"] == "progress")
    assert base_point["epoch"] == 0 and base_point["val_f1"] == pytest.approx(done["base_f1"], abs=0.02)
    assert done["validation_pairs"] >= 1 and done["validation_objects"] > 0 and done["verdict"]
    progress = next(e for e in events if e["event"] == "progress" and e["epoch"] == 1)
    assert {"epoch", "step", "train_loss", "val_loss", "val_f1", "elapsed", "eta"} <= set(progress)
    sure = done["delta_f1"] > 0 and done["no_gain_share"] <= 0.05 and done["validation_objects"] >= 5
    assert done["improved"] == (sure and done["replay_f1"] >= done["replay_base_f1"] - 0.02)
    model = load_model(out)
    assert model.info.provenance["base_model"] == "tiny"
    assert model.info.provenance["base_validation_f1"] == round(done["base_f1"], 4)
    assert load_model(tiny_ckpt).info.name == "tiny"  # base untouched


def test_train_command_reports_bad_pairs_folder(tmp_path, tiny_ckpt):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet", "train", "--pairs", str(tmp_path / "empty"), "--base",
         str(tiny_ckpt), "--out", str(tmp_path / "o.safetensors"), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    event = json.loads(proc.stdout.splitlines()[-1])
    assert event["event"] == "error" and "No usable training pairs" in event["message"]


def _run(request):
    events, got_progress = [], threading.Event()

    def on_event(e):
        events.append(e)
        if e["event"] == "progress":
            got_progress.set()

    runner = FineTuneRunner(request, on_event)
    return runner, events, got_progress


def test_runner_streams_events_and_cancel_leaves_loadable_checkpoint(pairs_dir, tiny_ckpt):
    request = FineTuneRequest(pairs_dir, base=tiny_ckpt, epochs=500, device="cpu", extra_args=FAST)
    runner, events, got_progress = _run(request)
    assert runner.out.parent == models_dir_for(pairs_dir)
    runner.start()
    assert (pairs_dir / LOCK_NAME).exists()
    with pytest.raises(FineTuneBusy):
        FineTuneRunner(request, lambda e: None).start()
    assert got_progress.wait(120)
    runner.cancel()
    final = runner.wait(120)
    assert final["event"] == "done" and final["stopped_early"]
    assert final["epochs"] < 500
    assert load_model(final["path"]).config == make_tiny_model().config
    assert events[-1]["event"] == "exited" and events[-1]["cancelled"]  # after the lock was released
    lock = FolderLock(pairs_dir)
    lock.acquire()  # released by the runner
    lock.release()
    versions = list_versions(runner.out.parent)
    if final["improved"]:
        assert [v.path for v in versions] == [runner.out]
        assert versions[0].base == "tiny" and versions[0].f1_after is not None and versions[0].val_pairs == 1
    else:  # not better than its base: kept aside, not offered as a version
        assert versions == [] and Path(final["path"]) == runner.out.parent / "rejected" / runner.out.name


def test_runner_reports_a_crashed_child(pairs_dir, tiny_ckpt):
    runner, events, got_progress = _run(
        FineTuneRequest(pairs_dir, base=tiny_ckpt, epochs=500, device="cpu", extra_args=FAST))
    runner.start()
    assert got_progress.wait(120)
    os.killpg(runner._proc.pid, signal.SIGKILL)  # like the OOM killer
    final = runner.wait(60)
    assert final["event"] == "error" and "crashed (exit code -9)" in final["message"]
    assert load_model(runner.out)  # the last good checkpoint survives
    runner2, events2, _ = _run(FineTuneRequest(pairs_dir, base=tiny_ckpt, extra_args=("--bogus-flag",)))
    runner2.start()
    final2 = runner2.wait(60)
    assert final2["event"] == "error" and "exit code 2" in final2["message"] and "bogus" in final2["message"]


def test_lock_of_a_killed_holder_is_free_and_a_live_one_is_not(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from napari_unet.training.runner import FolderLock; "
         f"lock = FolderLock({str(tmp_path)!r}); lock.acquire(); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(FineTuneBusy, match=f"process {holder.pid}"):
        FolderLock(tmp_path).acquire()
    holder.kill()  # a crash: the kernel releases the lock
    holder.wait()
    lock = FolderLock(tmp_path)
    lock.acquire()
    assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())
    lock.release()


def test_finetuning_the_shipped_model_helps_on_a_new_kind_of_image(tmp_path, u2os, u2os_labels):
    """Inverted contrast: the shipped model fails; a short fine-tune on one real crop fixes much of it.

    The defaults (lr 2.5e-4, L2-SP 1.0) are chosen for the mild shifts of the review loop and keep
    the model near the base: in 40 (or 100) steps they do not learn inverted contrast at all, so this
    check of the training machinery takes the larger step without the pull."""
    from napari_unet.training.finetune import FineTuneOptions, run_finetune

    crop = (slice(0, 384), slice(0, 384))
    image = (u2os.max() - u2os)[crop]
    export_pair(tmp_path / "pairs", image, u2os_labels[crop])
    events = []
    done = run_finetune(
        FineTuneOptions(pairs=tmp_path / "pairs", out=tmp_path / "ft.safetensors", epochs=2, device="cpu",
                        steps_per_epoch=20, batch_size=4, crop_size=160, lr=5e-4, l2sp=0.0),
        events.append,
    )
    progress = [e for e in events if e["event"] == "progress" and e["epoch"] >= 1]  # epoch 0: the base score
    assert progress[-1]["train_loss"] < progress[0]["train_loss"]
    assert done["f1"] > done["base_f1"] + 0.1, done["verdict"]  # it learns the new kind (held-out objects)
    # and is offered only if the gain shows in 95% of resamples and it kept the original domain (replay F1 within 0.02)
    sure = done["delta_f1"] > 0 and done["no_gain_share"] <= 0.05 and done["validation_objects"] >= 5
    assert done["improved"] == (sure and done["replay_f1"] >= done["replay_base_f1"] - 0.02), done["verdict"]


def test_train_killed_at_any_moment_leaves_a_loadable_checkpoint_or_none(tmp_path, pairs_dir, tiny_ckpt):
    out = tmp_path / "models" / "ft.safetensors"
    cmd = [sys.executable, "-m", "napari_unet", "train", "--pairs", str(pairs_dir), "--base", str(tiny_ckpt),
           "--out", str(out), "--epochs", "50", "--device", "cpu", "--json", "--overwrite", *FAST]
    moments = []
    for wait_events in (0, 1, 3, 6):  # after start, first checkpoint (epoch 0), and mid-training
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        seen = 0
        for line in proc.stdout:
            if seen >= wait_events:
                break
            seen += json.loads(line)["event"] in ("start", "checkpoint", "progress")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        moments.append(seen)
        if out.exists():  # the best checkpoint on disk is always complete
            assert load_model(out).info.provenance["base_model"] == "tiny"
        lock = FolderLock(pairs_dir)  # the kernel released the killed run's lock
        lock.acquire()
        lock.release()
    assert out.exists() and moments[-1] == 6


def test_child_stops_when_its_parent_is_killed(pairs_dir, tiny_ckpt):
    """napari killed outright (no atexit): the training child notices within a step and ends."""
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, threading\n"
         "from napari_unet.training.runner import FineTuneRequest, FineTuneRunner\n"
         "started = threading.Event()\n"
         f"r = FineTuneRunner(FineTuneRequest({str(pairs_dir)!r}, base={str(tiny_ckpt)!r}, device='cpu', "
         "time_limit=600, extra_args=('--steps-per-epoch', '100000', '--batch-size', '2')), "
         "lambda e: started.set() if e['event'] == 'progress' else None)\n"
         "r.start(); started.wait(120); print(r._proc.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    child = int(parent.stdout.readline())  # the child has scored the base model and is training
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.kill(child, signal.SIGKILL)
        pytest.fail("the training child outlived its killed parent by 30 s")


def test_train_command_prints_the_base_score_first(tmp_path, pairs_dir, tiny_ckpt):
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet", "train", "--pairs", str(pairs_dir), "--base", str(tiny_ckpt),
         "--out", str(tmp_path / "o.safetensors"), "--epochs", "1", "--device", "cpu", *FAST],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("epoch 0: train loss nan") and lines[1].startswith("epoch 0.5: train loss ")
    assert lines[2].startswith("epoch 1: train loss ")  # the half-epoch line has the train loss only
