"""One background job of a dock section: its thread worker, Cancel, progress bar and Run/Cancel
buttons. Segment (in memory) and the block-by-block run both start their work through it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from magicgui.widgets import ProgressBar, PushButton
from napari.qt.threading import create_worker
from qtpy.QtCore import QObject, Signal

Work = Callable[[Callable[[], bool], Callable[[int, int], None]], Any]  # work(cancelled, progress) -> result


class Job(QObject):
    """At most one running job; ``tick`` carries progress from the worker thread into the main thread."""

    tick = Signal(int, int)

    def __init__(self, run_btn: PushButton, cancel_btn: PushButton, progress: ProgressBar,
                 on_error: Callable[[Exception], None], on_finished: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.run_btn, self.cancel_btn, self.progress = run_btn, cancel_btn, progress
        self.on_error, self.on_finished = on_error, on_finished
        self.worker: Any = None
        self.target: Any = None  # what the running job works on (e.g. the image layer)
        self.cancelled = threading.Event()
        self.tick.connect(self._on_progress)
        cancel_btn.changed.connect(self.cancel)

    def start(self, work: Work, on_result: Callable[[Any], None], target: Any = None) -> None:
        """Run ``work(cancelled, progress)`` in a thread worker; ``on_result`` gets what it returns
        (in the main thread). Errors go to ``on_error``; the buttons follow the job."""
        self.cancelled = cancelled = threading.Event()
        self.target = target
        self.run_btn.enabled, self.cancel_btn.enabled = False, True
        self.progress.max, self.progress.value = 1, 0
        self.worker = create_worker(work, cancelled.is_set, self.tick.emit, _ignore_errors=True)
        self.worker.returned.connect(on_result)
        self.worker.errored.connect(self.on_error)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def cancel(self, *_: Any) -> None:
        self.cancelled.set()

    def _on_progress(self, done: int, total: int) -> None:
        if self.worker is not None and not self.cancelled.is_set():  # after a cancel the widgets may be gone
            self.progress.max, self.progress.value = max(1, total), done

    def _finished(self) -> None:
        self.worker, self.target = None, None
        try:
            self.run_btn.enabled, self.cancel_btn.enabled = True, False
        except RuntimeError:  # napari was closed meanwhile: the buttons are gone
            pass
        if self.on_finished is not None:
            self.on_finished()
