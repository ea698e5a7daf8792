"""Copy two real nuclei images (and their ground-truth labels) from mnfinder's validation-data
into ``sample_data/``. mnfinder is MIT-licensed; see sample_data/README.md."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from mnfinder_data import load_split  # noqa: E402

from napari_unet.io.tiff import write_tiff_atomic  # noqa: E402

CHOSEN = {
    "2022-10-14_U2OS/1": "nuclei_u2os",  # 768×869 uint16, DAPI, U2OS
    "2023-05-31_misc/4": "nuclei_misc",  # 512×512 uint8
}


def main() -> None:
    out = Path(__file__).parent.parent / "sample_data"
    for name, image, labels in load_split("validation-data"):
        if name in CHOSEN:
            write_tiff_atomic(out / f"{CHOSEN[name]}.tif", image, overwrite=True)
            write_tiff_atomic(out / f"{CHOSEN[name]}_labels.tif", labels.astype(np.uint32), overwrite=True)
            print(name, image.shape, image.dtype, int(labels.max()), "nuclei")


if __name__ == "__main__":
    main()
