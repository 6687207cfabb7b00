"""Pack checkpoints and czii-kit itself into a Kaggle dataset folder; read and check it back on Kaggle.

Kaggle code-competition notebooks run with the internet off, so everything the notebook needs
travels in one dataset, uploaded with ``kaggle datasets create -p PACK --dir-mode zip``:

    PACK/dataset-metadata.json   what the kaggle CLI reads: title, id USER/SLUG, license
    PACK/manifest.json           every file with size and sha256, class order, per-checkpoint fold/score/thresholds
    PACK/EXP/fold{K}.pt          checkpoints, one folder per experiment, with its config.yaml (+ ONNX with --onnx)
    PACK/configs/*.yaml          the configs: an installed czii-kit has no checkout to read base.yaml from
    PACK/wheels/*.whl            czii-kit built from this checkout, plus the optional dependency wheelhouse
    PACK/preflight.py            standard-library check, run before ``pip install``, that this image can install them

The manifest's ``environment`` records what the wheels are for (the Kaggle image's Python, platform
tags and CUDA: --kaggle-python, --kaggle-platform, --kaggle-cuda), every packed wheel's tags, and the
distributions the notebook imports that Kaggle's image lacks; preflight.py checks them on Kaggle.

A pack is built in a temp folder next to ``out`` and renamed into place at the end, so a failed
or refused pack leaves nothing behind. Credentials are never read: the Kaggle user comes from
--user or $KAGGLE_USERNAME, else a placeholder to edit.
"""
from __future__ import annotations

import email.parser
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
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
from czii_kit.kaggle import preflight

FORMAT = "czii-kit-kaggle-pack"
FORMAT_VERSION = 2  # 2: the manifest's "environment" and preflight.py
PREFLIGHT = "preflight.py"
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
# The Kaggle image the wheelhouse is made for (kaggle_notebooks/README.md says how to check each):
KAGGLE_PYTHON = "3.12"  # `!python --version`
KAGGLE_CUDA = "12.8"  # `import torch; torch.version.cuda` (the image's torch is a cu128 build)
KAGGLE_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")  # glibc 2.17+ and 2.28+ wheels (Kaggle: 2.35)
CUDA_MAJORS = (12, 13)  # the CUDA families TensorRT and CuPy publish wheels for (tensorrt-cu12, cupy-cuda12x)
# GPU extras: TensorRT 10.x supports compute capability >= 7.0 (the T4 is 7.5, the P100's 6.0 is not supported)
TENSORRT_VERSION = "10.16.1.11"
CUPY_VERSION = "14.2.0"
CUDA_PATHFINDER_VERSION = "1.9.1"  # cupy 14 imports it
NVIDIA_INDEX = "https://pypi.nvidia.com"  # tensorrt-cuXX-libs: PyPI holds only a stub that downloads from here
# What czii-kit's YOLO code imports from ultralytics (module, name); the pack checks the installed one has them.
ULTRALYTICS_IMPORTS = (("ultralytics", "YOLO"), ("ultralytics.nn.tasks", "DetectionModel"),
                       ("ultralytics.utils.nms", "non_max_suppression"), ("ultralytics.engine", "trainer"),
                       ("ultralytics.utils", "ONLINE"), ("ultralytics.utils", "SETTINGS"),
                       ("ultralytics.utils", "USER_CONFIG_DIR"))


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
    return preflight.distribution(path.name.split("-")[0])


# --------------------------------------------------------------------------- the Kaggle image
@dataclass(frozen=True)
class KaggleTarget:
    """The Kaggle image the wheels are for (--kaggle-python, --kaggle-cuda, --kaggle-platform, --tensorrt-version)."""

    python: str = KAGGLE_PYTHON
    cuda: str = KAGGLE_CUDA
    platforms: tuple[str, ...] = KAGGLE_PLATFORMS
    tensorrt: str = TENSORRT_VERSION

    def __post_init__(self) -> None:
        if not re.fullmatch(r"3\.\d{1,2}", self.python):
            raise ConfigError(f"--kaggle-python {self.python!r}: give the image's Python as MAJOR.MINOR, e.g. "
                              f"{KAGGLE_PYTHON} (check with `!python --version` in a Kaggle notebook)")
        if not re.fullmatch(r"\d+\.\d+", self.cuda) or self.cuda_major not in CUDA_MAJORS:
            raise ConfigError(f"--kaggle-cuda {self.cuda!r}: give the CUDA of the image's torch as MAJOR.MINOR, "
                              f"e.g. {KAGGLE_CUDA} (`torch.version.cuda` in a Kaggle notebook); TensorRT and CuPy "
                              f"wheels are packed for CUDA {' or '.join(map(str, CUDA_MAJORS))}")
        if not self.platforms:
            raise ConfigError(f"--kaggle-platform: give at least one platform tag, e.g. {KAGGLE_PLATFORMS[0]}")
        arches = set()
        for tag in self.platforms:
            match = re.fullmatch(r"(?:manylinux(?:1|2010|2014)|manylinux_\d+_\d+)_(\w+)", tag)
            if match is None:
                raise ConfigError(f"--kaggle-platform {tag!r}: give a manylinux tag such as manylinux2014_x86_64 or "
                                  "manylinux_2_28_x86_64 (Kaggle's images are glibc Linux on x86_64)")
            arches.add(match[1])
        if len(arches) > 1:
            raise ConfigError(f"--kaggle-platform {' '.join(self.platforms)}: the tags name several architectures "
                              f"({', '.join(sorted(arches))}); Kaggle's image has one (x86_64)")
        if not re.fullmatch(r"\d+(\.\d+)+(\.post\d+)?", self.tensorrt) or int(self.tensorrt.split(".")[0]) < 10:
            raise ConfigError(f"--tensorrt-version {self.tensorrt!r}: give a TensorRT 10+ release such as "
                              f"{TENSORRT_VERSION}, one whose support matrix includes the T4 (compute capability 7.5)")

    @property
    def cuda_major(self) -> int:
        return int(self.cuda.split(".")[0])

    def gpu_extras(self) -> dict[str, str]:
        """The optional GPU wheels, pinned: TensorRT (module tensorrt, three distributions) and CuPy."""
        m = self.cuda_major
        return {f"tensorrt-cu{m}": self.tensorrt, f"tensorrt-cu{m}-bindings": self.tensorrt,
                f"tensorrt-cu{m}-libs": self.tensorrt, f"cupy-cuda{m}x": CUPY_VERSION,
                "cuda-pathfinder": CUDA_PATHFINDER_VERSION}

    def image(self) -> dict:
        """This target as preflight's description of a running image, to check wheels against at pack time."""
        glibc = max(_glibc_of(tag) for tag in self.platforms)
        machine = re.fullmatch(r"(?:manylinux(?:1|2010|2014)|manylinux_\d+_\d+)_(\w+)", self.platforms[0])[1]
        major, minor = (int(p) for p in self.python.split("."))
        return {"implementation": "cpython", "python": (major, minor), "python_full": self.python,
                "machine": machine, "system": "linux", "glibc": glibc, "torch": None, "cuda": self.cuda}

    def options(self) -> str:
        return (f"--kaggle-python {self.python} --kaggle-cuda {self.cuda} "
                + " ".join(f"--kaggle-platform {tag}" for tag in self.platforms))


def _glibc_of(tag: str) -> tuple[int, int]:
    legacy = re.match(r"(manylinux1|manylinux2010|manylinux2014)_", tag)
    if legacy:
        return preflight.LEGACY_MANYLINUX[legacy[1]]
    major, minor = re.match(r"manylinux_(\d+)_(\d+)_", tag).groups()
    return int(major), int(minor)


# --------------------------------------------------------------------------- wheelhouse
def _requires_python(path: Path) -> str | None:
    """Requires-Python from a wheel's METADATA, None when it has none (or no METADATA)."""
    with zipfile.ZipFile(path) as zf:
        names = [n for n in zf.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
        if not names:
            return None
        metadata = email.parser.Parser().parsestr(zf.read(names[0]).decode("utf-8", "replace"), headersonly=True)
    value = metadata.get("Requires-Python")
    return value.strip() if value else None


def wheel_record(path: Path) -> dict:
    """The manifest's entry for one packed wheel: file, name, version, python/abi/platform tags, Requires-Python."""
    try:
        tags = preflight.parse_wheel_name(path.name)
    except ValueError:
        raise ConfigError(f"--wheels: {path.name} is not a wheel file name (NAME-VERSION-PYTHON-ABI-PLATFORM.whl); "
                          "use the files pip download / pip wheel wrote, unrenamed") from None
    return {"file": path.name, **tags, "requires_python": _requires_python(path)}


def find_wheelhouse(wheels: Path, target: KaggleTarget, yolo: bool = False) -> list[Path]:
    """The dependency wheels of a wheelhouse folder (not czii-kit's own: the fresh build wins), checked to be
    wheels, one per distribution, and installable on the target image."""
    found = sorted(p for p in Path(wheels).glob("*.whl") if wheel_distribution(p) != "czii-kit")
    if not found:
        raise ConfigError(f"--wheels {wheels} holds no dependency .whl files; make them with:\n"
                          + "\n".join(wheelhouse_commands(wheels, target, yolo) + gpu_wheel_commands(wheels, target)))
    for path in found:
        if not zipfile.is_zipfile(path):
            raise ConfigError(f"--wheels: {path} is not a wheel (not a zip archive); download it again")
    by_name: dict[str, list[str]] = {}
    for path in found:
        by_name.setdefault(wheel_distribution(path), []).append(path.name)
    twice = {name: files for name, files in by_name.items() if len(files) > 1}
    if twice:
        name, files = next(iter(twice.items()))
        raise ConfigError(f"--wheels {wheels} holds {len(files)} wheels of {name} ({', '.join(files)}); pip installs "
                          "one version: keep the one the printed commands pin")
    image = target.image()
    problems = [f"{path.name}: {found_problem[1]}" for path in found
                if (found_problem := preflight.wheel_problem(wheel_record(path), image)) is not None]
    if problems:
        raise ConfigError(f"--wheels {wheels}: {len(problems)} wheel(s) will not install on the Kaggle image this pack "
                          f"targets ({target.options()}):\n  - " + "\n  - ".join(problems) + "\nre-make them "
                          "with the commands below, or change --kaggle-python/--kaggle-cuda/--kaggle-platform to "
                          "match the image (kaggle_notebooks/README.md says how to check it):\n  "
                          + "\n  ".join(wheelhouse_commands(wheels, target, yolo) + gpu_wheel_commands(wheels, target)))
    return found


def copy_wheelhouse(found: Sequence[Path], dest: Path) -> list[Path]:
    """Copy the checked dependency wheels into the pack's wheels/."""
    for path in found:
        shutil.copy2(path, dest / path.name)
    return list(found)


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _pinned(name: str) -> str:
    """name==the version installed here (what was tested), or the bare name."""
    version = _installed(name)
    return f"{name}=={version}" if version else name


def required_distributions(yolo: bool = False) -> tuple[str, ...]:
    """What the notebook imports and Kaggle's image lacks (ultralytics only when a YOLO checkpoint is packed)."""
    return (*KAGGLE_MISSING, *KAGGLE_MISSING_SDIST_ONLY, *(("ultralytics",) if yolo else ()))


def _download(folder: str, target: KaggleTarget, extra: str = "") -> str:
    platforms = " ".join(f"--platform {tag}" for tag in target.platforms)
    return (f"pip download --no-deps --only-binary=:all: --python-version {target.python} {platforms}{extra} "
            f"-d {folder}")


def wheelhouse_commands(folder: str | Path = "wheels", target: KaggleTarget | None = None,
                        yolo: bool = False) -> list[str]:
    """Commands that fill a wheelhouse with what the notebook needs and Kaggle's image lacks, pinned to this
    environment's versions, for the target image's Python and platform tags."""
    target = target or KaggleTarget()
    binary = " ".join(_pinned(n) for n in (*KAGGLE_MISSING, *(("ultralytics",) if yolo else ())))
    source_only = " ".join(_pinned(n) for n in KAGGLE_MISSING_SDIST_ONLY)
    folder = shlex.quote(str(folder))
    return [f"{_download(folder, target)} {binary}", f"pip wheel --no-deps -w {folder} {source_only}"]


def gpu_wheel_commands(folder: str | Path = "wheels", target: KaggleTarget | None = None) -> list[str]:
    """Commands that add the GPU extras (TensorRT, CuPy) for the target's CUDA to a wheelhouse.

    tensorrt-cuXX is a pure-Python source package (pip wheel builds it); its -libs wheel lives on NVIDIA's
    index (PyPI holds a stub that would download it at install time, which fails offline).
    """
    target = target or KaggleTarget()
    extras = target.gpu_extras()
    folder = shlex.quote(str(folder))
    meta = f"tensorrt-cu{target.cuda_major}"
    binary = " ".join(f"{name}=={version}" for name, version in extras.items() if name != meta)
    return [f"{_download(folder, target, f' --extra-index-url {NVIDIA_INDEX}')} {binary}",
            f"pip wheel --no-deps -w {folder} {meta}=={extras[meta]}"]


def missing_from_wheelhouse(wheel_files: Sequence[Path], yolo: bool = False) -> list[str]:
    """Dependencies Kaggle lacks that the packed wheels do not provide."""
    have = {wheel_distribution(p) for p in wheel_files}
    return [n for n in required_distributions(yolo) if n not in have]


def missing_gpu_extras(wheel_files: Sequence[Path], target: KaggleTarget | None = None) -> list[str]:
    """GPU extras (TensorRT, CuPy) the packed wheels do not provide."""
    have = {wheel_distribution(p) for p in wheel_files}
    return [n for n in (target or KaggleTarget()).gpu_extras() if n not in have]


def check_ultralytics() -> str:
    """The installed ultralytics' version, once it is known to have every module czii-kit's YOLO code imports.

    A packed YOLO checkpoint makes the wheelhouse pin this version, so a missing module here would be
    an ImportError on Kaggle, hours later.
    """
    version = _installed("ultralytics")
    if version is None:
        raise ConfigError("a YOLO checkpoint is packed and ultralytics is not installed here; the wheelhouse pins "
                          "the installed version: `pip install ultralytics`, then pack again")
    missing = []
    for module, name in ULTRALYTICS_IMPORTS:
        try:
            imported = _import_ultralytics_module(module)
        except ImportError as e:
            missing.append(f"{module} ({e})")
            continue
        if name is not None and not hasattr(imported, name) and not _is_submodule(f"{module}.{name}"):
            missing.append(f"{module}.{name}")
    if missing:
        raise ConfigError(f"a YOLO checkpoint is packed and the installed ultralytics {version}, whose version the "
                          f"wheelhouse pins, lacks {', '.join(missing)}, which czii-kit's YOLO code imports: install an "
                          "ultralytics that has them (`pip install -U ultralytics`), then pack again")
    return version


def _is_submodule(module: str) -> bool:
    try:
        _import_ultralytics_module(module)
    except ImportError:
        return False
    return True


def _import_ultralytics_module(module: str):
    """Import one ultralytics module the way czii-kit does: offline, through czii_kit.yolo.offline."""
    from czii_kit.yolo.offline import import_ultralytics

    import_ultralytics()
    return importlib.import_module(module)


def environment_record(wheel_paths: Sequence[Path], target: KaggleTarget, yolo: bool) -> dict:
    """The manifest's "environment": what the wheels are for, each wheel's tags, what the notebook needs."""
    import torch

    return {"python": target.python, "platforms": list(target.platforms), "cuda": target.cuda,
            "tensorrt": target.tensorrt, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "packed_with_python": platform.python_version(),
            "requires": {name: _installed(name) for name in required_distributions(yolo)},
            "optional": target.gpu_extras(),
            "wheels": [wheel_record(p) for p in wheel_paths]}


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


def _manifest(files: list[dict], checkpoints: list[dict], dataset_id: str, environment: dict,
              classes: list[str]) -> dict:
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "czii_kit_version": czii_kit.__version__,
            "dataset": dataset_id, "classes": list(classes), "checkpoints": checkpoints,
            "environment": environment, "files": files}


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
    target: KaggleTarget = KaggleTarget()  # the Kaggle image the wheels are for
    yolo: bool = False  # a YOLO checkpoint is packed: the notebook needs ultralytics


def pack_dataset(weights: Sequence[str | Path], out: str | Path, slug: str, user: str, title: str | None = None,
                 folds: Sequence[int] | None = None, wheels: str | Path | None = None, onnx: bool = False,
                 force: bool = False, progress: bool = True, target: KaggleTarget | None = None,
                 thresholds_from: str | Path | None = None, default_thresholds: bool = False) -> PackResult:
    """Pack the selected checkpoints, configs and wheels (and tools/evaluate.py's thresholds.json) into out,
    ready for `kaggle datasets create`. A full-data checkpoint with only the config's default thresholds is
    refused without a thresholds file (or ``default_thresholds``): on Kaggle it would score quietly low."""
    from czii_kit.infer.kinds import kind_of, load_checkpoints
    from czii_kit.tuning import TUNING_FILE, guessed_thresholds, load_tuning

    target = target or KaggleTarget()
    metadata = dataset_metadata(user, slug, title or slug)
    out = Path(out)
    old = _existing_pack(out, force)
    ckpts = load_checkpoints(list(weights), list(folds) if folds is not None else None)
    _require_unique(ckpts)
    tuning = load_tuning(thresholds_from, list(ckpts[0]["classes"])) if thresholds_from else None
    guessed = guessed_thresholds(ckpts)
    if tuning is None and guessed and not default_thresholds:
        raise ConfigError(f"{', '.join(guessed)} carry the config's default thresholds (trained on every run without "
                          "--thresholds-from), which the notebook would submit with. Pack the cross-validated ones "
                          "with --thresholds-from REPORT (tools/evaluate.py over the fold models), or pass "
                          "--default-thresholds to pack the defaults on purpose")
    experiments = _experiment_dirs(ckpts)
    exports = {c["path"]: packed_onnx(c) if onnx else [] for c in ckpts}
    yolo = any(kind_of(c).name == "yolo" for c in ckpts)
    if yolo:
        check_ultralytics()
    wheelhouse = find_wheelhouse(Path(wheels), target, yolo) if wheels is not None else []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would follow the rename
    try:
        checkpoints = _copy_experiments(ckpts, experiments, exports, tmp)
        _copy_configs(tmp / CONFIGS)
        shutil.copy2(preflight.__file__, tmp / PREFLIGHT)  # the notebook runs it before czii-kit is installed
        if tuning is not None:
            shutil.copy2(tuning.path, tmp / TUNING_FILE)  # cross-validated thresholds: the notebook passes them on
        (tmp / WHEELS).mkdir()
        packed_wheels = [build_project_wheel(tmp / WHEELS)]
        packed_wheels += [tmp / WHEELS / p.name for p in copy_wheelhouse(wheelhouse, tmp / WHEELS)]
        environment = environment_record(packed_wheels, target, yolo)
        manifest = _manifest(file_table(tmp, progress), checkpoints, metadata["id"], environment,
                             list(ckpts[0]["classes"]))
        _write_json(tmp / MANIFEST, manifest)
        _write_json(tmp / DATASET_METADATA, metadata)
        _require_same_or_forced(out, old, manifest, force)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replaced = old is not None and old["files"] != manifest["files"]
    return PackResult(out, manifest, [out / WHEELS / p.name for p in packed_wheels], replaced, target, yolo)


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

    @property
    def thresholds(self) -> Path | None:
        """The packed thresholds.json (tools/pack_kaggle_dataset.py --thresholds-from), if any."""
        from czii_kit.tuning import TUNING_FILE

        return self.root / TUNING_FILE if any(f["path"] == TUNING_FILE for f in self.manifest["files"]) else None

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
