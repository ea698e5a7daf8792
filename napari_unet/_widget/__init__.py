"""The napari dock widget (magicgui sections in a scroll area); see ``dock.py``."""

from napari_unet._widget.dock import UNetWidget

__all__ = ["UNetWidget"]
