"""Corrections: export a corrected labels plane with the image it belongs to, as a training pair."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from magicgui.widgets import Container, FileEdit, Label, PushButton, create_widget
from napari.layers import Image, Labels, Shapes

from napari_unet._widget.labels import LabelsWriter
from napari_unet._widget.regions import MAX_REGION, is_lazy, plane_shape, read_region, visible_rect
from napari_unet._widget.state import State, digest
from napari_unet.errors import NapariUnetError
from napari_unet.training.pairs import CONTEXT, count_pairs, export_pair

# plane, image, labels, rectangle (in those arrays) or None, where the arrays start in the plane
Planes = tuple[tuple[int, ...], np.ndarray, np.ndarray, "tuple[int, int, int, int] | None", tuple[int, int]]


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
        state.viewer.layers.selection.events.active.connect(self.follow_active)
        self.refresh_count()

    def detach(self) -> None:
        self.state.viewer.layers.selection.events.active.disconnect(self.follow_active)

    def follow_active(self, *_: Any) -> None:
        """Show the selected layer in *labels* when it is a labels layer."""
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

    def _ready(self, labels: Labels) -> str | None:
        """Why the labels are not worth exporting yet, if so."""
        if self.state.result(labels) is not None and self.writer.unedited(labels):
            return "The labels are unchanged since segmentation; correct them with the brush first."
        return None

    def _planes(self, labels: Labels, image: Image) -> Planes | str:
        """The current plane of both layers and the rectangle, or why they cannot be exported."""
        plane = self.writer.current_plane(image)
        img = np.asarray(image.data[plane] if plane else image.data)
        lead = labels.ndim - 2
        if lead not in (0, len(plane)):
            return f"'{labels.name}' has {labels.ndim} dimensions but '{image.name}' has {image.ndim}."
        lab = np.asarray(labels.data[plane] if lead else labels.data)
        if img.shape[:2] != lab.shape:
            return (f"'{labels.name}' ({_size(lab.shape)}) does not fit '{image.name}' ({_size(img.shape)}); "
                    "pick the image the labels were drawn on.")
        if why := self._ready(labels):
            return why
        rect = self._rectangle(lab.shape)
        if self.region.value is not None and rect is None:
            return f"Draw a rectangle in '{self.region.value.name}' first, or choose None."
        return plane, img, lab, rect, (0, 0)

    def _region(self, labels: Labels, image: Image) -> Planes | str:
        """Lazy layers (dask, zarr, multiscale) are never read whole: only the rectangle, or else the
        part shown on the canvas, with some context around it."""
        plane, lead = self.writer.current_plane(image), labels.ndim - 2
        if lead not in (0, len(plane)):
            return f"'{labels.name}' has {labels.ndim} dimensions but '{image.name}' has {image.ndim}."
        result = self.state.result(labels)
        if result is not None and result.plane is not None:  # a zarr holding one plane of the stack
            if result.plane != plane:
                return f"'{labels.name}' holds plane {result.plane} only; go to that plane to export it."
            lplane = (0,) * lead
        else:
            lplane = plane if lead else ()
        shape, lab_shape = plane_shape(image), plane_shape(labels)
        if shape != lab_shape:
            return (f"'{labels.name}' ({_size(lab_shape)}) does not fit '{image.name}' ({_size(shape)}); "
                    "pick the image the labels were drawn on.")
        if why := self._ready(labels):
            return why
        if self.region.value is not None:
            rect = self._rectangle(shape)
            if rect is None:
                return f"Draw a rectangle in '{self.region.value.name}' first, or choose None."
        else:
            rect = visible_rect(labels, shape)
        if rect is None or max(rect[2] - rect[0], rect[3] - rect[1]) > MAX_REGION:
            return (f"'{labels.name}' is too large to export whole: zoom in to at most {MAX_REGION}×{MAX_REGION} "
                    "pixels, or draw a rectangle in a Shapes layer and choose it under 'only inside'.")
        y0, x0, y1, x1 = rect
        crop = (max(0, y0 - CONTEXT), max(0, x0 - CONTEXT), min(shape[0], y1 + CONTEXT), min(shape[1], x1 + CONTEXT))
        img, lab = read_region(image, plane, crop), read_region(labels, lplane, crop)
        return plane, img, lab, (y0 - crop[0], x0 - crop[1], y1 - crop[0], x1 - crop[1]), crop[:2]

    def export(self, *_: Any) -> None:
        """Write the current plane (or, for lazy layers, a region) of the labels and its image as a pair."""
        labels, image = self.labels.value, self.image.value
        if labels is None:
            return self.state.error("There is no labels layer; segment an image or add a labels layer first.")
        if image is None:
            return self.state.error("There is no image layer to pair the labels with.")
        result = self.state.result(labels)
        source = result.source() if result else None
        if source is not None and source is not image:
            return self.state.error(f"'{labels.name}' was segmented from '{source.name}', not '{image.name}'; "
                                    f"it can only be exported with '{source.name}'.")
        planes = self._region(labels, image) if is_lazy(labels) or is_lazy(image) else self._planes(labels, image)
        if isinstance(planes, str):
            return self.state.error(planes)
        plane, img, lab, rect, origin = planes
        key, fingerprint = (id(labels), plane), digest(img, lab, np.asarray((*origin, *(rect or ())), dtype=np.int64))
        if self.state.exports.get(key) == fingerprint:
            return self.state.error(f"This plane of '{labels.name}' is already exported, unchanged.")
        folder = Path(self.folder.value)
        try:
            record = export_pair(folder, img, lab, rect=rect, origin=origin, source=image.name, plane=plane,
                                 model=result.model_name if result else "")
        except (NapariUnetError, OSError) as exc:
            return self.state.error(f"Could not export the pair: {exc}")
        self.state.exports[key] = fingerprint
        self.refresh_count()
        self.state.pairs_changed.emit()
        self.state.info(f"Exported '{labels.name}' with '{image.name}' as pair {record.name} in {folder}.")
