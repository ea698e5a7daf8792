"""Segment a large or lazy image layer block by block (:mod:`napari_unet.blockwise`) in a thread
worker; the labels go to a zarr on disk and the labels layer shows (and edits) that zarr lazily.

The zarr is written beside the image when napari opened it from a writable folder, else in
``labels`` under the user's napari-unet data folder (``NAPARI_UNET_DATA_DIR`` overrides it);
an existing output is never replaced: the name gets ``-2``, ``-3``, … instead.
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from napari.qt.threading import create_worker

from napari_unet._widget.regions import level0
from napari_unet._widget.state import Result, ui_threads
from napari_unet._widget.stepped_add import add_in_steps
from napari_unet.blockwise.engine import DEFAULT_BLOCK, BlockwiseOptions, BlockwiseResult, segment_blockwise
from napari_unet.engine.segmentation import count_sentence
from napari_unet.errors import Cancelled, os_error_sentence
from napari_unet.io.lazy import open_lazy, stem
from napari_unet.io.pixel_size import layer_pixel_size

if TYPE_CHECKING:
    from napari_unet._widget.segment import SegmentSection


def labels_dir() -> Path:
    """Where labels of images that are not in a writable folder on disk are saved."""
    if os.environ.get("NAPARI_UNET_DATA_DIR"):
        return Path(os.environ["NAPARI_UNET_DATA_DIR"]) / "labels"
    try:
        from platformdirs import user_data_dir
    except ImportError:
        return Path.home() / ".local" / "share" / "napari-unet" / "labels"
    return Path(user_data_dir("napari-unet", appauthor=False)) / "labels"


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
    """Runs on behalf of the Segment section: its progress bar, Cancel, worker slot and messages."""

    block = DEFAULT_BLOCK  # block side in pixels

    def __init__(self, section: SegmentSection) -> None:
        self.section = section

    def start(self, layer: Image, plane: tuple[int, ...] | None) -> None:
        s, state = self.section, self.section.state
        model = state.model
        try:
            source, out = blockwise_source(layer, plane), output_path(layer, plane)
        except OSError as exc:
            return state.error(f"Could not create the labels folder: {os_error_sentence(exc)}")
        scale = "auto" if s.auto_scale.value else float(s.scale.value)  # one scale for every block
        options = BlockwiseOptions(block=self.block, tile=s.tile.value, overlap=s.overlap.value,
                                   batch_size=s.batch.value, device=s.device.value, scale=scale,
                                   postprocess=s.postprocess(), threads=ui_threads())
        channel_axis, channel = (-1 if layer.rgb else None), s.channel.value
        pixel = layer_pixel_size(layer)
        s._cancel = cancel = threading.Event()

        def work() -> BlockwiseResult | None:
            # an in-process dask cluster of one worker, started and closed within this call
            try:
                image = open_lazy(source, channel_axis=channel_axis, channel=channel)
                if image.pixel_size is None and pixel is not None:  # from the layer (or its OME-Zarr)
                    image = replace(image, pixel_size=(pixel, pixel))
                return segment_blockwise(image, out, model, options=options, workers=1,
                                         progress=s._bridge.tick.emit, cancel=cancel.is_set)
            except Cancelled:
                return None

        s.target = layer
        s.run_btn.enabled, s.cancel_btn.enabled = False, True
        s.progress.max, s.progress.value = 1, 0
        s.summary.value = ""
        state.message.emit(f"Segmenting {layer.name} block by block into {out}…")
        s.worker = create_worker(work, _ignore_errors=True)
        s.worker.returned.connect(lambda result: self._arrived(layer, plane, result, model.info.name))
        s.worker.errored.connect(s._failed)
        s.worker.finished.connect(s._finished)
        s.worker.start()

    def _arrived(self, image: Image, plane: tuple[int, ...] | None, result: BlockwiseResult | None,
                 model_name: str) -> None:
        import zarr

        state, viewer = self.section.state, self.section.state.viewer
        if result is not None:
            self.section.saved.add(result.out)
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
        self.section.show_scale(result.scale.scale)
        self.section.summary.value = f"{image.name}: {text}"
        state.info(f"Segmented {image.name} block by block: {text} in layer '{name}', saved in {result.out}.")
