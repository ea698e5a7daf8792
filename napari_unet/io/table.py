"""Write a table (columns of equal length) as a CSV file, atomically."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path

from napari_unet.io.atomic import atomic_path


def write_csv(path: Path | str, columns: Mapping[str, Sequence[object]], *, overwrite: bool = False) -> Path:
    """Write ``columns`` as ``path`` (a header row, then one row per entry); an existing file is
    replaced only when ``overwrite``."""
    path = Path(path)
    with atomic_path(path, overwrite=overwrite) as part, open(part, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(list(columns))
        writer.writerows(zip(*[list(c) for c in columns.values()]))
    return path
