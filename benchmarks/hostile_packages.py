"""Peak memory and time while refusing hostile bioimage.io packages.

* a zip bomb: ``weights.pt`` of 6 GiB of zeros deflated into a few MiB;
* a YAML alias bomb in ``rdf.yaml`` (10^10 items once expanded).

Each refusal runs in a fresh process so that its peak RSS (``ru_maxrss``) is its own; the baseline
is the same process importing napari-unet and loading nothing.

    python benchmarks/hostile_packages.py [--bomb-gib 6] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from napari_unet.bioimageio.package import load_package
from napari_unet.errors import NapariUnetError
start = time.perf_counter()
message = None
if sys.argv[1] != "-":
    try:
        load_package(sys.argv[1])
    except NapariUnetError as exc:
        message = str(exc)
print(json.dumps({"seconds": time.perf_counter() - start, "message": message,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

RDF = "type: model\nname: bomb\nweights:\n  torchscript:\n    source: weights.pt\n"


def zip_bomb(path: Path, gib: float) -> Path:
    chunk = bytes(64 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("rdf.yaml", RDF)
        with z.open("weights.pt", "w", force_zip64=True) as member:
            for _ in range(int(gib * 16)):
                member.write(chunk)
    return path


def alias_bomb(path: Path) -> Path:
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("rdf.yaml", "\n".join(lines) + "\ntype: model\nname: *a9\n")
    return path


def refuse(package: Path | str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(package)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bomb-gib", type=float, default=6.0)
    parser.add_argument("--keep", help="folder for the bombs (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        bomb = zip_bomb(folder / "zip_bomb.zip", args.bomb_gib)
        made = time.perf_counter() - start
        with zipfile.ZipFile(bomb) as z:
            declared = z.getinfo("weights.pt").file_size
        rows = {
            "baseline (import only)": refuse("-"),
            f"zip bomb ({declared / 2**30:.1f} GiB in {bomb.stat().st_size / 2**20:.1f} MiB, made in {made:.0f} s)":
                refuse(bomb),
            "YAML alias bomb": refuse(alias_bomb(folder / "alias_bomb.zip")),
        }
    for name, r in rows.items():
        print(f"{name}: {r['seconds']:.3f} s, peak RSS {r['peak_rss_mib']:.0f} MiB\n    {r['message']}")


if __name__ == "__main__":
    main()
