"""The names shared by export and import: how a package made by napari-unet marks itself, and its version."""

PACKAGE_FORMAT = "napari-unet-bioimageio"
PACKAGE_FORMAT_VERSION = 1
