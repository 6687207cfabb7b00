"""A tomogram with missing chunk files (an interrupted download) reads as zeros in zarr without a word; every reader
refuses it, naming the run, the array, how many chunks are missing and the likely cause, and predict skips that
run (nothing written for it, exit code 1), as for a corrupt run."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from czii_kit.cli.predict import main as predict_main
from czii_kit.config import load_config
from czii_kit.data import io, layout
from czii_kit.errors import DataError, IncompleteDataError
from czii_kit.particles import CLASS_NAMES
from czii_kit.submission import read_submission

LOW = ",".join(f"{c}=0.005" for c in CLASS_NAMES)


def chunk_files(tomogram, level: int = 0):
    return sorted(p for p in (tomogram / str(level)).rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.fixture
def copy_of(synthetic_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(synthetic_root, root)
    return root


def test_every_chunk_counts_on_a_complete_store(synthetic_root):
    run = layout.list_runs(synthetic_root, "test")[0]
    group = io.open_multiscale(layout.tomogram_path(synthetic_root, "test", run))
    for level in ("0", "1", "2"):
        present, expected = io.stored_chunks(group, level)
        assert present == expected == int(np.prod([-(-n // c) for n, c in zip(group[level].shape,
                                                                              group[level].chunks)]))


def test_half_the_chunks_missing_is_refused_by_every_reader(copy_of):
    run = layout.list_runs(copy_of, "test")[0]
    path = layout.tomogram_path(copy_of, "test", run)
    files = chunk_files(path)
    for f in files[::2]:
        f.unlink()
    missing = len(files[::2])
    with pytest.raises(IncompleteDataError) as caught:
        io.read_level(path, 0)
    message = str(caught.value)
    assert run in message and f"missing {missing} of its {len(files)} chunk files" in message
    assert "interrupted" in message and "download it again" in message
    with pytest.raises(IncompleteDataError):  # the metadata check that runs before any tomogram is read
        io.level_geometry(path, 0)
    assert isinstance(caught.value, DataError)
    io.level_geometry(path, 1)  # the other levels are complete


def test_a_store_of_fill_values_only_is_refused(copy_of):
    import zarr

    run = layout.list_runs(copy_of, "test")[0]
    path = layout.tomogram_path(copy_of, "test", run)
    group = zarr.open_group(str(path), mode="r+")
    group["0"][...] = 0.0  # every chunk stored, all of them the fill value
    with pytest.raises(IncompleteDataError, match="nothing but its fill value"):
        io.read_level(path, 0)


def test_predict_skips_the_incomplete_run_says_so_first_and_exits_1(copy_of, tiny_experiment, tmp_path, capsys):
    runs = layout.list_runs(copy_of, "test")
    broken = runs[0]
    for f in chunk_files(layout.tomogram_path(copy_of, "test", broken))[::2]:
        f.unlink()
    out = tmp_path / "s.csv"
    assert predict_main(["--data", str(copy_of), "--weights", str(tiny_experiment), "--out", str(out),
                         "--device", "cpu", "--tta", "none", "--no-progress", "--thresholds", LOW]) == 1
    printed = capsys.readouterr().out
    warning = printed.index(f"WARNING: {broken} will be skipped")
    assert warning < printed.index("set up 1 device(s)")  # said before any model is loaded or tomogram read
    assert f"!!!   {broken}: IncompleteDataError" in printed and "chunk files" in printed
    predicted = set(read_submission(out)["experiment"])
    assert broken not in predicted and predicted == set(runs[1:])


def test_training_refuses_a_run_with_missing_chunks_before_the_first_step(copy_of, tmp_path):
    from czii_kit.train.loop import train_fold

    run = layout.list_runs(copy_of, "train")[1]
    for recon in layout.available_recons(copy_of, "train", run):
        for f in chunk_files(layout.tomogram_path(copy_of, "train", run, recon))[:3]:
            f.unlink()
    cfg = load_config("cpu_quick", ["train.epochs=1", "train.samples_per_epoch=4", "train.batch_size=2",
                                    "model.args.filters=[8,12,16]", "train.patch_size=[32,64,64]",
                                    "infer.window=[48,96,96]"])
    with pytest.raises(IncompleteDataError, match="missing 3 of its"):
        train_fold(cfg, 0, copy_of, tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "fold0.pt").exists()


def test_a_copick_project_over_an_incomplete_run_refuses_it_too(copy_of, tmp_path):
    from czii_kit.data.copick import make_copick_project
    from czii_kit.data.open_data import open_data

    run = layout.list_runs(copy_of, "train")[0]
    for f in chunk_files(layout.tomogram_path(copy_of, "train", run))[:4]:
        f.unlink()
    project = open_data(make_copick_project(copy_of, tmp_path / "cp"))
    data_cfg = load_config("cpu_quick")["data"]
    with pytest.raises(IncompleteDataError, match=f"{run}.*missing 4 of its 18 chunk files.*read as 0.0"):
        project.run_geometry(run, "train", data_cfg)
    project.run_geometry(layout.list_runs(copy_of, "train")[1], "train", data_cfg)
