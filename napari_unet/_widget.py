"""The napari dock widget: Model → Segment → Corrections → Fine-tune.

It holds no algorithm: it turns clicks into calls of the core (``inference``, ``postprocess``,
``pairs``, ``runner``) and the core's progress and events into widgets and layers. Inference runs
in a napari thread worker; fine-tuning runs in a separate process (``runner``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from napari.layers import Image, Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._plot import TrainingPlot
from .errors import Cancelled, NapariUnetError
from .inference import DEFAULT_OVERLAP, DEFAULT_TILE, SegmentationModel, load_model, predict
from .pairs import count_pairs, export_pair
from .postprocess import PostprocessConfig, labels_from_probabilities
from .runner import FineTuneRequest, FineTuneRunner
from .versions import list_versions, models_dir_for

if TYPE_CHECKING:
    import napari

DEFAULT_LABEL = "Default nuclei model (shipped)"


def ui_threads() -> int:
    """Torch threads for work started from the UI: leave napari's main thread a core."""
    return max(1, (os.cpu_count() or 2) - 1)


def _compact(labels: np.ndarray) -> np.ndarray:
    """uint16 when the labels fit (with room to paint new ones): napari shows uint16 labels several
    times faster than uint32. Exports are written as uint32 regardless."""
    return labels.astype(np.uint16) if int(labels.max(initial=0)) < 60000 else labels


@contextmanager
def _lower_thread_priority(niceness: int = 10) -> Iterator[None]:
    """Let napari's main thread win the CPU over this (pooled) worker thread while the block
    runs (Linux: per-thread nice); the thread's priority is restored afterwards."""
    try:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, before + niceness)
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, before)
        except OSError:
            pass  # raising priority back may need privileges; the thread stays lower


def _preload_layer_dependencies() -> None:
    """napari imports pandas lazily when it builds its first Labels layer (about 0.25 s here).
    Doing it while the dock opens keeps that stall away from the moment a result arrives."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass


def _with_plane(stack: np.ndarray, plane: tuple[int, ...], labels: np.ndarray) -> np.ndarray:
    """A copy of ``stack`` (widened if needed) with ``labels`` written into ``plane``."""
    out = np.array(stack, dtype=np.result_type(stack.dtype, labels.dtype))
    out[plane] = labels
    return out


def _digest(a: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(a).view(np.uint8), digest_size=16).hexdigest()


@dataclass
class _Result:
    """What the widget remembers about a labels layer it wrote."""

    image_name: str
    plane: tuple[int, ...] | None  # None: the whole stack
    probs: np.ndarray
    written: np.ndarray  # labels as last written by the widget (for edit detection)
    model_name: str


class _Bridge(QObject):
    """Carries callbacks from worker threads to the Qt main thread (queued signals)."""

    progressed = Signal(int, int)
    event = Signal(dict)


class UNetWidget(QWidget):
    """Segment with a U-Net, correct, export training pairs and fine-tune in the background."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.model: SegmentationModel | None = None
        self.model_path: Path | None = None  # None = shipped default
        self.results: dict[str, _Result] = {}
        self.inference_runs = 0
        self.relabel_pending = 0
        self._relabel_generation = 0
        self.worker = None
        self.runner: FineTuneRunner | None = None
        self.last_done: dict[str, Any] | None = None
        self._cancel = threading.Event()
        self._pbar: napari_progress | None = None
        self._ft_pbar: napari_progress | None = None
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._bridge.event.connect(self._on_train_event)

        layout = QVBoxLayout(self)
        layout.addWidget(self._build_model_box())
        layout.addWidget(self._build_segment_box())
        layout.addWidget(self._build_corrections_box())
        layout.addWidget(self._build_finetune_box())
        self.status = QLabel("")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        layout.addStretch(1)

        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                   self.viewer.layers.events.reordered):
            ev.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._follow_selection)
        self._refresh_layers()
        self._refresh_models()
        self.select_model(None)
        _preload_layer_dependencies()

    # ----------------------------------------------------------------- building
    def _build_model_box(self) -> QGroupBox:
        box = QGroupBox("Model")
        form = QFormLayout(box)
        self.model_combo = QComboBox()
        self.model_combo.activated.connect(lambda i: self.select_model(self.model_combo.itemData(i)))
        load = self._button("Load checkpoint…", self._browse_checkpoint)
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(load)
        form.addRow(row)
        self.model_info = QLabel("")
        self.model_info.setWordWrap(True)
        form.addRow(self.model_info)
        return box

    def _build_segment_box(self) -> QGroupBox:
        box = QGroupBox("Segment")
        form = QFormLayout(box)
        self.image_combo = QComboBox()
        form.addRow("image", self.image_combo)
        self.device_combo = QComboBox()
        devices = ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        devices += ["mps"] if torch.backends.mps.is_available() else []
        self.device_combo.addItems(devices)
        form.addRow("device", self.device_combo)
        self.tile = self._spin(64, 4096, DEFAULT_TILE, 64)
        self.overlap = self._spin(0, 1024, DEFAULT_OVERLAP, 16)
        form.addRow("tile / overlap", self._row(self.tile, self.overlap))
        self.channel_combo = QComboBox()
        self.channel_combo.addItems(["all (as the model expects)", "0", "1", "2", "3"])
        self.channel_combo.setToolTip("For colour/multichannel images: the one channel a single-channel model uses")
        form.addRow("channel", self.channel_combo)
        self.scale = QDoubleSpinBox()
        self.scale.setRange(0.1, 10)
        self.scale.setSingleStep(0.25)
        self.scale.setValue(1.0)
        self.scale.setToolTip("Resize before the network: >1 for nuclei smaller than the model expects")
        form.addRow("rescale", self.scale)
        self.stack_combo = QComboBox()
        self.stack_combo.addItems(["current plane", "whole stack"])
        form.addRow("stack", self.stack_combo)
        defaults = PostprocessConfig()
        self.threshold = self._dspin(defaults.threshold)
        self.seed_threshold = self._dspin(defaults.seed_threshold)
        form.addRow("threshold / seeds", self._row(self.threshold, self.seed_threshold))
        self.min_size = self._spin(0, 100000, defaults.min_size, 10)
        form.addRow("min size (px)", self.min_size)
        for w in (self.threshold, self.seed_threshold):
            w.valueChanged.connect(self.relabel)
        self.min_size.valueChanged.connect(self.relabel)
        self.segment_btn = self._button("Segment", self.segment)
        self.cancel_btn = self._button("Cancel", self.cancel_segment, enabled=False)
        form.addRow(self._row(self.segment_btn, self.cancel_btn))
        self.seg_progress = QProgressBar()
        form.addRow(self.seg_progress)
        return box

    def _build_corrections_box(self) -> QGroupBox:
        box = QGroupBox("Corrections")
        form = QFormLayout(box)
        self.pairs_edit = QLineEdit(str(Path.home() / "napari-unet" / "pairs"))
        self.pairs_edit.editingFinished.connect(self._refresh_pairs)
        browse = self._button("…", self._browse_pairs)
        browse.setMaximumWidth(30)
        form.addRow("pairs folder", self._row(self.pairs_edit, browse))
        self.rect_check = QCheckBox("only inside the rectangle of a Shapes layer")
        form.addRow(self.rect_check)
        self.export_btn = self._button("Export corrections", self.export_corrections)
        self.pairs_label = QLabel("")
        form.addRow(self._row(self.export_btn, self.pairs_label))
        self._refresh_pairs()
        return box

    def _build_finetune_box(self) -> QGroupBox:
        box = QGroupBox("Fine-tune")
        form = QFormLayout(box)
        self.base_label = QLabel("")
        self.base_label.setWordWrap(True)
        form.addRow("base model", self.base_label)
        self.time_budget = self._spin(10, 24 * 3600, 120, 30)
        self.epochs = self._spin(1, 10000, 30, 5)
        form.addRow("time (s) / epochs", self._row(self.time_budget, self.epochs))
        self.finetune_btn = self._button("Fine-tune", self.finetune)
        self.ft_cancel_btn = self._button("Cancel", self.cancel_finetune, enabled=False)
        form.addRow(self._row(self.finetune_btn, self.ft_cancel_btn))
        self.plot = TrainingPlot()
        form.addRow(self.plot)
        self.ft_status = QLabel("")
        self.ft_status.setWordWrap(True)
        form.addRow(self.ft_status)
        self.use_new_btn = self._button("Use new model", self.use_new_model, enabled=False)
        form.addRow(self.use_new_btn)
        return box

    @staticmethod
    def _button(text: str, slot: Any, *, enabled: bool = True) -> QPushButton:
        b = QPushButton(text)
        b.setEnabled(enabled)
        b.clicked.connect(slot)
        return b

    @staticmethod
    def _spin(lo: int, hi: int, value: int, step: int) -> QSpinBox:
        s = QSpinBox()
        s.setRange(lo, hi)
        s.setValue(value)
        s.setSingleStep(step)
        return s

    @staticmethod
    def _dspin(value: float) -> QDoubleSpinBox:
        s = QDoubleSpinBox()
        s.setRange(0.0, 1.0)
        s.setSingleStep(0.05)
        s.setValue(value)
        return s

    @staticmethod
    def _row(*widgets: QWidget) -> QWidget:
        w = QWidget()
        h = QHBoxLayout(w)
        h.setContentsMargins(0, 0, 0, 0)
        for x in widgets:
            h.addWidget(x)
        return w

    # ----------------------------------------------------------------- messages
    def _error(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    def _info(self, message: str) -> None:
        self.status.setText(message)
        show_info(message)

    # ----------------------------------------------------------------- model
    def _refresh_models(self) -> None:
        current = self.model_path
        self.model_combo.clear()
        self.model_combo.addItem(DEFAULT_LABEL, None)
        for v in list_versions(self.models_dir()) if self.models_dir().is_dir() else []:
            f1 = f" (val F1 {v.f1_before:.2f}→{v.f1_after:.2f})" if None not in (v.f1_after, v.f1_before) else ""
            self.model_combo.addItem(f"{v.path.name}{f1}", str(v.path))
        if current is not None and self.model_combo.findData(str(current)) < 0:
            self.model_combo.addItem(current.name, str(current))
        self.model_combo.setCurrentIndex(max(0, self.model_combo.findData(str(current) if current else None)))

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load checkpoint", "", "Checkpoints (*.safetensors *.pt *.pth)")
        if path:
            self.select_model(path)

    def select_model(self, path: str | Path | None) -> bool:
        """Load a checkpoint (None = shipped default); on failure keep the current model."""
        try:
            model = load_model(path)
        except NapariUnetError as exc:
            self._error(str(exc))
            self._refresh_models()
            return False
        self.model, self.model_path = model, Path(path) if path else None
        self._set_postprocess(model.postprocess)
        s = model.summary()
        self.base_label.setText(f"{s['name']} (the model in use)")
        f1 = s["validation_f1"]
        self.model_info.setText(
            f"{s['name']}: {s['in_channels']} channel(s) → {', '.join(s['classes'])}\n"
            f"trained on: {s['trained_on'] or 'unknown'}\n"
            f"validation F1: {f1 if f1 is not None else 'unknown'}"
        )
        self._refresh_models()
        return True

    # ----------------------------------------------------------------- layers
    def _refresh_layers(self, *_: Any) -> None:
        for name in [n for n in self.results if n not in self.viewer.layers]:
            del self.results[name]  # frees the stored probabilities of removed layers
        current = self.image_combo.currentText()
        self.image_combo.clear()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_combo.addItems(names)
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            current = active.name
        if current in names:
            self.image_combo.setCurrentText(current)

    def _follow_selection(self, *_: Any) -> None:
        active = self.viewer.layers.selection.active
        if isinstance(active, Image):
            self.image_combo.setCurrentText(active.name)

    def image_layer(self) -> Image | None:
        name = self.image_combo.currentText()
        layer = self.viewer.layers[name] if name in self.viewer.layers else None
        return layer if isinstance(layer, Image) else None

    def _current_plane(self, layer: Image) -> tuple[int, ...]:
        lead = layer.ndim - 2
        if lead <= 0:
            return ()
        step = self.viewer.dims.current_step[-layer.ndim:]
        return tuple(int(min(max(0, s), n - 1)) for s, n in zip(step[:lead], layer.data.shape[:lead]))

    def labels_name(self, image_name: str) -> str:
        return f"{image_name} labels"

    # ----------------------------------------------------------------- segment
    def _set_postprocess(self, config: PostprocessConfig) -> None:
        """Show a model's own post-processing parameters without re-labelling existing layers."""
        for spin, value in ((self.threshold, config.threshold), (self.seed_threshold, config.seed_threshold),
                            (self.min_size, config.min_size)):
            spin.blockSignals(True)
            spin.setValue(value)
            spin.blockSignals(False)

    def postprocess_config(self) -> PostprocessConfig:
        return PostprocessConfig(threshold=self.threshold.value(), seed_threshold=self.seed_threshold.value(),
                                 min_size=self.min_size.value())

    def segment(self) -> None:
        """Run inference on the chosen image (or its current plane) in a thread worker."""
        layer = self.image_layer()
        if layer is None:
            self._error("There is no image layer to segment; open an image first.")
            return
        if self.model is None:
            self._error("No model is loaded.")
            return
        if self.worker is not None:
            self._error("A segmentation is already running.")
            return
        plane = None
        data = layer.data
        if layer.ndim > 2 and self.stack_combo.currentText() == "current plane":
            plane = self._current_plane(layer)
            data = data[plane]
        try:
            image = np.asarray(data)
        except Exception as exc:  # noqa: BLE001 - lazy arrays can fail to load
            self._error(f"The image layer '{layer.name}' could not be read ({exc}).")
            return
        model, image_name, post = self.model, layer.name, self.postprocess_config()
        channel = self.channel_combo.currentIndex() - 1  # index 0 is "all"
        model_name = model.info.name
        options = dict(tile=self.tile.value(), overlap=self.overlap.value(),  # predict caps the overlap
                       device=self.device_combo.currentText(), scale=self.scale.value(),
                       channel_axis=-1 if layer.rgb else None,
                       channel=None if channel < 0 else channel)
        self._cancel.clear()
        torch.set_num_threads(ui_threads())

        def run() -> tuple[np.ndarray, np.ndarray] | None:
            with _lower_thread_priority():
                try:
                    probs = predict(model, image, progress=self._bridge.progressed.emit,
                                    cancel=self._cancel.is_set, **options)
                except Cancelled:
                    return None
                return probs, labels_from_probabilities(probs, post)  # off the UI thread too

        self.segment_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.seg_progress.setValue(0)
        self._pbar = napari_progress(total=0, desc=f"Segmenting {image_name}")
        self.worker = create_worker(run, _ignore_errors=True)  # errors are reported by _segment_failed
        self.worker.returned.connect(lambda result: self._segment_done(image_name, plane, result, model_name))
        self.worker.errored.connect(self._segment_failed)
        self.worker.finished.connect(self._segment_finished)
        self.status.setText(f"Segmenting {image_name}…")
        self.worker.start()

    def _on_progress(self, done: int, total: int) -> None:
        self.seg_progress.setMaximum(total)
        self.seg_progress.setValue(done)
        if self._pbar is not None:
            self._pbar.total = total
            self._pbar.n = done
            self._pbar.refresh()

    def cancel_segment(self) -> None:
        self._cancel.set()

    def _segment_failed(self, exc: Exception) -> None:
        if isinstance(exc, NapariUnetError):
            self._error(str(exc))
        else:
            self._error(f"Segmentation failed ({type(exc).__name__}: {exc}).")

    def _segment_finished(self) -> None:
        self.worker = None
        self.segment_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None

    def _segment_done(self, image_name: str, plane: tuple[int, ...] | None,
                      result: tuple[np.ndarray, np.ndarray] | None, model_name: str = "") -> None:
        if result is None:
            self._info("Segmentation cancelled; nothing was changed.")
            return
        if plane is not None and image_name not in self.viewer.layers:
            self._error(f"The image layer '{image_name}' was removed while it was being segmented.")
            return
        self.inference_runs += 1
        probs, labels = result[0], _compact(result[1])
        layer = self._write_labels(image_name, plane, labels, probs, model_name)
        n = len(np.unique(labels)) - (1 if (labels == 0).any() else 0)
        self._info(f"Segmented {image_name}: {n} objects in layer '{layer.name}'.")

    def _target_layer(self, image_name: str, plane: tuple[int, ...] | None) -> Labels | None:
        """The widget's own labels layer for this image if it is unedited; else None (make a new one)."""
        name = self.labels_name(image_name)
        if not self._unedited(name) or not isinstance(self.viewer.layers[name], Labels):
            return None
        return self.viewer.layers[name]

    def _write_labels(self, image_name: str, plane: tuple[int, ...] | None, labels: np.ndarray,
                      probs: np.ndarray, model_name: str) -> Labels:
        image = self.viewer.layers[image_name] if image_name in self.viewer.layers else None
        layer = self._target_layer(image_name, plane)
        name = self.labels_name(image_name)
        if layer is None and name in self.viewer.layers:
            show_warning(f"'{name}' has your edits, so the new result goes to a new layer; nothing was overwritten.")
            base, k = name, 2
            while f"{base} [{k}]" in self.viewer.layers:
                k += 1
            name = f"{base} [{k}]"
        if plane is not None:
            shape = image.data.shape[: image.ndim]
            data = _with_plane(layer.data if layer is not None else np.zeros(shape, labels.dtype), plane, labels)
        else:
            data = labels
        if layer is None:
            kwargs = {}
            if image is not None:
                kwargs = dict(scale=image.scale[-data.ndim:], translate=image.translate[-data.ndim:])
            layer = self.viewer.add_labels(data, name=name, **kwargs)
        else:
            layer.data = data
        self.results[layer.name] = _Result(image_name, plane, probs, np.array(layer.data, copy=True), model_name)
        self._relabel_generation += 1  # a re-labelling still running was computed from older probabilities
        return layer

    def _unedited(self, name: str) -> bool:
        result = self.results.get(name)
        return (result is not None and name in self.viewer.layers
                and _digest(self.viewer.layers[name].data) == _digest(result.written))

    def relabel(self, *_: Any) -> None:
        """Re-apply post-processing to the stored probabilities (no network run), off the UI thread.

        Only the newest request is applied, and never to a layer the user has edited meanwhile.
        """
        config = self.postprocess_config()
        self._relabel_generation += 1
        generation = self._relabel_generation
        jobs = []
        for name, result in self.results.items():
            if self._unedited(name):
                jobs.append((name, result.probs))
            elif name in self.viewer.layers:
                self.status.setText(f"'{name}' has your edits; post-processing was not re-applied to it.")
        if not jobs:
            return

        def run() -> list[tuple[str, np.ndarray]]:
            return [(name, _compact(labels_from_probabilities(probs, config))) for name, probs in jobs]

        self.relabel_pending += 1
        worker = create_worker(run, _ignore_errors=True)
        worker.returned.connect(lambda out: self._apply_relabel(generation, out))
        worker.errored.connect(lambda exc: self._error(f"Post-processing failed ({exc})."))
        worker.finished.connect(self._relabel_finished)
        worker.start()

    def _relabel_finished(self) -> None:
        self.relabel_pending -= 1

    def _apply_relabel(self, generation: int, out: list[tuple[str, np.ndarray]]) -> None:
        if generation != self._relabel_generation:
            return  # a newer request is on its way
        for name, labels in out:
            if not self._unedited(name):
                continue
            layer, result = self.viewer.layers[name], self.results[name]
            data = labels if result.plane is None else _with_plane(layer.data, result.plane, labels)
            layer.data = data
            result.written = np.array(data, copy=True)

    # ----------------------------------------------------------------- corrections
    def pairs_dir(self) -> Path:
        return Path(self.pairs_edit.text()).expanduser()

    def models_dir(self) -> Path:
        return models_dir_for(self.pairs_dir())

    def _browse_pairs(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Training-pairs folder", str(self.pairs_dir().parent))
        if path:
            self.pairs_edit.setText(path)
            self._refresh_pairs()

    def _refresh_pairs(self) -> None:
        n = count_pairs(self.pairs_dir())
        self.pairs_label.setText(f"{n} pair{'s' if n != 1 else ''} in folder")
        if hasattr(self, "model_combo"):
            self._refresh_models()

    def _labels_layer_for(self, image: Image) -> Labels | None:
        """The selected Labels layer, else the one the widget made for ``image``."""
        active = self.viewer.layers.selection.active
        if isinstance(active, Labels):
            return active
        name = self.labels_name(image.name)
        if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
            return self.viewer.layers[name]
        return None

    def _rectangle(self, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
        for layer in reversed(list(self.viewer.layers)):
            if isinstance(layer, Shapes) and len(layer.data):
                v = np.asarray(layer.data[-1])[:, -2:]
                y0, x0 = np.floor(v.min(0)).astype(int)
                y1, x1 = np.ceil(v.max(0)).astype(int)
                return max(0, y0), max(0, x0), min(shape[0], y1), min(shape[1], x1)
        return None

    def export_corrections(self) -> None:
        """Write the current plane's corrected labels as a training pair."""
        image = self.image_layer()
        if image is None:
            self._error("There is no image layer; open an image and segment it first.")
            return
        labels_layer = self._labels_layer_for(image)
        if labels_layer is None:
            self._error(f"There is no labels layer for '{image.name}'; segment it or add a labels layer.")
            return
        plane = self._current_plane(image) if image.ndim > 2 else ()
        img = np.asarray(image.data[plane] if plane else image.data)
        lab = np.asarray(labels_layer.data[plane] if plane and labels_layer.ndim > 2 else labels_layer.data)
        result = self.results.get(labels_layer.name)
        edited = None
        if result is not None:
            written = result.written[plane] if plane and result.written.ndim > 2 else result.written
            edited = int((written != lab).sum()) if written.shape == lab.shape else None
            if edited == 0:
                self._error("The labels are unchanged since segmentation; correct them with the brush first.")
                return
        if not lab.any():
            self._error("The labels are empty; paint some objects before exporting.")
            return
        rect = None
        if self.rect_check.isChecked():
            rect = self._rectangle(lab.shape)
            if rect is None:
                self._error("Draw a rectangle in a Shapes layer first, or untick 'only inside the rectangle'.")
                return
        try:
            record = export_pair(self.pairs_dir(), img, lab, rect=rect, source=image.name, plane=plane,
                                 model=result.model_name if result else "", edited_pixels=edited)
        except (NapariUnetError, OSError) as exc:
            self._error(f"Could not export the pair: {exc}")
            return
        self._refresh_pairs()
        self._info(f"Exported pair '{record.name}' to {self.pairs_dir()}.")

    # ----------------------------------------------------------------- fine-tune
    def finetune(self) -> None:
        """Start fine-tuning in a separate process; events feed the plot."""
        if self.runner is not None and self.runner.running:
            self._error("A fine-tune is already running.")
            return
        if count_pairs(self.pairs_dir()) == 0:
            self._error(f"The pairs folder {self.pairs_dir()} has no pairs yet; export corrections first.")
            return
        request = FineTuneRequest(self.pairs_dir(), base=self.model_path, epochs=self.epochs.value(),
                                  time_limit=float(self.time_budget.value()), device=self.device_combo.currentText(),
                                  threads=ui_threads(), extra_args=getattr(self, "finetune_extra_args", ()))
        self.runner = FineTuneRunner(request, self._bridge.event.emit)
        try:
            self.runner.start()
        except NapariUnetError as exc:
            self._error(str(exc))
            self.runner = None
            return
        self.last_done = None
        self.plot.clear()
        self.use_new_btn.setEnabled(False)
        self.finetune_btn.setEnabled(False)
        self.ft_cancel_btn.setEnabled(True)
        self._ft_pbar = napari_progress(total=self.epochs.value(), desc="Fine-tuning")
        self.ft_status.setText("Fine-tuning started in the background; you can keep working.")

    def cancel_finetune(self) -> None:
        if self.runner is not None:
            self.runner.cancel()
            self.ft_status.setText("Stopping after the current step; the best weights so far are kept…")

    def _on_train_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "start":
            skipped = event.get("pairs_skipped") or []
            note = f", {len(skipped)} skipped" if skipped else ""
            self.ft_status.setText(f"Training on {len(event['pairs_used'])} pair(s){note} on {event['device']}…")
            for s in skipped:
                show_warning(f"Skipped pair {s['name']}: {s['reason']}")
        elif kind == "progress":
            self.plot.add(event)
            if self._ft_pbar is not None:
                self._ft_pbar.n = min(event["epoch"], self._ft_pbar.total or event["epoch"])
                self._ft_pbar.refresh()
            self.ft_status.setText(f"epoch {event['epoch']}: val F1 {event['val_f1']:.3f}, "
                                   f"{event['elapsed']:.0f} s, about {event['eta']:.0f} s left")
        elif kind in ("done", "error"):
            self._finetune_ended(event)

    def _finetune_ended(self, event: dict) -> None:
        self.finetune_btn.setEnabled(True)
        self.ft_cancel_btn.setEnabled(False)
        if self._ft_pbar is not None:
            self._ft_pbar.close()
            self._ft_pbar = None
        if event["event"] == "error":
            self.ft_status.setText(event["message"])
            show_error(event["message"])
            return
        self.last_done = event
        before, after = event["base_f1"], event["f1"]
        if event["improved"]:
            self.ft_status.setText(f"New model is better: validation F1 {before:.3f} → {after:.3f}. "
                                   "Click 'Use new model' to switch.")
            self.use_new_btn.setEnabled(True)
        else:
            self.ft_status.setText(f"New model is not better (validation F1 {before:.3f} → {after:.3f}); "
                                   "keeping the current model.")
        self._refresh_models()

    def use_new_model(self) -> None:
        """Switch to the fine-tuned model and re-segment the current image."""
        if not self.last_done or not self.last_done.get("improved"):
            return
        if self.select_model(self.last_done["path"]):
            self.use_new_btn.setEnabled(False)
            if self.image_layer() is not None:
                self.segment()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._cancel.set()
        if self.runner is not None:
            self.runner.cancel()
        super().closeEvent(event)
