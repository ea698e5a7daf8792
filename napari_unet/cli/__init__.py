"""The ``napari-unet`` command line: one module per command group, over the same core functions."""

from napari_unet.cli.main import main

__all__ = ["main"]
