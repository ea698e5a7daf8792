"""Model versions: fine-tuned checkpoints saved side by side in a models folder, never replacing one.

A version's readable name is ``fine-tuned <date time>`` unless the user gave it one: that name lives in a
small sidecar file ``<checkpoint stem>.name.json`` beside the checkpoint (the weights file is never
rewritten), format ``napari-unet-version-name`` version 1.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import safe_open

from napari_unet.errors import NapariUnetError
from napari_unet.io.atomic import atomic_path

NAME_FORMAT, NAME_FORMAT_VERSION = "napari-unet-version-name", 1
MAX_NAME = 200  # characters of a user's name for a version


@dataclass(frozen=True)
class ModelVersion:
    """What the models folder says about one fine-tuned model, read from its header only."""

    path: Path
    name: str
    created: str
    base: str
    f1_before: float | None
    f1_after: float | None
    pairs: int | None
    epochs: int | None
    val_pairs: int | None = None
    val_objects: int | None = None
    title: str = ""  # the readable name: the user's, else ``fine-tuned <date time>`` (:func:`default_title`)
    named: bool = False  # the user gave ``title``

    @property
    def improved(self) -> bool:
        return None not in (self.f1_before, self.f1_after) and self.f1_after > self.f1_before


def default_title(created: str, path: Path) -> str:
    """``fine-tuned 2026-12-03 14:02`` from the ISO creation time; the file's stem when it has none."""
    return f"fine-tuned {created[:16].replace('T', ' ')}" if created else path.stem


def name_path(checkpoint: Path | str) -> Path:
    """The sidecar that holds a version's user-given name: ``<stem>.name.json`` beside it."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.stem}.name.json")


def read_name(checkpoint: Path | str) -> str | None:
    """The user-given name of a version, or None (no sidecar, an unreadable one, or a newer format)."""
    try:
        data = json.loads(name_path(checkpoint).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != NAME_FORMAT:
        return None
    if not isinstance(data.get("format_version"), int) or data["format_version"] > NAME_FORMAT_VERSION:
        return None
    name = data.get("name")
    return (name.strip() or None) if isinstance(name, str) else None


def rename_version(checkpoint: Path | str, name: str) -> Path | None:
    """Give a version a readable name, written atomically to its sidecar (the weights are not touched);
    an empty name goes back to the default one (the sidecar is removed). Returns the sidecar, or None."""
    checkpoint, name = Path(checkpoint), " ".join(name.split())
    if not checkpoint.is_file():
        raise NapariUnetError(f"{checkpoint} is not there any more, so it cannot be renamed.")
    if len(name) > MAX_NAME:
        raise NapariUnetError(f"The name is {len(name)} characters long; at most {MAX_NAME} are kept.")
    sidecar = name_path(checkpoint)
    if not name:
        sidecar.unlink(missing_ok=True)
        return None
    with atomic_path(sidecar) as tmp:
        tmp.write_text(json.dumps({"format": NAME_FORMAT, "format_version": NAME_FORMAT_VERSION, "name": name,
                                   "checkpoint": checkpoint.name}, ensure_ascii=False, indent=1), encoding="utf-8")
    return sidecar


def models_dir_for(pairs_dir: Path | str) -> Path:
    """The default models folder: ``models/`` beside the pairs folder."""
    return Path(pairs_dir).resolve().parent / "models"


def new_version_path(models_dir: Path | str, base_name: str) -> Path:
    """A fresh, unused path named with the time and the base model."""
    models_dir = Path(models_dir)
    base = re.sub(r"[^A-Za-z0-9_-]+", "_", base_name)[:40] or "model"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = models_dir / f"{stamp}_from_{base}.safetensors"
    n = 1
    while path.exists():
        n += 1
        path = models_dir / f"{stamp}_from_{base}_{n}.safetensors"
    return path


def list_versions(models_dir: Path | str) -> list[ModelVersion]:
    """Usable model versions in ``models_dir``, newest first.

    Unreadable files are skipped, and so are runs scored as not better than their base (the
    fine-tune runner moves those to ``rejected/``; this also hides older ones left in place).
    """
    versions = []
    for path in Path(models_dir).glob("*.safetensors"):
        if path.name.startswith(".") or ".latest." in path.name:
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
            info = json.loads(header.get("info", "{}"))
        except Exception:  # noqa: BLE001 - a broken file is simply not a version
            continue
        prov = info.get("provenance", {})
        created, given = prov.get("created", ""), read_name(path)
        versions.append(ModelVersion(
            path=path, name=info.get("name", path.stem), created=created,
            base=prov.get("base_model", ""), f1_before=prov.get("base_validation_f1"),
            f1_after=prov.get("validation_f1"), pairs=prov.get("pairs_used"), epochs=prov.get("epochs"),
            val_pairs=prov.get("validation_pairs"), val_objects=prov.get("validation_objects"),
            title=given or default_title(created, path), named=given is not None,
        ))
    versions = [v for v in versions if None in (v.f1_before, v.f1_after) or v.improved]
    return sorted(versions, key=lambda v: (v.created, v.path.name), reverse=True)
