"""`make demo`: napari with the sample nuclei image, the U-Net widget docked and the default model.

With a display it opens napari for you. Without one (a server, CI) it starts a virtual X server
(Xvfb) when available, clicks **Segment** once, saves a screenshot PNG and says where it is; if
there is no Xvfb either, it falls back to the headless segmentation of the sample image.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo_output"


def headless() -> None:
    from napari_unet import load_model
    from napari_unet._sample_data import nuclei_u2os
    from napari_unet.cli import main as cli

    image = nuclei_u2os()[0][0]
    model = load_model()
    print(f"no display and no Xvfb: headless segmentation with {model.info.name} ({image.shape} {image.dtype})")
    sample = ROOT / "sample_data" / "nuclei_u2os.tif"
    code = cli(["segment", str(sample), "--out", str(OUT), "--device", "auto"])
    print(f"labels written to {OUT / 'nuclei_u2os_labels.tif'}")
    sys.exit(code)


def gui(interactive: bool, screenshot: Path) -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-unet demo", show=True)
    viewer.window._qt_window.resize(1400, 900)
    viewer.open_sample("napari-unet", "nuclei_u2os")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "U-Net")
    widget.setMaximumWidth(480)
    if interactive:
        napari.run()
        return
    start = time.monotonic()
    widget.segment_btn.click()
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.01)
    seconds = time.monotonic() - start
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    labels = viewer.layers["nuclei_u2os labels"].data
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(screenshot), canvas_only=False)
    n = len(np.unique(labels)) - 1
    print(f"clicked Segment: {n} nuclei in {seconds:.1f} s (click to labels, CPU threads: {os.cpu_count()})")
    print(f"screenshot saved to {screenshot}")
    viewer.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--screenshot", type=Path, default=OUT / "napari_unet_demo.png")
    ap.add_argument("--headless", action="store_true", help="skip napari, segment from the command line")
    args = ap.parse_args()
    if args.headless:
        headless()
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if has_display and not os.environ.get("CI"):
        gui(interactive=True, screenshot=args.screenshot)
        return
    if shutil.which("Xvfb"):
        from pyvirtualdisplay import Display

        with Display(visible=False, size=(1600, 1000)):
            gui(interactive=False, screenshot=args.screenshot)
        return
    headless()


if __name__ == "__main__":
    main()
