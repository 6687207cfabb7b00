"""A pack as the notebook sees it on Kaggle: attached read-only, checked file by file against its manifest.

The only part of ``czii_kit.kaggle`` the inference notebook imports (besides ``environment``): no pack
building, no wheel tooling.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from czii_kit.errors import DataError
from czii_kit.kaggle.manifest import CONFIGS, MANIFEST, load_manifest, sha256_file
from czii_kit.kaggle.preflight import SEARCH_DEPTH, folders
from czii_kit.utils.progress import progress_bar


@dataclass(frozen=True)
class Pack:
    """A pack as attached to a notebook (read-only), checked against its manifest."""

    root: Path
    manifest: dict

    @property
    def checkpoints(self) -> list[Path]:
        return [self.root / c["path"] for c in self.manifest["checkpoints"]]

    @property
    def config_dir(self) -> Path:
        return self.root / CONFIGS

    @property
    def thresholds(self) -> Path | None:
        """The packed thresholds.json (tools/pack_kaggle_dataset.py --thresholds-from), if any."""
        from czii_kit.tuning import TUNING_FILE

        return self.root / TUNING_FILE if any(f["path"] == TUNING_FILE for f in self.manifest["files"]) else None

    @property
    def default_fusion(self) -> bool:
        """Packed with --default-fusion: several kinds fuse with the config's weights, on purpose."""
        return bool(self.manifest.get("default_fusion", False))

    def describe(self) -> str:
        lines = [f"pack {self.manifest['dataset']} (czii-kit {self.manifest['czii_kit_version']}): "
                 f"{len(self.manifest['checkpoints'])} checkpoint(s)"]
        for c in self.manifest["checkpoints"]:
            score = "n/a" if c["score"] is None else f"{c['score']:.4f}"
            lines.append(f"  {c['path']}: fold {c['fold']}, {c['model']}, validation F4 {score}")
        return "\n".join(lines)


def read_pack(pack_dir: str | Path, verify: bool = True, progress: bool = False) -> Pack:
    """The pack at pack_dir; with verify, every file must match the manifest's size and sha256.

    Catches a wrong, partial or stale dataset version before hours of inference.
    """
    root = Path(pack_dir)
    manifest = load_manifest(root)
    fix = ("attach the whole dataset made by tools/pack_kaggle_dataset.py (uploaded with --dir-mode zip, which "
           "keeps its folders), or re-pack and upload a new version")
    for entry in manifest["files"]:
        path = root / entry["path"]
        if not path.is_file() or path.stat().st_size != entry["size"]:
            raise DataError(f"{path}, listed in {root / MANIFEST}, is missing or has the wrong size; {fix}")
    if verify:
        total = sum(f["size"] for f in manifest["files"])
        with progress_bar(total=total, unit="B", unit_scale=True, desc="sha256", enabled=progress) as bar:
            for entry in manifest["files"]:
                if sha256_file(root / entry["path"], bar) != entry["sha256"]:
                    raise DataError(f"{root / entry['path']} does not match its sha256 in {root / MANIFEST}; {fix}")
    return Pack(root, manifest)


def find_engines(root: str | Path, max_depth: int = SEARCH_DEPTH) -> list[Path]:
    """Folders under ``root`` holding prebuilt TensorRT engines (an ``engines.json`` written by czii build-engines,
    e.g. the output of the engines notebook added under kernel_sources), wherever Kaggle mounted them."""
    from czii_kit.infer.prebuild import INDEX

    return [d for d in folders(root, max_depth) if (d / INDEX).is_file()]
