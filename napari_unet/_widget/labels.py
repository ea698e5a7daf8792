"""Labels layers the widget writes: one per image, never overwriting a user's edits, and
re-labelled from stored probabilities (no network run) when post-processing values change.

A result that replaces labels already in a layer goes through napari's edit history
(``Labels.data_setitem``, public since napari 0.4), so napari's own Ctrl+Z on the layer undoes a
Segment or re-label as it undoes a brush stroke."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import create_worker

from napari_unet._widget.state import Result, State, digest
from napari_unet._widget.stepped_add import add_in_steps
from napari_unet.engine.postprocess import PostprocessConfig
from napari_unet.engine.scale import postprocess_at_scale
from napari_unet.engine.segmentation import count_sentence, instance_labels, object_counts

UNDO_STEPS = 5  # Segment/re-label results that Undo can step back through, per dock
HISTORY_DIGESTS = 100  # earlier results Ctrl+Z may bring back (napari keeps 100 steps per layer)
HISTORY_BYTES = 1 << 28  # larger labels are replaced whole, outside both undo histories (memory)
# more changed pixels are replaced whole, outside napari's history: its per-pixel bookkeeping costs the
# main thread ~0.2 µs a pixel (2-core CPU), ~0.2 s at this many; the dock's Undo still covers them
HISTORY_PIXELS = 1 << 20

RelabelFn = Callable[[Labels, str, float, int], None]


def _earlier(result: Result) -> tuple[str, ...]:
    """The digests Ctrl+Z may bring back once ``result``'s labels are replaced: its earlier ones and its current one."""
    return (*result.earlier, result.written)[-HISTORY_DIGESTS:]


def with_plane(stack: np.ndarray, plane: tuple[int, ...], labels: np.ndarray) -> np.ndarray:
    """A copy of ``stack`` (widened if needed) with ``labels`` written into ``plane``."""
    out = np.array(stack, dtype=np.result_type(stack.dtype, labels.dtype))
    out[plane] = labels
    return out


class LabelsWriter:
    """Writes segmentation results into labels layers and remembers where each came from."""

    def __init__(self, state: State, on_relabel: RelabelFn | None = None) -> None:
        """``on_relabel(layer, found, scale, min_size)`` is told each re-labelled layer's count
        sentence and the scale and min size (image pixels) used."""
        self.state = state
        self.on_relabel = on_relabel
        self.pending = 0  # re-labelling workers still running
        self._generation = 0
        self.history: list[tuple[weakref.ref, np.ndarray]] = []  # labels before each Segment/re-label

    def _remember(self, layer: Labels) -> None:
        """Keep the layer's labels before a Segment or re-label replaces them (the last few; not for
        labels over 256 MiB, which would hold that much memory per step)."""
        if np.asarray(layer.data).nbytes > HISTORY_BYTES:
            self.history = []
            return
        self.history = [*self.history[-(UNDO_STEPS - 1):], (weakref.ref(layer), np.array(layer.data, copy=True))]

    def undo(self) -> Labels | None:
        """Put back the labels the last Segment or re-label replaced; the layer, or None if nothing to undo."""
        while self.history:
            ref, before = self.history.pop()
            layer, result = ref(), self.state.result(ref())
            if layer is None or layer not in self.state.viewer.layers or result is None:
                continue
            self._generation += 1  # a re-labelling still running would replace them again
            self._replace(layer, before)
            result.earlier = _earlier(result)
            result.written = digest(np.asarray(layer.data))
            return layer
        return None

    @staticmethod
    def _replace(layer: Labels, data: np.ndarray) -> None:
        """Put ``data`` into an existing layer as one step of napari's edit history (Ctrl+Z undoes it),
        writing only the pixels that change; a layer of another shape or type, too large to keep the
        change in memory, or with more than :data:`HISTORY_PIXELS` changes is replaced whole (outside
        napari's history)."""
        old = layer.data
        same = isinstance(old, np.ndarray) and old.shape == data.shape and old.dtype == data.dtype
        differs = old != data if same and old.nbytes <= HISTORY_BYTES else None
        if differs is None or np.count_nonzero(differs) > HISTORY_PIXELS:
            layer.data = data
            return
        changed = np.nonzero(differs)  # only changing pixels: older napari keeps every value it is given
        try:
            with layer.events.paint.blocker():  # not a brush edit: the review must not count it as one
                layer.data_setitem(changed, data[changed])
        except (ValueError, IndexError):  # a napari whose view update cannot take these (planes not shown)
            layer.data = data

    @staticmethod
    def compact(labels: np.ndarray) -> np.ndarray:
        """uint16 when the labels fit (with room to paint new ones): napari shows them faster."""
        return labels.astype(np.uint16) if int(labels.max(initial=0)) < 60000 else labels

    def current_plane(self, layer: Image | Labels) -> tuple[int, ...]:
        lead = layer.ndim - 2 - (1 if getattr(layer, "rgb", False) else 0)
        if lead <= 0:
            return ()
        step = self.state.viewer.dims.current_step[-(lead + 2):]
        return tuple(int(min(max(0, s), n - 1)) for s, n in zip(step[:lead], layer.data.shape[:lead]))

    def unedited(self, layer: Labels) -> bool:
        result = self.state.result(layer)
        if result is not None and result.lazy:  # zarr-backed: never read whole
            return not result.edited
        if result is not None and result.pending:  # the empty layer from prepare(): still empty?
            return not np.asarray(layer.data).any()  # (a scan: ~1 ms vs ~20 ms for a 2048² digest)
        # an earlier result of the dock's, brought back by Ctrl+Z, is not an edit either
        return result is not None and digest(np.asarray(layer.data)) in (result.written, *result.earlier)

    def prepare(self, image: Image) -> Labels | None:
        """At the click, add the empty layer a first result for ``image`` will go to.

        napari builds a new layer's visuals, overlays and controls in one main-thread step that
        does not depend on the data (0.2–0.4 s on a 2-core machine with software OpenGL); done
        here, the result's arrival only replaces the data of an existing layer. Returns the new
        layer, or None when ``image`` already has one (or its name is taken by a user's layer)."""
        viewer = self.state.viewer
        if self._own_layer(image) is not None or f"{image.name} labels" in viewer.layers:
            return None
        data = np.zeros(image.data.shape[: image.ndim], np.uint16)
        layer = add_in_steps(viewer, data, name=f"{image.name} labels", scale=image.scale[-data.ndim:],
                             translate=image.translate[-data.ndim:])
        self.state.set_result(layer, Result(weakref.ref(image), None, None, "", "", pending=True))
        return layer

    def discard(self, layer: Labels | None) -> None:
        """Remove a layer from :meth:`prepare` that got no result (cancelled, failed, image removed),
        unless the user painted on it meanwhile."""
        result = self.state.result(layer)
        if result is not None and result.pending and layer in self.state.viewer.layers and self.unedited(layer):
            self.state.viewer.layers.remove(layer)

    def _own_layer(self, image: Image) -> Labels | None:
        """The unedited labels layer the widget wrote for ``image`` (updated in place on re-runs)."""
        for layer, result in self.state.results():
            if (result.source() is image and not result.lazy and self.unedited(layer)
                    and layer in self.state.viewer.layers):
                return layer
        return None

    def write(self, image: Image, plane: tuple[int, ...] | None, labels: np.ndarray, probs: np.ndarray,
              model_name: str, labels_digest: str | None = None, scale: float = 1.0) -> Labels:
        """``labels_digest``: ``digest(labels)`` if the worker computed it (saves main-thread time);
        ``scale``: the scale the network ran at (re-labelling scales the post-processing sizes)."""
        viewer = self.state.viewer
        layer = self._own_layer(image)
        name, earlier = f"{image.name} labels", ()
        if layer is None and name in viewer.layers:
            self.state.warn(f"'{name}' has your edits, so the new result goes to a new layer; nothing was overwritten.")
            k = 2
            while f"{name} [{k}]" in viewer.layers:
                k += 1
            name = f"{name} [{k}]"
        data = labels
        if plane is not None:
            base = layer.data if layer is not None else np.zeros(image.data.shape[: image.ndim], labels.dtype)
            data = with_plane(base, plane, labels)
        if layer is None:
            layer = add_in_steps(viewer, data, name=name, scale=image.scale[-data.ndim:],
                                 translate=image.translate[-data.ndim:])
            new = True
        else:
            old = self.state.result(layer)
            new = old.pending  # the empty layer from prepare(): its first result
            if new:
                layer.data = data
            else:
                self._remember(layer)
                self._replace(layer, data)
                earlier = _earlier(old)
        same = labels_digest is not None and layer.data is labels  # napari kept the array as given
        written = labels_digest if same else digest(np.asarray(layer.data))
        self.state.set_result(layer, Result(weakref.ref(image), plane, probs, written, model_name, scale,
                                            earlier=earlier))
        if new:
            self.state.labels_written.emit(layer)
        self._generation += 1  # a re-labelling still running was computed from older probabilities
        return layer

    def relabel(self, config: PostprocessConfig) -> None:
        """Re-apply post-processing to stored probabilities, off the UI thread; only the newest
        request is applied, and never to a layer the user has edited meanwhile."""
        self._generation += 1
        generation, jobs = self._generation, []
        for layer, result in self.state.results():
            if result.lazy:
                self.state.message.emit(f"'{layer.name}' was segmented block by block; press Segment to apply "
                                        "new post-processing values to it.")
            elif result.pending or result.probs is None:
                continue  # an empty layer still waiting for its first result, or a class map
            elif self.unedited(layer):
                jobs.append((layer, result.probs, result.scale, layer.data.shape[-2:]))
            elif layer in self.state.viewer.layers:
                self.state.message.emit(f"'{layer.name}' has your edits; post-processing was not re-applied to it.")
        if not jobs:
            return

        def work() -> list[tuple[Labels, np.ndarray, str, float, int]]:
            out = []
            for layer, p, scale, shape in jobs:
                labels = self.compact(instance_labels(p, shape, scale, config))
                found = count_sentence(object_counts(labels))
                out.append((layer, labels, found, scale, postprocess_at_scale(config, scale).min_size))
            return out

        self.pending += 1
        worker = create_worker(work, _ignore_errors=True)
        worker.returned.connect(lambda out: self._apply(generation, out))
        worker.errored.connect(lambda exc: self.state.error(f"Post-processing failed ({exc})."))
        worker.finished.connect(self._relabel_finished)
        worker.start()

    def _relabel_finished(self) -> None:
        self.pending -= 1

    def _apply(self, generation: int, out: list[tuple[Labels, Any, str, float, int]]) -> None:
        if generation != self._generation:
            return  # a newer request is on its way
        for layer, labels, found, scale, min_size in out:
            result = self.state.result(layer)
            if result is None or not self.unedited(layer):
                continue
            self._remember(layer)
            self._replace(layer, labels if result.plane is None else with_plane(layer.data, result.plane, labels))
            result.earlier = _earlier(result)
            result.written = digest(np.asarray(layer.data))
            if self.on_relabel is not None:
                self.on_relabel(layer, found, scale, min_size)
