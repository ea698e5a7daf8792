"""Adding a labels layer to napari in small steps, so no single turn of the event loop stalls the UI.

napari builds a new layer's visual (~50–80 ms on 2 cores with software OpenGL), its layer
controls (~30–45 ms), its layer-list row, each of its visible overlays (a labels layer's polygon
and brush-stroke overlays: ~80 and ~45 ms) and, as the layer becomes the selected one, shows its
controls, all in the one call that inserts it; then it slices, uploads and draws it. Here the
layer is inserted hidden, unselected and with those two overlays hidden (napari builds an overlay's
visual only once it is visible), with napari's two Qt-side builders (the canvas visual and the
controls) held back; each held-back builder, the selection, each overlay and finally the layer's
visibility then happen on a turn of their own. Anything that needs the layer built in the meantime
(removing it, selecting it by hand) builds it at once. Afterwards the layer is the one
``viewer.add_labels`` gives.

The napari internals used here (the Qt viewer's two ``inserted`` handlers, ``LayerList.
_activate_on_insert``, ``Layer._overlays``) are looked up by name; where one is missing, that part
is simply done by napari in the inserting call, as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from napari.layers import Labels
from napari.utils.events import Event
from qtpy.QtCore import QTimer

# A step scheduled this long after the previous one lets napari's pending paints and timers run
# in between (a zero delay can run in the same turn of the event loop).
NEXT_TURN_MS = 20


def _connected(emitter: Any, method: Callable) -> bool:
    """Whether the bound ``method`` is connected to napari's ``emitter``."""
    owner, name = getattr(method, "__self__", None), getattr(method, "__name__", None)
    for cb in emitter.callbacks:
        if isinstance(cb, tuple) and cb[0]() is owner and cb[1] == name:
            return True
        if cb == method:
            return True
    return False


def _qt_builders(viewer: Any) -> list[Callable]:
    """napari's Qt-side handlers of a layer insertion that build the layer's canvas visual and its
    controls, if they are connected as expected."""
    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    methods = [getattr(qt_viewer, "_on_add_layer_change", None),
               getattr(getattr(qt_viewer, "controls", None), "_add", None)]
    emitter = viewer.layers.events.inserted
    return [m for m in methods if m is not None and _connected(emitter, m)]


def add_in_steps(viewer: Any, data: Any, **kwargs: Any) -> Labels:
    """Add a labels layer to ``viewer`` (``kwargs`` as for ``Labels``) with napari's main-thread
    work split over several turns of the event loop; returns the layer (hidden until the last step)."""
    layer = Labels(data, visible=False, **kwargs)
    overlays = getattr(layer, "_overlays", {})
    deferred = [o for key in ("polygon", "brush_stroke") if (o := overlays.get(key)) is not None and o.visible]
    for overlay in deferred:
        overlay.visible = False
    layers = viewer.layers
    emitter = layers.events.inserted
    held = _qt_builders(viewer)
    activate = getattr(layers, "_activate_on_insert", None)
    if activate is not None:
        layers._activate_on_insert = False
    for builder in held:
        emitter.block(builder)
    try:
        layers.append(layer)
    finally:
        for builder in held:
            emitter.unblock(builder)
        if activate is not None:
            layers._activate_on_insert = activate
    event = Event("inserted", index=layers.index(layer), value=layer)
    builds = [lambda b=b: b(event) for b in held]
    guards = (layers.events.removing, layers.selection.events.changed)

    def drop_guards() -> None:
        for guard in guards:
            guard.disconnect(build_all)

    def build_next(_: Any = None) -> None:
        """Run the next held-back builder; the guards go once nothing is left to build."""
        if builds:
            builds.pop(0)()
        if not builds:
            drop_guards()

    def build_all(_: Any = None) -> None:
        """Run the held-back builders at once: napari's own handlers of this need them done."""
        while builds:
            build_next()

    if builds:
        for guard in guards:
            guard.connect(build_all, position="first")
    steps: list[Callable[[], None]] = [build_next for _ in builds]
    if activate:
        steps.append(lambda: setattr(layers.selection, "active", layer))
    steps += [lambda o=o: setattr(o, "visible", True) for o in deferred]
    steps.append(lambda: setattr(layer, "visible", True))

    def step() -> None:
        if layer not in layers:  # removed meanwhile (cancelled, or by the user): nothing left to do
            drop_guards()  # (the removal built them already, through the guard)
            return
        steps.pop(0)()
        if steps:
            QTimer.singleShot(NEXT_TURN_MS, step)

    QTimer.singleShot(NEXT_TURN_MS, step)
    return layer
