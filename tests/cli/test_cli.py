"""The napari-unet command line, run as a real subprocess and in-process."""

import json
import subprocess
import sys

import numpy as np
import tifffile

from napari_unet.cli.main import main
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from tests.helpers import SAMPLES, make_tiny_model


def test_segment_writes_labels_and_skips_bad_inputs(tmp_path, misc):
    stack = np.stack([misc[:128, :128], misc[128:256, :128]])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "napari_unet", "segment", str(SAMPLES / "nuclei_misc.tif"),
         str(tmp_path / "missing.tif"), str(tmp_path / "broken.tif"), str(tmp_path / "stack.tif"),
         "--out", str(out), "--device", "cpu", "--tile", "256"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "missing.tif: no such file" in proc.stderr
    assert "broken.tif: not a readable TIFF" in proc.stderr
    assert "tiles" in proc.stderr  # the progress bar
    labels = tifffile.imread(out / "nuclei_misc_labels.tif")
    assert labels.shape == (512, 512) and labels.dtype == np.uint32 and labels.max() >= 5
    assert tifffile.imread(out / "stack_labels.tif").shape == (2, 128, 128)
    assert sorted(p.name for p in out.iterdir()) == ["nuclei_misc_labels.tif", "stack_labels.tif"]


def test_segment_with_bad_checkpoint_exits_nonzero(tmp_path, capsys):
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 100)
    code = main(["segment", str(SAMPLES / "nuclei_misc.tif"), "--model", str(tmp_path / "bad.safetensors"),
                 "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "bad.safetensors" in err and "Traceback" not in err
    assert not list(tmp_path.glob("*_labels.tif"))


def test_segment_with_custom_model(tmp_path):
    ckpt = save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model().net, ModelInfo())
    code = main(["segment", str(SAMPLES / "nuclei_misc.tif"), "--model", str(ckpt), "--out", str(tmp_path),
                 "--quiet", "--tile", "128", "--overlap", "16", "--batch-size", "2"])
    assert code == 0
    assert tifffile.imread(tmp_path / "nuclei_misc_labels.tif").shape == (512, 512)


def test_evaluate_prints_metrics_and_json(capsys):
    gt = str(SAMPLES / "nuclei_misc_labels.tif")
    assert main(["evaluate", gt, gt]) == 0
    assert "F1@0.5=1.000" in capsys.readouterr().out
    assert main(["evaluate", gt, gt, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["f1"]["0.9"] == 1.0 and data["n_true"] == 14
    assert main(["evaluate", gt]) == 1
    assert main(["evaluate", gt, str(SAMPLES / "nuclei_u2os_labels.tif")]) == 1
    assert "shape" in capsys.readouterr().err


def test_sigterm_ends_a_segment_run_like_ctrl_c(tmp_path, misc):
    """SIGTERM (timeout, kill, batch systems) mid-run: exit 143, one line, only complete outputs."""
    import signal
    import time

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(8):
        tifffile.imwrite(folder / f"img{i}.tif", misc)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "napari_unet", "segment", str(folder), "--out", str(out),
                             "--device", "cpu", "--quiet", "--scale", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("*_labels.tif")) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Terminated" in err and "Traceback" not in err
    written = sorted(out.iterdir())
    assert 1 <= len(written) < 8 and all(p.name.endswith("_labels.tif") for p in written)  # no partial files
    for p in written:
        assert tifffile.imread(p).shape == misc.shape


def test_segment_warns_once_per_odd_image_and_takes_a_stain(tmp_path, misc, capsys):
    crop = misc[:256, :256]
    tifffile.imwrite(tmp_path / "plain.tif", crop)
    tifffile.imwrite(tmp_path / "inverted.tif", crop.max() - crop)
    common = ["--out", str(tmp_path / "out"), "--device", "cpu", "--tile", "256", "--scale", "1", "--quiet"]
    assert main(["segment", str(tmp_path / "plain.tif"), str(tmp_path / "inverted.tif"), *common]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and "inverted.tif" in warnings[0] and "dark nuclei" in warnings[0]
    assert main(["segment", str(tmp_path / "inverted.tif"), "--stain", "dark nuclei", *common[:1],
                 str(tmp_path / "dark"), *common[2:]]) == 0
    assert "warning:" not in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "dark" / "inverted_labels.tif"),
                                  tifffile.imread(tmp_path / "out" / "plain_labels.tif"))
