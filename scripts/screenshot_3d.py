"""The screenshot in docs/stacks.md: a synthetic z-stack made from the U2OS sample, its 3D objects in
napari's 3D view.

    xvfb-run -a -s "-screen 0 1280x800x24" python scripts/screenshot_3d.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import napari
import numpy as np
import tifffile
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_stacks import crowded_crop, make_zstack  # noqa: E402

from napari_unet import load_model, segment  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    image = tifffile.imread(ROOT / "sample_data" / "nuclei_u2os.tif")
    truth = tifffile.imread(ROOT / "sample_data" / "nuclei_u2os_labels.tif")
    img, lab = crowded_crop(image, truth, 160)
    stack, _ = make_zstack(img, lab, 2.0, np.random.default_rng(1), empty_planes=3)
    labels = segment(stack, load_model(), stack="3d", voxel_size=(1.0, 0.5, 0.5), device="cpu", scale=1.0)
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1100, 700)
    viewer.add_image(stack, scale=(1.0, 0.5, 0.5), name="synthetic z-stack", rendering="mip", opacity=0.6)
    viewer.add_labels(labels, scale=(1.0, 0.5, 0.5), name=f"3D objects ({labels.max()})")
    viewer.dims.ndisplay = 3
    viewer.camera.angles = (-20, 35, 60)
    viewer.camera.zoom = 3.4
    Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)).save(ROOT / "docs" / "screenshot_3d.png")
    viewer.close()


if __name__ == "__main__":
    main()
