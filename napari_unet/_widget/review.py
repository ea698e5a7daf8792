"""Review: the model points to the objects it doubts; the user checks them one by one and exports
only what was checked as a sparse training pair (:mod:`napari_unet.training.review`).

The labels and image are the Corrections section's choice; the review runs on the current plane
(for labels too large to hold, on the part shown on the canvas). A points layer marks each
doubtful object (orange, more opaque when more doubtful; green once reviewed) and can be hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label, PushButton
from napari.layers import Image, Labels, Points
from napari.qt.threading import create_worker
from qtpy.QtCore import QTimer

from napari_unet._widget.regions import MAX_REGION, is_lazy, plane_shape, read_region, visible_rect
from napari_unet._widget.state import State, ui_threads
from napari_unet.errors import NapariUnetError
from napari_unet.training.pairs import export_reviewed_objects
from napari_unet.training.review import Doubt, review_table
from napari_unet.training.verdict import units_text

if TYPE_CHECKING:
    from napari_unet._widget.corrections import CorrectionsSection

DOUBTFUL = 0.5  # rows at or above this count as "doubtful" in the section's count
NEXT_KEY, RIGHT_KEY = "Shift-N", "Shift-R"
REVIEWED_COLOR, DOUBT_COLOR = (0.2, 0.9, 0.3, 1.0), (1.0, 0.55, 0.0)


@dataclass
class Review:
    """One review of one plane of one labels layer."""

    labels: Labels
    image: Image
    plane: tuple[int, ...]  # the image's plane; the labels' own index is ``lplane``
    lplane: tuple[int, ...]
    origin: tuple[int, int]  # where the reviewed arrays start in the plane
    image_data: np.ndarray
    before: np.ndarray  # the labels when the review started (brush edits are found against it)
    rows: list[Doubt]
    reviewed: set[int] = field(default_factory=set)  # label ids checked by the user
    dismissed: set[int] = field(default_factory=set)  # rows (by index) looked at: reviewed or no nucleus
    touched: np.ndarray | None = None  # background the user painted or erased
    current: int | None = None  # the row shown last

    def labels_now(self) -> np.ndarray:
        y0, x0 = self.origin
        h, w = self.before.shape
        return read_region(self.labels, self.lplane, (y0, x0, y0 + h, x0 + w))


class ReviewSection:
    """Find doubtful objects, Next doubtful, Looks right, Export reviewed; brush edits count as reviewed."""

    def __init__(self, state: State, corrections: CorrectionsSection, channel: Callable[[], int | None]) -> None:
        """``channel()``: the channel the Segment section feeds the model (colour/multichannel images)."""
        self.state, self.corrections, self.channel = state, corrections, channel
        self.review: Review | None = None
        self.overlay: Points | None = None
        self.worker = None
        self.find_btn = PushButton(text="Find doubtful objects", tooltip=(
            "Rank the objects of the labels (Corrections section) by how much the model doubts them, and "
            "show where it may have missed a nucleus. Runs in the background on the current plane."))
        self.next_btn = PushButton(text="Next doubtful", enabled=False, tooltip=(
            f"Centre the view on the next object worth checking and select its label for the brush ({NEXT_KEY})."))
        self.right_btn = PushButton(text="Looks right", enabled=False, tooltip=(
            f"The object shown is correct: count it as reviewed ({RIGHT_KEY}). Editing an object with the "
            "brush counts it as reviewed too."))
        self.export_btn = PushButton(text="Export reviewed", enabled=False, tooltip=(
            "Save the reviewed objects (with a thin ring of background) and the background you painted as a "
            "training pair; the rest of the image is left out of training. Objects are exported once."))
        self.count = Label(value="", tooltip="Objects you checked, and doubtful ones not checked yet.")
        buttons = Container(widgets=[self.next_btn, self.right_btn], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.main = Container(widgets=[self.find_btn, buttons, self.export_btn, self.count])
        self.find_btn.changed.connect(self.find)
        self.next_btn.changed.connect(self.next)
        self.right_btn.changed.connect(self.looks_right)
        self.export_btn.changed.connect(self.export)
        state.viewer.bind_key(NEXT_KEY, lambda _viewer: self.next(), overwrite=True)
        state.viewer.bind_key(RIGHT_KEY, lambda _viewer: self.looks_right(), overwrite=True)

    def detach(self) -> None:
        for key in (NEXT_KEY, RIGHT_KEY):
            self.state.viewer.bind_key(key, None, overwrite=True)
        self._stop_following()

    # -- finding ------------------------------------------------------------------------------
    def _arrays(self, labels: Labels, image: Image) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, int],
                                                               np.ndarray, np.ndarray] | str:
        """The current plane of both layers (of a lazy layer: the part shown), or why not."""
        plane = self.corrections.writer.current_plane(image)
        lead = labels.ndim - 2
        if lead not in (0, len(plane)):
            return f"'{labels.name}' has {labels.ndim} dimensions but '{image.name}' has {image.ndim}."
        result = self.state.result(labels)
        lplane = (0,) * lead if result is not None and result.lazy and result.plane else (plane if lead else ())
        shape = plane_shape(image)
        if plane_shape(labels) != shape:
            return f"'{labels.name}' does not fit '{image.name}'; pick the image the labels were drawn on."
        rect: tuple[int, int, int, int] | None = (0, 0, *shape)
        if is_lazy(labels) or is_lazy(image):
            rect = visible_rect(labels, shape)
            if rect is None or max(rect[2] - rect[0], rect[3] - rect[1]) > MAX_REGION:
                return (f"'{labels.name}' is too large to review whole: zoom in to at most {MAX_REGION}×"
                        f"{MAX_REGION} pixels; the part shown is reviewed.")
        img, lab = read_region(image, plane, rect), read_region(labels, lplane, rect)
        return plane, lplane, rect[:2], img, lab

    def find(self, *_: Any) -> None:
        labels, image, model = self.corrections.labels.value, self.corrections.image.value, self.state.model
        if labels is None or image is None:
            return self.state.error("Choose the labels and their image in the Corrections section first.")
        if model is None:
            return self.state.error("No model is loaded.")
        if self.worker is not None:
            return self.state.error("Doubtful objects are already being looked for.")
        arrays = self._arrays(labels, image)
        if isinstance(arrays, str):
            return self.state.error(arrays)
        plane, lplane, origin, img, lab = arrays
        options = {"channel_axis": -1 if image.rgb else None, "channel": self.channel()}
        result = self.state.result(labels)
        probs, scale = None, "auto"
        if result is not None and result.probs is not None and not result.lazy and origin == (0, 0):
            p = result.probs if result.plane is not None or not plane else result.probs[plane]
            probs, scale = p, result.scale  # the segmentation's own probabilities: one network run saved

        def work() -> list[Doubt]:
            import torch

            torch.set_num_threads(ui_threads())
            return review_table(model, img, lab, probabilities=probs, scale=scale, **options)

        self.find_btn.enabled = False
        self.state.message.emit(f"Looking for doubtful objects in '{labels.name}'…")
        self.worker = create_worker(work, _ignore_errors=True)
        self.worker.returned.connect(lambda rows: self._found(labels, image, plane, lplane, origin, img, lab, rows))
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def _failed(self, exc: Exception) -> None:
        text = str(exc) if isinstance(exc, NapariUnetError) else f"{type(exc).__name__}: {exc}"
        self.state.error(f"Could not rank the objects ({text}).")

    def _finished(self) -> None:
        self.worker = None
        try:
            self.find_btn.enabled = True
        except RuntimeError:  # the dock is gone
            pass

    def _found(self, labels: Labels, image: Image, plane: tuple[int, ...], lplane: tuple[int, ...],
               origin: tuple[int, int], img: np.ndarray, lab: np.ndarray, rows: list[Doubt]) -> None:
        viewer = self.state.viewer
        if labels not in viewer.layers or image not in viewer.layers:
            return self.state.warn("The layers were removed, so the review was dropped.")
        self._stop_following()
        self.review = Review(labels, image, plane, lplane, origin, img, lab.copy(), rows)
        labels.events.paint.connect(self._paint_event)
        self._draw()
        for w in (self.next_btn, self.right_btn, self.export_btn):
            w.enabled = True
        self._show_count()
        self.state.message.emit(f"{len(rows)} objects ranked in '{labels.name}'; press Next doubtful ({NEXT_KEY}).")

    def _stop_following(self) -> None:
        if self.review is not None:
            self.review.labels.events.paint.disconnect(self._paint_event)

    # -- the overlay ------------------------------------------------------------------------------
    def _draw(self) -> None:
        r = self.review
        viewer = self.state.viewer
        coords = np.array([[*r.lplane, d.centroid[0] + r.origin[0], d.centroid[1] + r.origin[1]] for d in r.rows],
                          float).reshape(-1, r.labels.ndim)
        colors = np.array([REVIEWED_COLOR if i in r.dismissed or (not d.missed and d.id in r.reviewed)
                           else (*DOUBT_COLOR, max(0.1, d.doubt)) for i, d in enumerate(r.rows)]).reshape(-1, 4)
        sizes = np.array([1.6 * np.sqrt(max(d.area, 16)) for d in r.rows])
        if self.overlay is None or self.overlay not in viewer.layers:
            self.overlay = viewer.add_points(
                coords, name=f"{r.labels.name} doubt", size=sizes, face_color="transparent", border_color=colors,
                border_width=0.08, scale=r.labels.scale, translate=r.labels.translate, opacity=0.9)
            viewer.layers.selection.active = r.labels
        else:
            self.overlay.data = coords
            self.overlay.size, self.overlay.border_color = sizes, colors
        self.overlay.features = {"doubt": [d.doubt for d in r.rows], "reason": [d.reason for d in r.rows]}

    # -- walking through the doubtful objects -----------------------------------------------------
    def next(self, *_: Any) -> None:
        r = self.review
        if r is None:
            return self.state.error("Press Find doubtful objects first.")
        todo = [i for i, d in enumerate(r.rows) if i not in r.dismissed and (d.missed or d.id not in r.reviewed)]
        if not todo:
            return self.state.info("Every ranked object is reviewed.")
        start = 0 if r.current is None or r.current not in todo else todo.index(r.current) + 1
        r.current = todo[start % len(todo)]
        row = r.rows[r.current]
        self._show(row)
        what = "A nucleus may be missed here" if row.missed else f"Object {row.id}: {row.reason}"
        self.state.message.emit(f"{what} (doubt {row.doubt:.2f}).")

    def _show(self, row: Doubt) -> None:
        r, viewer = self.review, self.state.viewer
        y0, x0, y1, x1 = row.bbox
        data = np.array([*r.lplane, row.centroid[0] + r.origin[0], row.centroid[1] + r.origin[1]], float)
        world = np.asarray(r.labels.data_to_world(data))
        viewer.camera.center = tuple(world[-2:])
        typical = float(np.median([np.sqrt(d.area) for d in r.rows]))  # a nucleus' side, roughly
        extent = max(y1 - y0, x1 - x0, 2 * typical) * float(np.max(np.abs(r.labels.scale[-2:])))
        canvas = getattr(viewer, "_canvas_size", (600, 600))
        viewer.camera.zoom = min(canvas) / (5 * extent)  # the object with its neighbours around it
        r.labels.selected_label = int(np.max(r.labels_now())) + 1 if row.missed else row.id
        viewer.layers.selection.active = r.labels

    def looks_right(self, *_: Any) -> None:
        r = self.review
        if r is None or r.current is None:
            return self.state.error("Press Next doubtful first.")
        row = r.rows[r.current]
        r.dismissed.add(r.current)
        if row.missed:  # no nucleus there: the model was right to leave it as background
            y0, x0, y1, x1 = row.bbox
            touched = r.touched if r.touched is not None else np.zeros(r.before.shape, bool)
            touched[y0:y1, x0:x1] |= r.before[y0:y1, x0:x1] == 0
            r.touched = touched
        else:
            r.reviewed.add(row.id)
        self._draw()
        self._show_count()
        self.next()

    def _paint_event(self, *_: Any) -> None:
        QTimer.singleShot(0, self._painted)  # napari emits the event before it writes the pixels

    def _painted(self, *_: Any) -> None:
        """A brush, fill or eraser edit: the objects it changed are reviewed, background it touched counts."""
        r = self.review
        if r is None or r.labels not in self.state.viewer.layers:
            return
        now = r.labels_now()
        changed = now != r.before
        if not changed.any():
            return
        present = set(np.unique(now).tolist())
        edited = set(np.unique(now[changed]).tolist()) | (set(np.unique(r.before[changed]).tolist()) & present)
        r.reviewed |= {int(i) for i in edited if i}  # painted, and partly erased or painted over
        cleared = changed & (now == 0)
        r.touched = cleared if r.touched is None else (r.touched | cleared)
        for i, d in enumerate(r.rows):  # a row whose object was painted over is reviewed too
            if not d.missed and d.id in r.reviewed:
                r.dismissed.add(i)
        self._draw()
        self._show_count()

    def _show_count(self) -> None:
        r = self.review
        left = sum(1 for i, d in enumerate(r.rows) if d.doubt >= DOUBTFUL and i not in r.dismissed)
        self.count.value = f"{len(r.reviewed)} reviewed · {left} doubtful left"

    # -- export -------------------------------------------------------------------------------------
    def export(self, *_: Any) -> None:
        r = self.review
        if r is None:
            return self.state.error("Press Find doubtful objects first.")
        now = r.labels_now()
        reviewed = {i for i in r.reviewed if (now == i).any()}
        if not reviewed and (r.touched is None or not r.touched.any()):
            return self.state.error("Nothing is reviewed yet: press Looks right or correct objects with the brush.")
        folder = Path(self.corrections.folder.value)
        result = self.state.result(r.labels)
        try:
            record = export_reviewed_objects(folder, r.image_data, now, reviewed, r.touched, source=r.image.name,
                                             plane=r.plane, model=result.model_name if result else "",
                                             origin=r.origin)
        except (NapariUnetError, OSError) as exc:
            return self.state.error(f"Could not export the reviewed objects: {exc}")
        if record is None:
            return self.state.info("These reviewed objects and erased regions are already exported; review more "
                                   "objects first.")
        self.corrections.refresh_count()
        self.state.pairs_changed.emit()
        what = units_text(len(record.object_ids or []), record.erased_regions or 0)
        self.state.info(f"Exported {what} of '{r.labels.name}' (reviewed) as pair {record.name} in {folder}.")
