"""Fine-tune: start/cancel a background run of the viewer's session, show its curves and verdict."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, Label, PushButton, SpinBox
from napari.utils.theme import get_theme

from napari_unet._widget.model import ModelSection
from napari_unet._widget.plot import TrainingPlot
from napari_unet._widget.session import session_for
from napari_unet._widget.state import State, ui_threads
from napari_unet.errors import NapariUnetError
from napari_unet.training.pairs import count_pairs
from napari_unet.training.runner import FineTuneRequest
from napari_unet.training.verdict import units_text

DEFAULTS = {"time_budget": 120, "epochs": 30}


class FinetuneSection:
    """Controls for one fine-tune; the run itself belongs to the viewer (``session_for``)."""

    def __init__(self, state: State, models: ModelSection, device: Any, resegment: Callable[[], None]) -> None:
        self.state, self.models, self.device, self.resegment = state, models, device, resegment
        self.session = session_for(state.viewer)
        self.extra_args: tuple[str, ...] = ()  # extra ``napari-unet train`` options (tests use tiny runs)
        self.base = Label(value="")
        self.time_budget = SpinBox(label="time (s)", min=10, max=24 * 3600, step=30, tooltip=(
            "Stop training after this many seconds (the best weights so far are kept)."))
        self.epochs = SpinBox(label="epochs", min=1, max=10000, step=5, tooltip=(
            "At most this many passes; each ends with a score on the held-out validation pairs."))
        self.start_btn = PushButton(text="Fine-tune", tooltip=(
            "Train a copy of the model in use on the pairs folder, in a separate process; napari stays usable."))
        self.cancel_btn = PushButton(text="Cancel", enabled=False, tooltip=(
            "Stop training after the current step; the best weights so far are kept."))
        self.status = Label(value="")
        self.use_btn = PushButton(text="Use new model", enabled=False, tooltip=(
            "Switch to the fine-tuned model and segment the image again."))
        buttons = Container(widgets=[self.start_btn, self.cancel_btn], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        theme = get_theme(state.viewer.theme)
        self.plot = TrainingPlot(theme.canvas.as_hex(), theme.text.as_hex())
        self.top = Container(widgets=[self.base, self.time_budget, self.epochs, buttons])
        self.bottom = Container(widgets=[self.status, self.use_btn])
        self.apply_settings(DEFAULTS)
        self.start_btn.changed.connect(self.start)
        self.cancel_btn.changed.connect(lambda *_: self.cancel())
        self.use_btn.changed.connect(self.use_new_model)
        self.session.event.connect(self._on_event)
        state.model_changed.connect(self._show_base)
        self.replay()

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k).value for k in DEFAULTS}

    def apply_settings(self, values: dict[str, Any]) -> None:
        for k, v in values.items():
            if k in DEFAULTS and isinstance(v, int):
                getattr(self, k).value = v

    def _show_base(self) -> None:
        model = self.state.model
        self.base.value = f"starts from: {model.info.name}" if model else ""

    def replay(self) -> None:
        """Show the session's run as if this dock had been open all along (reopened dock)."""
        self.plot.clear()
        for event in self.session.history:
            self._on_event(event)
        self._set_running(self.session.active)

    def _set_running(self, running: bool) -> None:
        self.start_btn.enabled, self.cancel_btn.enabled = not running, running

    def start(self, *_: Any) -> None:
        pairs = self.state.pairs_dir
        if self.session.active:
            return self.state.error(f"A fine-tune is already running (training process {self.session.pid}).")
        if count_pairs(pairs) == 0:
            return self.state.error(f"The pairs folder {pairs} has no pairs yet; export corrections first.")
        request = FineTuneRequest(pairs, base=self.state.model_path, epochs=self.epochs.value,
                                  time_limit=float(self.time_budget.value), device=self.device.value,
                                  threads=ui_threads(), extra_args=self.extra_args)
        try:
            self.session.start(request)
        except NapariUnetError as exc:
            return self.state.error(str(exc))
        self.plot.clear()
        self.use_btn.enabled = False
        self._set_running(True)
        self.status.value = "Fine-tuning started in the background; you can keep working."
        self.state.message.emit("")

    def cancel(self) -> None:
        if self.session.active:
            self.session.cancel()
            self.status.value = "Stopping after the current step; the best weights so far are kept…"

    def detach(self) -> None:
        """The dock is gone: stop following the session (the session itself lives on)."""
        try:
            self.session.event.disconnect(self._on_event)
        except (TypeError, RuntimeError):
            pass  # already disconnected

    def _on_event(self, event: dict[str, Any]) -> None:
        try:
            self._show(event)
        except RuntimeError:  # napari deleted the dock's widgets (e.g. the window closed)
            self.detach()

    def _show(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "start":
            skipped = event.get("pairs_skipped") or []
            note = f", {len(skipped)} skipped" if skipped else ""
            self.status.value = (f"Training on {len(event['pairs_used'])} pair(s){note} on {event['device']}; "
                                 "scoring the current model first…")
        elif kind == "loss":  # between validations (each half epoch): the train-loss curve moves on
            self.plot.add(event)
            self.status.value = (f"epoch {event['epoch']:g}: train loss {event['train_loss']:.3f}, "
                                 f"{event['elapsed']:.0f} s, about {event.get('eta') or 0:.0f} s left")
        elif kind == "progress":
            self.plot.add(event)
            if event["epoch"] > 0:
                self.status.value = (f"epoch {event['epoch']}: validation F1 {event['val_f1']:.3f}, "
                                     f"{event['elapsed']:.0f} s, about {event.get('eta') or 0:.0f} s left")
        elif kind == "done":
            self._done(event)
        elif kind == "error":
            self.status.value = event["message"]
        elif kind == "exited":
            self._set_running(False)  # only now: the child has ended and released the folder
            self.models.refresh()

    def _done(self, event: dict[str, Any]) -> None:
        before, after = event["base_f1"], event["f1"]
        scores = (f"validation F1 {before:.3f} → {after:.3f} on {event.get('validation_pairs', '?')} pair(s), "
                  f"{units_text(event.get('validation_objects', 0), event.get('validation_regions') or 0)}")
        if event.get("verdict"):  # the change ± its uncertainty, and why not when not better
            scores += f"; {event['verdict']}"
        name = self.models.name_of(Path(event["path"]))  # a version's readable name, else the file's
        cancelled = self.session.runner is not None and self.session.runner.cancelled
        if event.get("improved"):
            prefix = f"Cancelled (best weights kept: {name}); " if cancelled else f"New model {name} is better: "
            self.status.value = prefix + scores + ". Click 'Use new model' to switch."
            self.use_btn.enabled = True
        else:
            how = "Cancelled before any improvement" if cancelled else "The new model is not better"
            self.status.value = (f"{how} ({scores}); keeping the current model. The run was moved to "
                                 "models/rejected/ and is not offered as a version.")

    def use_new_model(self, *_: Any) -> None:
        done = self.session.last_done
        if done and done.get("improved") and self.models.select(done["path"]):
            self.use_btn.enabled = False
            self.status.value = f"Now using {self.models.name_of(Path(done['path']))}."
            self.resegment()
