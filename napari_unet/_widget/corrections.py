"""Corrections: export a corrected labels plane with the image it belongs to, as a training pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton, create_widget
from napari.layers import Image, Labels, Shapes

from ..errors import NapariUnetError
from ..pairs import count_pairs, export_pair
from .labels import LabelsWriter
from .state import State, digest


def _size(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape[:2]))


class CorrectionsSection:
    """Labels → its image (remembered, or picked by the user for foreign labels) → pairs folder."""

    def __init__(self, state: State, writer: LabelsWriter) -> None:
        self.state, self.writer = state, writer
        self.labels = create_widget(annotation=Labels, label="labels", options={"tooltip": (
            "The labels layer you corrected with the brush. Follows the labels layer you select.")})
        self.image = create_widget(annotation=Image, label="image", options={"tooltip": (
            "The image these labels belong to. Fixed for labels this widget segmented; for labels you "
            "made yourself, pick the image you drew them on.")})
        self.region = create_widget(annotation=Shapes, label="only inside", options={"nullable": True, "tooltip": (
            "Optional: export only the last rectangle drawn in this Shapes layer (the rest counts as not "
            "reviewed). None: the whole plane.")})
        self.folder = FileEdit(mode="d", label="pairs folder", value=str(state.pairs_dir), tooltip=(
            "Where corrected pairs are saved. Fine-tuning learns from this folder; new models go to "
            "'models' beside it."))
        self.count = Label(value="")
        self.what = Label(value="")
        self.export_btn = PushButton(text="Export corrections", tooltip=(
            "Save the current plane of the labels and its image as a training pair."))
        self.main = Container(widgets=[self.labels, self.image, self.region, self.folder, self.count, self.what,
                                       self.export_btn])
        self.labels.changed.connect(self._follow_labels)
        self.image.changed.connect(self._describe)
        self.folder.changed.connect(self._folder_changed)
        self.export_btn.changed.connect(self.export)
        state.labels_written.connect(self._select)
        state.viewer.layers.selection.events.active.connect(self._follow_active)
        self.refresh_count()

    def detach(self) -> None:
        self.state.viewer.layers.selection.events.active.disconnect(self._follow_active)

    def _follow_active(self, *_: Any) -> None:
        active = self.state.viewer.layers.selection.active
        if isinstance(active, Labels):
            self._select(active)

    def _select(self, layer: Labels) -> None:
        if layer in self.labels.choices:
            self.labels.value = layer
        self._follow_labels()

    def _follow_labels(self, *_: Any) -> None:
        """A labels layer the widget wrote is tied to its source image; others let the user pick."""
        result = self.state.result(self.labels.value)
        source = result.source() if result else None
        if source is not None and source in self.image.choices:
            self.image.value = source
            self.image.enabled = False
        else:
            self.image.enabled = True
        self._describe()

    def _describe(self, *_: Any) -> None:
        labels, image = self.labels.value, self.image.value
        self.what.value = f"Export '{labels.name}' with '{image.name}'" if labels and image else ""

    def _folder_changed(self, *_: Any) -> None:
        self.state.remember("pairs_dir", str(self.folder.value))
        self.refresh_count()
        self.state.pairs_changed.emit()

    def refresh_count(self) -> None:
        n = count_pairs(self.state.pairs_dir)
        self.count.value = f"{n} pair{'s' if n != 1 else ''} in the folder"

    def _rectangle(self, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
        layer = self.region.value
        if layer is None or not len(layer.data):
            return None
        v = np.asarray(layer.data[-1])[:, -2:]
        y0, x0 = np.floor(v.min(0)).astype(int)
        y1, x1 = np.ceil(v.max(0)).astype(int)
        return max(0, y0), max(0, x0), min(shape[0], y1), min(shape[1], x1)

    def _planes(self, labels: Labels, image: Image) -> tuple[tuple[int, ...], np.ndarray, np.ndarray] | str:
        """The current plane of both layers, or why they do not belong together."""
        result = self.state.result(labels)
        source = result.source() if result else None
        if source is not None and source is not image:
            return (f"'{labels.name}' was segmented from '{source.name}', not '{image.name}'; "
                    f"it can only be exported with '{source.name}'.")
        plane = self.writer.current_plane(image)
        img = np.asarray(image.data[plane] if plane else image.data)
        lead = labels.ndim - 2
        if lead not in (0, len(plane)):
            return f"'{labels.name}' has {labels.ndim} dimensions but '{image.name}' has {image.ndim}."
        lab = np.asarray(labels.data[plane] if lead else labels.data)
        if img.shape[:2] != lab.shape:
            return (f"'{labels.name}' ({_size(lab.shape)}) does not fit '{image.name}' ({_size(img.shape)}); "
                    "pick the image the labels were drawn on.")
        return plane, img, lab

    def export(self, *_: Any) -> None:
        """Write the current plane of the chosen labels and its image as a training pair."""
        labels, image = self.labels.value, self.image.value
        if labels is None:
            return self.state.error("There is no labels layer; segment an image or add a labels layer first.")
        if image is None:
            return self.state.error("There is no image layer to pair the labels with.")
        planes = self._planes(labels, image)
        if isinstance(planes, str):
            return self.state.error(planes)
        plane, img, lab = planes
        result = self.state.result(labels)
        if result is not None and self.writer.unedited(labels):
            return self.state.error("The labels are unchanged since segmentation; correct them with the brush first.")
        rect = self._rectangle(lab.shape)
        if self.region.value is not None and rect is None:
            return self.state.error(f"Draw a rectangle in '{self.region.value.name}' first, or choose None.")
        key, fingerprint = (id(labels), plane), digest(img, lab, np.asarray(rect or (), dtype=np.int64))
        if self.state.exports.get(key) == fingerprint:
            return self.state.error(f"This plane of '{labels.name}' is already exported, unchanged.")
        folder = Path(self.folder.value)
        try:
            record = export_pair(folder, img, lab, rect=rect, source=image.name, plane=plane,
                                 model=result.model_name if result else "")
        except (NapariUnetError, OSError) as exc:
            return self.state.error(f"Could not export the pair: {exc}")
        self.state.exports[key] = fingerprint
        self.refresh_count()
        self.state.pairs_changed.emit()
        self.state.info(f"Exported '{labels.name}' with '{image.name}' as pair {record.name} in {folder}.")
