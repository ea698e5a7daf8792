"""Version names: the default readable name, a user's name in a sidecar beside the checkpoint."""

from __future__ import annotations

import hashlib
import json

import pytest

from napari_unet.errors import NapariUnetError
from napari_unet.io.checkpoint import ModelInfo, save_checkpoint
from napari_unet.training.versions import list_versions, name_path, rename_version
from tests.helpers import make_tiny_model


@pytest.fixture
def version(tmp_path):
    info = ModelInfo(name="tuned", provenance={"created": "2026-12-03T14:02:00"})
    return save_checkpoint(tmp_path / "models" / "20261203-140200_from_nuclei_default.safetensors",
                           make_tiny_model().net, info)


def test_default_name_then_a_users_name_beside_the_untouched_weights(version):
    weights = hashlib.sha256(version.read_bytes()).hexdigest()
    [v] = list_versions(version.parent)
    assert (v.title, v.named) == ("fine-tuned 2026-12-03 14:02", False)
    sidecar = rename_version(version, "  HeLa\tplates  ")
    assert sidecar == name_path(version) == version.with_name("20261203-140200_from_nuclei_default.name.json")
    assert json.loads(sidecar.read_text())["format_version"] == 1
    [v] = list_versions(version.parent)
    assert (v.title, v.named) == ("HeLa plates", True)
    assert hashlib.sha256(version.read_bytes()).hexdigest() == weights
    assert not [p for p in version.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically
    assert rename_version(version, " ") is None and not sidecar.exists()
    assert list_versions(version.parent)[0].title == "fine-tuned 2026-12-03 14:02"


def test_unreadable_or_newer_sidecars_mean_the_default_name_and_bad_names_one_sentence(version):
    sidecar = name_path(version)
    for text in ("{not json", json.dumps({"format": "napari-unet-version-name", "format_version": 2, "name": "x"}),
                 json.dumps(["a list"]), json.dumps({"format": "other", "format_version": 1, "name": "x"})):
        sidecar.write_text(text)
        assert list_versions(version.parent)[0].title == "fine-tuned 2026-12-03 14:02", text
    with pytest.raises(NapariUnetError, match="at most 200"):
        rename_version(version, "x" * 201)
    with pytest.raises(NapariUnetError, match="not there any more"):
        rename_version(version.with_name("gone.safetensors"), "name")
