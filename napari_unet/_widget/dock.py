"""The dock: the sections in collapsible boxes inside one scroll area, and a status line.

Native Qt only where magicgui has no equivalent: the scroll area, the collapsible sections
(superqt) and the pyqtgraph plot. Settings and the pairs folder are remembered (``state.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from magicgui.widgets import PushButton
from qtpy.QtCore import QEvent, QSize, Qt, QTimer
from qtpy.QtWidgets import (
    QFrame,
    QLabel,
    QMessageBox,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widget.batch import BatchSection
from napari_unet._widget.corrections import CorrectionsSection
from napari_unet._widget.finetune import FinetuneSection
from napari_unet._widget.fit import fit_width
from napari_unet._widget.model import ModelSection, warm_labels_layer
from napari_unet._widget.review import ReviewSection
from napari_unet._widget.segment import SegmentSection
from napari_unet._widget.state import State

if TYPE_CHECKING:
    import napari

SECTION_TIPS = {
    "Model": "Which model segments: the shipped one, your fine-tuned versions or a file; export it to bioimage.io.",
    "Segment": "Run the model on an image: stain, channel, scale and post-processing; undo and the measurement table.",
    "Corrections": "Correct the labels with napari's brush, review doubtful objects and export them as training pairs.",
    "Fine-tune": "Train the model further on your exported pairs, in a background process, and use it if better.",
    "Batch": "Segment every image of a folder into an output folder, as the command line does.",
}
WIDTH = 380  # preferred dock width: the canvas keeps most of a laptop's screen


class Section(QWidget):
    """A titled section that folds away: a toggle button over a content widget (hidden, not
    squeezed, when folded, so the layout never clips or leaves gaps)."""

    def __init__(self, title: str, *widgets: QWidget, expanded: bool = True) -> None:
        super().__init__()
        self.button = QToolButton(text=title, checkable=True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.content = QWidget()
        inner = QVBoxLayout(self.content)
        inner.setContentsMargins(6, 0, 0, 0)
        for w in widgets:
            inner.addWidget(w)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.button)
        layout.addWidget(self.content)
        self.button.toggled.connect(self._show)
        self.button.setChecked(expanded)
        self._show(expanded)

    def _show(self, expanded: bool) -> None:
        self.button.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        self.content.setVisible(expanded)

    def isExpanded(self) -> bool:  # noqa: N802 - Qt style
        return self.button.isChecked()

    def expand(self) -> None:
        self.button.setChecked(True)

    def collapse(self) -> None:
        self.button.setChecked(False)


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
        self.batch = BatchSection(state, self.seg)
        self.review = ReviewSection(state, self.corrections, channel=lambda: self.seg.channel.value)
        self.ft = FinetuneSection(state, self.models, self.seg.device, resegment=self.seg.run)
        self.restore_btn = PushButton(text="Restore defaults", tooltip=(
            "Put every option back to its default (post-processing: the model's own values). "
            "The pairs folder is kept."))
        self.restore_btn.changed.connect(self.restore_defaults)

        self.advanced = Section("Advanced options", self.seg.advanced.native, expanded=False)
        self.advanced.setToolTip("Tile, overlap, batch and device: rarely need changing.")
        for container in (self.models.main, self.seg.main, self.seg.advanced, self.corrections.main, self.review.main,
                          self.ft.top, self.ft.bottom, self.batch.main):
            fit_width(container)
        body = QWidget()
        column = QVBoxLayout(body)
        column.setContentsMargins(2, 2, 2, 2)
        self.sections = {
            "Model": Section("Model", self.models.main.native),
            "Segment": Section("Segment", self.seg.main.native, self.advanced),
            "Corrections": Section("Corrections", self.corrections.main.native, self.review.main.native),
            "Fine-tune": Section("Fine-tune", self.ft.top.native, self.ft.plot, self.ft.bottom.native),
            "Batch": Section("Batch", self.batch.main.native, expanded=False),
        }
        for title, box in self.sections.items():
            box.button.setToolTip(SECTION_TIPS[title])
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
        for w in (*[getattr(self.seg, k) for k in ("tile", "overlap", "batch", "device", "auto_scale", "scale")],
                  self.ft.time_budget, self.ft.epochs):
            w.changed.connect(self._save_settings)
        state.model_changed.connect(self.warm)
        self.seg.device.changed.connect(self.warm)
        saved = state.settings.get("model")  # the model last used, if its file is still there
        if not (saved and Path(saved).is_file() and self.models.select(saved, quiet=True)):
            self.models.select(None, quiet=True)
        state.message.emit(self.models.opened(restored=bool(saved)))  # never a silent carry-over
        self.reset_choices()
        self.corrections.follow_active()  # a dock opened on a selected labels layer corrects that one
        warm_labels_layer()
        self.viewer.window._qt_window.installEventFilter(self)  # napari closing: the dock gets no other notice

    def eventFilter(self, obj: Any, ev: QEvent) -> bool:  # noqa: N802 - Qt API
        if ev.type() == QEvent.Type.Close and obj is self.viewer.window._qt_window:
            self.seg.cancel()  # a running segmentation stops (blockwise: its dask cluster too)
        return False

    # -- napari calls this when layers are added, removed, reordered or renamed ------------
    def reset_choices(self, *_: Any) -> None:
        for container in (self.seg.main, self.corrections.main):
            container.reset_choices()
        self.corrections._follow_labels()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        return QSize(WIDTH, 700)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        """As narrow as the content allows (nothing cut off), as short as a scroll area."""
        bar = self.scroll.verticalScrollBar().sizeHint().width()
        return QSize(self.scroll.widget().minimumSizeHint().width() + bar, 260)

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
        """napari removed the dock: stop our segmentation; the fine-tune belongs to the viewer, so
        ask whether it keeps running (reopen the panel to follow it), stops now, or the dock comes back."""
        if self.ft.session.active:
            answer = ask_on_close()
            if answer == "cancel":  # put the dock back as it was, sections still attached
                QTimer.singleShot(0, lambda: self.viewer.window.add_dock_widget(self, name="U-Net", area="right"))
                return
            if answer == "stop":
                self.ft.session.cancel()
        for section in (self.seg, self.corrections, self.review, self.ft, self.batch):
            section.detach()


KEEP, STOP = "Keep training in the background", "Stop training"


def ask_on_close() -> str:
    """Ask what happens to a running fine-tune when the dock closes: ``"keep"`` (the default, also
    Enter), ``"stop"`` (the best weights so far are kept) or ``"cancel"`` (Esc: the dock stays open)."""
    box = QMessageBox(QMessageBox.Icon.Question, "Fine-tuning is running",
                      "A fine-tune is running. It can keep training in the background (reopen the U-Net panel "
                      "to follow it), or stop now and keep the best weights so far.")
    keep = box.addButton(KEEP, QMessageBox.ButtonRole.AcceptRole)
    stop = box.addButton(STOP, QMessageBox.ButtonRole.DestructiveRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(keep)
    box.setEscapeButton(cancel)
    box.exec()
    clicked = box.clickedButton()
    return "keep" if clicked is keep else "stop" if clicked is stop else "cancel"
