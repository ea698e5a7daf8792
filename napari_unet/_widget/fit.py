"""Controls that shrink to the dock's width instead of widening it."""

from __future__ import annotations

from magicgui.widgets import Container
from qtpy.QtWidgets import QComboBox, QLabel, QSizePolicy


def fit_width(container: Container) -> None:
    """Let every control shrink to the dock's width: labels wrap, combo boxes do not size
    themselves to their longest entry (a long model name would otherwise widen the dock)."""
    for w in container:
        if isinstance(w, Container):
            fit_width(w)
        elif isinstance(w.native, QLabel):
            w.native.setWordWrap(True)
            w.native.setMinimumWidth(60)  # else a wrapped label asks for its one-line width
            w.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        elif isinstance(w.native, QComboBox):
            w.native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            w.native.setMinimumContentsLength(8)
