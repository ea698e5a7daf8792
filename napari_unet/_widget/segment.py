"""Segment: run the model on the chosen image (or its current plane) in a thread worker."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from magicgui.widgets import Container, Label, ProgressBar, PushButton, create_widget
from napari.layers import Image, Labels
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QFileDialog

from napari_unet._widget.blockwise_run import BlockwiseRun
from napari_unet._widget.job import Job
from napari_unet._widget.labels import LabelsWriter
from napari_unet._widget.regions import wants_blockwise
from napari_unet._widget.saved_results import SavedResults
from napari_unet._widget.segment_options import STACK_CHOICES, SegmentOptions, stack_choice_for
from napari_unet._widget.state import State, digest, ui_threads
from napari_unet._widget.stepped_add import NEXT_TURN_MS
from napari_unet.blockwise.engine import BlockwiseOptions
from napari_unet.engine.measure import measure_objects
from napari_unet.engine.segmentation import Segmentation, segment_image
from napari_unet.errors import Cancelled, NapariUnetError, os_error_sentence
from napari_unet.io.pixel_size import layer_pixel_size
from napari_unet.io.table import write_csv


class SegmentSection(SegmentOptions):
    """Image picker, Segment/Cancel, progress, the run in a thread worker; the option widgets
    (scale, post-processing, advanced) come from :class:`SegmentOptions`."""

    def __init__(self, state: State) -> None:
        super().__init__(state)
        self.writer = LabelsWriter(state, on_relabel=self._relabelled)
        self.placeholder = None  # the empty labels layer added at the click (``LabelsWriter.prepare``)
        self.image = create_widget(annotation=Image, label="image", options={
            "tooltip": "The image to segment. The result goes to a labels layer named '<image> labels'."})
        self.run_btn = PushButton(text="Segment", tooltip="Run the model on the image above (in the background).")
        self.cancel_btn = PushButton(text="Cancel", enabled=False, tooltip="Stop the running segmentation.")
        self.table_btn = PushButton(text="Save table…", tooltip=(
            "Save the measurements of the last result (label, area, centroid, mean/max intensity, eccentricity; "
            "also in the labels layer's features) as a CSV file."))
        self.progress = ProgressBar(value=0, min=0, max=1, label="", tooltip="Pieces of the image done so far.")
        self.summary = Label(value="")
        self.undo_btn = PushButton(text="Undo", tooltip=(
            "Put back the labels the last Segment or change of threshold / seed threshold / min size replaced "
            "(a few steps back). napari's own Ctrl+Z on the labels layer undoes them too, in turn with brush edits."))
        self.undo_btn.changed.connect(self.undo)
        buttons = Container(widgets=[self.run_btn, self.cancel_btn, self.undo_btn, self.table_btn], layout="horizontal",
                            labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.saved = SavedResults(state)  # labels zarrs of large images, with Open folder
        self.main = Container(widgets=[self.image, self.stack, self.stain, self.channel, self.scale_row,
                                       self.threshold, self.seeds, self.min_size, buttons, self.progress, self.summary,
                                       self.saved.main])
        self.job = Job(self.run_btn, self.cancel_btn, self.progress, on_error=self._failed, on_finished=self._finished)
        self.blockwise = BlockwiseRun(state, self.job, self.saved, self._report_blockwise)  # large or lazy layers
        self.run_btn.changed.connect(self.run)
        self.image.changed.connect(self._stack_from_axes)
        self._stack_from_axes(self.image.value)
        self.table_btn.changed.connect(self._save_table)
        self.last: Labels | None = None  # the labels layer of the last result (Save table…)
        self.measuring: set[Any] = set()  # measurement workers still running
        self._measured_generation = 0
        for w in (self.threshold, self.seeds, self.min_size):
            w.changed.connect(lambda *_: self.writer.relabel(self.postprocess()))
        state.viewer.layers.events.removed.connect(self._layer_removed)
        state.model_changed.connect(self.show_model_postprocess)

    # -- running ------------------------------------------------------------------------------
    def run(self, *_: Any) -> None:
        layer, model = self.image.value, self.state.model
        if layer is None:
            return self.state.error("There is no image layer to segment; open an image first.")
        if model is None:
            return self.state.error("No model is loaded.")
        if self.worker is not None:
            return self.state.error("A segmentation is already running.")
        plane = self.writer.current_plane(layer) if layer.ndim > 2 and self.stack.value == "current plane" else None
        if wants_blockwise(layer, plane):
            if self.stain.value != "fluorescence":
                return self.state.error(f"The stain '{self.stain.value}' is not available for large or lazy images, "
                                        "which are segmented blockwise; convert the image to fluorescence-like first.")
            if plane is None and STACK_CHOICES[self.stack.value] != "planes":
                return self.state.error(f"'{layer.name}' is too large to segment in memory, and blockwise segmentation "
                                        f"labels plane by plane; choose 'whole stack' for {self.stack.value.lower()}.")
            scale = "auto" if self.auto_scale.value else float(self.scale.value)  # one scale for every block
            options = BlockwiseOptions(block=self.blockwise.block, tile=self.tile.value, overlap=self.overlap.value,
                                       batch_size=self.batch.value, device=self.device.value, scale=scale,
                                       postprocess=self.postprocess(), threads=ui_threads())
            self.summary.value = ""
            return self.blockwise.start(layer, plane, options, self.channel.value)
        try:
            image = np.asarray(layer.data[plane] if plane is not None else layer.data)
        except Exception as exc:  # noqa: BLE001 - lazy arrays can fail to load
            return self.state.error(f"The image layer '{layer.name}' could not be read ({exc}).")
        post, options = self.postprocess(), dict(
            tile=self.tile.value, overlap=self.overlap.value, batch_size=self.batch.value, device=self.device.value,
            scale="auto" if self.auto_scale.value else self.scale.value, channel_axis=-1 if layer.rgb else None,
            channel=self.channel_for(layer.rgb), stain=self.stain.value, pixel_size_um=layer_pixel_size(layer),
            **self._stack_options(layer, plane))
        torch.set_num_threads(ui_threads())

        def work(cancelled: Callable[[], bool],
                 progress: Callable[[int, int], None]) -> tuple[Segmentation, np.ndarray, str, str] | None:
            # torch leaves napari's main thread a core (ui_threads); the worker keeps its priority,
            # so a busy machine slows a click no more than it slows segment() itself
            try:
                result = segment_image(model, image, postprocess=post, progress=progress, cancel=cancelled,
                                       **options)  # sizes follow the scale
            except Cancelled:
                return None
            labels = self.writer.compact(result.labels)
            return result, labels, digest(labels), result.summary()  # all off the main thread (a count is slow)

        self.summary.value = ""
        self.state.message.emit(f"Segmenting {layer.name}…")  # replaces any old error
        # the network starts at once (torch leaves the main thread a core); napari's build of the
        # new labels layer (~0.3 s of main-thread work on 2 cores with software OpenGL, whatever
        # the data) follows in steps meanwhile, so it is not paid when the result arrives
        self.job.start(work, lambda out: self._done(layer, plane, out, model.info.name), target=layer)
        QTimer.singleShot(NEXT_TURN_MS, lambda: self._begin(layer))

    @property
    def worker(self) -> Any:
        """The running Segment's thread worker (None when idle)."""
        return self.job.worker

    @property
    def target(self) -> Image | None:
        """The image layer the running Segment works on."""
        return self.job.target

    def _stack_from_axes(self, layer: Image | None) -> None:
        """Choose the stack option from the layer's axis names when napari knows them."""
        choice = stack_choice_for(layer) if layer is not None and layer.ndim > 2 else None
        if choice is not None:
            self.stack.value = choice

    def _stack_options(self, layer: Image, plane: tuple[int, ...] | None) -> dict[str, Any]:
        """``stack`` for segment_image, and for 3D objects the voxel size from the layer's scale (when
        napari knows its pixel size)."""
        mode = STACK_CHOICES[self.stack.value] if plane is None and layer.ndim > 2 else "planes"
        if mode != "3d" or layer_pixel_size(layer) is None or all(float(s) == 1.0 for s in layer.scale[-3:]):
            return {"stack": mode}
        return {"stack": mode, "voxel_size": tuple(float(s) for s in layer.scale[-3:])}

    def _begin(self, image: Image) -> None:
        if self.worker is None or self.target is not image:
            return  # already finished, cancelled or retargeted: no empty layer to add
        if image in self.state.viewer.layers:
            self.placeholder = self.writer.prepare(image)

    def cancel(self, *_: Any) -> None:
        self.job.cancel()

    def detach(self) -> None:
        """The dock is gone: cancel a running segmentation and stop following the viewer."""
        self.job.cancel()
        self.state.viewer.layers.events.removed.disconnect(self._layer_removed)

    def _layer_removed(self, event: Any) -> None:
        if self.worker is not None and event.value is self.target:
            self.job.cancel()
        self.state.forget(event.value)

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, NapariUnetError):
            self.state.error(str(exc))
        else:
            self.state.error(f"Segmentation failed ({type(exc).__name__}: {exc}).")

    def _finished(self) -> None:
        placeholder, self.placeholder = self.placeholder, None
        QTimer.singleShot(0, lambda: self.writer.discard(placeholder))  # if no result went into it

    def _done(self, image: Image, plane: tuple[int, ...] | None, out: Any, model_name: str) -> None:
        if not any(layer is image for layer in self.state.viewer.layers):
            return self.state.warn(f"The image '{image.name}' was removed, so its segmentation was dropped.")
        if out is None:
            return self._say("Segmentation cancelled; nothing was changed.")
        result, labels, labels_digest, found = out
        # class maps, 3D objects and tracks are not re-labelled plane by plane
        probs = None if result.semantic or result.stack != "planes" else result.probabilities
        layer = self.writer.write(image, plane, labels, probs, model_name, labels_digest if plane is None else None,
                                  scale=result.scale.scale)
        self.show_scale(result.scale.scale)
        if not result.semantic:
            self._measure(layer)
        if self.show_probs.value:
            self._show_probabilities(image, result.probabilities)
        self._report(layer, found, result.scale.scale, result.min_size_used, "Segmented")
        if result.warning is not None:  # after the result line, so the status line keeps the warning
            self.summary.value += f"\n⚠ {result.warning}"
            self.state.warn(result.warning)

    def _report_blockwise(self, image: Image, found: str, scale: float) -> None:
        """The summary line of a block-by-block result (the status line says where it is saved)."""
        self.show_scale(scale)
        self.summary.value = f"{image.name}: {found}"

    def _report(self, layer: Labels, found: str, scale: float, min_size: int | None, verb: str) -> None:
        """The summary line and the status line: what was found and the numbers actually used."""
        how = "chosen automatically" if self.auto_scale.value else "as set"
        used = f"scale {scale:.2f} ({how})" + ("" if min_size is None else f", min size {min_size} px")
        self.summary.value = f"{layer.name}: {found}; {used}"
        self._say(f"{verb} '{layer.name}': {found}; {used}.")

    def _relabelled(self, layer: Labels, found: str, scale: float, min_size: int) -> None:
        self._report(layer, found, scale, min_size, "Re-labelled")
        self._measure(layer)

    def _show_probabilities(self, image: Image, probs: np.ndarray) -> None:
        """The class probabilities of a 2D result as one image layer (a slider over the classes), over the image."""
        if probs.ndim != 3:
            return self.state.warn("Probabilities are shown for single planes only.")
        factor = np.array(image.data.shape[-2:] if not image.rgb else image.data.shape[:2]) / probs.shape[-2:]
        scale = (1.0, *(np.asarray(image.scale[-2:]) * factor))
        name = f"{image.name} probabilities"
        if name in self.state.viewer.layers:
            self.state.viewer.layers[name].data = probs
        else:
            self.state.viewer.add_image(probs, name=name, scale=scale, contrast_limits=(0, 1), colormap="magma",
                                        blending="additive", opacity=0.6,
                                        metadata={"classes": list(self.state.model.info.classes)})

    def undo(self, *_: Any) -> None:
        layer = self.writer.undo()
        if layer is None:
            return self.state.error("There is no Segment or re-label to undo.")
        self._measure(layer)
        self._say(f"Undone: '{layer.name}' has its previous labels back.")

    # -- the measurement table ---------------------------------------------------------------
    def _measure(self, layer: Labels) -> None:
        """Put one row per object in the layer's ``features`` (2D results), measured in a thread
        worker (seconds of main-thread time on a 2048² image otherwise); a table measured from
        labels that changed meanwhile is not put in."""
        result = self.state.result(layer)
        image = result.source() if result is not None else None
        if layer.data.ndim != 2 or image is None or image.data.shape[:2] != layer.data.shape:
            return
        labels = np.array(layer.data, copy=True)  # the user may paint while it is measured
        ref, generation = weakref.ref(layer), self._measured_generation + 1
        self._measured_generation = generation
        worker = create_worker(measure_objects, labels, np.asarray(image.data), _ignore_errors=True)
        worker.returned.connect(lambda table: self._measured(ref, generation, labels, table))
        worker.finished.connect(lambda: self.measuring.discard(worker))
        self.measuring.add(worker)
        worker.start()

    def _measured(self, ref: weakref.ref, generation: int, labels: np.ndarray, table: dict[str, np.ndarray]) -> None:
        layer = ref()
        if (layer is None or generation != self._measured_generation or layer not in self.state.viewer.layers
                or not np.array_equal(layer.data, labels)):
            return  # removed, re-measured or edited meanwhile
        layer.features = table
        self.last = layer

    def _save_table(self, *_: Any) -> None:
        layer = self.last
        if layer is None or layer not in self.state.viewer.layers or not len(layer.features):
            return self.state.error("There is no measurement table yet; segment a 2D image first.")
        path, _ = QFileDialog.getSaveFileName(self.main.native, "Save table", f"{layer.name}.csv", "CSV (*.csv)")
        if not path:
            return
        try:  # the dialog has asked before replacing a file
            write_csv(path, {c: layer.features[c].to_numpy() for c in layer.features.columns}, overwrite=True)
        except OSError as exc:
            return self.state.error(f"The table was not saved: {os_error_sentence(exc, path)}")
        self.state.info(f"Saved the table of '{layer.name}' ({len(layer.features)} objects) to {path}.")

    def _say(self, message: str) -> None:
        """In the status line only: the result shows itself as a layer, and a pop-up over the canvas
        on every run makes napari repaint the window 4–5 times for its slide-in (45–65 ms each, measured
        on 2 cores with software OpenGL) for news the user is already looking at."""
        self.state.message.emit(message)
