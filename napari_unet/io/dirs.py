"""napari-unet's folders for this user: settings, kept results, cached scores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

_HOME_FALLBACK = {"cache": ".cache", "config": ".config", "data": ".local/share"}


def user_dir(kind: Literal["cache", "config", "data"], env: str) -> Path:
    """napari-unet's ``kind`` folder: ``$env`` when set, else the platform's (platformdirs), else one
    under the home folder."""
    if os.environ.get(env):
        return Path(os.environ[env])
    try:
        import platformdirs
    except ImportError:
        return Path.home() / _HOME_FALLBACK[kind] / "napari-unet"
    return Path(getattr(platformdirs, f"user_{kind}_dir")("napari-unet", appauthor=False))
