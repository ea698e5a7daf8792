"""Is napari responsive while Segment runs block by block on a lazy layer? Heartbeat gaps.

A 3-plane dask stack of 2048² uint16 planes (the sample mosaic, a zarr on disk) in a shown viewer;
a timer moves the displayed plane every 500 ms, so napari reads a 2048² plane from dask in its main
thread each time, as a user browsing the stack would. Measured side by side in one run: heartbeat
gaps (10 ms timer in napari's main thread) while browsing with nothing running, while Segment
(current plane, blocks of 1024 on the in-process dask cluster) runs, and from the moment its
zarr-backed labels layer is added until 1 s after. Needs a display or Xvfb.

    .venv/bin/python benchmarks/responsiveness_blockwise.py
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from bench_large import build_mosaic
from responsiveness import measure, stats


def run(cache: Path) -> dict:
    import dask.array as da
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    plane = da.from_zarr(str(build_mosaic(2048, cache)))
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    viewer.add_image(da.stack([plane, plane[::-1], plane[:, ::-1]]), name="stack")
    os.environ["NAPARI_UNET_DATA_DIR"] = str(cache / "data")  # the labels zarr goes there
    _, w = viewer.window.add_plugin_dock_widget("napari-unet-nuclei", "U-Net")
    w.seg.blockwise.block, w.seg.device.value = 1024, "cpu"
    browse = QTimer()
    browse.timeout.connect(lambda: viewer.dims.set_current_step(0, (viewer.dims.current_step[0] + 1) % 3))
    browse.start(500)
    results = {"cpu_count": os.cpu_count()}
    start = time.monotonic()
    gaps, _, cpus = measure(app, lambda: time.monotonic() - start > 10, 20)
    results["browsing_idle"] = stats(gaps, cpus)
    viewer.dims.set_current_step(0, 0)
    arrived = []
    viewer.layers.events.inserted.connect(lambda *_: arrived.append(time.perf_counter()))
    t0 = time.perf_counter()
    w.seg.run_btn.native.click()
    gaps, ends, cpus = measure(app, lambda: w.seg.worker is None and "stack labels" in viewer.layers, 900,
                               settle=1.0)
    results["click_to_labels_s"] = round(arrived[0] - t0, 1)
    before = ends < arrived[0]  # the blocks running; then the labels layer arriving and first drawn
    results["browsing_while_segmenting"] = stats(gaps[before], cpus[before])
    results["labels_layer_arriving"] = stats(gaps[~before], cpus[~before])
    results["status"] = w.status.text()
    browse.stop()
    viewer.close()
    return results


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if not os.environ.get("DISPLAY") and shutil.which("Xvfb"):
            from pyvirtualdisplay import Display

            with Display(visible=False, size=(1600, 1000)):
                results = run(Path(tmp))
        else:
            results = run(Path(tmp))
    print(json.dumps(results, indent=1))
    for phase in ("browsing_idle", "browsing_while_segmenting", "labels_layer_arriving"):
        r = results[phase]
        print(f"{phase}: max gap {r['max_ms']} ms, p99 {r['p99_ms']} ms over {r['beats']} beats; main-thread "
              f"CPU per gap: max {r['max_cpu_ms']} ms, p99 {r['p99_cpu_ms']} ms")


if __name__ == "__main__":
    main()
