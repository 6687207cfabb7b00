"""Submission files (build, validate, atomic write, read) and the tools/score.py command line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from czii_kit.cli.score import main as score_main
from czii_kit.data import io, layout
from czii_kit.errors import DataError, SubmissionError
from czii_kit.particles import CLASS_NAMES, DISTANCE_MULTIPLIER, RADIUS, WEIGHT
from czii_kit.submission import read_submission, to_submission, validate_submission, write_submission
from czii_kit.tables import SUBMISSION_COLUMNS, read_solution, solution_from_picks

REPO = Path(__file__).resolve().parents[1]
HEADER = ",".join(SUBMISSION_COLUMNS) + "\n"


@pytest.fixture
def detections() -> pd.DataFrame:
    """Unsorted detections with an extra score column and awkward float values."""
    rng = np.random.default_rng(0)
    n = 40
    return pd.DataFrame({
        "experiment": rng.choice(["TS_b", "TS_a", "TS_c"], n),
        "particle_type": rng.choice(CLASS_NAMES, n),
        "x": rng.uniform(0, 6300, n) / 3, "y": rng.uniform(0, 6300, n) * np.pi, "z": rng.uniform(0, 1840, n),
        "score": rng.uniform(size=n),
    })


def _valid_submission(rows: int = 4) -> pd.DataFrame:
    return pd.DataFrame({"id": range(rows), "experiment": "TS_a", "particle_type": "ribosome",
                         "x": np.arange(rows, dtype=float), "y": 1.0, "z": 2.0})


# --------------------------------------------------------------------------- building and round trip
def test_to_submission_sorts_stably_and_numbers_rows(detections):
    sub = to_submission(detections)
    assert list(sub.columns) == SUBMISSION_COLUMNS
    assert sub["id"].tolist() == list(range(len(detections)))
    keys = list(zip(sub.experiment, sub.particle_type))
    assert keys == sorted(keys)
    for (experiment, name), group in sub.groupby(["experiment", "particle_type"]):
        original = detections[(detections.experiment == experiment) & (detections.particle_type == name)]
        assert group["x"].tolist() == original["x"].tolist()  # input order kept inside a group


def test_write_then_read_round_trips_exactly(tmp_path, detections):
    path = write_submission(detections, tmp_path / "out" / "submission.csv")
    back = read_submission(path)
    expected = to_submission(detections)
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert back[["x", "y", "z"]].dtypes.eq(np.float64).all() and back["id"].dtype == np.int64
    assert path.read_text().startswith(HEADER)


def test_empty_detections_write_a_header_only_file(tmp_path):
    empty = pd.DataFrame(columns=["experiment", "particle_type", "x", "y", "z"])
    path = write_submission(empty, tmp_path / "submission.csv")
    assert path.read_text() == HEADER
    back = read_submission(path)
    assert back.empty and list(back.columns) == SUBMISSION_COLUMNS


def test_solution_from_picks_adds_ids_in_pick_order(detections):
    solution = solution_from_picks(detections.drop(columns="score"))
    assert list(solution.columns) == SUBMISSION_COLUMNS
    assert solution["id"].tolist() == list(range(len(detections)))
    assert solution["x"].tolist() == detections["x"].tolist()


def test_to_submission_rejects_missing_experiment(detections):
    detections.loc[3, "experiment"] = None
    with pytest.raises(SubmissionError, match="detections.*'experiment'.*rows 3"):
        to_submission(detections)


# --------------------------------------------------------------------------- atomic writes
def test_failed_write_leaves_the_previous_file_intact(tmp_path, detections, monkeypatch):
    path = tmp_path / "submission.csv"
    path.write_text("previous content\n")

    def half_write(self, target, **kwargs):
        Path(target).write_text("id,experiment,partic")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", half_write)
    with pytest.raises(SubmissionError, match="cannot write submission.*No space left"):
        write_submission(detections, path)
    assert path.read_text() == "previous content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["submission.csv"]  # no temp file left behind


def test_unwritable_path_gives_a_clear_error(tmp_path, detections):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(SubmissionError, match="cannot write submission to .*a_file"):
        write_submission(detections, blocker / "submission.csv")


# --------------------------------------------------------------------------- validation
def _broken(change) -> pd.DataFrame:
    df = _valid_submission().astype({"id": object, "x": object, "experiment": object})
    change(df)
    return df


@pytest.mark.parametrize("change, pattern", [
    (lambda d: d.drop(columns="z", inplace=True), r"missing column.*\bz\b"),
    (lambda d: d.insert(6, "score", 1.0), r"unexpected column.*score"),
    (lambda d: d.__setitem__("id", [0, 1, 2.5, 3]), r"'id'.*non-integer.*rows 2 \(2\.5\)"),
    (lambda d: d.__setitem__("id", [0, 1, "two", 3]), r"'id'.*non-integer.*rows 2 \('two'\)"),
    (lambda d: d.__setitem__("id", [0, 1, 1, 3]), r"'id' repeats.*rows 1 \(1\), 2 \(1\).*renumber"),
    (lambda d: d.__setitem__("experiment", ["TS_a", "", "TS_a", "TS_a"]), r"'experiment' is empty.*rows 1"),
    (lambda d: d.__setitem__("particle_type", ["ribosome", "ribosome", "ribosome", "blob"]),
     r"unknown particle_type.*'blob'.*rows 3.*apo-ferritin"),
    (lambda d: d.__setitem__("x", [0.0, np.inf, 2.0, 3.0]), r"'x'.*not finite.*rows 1 \(inf\)"),
    (lambda d: d.__setitem__("x", [0.0, 1.0, "abc", np.nan]), r"'x'.*2 value.*rows 2 \('abc'\), 3 \(nan\)"),
])
def test_validation_names_source_column_and_rows(change, pattern):
    with pytest.raises(SubmissionError, match=pattern) as info:
        validate_submission(_broken(change), source="my_sub.csv")
    assert str(info.value).startswith("my_sub.csv")


def test_valid_submission_passes_in_any_column_order():
    validate_submission(_valid_submission()[SUBMISSION_COLUMNS[::-1]], source="x.csv")


def test_error_lists_only_a_few_rows():
    df = _valid_submission(rows=50).assign(particle_type="blob")
    with pytest.raises(SubmissionError, match=r"in 50 row\(s\).*and 45 more"):
        validate_submission(df)


@pytest.mark.parametrize("content, pattern", [
    (None, "does not exist"),
    ("", "not a readable CSV"),
    ("a,b\n1,2\n1,2,3,4\n", "not a readable CSV"),
    (HEADER + "0,TS_a,ribosome,1.0,,3.0\n", r"'y'.*rows 0"),
    ("id,experiment,particle_type,x,y\n", "missing column.*z"),
])
def test_read_submission_errors_name_the_file(tmp_path, content, pattern):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SubmissionError, match=pattern) as info:
        read_submission(path)
    assert "bad.csv" in str(info.value)


def test_read_solution_errors_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_solution(tmp_path / "nope.csv")
    (tmp_path / "solution.csv").write_text("id,experiment,x,y,z\n")
    with pytest.raises(DataError, match="solution.csv: missing column.*particle_type"):
        read_solution(tmp_path / "solution.csv")


# --------------------------------------------------------------------------- tools/score.py
def _hand_case(tmp_path) -> tuple[Path, Path, float]:
    """apo-ferritin: 2 refs, 1 found (p=1, r=1/2, F4 = 17/2/(16+1/2) = 17/33); ribosome: 1 of 1 found."""
    near = RADIUS["apo-ferritin"] * DISTANCE_MULTIPLIER / 2
    columns = ["experiment", "particle_type", "x", "y", "z"]
    solution = pd.DataFrame([("TS_a", "apo-ferritin", 100.0, 100.0, 100.0),
                             ("TS_a", "apo-ferritin", 900.0, 900.0, 900.0),
                             ("TS_a", "ribosome", 3000.0, 3000.0, 300.0)], columns=columns)
    detections = pd.DataFrame([("TS_a", "apo-ferritin", 100.0 + near, 100.0, 100.0),
                               ("TS_a", "ribosome", 3000.0, 3010.0, 300.0)], columns=columns)
    solution_path = tmp_path / "solution.csv"
    solution_from_picks(solution).to_csv(solution_path, index=False)
    expected = ((17 / 33) * WEIGHT["apo-ferritin"] + WEIGHT["ribosome"]) / sum(WEIGHT.values())
    return write_submission(detections, tmp_path / "submission.csv"), solution_path, expected


def _run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "score.py"), *args],
                          capture_output=True, text=True, cwd=REPO)


def test_score_tool_json_last_line(tmp_path):
    submission, solution, expected = _hand_case(tmp_path)
    done = _run_tool("--submission", str(submission), "--solution", str(solution), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["score"] == pytest.approx(expected, abs=1e-12)
    apo = result["per_class"]["apo-ferritin"]
    assert (apo["tp"], apo["fp"], apo["fn"], apo["f4"]) == (1, 0, 1, pytest.approx(17 / 33))
    assert result["per_class"]["thyroglobulin"]["f4"] is None and not result["per_class"]["thyroglobulin"]["scored"]
    assert f"{expected:.6f}" in done.stdout


def test_score_tool_bad_submission_exits_2(tmp_path):
    _, solution, _ = _hand_case(tmp_path)
    bad = tmp_path / "broken.csv"
    bad.write_text(HEADER + "0,TS_a,blob,1.0,2.0,3.0\n")
    done = _run_tool("--submission", str(bad), "--solution", str(solution))
    assert done.returncode == 2
    assert "broken.csv" in done.stderr and "blob" in done.stderr and "Traceback" not in done.stderr


def _synthetic_root(tmp_path) -> Path:
    """A minimal competition tree: one train run with ribosome picks (no tomogram needed to score)."""
    root = tmp_path / "data"
    (layout.runs_dir(root, "train") / "TS_a" / layout.VOXEL_SPACING_DIR).mkdir(parents=True)
    io.write_picks(root, "TS_a", "ribosome", np.array([[3000.0, 3000.0, 300.0], [100.0, 100.0, 100.0]]))
    return root


def test_score_tool_reads_train_picks(tmp_path, capsys):
    submission, _, _ = _hand_case(tmp_path)  # finds 1 of the 2 ribosomes, plus an apo-ferritin FP (unscored)
    root = _synthetic_root(tmp_path)
    assert score_main(["--submission", str(submission), "--data", str(root), "--split", "train", "--runs", "TS_a",
                       "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["score"] == pytest.approx((17 / 33) * WEIGHT["ribosome"] / sum(WEIGHT.values()))


def test_score_tool_test_split_without_solution_explains(tmp_path, capsys):
    submission, _, _ = _hand_case(tmp_path)
    root = _synthetic_root(tmp_path)
    assert score_main(["--submission", str(submission), "--data", str(root), "--split", "test"]) == 2
    assert "only for synthetic data" in capsys.readouterr().err


def test_score_tool_test_split_reads_root_solution(tmp_path, capsys):
    submission, solution, expected = _hand_case(tmp_path)
    root = _synthetic_root(tmp_path)
    (root / layout.SOLUTION_CSV).write_text(solution.read_text())
    assert score_main(["--submission", str(submission), "--data", str(root), "--split", "test", "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["score"] == pytest.approx(expected)


def test_score_tool_unknown_run_exits_2(tmp_path, capsys):
    submission, solution, _ = _hand_case(tmp_path)
    assert score_main(["--submission", str(submission), "--solution", str(solution), "--runs", "TS_zz"]) == 2
    assert "TS_zz" in capsys.readouterr().err


def test_score_tool_refuses_a_submission_of_other_runs_and_notes_ignored_ones(tmp_path, capsys):
    """Kaggle ignores rows of runs it does not know: all of them would score 0 in silence, some are named."""
    submission, solution, expected = _hand_case(tmp_path)
    others = tmp_path / "others.csv"
    write_submission(read_submission(submission).assign(experiment="TS_b"), others)
    assert score_main(["--submission", str(others), "--solution", str(solution)]) == 2
    assert "none of the runs of" in capsys.readouterr().err
    assert score_main(["--submission", str(submission), "--solution", str(solution), "--runs", "TS_a"]) == 0
    assert "not scored here" not in capsys.readouterr().out  # --runs names what is scored
    both = tmp_path / "both.csv"
    write_submission(pd.concat([read_submission(submission), read_submission(others)]), both)
    assert score_main(["--submission", str(both), "--solution", str(solution), "--json"]) == 0
    out = capsys.readouterr().out
    assert "1 run(s) of the submission are not scored here and are ignored, as Kaggle does: TS_b" in out
    assert json.loads(out.strip().splitlines()[-1])["score"] == pytest.approx(expected)


def test_score_tool_scores_the_test_split_by_default(tmp_path, capsys):
    submission, solution, expected = _hand_case(tmp_path)
    root = _synthetic_root(tmp_path)
    (root / layout.SOLUTION_CSV).write_text(solution.read_text())
    assert score_main(["--submission", str(submission), "--data", str(root), "--json"]) == 0
    out = capsys.readouterr().out
    assert "(test split)" in out and json.loads(out.strip().splitlines()[-1])["score"] == pytest.approx(expected)
