"""Kaggle delivery: the dataset pack (contents, metadata, refusals, no credentials) and the stored notebook."""
from __future__ import annotations

import builtins
import hashlib
import io
import json
import os
import re
import shutil
import zipfile
from pathlib import Path

import nbformat
import pytest
import torch

import czii_kit
from czii_kit.cli.pack_kaggle_dataset import main as pack_main
from czii_kit.errors import ConfigError, DataError
from czii_kit.kaggle import choose_engine, read_pack
from czii_kit.kaggle import pack as pack_module
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
    assert "could not be loaded" in capsys.readouterr().err
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
    assert pack([experiment], out, "--onnx") == 2
    assert "tools/export.py" in capsys.readouterr().err
    ckpt = load_checkpoint(experiment / "fold0.pt")
    batch = ckpt["config"]["infer"]["batch_size"]
    window = "x".join(map(str, ckpt["window"]))
    onnx = export_onnx(probability_model(ckpt), ckpt["window"], experiment / f"fold0_{window}_b{batch}.onnx", batch)
    assert pack([experiment], out, "--onnx") == 0
    (entry,) = manifest_of(out)["checkpoints"]
    assert entry["onnx"] == [f"exp/{onnx.name}"]
    assert sha256(out / "exp" / onnx.name) == sha256(onnx)


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


def fake_wheel(folder: Path, name: str) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("placeholder.txt", name)
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
    download, build = pack_module.wheelhouse_commands("wheels", "3.12")
    names = {token.split("==")[0] for token in download.split()}
    assert "--no-deps" in download and "--python-version 3.12" in download and not names & {"torch", "numpy"}
    assert "zarr==" in download and "timm==0.9.7" in download
    assert build.startswith("pip wheel --no-deps") and "pretrainedmodels" in build


# --------------------------------------------------------------------------- engine choice
def test_choose_engine_falls_back_to_torch_without_tensorrt(monkeypatch, capsys):
    from czii_kit.infer import engines

    assert choose_engine("torch", "auto") == "torch"
    assert choose_engine("onnx", "cpu") == "onnx"
    assert choose_engine("tensorrt", "cpu") == "torch"
    assert capsys.readouterr().out == ""

    def missing():
        raise ConfigError("no tensorrt here")

    monkeypatch.setattr(engines, "require_tensorrt", missing)
    assert choose_engine("tensorrt", "auto") == "torch"
    assert "WARNING: no tensorrt here" in capsys.readouterr().out
    monkeypatch.setattr(engines, "require_tensorrt", lambda: object())
    assert choose_engine("tensorrt", "auto") == "tensorrt"


# --------------------------------------------------------------------------- notebook files
def test_kernel_metadata_has_what_kaggle_kernels_push_needs():
    meta = json.loads((NOTEBOOK_DIR / "kernel-metadata.json").read_text())
    user, slug = meta["id"].split("/")
    assert user and slug == re.sub(r"[^a-z0-9]+", "-", meta["title"].lower()).strip("-")
    assert (NOTEBOOK_DIR / meta["code_file"]).is_file()
    assert (meta["language"], meta["kernel_type"]) == ("python", "notebook")
    assert meta["is_private"] is True and meta["enable_gpu"] is True and meta["enable_internet"] is False
    assert meta["competition_sources"] == [COMPETITION]
    assert meta["kernel_sources"] == []
    (dataset,) = meta["dataset_sources"]
    owner, dataset_slug = dataset.split("/")
    assert owner == user and KAGGLE_SLUG.fullmatch(dataset_slug)
    notebook = nbformat.read(NOTEBOOK_DIR / meta["code_file"], as_version=4)
    parameters = next(c.source for c in notebook.cells if c.cell_type == "code")
    assert f'"CZII_PACK_DIR", "/kaggle/input/{dataset_slug}"' in parameters  # notebook and metadata agree


def test_notebook_is_stored_without_outputs():
    path = NOTEBOOK_DIR / "czii_inference.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.outputs == [] and c.execution_count is None for c in code)
    assert nb.metadata.kernelspec.name == "python3"
    assert path.stat().st_size < 20_000
