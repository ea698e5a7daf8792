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
    from napari_unet.cli.main import main as cli

    image = nuclei_u2os()[0][0]
    model = load_model()
    print(f"no display and no Xvfb: headless segmentation with {model.info.name} ({image.shape} {image.dtype})")
    sample = ROOT / "sample_data" / "nuclei_u2os.tif"
    code = cli(["segment", str(sample), "--out", str(OUT), "--device", "auto"])
    print(f"labels written to {OUT / 'nuclei_u2os_labels.tif'}")
    sys.exit(code)


def _settle(seconds: float = 0.4) -> None:
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.01)


def gui(interactive: bool, screenshot: Path, finetune_seconds: int = 0, review: bool = False) -> None:
    import napari

    viewer = napari.Viewer(title="napari-unet demo", show=True)
    viewer.window._qt_window.resize(1366, 768)  # a laptop screen; the dock takes its own width
    viewer.open_sample("napari-unet-nuclei", "nuclei_u2os")
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "U-Net")
    if interactive:
        napari.run()
        return
    start = time.monotonic()
    widget.seg.run_btn.native.click()
    while "nuclei_u2os labels" not in viewer.layers or widget.seg.worker is not None:
        _settle(0.01)
    seconds = time.monotonic() - start
    viewer.reset_view()
    _settle()
    labels = viewer.layers["nuclei_u2os labels"].data
    screenshot.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(screenshot), canvas_only=False)
    n = len(np.unique(labels)) - 1
    print(f"clicked Segment: {n} nuclei in {seconds:.1f} s (click to labels, CPU threads: {os.cpu_count()})")
    print(f"screenshot saved to {screenshot}")
    if review:
        review_screenshot(viewer, widget, screenshot.with_name(screenshot.stem + "_review.png"))
    if finetune_seconds:
        finetune_screenshot(viewer, widget, screenshot.with_name(screenshot.stem + "_finetune.png"), finetune_seconds)
    viewer.close()


def review_screenshot(viewer, widget, path: Path) -> None:
    """Find doubtful objects, go to the most doubtful one, screenshot the overlay (docs)."""
    widget.review.find_btn.native.click()
    while widget.review.worker is not None or widget.review.review is None:
        _settle(0.05)
    widget.review.next_btn.native.click()
    widget.scroll.ensureWidgetVisible(widget.review.main.native)
    _settle()
    viewer.screenshot(str(path), canvas_only=False)
    print(f"review: {widget.review.count.value}; {widget.status.text()}")
    print(f"screenshot saved to {path}")


def finetune_screenshot(viewer, widget, path: Path, seconds: int) -> None:
    """Export the sample's reference labels as a pair, fine-tune for ``seconds``, screenshot the result."""
    import tempfile

    import tifffile

    reference = tifffile.imread(ROOT / "sample_data" / "nuclei_u2os_labels.tif")
    viewer.add_labels(reference, name="corrected")
    with tempfile.TemporaryDirectory() as tmp:
        widget.corrections.folder.value = Path(tmp) / "pairs"
        widget.corrections.labels.value = viewer.layers["corrected"]
        widget.corrections.image.value = viewer.layers["nuclei_u2os"]
        widget.corrections.export_btn.native.click()
        widget.ft.time_budget.value = seconds
        widget.sections["Segment"].collapse()
        widget.sections["Corrections"].collapse()
        widget.ft.start_btn.native.click()
        while widget.ft.session.active:
            _settle(0.05)
        _settle()
        viewer.screenshot(str(path), canvas_only=False)
        print(f"fine-tune: {widget.ft.status.value}")
        print(f"screenshot saved to {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--screenshot", type=Path, default=OUT / "napari_unet_demo.png")
    ap.add_argument("--headless", action="store_true", help="skip napari, segment from the command line")
    ap.add_argument("--finetune-seconds", type=int, default=0,
                    help="also fine-tune for this long and save a second screenshot (docs)")
    ap.add_argument("--review", action="store_true", help="also find doubtful objects and save a screenshot (docs)")
    args = ap.parse_args()
    if args.headless:
        headless()
    has_display = bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if has_display and not os.environ.get("CI"):
        gui(interactive=True, screenshot=args.screenshot)
        return
    if shutil.which("Xvfb"):
        from pyvirtualdisplay import Display

        with Display(visible=False, size=(1366, 768)):
            gui(interactive=False, screenshot=args.screenshot, finetune_seconds=args.finetune_seconds,
                review=args.review)
        return
    headless()


if __name__ == "__main__":
    main()
