"""Batch: segment every image of a folder into an output folder, in the background, with the
command line's step (:func:`napari_unet.api.segment_file`) and rules (never overwrite, one sentence
per file that cannot be segmented)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from magicgui.widgets import Container, FileEdit, Label, ProgressBar, PushButton
from napari.qt.threading import create_worker

from napari_unet._widget.segment_options import SegmentOptions
from napari_unet._widget.state import State
from napari_unet.api import segment_file
from napari_unet.engine.segmentation import count_sentence
from napari_unet.errors import Cancelled, NapariUnetError, os_error_sentence
from napari_unet.io.image_files import expand_inputs, labels_path_for


class BatchSection:
    """Folder in, folder out, Segment folder / Cancel, progress and one line per file."""

    def __init__(self, state: State, options: SegmentOptions) -> None:
        self.state, self.options = state, options
        self.worker = None
        self._cancel = threading.Event()
        self.lines: list[str] = []
        self.source = FileEdit(label="images", mode="d", tooltip=(
            "A folder of images (TIFF, PNG, JPEG); labels files (…_labels.tif) in it are skipped."))
        self.out = FileEdit(label="labels to", mode="d", tooltip=(
            "The folder the labels go to, as <image>_labels.tif; an existing file is never replaced."))
        self.run_btn = PushButton(text="Segment folder", tooltip=(
            "Segment every image of the folder with the model and the Segment options (the same step as "
            "'napari-unet segment'), in the background."))
        self.cancel_btn = PushButton(text="Cancel", enabled=False, tooltip="Stop after the image being segmented.")
        self.progress = ProgressBar(value=0, min=0, max=1, label="", tooltip="Images done so far.")
        self.report = Label(value="")
        buttons = Container(widgets=[self.run_btn, self.cancel_btn], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.main = Container(widgets=[self.source, self.out, buttons, self.progress, self.report])
        self.run_btn.changed.connect(self.run)
        self.cancel_btn.changed.connect(self.cancel)

    def run(self, *_: Any) -> None:
        model, source, out = self.state.model, Path(self.source.value), Path(self.out.value)
        if model is None:
            return self.state.error("No model is loaded.")
        if not source.is_dir():
            return self.state.error(f"{source} is not a folder of images; choose one under 'images'.")
        if out.resolve() == Path(".").resolve() or str(self.out.value) in ("", "."):
            return self.state.error("Choose the folder the labels go to under 'labels to'.")
        inputs, notes = expand_inputs([source])
        if not inputs:
            return self.state.error(f"{source} holds no images to segment.")
        o = self.options
        options = dict(postprocess=o.postprocess(), tile=o.tile.value, overlap=o.overlap.value,
                       batch_size=o.batch.value, device=o.device.value, stain=o.stain.value,
                       channel=o.channel.value, scale="auto" if o.auto_scale.value else o.scale.value)
        self._cancel = cancel = threading.Event()
        self.lines = list(notes)

        def work() -> Iterator[tuple[int, int, str]]:
            for i, path in enumerate(inputs):
                if cancel.is_set():
                    return
                yield i, len(inputs), self._one(model, path, labels_path_for(path, out), cancel, options)
            yield len(inputs), len(inputs), ""

        self.run_btn.enabled, self.cancel_btn.enabled = False, True
        self.progress.max, self.progress.value = len(inputs), 0
        self.report.value = f"Segmenting {len(inputs)} images…"
        self.worker = create_worker(work, _ignore_errors=True)
        self.worker.yielded.connect(self._on_file)
        self.worker.errored.connect(lambda exc: self.state.error(f"The batch stopped ({type(exc).__name__}: {exc})."))
        self.worker.finished.connect(lambda: self._finished(len(inputs)))
        self.worker.start()

    @staticmethod
    def _one(model: Any, path: Path, out: Path, cancel: threading.Event, options: dict[str, Any]) -> str:
        """Segment one file; the line to show: what was written, or one sentence why not."""
        if out.exists():
            return f"{out.name} already exists; it was not replaced."
        try:
            result = segment_file(model, path, out, cancel=cancel.is_set, **options)
        except Cancelled:
            return ""
        except FileExistsError:
            return f"{out.name} appeared while segmenting; it was not replaced."
        except NapariUnetError as exc:
            return f"{path.name}: {exc}"
        except OSError as exc:
            return os_error_sentence(exc, path)
        except MemoryError:
            return f"{path.name}: not enough memory to segment it."
        line = f"{path.name} → {out.name}: {count_sentence(result.counts)}"
        return line + (f" ⚠ {result.warning}" if result.warning else "")

    def _on_file(self, step: tuple[int, int, str]) -> None:
        done, total, line = step
        if line:
            self.lines.append(line)
        self.progress.value = min(done + (1 if line else 0), total)

    def cancel(self, *_: Any) -> None:
        self._cancel.set()

    def detach(self) -> None:
        self._cancel.set()

    def _finished(self, total: int) -> None:
        self.worker = None
        written = sum("→" in line for line in self.lines)
        verb = "Cancelled" if self._cancel.is_set() else "Done"
        self.report.value = "\n".join([f"{verb}: {written} of {total} images segmented into {self.out.value}.",
                                       *self.lines])
        self.state.message.emit(f"Batch {verb.lower()}: {written} of {total} images segmented.")
        try:
            self.run_btn.enabled, self.cancel_btn.enabled = True, False
        except RuntimeError:  # napari was closed meanwhile
            pass
