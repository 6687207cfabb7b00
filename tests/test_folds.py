import pytest

from czii_kit.errors import ConfigError
from czii_kit.data.folds import split_runs

RUNS = ["TS_6_4", "TS_5_4", "TS_99_9", "TS_69_2"]


def test_fold_k_holds_out_sorted_run_k():
    ordered = sorted(RUNS)
    for k in range(4):
        train, val = split_runs(RUNS, k)
        assert val == [ordered[k]] and sorted(train + val) == ordered and ordered[k] not in train


def test_all_runs():
    assert split_runs(RUNS, -1) == (sorted(RUNS), [])


@pytest.mark.parametrize("fold", [4, -2, 100])
def test_out_of_range(fold):
    with pytest.raises(ConfigError, match="0..3"):
        split_runs(RUNS, fold)


def test_fold_file(tmp_path):
    f = tmp_path / "folds.csv"
    f.write_text("run,fold\nTS_5_4,0\nTS_6_4,0\nTS_69_2,1\nTS_99_9,1\n")
    assert split_runs(RUNS, 1, f) == (["TS_5_4", "TS_6_4"], ["TS_69_2", "TS_99_9"])
    with pytest.raises(ConfigError, match="not in"):
        split_runs(RUNS, 2, f)
    f.write_text("run,fold\nTS_X,0\n")
    with pytest.raises(ConfigError, match="TS_X"):
        split_runs(RUNS, 0, f)
    f.write_text("name,k\n")
    with pytest.raises(ConfigError, match="columns"):
        split_runs(RUNS, 0, f)
