"""Run fine-tuning in a separate process and stream its JSON events to a callback.

The child is ``python -m napari_unet train --json``: its memory (GPU memory included) lives and
dies with it, and the caller's process (napari) never imports the training loop. One fine-tune
per pairs folder at a time: the runner holds an ``flock`` on a file in the folder for the whole
run (``napari-unet train`` run by hand takes the same lock), released by the kernel if its
holder dies, so a crash never leaves it stuck; the lock file names the training child's PID.
A run into the default models folder that is not better than its base is moved to
``models/rejected/``; after the child has ended the callback gets a last ``exited`` event.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from napari_unet.errors import NapariUnetError, os_error_sentence
from napari_unet.io.locking import try_lock
from napari_unet.training.versions import models_dir_for, new_version_path

LOCK_NAME = ".napari-unet-train.lock"
REJECTED = "rejected"  # subfolder of the models folder for runs that were not better than their base
EventFn = Callable[[dict[str, Any]], None]


class FineTuneBusy(NapariUnetError):
    """Another fine-tune is already running on this pairs folder."""


class FolderLock:
    """An exclusive lock (:func:`locking.try_lock`) on a file in the pairs folder, held for a whole run.

    The kernel drops the lock when its holder dies, so a crashed run never leaves it stuck;
    the file keeps the holder's PID only to name it in the message.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> None:
        try:
            f = open(self.path, "a+")
        except OSError as exc:
            raise NapariUnetError(
                f"Cannot lock the pairs folder for fine-tuning: {os_error_sentence(exc, self.path.parent)}"
            ) from None
        if not try_lock(f.fileno()):
            try:
                f.seek(0)
                holder = f.read().strip() or "unknown"
            except OSError:  # Windows: the holder's locked byte cannot be read
                holder = "unknown"
            f.close()
            raise FineTuneBusy(f"A fine-tune is already running on {self.path.parent} (process {holder}).")
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f

    def set_holder(self, pid: int) -> None:
        """Name the process that does the work (the training child, not napari) in the lock file."""
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.write(f"{pid}\n")
            self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the lock
            self._file = None


@dataclass
class FineTuneRequest:
    pairs: Path
    base: Path | None = None
    out: Path | None = None  # default: a new version in models/ beside the pairs folder
    epochs: int = 30
    time_limit: float | None = None
    device: str = "auto"
    threads: int | None = None
    nice: int = 10  # background training yields the CPU to the UI
    extra_args: tuple[str, ...] = ()


class FineTuneRunner:
    """Start, watch and cancel one background fine-tune; events go to ``on_event`` (from a thread)."""

    def __init__(self, request: FineTuneRequest, on_event: EventFn) -> None:
        self.request = request
        self.on_event = on_event
        pairs = Path(request.pairs)
        base_name = Path(request.base).stem if request.base else "nuclei_default"
        self.out = Path(request.out) if request.out else new_version_path(models_dir_for(pairs), base_name)
        self._lock = FolderLock(pairs)
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=30)
        self.final_event: dict[str, Any] | None = None
        self.cancelled = False
        self.started = False  # the child reported its start event
        self.exited = False  # the child has ended, its lock is released and every event was delivered
        self._stderr_thread: threading.Thread | None = None

    def command(self) -> list[str]:
        r = self.request
        cmd = [sys.executable, "-m", "napari_unet", "train", "--json", "--no-lock", "--pairs", str(r.pairs),
               "--out", str(self.out), "--epochs", str(r.epochs), "--device", r.device]
        if r.base:
            cmd += ["--base", str(r.base)]
        if r.time_limit is not None:  # 0 must reach the child and be refused, not mean "no limit"
            cmd += ["--time-limit", str(r.time_limit)]
        if r.threads:
            cmd += ["--threads", str(r.threads)]
        if r.nice and not hasattr(os, "setpriority"):  # else the parent lowers it at once (start)
            cmd += ["--nice", str(r.nice)]
        return cmd + list(r.extra_args)

    def start(self) -> None:
        """Lock the pairs folder and start the child; raises FineTuneBusy if one is running."""
        if not Path(self.request.pairs).is_dir():
            raise NapariUnetError(f"{self.request.pairs}: no such pairs folder.")
        self._lock.acquire()
        env = dict(os.environ, PYTHONUNBUFFERED="1", NAPARI_UNET_PARENT_PID=str(os.getpid()))
        if self.request.threads:
            env["OMP_NUM_THREADS"] = str(self.request.threads)
        try:
            self._proc = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self._lock.release()
            raise NapariUnetError(f"Could not start the fine-tuning process ({exc}).") from None
        self._lock.set_holder(self._proc.pid)
        if self.request.nice and hasattr(os, "setpriority"):
            try:  # from its first moment (its imports are CPU-heavy), not only once training starts
                os.setpriority(os.PRIO_PROCESS, self._proc.pid, os.getpriority(os.PRIO_PROCESS, 0) + self.request.nice)
            except OSError:
                pass
        self._stderr_thread = threading.Thread(target=self._read_stderr, daemon=True)
        self._stderr_thread.start()
        self._thread = threading.Thread(target=self._read_stdout, daemon=True)
        self._thread.start()

    def _read_stderr(self) -> None:
        assert self._proc and self._proc.stderr
        for line in self._proc.stderr:
            if line.strip():
                self._stderr.append(line.rstrip())

    def _read_stdout(self) -> None:
        assert self._proc and self._proc.stdout
        try:
            for line in self._proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(event, dict) or "event" not in event:
                    continue
                if event["event"] == "start":
                    self.started = True
                if event["event"] == "done" and not event.get("improved") and self.request.out is None:
                    event = self._reject(event)
                if event["event"] in ("done", "error"):
                    self.final_event = event
                self._deliver(event)
            code = self._proc.wait()
            if self._stderr_thread is not None:
                self._stderr_thread.join(5)
            if self.final_event is None:
                last = self._stderr[-1] if self._stderr else ""
                if self.cancelled and not self.started:
                    how = "was cancelled before training began"
                elif self.cancelled:
                    how = f"was stopped (exit code {code})"
                else:
                    how = f"crashed (exit code {code})"
                message = f"The fine-tuning process {how}." + (f" Last error: {last}" if last else "")
                event = {"event": "error", "message": message, "returncode": code, "cancelled": self.cancelled,
                         "stderr_tail": list(self._stderr)[-10:]}
                self.final_event = event
                self._deliver(event)
        finally:
            self._lock.release()
            self.exited = True
            self._deliver({"event": "exited", "returncode": self._proc.poll(), "cancelled": self.cancelled})

    def _reject(self, event: dict[str, Any]) -> dict[str, Any]:
        """A run that is not better than its base is no usable version: move it to ``rejected/``."""
        rejected = self.out.parent / REJECTED
        moved = {}
        for key in ("path", "latest_path"):
            src = Path(event.get(key) or "")
            if src.is_file():
                rejected.mkdir(exist_ok=True)
                dst = rejected / src.name
                os.replace(src, dst)
                moved[key] = str(dst)
        return {**event, **moved, "rejected": True}

    def _deliver(self, event: dict[str, Any]) -> None:
        try:
            self.on_event(event)
        except Exception:  # noqa: BLE001 - a broken callback must not kill the reader
            pass

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def cancel(self, grace: float = 30.0) -> None:
        """Ask the child to stop (SIGTERM: it saves and reports ``done``); kill it after ``grace`` s."""
        if not self.running:
            return
        self.cancelled = True
        assert self._proc is not None
        self._proc.send_signal(signal.SIGTERM)
        threading.Thread(target=self._kill_after, args=(grace,), daemon=True).start()

    def _kill_after(self, grace: float) -> None:
        assert self._proc is not None
        try:
            self._proc.wait(grace)
        except subprocess.TimeoutExpired:
            self._proc.kill()

    def stop(self, timeout: float = 5.0) -> None:
        """Cancel and wait at most ``timeout`` s for the child to end; kill it if it has not."""
        if self._proc is None:
            return
        self.cancel(grace=timeout)
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the child has ended and every event was delivered; returns the final event."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.final_event
