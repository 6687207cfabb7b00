"""A pack's files and its manifest: the names of its parts, the sha256 of every file, reading a manifest back.

Shared by the pack tool (``czii_kit.kaggle.pack``, which writes them) and the notebook's reader
(``czii_kit.kaggle.runtime``, which checks them on Kaggle); standard library and tqdm only.
"""
from __future__ import annotations

import json
from pathlib import Path

import czii_kit
from czii_kit.errors import DataError
from czii_kit.kaggle.preflight import MANIFEST, PACK_FORMAT
from czii_kit.utils.digest import sha256_file  # noqa: F401 -- kaggle.runtime reads it from here
from czii_kit.utils.progress import progress_bar

FORMAT = PACK_FORMAT  # preflight.py (standard library only) holds the names it shares with the pack tool
FORMAT_VERSION = 2  # 2: the manifest's "environment" and preflight.py
PREFLIGHT = "preflight.py"
DATASET_METADATA = "dataset-metadata.json"
CONFIGS = "configs"
METADATA_FILES = (MANIFEST, DATASET_METADATA)  # describe the pack; not listed in the manifest's files


# --------------------------------------------------------------------------- files
def pack_files(root: Path) -> list[Path]:
    """Every file of a pack folder but the two metadata files, as sorted relative paths."""
    return sorted(rel for p in root.rglob("*")
                  if p.is_file() and (rel := p.relative_to(root)).as_posix() not in METADATA_FILES)


def file_table(root: Path, progress: bool = True) -> list[dict]:
    """[{path, size, sha256}] of every pack file, hashed with a progress bar over bytes."""
    paths = pack_files(root)
    total = sum((root / p).stat().st_size for p in paths)
    with progress_bar(total=total, unit="B", unit_scale=True, desc="sha256", enabled=progress) as bar:
        return [{"path": p.as_posix(), "size": (root / p).stat().st_size, "sha256": sha256_file(root / p, bar)}
                for p in paths]


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- manifest
def load_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise DataError(f"{root} has no {MANIFEST}: it is not a pack made by tools/pack_kaggle_dataset.py")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not valid JSON ({e}); re-pack with tools/pack_kaggle_dataset.py") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path} is not a czii-kit pack manifest (no format={FORMAT!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise DataError(f"{path} was written by a newer czii-kit (pack format {manifest['format_version']}); "
                        "install the czii-kit wheel from the same pack")
    return manifest


def make_manifest(files: list[dict], checkpoints: list[dict], dataset_id: str, environment: dict,
                  classes: list[str], default_fusion: bool = False) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "czii_kit_version": czii_kit.__version__,
            "dataset": dataset_id, "classes": list(classes), "checkpoints": checkpoints,
            "default_fusion": default_fusion, "environment": environment, "files": files}
