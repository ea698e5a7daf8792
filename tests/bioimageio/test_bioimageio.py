"""bioimage.io packages: export checked by the real `bioimageio test`, import of our own and foreign packages."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_unet import load_model, segment
from napari_unet.cli.main import main
from napari_unet.engine.predict import predict
from napari_unet.errors import CheckpointError, InputError
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.models import default_model_path
from tests.helpers import SAMPLES, build_foreign_package, make_tiny_model

pytest.importorskip("bioimageio.core")
BIOIMAGEIO = Path(sys.executable).parent / "bioimageio"


@pytest.fixture(autouse=True)
def offline_bioimageio(tmp_path, monkeypatch):
    """bioimageio's cache in the test folder; no settings file from the working directory."""
    monkeypatch.setenv("BIOIMAGEIO_CACHE_PATH", str(tmp_path / "bioimageio-cache"))
    monkeypatch.chdir(tmp_path)


def bioimageio_test(package: Path) -> subprocess.CompletedProcess:
    """The real client, as a user runs it: `bioimageio test PACKAGE`."""
    # any attempt to reach the network fails at once through a proxy that is not there
    proxy = "http://127.0.0.1:9"
    env = dict(os.environ, NO_COLOR="1", COLUMNS="200", HTTP_PROXY=proxy, HTTPS_PROXY=proxy, ALL_PROXY=proxy,
               http_proxy=proxy, https_proxy=proxy, NO_PROXY="", no_proxy="")
    return subprocess.run([str(BIOIMAGEIO), "test", str(package)], capture_output=True, text=True,
                          timeout=600, env=env)


def zip_array(package: Path, name: str) -> np.ndarray:
    with zipfile.ZipFile(package) as z:
        return np.load(io.BytesIO(z.read(name)))


def rdf(package: Path) -> dict:
    with zipfile.ZipFile(package) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def test_shipped_model_exports_and_passes_bioimageio_test(tmp_path, capsys):
    out = tmp_path / "nuclei.zip"
    assert main(["export-bioimageio", str(default_model_path()), str(out), "--name", "napari-unet nuclei",
                 "--authors", "A. Person, B. Person"]) == 0
    proc = bioimageio_test(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for fmt in ("pytorch_state_dict", "torchscript", "onnx"):
        assert f"Reproduce test outputs from test inputs ({fmt})" in proc.stdout
    assert "❌" not in proc.stdout
    description = rdf(out)
    assert set(description["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    assert description["inputs"][0]["pad"] == {"mode": "reflect"}
    tol = description["config"]["bioimageio"]["reproducibility_tolerance"][0]
    assert tol["absolute_tolerance"] == 1e-3 and tol["mismatched_elements_per_million"] == 0
    steps = {s["id"]: s.get("kwargs") for s in description["inputs"][0]["preprocessing"]}
    assert steps["scale_range"]["min_percentile"] == 1.0 and steps["scale_range"]["max_percentile"] == 99.8
    assert description["outputs"][0]["axes"][2]["halo"] == 64
    assert "://" not in yaml.safe_dump(description).replace("doi.org", "")  # nothing to fetch
    # the package's test output is napari-unet's own prediction of its test input
    x, y = zip_array(out, "test_input.npy"), zip_array(out, "test_output.npy")
    ours = predict(load_model(), x[0, 0], tile=x.shape[-1], overlap=0, device="cpu", scale=1.0)
    assert np.abs(ours - y[0]).max() < 1e-3
    with zipfile.ZipFile(out) as z:
        readme = z.read("README.md").decode()
    f1 = load_model().info.provenance["validation_f1"]  # the measured F1 the checkpoint carries
    assert "# Validation" in readme and f"{f1:.3f}" in readme
    # never overwritten unless asked
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    capsys.readouterr()
    assert main(["export-bioimageio", str(default_model_path()), str(out)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest


def test_finetuned_model_round_trip_and_bioimageio_test(tmp_path, misc):
    tiny = make_tiny_model(seed=3)
    info = ModelInfo(name="tiny_finetuned", pixel_size_um=0.65, provenance={
        "base_model": "nuclei_default", "validation_f1": 0.7345, "base_validation_f1": 0.7012,
        "validation_data": "2 corrected crops", "data": "training pairs folder"})
    ckpt = save_checkpoint(tmp_path / "tuned.safetensors", tiny.net, info)
    out = tmp_path / "tuned.zip"
    from napari_unet.bioimageio.export import export_bioimageio

    export_bioimageio(ckpt, out, authors=["Tester"])
    proc = bioimageio_test(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Reproduce test outputs from test inputs (onnx)" in proc.stdout
    with zipfile.ZipFile(out) as z:
        readme = z.read("README.md").decode()
    assert "0.735" in readme and "0.701" in readme
    assert rdf(out)["inputs"][0]["axes"][2]["scale"] == 0.65
    # export -> import -> segment gives the original checkpoint's labels
    imported = load_model(out)
    assert imported.config == tiny.config and imported.info.pixel_size_um == 0.65
    original = load_model(ckpt)
    crop = misc[:192, :160]
    np.testing.assert_array_equal(segment(crop, imported, device="cpu", tile=128, overlap=32),
                                  segment(crop, original, device="cpu", tile=128, overlap=32))
    with pytest.raises(InputError, match="already exists"):
        export_bioimageio(ckpt, out)
    # the same package read as any other (no napari-unet config): torchscript, softmax, class names
    description = rdf(out)
    del description["config"]["napari_unet"]
    anonymous = tmp_path / "anonymous.zip"
    with zipfile.ZipFile(out) as src, zipfile.ZipFile(anonymous, "w") as dst:
        for item in src.namelist():
            data = yaml.safe_dump(description).encode() if item == "rdf.yaml" else src.read(item)
            dst.writestr(item, data)
    foreign = load_model(anonymous)
    assert type(foreign).__name__ == "PackageModel" and not foreign.semantic
    assert foreign.info.pixel_size_um == 0.65
    np.testing.assert_allclose(predict(foreign, crop, device="cpu", tile=128, overlap=32),
                               predict(original, crop, device="cpu", tile=128, overlap=32), atol=1e-4)


# ---------------------------------------------------------------------------------------------
# Packages napari-unet did not write, built with bioimageio.spec


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_foreign_package_matches_bioimageio_core(tmp_path, misc, fmt):
    """A package napari-unet did not write (another network, other preprocessing, fg/boundary sigmoid
    outputs), run from its torchscript or its ONNX weights."""
    from bioimageio.core import predict as bmz_predict

    image = misc[128:320, 96:288]
    package = build_foreign_package(tmp_path / "pkg", image, **{fmt: True})
    assert set(rdf(package)["weights"]) == {fmt}
    model = load_model(package)
    assert model.info.classes == ["background", "foreground", "boundaries"]
    assert not model.semantic
    probs = predict(model, image, tile=192, overlap=0, device="cpu")
    sample = bmz_predict(model=package, inputs={"image": image.astype(np.float32)[None, None]})
    theirs = next(iter(sample.members.values())).data.to_numpy()[0]
    fg = 1 - probs[0]
    assert np.abs(fg - theirs[0]).max() < 1e-3  # preprocessing and network as bioimageio.core runs them
    assert np.abs(probs[2] - np.minimum(theirs[1], theirs[0])).max() < 1e-3
    labels = segment(image, model, device="cpu")
    assert labels.shape == image.shape and labels.max() >= 1


def test_foreign_semantic_package(tmp_path, misc):
    """Outputs that are not nuclei/boundary classes: a class map, as bioimageio.core's argmax."""
    from bioimageio.core import predict as bmz_predict

    image = misc[:128, :160]
    package = build_foreign_package(tmp_path / "pkg", image, torchscript=True, names=("apple", "pear"), softmax=True)
    model = load_model(package)
    assert model.semantic and model.info.classes == ["apple", "pear"]
    classes = segment(image, model, device="cpu", tile=192, overlap=0)
    sample = bmz_predict(model=package, inputs={"image": image.astype(np.float32)[None, None]})
    theirs = next(iter(sample.members.values())).data.to_numpy()[0]
    agree = classes == theirs.argmax(0)
    assert agree[np.abs(theirs[0] - theirs[1]) > 1e-3].all() and set(np.unique(classes)) <= {0, 1}


PAYLOAD = '''
from pathlib import Path
Path({marker!r}).write_text("package code ran")
import torch
from torch import nn


class TinyFgBoundaryNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(6, 2, 1))

    def forward(self, x):
        return self.body(x)
'''


def test_state_dict_package_is_refused_without_running_its_code(tmp_path, misc, capsys):
    marker = tmp_path / "payload_ran.txt"
    image = misc[:64, :64]
    package = build_foreign_package(tmp_path / "pkg", image, torchscript=False,
                                    source=PAYLOAD.format(marker=str(marker)))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="would run the package author's code") as err:
        load_model(package)
    assert "\n" not in str(err.value)
    assert not marker.exists()
    code = main(["segment", str(SAMPLES / "nuclei_misc.tif"), "--model", str(package), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1 and "--trust-package-code" in err and len(err.strip().splitlines()) == 1
    assert not marker.exists() and not list(tmp_path.glob("*_labels.tif"))
    model = load_model(package, trust_code=True)  # explicitly trusted: its source is imported
    assert marker.read_text() == "package code ran"
    assert segment(image, model, device="cpu").shape == image.shape


def test_not_a_package(tmp_path):
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(CheckpointError, match="not a readable zip"):
        load_model(tmp_path / "bad.zip")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match="not a bioimage.io package"):
        load_model(tmp_path / "empty.zip")
