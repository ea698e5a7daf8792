"""The Model section in a real napari viewer: bioimage.io export from the dock, and packages in Load model…"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest
import yaml
from qtpy.QtWidgets import QFileDialog, QInputDialog

from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.training.versions import list_versions
from tests.helpers import make_tiny_model

pytest.importorskip("bioimageio.core")

PLUGIN = yaml.safe_load((files("napari_unet") / "napari.yaml").read_text())["name"]  # the npe2 plugin name


@pytest.fixture(autouse=True)
def _config_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path / "bioimageio-cache"))


def _bioimageio_test(package: Path) -> subprocess.CompletedProcess:
    proxy = "http://127.0.0.1:9"  # nothing may be fetched
    env = dict(os.environ, NO_COLOR="1", HTTP_PROXY=proxy, HTTPS_PROXY=proxy, http_proxy=proxy, https_proxy=proxy)
    return subprocess.run([str(Path(sys.executable).parent / "bioimageio"), "test", str(package)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=package.parent)


@pytest.mark.slow
def test_export_from_the_dock_passes_bioimageio_and_loads_back_from_the_dialog(qtbot, make_napari_viewer, tmp_path,
                                                                               monkeypatch):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    tiny = save_checkpoint(tmp_path / "tiny.safetensors", make_tiny_model(seed=3).net, ModelInfo(name="tiny"))
    assert w.models.select(tiny)
    w.models.export_btn.native.click()
    form = w.models.export_dialog
    assert form.isVisible() and form.name.value == "tiny"
    out = tmp_path / "tiny.zip"
    form.authors.value, form.license.value, form.out.value = "A. Person, B. Person", "CC-BY-4.0", out
    form.export_btn.native.click()  # the model's own name is too short for bioimage.io: one sentence
    qtbot.waitUntil(lambda: form.worker is None, timeout=60_000)
    assert "too short" in form.result.value and not out.exists(), form.result.value
    form.name.value = "tiny nuclei"
    form.export_btn.native.click()
    qtbot.waitUntil(lambda: form.worker is None, timeout=300_000)
    assert form.result.value.startswith(f"Exported to {out}"), form.result.value
    proc = _bioimageio_test(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    form.export_btn.native.click()  # never overwritten: one sentence
    qtbot.waitUntil(lambda: form.worker is None, timeout=60_000)
    assert "already exists" in form.result.value and "already exists" in w.status.text()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    # Load model… offers packages: the file dialog (the system's edge) is answered with the .zip
    asked = {}

    def pick(parent, caption, folder, filters):
        asked["filters"] = filters
        return str(out), filters

    monkeypatch.setattr(QFileDialog, "getOpenFileName", pick)
    w.models.load_btn.native.click()
    assert "*.zip" in asked["filters"] and "*.safetensors" in asked["filters"]
    assert w.state.model_path == out and w.models.model.value == str(out)


def test_the_dock_says_at_open_which_model_is_active_and_why(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    assert w.status.text() == "Using the default nuclei model (the shipped default)."
    assert not w.models.rename_btn.enabled  # only a fine-tuned version can be renamed
    w.corrections.folder.value = tmp_path / "pairs"
    models = tmp_path / "models"
    models.mkdir()
    version = save_checkpoint(models / "20261203-140200_from_nuclei_default.safetensors", make_tiny_model().net,
                              ModelInfo(name="tuned", provenance={
                                  "created": "2026-12-03T14:02:00", "pairs_used": 3, "base_model": "nuclei_default",
                                  "base_validation_f1": 0.81, "validation_f1": 0.93}))
    w.models.refresh()
    assert w.models.select(str(version))
    assert w.models.model.native.currentText() == "fine-tuned 2026-12-03 14:02 · F1 0.81→0.93"
    assert w.status.text().startswith("Now using 'fine-tuned 2026-12-03 14:02'") and w.models.rename_btn.enabled
    viewer.window.remove_dock_widget("all")
    _, w2 = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    expected = "Using 'fine-tuned 2026-12-03 14:02', the model you last used; from 3 pairs, F1 0.81 → 0.93."
    assert w2.status.text() == expected and w2.models.info.value.startswith(expected)
    assert w2.models.model.native.toolTip().startswith("fine-tuned 2026-12-03 14:02")
    viewer.window.remove_dock_widget("all")
    version.unlink()
    _, w3 = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    assert w3.status.text() == "Using the default nuclei model (the shipped default; the model last used is gone)."


def test_rename_a_version_beside_its_weights_and_see_the_name_everywhere(make_napari_viewer, tmp_path, monkeypatch):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    w.corrections.folder.value = tmp_path / "pairs"
    version = save_checkpoint(tmp_path / "models" / "20261203-140200_from_nuclei_default.safetensors",
                              make_tiny_model().net, ModelInfo(name="tuned", provenance={
                                  "created": "2026-12-03T14:02:00", "pairs_used": 3, "base_validation_f1": 0.81,
                                  "validation_f1": 0.93}))
    weights = hashlib.sha256(version.read_bytes()).hexdigest()
    w.models.refresh()
    assert w.models.select(str(version))
    answers = iter([("HeLa after  3 corrections ", True), ("never saved", False)])
    asked = []

    def answer(parent, title, label, text=""):  # the dialog is the system's edge; the user types a name
        asked.append(text)
        return next(answers)

    monkeypatch.setattr(QInputDialog, "getText", answer)
    w.models.rename_btn.native.click()
    name = "HeLa after 3 corrections"
    assert asked == [""]  # the default name is not offered as the user's own
    assert w.models.model.native.currentText().startswith(f"{name} · F1 0.81→0.93")
    assert w.models.model.native.toolTip().startswith(name)
    assert f"'fine-tuned 2026-12-03 14:02' is now called '{name}'." in w.status.text()
    sidecar = tmp_path / "models" / "20261203-140200_from_nuclei_default.name.json"
    assert json.loads(sidecar.read_text())["name"] == name
    assert hashlib.sha256(version.read_bytes()).hexdigest() == weights  # the weights file is never rewritten
    assert [v.title for v in list_versions(tmp_path / "models")] == [name]
    w.models.rename_btn.native.click()  # Cancel in the dialog changes nothing
    assert asked[-1] == name and json.loads(sidecar.read_text())["name"] == name
    viewer.window.remove_dock_widget("all")
    _, w2 = viewer.window.add_plugin_dock_widget(PLUGIN, "U-Net")
    assert w2.status.text() == (f"Using '{name}', the model you last used; fine-tuned 2026-12-03 14:02 from 3 pairs, "
                                "F1 0.81 → 0.93.")
    long = "a very long name for the nuclei model fine-tuned on the HeLa plates of the third screen " * 2
    w2.models.rename(w2.models.version(), long)
    assert w2.models.model.native.toolTip().startswith(long.strip())  # whole in the tooltip
    assert w2.minimumSizeHint().width() <= 360  # the box elides it instead of widening the dock
    w2.models.rename(w2.models.version(), "")  # empty: the default name is back, the sidecar gone
    assert not sidecar.exists() and w2.models.model.native.currentText().startswith("fine-tuned 2026-12-03 14:02")
