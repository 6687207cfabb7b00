"""Kaggle delivery: the dataset pack (contents, metadata, refusals, no credentials) and the stored notebook."""
from __future__ import annotations

import ast
import builtins
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import types
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

import czii_kit
from czii_kit.cli.pack_kaggle_dataset import main as pack_main
from czii_kit.errors import DataError
from czii_kit.kaggle import pack as pack_module
from czii_kit.kaggle import preflight
from czii_kit.kaggle import wheels as wheels_module
from czii_kit.kaggle.runtime import read_pack
from czii_kit.particles import CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "kaggle_notebooks"
SLUG = "czii-test-pack"
COMPETITION = "czii-cryo-et-object-identification"
KAGGLE_SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{4,48})[a-z0-9]")  # Kaggle: 6-50 lowercase letters, digits, hyphens


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def pack(weights, out: Path, *extra: str) -> int:
    return pack_main(["--weights", *map(str, weights), "--out", str(out), "--slug", SLUG, "--no-progress", *extra])


def copy_experiment(src: Path, dest: Path) -> Path:
    """fold0.pt + config.yaml of an experiment, in a folder of our own."""
    dest.mkdir(parents=True)
    for name in ("fold0.pt", "config.yaml"):
        shutil.copy2(src / name, dest / name)
    return dest


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def packed(tiny_experiment, tmp_path_factory) -> Path:
    """tiny_experiment packed once, with a real wheel build."""
    out = tmp_path_factory.mktemp("kaggle") / SLUG
    assert pack([tiny_experiment], out, "--user", "tester", "--title", "czii-kit test pack") == 0
    return out


@pytest.fixture
def prebuilt_wheel(packed, monkeypatch):
    """Packs reuse the fixture's czii-kit wheel instead of building one each (the build is tested once)."""
    (wheel,) = (packed / "wheels").glob("czii_kit-*.whl")

    def copy_wheel(dest: Path) -> Path:
        return Path(shutil.copy2(wheel, dest / wheel.name))

    monkeypatch.setattr(pack_module, "build_project_wheel", copy_wheel)


@pytest.fixture
def experiment(tiny_experiment, tmp_path) -> Path:
    return copy_experiment(tiny_experiment, tmp_path / "weights" / "exp")


# --------------------------------------------------------------------------- contents
def test_manifest_lists_every_file_with_its_size_and_sha256(packed, tiny_experiment):
    manifest = manifest_of(packed)
    on_disk = {p.relative_to(packed).as_posix() for p in packed.rglob("*") if p.is_file()}
    listed = {f["path"] for f in manifest["files"]}
    assert on_disk - listed == {"manifest.json", "dataset-metadata.json"}
    assert listed <= on_disk
    for entry in manifest["files"]:
        path = packed / entry["path"]
        assert entry["size"] == path.stat().st_size
        assert entry["sha256"] == sha256(path)
    assert sha256(packed / "tiny/fold0.pt") == sha256(tiny_experiment / "fold0.pt")
    assert (packed / "tiny/config.yaml").read_bytes() == (tiny_experiment / "config.yaml").read_bytes()
    assert (packed / "configs/base.yaml").read_bytes() == (REPO / "configs/base.yaml").read_bytes()
    assert manifest["classes"] == list(CLASS_NAMES)
    assert manifest["czii_kit_version"] == czii_kit.__version__


def test_manifest_records_each_checkpoints_fold_score_and_thresholds(packed, tiny_experiment):
    original = torch.load(tiny_experiment / "fold0.pt", map_location="cpu", weights_only=True)
    (entry,) = manifest_of(packed)["checkpoints"]
    assert entry["path"] == "tiny/fold0.pt"
    assert entry["fold"] == original["fold"] == 0
    assert entry["thresholds"] == pytest.approx(original["thresholds"])
    assert entry["score"] == pytest.approx(original["validation"]["score"])


def test_dataset_metadata_has_what_the_kaggle_cli_requires(packed):
    metadata = json.loads((packed / "dataset-metadata.json").read_text())
    assert metadata["id"] == f"tester/{SLUG}"
    user, slug = metadata["id"].split("/")
    assert user and KAGGLE_SLUG.fullmatch(slug)
    assert 6 <= len(metadata["title"]) <= 50
    assert metadata["licenses"] == [{"name": "CC0-1.0"}]  # the CLI wants exactly one license with a name


def test_the_wheel_is_czii_kit_built_from_this_checkout(packed):
    (wheel,) = (packed / "wheels").glob("*.whl")
    assert wheel.name == f"czii_kit-{czii_kit.__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        modules = {n for n in zf.namelist() if n.endswith(".py")}
        metadata = zf.read(f"czii_kit-{czii_kit.__version__}.dist-info/METADATA").decode()
    source = REPO / "src"
    assert modules == {p.relative_to(source).as_posix() for p in (source / "czii_kit").rglob("*.py")}
    assert f"Version: {czii_kit.__version__}" in metadata


def test_the_wheel_build_is_reproducible(packed, tmp_path):
    (wheel,) = (packed / "wheels").glob("czii_kit-*.whl")
    assert sha256(pack_module.build_project_wheel(tmp_path)) == sha256(wheel)


def test_read_pack_returns_the_checkpoints_and_catches_altered_files(packed, tmp_path):
    copy = Path(shutil.copytree(packed, tmp_path / "pack"))
    loaded = read_pack(copy)
    assert loaded.checkpoints == [copy / "tiny/fold0.pt"]
    assert loaded.config_dir == copy / "configs"
    config = copy / "tiny/config.yaml"
    text = config.read_bytes()
    config.write_bytes(text[:-1] + (b"#" if text[-1:] != b"#" else b"!"))  # same size, other bytes
    with pytest.raises(DataError, match="tiny/config.yaml does not match its sha256"):
        read_pack(copy)
    config.unlink()
    with pytest.raises(DataError, match="tiny/config.yaml.*missing"):
        read_pack(copy, verify=False)


# --------------------------------------------------------------------------- names
@pytest.mark.parametrize("slug", ["abcdef", "a" * 50, "czii-kit-2"])
def test_valid_slugs_pass(slug):
    assert pack_module.check_slug(slug) == slug


@pytest.mark.parametrize("option, value", [
    ("--slug", "short"), ("--slug", "a" * 51), ("--slug", "Czii-Kit-Weights"), ("--slug", "czii_kit_weights"),
    ("--slug", "-czii-kit"), ("--title", "tiny"), ("--title", "t" * 51), ("--user", "no/slash"),
])
def test_refuses_names_kaggle_rejects(option, value, experiment, tmp_path, capsys):
    out = tmp_path / "out" / "pack"
    args = ["--weights", str(experiment), "--out", str(out), "--slug", SLUG, "--user", "tester", f"{option}={value}"]
    assert pack_main(args) == 2
    assert value in capsys.readouterr().err
    assert not out.parent.exists()


# --------------------------------------------------------------------------- refusals
def test_refuses_an_empty_selection(experiment, tmp_path, capsys):
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out, "--folds", "7") == 2
    assert str(experiment) in capsys.readouterr().err
    assert not out.parent.exists()


def test_refuses_a_corrupt_checkpoint(tmp_path, capsys):
    broken = tmp_path / "weights" / "broken"
    broken.mkdir(parents=True)
    (broken / "fold0.pt").write_bytes(b"not a checkpoint")
    out = tmp_path / "out" / SLUG
    assert pack([broken], out) == 2
    err = capsys.readouterr().err
    assert "could not be loaded" in err and "weights_only" not in err  # torch's advice on pickles is not ours
    assert not out.parent.exists()


def test_refuses_what_the_notebook_could_not_load(experiment, tmp_path, capsys):
    """Weights that do not fit their config's model, an ONNX file cut short, the best epoch of a killed training."""
    import torch

    from czii_kit.checkpoints import load_checkpoint, probability_model, save_state
    from czii_kit.infer.export import export_onnx

    out = tmp_path / "out" / SLUG
    ckpt = torch.load(experiment / "fold0.pt", weights_only=True)
    wider = copy_experiment(experiment, tmp_path / "weights" / "wider")
    ckpt["model"]["args"] = {**ckpt["model"]["args"], "filters": [f * 2 for f in ckpt["model"]["args"]["filters"]]}
    torch.save(ckpt, wider / "fold0.pt")
    assert pack([wider], out) == 2
    err = capsys.readouterr().err
    assert "its weights do not fit the model its config names" in err and "(shape " in err and "more" in err
    assert len(err) < 1500  # the first mismatches, not torch's page of them
    cut = copy_experiment(experiment, tmp_path / "weights" / "cut")
    meta = load_checkpoint(cut / "fold0.pt")
    window, batch = "x".join(map(str, meta["window"])), meta["config"]["infer"]["batch_size"]
    onnx = export_onnx(probability_model(meta), meta["window"], cut / f"fold0_{window}_b{batch}.onnx", batch)
    onnx.write_bytes(onnx.read_bytes()[:1000])  # an upload or copy cut short
    assert pack([cut], out, "--onnx") == 2
    assert f"{onnx} is not a readable ONNX graph" in capsys.readouterr().err
    killed = copy_experiment(experiment, tmp_path / "weights" / "killed")
    save_state({"epoch": 2, "finished": False}, killed / "fold0_last.pt")
    assert pack([killed], out) == 2
    assert "its training stopped after epoch 3 of" in capsys.readouterr().err
    assert not out.parent.exists()


def test_refuses_checkpoints_with_different_class_orders(experiment, tmp_path, capsys):
    reversed_exp = tmp_path / "weights" / "reversed"
    reversed_exp.mkdir()
    ckpt = torch.load(experiment / "fold0.pt", map_location="cpu", weights_only=True)
    ckpt["classes"] = list(reversed(ckpt["classes"]))
    torch.save(ckpt, reversed_exp / "fold0.pt")
    out = tmp_path / "out" / SLUG
    assert pack([experiment, reversed_exp], out) == 2
    assert "classes" in capsys.readouterr().err
    assert not out.parent.exists()


def test_refuses_two_experiments_with_one_name(experiment, tmp_path, capsys):
    twin = copy_experiment(experiment, tmp_path / "elsewhere" / experiment.name)
    assert pack([experiment, twin], tmp_path / "out" / SLUG) == 2
    assert "both named 'exp'" in capsys.readouterr().err


def test_a_different_pack_is_replaced_only_with_force(experiment, tmp_path, capsys, prebuilt_wheel):
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out) == 0
    assert pack([experiment], out) == 0  # the same content again is fine
    before = (out / "manifest.json").read_bytes()
    with open(experiment / "config.yaml", "a") as f:
        f.write("# edited\n")
    capsys.readouterr()
    assert pack([experiment], out) == 2
    assert "different pack" in capsys.readouterr().err
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == [SLUG]  # no temp folders left behind
    assert pack([experiment], out, "--force") == 0
    listed = {f["path"]: f["sha256"] for f in manifest_of(out)["files"]}
    assert listed["exp/config.yaml"] == sha256(experiment / "config.yaml")
    assert sorted(p.name for p in out.parent.iterdir()) == [SLUG]


def test_files_added_to_a_pack_need_force(experiment, tmp_path, capsys, prebuilt_wheel):
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out) == 0
    (out / "notes.txt").write_text("mine")
    assert pack([experiment], out) == 2
    assert "notes.txt" in capsys.readouterr().err
    assert pack([experiment], out, "--force") == 0
    assert not (out / "notes.txt").exists()


@pytest.mark.parametrize("force", [False, True])
def test_never_replaces_a_folder_that_is_not_a_pack(experiment, tmp_path, capsys, force):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert pack([experiment], out, *(["--force"] if force else [])) == 2
    assert "not a czii-kit pack" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "precious"


# --------------------------------------------------------------------------- credentials
def test_never_reads_kaggle_credentials(experiment, tmp_path, monkeypatch, capsys, prebuilt_wheel):
    home = tmp_path / "home"
    for config_dir in (home / ".kaggle", tmp_path / "kaggle-config"):
        config_dir.mkdir(parents=True)
        (config_dir / "kaggle.json").write_text('{"username": "fromfile", "key": "secret-key-value"}')
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    opened: list[str] = []

    def spy(real):
        def wrapper(file, *args, **kwargs):
            if isinstance(file, (str, bytes, os.PathLike)):
                opened.append(os.fsdecode(file))
            return real(file, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(builtins, "open", spy(builtins.open))
    monkeypatch.setattr(io, "open", spy(io.open))
    monkeypatch.setattr(os, "open", spy(os.open))
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out) == 0
    assert opened, "the spy saw no file opened at all"
    assert not [p for p in opened if "kaggle.json" in p or "kaggle-config" in p or ".kaggle" in p]
    assert json.loads((out / "dataset-metadata.json").read_text())["id"] == f"your-kaggle-username/{SLUG}"
    assert "your-kaggle-username" in capsys.readouterr().out
    assert not any(b"secret-key-value" in p.read_bytes() for p in out.rglob("*") if p.is_file())
    monkeypatch.setenv("KAGGLE_USERNAME", "envuser")
    assert pack([experiment], tmp_path / "out2" / SLUG) == 0
    assert manifest_of(tmp_path / "out2" / SLUG)["dataset"] == f"envuser/{SLUG}"


# --------------------------------------------------------------------------- ONNX and wheelhouse
def test_onnx_exports_are_packed_when_asked(experiment, tmp_path, capsys, prebuilt_wheel):
    from czii_kit.checkpoints import load_checkpoint, probability_model
    from czii_kit.infer.export import export_onnx

    out = tmp_path / "out" / SLUG
    second = copy_experiment(experiment, tmp_path / "weights" / "exp2")
    assert pack([experiment, second], out, "--onnx") == 2
    err = capsys.readouterr().err  # every missing export at once, and the one command that makes them
    assert "2 checkpoint(s) have no fp32 ONNX export" in err
    assert f"czii export --weights {experiment / 'fold0.pt'} {second / 'fold0.pt'} --format onnx" in err
    ckpt = load_checkpoint(experiment / "fold0.pt")
    batch = ckpt["config"]["infer"]["batch_size"]
    window = "x".join(map(str, ckpt["window"]))
    onnx = export_onnx(probability_model(ckpt), ckpt["window"], experiment / f"fold0_{window}_b{batch}.onnx", batch)
    assert pack([experiment], out, "--onnx") == 0
    (entry,) = manifest_of(out)["checkpoints"]
    assert entry["onnx"] == [f"exp/{onnx.name}"]
    assert sha256(out / "exp" / onnx.name) == sha256(onnx)


def test_a_pack_of_two_kinds_needs_tuned_fusion_weights_or_says_default_on_purpose(
        tiny_yolo_experiment, experiment, tmp_path, capsys, prebuilt_wheel):
    yolo = copy_experiment(tiny_yolo_experiment, tmp_path / "weights" / "yolo")
    out = tmp_path / "out" / SLUG
    assert pack([experiment, yolo], out) == 2
    err = capsys.readouterr().err
    assert "2 sources (unet, yolo) but no per-class source weights" in err and "--default-fusion" in err
    assert not out.parent.exists()  # refused before anything was written
    assert pack([experiment, yolo], out, "--default-fusion") == 0
    assert manifest_of(out)["default_fusion"] is True and read_pack(out).default_fusion is True
    assert manifest_of(out)["checkpoints"][1]["model"] == "yolo"


def test_yolo_onnx_exports_fp32_and_fp16_are_packed(tiny_yolo_experiment, tmp_path, capsys, prebuilt_wheel):
    from czii_kit.cli.export import main as export_main

    exp = copy_experiment(tiny_yolo_experiment, tmp_path / "weights" / "yolo")
    out = tmp_path / "out" / SLUG
    assert pack([exp], out, "--onnx") == 2
    assert "fold0_yolo_64_b8.onnx" in capsys.readouterr().err  # names the YOLO export it looked for
    assert export_main(["--weights", str(exp), "--format", "onnx"]) == 0
    assert pack([exp], out, "--onnx") == 0
    assert manifest_of(out)["checkpoints"][0]["onnx"] == ["yolo/fold0_yolo_64_b8.onnx"]
    assert export_main(["--weights", str(exp), "--format", "onnx", "--precision", "fp16"]) == 0
    assert pack([exp], out, "--onnx", "--force") == 0
    entry = manifest_of(out)["checkpoints"][0]
    assert entry["onnx"] == ["yolo/fold0_yolo_64_b8.onnx", "yolo/fold0_yolo_64_b8_fp16.onnx"]
    assert sha256(out / "yolo" / "fold0_yolo_64_b8_fp16.onnx") == sha256(exp / "fold0_yolo_64_b8_fp16.onnx")


def fake_wheel(folder: Path, name: str, requires_python: str | None = None) -> Path:
    """A zip named like a wheel; with requires_python, a dist-info METADATA that says it."""
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("placeholder.txt", name)
        if requires_python is not None:
            dist, version = name.split("-")[:2]
            zf.writestr(f"{dist}-{version}.dist-info/METADATA",
                        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\nRequires-Python: {requires_python}\n")
    return path


def test_a_wheelhouse_is_copied_and_what_it_lacks_is_named(experiment, tmp_path, capsys, prebuilt_wheel):
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    fake_wheel(wheels, "zarr-2.18.7-py3-none-any.whl")
    fake_wheel(wheels, "Segmentation_Models_Pytorch_3D-1.0.2-py3-none-any.whl")
    fake_wheel(wheels, "czii_kit-0.0.1-py3-none-any.whl")  # an old build: the fresh one wins
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out, "--wheels", str(wheels)) == 0
    packed = sorted(p.name for p in (out / "wheels").iterdir())
    assert packed == sorted(["Segmentation_Models_Pytorch_3D-1.0.2-py3-none-any.whl",
                             f"czii_kit-{czii_kit.__version__}-py3-none-any.whl", "zarr-2.18.7-py3-none-any.whl"])
    warning = next(line for line in capsys.readouterr().out.splitlines() if "lacks" in line)
    assert "numcodecs" in warning and "zarr," not in warning and "segmentation-models-pytorch-3d" not in warning
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    assert pack([experiment], tmp_path / "out2" / SLUG, "--wheels", str(wheels)) == 2
    assert "not a wheel" in capsys.readouterr().err


def test_wheelhouse_commands_fetch_only_what_kaggle_lacks():
    download, build = wheels_module.wheelhouse_commands("wheels", wheels_module.KaggleTarget(python="3.12"))
    names = {token.split("==")[0] for token in download.split()}
    assert "--no-deps" in download and "--python-version 3.12" in download and not names & {"torch", "numpy"}
    assert "--platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64" in download
    assert "zarr==" in download and "timm==0.9.7" in download and "ultralytics" not in download
    assert build.startswith("pip wheel --no-deps") and "pretrainedmodels" in build
    download, _ = wheels_module.wheelhouse_commands("wheels", wheels_module.KaggleTarget(python="3.11"), extra=("ultralytics",))
    assert "--python-version 3.11" in download
    assert f"ultralytics=={importlib.metadata.version('ultralytics')}" in download.split()


@pytest.mark.parametrize("cuda, family", [("12.8", "12"), ("13.0", "13")])
def test_gpu_wheel_commands_follow_the_images_cuda(cuda, family):
    target = wheels_module.KaggleTarget(cuda=cuda, tensorrt="10.16.1.11")
    download, build = wheels_module.gpu_wheel_commands("wheels", target)
    assert download.startswith("pip download --no-deps --only-binary=:all: --python-version 3.12")
    assert "--extra-index-url https://pypi.nvidia.com" in download  # tensorrt-cuXX-libs: PyPI has only a stub
    assert download.split()[-4:] == [f"tensorrt-cu{family}-bindings==10.16.1.11", f"tensorrt-cu{family}-libs==10.16.1.11",
                                     f"cupy-cuda{family}x==14.2.0", "cuda-pathfinder==1.9.1"]
    assert build == f"pip wheel --no-deps -w wheels tensorrt-cu{family}==10.16.1.11"
    assert set(target.gpu_extras()) == {f"tensorrt-cu{family}", f"tensorrt-cu{family}-bindings",
                                        f"tensorrt-cu{family}-libs", f"cupy-cuda{family}x", "cuda-pathfinder"}


def test_the_pinned_tensorrt_is_a_10x_release_for_the_t4():
    # TensorRT 10.x supports compute capability >= 7.0 (T4 = 7.5); the default CUDA picks the cu12 family
    assert wheels_module.TENSORRT_VERSION.split(".")[0] == "10"
    assert wheels_module.KaggleTarget().gpu_extras()["tensorrt-cu12"] == wheels_module.TENSORRT_VERSION


# --------------------------------------------------------------------------- what the wheels are for
def test_manifest_records_what_the_wheels_are_for(packed):
    manifest = manifest_of(packed)
    assert manifest["format_version"] == 2
    env = manifest["environment"]
    assert (env["python"], env["platforms"], env["cuda"], env["tensorrt"]) == (
        "3.12", ["manylinux2014_x86_64", "manylinux_2_28_x86_64"], "12.8", wheels_module.TENSORRT_VERSION)
    assert (env["torch"], env["torch_cuda"]) == (torch.__version__, torch.version.cuda)
    assert list(env["requires"]) == [*wheels_module.KAGGLE_MISSING, *wheels_module.KAGGLE_MISSING_SDIST_ONLY]
    assert env["requires"]["zarr"] == importlib.metadata.version("zarr")
    assert env["optional"] == {"tensorrt-cu12": wheels_module.TENSORRT_VERSION,
                               "tensorrt-cu12-bindings": wheels_module.TENSORRT_VERSION,
                               "tensorrt-cu12-libs": wheels_module.TENSORRT_VERSION, "cupy-cuda12x": "14.2.0",
                               "cuda-pathfinder": "1.9.1"}
    assert env["wheels"] == [{"file": f"czii_kit-{czii_kit.__version__}-py3-none-any.whl", "name": "czii_kit",
                              "version": czii_kit.__version__, "build": None, "python_tag": "py3", "abi_tag": "none",
                              "platform_tag": "any", "requires_python": ">=3.11"}]


def test_preflight_is_packed_and_passes_for_a_pack_made_here(packed, capsys):
    assert (packed / "preflight.py").read_bytes() == Path(preflight.__file__).read_bytes()
    assert "preflight.py" in {f["path"] for f in manifest_of(packed)["files"]}
    assert preflight.check(packed) == []  # the notebook's local run: every requirement is installed here
    (wheel,) = (packed / "wheels").glob("czii_kit-*.whl")
    assert preflight.main(packed) == [str(wheel)]
    assert "preflight: all 1 wheel(s) install on this image" in capsys.readouterr().out


def test_the_kaggle_options_are_recorded_and_printed(experiment, tmp_path, capsys, prebuilt_wheel):
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out, "--kaggle-python", "3.11", "--kaggle-cuda", "13.0", "--kaggle-platform",
                "manylinux_2_28_x86_64", "--tensorrt-version", "10.13.3.9") == 0
    env = manifest_of(out)["environment"]
    assert (env["python"], env["platforms"], env["cuda"], env["tensorrt"]) == (
        "3.11", ["manylinux_2_28_x86_64"], "13.0", "10.13.3.9")
    assert set(env["optional"]) == {"tensorrt-cu13", "tensorrt-cu13-bindings", "tensorrt-cu13-libs", "cupy-cuda13x",
                                    "cuda-pathfinder"}
    printed = capsys.readouterr().out
    assert "for the Kaggle image: --kaggle-python 3.11 --kaggle-cuda 13.0 --kaggle-platform manylinux_2_28_x86_64" in printed
    # no GPU wheels packed: a note, and the commands for this CUDA
    assert "note: no wheels of tensorrt-cu13, tensorrt-cu13-bindings, tensorrt-cu13-libs, cupy-cuda13x" in printed
    assert "pip wheel --no-deps -w wheels tensorrt-cu13==10.13.3.9" in printed
    assert "--python-version 3.11 --platform manylinux_2_28_x86_64 -d wheels zarr==" in printed


@pytest.mark.parametrize("option, value", [
    ("--kaggle-python", "312"), ("--kaggle-python", "2.7"), ("--kaggle-cuda", "11.8"), ("--kaggle-cuda", "cu128"),
    ("--kaggle-platform", "win_amd64"), ("--tensorrt-version", "8.6.1"),
])
def test_refuses_a_kaggle_target_it_cannot_make_wheels_for(option, value, experiment, tmp_path, capsys):
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out, option, value) == 2
    err = capsys.readouterr().err
    assert f"{option} {value!r}" in err
    assert not out.parent.exists()


def test_refuses_platform_tags_of_two_architectures(experiment, tmp_path, capsys):
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out, "--kaggle-platform", "manylinux2014_x86_64", "--kaggle-platform",
                "manylinux2014_aarch64") == 2
    assert "several architectures (aarch64, x86_64)" in capsys.readouterr().err


@pytest.mark.parametrize("wheels, options, message", [
    (["numcodecs-0.15.2-cp311-cp311-manylinux2014_x86_64.whl"], [],
     "numcodecs-0.15.2-cp311-cp311-manylinux2014_x86_64.whl: it is for Python 3.11 (cp311-cp311) and this image "
     "runs Python 3.12 (cp312)"),
    (["tensorrt_cu13_bindings-10.16.1.11-cp312-none-manylinux_2_28_x86_64.whl"], [],
     "tensorrt_cu13_bindings-10.16.1.11-cp312-none-manylinux_2_28_x86_64.whl: it is built for CUDA 13 and this "
     "image's torch uses CUDA 12.8"),
    (["fast-1.0-cp312-cp312-manylinux_2_34_x86_64.whl"], [],
     "it needs glibc >= 2.34 (manylinux_2_34_x86_64) and this image has glibc 2.28"),
    (["numcodecs-0.15.2-cp312-cp312-manylinux_2_28_x86_64.whl"], ["--kaggle-platform", "manylinux2014_x86_64"],
     "it needs glibc >= 2.28 (manylinux_2_28_x86_64) and this image has glibc 2.17"),
    (["zarr-2.18.7-py3-none-any.whl", "zarr-2.18.3-py3-none-any.whl"], [],
     "holds 2 wheels of zarr (zarr-2.18.3-py3-none-any.whl, zarr-2.18.7-py3-none-any.whl)"),
    (["zarr.whl"], [], "zarr.whl is not a wheel file name"),
])
def test_refuses_wheels_that_do_not_fit_the_kaggle_image(wheels, options, message, experiment, tmp_path, capsys,
                                                         prebuilt_wheel):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for name in wheels:
        fake_wheel(house, name)
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out, "--wheels", str(house), *options) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not out.parent.exists()  # refused before anything was written


def test_wheels_are_checked_against_the_target_python_and_requires_python(experiment, tmp_path, capsys,
                                                                           prebuilt_wheel):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    fake_wheel(house, "numcodecs-0.15.2-cp311-cp311-manylinux2014_x86_64.whl")
    fake_wheel(house, "zarr-2.18.7-py3-none-any.whl", requires_python=">=3.11")
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out, "--wheels", str(house)) == 2
    err = capsys.readouterr().err
    assert "--kaggle-python 3.12 --kaggle-cuda 12.8" in err  # the target it checked against
    assert "pip download --no-deps --only-binary=:all: --python-version 3.12" in err  # and how to re-make them
    assert pack([experiment], out, "--wheels", str(house), "--kaggle-python", "3.11") == 0
    records = {w["name"]: w for w in manifest_of(out)["environment"]["wheels"]}
    assert records["numcodecs"]["python_tag"] == "cp311" and records["zarr"]["requires_python"] == ">=3.11"
    fake_wheel(house, "munch-4.0.0-py2.py3-none-any.whl", requires_python=">=3.12")
    assert pack([experiment], tmp_path / "out2" / SLUG, "--wheels", str(house), "--kaggle-python", "3.11") == 2
    assert "munch 4.0.0 requires Python >=3.12 and this image runs 3.11" in capsys.readouterr().err


def test_a_complete_wheelhouse_gets_no_advice(experiment, tmp_path, capsys, prebuilt_wheel):
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for name in (*wheels_module.KAGGLE_MISSING, *wheels_module.KAGGLE_MISSING_SDIST_ONLY):
        fake_wheel(house, f"{name.replace('-', '_')}-1.0-py3-none-any.whl")
    for name in wheels_module.KaggleTarget().gpu_extras():
        fake_wheel(house, f"{name.replace('-', '_')}-1.0-cp312-none-manylinux_2_28_x86_64.whl")
    assert pack([experiment], tmp_path / "out" / SLUG, "--wheels", str(house)) == 0
    printed = capsys.readouterr().out
    assert "WARNING" not in printed and "note: no wheels" not in printed


# --------------------------------------------------------------------------- YOLO: ultralytics
def test_a_yolo_pack_requires_ultralytics_at_the_installed_version(tiny_yolo_experiment, tmp_path, capsys,
                                                                   prebuilt_wheel):
    version = importlib.metadata.version("ultralytics")
    exp = copy_experiment(tiny_yolo_experiment, tmp_path / "weights" / "yolo")
    out = tmp_path / "out" / SLUG
    assert pack([exp], out) == 0
    assert manifest_of(out)["environment"]["requires"]["ultralytics"] == version
    printed = capsys.readouterr().out
    warning = next(line for line in printed.splitlines() if line.startswith("WARNING"))
    assert "ultralytics" in warning
    assert f"ultralytics=={version}" in printed.split()


def test_a_unet_pack_does_not_need_ultralytics(experiment, tmp_path, monkeypatch, capsys, prebuilt_wheel):
    def must_not_run():
        raise AssertionError("ultralytics checked for a pack without a YOLO checkpoint")

    monkeypatch.setattr(pack_module, "check_ultralytics", must_not_run)
    out = tmp_path / "out" / SLUG
    assert pack([experiment], out) == 0
    assert "ultralytics" not in manifest_of(out)["environment"]["requires"]
    assert "ultralytics" not in capsys.readouterr().out


@pytest.mark.parametrize("broken, missing", [("ultralytics.utils.nms", "ultralytics.utils.nms ("),
                                             ("ultralytics.nn.tasks", "ultralytics.nn.tasks.DetectionModel")])
def test_refuses_a_yolo_pack_when_ultralytics_lacks_a_module_czii_kit_imports(broken, missing, tiny_yolo_experiment,
                                                                              tmp_path, monkeypatch, capsys):
    real = wheels_module._import_ultralytics_module

    def importer(module):
        if module != broken:
            return real(module)
        if module.endswith("nms"):
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return types.SimpleNamespace()  # the module imports, without DetectionModel

    monkeypatch.setattr(wheels_module, "_import_ultralytics_module", importer)
    exp = copy_experiment(tiny_yolo_experiment, tmp_path / "weights" / "yolo")
    out = tmp_path / "out" / SLUG
    assert pack([exp], out) == 2
    err = capsys.readouterr().err
    assert missing in err and f"ultralytics {importlib.metadata.version('ultralytics')}" in err
    assert not out.parent.exists()


def test_the_ultralytics_check_covers_every_ultralytics_import_of_czii_kit():
    used = set()
    for path in (REPO / "src" / "czii_kit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ultralytics":
                used |= {(node.module, alias.name) for alias in node.names}
            elif isinstance(node, ast.Import):
                used |= {(a.name, None) for a in node.names if a.name.split(".")[0] == "ultralytics"}
    checked = set(wheels_module.ULTRALYTICS_IMPORTS)
    assert {("ultralytics.nn.tasks", "DetectionModel"), ("ultralytics.utils.nms", "non_max_suppression"),
            ("ultralytics", "YOLO")} <= used
    assert used - checked <= {("ultralytics", None)}, f"add {used - checked} to ULTRALYTICS_IMPORTS"


# --------------------------------------------------------------------------- notebook files
@pytest.mark.parametrize("metadata", ["kernel-metadata.json", "build-engines-kernel-metadata.json"])
def test_kernel_metadata_has_what_kaggle_kernels_push_needs(metadata):
    meta = json.loads((NOTEBOOK_DIR / metadata).read_text())
    user, slug = meta["id"].split("/")
    assert user and slug == re.sub(r"[^a-z0-9]+", "-", meta["title"].lower()).strip("-")
    assert (NOTEBOOK_DIR / meta["code_file"]).is_file()
    assert (meta["language"], meta["kernel_type"]) == ("python", "notebook")
    assert meta["is_private"] is True and meta["enable_gpu"] is True and meta["enable_internet"] is False
    # GPU T4 x2, read by `kaggle kernels push` (kaggle 1.8.4+) when --accelerator is not given
    assert meta["machine_shape"] == "NvidiaTeslaT4"
    assert meta["competition_sources"] == ([COMPETITION] if metadata == "kernel-metadata.json" else [])
    assert meta["kernel_sources"] == []
    (dataset,) = meta["dataset_sources"]
    owner, dataset_slug = dataset.split("/")
    assert owner == user and KAGGLE_SLUG.fullmatch(dataset_slug)
    notebook = nbformat.read(NOTEBOOK_DIR / meta["code_file"], as_version=4)
    parameters = next(c.source for c in notebook.cells if c.cell_type == "code")
    # no mount path to keep in step with the metadata: the notebook finds the pack under /kaggle/input by its manifest
    assert 'PACK_DIR = os.environ.get("CZII_PACK_DIR")' in parameters and "/kaggle/input/czii-kit" not in parameters


@pytest.mark.parametrize("name", ["czii_inference.ipynb", "czii_build_engines.ipynb"])
def test_notebook_is_stored_without_outputs(name):
    path = NOTEBOOK_DIR / name
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == "python3"
    assert path.stat().st_size < 20_000


@pytest.mark.parametrize("version, advice", [(None, "not installed here: pip install 'kaggle>=1.8.4'"),
                                             ("1.6.17", "rejects --accelerator"), ("1.8.3", "pip install -U"),
                                             ("1.8.4", None), ("2.2.5", None)])
def test_the_push_instructions_check_the_kaggle_client_version(version, advice):
    said = pack_module.kaggle_cli_advice(version)
    assert said is None if advice is None else advice in said


def test_the_printed_next_steps_show_the_t4_push_and_the_client_check(experiment, tmp_path, capsys, prebuilt_wheel,
                                                                     monkeypatch):
    from czii_kit.cli import pack_kaggle_dataset as cli

    monkeypatch.setattr(cli, "installed_version", lambda name: "1.8.3" if name == "kaggle" else None)
    assert pack([experiment], tmp_path / "out" / SLUG) == 0
    out = capsys.readouterr().out
    assert "kaggle kernels push -p kaggle_notebooks --accelerator NvidiaTeslaT4" in out
    assert "note: kaggle 1.8.3 is installed, and its `kernels push` rejects --accelerator" in out
