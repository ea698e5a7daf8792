"""The napari dock widget (magicgui sections in a scroll area); see ``dock.py``."""

from .dock import UNetWidget

__all__ = ["UNetWidget"]
