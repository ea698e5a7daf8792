"""The small state the dock's sections share: model in use, pairs folder, settings, messages.

Settings live in ``settings.json`` in the user config dir (``NAPARI_UNET_CONFIG_DIR`` overrides
the location, e.g. for tests), written atomically.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xxhash
from qtpy.QtCore import QObject, Signal

from napari_unet._widget.notify import notify
from napari_unet._widget.session import session_for
from napari_unet.engine.model import SegmentationModel
from napari_unet.io.atomic import atomic_path
from napari_unet.io.dirs import user_dir

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Labels

DEFAULT_PAIRS = str(Path.home() / "napari-unet" / "pairs")


def config_dir() -> Path:
    """Where settings are remembered between sessions."""
    return user_dir("config", "NAPARI_UNET_CONFIG_DIR")


def load_settings() -> dict[str, Any]:
    try:
        data = json.loads((config_dir() / "settings.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(values: dict[str, Any]) -> None:
    path = config_dir() / "settings.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(values, indent=1, default=str))
    except OSError:
        pass  # settings are a convenience; never fail a click over them


def ui_threads() -> int:
    """Torch threads for work started from the UI: leave napari's main thread a core."""
    return max(1, (os.cpu_count() or 2) - 1)


def digest(*arrays: np.ndarray) -> str:
    """A fingerprint of the arrays' shapes, dtypes and bytes, to tell whether a layer was edited
    (xxh3: a 2048² uint16 layer in ~0.3 ms, where blake2b took ~11 ms of the main thread)."""
    h = xxhash.xxh3_128()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.view(np.uint8).reshape(-1) if a.size else b"")
    return h.hexdigest()


@contextmanager
def lower_thread_priority(niceness: int = 10) -> Iterator[None]:
    """Let napari's main thread win the CPU over this worker thread while the block runs (Linux)."""
    try:
        tid = threading.get_native_id()
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, before + niceness)
    except (AttributeError, OSError):
        yield
        return
    try:
        yield
    finally:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, before)
        except OSError:
            pass  # raising priority back may need privileges; the thread stays lower


@dataclass
class Result:
    """What the widget remembers about a labels layer it wrote."""

    image: weakref.ref  # the Image layer it was segmented from
    plane: tuple[int, ...] | None  # None: the whole stack (lazy: the zarr holds this plane only)
    probs: np.ndarray | None  # None: lazy, a class map, 3D objects/tracks, or no result yet
    written: str  # digest of the labels as last written (edit detection)
    model_name: str
    scale: float = 1.0  # the scale the network ran at (post-processing sizes follow it)
    lazy: bool = False  # segmented block by block into a zarr that backs the layer (no probabilities kept)
    edited: bool = False  # lazy labels: napari reported a brush/fill/erase edit
    pending: bool = False  # a layer added empty at the click, still waiting for its first result
    earlier: tuple[str, ...] = ()  # digests of the dock's earlier results in this layer (napari's Ctrl+Z)

    def source(self) -> Image | None:
        return self.image()


class State(QObject):
    """Shared by the sections; signals tell the others what changed."""

    message = Signal(str)
    model_changed = Signal()
    pairs_changed = Signal()
    labels_written = Signal(object)  # a new labels layer the widget made

    def __init__(self, viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = viewer
        self.model: SegmentationModel | None = None
        self.model_path: Path | None = None
        self.settings: dict[str, Any] = load_settings()
        memory = session_for(viewer)  # outlives the dock
        self._results: dict[int, tuple[weakref.ref, Result]] = memory.results
        self.exports: dict[tuple[int, tuple[int, ...]], str] = memory.exports  # last export per layer and plane

    # -- messages -------------------------------------------------------------------------
    def info(self, text: str) -> None:
        self.message.emit(text)
        notify("info", text)

    def warn(self, text: str) -> None:
        self.message.emit(text)
        notify("warning", text)

    def error(self, text: str) -> None:
        self.message.emit(text)
        notify("error", text)

    # -- settings -------------------------------------------------------------------------
    def remember(self, key: str, value: Any) -> None:
        self.settings[key] = value
        save_settings(self.settings)

    @property
    def pairs_dir(self) -> Path:
        return Path(self.settings.get("pairs_dir") or DEFAULT_PAIRS).expanduser()

    # -- labels layers the widget wrote -----------------------------------------------------
    def result(self, labels: Labels | None) -> Result | None:
        entry = self._results.get(id(labels))
        if entry is None or entry[0]() is not labels:
            return None
        return entry[1]

    def set_result(self, labels: Labels, result: Result) -> None:
        for key in [k for k, v in self._results.items() if v[0]() is None]:
            del self._results[key]
        self._results[id(labels)] = (weakref.ref(labels), result)
        labels.metadata["napari_unet_source"] = result.image().name if result.image() else ""

    def forget(self, layer: Any) -> None:
        """Free what was stored for a removed layer (its probabilities can be large)."""
        self._results.pop(id(layer), None)

    def results(self) -> list[tuple[Labels, Result]]:
        return [(ref(), r) for ref, r in list(self._results.values()) if ref() is not None]
