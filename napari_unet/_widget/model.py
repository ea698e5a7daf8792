"""Model: choose the shipped model, a fine-tuned version or a checkpoint file; warm it up."""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label, PushButton
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFileDialog, QInputDialog

from napari_unet._widget.state import State, lower_thread_priority
from napari_unet.engine.model import SegmentationModel
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.predict import predict
from napari_unet.errors import NapariUnetError, os_error_sentence
from napari_unet.models import load_model
from napari_unet.training.versions import ModelVersion, list_versions, models_dir_for, rename_version

DEFAULT_LABEL = "Default nuclei model (shipped)"
MODEL_TIP = ("The model that segments. Fine-tuned versions appear here under their name (Rename… gives them "
             "yours) with their validation F1 before → after and how many validation pairs and objects that score "
             "rests on.")
MODEL_FILES = "Models (*.safetensors *.pt *.pth *.zip)"
POSTPROCESS_NAMES = {"threshold": "threshold", "seed_threshold": "seed threshold", "min_size": "min size"}


def version_label(v: ModelVersion) -> str:
    """``name · F1 0.61→0.72 · 3 val pairs, 120 objects`` (what the score rests on)."""
    text = v.title
    if None not in (v.f1_before, v.f1_after):
        text += f" · F1 {v.f1_before:.2f}→{v.f1_after:.2f}"
    if v.val_pairs is not None:
        text += f" · {v.val_pairs} val pair{'s' if v.val_pairs != 1 else ''}"
        text += f", {v.val_objects} objects" if v.val_objects is not None else ""
    return text


def version_story(v: ModelVersion, *, when: bool = True) -> str:
    """``fine-tuned 2026-12-03 14:02 from 3 pairs, F1 0.81 → 0.93``: where a version came from
    (``when=False``: without ``fine-tuned <date>``, which the default name already says)."""
    text = (f"fine-tuned {v.created[:16].replace('T', ' ')}" if v.created else "fine-tuned") if when else ""
    text += f" from {v.pairs} pair{'s' if v.pairs != 1 else ''}" if v.pairs is not None else ""
    if None not in (v.f1_before, v.f1_after):
        text += f", F1 {v.f1_before:.2f} → {v.f1_after:.2f}"
    return text.strip(" ,")


def postprocess_changes(old: PostprocessConfig, new: PostprocessConfig) -> str:
    """E.g. ``min size 150 → 367`` for every post-processing value that differs."""
    a, b = old.to_dict(), new.to_dict()
    return ", ".join(f"{label} {a[k]} → {b[k]}" for k, label in POSTPROCESS_NAMES.items() if a.get(k) != b.get(k))


def warm_up(model: SegmentationModel, tile: int, device: str) -> None:
    """Prepare the network and run it once on a blank tile, so the first Segment click does not
    pay for it (memory allocation, kernel selection); runs in a background thread."""
    with lower_thread_priority():
        try:
            predict(model, np.zeros((tile, tile), np.float32), tile=tile, device=device, scale=1.0)
        except Exception:  # noqa: BLE001 - a failed warm-up only means the first click is slower
            pass


def warm_labels_layer() -> None:
    """Build (not show) a tiny Labels layer once: napari's first one costs ~0.5 s of lazy imports
    and set-up in the main thread, which would otherwise land when the first result arrives."""
    from napari.layers import Labels

    Labels(np.zeros((4, 4), np.uint16))


_WARMING: list[threading.Thread] = []


@atexit.register
def _join_warm_ups() -> None:
    """Let a warm-up finish before the interpreter exits (torch aborts if torn down mid-call)."""
    for thread in _WARMING:
        thread.join(30)


class ModelSection:
    """The model picker (shipped default + usable versions + loaded files) and its facts."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.extra: list[Path] = []  # checkpoints loaded from a file
        self.warm_thread: threading.Thread | None = None
        self.model = ComboBox(label="model", choices=self._choices, tooltip=MODEL_TIP)
        self.load_btn = PushButton(text="Load model…", tooltip=(
            "Use a model file trained elsewhere: a .safetensors checkpoint, a .pt/.pth state dict or a "
            "bioimage.io package (.zip)."))
        self.export_btn = PushButton(text="Export to bioimage.io…", tooltip=(
            "Write the model in use as a bioimage.io package (.zip) others can load in their tools; "
            "the same export as 'napari-unet export-bioimageio'."))
        self.rename_btn = PushButton(text="Rename…", enabled=False, tooltip=(
            "Give the fine-tuned version in use a name of your own (kept in a small file beside it; the "
            "model file is not changed). An empty name brings back 'fine-tuned <date time>'."))
        self.export_dialog = None
        row = Container(widgets=[self.model, self.rename_btn], layout="horizontal", labels=False, label="model")
        buttons = Container(widgets=[self.load_btn, self.export_btn], layout="horizontal", labels=False)
        row.margins = buttons.margins = (0, 0, 0, 0)
        self.info = Label(value="")
        self.main = Container(widgets=[row, buttons, self.info])
        self.export_btn.changed.connect(self._export)
        self.model.changed.connect(lambda value: self.select(value))
        self.model.native.view().setTextElideMode(Qt.TextElideMode.ElideMiddle)  # long names shown whole-ish
        self.active = ""  # which model is in use and why, said when the dock opens
        self.load_btn.changed.connect(self._browse)
        self.rename_btn.changed.connect(self._rename)
        state.pairs_changed.connect(self.refresh)

    def _choices(self, *_: Any) -> list[tuple[str, str | None]]:
        versions = self._versions()
        out = [(DEFAULT_LABEL, None)] + [(version_label(v), str(v.path)) for v in versions]
        known = {p for _, p in out}
        out += [(p.name, str(p)) for p in self.extra if str(p) not in known]
        current = self.state.model_path
        if current is not None and str(current) not in {p for _, p in out}:
            out.append((current.name, str(current)))
        return out

    def refresh(self) -> None:
        with self.model.changed.blocked():
            self.model.reset_choices()
            self.model.value = str(self.state.model_path) if self.state.model_path else None
        self.model.native.setToolTip(f"{self.model.native.currentText()}\n\n{MODEL_TIP}")
        self.rename_btn.enabled = self.version() is not None

    def version(self, path: Path | None = None) -> ModelVersion | None:
        """The fine-tuned version at ``path`` (default: the model in use), if it is one."""
        path = self.state.model_path if path is None else path
        return next((v for v in self._versions() if v.path == path), None) if path is not None else None

    def name_of(self, path: Path | None) -> str:
        """How the dock calls a model: a version's name, a file's name, or the shipped default."""
        if path is None:
            return "the default nuclei model"
        version = self.version(Path(path))
        return f"'{version.title}'" if version is not None else Path(path).name

    def opened(self, restored: bool) -> str:
        """The sentence the dock says at open: the model in use, and why (last used, or the default)."""
        path = self.state.model_path
        if path is None:
            why = "the shipped default" + ("; the model last used is gone" if restored else "")
            self.active = f"Using the default nuclei model ({why})."
        else:
            version = self.version(path)
            story = version_story(version, when=version.named) if version is not None else ""
            self.active = f"Using {self.name_of(path)}, the model you last used{'; ' + story if story else ''}."
        self.info.value = f"{self.active}\n{self.info.value}"
        return self.active

    def _versions(self) -> list[ModelVersion]:
        models = models_dir_for(self.state.pairs_dir)
        return list_versions(models) if models.is_dir() else []

    def _browse(self, *_: Any) -> None:
        path, _ = QFileDialog.getOpenFileName(self.main.native, "Load model", "", MODEL_FILES)
        if path:
            self.select(path)

    def _rename(self, *_: Any) -> None:
        version = self.version()
        if version is None:
            return self.state.error("Only a fine-tuned version in the models folder can be renamed.")
        text, ok = QInputDialog.getText(self.main.native, "Rename model", "Name of this version:",
                                        text=version.title if version.named else "")
        if ok:
            self.rename(version, text)

    def rename(self, version: ModelVersion, name: str) -> None:
        """Give ``version`` the user's ``name`` (empty: its default name back) and show it everywhere."""
        old = version.title
        try:
            rename_version(version.path, name)
        except NapariUnetError as exc:
            return self.state.error(str(exc))
        except OSError as exc:
            return self.state.error(f"The name was not saved: {os_error_sentence(exc, version.path.parent)}")
        self.refresh()
        self.state.info(f"'{old}' is now called {self.name_of(version.path)}.")

    def _export(self, *_: Any) -> None:
        from napari_unet._widget.export import ExportDialog

        if self.export_dialog is None or self.export_dialog.worker is None:  # a running export keeps its form
            self.export_dialog = ExportDialog(self.state, self.main.native)
        self.export_dialog.show()

    def select(self, path: str | Path | None, *, quiet: bool = False) -> bool:
        """Load a checkpoint (None = shipped default); on failure keep the current model."""
        try:
            model = load_model(path)
        except NapariUnetError as exc:
            self.state.error(str(exc))
            self.refresh()
            return False
        old = self.state.model
        self.state.model, self.state.model_path = model, Path(path) if path else None
        if path is not None and Path(path) not in self.extra:
            self.extra.append(Path(path))
        self.refresh()
        s = model.summary()
        f1 = s["validation_f1"]
        f1_text = f"{f1:.3f}" if isinstance(f1, (int, float)) else "unknown"
        self.info.value = f"{s['in_channels']} channel(s) in · validation F1 {f1_text}"
        self.info.tooltip = (f"{s['name']}: {s['in_channels']} channel(s) → {', '.join(s['classes'])}\n"
                             f"trained on: {s['trained_on'] or 'unknown'}")
        self.state.remember("model", str(path) if path else None)
        self.state.model_changed.emit()
        changes = postprocess_changes(old.postprocess, model.postprocess) if old is not None else ""
        if not quiet:
            version = self.version()
            who = f"'{version.title}'" if version is not None else s["name"]
            self.state.info(f"Now using {who}" + (f"; its post-processing: {changes}." if changes else "."))
        return True

    def warm(self, tile: int, device: str) -> None:
        if self.state.model is not None:
            self.warm_thread = threading.Thread(target=warm_up, args=(self.state.model, tile, device), daemon=True)
            self.warm_thread.start()
            _WARMING[:] = [t for t in _WARMING if t.is_alive()] + [self.warm_thread]
