"""Pack checkpoints and czii-kit itself into a Kaggle dataset folder; read and check it back on Kaggle.

Kaggle code-competition notebooks run with the internet off, so everything the notebook needs
travels in one dataset, uploaded with ``kaggle datasets create -p PACK --dir-mode zip``:

    PACK/dataset-metadata.json   what the kaggle CLI reads: title, id USER/SLUG, license
    PACK/manifest.json           every file with size and sha256, class order, per-checkpoint fold/score/thresholds
    PACK/EXP/fold{K}.pt          checkpoints, one folder per experiment, with its config.yaml (+ ONNX with --onnx)
    PACK/configs/*.yaml          the configs: an installed czii-kit has no checkout to read base.yaml from
    PACK/wheels/*.whl            czii-kit built from this checkout, plus the optional dependency wheelhouse

A pack is built in a temp folder next to ``out`` and renamed into place at the end, so a failed
or refused pack leaves nothing behind. Credentials are never read: the Kaggle user comes from
--user or $KAGGLE_USERNAME, else a placeholder to edit.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

import czii_kit
from czii_kit.errors import CheckpointError, ConfigError, DataError

FORMAT = "czii-kit-kaggle-pack"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
DATASET_METADATA = "dataset-metadata.json"
WHEELS = "wheels"
CONFIGS = "configs"
METADATA_FILES = (MANIFEST, DATASET_METADATA)  # describe the pack; not listed in the manifest's files
PLACEHOLDER_USER = "your-kaggle-username"
LICENSE = "CC0-1.0"
NAME_LENGTHS = range(6, 51)  # Kaggle: dataset slug and title are 6-50 characters
SLUG_PATTERN = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
USER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
REPRODUCIBLE_EPOCH = "315532800"  # 1980-01-01, the earliest zip time: the same sources give the same wheel bytes
BUILD_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "MANIFEST.in", "LICENSE")
# Inference needs these and Kaggle's image lacks them (timm: smp-3d pins 0.9.7, Kaggle ships 1.x).
KAGGLE_MISSING = ("zarr", "numcodecs", "asciitree", "fasteners", "segmentation-models-pytorch-3d", "timm-3d",
                  "timm", "munch")
KAGGLE_MISSING_SDIST_ONLY = ("pretrainedmodels", "efficientnet-pytorch")  # PyPI has no wheels: build them
KAGGLE_PLATFORM = "manylinux2014_x86_64"


# --------------------------------------------------------------------------- names
def check_slug(slug: str) -> str:
    if len(slug) not in NAME_LENGTHS or not SLUG_PATTERN.fullmatch(slug):
        raise ConfigError(f"--slug {slug!r}: a Kaggle dataset slug is 6-50 lowercase letters, digits and single "
                          "hyphens, e.g. czii-kit-weights")
    return slug


def check_title(title: str) -> str:
    if len(title.strip()) not in NAME_LENGTHS:
        raise ConfigError(f"--title {title!r} has {len(title.strip())} characters; Kaggle needs 6-50")
    return title.strip()


def check_user(user: str) -> str:
    if not USER_PATTERN.fullmatch(user):
        raise ConfigError(f"--user {user!r} is not a Kaggle username (letters, digits, - and _)")
    return user


def default_user() -> str:
    """$KAGGLE_USERNAME, else a placeholder to replace in dataset-metadata.json (kaggle.json is never read)."""
    return os.environ.get("KAGGLE_USERNAME") or PLACEHOLDER_USER


def dataset_metadata(user: str, slug: str, title: str) -> dict:
    """The dataset-metadata.json that `kaggle datasets create` reads."""
    return {"title": check_title(title), "id": f"{check_user(user)}/{check_slug(slug)}",
            "licenses": [{"name": LICENSE}]}


# --------------------------------------------------------------------------- files
def sha256_file(path: Path, bar: tqdm | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return digest.hexdigest()


def pack_files(root: Path) -> list[Path]:
    """Every file of a pack folder but the two metadata files, as sorted relative paths."""
    return sorted(rel for p in root.rglob("*")
                  if p.is_file() and (rel := p.relative_to(root)).as_posix() not in METADATA_FILES)


def file_table(root: Path, progress: bool = True) -> list[dict]:
    """[{path, size, sha256}] of every pack file, hashed with a progress bar over bytes."""
    paths = pack_files(root)
    total = sum((root / p).stat().st_size for p in paths)
    with tqdm(total=total, unit="B", unit_scale=True, desc="sha256", disable=None if progress else True) as bar:
        return [{"path": p.as_posix(), "size": (root / p).stat().st_size, "sha256": sha256_file(root / p, bar)}
                for p in paths]


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# --------------------------------------------------------------------------- contents
def _experiment_dirs(ckpts: list[dict]) -> dict[str, Path]:
    """Pack folder name (the weights folder's name) -> weights folder; names must not collide."""
    names: dict[str, Path] = {}
    for ckpt in ckpts:
        folder = Path(ckpt["path"]).resolve().parent
        if folder.name in (WHEELS, CONFIGS):
            raise ConfigError(f"experiment folder {folder} has the name of a pack folder; rename it")
        first = names.setdefault(folder.name, folder)
        if first != folder:
            raise ConfigError(f"experiments {first} and {folder} are both named {folder.name!r} and the pack keeps "
                              "one folder per experiment name; rename one of them")
    return names


def _require_unique(ckpts: list[dict]) -> None:
    seen: set[Path] = set()
    for ckpt in ckpts:
        path = Path(ckpt["path"]).resolve()
        if path in seen:
            raise ConfigError(f"{path} is selected twice by --weights; list each checkpoint once")
        seen.add(path)


def packed_onnx(ckpt: dict) -> list[Path]:
    """The ONNX exports predict looks for next to a checkpoint: the fp32 one (required), the fp16 one when present.

    A missing fp16 file costs only a few seconds on Kaggle (predict exports it into its cache before
    building the TensorRT engine); a missing fp32 one means --onnx was asked for without exporting.
    """
    from czii_kit.infer.kinds import kind_of

    fp32, fp16 = (kind_of(ckpt).onnx_path([ckpt], ckpt["config"], fp16) for fp16 in (False, True))
    if not fp32.is_file():
        raise CheckpointError(f"--onnx: no ONNX export {fp32} next to {ckpt['path']}; make it with "
                              f"`python tools/export.py --weights {ckpt['path']} --format onnx`, or drop --onnx")
    return [fp32, fp16] if fp16.is_file() else [fp32]


def _copy_experiments(ckpts: list[dict], experiments: dict[str, Path], exports: dict[str, list[Path]],
                      dest: Path) -> list[dict]:
    """Copy checkpoints (+ config.yaml, + ONNX exports) into dest/EXP/; returns the manifest's checkpoint entries."""
    entries = []
    for name, folder in experiments.items():
        (dest / name).mkdir()
        if (folder / "config.yaml").is_file():
            shutil.copy2(folder / "config.yaml", dest / name / "config.yaml")
    for ckpt in ckpts:
        src = Path(ckpt["path"])
        exp = src.resolve().parent.name
        extras = exports[ckpt["path"]]
        for path in (src, *extras):
            shutil.copy2(path, dest / exp / path.name)
        entries.append(_checkpoint_entry(ckpt, f"{exp}/{src.name}", [f"{exp}/{p.name}" for p in extras]))
    return entries


def _checkpoint_entry(ckpt: dict, path: str, onnx: list[str]) -> dict:
    score = float(ckpt["validation"].get("score", math.nan))
    return {"path": path, "fold": ckpt["fold"], "model": ckpt["model"]["name"], "epoch": ckpt["epoch"],
            "score": None if math.isnan(score) else score, "thresholds": dict(ckpt["thresholds"]),
            "window": list(ckpt["window"]), "onnx": onnx}


def _copy_configs(dest: Path) -> None:
    from czii_kit.config import config_dir

    dest.mkdir()
    for path in sorted(config_dir().glob("*.yaml")):
        shutil.copy2(path, dest / path.name)


# --------------------------------------------------------------------------- wheels
def project_root() -> Path:
    """The checkout czii-kit is installed from (editable install), to build its wheel."""
    root = Path(czii_kit.__file__).resolve().parents[2]
    if not (root / "setup.cfg").is_file() and not (root / "pyproject.toml").is_file():
        raise ConfigError(f"czii-kit at {Path(czii_kit.__file__).parent} is not a source checkout, and the pack "
                          "builds its wheel from one: run this tool from a checkout installed with `pip install -e .`")
    return root


def build_project_wheel(dest: Path) -> Path:
    """Build czii-kit's wheel offline into dest, from a clean copy of the sources.

    The copy keeps stale build/ leftovers of the checkout out of the wheel; a fixed
    SOURCE_DATE_EPOCH makes the bytes depend on the sources only, so re-packing is a no-op.
    """
    root = project_root()
    with tempfile.TemporaryDirectory(prefix="czii-wheel-") as tmp:
        src = Path(tmp) / "src"
        for name in BUILD_FILES:
            if (root / name).is_file():
                shutil.copy2(root / name, Path(tmp) / name)
        shutil.copytree(root / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                   "--quiet", "-w", str(dest), tmp]
        done = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "SOURCE_DATE_EPOCH": REPRODUCIBLE_EPOCH})
    if done.returncode != 0:
        raise ConfigError(f"building the czii-kit wheel failed ({shlex.join(command)}):\n{done.stderr[-2000:]}\n"
                          "it runs offline without build isolation: `pip install setuptools wheel` first")
    (wheel,) = dest.glob("czii_kit-*.whl")
    return wheel


def wheel_distribution(path: Path) -> str:
    """Normalized distribution name of a wheel file name (PEP 503)."""
    return re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower()


def copy_wheelhouse(wheels: Path, dest: Path) -> list[Path]:
    """Copy a folder of dependency wheels (not czii-kit's own: the fresh build wins)."""
    found = sorted(p for p in Path(wheels).glob("*.whl") if wheel_distribution(p) != "czii-kit")
    if not found:
        raise ConfigError(f"--wheels {wheels} holds no dependency .whl files; make them with:\n"
                          + "\n".join(wheelhouse_commands(wheels)))
    for path in found:
        if not zipfile.is_zipfile(path):
            raise ConfigError(f"--wheels: {path} is not a wheel (not a zip archive); download it again")
        shutil.copy2(path, dest / path.name)
    return found


def _pinned(name: str) -> str:
    """name==the version installed here (what was tested), or the bare name."""
    try:
        return f"{name}=={importlib.metadata.version(name)}"
    except importlib.metadata.PackageNotFoundError:
        return name


def wheelhouse_commands(folder: str | Path = "wheels", python_version: str = "3.12") -> list[str]:
    """Commands that fill a wheelhouse with what Kaggle's image lacks, pinned to this environment's versions."""
    binary = " ".join(_pinned(n) for n in KAGGLE_MISSING)
    source_only = " ".join(_pinned(n) for n in KAGGLE_MISSING_SDIST_ONLY)
    folder = shlex.quote(str(folder))
    return [f"pip download --no-deps --only-binary=:all: --python-version {python_version} "
            f"--platform {KAGGLE_PLATFORM} -d {folder} {binary}",
            f"pip wheel --no-deps -w {folder} {source_only}"]


def missing_from_wheelhouse(wheel_files: Sequence[Path]) -> list[str]:
    """Dependencies Kaggle lacks that the packed wheels do not provide."""
    have = {wheel_distribution(p) for p in wheel_files}
    return [n for n in (*KAGGLE_MISSING, *KAGGLE_MISSING_SDIST_ONLY) if n not in have]


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


def _manifest(files: list[dict], checkpoints: list[dict], dataset_id: str) -> dict:
    from czii_kit.particles import CLASS_NAMES

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "czii_kit_version": czii_kit.__version__,
            "dataset": dataset_id, "classes": list(CLASS_NAMES), "checkpoints": checkpoints, "files": files}


# --------------------------------------------------------------------------- destination
def _existing_pack(out: Path, force: bool) -> dict | None:
    """Manifest of the pack already at out (None if out is new or empty); refuse what must not be replaced."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError(f"--out {out} is a file; give a folder path")
    if not any(out.iterdir()):
        return None
    if not (out / MANIFEST).is_file():
        raise DataError(f"--out {out} exists and is not a czii-kit pack (no {MANIFEST}); choose a new --out "
                        "(--force only replaces packs, never other folders)")
    manifest = load_manifest(out)
    unlisted = sorted({p.as_posix() for p in pack_files(out)} - {f["path"] for f in manifest["files"]})
    if unlisted and not force:
        raise DataError(f"--out {out} holds files that are not part of its pack ({', '.join(unlisted[:5])}); "
                        "move them away, or use --force to replace the whole folder")
    return manifest


def _require_same_or_forced(out: Path, old: dict | None, new: dict, force: bool) -> None:
    if old is None or force:
        return
    old_files = {(f["path"], f["sha256"]) for f in old["files"]}
    new_files = {(f["path"], f["sha256"]) for f in new["files"]}
    changed = sorted({path for path, _ in old_files ^ new_files})
    if changed:
        raise DataError(f"--out {out} holds a different pack ({len(changed)} file(s) differ, e.g. "
                        f"{', '.join(changed[:3])}); use --force to replace it, or choose another --out")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished pack onto out; an old pack is moved aside first and deleted last."""
    if not out.exists():
        tmp.rename(out)
        return
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(holder / out.name)
    tmp.rename(out)
    shutil.rmtree(holder)


# --------------------------------------------------------------------------- pack
@dataclass(frozen=True)
class PackResult:
    out: Path
    manifest: dict
    wheels: list[Path]  # every packed wheel, czii-kit's first
    replaced: bool  # an older, different pack was replaced (--force)


def pack_dataset(weights: Sequence[str | Path], out: str | Path, slug: str, user: str, title: str | None = None,
                 folds: Sequence[int] | None = None, wheels: str | Path | None = None, onnx: bool = False,
                 force: bool = False, progress: bool = True) -> PackResult:
    """Pack the selected checkpoints, configs and wheels into out, ready for `kaggle datasets create`."""
    from czii_kit.infer.kinds import load_checkpoints

    metadata = dataset_metadata(user, slug, title or slug)
    out = Path(out)
    old = _existing_pack(out, force)
    ckpts = load_checkpoints(list(weights), list(folds) if folds is not None else None)
    _require_unique(ckpts)
    experiments = _experiment_dirs(ckpts)
    exports = {c["path"]: packed_onnx(c) if onnx else [] for c in ckpts}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would follow the rename
    try:
        checkpoints = _copy_experiments(ckpts, experiments, exports, tmp)
        _copy_configs(tmp / CONFIGS)
        (tmp / WHEELS).mkdir()
        packed_wheels = [build_project_wheel(tmp / WHEELS)]
        if wheels is not None:
            packed_wheels += [tmp / WHEELS / p.name for p in copy_wheelhouse(Path(wheels), tmp / WHEELS)]
        manifest = _manifest(file_table(tmp, progress), checkpoints, metadata["id"])
        _write_json(tmp / MANIFEST, manifest)
        _write_json(tmp / DATASET_METADATA, metadata)
        _require_same_or_forced(out, old, manifest, force)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replaced = old is not None and old["files"] != manifest["files"]
    return PackResult(out, manifest, [out / WHEELS / p.name for p in packed_wheels], replaced)


# --------------------------------------------------------------------------- reading back (on Kaggle)
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
        with tqdm(total=total, unit="B", unit_scale=True, desc="sha256", disable=None if progress else True) as bar:
            for entry in manifest["files"]:
                if sha256_file(root / entry["path"], bar) != entry["sha256"]:
                    raise DataError(f"{root / entry['path']} does not match its sha256 in {root / MANIFEST}; {fix}")
    return Pack(root, manifest)
