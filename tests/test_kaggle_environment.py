"""The Kaggle machine: GPU facts, the engine choice, the CUDA smoke test, and preflight.py (can this image install
the pack's wheels?).

GPU-only behaviour is tested through fakes of torch.cuda (device properties, arch list) and of the tensorrt module:
they exercise OUR control flow (which engine, which line, which error), not TensorRT or CUDA themselves.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from czii_kit.errors import ConfigError
from czii_kit.kaggle import environment
from czii_kit.kaggle import preflight as pf
from czii_kit.kaggle.environment import (Environment, GpuInfo, check_cuda_runs, choose_engine, describe_gpus,
                                         format_environment)

GiB = 2**30
T4 = ("Tesla T4", 7, 5, 15 * GiB)
P100 = ("Tesla P100-PCIE-16GB", 6, 0, 16 * GiB)
PREFLIGHT_SOURCE = Path(pf.__file__)


# --------------------------------------------------------------------------- fakes (our control flow only)
@pytest.fixture
def fake_gpus(monkeypatch):
    """Make torch.cuda report the given GPUs (name, major, minor, bytes); no real GPU is touched."""
    def install(*specs, arches=("sm_75", "sm_80", "sm_86", "sm_90"), cuda="12.8", driver="550.54.15"):
        props = [SimpleNamespace(name=n, major=ma, minor=mi, total_memory=mem) for n, ma, mi, mem in specs]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(props))
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(props))
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props[i])
        monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(arches))
        monkeypatch.setattr(torch.version, "cuda", cuda)
        monkeypatch.setattr(environment, "nvidia_driver", lambda: driver)
    return install


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """An importable module named tensorrt with the given version (None: the import fails)."""
    def install(version: str | None = "10.16.1.11"):
        if version is None:
            monkeypatch.setitem(sys.modules, "tensorrt", None)  # import raises ImportError
        else:
            module = types.ModuleType("tensorrt")
            module.__version__ = version
            monkeypatch.setitem(sys.modules, "tensorrt", module)
    return install


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --------------------------------------------------------------------------- describe / format
def test_describe_gpus_reports_each_gpu_and_the_versions(fake_gpus):
    fake_gpus(T4, T4)
    env = describe_gpus()
    assert env.gpus == (GpuInfo(0, "Tesla T4", (7, 5), 15 * GiB), GpuInfo(1, "Tesla T4", (7, 5), 15 * GiB))
    assert env.gpus[0].compute_capability == "7.5"
    assert (env.cuda, env.driver, env.torch) == ("12.8", "550.54.15", torch.__version__)
    assert env.python == ".".join(map(str, sys.version_info[:3]))
    assert env.arches == ("sm_75", "sm_80", "sm_86", "sm_90")


def test_format_environment_names_every_gpu_its_capability_and_the_count(fake_gpus):
    fake_gpus(T4, T4)
    text = format_environment(describe_gpus())
    assert "2 GPU(s): Tesla T4" in text
    assert text.count("compute capability 7.5") == 2
    assert "GPU 0: Tesla T4, compute capability 7.5, 15.0 GiB" in text and "GPU 1: Tesla T4" in text
    assert "CUDA 12.8" in text and "NVIDIA driver 550.54.15" in text and f"torch {torch.__version__}" in text
    fake_gpus(P100)
    text = format_environment()
    assert "1 GPU(s): Tesla P100-PCIE-16GB" in text and "compute capability 6.0" in text


def test_without_a_gpu_the_environment_says_so(fake_gpus):
    fake_gpus()
    env = describe_gpus()
    assert env.gpus == () and env.driver is None  # nvidia-smi is asked only when there is a GPU
    text = format_environment(env)
    assert "no CUDA GPU visible" in text and "GPU(s)" not in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the real no-GPU path needs a machine without a GPU")
def test_describe_gpus_on_this_cpu_machine_needs_no_fakes():
    env = describe_gpus()
    assert env.gpus == () and env.driver is None  # nvidia-smi is not asked without a GPU
    assert "no CUDA GPU visible" in format_environment(env)


def test_nvidia_driver_reads_nvidia_smi_and_never_fails(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 550.54.15\necho 550.54.15\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert environment.nvidia_driver() == "550.54.15"  # one version for two GPUs
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed' >&2\nexit 9\n")
    assert environment.nvidia_driver() is None
    smi.unlink()
    assert environment.nvidia_driver() is None  # absent: None, no exception


# --------------------------------------------------------------------------- choose_engine
def test_t4_x2_with_tensorrt_gets_tensorrt(fake_gpus, fake_tensorrt, capsys):
    fake_gpus(T4, T4)
    fake_tensorrt("10.16.1.11")
    assert choose_engine("tensorrt", "auto") == "tensorrt"
    assert choose_engine("tensorrt", "cuda") == "tensorrt"
    assert capsys.readouterr().out == ""


def test_p100_gets_torch_with_the_reason_on_one_line(fake_gpus, fake_tensorrt, capsys):
    fake_gpus(P100)
    fake_tensorrt("10.16.1.11")
    assert choose_engine("tensorrt", "auto") == "torch"
    (line,) = lines(capsys.readouterr().out)
    assert line == ("engine torch: GPU 0 is a Tesla P100-PCIE-16GB (compute capability 6.0) and TensorRT 10+ needs "
                    ">= 7.5; push with `kaggle kernels push -p kaggle_notebooks --accelerator NvidiaTeslaT4` "
                    "(GPU T4 x2; kaggle CLI 1.8.4 or newer)")


def test_volta_gets_torch_too_since_tensorrt_10_5_dropped_it(fake_gpus, fake_tensorrt, capsys):
    fake_gpus(("Tesla V100-SXM2-16GB", 7, 0, 16 * GiB))
    fake_tensorrt("10.16.1.11")
    assert choose_engine("tensorrt", "auto") == "torch"
    assert "compute capability 7.0) and TensorRT 10+ needs >= 7.5" in capsys.readouterr().out


def test_every_gpu_in_use_must_support_tensorrt(fake_gpus, fake_tensorrt, capsys):
    fake_gpus(T4, P100)
    fake_tensorrt()
    assert choose_engine("tensorrt", "auto") == "torch"
    assert "GPU 1 is a Tesla P100-PCIE-16GB" in capsys.readouterr().out
    assert choose_engine("tensorrt", "cuda:0") == "tensorrt"  # only the T4 is used
    assert capsys.readouterr().out == ""


def test_no_gpu_gets_torch(fake_gpus, fake_tensorrt, capsys):
    fake_gpus()
    fake_tensorrt()
    assert choose_engine("tensorrt", "auto") == "torch"
    (line,) = lines(capsys.readouterr().out)
    assert line.startswith("engine torch: no CUDA GPU is visible") and "--accelerator NvidiaTeslaT4" in line
    assert choose_engine("tensorrt", "cpu") == "torch"
    (line,) = lines(capsys.readouterr().out)
    assert line == "engine torch: --device cpu, and TensorRT needs a CUDA GPU"


def test_missing_or_old_tensorrt_gets_torch_with_the_reason(fake_gpus, fake_tensorrt, capsys):
    fake_gpus(T4, T4)
    fake_tensorrt(None)
    assert choose_engine("tensorrt", "auto") == "torch"
    (line,) = lines(capsys.readouterr().out)
    assert line.startswith("engine torch: the tensorrt package does not import") and "README.md" in line
    fake_tensorrt("8.6.1")
    assert choose_engine("tensorrt", "auto") == "torch"
    (line,) = lines(capsys.readouterr().out)
    assert "tensorrt 8.6.1" in line and "TensorRT 10+" in line


@pytest.mark.parametrize("requested", ["onnx", "torch", "onnx_fp16"])
@pytest.mark.parametrize("gpus", [(), (P100,), (T4, T4)])
def test_other_engines_are_kept_as_asked(requested, gpus, fake_gpus, fake_tensorrt, capsys):
    fake_gpus(*gpus)
    fake_tensorrt(None)
    assert choose_engine(requested, "auto") == requested
    assert choose_engine(requested, "cpu") == requested
    assert capsys.readouterr().out == ""


def test_choose_engine_takes_the_facts_it_is_given(fake_tensorrt, capsys):
    fake_tensorrt()
    t4 = GpuInfo(0, "Tesla T4", (7, 5), 15 * GiB)
    p100 = GpuInfo(0, "Tesla P100-PCIE-16GB", (6, 0), 16 * GiB)
    assert choose_engine("tensorrt", "auto", [t4]) == "tensorrt"
    assert choose_engine("tensorrt", "auto", Environment((p100,), "3.12.0", "2.8.0", "12.8", None)) == "torch"
    assert "compute capability 6.0" in capsys.readouterr().out


# --------------------------------------------------------------------------- check_cuda_runs
def test_check_cuda_runs_names_a_gpu_torch_cannot_run_on(fake_gpus, monkeypatch):
    fake_gpus(P100, arches=("sm_75", "sm_80", "sm_90"))

    def no_kernel_image(index):  # what a cu128 torch raises on sm_60
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device\nCUDA kernel "
                           "errors might be asynchronously reported")

    monkeypatch.setattr(environment, "_tiny_op", no_kernel_image)
    with pytest.raises(ConfigError) as raised:
        check_cuda_runs()
    message = str(raised.value)
    assert "GPU 0, a Tesla P100-PCIE-16GB (compute capability 6.0)" in message
    assert "no kernel image is available" in message and "asynchronously" not in message
    assert "sm_75 sm_80 sm_90" in message
    assert "--accelerator NvidiaTeslaT4" in message and "machine_shape" in message


def test_check_cuda_runs_passes_where_cuda_runs_and_without_gpus(fake_gpus, monkeypatch):
    ran: list[int] = []
    monkeypatch.setattr(environment, "_tiny_op", lambda index: ran.append(index) or 16.0)
    fake_gpus(T4, T4)
    assert [g.index for g in check_cuda_runs().gpus] == [0, 1]
    assert ran == [0, 1]
    fake_gpus()
    ran.clear()
    assert check_cuda_runs().gpus == () and ran == []


# --------------------------------------------------------------------------- preflight: stdlib only
def test_preflight_imports_only_the_standard_library():
    tree = ast.parse(PREFLIGHT_SOURCE.read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names)
    assert "czii_kit" not in imported


# --------------------------------------------------------------------------- preflight: tags
IMAGE = {"implementation": "cpython", "python": (3, 11), "python_full": "3.11.9", "machine": "x86_64",
         "system": "linux", "glibc": (2, 35), "torch": "2.8.0+cu128", "cuda": "12.8"}


def wheel(filename: str, requires_python: str | None = None) -> dict:
    return {"file": filename, **pf.parse_wheel_name(filename), "requires_python": requires_python}


def test_parse_wheel_name():
    assert pf.parse_wheel_name("numcodecs-0.15.2-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl") == {
        "name": "numcodecs", "version": "0.15.2", "build": None, "python_tag": "cp312", "abi_tag": "cp312",
        "platform_tag": "manylinux_2_17_x86_64.manylinux2014_x86_64"}
    assert pf.parse_wheel_name("pkg-1.0-2-py3-none-any.whl")["build"] == "2"
    with pytest.raises(ValueError, match="not a wheel file name"):
        pf.parse_wheel_name("zarr-2.18.7.tar.gz")


@pytest.mark.parametrize("filename, kind", [
    ("zarr-2.18.7-py3-none-any.whl", None),
    ("six-1.16.0-py2.py3-none-any.whl", None),
    ("old-1.0-py310-none-any.whl", None),
    ("new-1.0-py312-none-any.whl", "python"),
    ("numcodecs-0.15.2-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", None),
    ("numcodecs-0.15.2-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", "python"),
    ("stable-1.0-cp38-abi3-manylinux2014_x86_64.whl", None),
    ("stable-1.0-cp312-abi3-manylinux2014_x86_64.whl", "python"),
    ("tensorrt_cu12_bindings-10.16.1.11-cp311-none-manylinux_2_28_x86_64.whl", None),
    ("tensorrt_cu12_bindings-10.16.1.11-cp312-none-manylinux_2_28_x86_64.whl", "python"),
    ("future-1.0-cp311-cp311-manylinux_2_39_x86_64.whl", "platform"),
    ("arm-1.0-cp311-cp311-manylinux2014_aarch64.whl", "platform"),
    ("musl-1.0-cp311-cp311-musllinux_1_2_x86_64.whl", "platform"),
    ("win-1.0-cp311-cp311-win_amd64.whl", "platform"),
    ("local-1.0-cp311-cp311-linux_x86_64.whl", None),
])
def test_wheel_tags_against_a_cpython_311_glibc_235_image(filename, kind):
    found = pf.tag_problem(wheel(filename), IMAGE)
    assert (found[0] if found else None) == kind


def test_tag_problems_say_what_does_not_fit():
    kind, why = pf.tag_problem(wheel("numcodecs-0.15.2-cp312-cp312-manylinux2014_x86_64.whl"), IMAGE)
    assert why == "it is for Python 3.12 (cp312-cp312) and this image runs Python 3.11 (cp311)"
    kind, why = pf.tag_problem(wheel("x-1.0-cp311-none-manylinux_2_28_x86_64.whl"), {**IMAGE, "glibc": (2, 27)})
    assert why == "it needs glibc >= 2.28 (manylinux_2_28_x86_64) and this image has glibc 2.27"


@pytest.mark.parametrize("spec, version, ok", [
    (None, (3, 11), True), (">=3.11", (3, 11), True), (">=3.12", (3, 11), False), (">=3.8,<4", (3, 12), True),
    ("!=3.11.*", (3, 11), False), ("!=3.11.*", (3, 12), True), ("~=3.10", (3, 11), True), ("~=3.10.0", (3, 11), False),
    ("==3.11.*", (3, 11), True), ("<3.11", (3, 11), False), (">3.10", (3, 11), True), ("garbage", (3, 11), True),
])
def test_requires_python(spec, version, ok):
    assert pf.requires_python_ok(spec, version) is ok


@pytest.mark.parametrize("name, major", [("tensorrt-cu12-libs", 12), ("tensorrt_cu12_bindings", 12),
                                         ("tensorrt-cu13", 13), ("cupy-cuda12x", 12), ("nvidia-cuda-runtime-cu12", 12),
                                         ("cuda-pathfinder", None), ("zarr", None), ("cupy", None)])
def test_cuda_major_from_the_distribution_name(name, major):
    assert pf.cuda_major_of(name) == major


# --------------------------------------------------------------------------- preflight: a pack
def make_pack(root: Path, wheel_names: list[str], requires: dict | None = None, optional: dict | None = None,
              requires_python: dict | None = None, python: str = "3.11") -> Path:
    """A pack folder as far as preflight reads it: manifest.json (files + environment) and wheels/."""
    (root / "wheels").mkdir(parents=True)
    files, records = [], []
    for name in wheel_names:
        path = root / "wheels" / name
        path.write_bytes(b"wheel bytes of " + name.encode())
        files.append({"path": f"wheels/{name}", "size": path.stat().st_size, "sha256": "-"})
        records.append(wheel(name, (requires_python or {}).get(name)))
    environment = {"python": python, "platforms": ["manylinux2014_x86_64", "manylinux_2_28_x86_64"], "cuda": "12.8",
                   "torch": "2.8.0", "requires": requires or {}, "optional": optional or {}, "wheels": records}
    (root / "manifest.json").write_text(json.dumps({"format": "czii-kit-kaggle-pack", "format_version": 2,
                                                    "environment": environment, "files": files}))
    return root


def test_a_fitting_pack_passes_and_main_returns_its_wheels(tmp_path, capsys):
    names = ["czii_kit-0.3.0-py3-none-any.whl", "numcodecs-0.15.2-cp311-cp311-manylinux2014_x86_64.whl",
             "tensorrt_cu12_libs-10.16.1.11-py2.py3-none-manylinux_2_28_x86_64.whl"]
    pack = make_pack(tmp_path / "pack", names, requires={"numcodecs": "0.15.2"})
    assert pf.check(pack, IMAGE) == []
    assert pf.describe(pack, IMAGE)[0] == ("preflight: this image runs Python 3.11.9 on linux x86_64, glibc 2.35, "
                                           "torch 2.8.0+cu128 (CUDA 12.8)")


def test_every_problem_names_the_option_to_rebuild_with(tmp_path):
    names = ["zarr-2.18.7-py3-none-any.whl", "numcodecs-0.15.2-cp312-cp312-manylinux2014_x86_64.whl",
             "tensorrt_cu13_libs-10.16.1.11-py2.py3-none-manylinux_2_28_x86_64.whl"]
    pack = make_pack(tmp_path / "pack", names, requires_python={"zarr-2.18.7-py3-none-any.whl": ">=3.12"},
                     python="3.12")
    problems = pf.check(pack, IMAGE)
    assert len(problems) == 3
    zarr, numcodecs, trt = problems
    assert zarr.startswith("wheels/zarr-2.18.7-py3-none-any.whl: zarr 2.18.7 requires Python >=3.12")
    assert numcodecs == ("wheels/numcodecs-0.15.2-cp312-cp312-manylinux2014_x86_64.whl: it is for Python 3.12 "
                         "(cp312-cp312) and this image runs Python 3.11 (cp311): rebuild the wheelhouse and the pack "
                         "with `czii pack ... --kaggle-python 3.11`")
    assert zarr.endswith("--kaggle-python 3.11`")
    assert "built for CUDA 13 and this image's torch 2.8.0+cu128 uses CUDA 12.8" in trt
    assert trt.endswith("--kaggle-cuda 12.8`")
    glibc = pf.check(make_pack(tmp_path / "old", ["x-1.0-cp311-none-manylinux_2_28_x86_64.whl"]),
                     {**IMAGE, "glibc": (2, 27)})
    assert glibc[0].endswith("--kaggle-platform manylinux2014_x86_64 --kaggle-platform manylinux_2_27_x86_64` "
                             "(tags up to this image's glibc)")


def test_a_cpu_torch_image_does_not_hold_cuda_wheels_against_the_pack(tmp_path):
    pack = make_pack(tmp_path / "pack", ["cupy_cuda12x-14.2.0-cp311-cp311-manylinux2014_x86_64.whl"])
    assert pf.check(pack, {**IMAGE, "cuda": None}) == []


def test_missing_wheels_and_missing_requirements_are_problems(tmp_path):
    pack = make_pack(tmp_path / "pack", ["zarr-2.18.7-py3-none-any.whl"],
                     requires={"zarr": "2.18.7", "czii-no-such-distribution": "1.0", "numpy": "2.0.0"})
    (problem,) = pf.check(pack, IMAGE)  # zarr is packed, numpy is installed here: only the third is unmet
    assert problem.startswith("czii-no-such-distribution==1.0: the notebook imports it, this image does not have it")
    assert "--wheels wheels" in problem
    (pack / "wheels" / "zarr-2.18.7-py3-none-any.whl").write_bytes(b"cut")
    problems = pf.check(pack, IMAGE)
    assert "zarr-2.18.7-py3-none-any.whl, listed in manifest.json, is missing or has the wrong size" in problems[0]


def test_optional_gpu_extras_are_a_note_not_a_problem(tmp_path):
    pack = make_pack(tmp_path / "pack", [], optional={"tensorrt-cu12": "10.16.1.11", "numpy": "2.0.0"})
    assert pf.check(pack, IMAGE) == []
    notes = [line for line in pf.describe(pack, IMAGE) if line.startswith("note: GPU extras")]
    assert notes == ["note: GPU extras neither packed nor installed here: tensorrt-cu12; without them the notebook "
                     "runs torch (fp16 on a GPU) instead of TensorRT, and finds peaks on the CPU"]


def test_a_pack_without_an_environment_record_must_be_repacked(tmp_path):
    pack = tmp_path / "old"
    pack.mkdir()
    (pack / "manifest.json").write_text(json.dumps({"format": "czii-kit-kaggle-pack", "format_version": 1,
                                                    "files": []}))
    (problem,) = pf.check(pack, IMAGE)
    assert "no wheel environment record" in problem and "re-pack" in problem
    with pytest.raises(pf.PreflightError, match="manifest.json is missing"):
        pf.check(tmp_path / "nowhere", IMAGE)


def test_main_prints_what_it_checked_and_raises_with_every_problem(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pf, "running", lambda: IMAGE)
    good = make_pack(tmp_path / "good", ["zarr-2.18.7-py3-none-any.whl"], python="3.12")
    assert pf.main(good) == [str(good / "wheels" / "zarr-2.18.7-py3-none-any.whl")]
    out = capsys.readouterr().out
    assert "the pack's 1 wheel(s) were made for Python 3.12, manylinux2014_x86_64, manylinux_2_28_x86_64" in out
    assert "note: the pack was made for Python 3.12, this image runs 3.11" in out
    assert "preflight: all 1 wheel(s) install on this image" in out
    bad = make_pack(tmp_path / "bad", ["a-1.0-cp312-cp312-manylinux2014_x86_64.whl",
                                       "b-1.0-cp312-cp312-manylinux2014_x86_64.whl"], python="3.12")
    with pytest.raises(pf.PreflightError, match=r"2 packed wheel\(s\) will not install") as raised:
        pf.main(bad)
    assert str(raised.value).count("--kaggle-python 3.11") == 2


def test_preflight_runs_as_a_script_without_site_packages(tmp_path):
    """-I -S: no site-packages at all, as before czii-kit is installed; a fitting pack exits 0, a bad one 1."""
    major, minor = sys.version_info[:2]
    good = make_pack(tmp_path / "good", ["zarr-2.18.7-py3-none-any.whl"], python=f"{major}.{minor}")
    done = subprocess.run([sys.executable, "-I", "-S", str(PREFLIGHT_SOURCE), str(good)], capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    assert "all 1 wheel(s) install on this image" in done.stdout
    bad = make_pack(tmp_path / "bad", [f"x-1.0-cp{major}{minor + 1}-cp{major}{minor + 1}-manylinux2014_x86_64.whl"])
    done = subprocess.run([sys.executable, "-I", "-S", str(PREFLIGHT_SOURCE), str(bad)], capture_output=True,
                          text=True)
    assert done.returncode == 1
    assert f"--kaggle-python {major}.{minor}" in done.stderr


# --------------------------------------------------------------------------- finding the pack under /kaggle/input
def make_pack_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"format": "czii-kit-kaggle-pack", "format_version": 2}))
    return folder


def test_locate_pack_finds_the_one_pack_at_any_mount_depth_and_skips_zarr_stores(tmp_path):
    root = tmp_path / "input"
    pack = make_pack_folder(root / "datasets" / "me" / "czii-kit-weights")
    zarr_store = root / "czii" / "train" / "denoised.zarr" / "0"
    zarr_store.mkdir(parents=True)
    make_pack_folder(zarr_store / "inner")  # inside a zarr store: never entered
    (root / "other").mkdir()
    (root / "other" / "manifest.json").write_text(json.dumps({"format": "someone-else"}))
    assert pf.find_packs(root) == [pack]
    assert pf.locate_pack(root) == pack
    assert pf.locate_pack(root, pack) == pack


def test_locate_pack_lists_what_it_found_when_there_is_no_pack_or_several(tmp_path):
    root = tmp_path / "input"
    (root / "czii-cryo-et-object-identification" / "train").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "other" / "manifest.json").write_text(json.dumps({"format": "someone-else"}))
    with pytest.raises(pf.PreflightError) as none:
        pf.locate_pack(root)
    message = str(none.value)
    assert "no czii-kit pack" in message and "czii-cryo-et-object-identification/train" in message
    assert "manifests of other formats" in message and "dataset_sources" in message
    make_pack_folder(root / "a")
    make_pack_folder(root / "b" / "c")
    with pytest.raises(pf.PreflightError, match="2 czii-kit packs under .*set PACK_DIR"):
        pf.locate_pack(root)
    with pytest.raises(pf.PreflightError, match="PACK_DIR .* must be the folder of a pack"):
        pf.locate_pack(root, root / "other" / "nope")


def test_prebuilt_engines_are_found_by_their_index_wherever_mounted(tmp_path):
    from czii_kit.kaggle.runtime import find_engines

    root = tmp_path / "input"
    (root / "kernels" / "me" / "czii-kit-engines").mkdir(parents=True)
    (root / "kernels" / "me" / "czii-kit-engines" / "engines.json").write_text('{"engines": []}')
    (root / "czii-kit-weights").mkdir()
    assert find_engines(root) == [root / "kernels" / "me" / "czii-kit-engines"]
    assert find_engines(tmp_path / "nothing-here") == []
