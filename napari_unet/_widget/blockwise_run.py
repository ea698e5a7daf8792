"""Segment a large or lazy image layer block by block (:mod:`napari_unet.blockwise`) in a thread
worker; the labels go to a zarr on disk and the labels layer shows (and edits) that zarr lazily.

The zarr is written beside the image when napari opened it from a writable folder, else in
``labels`` under the user's napari-unet data folder (``NAPARI_UNET_DATA_DIR`` overrides it);
an existing output is never replaced: the name gets ``-2``, ``-3``, … instead.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image

from napari_unet._widget.job import Job
from napari_unet._widget.regions import level0
from napari_unet._widget.saved_results import SavedResults, labels_dir
from napari_unet._widget.state import Result, State
from napari_unet._widget.stepped_add import add_in_steps
from napari_unet.blockwise.engine import DEFAULT_BLOCK, BlockwiseOptions, BlockwiseResult, segment_blockwise
from napari_unet.engine.segmentation import count_sentence
from napari_unet.errors import Cancelled, os_error_sentence
from napari_unet.io.lazy import open_lazy, stem
from napari_unet.io.pixel_size import layer_pixel_size


def output_path(layer: Image, plane: tuple[int, ...] | None) -> Path:
    """A labels zarr path that does not exist yet: ``<image>_labels.zarr``, else ``…_labels-2.zarr``, …"""
    source = Path(layer.source.path) if layer.source.path else None
    base = stem(source) if source else "".join(c if c.isalnum() or c in "-_." else "_" for c in layer.name)
    if plane:
        base += "_p" + "-".join(map(str, plane))
    folder = source.parent if source is not None and os.access(source.parent, os.W_OK) else labels_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path, k = folder / f"{base}_labels.zarr", 2
    while path.exists():
        path, k = folder / f"{base}_labels-{k}.zarr", k + 1
    return path


def blockwise_source(layer: Image, plane: tuple[int, ...] | None) -> Any:
    """Level 0 of the layer, or its one plane kept as size-1 stack axes (still lazy: read per block)."""
    data = level0(layer)
    if not plane:
        return data
    if not isinstance(data, np.ndarray):
        import dask.array as da

        if not isinstance(data, da.Array):
            data = da.from_array(data, chunks=getattr(data, "chunks", "auto"))
    return data[tuple(slice(i, i + 1) for i in plane)]


class BlockwiseRun:
    """A large or lazy image segmented block by block, as a job of the Segment section: the labels
    zarr becomes a labels layer; ``report(image, found, scale)`` shows the result's summary."""

    block = DEFAULT_BLOCK  # block side in pixels

    def __init__(self, state: State, job: Job, saved: SavedResults,
                 report: Callable[[Image, str, float], None]) -> None:
        self.state, self.job, self.saved, self.report = state, job, saved, report

    def start(self, layer: Image, plane: tuple[int, ...] | None, options: BlockwiseOptions, channel: Any) -> None:
        """Segment ``layer`` (or its one ``plane``) with ``options`` in the background."""
        state, model = self.state, self.state.model
        try:
            source, out = blockwise_source(layer, plane), output_path(layer, plane)
        except OSError as exc:
            return state.error(f"Could not create the labels folder: {os_error_sentence(exc)}")
        channel_axis = -1 if layer.rgb else None
        pixel = layer_pixel_size(layer)

        def work(cancelled: Callable[[], bool], progress: Callable[[int, int], None]) -> BlockwiseResult | None:
            # an in-process dask cluster of one worker, started and closed within this call
            try:
                image = open_lazy(source, channel_axis=channel_axis, channel=channel)
                if image.pixel_size is None and pixel is not None:  # from the layer (or its OME-Zarr)
                    image = replace(image, pixel_size=(pixel, pixel))
                return segment_blockwise(image, out, model, options=options, workers=1, progress=progress,
                                         cancel=cancelled)
            except Cancelled:
                return None

        state.message.emit(f"Segmenting {layer.name} block by block into {out}…")
        self.job.start(work, lambda result: self._arrived(layer, plane, result, model.info.name), target=layer)

    def _arrived(self, image: Image, plane: tuple[int, ...] | None, result: BlockwiseResult | None,
                 model_name: str) -> None:
        import zarr

        state, viewer = self.state, self.state.viewer
        if result is not None:
            self.saved.add(result.out)
        if not any(layer is image for layer in viewer.layers):
            kept = f"; its labels are saved in {result.out}" if result else ", so its segmentation was dropped"
            return state.warn(f"The image '{image.name}' was removed{kept}.")
        if result is None:
            return state.info("Segmentation cancelled; nothing was changed.")
        data = zarr.open_array(str(result.out), mode="r+", path="0")  # brush edits write through to it
        name, k = f"{image.name} labels", 2
        while name in viewer.layers:
            name, k = f"{image.name} labels [{k}]", k + 1
        scale, translate = np.asarray(image.scale[-data.ndim:]), np.array(image.translate[-data.ndim:], float)
        for axis, i in enumerate(plane or ()):  # one plane of a stack: shown at its place only
            translate[axis] += i * scale[axis]
        # napari's build of the layer and its first read and draw of the zarr come apart
        layer = add_in_steps(viewer, data, name=name, scale=scale, translate=translate)
        layer.metadata["napari_unet_zarr"] = str(result.out)
        state.set_result(layer, Result(weakref.ref(image), plane or None, None, "", model_name,
                                          scale=result.scale.scale, lazy=True))
        ref = weakref.ref(layer)

        def edited(*_: Any) -> None:
            if (r := state.result(ref())) is not None:
                r.edited = True

        layer.events.paint.connect(edited)
        state.labels_written.emit(layer)
        counts = result.objects
        text = count_sentence(counts)
        text += f"; scale {result.scale.scale:.2f}" + (" (chosen automatically)" if result.scale.how != "given" else "")
        self.report(image, text, result.scale.scale)
        state.info(f"Segmented {image.name} block by block: {text} in layer '{name}', saved in {result.out}.")
