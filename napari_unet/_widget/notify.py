"""napari pop-up notifications that show the text as written (names keep their underscores).

napari's pop-up sizes its message label (superqt ``QElidingLabel``) to one text line, but
napari's stylesheet pads every widget by 1 px (``QWidget { padding: 1px }``), so the bottom
2 px of the line are cut off: underscores vanish ("nuclei_u2os" reads "nuclei u2os") and
descenders lose their tips. Nothing is parsed as markdown; the text itself arrives intact.
Each pop-up gets its message label unpadded, which leaves room for the whole line.
"""

from __future__ import annotations

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer

SHOW = {"info": show_info, "warning": show_warning, "error": show_error}
UNPADDED = "padding: 0px;"


def notify(severity: str, text: str) -> None:
    """Show ``text`` in a napari pop-up (``info``, ``warning`` or ``error``), unclipped."""
    SHOW[severity](text)
    unclip_popups()  # shown at once when called from the main thread with the window visible
    QTimer.singleShot(0, unclip_popups)  # a notification dispatched from a thread comes a turn later


def unclip_popups() -> int:
    """Give the open pop-ups' message labels room for a whole line; returns how many changed."""
    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # napari moved it: its pop-ups stay as they are
        return 0
    changed = 0
    for note in list(getattr(NapariQtNotification, "_instances", [])):
        label = getattr(note, "message", None)
        try:
            if label is not None and label.styleSheet() != UNPADDED:
                label.setStyleSheet(UNPADDED)
                changed += 1
        except RuntimeError:  # closed and deleted meanwhile
            continue
    return changed
