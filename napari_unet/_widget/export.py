"""Export to bioimage.io from the dock: a small form (name, authors, licence, file), the same
export as ``napari-unet export-bioimageio``, run in a thread worker with a one-sentence result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import Container, FileEdit, Label, LineEdit, ProgressBar, PushButton
from napari.qt.threading import create_worker
from qtpy.QtWidgets import QDialog, QVBoxLayout

from napari_unet._widget.state import State
from napari_unet.bioimageio.export import export_bioimageio
from napari_unet.errors import NapariUnetError
from napari_unet.models import default_model_path


class ExportDialog(QDialog):
    """The form; :meth:`export` starts the worker, ``worker`` is None when idle."""

    def __init__(self, state: State, parent: Any = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export to bioimage.io")
        self.state = state
        self.worker = None
        model = state.model
        name = model.info.name if model is not None else "napari-unet model"
        self.name = LineEdit(label="name", value=name, tooltip="The model's name in the package.")
        self.authors = LineEdit(label="authors", value="", tooltip="Who made the model, separated by commas.")
        self.license = LineEdit(label="licence", value="MIT",
                                tooltip="An SPDX licence identifier, e.g. MIT or CC-BY-4.0.")
        self.out = FileEdit(label="save as", mode="w", filter="*.zip", value=Path.home() / f"{_slug(name)}.zip",
                            tooltip="The package file (.zip); an existing file is never replaced.")
        self.export_btn = PushButton(text="Export", tooltip="Write the package (checked with ONNX Runtime; ~a minute).")
        self.progress = ProgressBar(min=0, max=0, visible=False, label="")
        self.result = Label(value="")
        self.result.native.setWordWrap(True)
        self.form = Container(widgets=[self.name, self.authors, self.license, self.out, self.export_btn,
                                       self.progress, self.result])
        QVBoxLayout(self).addWidget(self.form.native)
        self.export_btn.changed.connect(self.export)

    def export(self, *_: Any) -> None:
        """Export the model in use (its checkpoint file) to the chosen .zip in the background."""
        path = self.state.model_path or default_model_path()
        if path.suffix.lower() == ".zip":
            return self._show(f"{path.name} is already a bioimage.io package.", error=True)
        authors = [a.strip() for a in self.authors.value.split(",") if a.strip()] or None
        out = Path(self.out.value)
        self.export_btn.enabled, self.progress.visible = False, True
        self.result.value = f"Exporting to {out.name}…"
        self.worker = create_worker(export_bioimageio, path, out, name=self.name.value.strip() or None,
                                    authors=authors, license=self.license.value.strip() or "MIT",
                                    _ignore_errors=True)
        self.worker.returned.connect(lambda zip_path: self._show(
            f"Exported to {zip_path}; check it with: bioimageio test {zip_path}"))
        self.worker.errored.connect(lambda exc: self._show(
            str(exc) if isinstance(exc, NapariUnetError) else f"The export failed ({type(exc).__name__}: {exc}).",
            error=True))
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def _show(self, sentence: str, *, error: bool = False) -> None:
        self.result.value = sentence
        (self.state.error if error else self.state.info)(sentence)

    def _finished(self) -> None:
        self.worker = None
        self.export_btn.enabled, self.progress.visible = True, False


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name).strip("_") or "model"
