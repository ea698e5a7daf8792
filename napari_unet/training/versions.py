"""Model versions: fine-tuned checkpoints saved side by side in a models folder, never replacing one."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import safe_open


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

    @property
    def improved(self) -> bool:
        return None not in (self.f1_before, self.f1_after) and self.f1_after > self.f1_before


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
        versions.append(ModelVersion(
            path=path, name=info.get("name", path.stem), created=prov.get("created", ""),
            base=prov.get("base_model", ""), f1_before=prov.get("base_validation_f1"),
            f1_after=prov.get("validation_f1"), pairs=prov.get("pairs_used"), epochs=prov.get("epochs"),
            val_pairs=prov.get("validation_pairs"), val_objects=prov.get("validation_objects"),
        ))
    versions = [v for v in versions if None in (v.f1_before, v.f1_after) or v.improved]
    return sorted(versions, key=lambda v: (v.created, v.path.name), reverse=True)
