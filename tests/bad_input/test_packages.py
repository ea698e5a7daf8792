"""Hostile bioimage.io packages: bombs, tampering, broken zips and lying graphs are refused in one
sentence, before anything large is read, and nothing is written."""

from __future__ import annotations

import hashlib
import io
import pickle
import time
import zipfile
from pathlib import Path

import pytest
import tifffile
import torch
import yaml
from torch import nn

from napari_unet.api import segment
from napari_unet.bioimageio.package import MAX_DESCRIPTION_BYTES, MAX_RATIO, check_zip, load_package
from napari_unet.cli.main import main
from napari_unet.errors import CheckpointError, NapariUnetError
from napari_unet.models import load_model

pytest.importorskip("yaml")


class Net(nn.Module):
    """``out`` channels at the input's size, or half of it with ``pool``."""

    def __init__(self, out: int = 2, pool: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv, self.pool = nn.Conv2d(1, out, 3, padding=1), pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return nn.functional.avg_pool2d(y, 2) if self.pool else y


def torchscript_bytes(net: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(net.eval(), torch.zeros(1, 1, 16, 16)), buf)
    return buf.getvalue()


def description(weights: bytes, **changes) -> dict:
    """A spec-0.5 description of a 2-channel (foreground, boundaries) sigmoid network."""
    size = {"min": 16, "step": 4}
    same = {"y": {"tensor_id": "image", "axis_id": "y"}, "x": {"tensor_id": "image", "axis_id": "x"}}
    rdf = {
        "type": "model", "format_version": "0.5.4", "name": "hostile test",
        "inputs": [{"id": "image", "axes": [
            {"type": "batch"}, {"type": "channel", "channel_names": ["dapi"]},
            {"type": "space", "id": "y", "size": size}, {"type": "space", "id": "x", "size": size}],
            "preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]}],
        "outputs": [{"id": "prediction", "axes": [
            {"type": "batch"}, {"type": "channel", "channel_names": ["foreground", "boundaries"]},
            {"type": "space", "id": "y", "size": same["y"]}, {"type": "space", "id": "x", "size": same["x"]}],
            "postprocessing": [{"id": "sigmoid"}]}],
        "weights": {"torchscript": {"source": "net.pt", "sha256": hashlib.sha256(weights).hexdigest()}},
    }
    rdf.update(changes)
    return rdf


def write_package(path: Path, members: dict[str, bytes | str], compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def package(tmp_path: Path, net: nn.Module | None = None, rdf: dict | None = None, weights: bytes | None = None,
            name: str = "pkg.zip") -> Path:
    data = torchscript_bytes(net or Net()) if weights is None else weights
    rdf = rdf if rdf is not None else description(data)
    return write_package(tmp_path / name, {"rdf.yaml": yaml.safe_dump(rdf), "net.pt": data})


def one_sentence(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and "Traceback" not in text and text.endswith((".", ")")), text
    return text


def patch_zip(path: Path, name: str, *, flags: int | None = None, method: int | None = None) -> None:
    """Rewrite ``name``'s general-purpose flags or compression method in both zip headers (what an
    encrypted or PPMd-compressed member declares), as a tool other than Python's zipfile would write."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(name)
    local = info.header_offset
    central = data.find(b"PK\x01\x02")
    while data[central + 46: central + 46 + len(name)] != name.encode():
        central = data.find(b"PK\x01\x02", central + 4)
    if flags is not None:
        data[local + 6: local + 8] = flags.to_bytes(2, "little")
        data[central + 8: central + 10] = flags.to_bytes(2, "little")
    if method is not None:
        data[local + 8: local + 10] = method.to_bytes(2, "little")
        data[central + 10: central + 12] = method.to_bytes(2, "little")
    path.write_bytes(bytes(data))


# --- bounded reading ----------------------------------------------------------------------------

def test_zip_bomb_weights_are_refused_from_the_directory_alone(tmp_path):
    """64 MiB of zeros deflate to 64 KiB (1000-fold): refused without decompressing a byte."""
    pkg = tmp_path / "bomb.zip"
    with zipfile.ZipFile(pkg, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("rdf.yaml", yaml.safe_dump(description(b"")))
        with z.open("net.pt", "w") as member:
            zeros = bytes(1 << 20)
            for _ in range(64):
                member.write(zeros)
    assert pkg.stat().st_size < 1 << 20
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        load_package(pkg)
    assert time.perf_counter() - start < 2
    text = one_sentence(err.value)
    assert "net.pt" in text and f"limit of {MAX_RATIO}-fold" in text


def test_oversized_description_is_refused(tmp_path):
    rdf = yaml.safe_dump(description(b"")) + "#" * (MAX_DESCRIPTION_BYTES + 1) + "\n"
    pkg = write_package(tmp_path / "big_rdf.zip", {"rdf.yaml": rdf}, zipfile.ZIP_STORED)
    with pytest.raises(CheckpointError) as err:
        load_package(pkg)
    assert "rdf.yaml" in one_sentence(err.value) and "limit of 1 MiB" in str(err.value)


def test_declared_sizes_above_the_limits_are_refused(tmp_path, monkeypatch):
    """The directory's declared sizes are what is checked: a 6 GiB member is refused by its header."""
    pkg = package(tmp_path)
    with zipfile.ZipFile(pkg) as z:
        infos = z.infolist()
    infos[1].file_size, infos[1].compress_size = 6 << 30, 60 << 20
    with pytest.raises(CheckpointError, match=r"net.pt is 6 GiB uncompressed, more than the limit of 4 GiB"):
        check_zip(pkg, type("Z", (), {"infolist": lambda self: infos})())


def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]  # 10^10 items
    rdf = "\n".join(lines) + "\ntype: model\nname: *a9\n"
    pkg = write_package(tmp_path / "alias.zip", {"rdf.yaml": rdf})
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        load_package(pkg)
    assert time.perf_counter() - start < 2
    assert "through YAML aliases" in one_sentence(err.value)


def test_recursive_alias_is_refused(tmp_path):
    pkg = write_package(tmp_path / "loop.zip", {"rdf.yaml": "type: model\nname: &a [*a]\n"})
    with pytest.raises(CheckpointError, match="through YAML aliases"):
        load_package(pkg)


# --- broken zips: one sentence -------------------------------------------------------------------

@pytest.mark.parametrize("damage, needle", [
    ("encrypted", "net.pt is encrypted"),
    ("ppmd", "net.pt uses the compression 'ppmd'"),
    ("corrupt", "net.pt cannot be unpacked"),
    ("truncated", "not a readable zip file"),
])
def test_damaged_zips_are_one_sentence(tmp_path, damage, needle):
    pkg = package(tmp_path)
    if damage == "encrypted":
        patch_zip(pkg, "net.pt", flags=0x1)
    elif damage == "ppmd":
        patch_zip(pkg, "net.pt", method=98)
    elif damage == "corrupt":
        with zipfile.ZipFile(pkg) as z:
            info = z.getinfo("net.pt")
        data = bytearray(pkg.read_bytes())
        start = info.header_offset + 30 + len(info.filename) + len(info.extra)
        data[start + 20: start + 60] = bytes(range(40))  # deflate stream garbled (CRC or zlib error)
        pkg.write_bytes(bytes(data))
    else:
        pkg.write_bytes(pkg.read_bytes()[: pkg.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        load_package(pkg)
    assert needle in one_sentence(err.value)


@pytest.mark.parametrize("config", [{"napari_unet": "a string"}, {"napari_unet": ["x"]}])
def test_config_of_the_wrong_type_is_one_sentence(tmp_path, config):
    data = torchscript_bytes(Net())
    pkg = package(tmp_path, rdf=description(data, config=config), weights=data)
    with pytest.raises(CheckpointError) as err:
        load_package(pkg)
    assert "malformed" in one_sentence(err.value)


def test_a_config_that_is_not_napari_unets_is_ignored(tmp_path):
    data = torchscript_bytes(Net())
    pkg = package(tmp_path, rdf=description(data, config="a string"), weights=data)
    assert load_package(pkg).info.classes[1:] == ["foreground", "boundaries"]


def test_pickle_disguised_as_torchscript_is_one_line_and_never_runs(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    data = pickle.dumps(Payload())
    pkg = package(tmp_path, weights=data)
    with pytest.raises(CheckpointError) as err:
        load_package(pkg)
    assert "torchscript weights could not be read" in one_sentence(err.value)
    assert not marker.exists()


# --- verification --------------------------------------------------------------------------------

def test_tampered_weights_are_refused_and_intact_ones_load(tmp_path, misc):
    good, other = torchscript_bytes(Net()), torchscript_bytes(Net(seed=1))  # other valid tensors
    assert load_package(package(tmp_path, weights=good, name="good.zip")).info.classes[1] == "foreground"
    tampered = package(tmp_path, rdf=description(good), weights=other, name="tampered.zip")
    with pytest.raises(CheckpointError) as err:
        load_package(tampered)
    assert "does not match the sha256" in one_sentence(err.value) and "net.pt" in str(err.value)


@pytest.mark.parametrize("net, got", [(Net(out=7), "7, 64, 64"), (Net(pool=True), "2, 32, 32")])
def test_outputs_that_do_not_match_the_declaration_are_refused(tmp_path, misc, net, got):
    model = load_package(package(tmp_path, net=net))
    with pytest.raises(NapariUnetError) as err:
        segment(misc[:64, :64], model, device="cpu", tile=64, overlap=0, scale=1.0)
    text = one_sentence(err.value)
    assert got in text and "declares (1, 2, 64, 64)" in text


def test_cli_refuses_a_tampered_package_and_writes_nothing(tmp_path, misc, capsys):
    good, other = torchscript_bytes(Net()), torchscript_bytes(Net(seed=1))
    pkg = package(tmp_path, rdf=description(good), weights=other)
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, misc[:64, :64])
    out = tmp_path / "out"
    code = main(["segment", str(image), "--model", str(pkg), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "sha256" in lines[0]
    assert not out.exists() or not list(out.iterdir())


def test_a_few_aliases_are_read(tmp_path):
    """yaml.safe_dump writes aliases for shared objects (the two axes' sizes here): those load."""
    text = yaml.safe_dump(description(torchscript_bytes(Net())))
    assert "*id" in text
    model = load_model(package(tmp_path))
    assert model.info.classes == ["background", "foreground", "boundaries"]
