"""The live fine-tuning plot (pyqtgraph): loss and validation F1 on two small stacked plots."""

from __future__ import annotations

import math

import pyqtgraph as pg
from qtpy.QtWidgets import QLabel, QVBoxLayout, QWidget

LOSS = {"train_loss": ("train loss", "#4e79a7"), "val_loss": ("validation loss", "#f28e2b")}
F1 = {"val_f1": ("validation F1", "#59a14f")}
HEIGHT = 190  # modest: the plot must not push the rest of the dock off a laptop screen


class _EpochAxis(pg.AxisItem):
    """Whole epochs only (no 0.5 ticks), at most about six of them."""

    def tickValues(self, minVal, maxVal, size):  # noqa: N802, N803 - pyqtgraph API
        span = max(1, math.ceil(maxVal) - math.floor(minVal))
        step = max(1, math.ceil(span / 6))
        first = max(0, math.ceil(minVal))
        return [(step, list(range(first, math.floor(maxVal) + 1, step)))]


class TrainingPlot(QWidget):
    """Fed with ``progress`` events; epoch 0 is the base model's score."""

    def __init__(self, background: str = "#262930", foreground: str = "#f0f1f2") -> None:
        super().__init__()
        self.view = pg.GraphicsLayoutWidget()
        self.view.setBackground(background)
        self.view.setFixedHeight(HEIGHT)
        self.view.setMinimumWidth(200)
        self.series: dict[str, tuple[list[float], list[float]]] = {}
        self.curves: dict[str, pg.PlotDataItem] = {}
        loss = self._plot(0, "loss", LOSS, foreground, show_x=False)
        f1 = self._plot(1, "F1", F1, foreground, show_x=True)
        f1.setXLink(loss)
        f1.setYRange(0, 1, padding=0.02)
        legend = "  ".join(f'<span style="color:{c}">━ {n}</span>' for n, c in [*LOSS.values(), *F1.values()])
        self.legend = QLabel(legend)  # outside the curves, never covering them
        self.legend.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.view)
        layout.addWidget(self.legend)

    def _plot(self, row: int, ylabel: str, curves: dict, fg: str, *, show_x: bool) -> pg.PlotItem:
        axis = _EpochAxis(orientation="bottom")
        plot = self.view.addPlot(row=row, col=0, axisItems={"bottom": axis})
        plot.setLabel("left", ylabel, color=fg)
        if show_x:
            plot.setLabel("bottom", "epoch", color=fg)
        else:
            axis.setStyle(showValues=False)
        plot.showGrid(x=True, y=True, alpha=0.2)
        plot.setMouseEnabled(x=False, y=False)
        plot.hideButtons()
        for name in ("left", "bottom"):
            plot.getAxis(name).setTextPen(fg)
            plot.getAxis(name).enableAutoSIPrefix(False)  # "0.3", not "300 (x0.001)"
        for key, (_, color) in curves.items():
            self.series[key] = ([], [])
            self.curves[key] = plot.plot([], [], pen=pg.mkPen(color, width=2), symbol="o", symbolSize=5,
                                         symbolBrush=color, symbolPen=None)
        return plot

    def clear(self) -> None:
        for key, curve in self.curves.items():
            self.series[key] = ([], [])
            curve.setData([], [])

    def add(self, event: dict) -> None:
        """One ``progress`` or ``loss`` event (fractional epoch, train loss only): a point on each
        curve it has a finite value for, at the epochs trained so far (a run stopped by its time
        limit ends part-way through its last epoch)."""
        x = float(event.get("epochs_done", event["epoch"]))
        for key, (xs, ys) in self.series.items():
            value = event.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                xs.append(x)
                ys.append(float(value))
                self.curves[key].setData(xs, ys)

    def points(self, key: str) -> int:
        return len(self.series[key][0])
