"""The dock: the sections in collapsible boxes inside one scroll area, and a status line.

Native Qt only where magicgui has no equivalent: the scroll area, the collapsible sections
(superqt) and the pyqtgraph plot. Settings and the pairs folder are remembered (``state.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from magicgui.widgets import PushButton
from qtpy.QtCore import QEvent, QSize, Qt
from qtpy.QtWidgets import QFrame, QLabel, QMessageBox, QScrollArea, QVBoxLayout, QWidget
from superqt import QCollapsible

from .corrections import CorrectionsSection
from .finetune import FinetuneSection
from .model import ModelSection, warm_labels_layer
from .segment import SegmentSection
from .state import State

if TYPE_CHECKING:
    import napari

WIDTH = 380  # preferred dock width: the canvas keeps most of a laptop's screen


def _section(title: str, *widgets: QWidget, expanded: bool = True) -> QCollapsible:
    box = QCollapsible(title)
    box.setDuration(0)
    for w in widgets:
        box.addWidget(w)
    box.expand(animate=False) if expanded else box.collapse(animate=False)
    return box


class UNetWidget(QWidget):
    """Model → Segment → Corrections → Fine-tune, for one napari viewer."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        # napari hands plugins a public-only proxy; the widget needs the layers themselves
        # (identity: which image a labels layer came from) and the main window (closing napari)
        self.viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        self.state = state = State(self.viewer)
        self.models = ModelSection(state)
        self.seg = SegmentSection(state)
        self.corrections = CorrectionsSection(state, self.seg.writer)
        self.ft = FinetuneSection(state, self.models, self.seg.device)
        self.restore_btn = PushButton(text="Restore defaults", tooltip=(
            "Put every option back to its default (post-processing: the model's own values). "
            "The pairs folder is kept."))
        self.restore_btn.changed.connect(self.restore_defaults)

        self.advanced = _section("Advanced (tile, overlap, batch, device)", self.seg.advanced.native, expanded=False)
        body = QWidget()
        column = QVBoxLayout(body)
        column.setContentsMargins(2, 2, 2, 2)
        self.sections = {
            "Model": _section("Model", self.models.main.native),
            "Segment": _section("Segment", self.seg.main.native, self.advanced),
            "Corrections": _section("Corrections", self.corrections.main.native),
            "Fine-tune": _section("Fine-tune", self.ft.top.native, self.ft.plot, self.ft.bottom.native),
        }
        for box in self.sections.values():
            column.addWidget(box)
        column.addWidget(self.restore_btn.native)
        column.addStretch(1)
        self.scroll = QScrollArea()
        self.scroll.setWidget(body)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.PlainText)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.status)
        state.message.connect(self.status.setText)

        self._load_settings()
        for w in (*[getattr(self.seg, k) for k in ("tile", "overlap", "batch", "device", "scale")],
                  self.ft.time_budget, self.ft.epochs):
            w.changed.connect(self._save_settings)
        state.model_changed.connect(self.warm)
        self.seg.device.changed.connect(self.warm)
        saved = state.settings.get("model")
        if not (saved and self.models.select(saved, quiet=True)):
            self.models.select(None, quiet=True)
        self.reset_choices()
        warm_labels_layer()

    # -- napari calls this when layers are added, removed, reordered or renamed ------------
    def reset_choices(self, *_: Any) -> None:
        for container in (self.seg.main, self.corrections.main):
            container.reset_choices()
        self.corrections._follow_labels()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(WIDTH, 700)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(WIDTH - 60, 260)

    # -- settings ----------------------------------------------------------------------------
    def _load_settings(self) -> None:
        saved = self.state.settings
        self.seg.apply_settings(saved.get("segment", {}))
        self.ft.apply_settings(saved.get("finetune", {}))

    def _save_settings(self, *_: Any) -> None:
        self.state.settings["segment"] = self.seg.settings()
        self.state.remember("finetune", self.ft.settings())

    def restore_defaults(self, *_: Any) -> None:
        self.seg.restore_defaults()
        self.ft.apply_settings({"time_budget": 120, "epochs": 30})
        self._save_settings()
        self.state.message.emit("Options restored to their defaults.")

    def warm(self, *_: Any) -> None:
        """Prepare the model for inference in the background, so the first click is fast."""
        self.models.warm(self.seg.tile.value, self.seg.device.value)

    # -- closing the dock -----------------------------------------------------------------------
    def event(self, ev: QEvent) -> bool:
        if ev.type() == QEvent.Type.ParentChange and self.parent() is None:
            self._closed()
        return super().event(ev)

    def _closed(self) -> None:
        """napari removed the dock: stop our segmentation; the fine-tune belongs to the viewer,
        so ask whether it keeps running (reopen the panel to follow it) or stops now."""
        self.seg.cancel()
        self.ft.detach()
        if not self.ft.session.active:
            return
        answer = QMessageBox.question(
            None, "Fine-tuning is running",
            "A fine-tune is running. Keep it running in the background (reopen the U-Net panel to follow it), "
            "or stop it now (the best weights so far are kept)?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        if answer == QMessageBox.StandardButton.Yes:
            return
        self.ft.session.cancel()
