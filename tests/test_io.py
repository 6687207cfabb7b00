import json

import numpy as np
import pandas as pd
import pytest
import zarr

from czii_kit.data import io, layout
from czii_kit.errors import DataError
from czii_kit.particles import VOXEL_SPACING
from czii_kit.tables import PICK_COLUMNS


@pytest.fixture()
def root(tmp_path):
    vol = np.random.default_rng(0).normal(size=(20, 30, 34)).astype(np.float32)
    io.write_tomogram(layout.tomogram_path(tmp_path, "train", "TS_1", "denoised"), vol)
    io.write_picks(tmp_path, "TS_1", "ribosome", np.array([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]]))
    io.write_picks(tmp_path, "TS_1", "apo-ferritin", np.zeros((0, 3)))
    return tmp_path


def test_tomogram_round_trip_and_levels(root):
    vol = io.read_tomogram(root, "TS_1")
    assert vol.shape == (20, 30, 34) and vol.dtype == np.float32
    assert io.tomogram_levels(layout.tomogram_path(root, "train", "TS_1")) == ["0", "1", "2"]
    lvl1 = io.read_tomogram(root, "TS_1", level=1)
    assert lvl1.shape == (10, 15, 17)
    np.testing.assert_allclose(lvl1[0, 0, 0], vol[:2, :2, :2].mean(), rtol=1e-5)
    assert io.read_tomogram(root, "TS_1", level=2).shape == (5, 8, 9)  # odd sizes round up like 315 -> 158
    attrs = zarr.open(str(layout.tomogram_path(root, "train", "TS_1")), mode="r").attrs["multiscales"][0]
    assert attrs["version"] == "0.4"
    assert attrs["datasets"][1]["coordinateTransformations"][0]["scale"] == [2 * VOXEL_SPACING] * 3
    assert [a["name"] for a in attrs["axes"]] == ["z", "y", "x"]


def test_layout_paths(tmp_path):
    p = layout.tomogram_path(tmp_path, "test", "TS_5_4")
    assert p == tmp_path / "test/static/ExperimentRuns/TS_5_4/VoxelSpacing10.000/denoised.zarr"
    assert layout.picks_dir(tmp_path, "TS_5_4") == tmp_path / "train/overlay/ExperimentRuns/TS_5_4/Picks"


def test_list_runs_sorted(root):
    io.write_tomogram(layout.tomogram_path(root, "train", "TS_0", "denoised"), np.ones((4, 4, 4)))
    assert layout.list_runs(root, "train") == ["TS_0", "TS_1"]


def test_picks_round_trip(root):
    df = io.read_picks(root, "TS_1")
    assert list(df.columns) == PICK_COLUMNS
    assert (df["particle_type"] == "ribosome").sum() == 2
    np.testing.assert_allclose(df[["x", "y", "z"]].to_numpy(), [[10, 20, 30], [40, 50, 60]])
    assert set(df["experiment"]) == {"TS_1"}


def test_copick_user_session_file_names(root):
    d = layout.picks_dir(root, "TS_1")
    doc = json.loads((d / "ribosome.json").read_text())
    (d / "ribosome.json").unlink()
    (d / "curation_0_ribosome.json").write_text(json.dumps(doc))
    assert (io.read_picks(root, "TS_1")["particle_type"] == "ribosome").sum() == 2


def test_readers_write_nothing(root):
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    io.read_tomogram(root, "TS_1")
    io.read_all_picks(root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


@pytest.mark.parametrize("call, message", [
    (lambda r: io.read_tomogram(r / "nope", "TS_1"), "does not exist"),
    (lambda r: io.read_tomogram(r, "TS_9"), "run 'TS_9' not found"),
    (lambda r: io.read_tomogram(r, "TS_1", recon="wbp"), "available: denoised"),
    (lambda r: io.read_tomogram(r, "TS_1", level=3), "no level '3'"),
    (lambda r: io.read_tomogram(r, "TS_1", recon="raw"), "unknown reconstruction"),
    (lambda r: layout.list_runs(r, "test"), "no test runs"),
    (lambda r: layout.list_runs(r / "nope", "train"), "a copick config JSON, or make a directory with `czii make-"),
    (lambda r: io.read_picks(r, "TS_2"), "no picks directory"),
])
def test_bad_paths_are_clear(root, call, message):
    with pytest.raises(DataError, match=message):
        call(root)


def test_not_a_multiscale_group(tmp_path):
    bare = tmp_path / "bare.zarr"
    zarr.open(str(bare), mode="w", shape=(4, 4, 4), dtype="f4")
    with pytest.raises(DataError, match="bare zarr array"):
        io.read_level(bare)
    grp = tmp_path / "grp.zarr"
    zarr.open_group(str(grp), mode="w").create_dataset("0", data=np.ones((4, 4, 4), "f4"))
    with pytest.raises(DataError, match="multiscales"):
        io.read_level(grp)
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(DataError, match="junk.zarr"):
        io.read_level(tmp_path / "junk.zarr")


def test_corrupt_chunk(root):
    path = layout.tomogram_path(root, "train", "TS_1")
    chunk = next(p for p in sorted((path / "0").rglob("*")) if p.is_file() and not p.name.startswith("."))
    chunk.write_bytes(b"garbage")
    with pytest.raises(DataError, match="corrupt"):
        io.read_tomogram(root, "TS_1")


def test_corrupt_or_missing_array_metadata_is_named_with_its_fix(root):
    path = layout.tomogram_path(root, "train", "TS_1")
    zarray = path / "0" / ".zarray"
    good = zarray.read_text()
    zarray.write_text("{not json")
    with pytest.raises(DataError, match=r"the array's zarr metadata cannot be read .*copy or download this tomogram"):
        io.read_tomogram(root, "TS_1")
    zarray.unlink()  # the level is listed in .zattrs but gone: an incomplete copy, not another level to choose
    with pytest.raises(DataError, match=r"level 0 is listed in .zattrs but its array \(0/.zarray\) is missing"):
        io.read_tomogram(root, "TS_1")
    zarray.write_text(good)
    assert io.read_tomogram(root, "TS_1").shape == (20, 30, 34)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"pickable_object_name": "ferritin", "points": []}), "unknown particle type 'ferritin'"),
    (json.dumps({"pickable_object_name": "ribosome"}), "no 'points' list"),
    (json.dumps({"pickable_object_name": "ribosome", "points": [{"location": {"x": 1, "y": 2}}]}), "point 0 lacks"),
    (json.dumps({"pickable_object_name": "ribosome", "points": [{"location": {"x": 1, "y": "a", "z": 3}}]}),
     "point 0 lacks"),
    (json.dumps({"pickable_object_name": "ribosome", "points": [{"location": {"x": float("nan"), "y": 1, "z": 3}}]}),
     "non-finite"),
    (json.dumps({"pickable_object_name": "ribosome", "unit": "nm", "points": []}), "unit is 'nm'"),
])
def test_malformed_picks(tmp_path, content, message):
    f = tmp_path / "Picks" / "ribosome.json"
    f.parent.mkdir()
    f.write_text(content)
    with pytest.raises(DataError, match=message) as info:
        io.read_picks_file(f)
    assert str(f) in str(info.value)


def test_empty_picks_dir(root):
    for f in layout.picks_dir(root, "TS_1").glob("*.json"):
        f.unlink()
    with pytest.raises(DataError, match="no \\*.json"):
        io.read_picks(root, "TS_1")


def test_writer_refuses_overwrite(root):
    with pytest.raises(DataError, match="refusing to overwrite"):
        io.write_tomogram(layout.tomogram_path(root, "train", "TS_1"), np.zeros((4, 4, 4)))


def test_read_all_picks_frame(root):
    df = io.read_all_picks(root)
    assert isinstance(df, pd.DataFrame) and len(df) == 2


def test_a_run_folder_without_its_tomograms_is_listed_and_named_not_left_out(root):
    """A test run copied without its data must fail loudly by name (on Kaggle a quiet skip would score lower)."""
    (layout.runs_dir(root, "train") / "TS_empty").mkdir()
    (layout.runs_dir(root, "train") / ".hidden").mkdir()
    assert layout.list_runs(root, "train") == ["TS_1", "TS_empty"]
    with pytest.raises(DataError, match=r"run 'TS_empty' has no 'denoised' .*\(available: none\); its folder holds "
                                        "no tomogram at all"):
        io.read_tomogram(root, "TS_empty")


def test_a_volume_of_another_kind_of_values_is_refused(root):
    path = layout.tomogram_path(root, "train", "TS_1")
    zarr.open_group(str(path), mode="r+").create_dataset("0", data=np.zeros((20, 30, 34), bool), overwrite=True)
    with pytest.raises(DataError, match=r"holds bool values; a tomogram is real-valued"):
        io.read_tomogram(root, "TS_1")
