"""What the dock keeps per viewer, so it survives closing the dock: the fine-tune lifecycle
(and the memory of which image each labels layer came from).

One :class:`FineTuneSession` per viewer outlives the dock widget: closing the dock leaves the
run (and its history) here, reopening the dock reattaches to it, and closing napari stops the
training process within a few seconds (an event filter on the main window, and ``atexit``).
"""

from __future__ import annotations

import atexit
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, Signal

from napari_unet.errors import NapariUnetError
from napari_unet.training.runner import FineTuneRequest, FineTuneRunner

if TYPE_CHECKING:
    import napari

STOP_TIMEOUT = 5.0  # seconds the training process gets to save and exit when napari closes
_SESSIONS: dict[int, FineTuneSession] = {}


class FineTuneSession(QObject):
    """Start, follow and stop one fine-tune at a time; ``event`` re-emits the runner's events
    in the Qt main thread, and ``history`` keeps the current run's events for a reopened dock."""

    event = Signal(dict)
    _incoming = Signal(dict)  # from the runner's reader thread (queued into the main thread)

    def __init__(self) -> None:
        super().__init__()
        # what the dock remembers about labels layers (source image, last export), kept here so a
        # reopened dock still knows which image each labels layer belongs to
        self.results: dict[int, Any] = {}
        self.exports: dict[tuple[int, tuple[int, ...]], str] = {}
        self.runner: FineTuneRunner | None = None
        self.history: list[dict[str, Any]] = []
        self.last_done: dict[str, Any] | None = None
        self._incoming.connect(self._on_event)

    @property
    def active(self) -> bool:
        """A child exists that has not yet exited (Fine-tune stays disabled until it has)."""
        return self.runner is not None and not self.runner.exited

    @property
    def pid(self) -> int | None:
        proc = self.runner._proc if self.runner is not None else None
        return proc.pid if proc is not None else None

    def start(self, request: FineTuneRequest) -> None:
        """Start a run; raises NapariUnetError (e.g. the folder is locked by another process)."""
        if self.active:
            raise NapariUnetError(f"A fine-tune is already running (training process {self.pid}).")
        runner = FineTuneRunner(request, self._incoming.emit)
        runner.start()
        self.runner, self.history, self.last_done = runner, [], None

    def cancel(self) -> None:
        if self.runner is not None:
            self.runner.cancel()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the child now (best weights so far are saved if it manages within ``timeout``)."""
        if self.runner is not None:
            self.runner.stop(timeout)
            self.runner.wait(timeout)

    def _on_event(self, event: dict[str, Any]) -> None:
        self.history.append(event)
        if event.get("event") == "done":
            self.last_done = event
        self.event.emit(event)


class _CloseWatcher(QObject):
    """Stops a viewer's fine-tune when its main window closes."""

    def __init__(self, key: int, parent: QObject) -> None:
        super().__init__(parent)
        self.key = key

    def eventFilter(self, obj: QObject, ev: QEvent) -> bool:  # noqa: N802 - Qt API
        if ev.type() == QEvent.Type.Close:
            session = _SESSIONS.pop(self.key, None)
            if session is not None:
                session.stop()
        return False


def session_for(viewer: napari.Viewer) -> FineTuneSession:
    """The viewer's fine-tune session, created on first use."""
    key = id(viewer)
    if key not in _SESSIONS:
        _SESSIONS[key] = FineTuneSession()
        window = viewer.window._qt_window
        window.installEventFilter(_CloseWatcher(key, window))
    return _SESSIONS[key]


@atexit.register
def _stop_all() -> None:
    for session in list(_SESSIONS.values()):
        session.stop()
    _SESSIONS.clear()
