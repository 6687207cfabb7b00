"""Wheels for the Kaggle image: czii-kit's own (built offline from this checkout), the dependency wheelhouse
Kaggle lacks, the commands that make it, and the checks that every wheel installs on the target image.

The target image (``KaggleTarget``: Python, platform tags, CUDA, TensorRT release) is given on the pack tool's
command line; every wheel is checked against it with ``preflight``'s own tag matching, at pack time, so a
wheel that would not install is refused here rather than on Kaggle, hours later.
"""
from __future__ import annotations

import email.parser
import importlib
import importlib.metadata
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

import czii_kit
from czii_kit.errors import ConfigError
from czii_kit.kaggle import preflight
from czii_kit.kaggle.preflight import installed_version

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
# GPU extras: TensorRT 10.5+ supports compute capability >= 7.5 (the T4 is 7.5; Volta 7.0 and the P100's 6.0 are not)
TENSORRT_VERSION = "10.16.1.11"
CUPY_VERSION = "14.2.0"
CUDA_PATHFINDER_VERSION = "1.9.1"  # cupy 14 imports it
NVIDIA_INDEX = "https://pypi.nvidia.com"  # tensorrt-cuXX-libs: PyPI holds only a stub that downloads from here
# What czii-kit's YOLO code imports from ultralytics (module, name); the pack checks the installed one has them.
ULTRALYTICS_IMPORTS = (("ultralytics", "YOLO"), ("ultralytics.nn.tasks", "DetectionModel"),
                       ("ultralytics.utils.nms", "non_max_suppression"), ("ultralytics.engine", "trainer"),
                       ("ultralytics.utils", "ONLINE"), ("ultralytics.utils", "SETTINGS"),
                       ("ultralytics.utils", "USER_CONFIG_DIR"))


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


def find_wheelhouse(wheels: Path, target: KaggleTarget, extra: Sequence[str] = ()) -> list[Path]:
    """The dependency wheels of a wheelhouse folder (not czii-kit's own: the fresh build wins), checked to be
    wheels, one per distribution, and installable on the target image."""
    found = sorted(p for p in Path(wheels).glob("*.whl") if wheel_distribution(p) != "czii-kit")
    if not found:
        raise ConfigError(f"--wheels {wheels} holds no dependency .whl files; make them with:\n"
                          + "\n".join(wheelhouse_commands(wheels, target, extra) + gpu_wheel_commands(wheels, target)))
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
                          + "\n  ".join(wheelhouse_commands(wheels, target, extra) + gpu_wheel_commands(wheels, target)))
    return found


def copy_wheelhouse(found: Sequence[Path], dest: Path) -> list[Path]:
    """Copy the checked dependency wheels into the pack's wheels/."""
    for path in found:
        shutil.copy2(path, dest / path.name)
    return list(found)


def _pinned(name: str) -> str:
    """name==the version installed here (what was tested), or the bare name."""
    version = installed_version(name)
    return f"{name}=={version}" if version else name


def required_distributions(extra: Sequence[str] = ()) -> tuple[str, ...]:
    """What the notebook imports and Kaggle's image lacks, plus ``extra``: what the packed member kinds need
    (``MemberKind.requires``: ultralytics when a YOLO checkpoint is packed)."""
    return (*KAGGLE_MISSING, *KAGGLE_MISSING_SDIST_ONLY, *extra)


def _download(folder: str, target: KaggleTarget, extra: str = "") -> str:
    platforms = " ".join(f"--platform {tag}" for tag in target.platforms)
    return (f"pip download --no-deps --only-binary=:all: --python-version {target.python} {platforms}{extra} "
            f"-d {folder}")


def wheelhouse_commands(folder: str | Path = "wheels", target: KaggleTarget | None = None,
                        extra: Sequence[str] = ()) -> list[str]:
    """Commands that fill a wheelhouse with what the notebook needs and Kaggle's image lacks, pinned to this
    environment's versions, for the target image's Python and platform tags."""
    target = target or KaggleTarget()
    binary = " ".join(_pinned(n) for n in (*KAGGLE_MISSING, *extra))
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


def missing_from_wheelhouse(wheel_files: Sequence[Path], extra: Sequence[str] = ()) -> list[str]:
    """Dependencies Kaggle lacks that the packed wheels do not provide."""
    have = {wheel_distribution(p) for p in wheel_files}
    return [n for n in required_distributions(extra) if n not in have]


def missing_gpu_extras(wheel_files: Sequence[Path], target: KaggleTarget | None = None) -> list[str]:
    """GPU extras (TensorRT, CuPy) the packed wheels do not provide."""
    have = {wheel_distribution(p) for p in wheel_files}
    return [n for n in (target or KaggleTarget()).gpu_extras() if n not in have]


def check_ultralytics() -> str:
    """The installed ultralytics' version, once it is known to have every module czii-kit's YOLO code imports.

    A packed YOLO checkpoint makes the wheelhouse pin this version, so a missing module here would be
    an ImportError on Kaggle, hours later.
    """
    version = installed_version("ultralytics")
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


def environment_record(wheel_paths: Sequence[Path], target: KaggleTarget, extra: Sequence[str]) -> dict:
    """The manifest's "environment": what the wheels are for, each wheel's tags, what the notebook needs."""
    import torch

    return {"python": target.python, "platforms": list(target.platforms), "cuda": target.cuda,
            "tensorrt": target.tensorrt, "torch": torch.__version__, "torch_cuda": torch.version.cuda,
            "packed_with_python": platform.python_version(),
            "requires": {name: installed_version(name) for name in required_distributions(extra)},
            "optional": target.gpu_extras(),
            "wheels": [wheel_record(p) for p in wheel_paths]}
