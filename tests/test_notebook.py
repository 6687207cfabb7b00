"""The Kaggle notebook, executed headlessly on CPU like Kaggle would run it: czii-kit imported from the packed
wheel (not the checkout), the pack left untouched, and a submission equal to tools/predict.py's."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest
import torch
from nbclient import NotebookClient

from czii_kit.cli.pack_kaggle_dataset import main as pack_main
from czii_kit.cli.predict import main as predict_main
from czii_kit.metric import score
from czii_kit.particles import CLASS_NAMES
from czii_kit.data.open_data import open_data
from czii_kit.submission import read_submission

NOTEBOOKS = Path(__file__).resolve().parents[1] / "kaggle_notebooks"
NOTEBOOK = NOTEBOOKS / "czii_inference.ipynb"
KERNEL = "czii-kit-test"
LOW_THRESHOLD = 0.01  # the 2-epoch model's tuned thresholds find nothing; this finds particles to compare
TTA = "id,x"  # two passes, and not the checkpoint config's default, so the notebook must pass it on


@pytest.fixture(scope="module")
def low_threshold_experiment(tiny_experiment, tmp_path_factory) -> Path:
    """tiny_experiment with every class threshold lowered, so the submission is not empty."""
    ckpt = torch.load(tiny_experiment / "fold0.pt", map_location="cpu", weights_only=True)
    ckpt["thresholds"] = {name: LOW_THRESHOLD for name in CLASS_NAMES}
    out = tmp_path_factory.mktemp("weights") / "tiny-low"
    out.mkdir()
    torch.save(ckpt, out / "fold0.pt")
    shutil.copy2(tiny_experiment / "config.yaml", out / "config.yaml")
    return out


def install_wheels(wheels: Path, target: Path) -> None:
    """What the notebook's install cell runs on Kaggle, into a folder instead of the environment."""
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet", "--target",
                    str(target), *map(str, sorted(wheels.glob("*.whl")))], check=True)


def install_kernelspec(jupyter_path: Path) -> None:
    """A kernel running this interpreter, whatever 'python3' means on this machine."""
    spec = jupyter_path / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "czii-kit test", "language": "python"}))


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def run_notebook(data_root: Path, experiment: Path, tmp_path: Path, monkeypatch, notebook: Path = NOTEBOOK,
                 mount: str = "czii-kit-weights", find_pack: bool = False):
    """Pack ``experiment`` into input/``mount``, install its wheels into a folder, execute the notebook like Kaggle
    would (``find_pack``: no CZII_PACK_DIR, the notebook looks for the pack under input/ by its manifest)."""
    pack_dir = tmp_path / "input" / mount
    assert pack_main(["--weights", str(experiment), "--out", str(pack_dir), "--slug",
                      "czii-kit-weights", "--user", "tester", "--no-progress"]) == 0
    site = tmp_path / "site-packages"
    install_wheels(pack_dir / "wheels", site)
    install_kernelspec(tmp_path / "jupyter")
    for name, value in {"JUPYTER_PATH": tmp_path / "jupyter", "PYTHONPATH": site, "CZII_DATA_ROOT": data_root,
                        "CZII_PACK_DIR": pack_dir, "CZII_OUTPUT": tmp_path / "working" / "submission.csv",
                        "CZII_ENGINE_CACHE": tmp_path / "engines", "CZII_DEVICE": "cpu", "CZII_TTA": TTA,
                        "CZII_ENGINES_DIR": tmp_path / "no-engines"}.items():
        monkeypatch.setenv(name, str(value))
    monkeypatch.delenv("CZII_CONFIG_DIR", raising=False)
    if find_pack:
        monkeypatch.delenv("CZII_PACK_DIR")
        monkeypatch.setenv("CZII_INPUT_ROOT", str(tmp_path / "input"))
    before = snapshot(pack_dir)
    nb = nbformat.read(notebook, as_version=4)
    try:
        NotebookClient(nb, kernel_name=KERNEL, timeout=600, resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        assert snapshot(pack_dir) == before  # /kaggle/input is read-only: nothing may be written there
    return nb, site


def test_notebook_writes_the_same_submission_as_predict(synthetic_root, low_threshold_experiment, tmp_path,
                                                        monkeypatch):
    nb, site = run_notebook(synthetic_root, low_threshold_experiment, tmp_path, monkeypatch)
    assert f"from {site}" in printed(nb)  # czii-kit came from the packed wheel, as on Kaggle
    assert "engine torch" in printed(nb) and "no CUDA GPU" in printed(nb)  # the machine it got, and the choice
    submission = read_submission(tmp_path / "working" / "submission.csv")
    assert len(submission) > 0
    reference = tmp_path / "reference.csv"
    assert predict_main(["--data", str(synthetic_root), "--split", "test", "--weights", str(low_threshold_experiment),
                         "--out", str(reference), "--device", "cpu", "--engine", "torch", "--tta", TTA,
                         "--no-progress"]) == 0
    expected = read_submission(reference)

    def canonical(frame):  # equal scores may swap rows between processes (thread-count rounding)
        return frame.sort_values(["experiment", "particle_type", "x", "y", "z"]).drop(columns="id").reset_index(drop=True)

    pd.testing.assert_frame_equal(canonical(submission), canonical(expected))
    solution = open_data(synthetic_root).solution("test")
    assert score(solution, submission) == score(solution, expected)


def test_notebook_fails_loudly_when_no_test_run_produced_predictions(synthetic_root, low_threshold_experiment,
                                                                     tmp_path, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    from czii_kit.data import layout

    root = tmp_path / "corrupt"
    shutil.copytree(synthetic_root, root)
    for run in layout.list_runs(root, "test"):  # the metadata opens, the voxels do not: found only while predicting
        for chunk in (layout.tomogram_path(root, "test", run) / "0").rglob("*"):
            if chunk.is_file() and not chunk.name.startswith("."):
                chunk.write_bytes(b"corrupt")
    with pytest.raises(CellExecutionError, match="every run failed, so no submission was written"):
        run_notebook(root, low_threshold_experiment, tmp_path, monkeypatch)
    assert not (tmp_path / "working" / "submission.csv").exists()  # nothing for Kaggle to score quietly


def test_build_engines_notebook_stops_loudly_without_a_gpu(synthetic_root, low_threshold_experiment, tmp_path,
                                                            monkeypatch):
    """On Kaggle it builds engines on a T4; here (no GPU, no TensorRT) it must stop with the reason, not pass."""
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("CZII_ENGINES_OUT", str(tmp_path / "engines-out"))
    with pytest.raises(CellExecutionError, match="TensorRT engines need a CUDA GPU and the tensorrt package"):
        run_notebook(synthetic_root, low_threshold_experiment, tmp_path, monkeypatch,
                     notebook=NOTEBOOKS / "czii_build_engines.ipynb")
    assert not (tmp_path / "engines-out" / "engines.json").exists()


def test_notebook_finds_the_pack_by_its_manifest_wherever_kaggle_mounts_it(synthetic_root, low_threshold_experiment,
                                                                          tmp_path, monkeypatch):
    mount = "datasets/tester/czii-kit-weights/versions/3"  # a deeper mount than /kaggle/input/SLUG
    (tmp_path / "input" / "other-dataset" / "sub").mkdir(parents=True)  # something else attached too
    nb, _ = run_notebook(synthetic_root, low_threshold_experiment, tmp_path, monkeypatch, mount=mount,
                         find_pack=True)
    assert f"pack {tmp_path / 'input' / mount}" in printed(nb)
    assert len(read_submission(tmp_path / "working" / "submission.csv")) > 0



def test_the_notebooks_last_cell_raises_on_a_submission_without_rows(tmp_path):
    """Every run predicted but nothing above the thresholds: the notebook stops instead of submitting a silent 0.
    The cell's own text is run, with a header-only submission where the notebook wrote its output."""
    cell = [c for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"][-1]
    empty = tmp_path / "submission.csv"
    empty.write_text("id,experiment,particle_type,x,y,z\n")
    with pytest.raises(RuntimeError, match="has no rows"):
        exec(cell.source, {"OUTPUT": str(empty), "display": print})
