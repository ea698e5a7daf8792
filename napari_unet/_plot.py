"""A small live plot of fine-tuning curves (pyqtgraph)."""

from __future__ import annotations

import math

import pyqtgraph as pg
from qtpy.QtWidgets import QVBoxLayout, QWidget

CURVES = {"train_loss": ("train loss", "#4e79a7"), "val_loss": ("val loss", "#f28e2b"), "val_f1": ("val F1", "#59a14f")}


class TrainingPlot(QWidget):
    """Train/validation loss and validation F1 against epoch, fed with ``progress`` events."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget(background="k")
        self.plot.setMinimumHeight(140)
        self.plot.addLegend(offset=(5, 5))
        self.plot.setLabel("bottom", "epoch")
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.series: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in CURVES}
        self.curves = {
            k: self.plot.plot([], [], name=label, pen=pg.mkPen(color, width=2), symbol="o", symbolSize=4,
                              symbolBrush=color)
            for k, (label, color) in CURVES.items()
        }
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)

    def clear(self) -> None:
        for k in self.series:
            self.series[k] = ([], [])
            self.curves[k].setData([], [])

    def add(self, event: dict) -> None:
        for k, (xs, ys) in self.series.items():
            value = event.get(k)
            if isinstance(value, (int, float)) and math.isfinite(value):
                xs.append(event["epoch"])
                ys.append(value)
                self.curves[k].setData(xs, ys)

    def points(self, key: str) -> int:
        return len(self.series[key][0])
