"""The labels zarrs that block-by-block segmentation wrote, listed in the Segment section with
*Open folder* (the system's file browser shows where they are)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from magicgui.widgets import ComboBox, Container, PushButton
from qtpy.QtCore import QUrl
from qtpy.QtGui import QDesktopServices

from napari_unet._widget.fit import fit_width
from napari_unet._widget.state import State
from napari_unet.errors import NapariUnetError
from napari_unet.io.dirs import user_dir
from napari_unet.io.lazy import LABELS_FORMAT
from napari_unet.io.ome_zarr import group_attributes

SETTING = "saved_results"  # the zarrs the dock wrote, newest first (remembered from one napari start to the next)
MAX_LISTED = 20


def is_labels_zarr(path: Path) -> bool:
    """Whether ``path`` is a labels zarr written by napari-unet (its group attributes say so)."""
    try:
        attrs = group_attributes(path) if path.is_dir() else None
    except (NapariUnetError, OSError):
        return False
    return bool(attrs) and LABELS_FORMAT in attrs


def labels_dir() -> Path:
    """Where labels of images that are not in a writable folder on disk are saved."""
    return user_dir("data", "NAPARI_UNET_DATA_DIR") / "labels"


class SavedResults:
    """A list of the labels zarrs of large or lazy images (remembered ones first, then those in the
    labels folder of images that had no writable folder) and *Open folder*."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.listed: list[Path] = []  # read from disk by refresh(), not each time napari resets choices
        self.results = ComboBox(label="saved labels", choices=self._choices, tooltip=(
            "Labels of large or lazy images, segmented block by block, are saved on disk as zarr folders "
            "(beside the image, or in napari-unet's labels folder). The latest are listed here."))
        self.open_btn = PushButton(text="Open folder", tooltip=(
            "Show the folder that holds the chosen labels zarr in your file browser."))
        self.main = Container(widgets=[self.results, self.open_btn], layout="horizontal", labels=False,
                              label="saved labels")
        self.main.margins = (0, 0, 0, 0)
        fit_width(self.main)  # before the first entries: a long path never sets the row's width
        self.open_btn.changed.connect(self.open_folder)
        self.refresh()

    def paths(self) -> list[Path]:
        """Existing labels zarrs: those the dock wrote (newest first), then others in :func:`labels_dir`."""
        remembered = [Path(p) for p in self.state.settings.get(SETTING, []) if isinstance(p, str)]
        folder = labels_dir()
        try:
            found = sorted(folder.glob("*.zarr"), key=lambda p: p.stat().st_mtime, reverse=True)
        except OSError:
            found = []
        out: list[Path] = []
        for path in [*remembered, *found]:
            if path not in out and is_labels_zarr(path):
                out.append(path)
            if len(out) == MAX_LISTED:
                break
        return out

    def _choices(self, *_: Any) -> list[tuple[str, str]]:
        return [(f"{p.name} ({p.parent})", str(p)) for p in self.listed]

    def refresh(self) -> None:
        """List the saved labels again (shown only when there are some)."""
        self.listed = self.paths()
        self.results.reset_choices()
        self.main.visible = bool(self.listed)

    def add(self, path: Path) -> None:
        """Remember a labels zarr the dock just wrote, and show it first."""
        kept = [p for p in self.state.settings.get(SETTING, []) if isinstance(p, str) and p != str(path)]
        self.state.remember(SETTING, [str(path), *kept][:MAX_LISTED])
        self.refresh()
        if str(path) in self.results.choices:
            self.results.value = str(path)

    def open_folder(self, *_: Any) -> None:
        if not self.results.value:
            return self.state.error("There are no saved labels of large images yet.")
        folder = Path(self.results.value).parent
        if not folder.is_dir():
            self.refresh()
            return self.state.error(f"The folder {folder} is not there any more.")
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder))):
            self.state.error(f"No file browser could be opened; the labels are in {folder}.")
