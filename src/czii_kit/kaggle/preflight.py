"""Before ``pip install``: can this image install the pack's wheels? Standard library only.

The notebook runs this before czii-kit is installed, so it may import nothing but the standard
library (the pack tool copies this file to the pack root as ``preflight.py``; the notebook runs
it with ``runpy``). It reads ``manifest.json``'s ``environment`` (written by
``tools/pack_kaggle_dataset.py``: the Python, platform tags and CUDA the wheelhouse was made
for, and every packed wheel's tags) and checks each wheel against the running interpreter and
machine the way pip's tag matching does:

- python tag: ``py3``, ``py3X`` (X <= this minor), or ``cpXY`` of this CPython (``cpXW``, W <= Y,
  with the stable ``abi3``);
- abi tag: ``none``, ``abi3`` or ``cpXY`` of this CPython;
- platform tag: ``any``, or a manylinux/musllinux/linux tag for this machine's architecture whose
  glibc (musl) version is at most the running one;
- ``Requires-Python`` of the wheel's metadata, against this Python;
- CUDA: a wheel built for one CUDA major (``tensorrt-cu12-*``, ``cupy-cuda12x``) against the CUDA
  of the image's torch, read from ``torch/version.py`` without importing torch.

Every problem names the wheel and the ``tools/pack_kaggle_dataset.py`` option to rebuild with.
Run by hand: ``python preflight.py PACK_DIR`` (exit 1 on problems).
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
import platform
import re
import sys
from pathlib import Path

MANIFEST = "manifest.json"
WHEELS = "wheels"
PACK_FORMAT = "czii-kit-kaggle-pack"  # manifest.json's "format" in a pack made by czii pack
SEARCH_DEPTH = 6  # how far below /kaggle/input packs and engine folders are looked for (mounts have moved before)
REBUILD = "czii pack ..."
# PEP 427 file name: name-version(-build)?-python-abi-platform.whl
WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(?:-(?P<build>\d[^-]*))?"
                        r"-(?P<python>[^-]+)-(?P<abi>[^-]+)-(?P<platform>[^-]+)\.whl$")
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
PLATFORM_TAG = re.compile(r"^(?P<family>manylinux|musllinux)_(?P<major>\d+)_(?P<minor>\d+)_(?P<arch>.+)$")
CUDA_FAMILY = re.compile(r"(?:^|[-_])cu(?:da)?(?P<major>\d{2})x?(?:$|[-_])")
MACHINE_ALIASES = {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}


class PreflightError(RuntimeError):
    """The pack's wheels cannot be installed on this image; the message says how to rebuild."""


# --------------------------------------------------------------------------- wheel names
def parse_wheel_name(filename: str) -> dict:
    """{name, version, build, python_tag, abi_tag, platform_tag} of a wheel file name (PEP 427)."""
    match = WHEEL_NAME.match(Path(filename).name)
    if match is None:
        raise ValueError(f"{filename!r} is not a wheel file name (name-version-python-abi-platform.whl)")
    return {"name": match["name"], "version": match["version"], "build": match["build"],
            "python_tag": match["python"], "abi_tag": match["abi"], "platform_tag": match["platform"]}


def distribution(name: str) -> str:
    """Normalized distribution name (PEP 503): Segmentation_Models_Pytorch_3D -> segmentation-models-pytorch-3d."""
    return re.sub(r"[-_.]+", "-", name).lower()


def cuda_major_of(name: str) -> int | None:
    """The CUDA major a distribution is built for, from its name (tensorrt-cu12-libs, cupy-cuda12x), else None."""
    match = CUDA_FAMILY.search(distribution(name))
    return int(match["major"]) if match else None


# --------------------------------------------------------------------------- this machine
def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running glibc, None on a non-glibc system."""
    text = ""
    try:
        text = os.confstr("CS_GNU_LIBC_VERSION") or ""  # "glibc 2.35"
    except (AttributeError, ValueError, OSError):
        pass
    if not text.startswith("glibc"):
        library, version = platform.libc_ver()
        text = f"glibc {version}" if library == "glibc" and version else ""
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def torch_cuda() -> tuple[str | None, str | None]:
    """(torch version, torch's CUDA version) of the image, read from torch/version.py without importing torch."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None, None
    path = Path(list(spec.submodule_search_locations)[0]) / "version.py"
    values: dict[str, str | None] = {}
    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError, ValueError):
        return None, None
    for node in tree.body:  # __version__ = '2.8.0+cu128'; cuda: Optional[str] = '12.8'
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if isinstance(getattr(node, "value", None), ast.Constant):
            for target in targets:
                if isinstance(target, ast.Name) and target.id in ("__version__", "cuda"):
                    values[target.id] = node.value.value
    return values.get("__version__"), values.get("cuda")


def running() -> dict:
    """The facts the checks compare against: this interpreter, machine, glibc and torch's CUDA."""
    torch_version, cuda = torch_cuda()
    machine = platform.machine().lower()
    return {"implementation": sys.implementation.name, "python": sys.version_info[:2],
            "python_full": platform.python_version(), "machine": MACHINE_ALIASES.get(machine, machine),
            "system": sys.platform, "glibc": glibc_version(), "torch": torch_version, "cuda": cuda}


# --------------------------------------------------------------------------- tags
def _python_ok(tag: str, abi: str, env: dict) -> bool:
    major, minor = env["python"]
    if tag == f"py{major}" or re.fullmatch(rf"py{major}(\d+)", tag) and int(tag[3:]) <= minor:
        return abi == "none"
    match = re.fullmatch(r"cp(\d)(\d+)", tag)
    if match is None or env["implementation"] != "cpython" or int(match[1]) != major:
        return False
    wheel_minor = int(match[2])
    if abi == "abi3":
        return wheel_minor <= minor
    return wheel_minor == minor and abi in ("none", f"cp{major}{minor}")


def _platform_problem(tag: str, env: dict) -> str | None:
    """Why this platform tag does not install here (None when it does)."""
    if tag == "any":
        return None
    if env["system"] != "linux":
        return f"it is for Linux ({tag}) and this is {env['system']}"
    legacy = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_(.+)", tag)
    if legacy:
        family, (need_major, need_minor), arch = "manylinux", LEGACY_MANYLINUX[legacy[1]], legacy[2]
    elif (match := PLATFORM_TAG.match(tag)) is not None:
        family, need_major, need_minor, arch = match["family"], int(match["major"]), int(match["minor"]), match["arch"]
    elif tag.startswith("linux_"):
        family, need_major, need_minor, arch = "linux", 0, 0, tag[len("linux_"):]
    else:
        return f"its platform {tag} is not Linux"
    if arch != env["machine"]:
        return f"it is for {arch} ({tag}) and this machine is {env['machine']}"
    if family == "musllinux":
        return f"it is for musl libc ({tag}) and this image uses glibc"
    glibc = env["glibc"]
    if family == "manylinux" and (glibc is None or glibc < (need_major, need_minor)):
        have = "no glibc" if glibc is None else f"glibc {glibc[0]}.{glibc[1]}"
        return f"it needs glibc >= {need_major}.{need_minor} ({tag}) and this image has {have}"
    return None


def tag_problem(wheel: dict, env: dict) -> tuple[str, str] | None:
    """("python" | "platform", why) when pip would refuse this wheel here for its tags, None when it installs."""
    pythons, abis, platforms = (wheel[k].split(".") for k in ("python_tag", "abi_tag", "platform_tag"))
    if not any(_python_ok(p, a, env) for p in pythons for a in abis):
        major, minor = env["python"]
        interpreter = "Python" if env["implementation"] == "cpython" else env["implementation"]
        return "python", (f"it is for Python {_describe_python(pythons, abis)} and this image runs {interpreter} "
                          f"{major}.{minor} (cp{major}{minor})")
    reasons = [_platform_problem(p, env) for p in platforms]
    return None if None in reasons else ("platform", reasons[0])


def _describe_python(pythons: list[str], abis: list[str]) -> str:
    versions = []
    for tag in pythons:
        match = re.fullmatch(r"(?:cp|py)(\d)(\d*)", tag)
        versions.append(f"{match[1]}.{match[2]}" if match and match[2] else tag)
    return f"{'/'.join(versions)} ({'.'.join(pythons)}-{'.'.join(abis)})"


# --------------------------------------------------------------------------- Requires-Python
def _release(text: str) -> tuple[int, ...] | None:
    match = re.match(r"^\s*v?(\d+(?:\.\d+)*)", text)
    return tuple(int(p) for p in match[1].split(".")) if match else None


def _pad(a: tuple[int, ...], n: int) -> tuple[int, ...]:
    return a + (0,) * (n - len(a))


def _clause_ok(clause: str, version: tuple[int, ...]) -> bool | None:
    """One PEP 440 clause against a release tuple; None when it cannot be read (then it is not held against)."""
    match = re.fullmatch(r"\s*(~=|===|==|!=|<=|>=|<|>)\s*([^\s]+)\s*", clause)
    if match is None:
        return None
    op, text = match[1], match[2]
    if op in ("==", "!=") and text.endswith(".*"):
        prefix = _release(text[:-2])
        if prefix is None:
            return None
        same = _pad(version, len(prefix))[:len(prefix)] == prefix
        return same if op == "==" else not same
    target = _release(text)
    if target is None:
        return None
    n = max(len(target), len(version))
    v, t = _pad(version, n), _pad(target, n)
    if op == "~=":
        return len(target) > 1 and v >= t and version[:len(target) - 1] == target[:-1]
    return {"==": v == t, "===": v == t, "!=": v != t, "<=": v <= t, ">=": v >= t, "<": v < t, ">": v > t}[op]


def requires_python_ok(spec: str | None, version: tuple[int, ...]) -> bool:
    """Whether a Requires-Python specifier (">=3.11", ">=3.8,!=3.9.*") admits this Python version."""
    if not spec:
        return True
    return all(_clause_ok(clause, version) is not False for clause in spec.split(","))


# --------------------------------------------------------------------------- the check
def _environment(manifest: dict) -> dict | None:
    environment = manifest.get("environment")
    return environment if isinstance(environment, dict) and isinstance(environment.get("wheels"), list) else None


def load(pack_dir: str | os.PathLike) -> dict:
    path = Path(pack_dir) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PreflightError(f"{path} is missing: attach the dataset made by tools/pack_kaggle_dataset.py "
                             "(uploaded with --dir-mode zip)") from None
    except (OSError, ValueError) as e:
        raise PreflightError(f"{path} cannot be read ({e}); re-pack with tools/pack_kaggle_dataset.py") from None


def _option_for(problem_kind: str, env: dict) -> str:
    major, minor = env["python"]
    if problem_kind == "python":
        return f"`{REBUILD} --kaggle-python {major}.{minor}`"
    if problem_kind == "cuda":
        return f"`{REBUILD} --kaggle-cuda {env['cuda']}`"
    glibc = env["glibc"]
    if glibc is None:
        return "an image with glibc (every Kaggle image has it)"
    return (f"`{REBUILD} --kaggle-platform manylinux2014_{env['machine']} --kaggle-platform "
            f"manylinux_{glibc[0]}_{glibc[1]}_{env['machine']}` (tags up to this image's glibc)")


def wheel_problem(wheel: dict, env: dict) -> tuple[str, str] | None:
    """(kind, why) when this recorded wheel will not install or work here: tags, Requires-Python, CUDA major."""
    found = tag_problem(wheel, env)
    if found is not None:
        return found
    version = tuple(env["python"])
    if not requires_python_ok(wheel.get("requires_python"), version):
        return "python", (f"{wheel['name']} {wheel['version']} requires Python {wheel['requires_python']} and this "
                          "image runs {}.{} (pin a version that supports it in the wheelhouse)".format(*version))
    cuda = cuda_major_of(wheel["name"])
    if cuda is not None and env["cuda"] and int(env["cuda"].split(".")[0]) != cuda:
        torch = f" {env['torch']}" if env["torch"] else ""
        return "cuda", f"it is built for CUDA {cuda} and this image's torch{torch} uses CUDA {env['cuda']}"
    return None


def installed_version(name: str) -> str | None:
    """The version of a distribution installed on this image, None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def unmet(recorded: dict, key: str) -> list[tuple[str, str | None]]:
    """(name, pinned version) of recorded[key] ('requires' or 'optional') that no packed wheel provides
    and this image does not have installed."""
    packed = {distribution(w["name"]) for w in recorded["wheels"]}
    return [(name, version) for name, version in (recorded.get(key) or {}).items()
            if distribution(name) not in packed and installed_version(name) is None]


def check(pack_dir: str | os.PathLike, env: dict | None = None) -> list[str]:
    """Problems that would break ``pip install`` of the pack's wheels here, each naming the rebuild option."""
    root = Path(pack_dir)
    env = env or running()
    manifest = load(root)
    recorded = _environment(manifest)
    if recorded is None:
        return [f"{root / MANIFEST} has no wheel environment record (made by an older tools/pack_kaggle_dataset.py): "
                "re-pack with the current czii-kit and upload a new dataset version"]
    sizes = {f.get("path"): f.get("size") for f in manifest.get("files", []) if isinstance(f, dict)}
    problems = []
    for wheel in recorded["wheels"]:
        path = f"{WHEELS}/{wheel['file']}"
        if not (root / path).is_file() or sizes.get(path) != (root / path).stat().st_size:
            problems.append(f"{root / path}, listed in {MANIFEST}, is missing or has the wrong size: attach the "
                            "whole dataset (uploaded with --dir-mode zip), or re-pack and upload a new version")
            continue
        found = wheel_problem(wheel, env)
        if found is not None:
            kind, reason = found
            problems.append(f"{path}: {reason}: rebuild the wheelhouse and the pack with {_option_for(kind, env)}")
    for name, version in unmet(recorded, "requires"):
        pin = f"{name}=={version}" if version else name
        problems.append(f"{pin}: the notebook imports it, this image does not have it and the pack has no wheel of "
                        "it: make the wheelhouse with the commands tools/pack_kaggle_dataset.py prints "
                        "(kaggle_notebooks/README.md) and re-pack with `--wheels wheels`")
    return problems


def describe(pack_dir: str | os.PathLike, env: dict | None = None) -> list[str]:
    """What the check compares: the pack's record against this image (a few lines)."""
    env = env or running()
    recorded = _environment(load(pack_dir)) or {}
    glibc = "none" if env["glibc"] is None else "{}.{}".format(*env["glibc"])
    cuda = f"CUDA {env['cuda']}" if env["cuda"] else "no CUDA"
    torch = f"torch {env['torch']} ({cuda})" if env["torch"] else "no torch"
    lines = [f"preflight: this image runs Python {env['python_full']} on {env['system']} {env['machine']}, "
             f"glibc {glibc}, {torch}",
             f"preflight: the pack's {len(recorded.get('wheels', []))} wheel(s) were made for Python "
             f"{recorded.get('python', '?')}, {', '.join(recorded.get('platforms', [])) or '?'}, "
             f"CUDA {recorded.get('cuda', '?')} (packed with torch {recorded.get('torch', '?')})"]
    if recorded.get("python") and recorded["python"] != "{}.{}".format(*env["python"]):
        lines.append(f"note: the pack was made for Python {recorded['python']}, this image runs "
                     "{}.{}; each wheel is checked on its own tags".format(*env["python"]))
    if recorded.get("wheels") is not None and (missing := unmet(recorded, "optional")):
        lines.append(f"note: GPU extras neither packed nor installed here: {', '.join(n for n, _ in missing)}; "
                     "without them the notebook runs torch (fp16 on a GPU) instead of TensorRT, and finds peaks "
                     "on the CPU")
    return lines


# --------------------------------------------------------------------------- finding the pack
def folders(root: str | os.PathLike, max_depth: int = SEARCH_DEPTH):
    """Every folder under ``root`` down to ``max_depth`` levels, without entering zarr stores (thousands of chunk
    folders in the competition data), in a stable order."""
    root = Path(root)
    for here, subdirs, _ in os.walk(root):
        depth = len(Path(here).relative_to(root).parts)
        subdirs[:] = sorted(d for d in subdirs if not d.endswith(".zarr") and depth < max_depth)
        yield Path(here)


def _manifest_format(path: Path) -> str | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc.get("format") if isinstance(doc, dict) else None


def find_packs(root: str | os.PathLike, max_depth: int = SEARCH_DEPTH) -> list[Path]:
    """Folders under ``root`` holding a czii-kit pack's manifest.json, wherever Kaggle mounted them."""
    return [d for d in folders(root, max_depth)
            if (d / MANIFEST).is_file() and _manifest_format(d / MANIFEST) == PACK_FORMAT]


def locate_pack(root: str | os.PathLike, pack_dir: str | os.PathLike | None = None) -> Path:
    """``pack_dir`` when given, else the one pack under ``root``; none or several is a PreflightError that says
    what was found and how to fix it."""
    if pack_dir:
        if not (Path(pack_dir) / MANIFEST).is_file():
            raise PreflightError(f"{Path(pack_dir) / MANIFEST} does not exist: PACK_DIR (CZII_PACK_DIR) must be the "
                                 "folder of a pack made by czii pack; leave it unset to search " + str(root))
        return Path(pack_dir)
    found = find_packs(root)
    if len(found) == 1:
        return found[0]
    if found:
        raise PreflightError(f"{len(found)} czii-kit packs under {root}: {', '.join(map(str, found))}; set PACK_DIR "
                             "(CZII_PACK_DIR) to the one to use")
    seen = sorted(str(p.relative_to(root)) for p in Path(root).glob("*/*")) if Path(root).is_dir() else []
    others = [str(d) for d in folders(root) if (d / MANIFEST).is_file()]
    raise PreflightError(f"no czii-kit pack (a manifest.json of format {PACK_FORMAT!r}) under {root}, searched "
                         f"{SEARCH_DEPTH} levels deep; found there: {', '.join(seen[:20]) or 'nothing'}"
                         + (f"; manifests of other formats: {', '.join(others)}" if others else "")
                         + ". Attach the dataset made by czii pack (uploaded with --dir-mode zip) to the notebook "
                           "(dataset_sources in kernel-metadata.json), or set PACK_DIR (CZII_PACK_DIR)")


# --------------------------------------------------------------------------- entry points
def main(pack_dir: str | os.PathLike) -> list[str]:
    """Print what was checked; raise PreflightError listing every problem. Returns the wheel paths to install."""
    env = running()
    for line in describe(pack_dir, env):
        print(line)
    problems = check(pack_dir, env)
    if problems:
        raise PreflightError(f"{len(problems)} packed wheel(s) will not install on this image:\n  - "
                             + "\n  - ".join(problems))
    wheels = [str(Path(pack_dir) / WHEELS / w["file"]) for w in _environment(load(pack_dir))["wheels"]]
    print(f"preflight: all {len(wheels)} wheel(s) install on this image")
    return wheels


def install(pack_dir: str | os.PathLike) -> list[str]:
    """``main``, then pip-install exactly the checked wheels offline (--no-deps: the image's torch and numpy stay),
    unless czii-kit is importable already (a local run keeps its own install). What both notebooks run first."""
    import subprocess

    wheels = main(pack_dir)
    if importlib.util.find_spec("czii_kit") is None:
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", *wheels],
                       check=True)
        importlib.invalidate_caches()
    return wheels


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python preflight.py PACK_DIR")
    try:
        main(sys.argv[1])
    except PreflightError as e:
        sys.exit(f"preflight FAILED: {e}")
