"""czii_kit.metric against an independent brute-force reference and hand-computed cases."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from czii_kit.errors import DataError, SubmissionError
from czii_kit.metric import (NO_CANDIDATE, best_thresholds, format_table, pick_threshold, score, score_table,
                             site_confusion, table_score)
from czii_kit.particles import BETA, CLASS_NAMES, DISTANCE_MULTIPLIER, RADIUS, WEIGHT

COLUMNS = ["experiment", "particle_type", "x", "y", "z"]


# --------------------------------------------------------------------------- independent reference
def _points(df: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    return {key: group[["x", "y", "z"]].to_numpy() for key, group in df.groupby(["experiment", "particle_type"])}


def reference_counts(solution: pd.DataFrame, submission: pd.DataFrame) -> dict[str, list[int]]:
    """The metric's tp/fp/fn per solution class, by nested loops and all pairwise distances."""
    experiments = set(solution["experiment"])
    refs_of, cands_of = _points(solution), _points(submission[submission["experiment"].isin(experiments)])
    totals = {name: [0, 0, 0] for name in solution["particle_type"].unique()}
    for experiment in experiments:
        for name in totals:
            refs = refs_of.get((experiment, name), np.empty((0, 3)))
            cands = cands_of.get((experiment, name), np.empty((0, 3)))
            radius = RADIUS[name] * DISTANCE_MULTIPLIER
            if len(refs) == 0:
                tp, fp, fn = 0, len(cands), 0
            elif len(cands) == 0:
                tp, fp, fn = 0, 0, len(refs)
            else:
                squared = ((cands[:, None, :] - refs[None, :, :]) ** 2).sum(axis=-1)
                tp = len(set(np.nonzero(squared <= radius * radius)[1].tolist()))
                fp, fn = len(cands) - tp, len(refs) - tp
            for i, v in enumerate((tp, fp, fn)):
                totals[name][i] += v
    return totals


def reference_fbeta(tp: int, fp: int, fn: int) -> float:
    precision = tp / (tp + fp) if tp + fp > 0 else 0
    recall = tp / (tp + fn) if tp + fn > 0 else 0
    if precision + recall == 0:
        return 0.0
    return (1 + BETA**2) * precision * recall / (BETA**2 * precision + recall)


def reference_score(solution: pd.DataFrame, submission: pd.DataFrame) -> float:
    totals = reference_counts(solution, submission)
    return sum(reference_fbeta(*t) * WEIGHT[name] for name, t in totals.items()) / sum(WEIGHT.values())


# --------------------------------------------------------------------------- random cases
def _boundary_offsets(radius: float, rng: np.random.Generator) -> np.ndarray:
    """Offsets of norm exactly ``radius`` (3-4-5 triangles, exact in floating point) and just beyond it."""
    exact = np.array([radius * 3 / 5, radius * 4 / 5, 0.0])[rng.permutation(3)] * rng.choice([-1, 1], 3)
    axis = np.array([radius, 0.0, 0.0])[rng.permutation(3)]
    outside = np.array([radius + 0.5, 0.0, 0.0])[rng.permutation(3)]
    return np.stack([exact, axis, outside])


def _midpoints(refs: np.ndarray) -> np.ndarray:
    """Midpoints between half of the references and their nearest neighbour: one candidate, often two hits."""
    squared = ((refs[:, None] - refs[None]) ** 2).sum(-1) + np.diag(np.full(len(refs), np.inf))
    half = np.arange(len(refs) // 2)
    return (refs[half] + refs[np.argmin(squared[half], axis=1)]) / 2


def _candidates_for(refs: np.ndarray, radius: float, box: float, rng: np.random.Generator) -> np.ndarray:
    if len(refs) >= 2 and rng.random() < 0.2:
        return _midpoints(refs)
    parts = [rng.integers(0, 2 * box, (rng.integers(0, 6), 3)) / 2]  # false positives (half-integer lattice)
    if len(refs):
        near = refs[rng.integers(0, len(refs), rng.integers(0, 2 * len(refs) + 1))]
        parts.append(near + rng.uniform(-1.2 * radius, 1.2 * radius, near.shape))  # hits and near misses
        for ref in refs[rng.integers(0, len(refs), rng.integers(0, 3))]:
            parts.append(ref + _boundary_offsets(radius, rng))
    cands = np.concatenate(parts)
    if len(cands) and rng.random() < 0.5:
        cands = np.concatenate([cands, cands[rng.integers(0, len(cands), 3)]])  # duplicate candidates
    return cands


def random_case(rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Crowded small boxes (one candidate often hits several references), empty classes and experiments,
    classes and experiments that only the submission has, duplicates and exact-radius distances."""
    experiments = [f"TS_{i}" for i in range(rng.integers(1, 4))]
    solution_classes = list(rng.choice(CLASS_NAMES, rng.integers(1, len(CLASS_NAMES) + 1), replace=False))
    sol_rows, sub_rows = [], []
    for experiment in experiments:
        box = float(rng.uniform(60, 400))
        for name in CLASS_NAMES:
            n_refs = rng.integers(0, 8) if name in solution_classes else 0
            refs = rng.integers(0, 2 * box, (n_refs, 3)) / 2
            sol_rows += [(experiment, name, *p) for p in refs]
            if rng.random() < 0.85:
                cands = _candidates_for(refs, RADIUS[name] * DISTANCE_MULTIPLIER, box, rng)
                sub_rows += [(experiment, name, *p) for p in cands]
    for _ in range(rng.integers(0, 4)):  # an experiment that only the submission has, with any type
        name = rng.choice([*CLASS_NAMES, "not-a-particle"])
        sub_rows.append(("TS_only_in_submission", name, *rng.uniform(0, 300, 3)))
    solution = pd.DataFrame(sol_rows, columns=COLUMNS).drop_duplicates(subset=["experiment", "x", "y", "z"])
    submission = pd.DataFrame(sub_rows, columns=COLUMNS)
    if len(submission):
        submission = submission.sample(frac=1.0, random_state=int(rng.integers(1 << 31)))
    submission.insert(0, "id", np.arange(len(submission)))
    if solution.empty:  # keep at least one reference so the case is meaningful
        solution = pd.DataFrame([(experiments[0], solution_classes[0], 10.0, 20.0, 30.0)], columns=COLUMNS)
    return solution.reset_index(drop=True), submission.reset_index(drop=True)


@pytest.mark.parametrize("seed", range(4))
def test_score_equals_brute_force_reference(seed):
    rng = np.random.default_rng(seed)
    for _ in range(60):
        solution, submission = random_case(rng)
        table = score_table(solution, submission)
        expected = reference_counts(solution, submission)
        assert set(table.index[table["scored"]]) == set(expected)
        for name, counts in expected.items():
            assert table.loc[name, ["tp", "fp", "fn"]].tolist() == counts, name
            assert table.loc[name, "f4"] == pytest.approx(reference_fbeta(*counts), abs=1e-12)
        assert score(solution, submission) == pytest.approx(reference_score(solution, submission), abs=1e-9)


def test_random_cases_exercise_the_quirks():
    """Guard the generator: negative fp, multi-hit candidates, exact-radius hits, both empty-side rules."""
    rng = np.random.default_rng(123)
    seen = dict(negative_fp=0, multi_hit=0, at_radius=0, no_refs=0, no_cands=0)
    for _ in range(60):
        solution, submission = random_case(rng)
        counts = reference_counts(solution, submission)
        refs_of, cands_of = _points(solution), _points(submission)
        for key in refs_of.keys() | cands_of.keys():
            if key[1] not in counts or key[0] not in set(solution.experiment):
                continue
            refs, cands = refs_of.get(key, np.empty((0, 3))), cands_of.get(key, np.empty((0, 3)))
            seen["no_refs"] += len(refs) == 0
            seen["no_cands"] += len(cands) == 0
            squared = ((cands[:, None] - refs[None]) ** 2).sum(-1)
            radius = RADIUS[key[1]] * DISTANCE_MULTIPLIER
            seen["at_radius"] += int((squared == radius**2).any())
            hits = squared <= radius**2
            seen["multi_hit"] += int((hits.sum(1) > 1).any())
            seen["negative_fp"] += int(len(cands) < hits.any(0).sum())  # this group's fp < 0
    assert all(v > 0 for v in seen.values()), seen


# --------------------------------------------------------------------------- hand-made cases
def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=COLUMNS)


@pytest.fixture
def full_solution() -> pd.DataFrame:
    """Three well separated particles of every class in two runs."""
    rows = [(run, name, 1000.0 * i + 100 * k, 500.0 * k, 250.0 + run_i * 2000)
            for run_i, run in enumerate(["TS_a", "TS_b"])
            for i, name in enumerate(CLASS_NAMES) for k in range(3)]
    return _frame(rows)


def test_perfect_submission_scores_one(full_solution):
    assert score(full_solution, full_solution) == pytest.approx(1.0, abs=1e-12)


def test_empty_submission_scores_zero(full_solution):
    assert score(full_solution, _frame([])) == 0.0


def test_only_beta_amylase_perfect_scores_zero(full_solution):
    """beta-amylase has weight 0, so finding all of them is worth nothing."""
    assert WEIGHT["beta-amylase"] == 0
    only = full_solution[full_solution.particle_type == "beta-amylase"]
    assert score(full_solution, only) == 0.0


@pytest.mark.parametrize("name", [n for n in CLASS_NAMES if WEIGHT[n] > 0])
def test_single_class_perfect_scores_its_weight_share(full_solution, name):
    only = full_solution[full_solution.particle_type == name]
    assert score(full_solution, only) == pytest.approx(WEIGHT[name] / sum(WEIGHT.values()), abs=1e-12)


def test_half_found_with_one_false_positive():
    """2 refs, 1 hit, 1 far candidate: p = r = 1/2, F4 = 17 * 1/4 / (16/2 + 1/2) = 1/2."""
    solution = _frame([("TS_a", "apo-ferritin", 100.0, 100.0, 100.0), ("TS_a", "apo-ferritin", 900.0, 900.0, 900.0)])
    submission = _frame([("TS_a", "apo-ferritin", 110.0, 100.0, 100.0), ("TS_a", "apo-ferritin", 500.0, 500.0, 500.0)])
    table = score_table(solution, submission)
    assert table.loc["apo-ferritin", ["tp", "fp", "fn"]].tolist() == [1, 1, 1]
    assert table.loc["apo-ferritin", "f4"] == pytest.approx(0.5)
    assert score(solution, submission) == pytest.approx(0.5 * WEIGHT["apo-ferritin"] / 7)


def test_one_candidate_matching_two_refs_gives_negative_fp():
    """Official quirk: tp counts distinct refs, fp = candidates - tp = -1, precision 2, F4 = 17*2/(32+1)."""
    solution = _frame([("TS_a", "apo-ferritin", 100.0, 100.0, 100.0), ("TS_a", "apo-ferritin", 110.0, 100.0, 100.0)])
    submission = _frame([("TS_a", "apo-ferritin", 105.0, 100.0, 100.0)])
    table = score_table(solution, submission)
    assert table.loc["apo-ferritin", ["tp", "fp", "fn"]].tolist() == [2, -1, 0]
    assert table.loc["apo-ferritin", "precision"] == pytest.approx(2.0)
    assert score(solution, submission) == pytest.approx((34 / 33) / 7)


def test_distance_exactly_at_radius_is_a_hit_and_beyond_is_not():
    radius = RADIUS["apo-ferritin"] * DISTANCE_MULTIPLIER
    solution = _frame([("TS_a", "apo-ferritin", 0.0, 0.0, 0.0), ("TS_a", "apo-ferritin", 0.0, 1000.0, 0.0)])
    submission = _frame([("TS_a", "apo-ferritin", radius * 3 / 5, radius * 4 / 5, 0.0),
                         ("TS_a", "apo-ferritin", np.nextafter(radius, np.inf), 1000.0, 0.0)])
    assert score_table(solution, submission).loc["apo-ferritin", ["tp", "fp", "fn"]].tolist() == [1, 1, 1]


def test_rows_of_unknown_experiments_are_ignored_even_with_bad_types(full_solution):
    extra = _frame([("TS_elsewhere", "not-a-particle", 1.0, 2.0, 3.0), ("TS_elsewhere", "ribosome", 1.0, 2.0, 3.0)])
    assert score(full_solution, pd.concat([full_solution, extra])) == pytest.approx(1.0)


def test_classes_absent_from_solution_contribute_nothing():
    solution = _frame([("TS_a", "apo-ferritin", 100.0, 100.0, 100.0)])
    junk = _frame([("TS_a", "ribosome", float(i), 0.0, 0.0) for i in range(20)])
    table = score_table(solution, pd.concat([solution, junk]))
    assert score(solution, pd.concat([solution, junk])) == pytest.approx(WEIGHT["apo-ferritin"] / 7)
    assert not table.loc["ribosome", "scored"] and np.isnan(table.loc["ribosome", "f4"])


def test_table_lists_all_classes_in_particle_order(full_solution):
    table = score_table(full_solution.iloc[:3], full_solution)
    assert list(table.index) == list(CLASS_NAMES)
    assert table["weight"].to_dict() == WEIGHT
    assert table["scored"].sum() == 1
    assert table_score(table) == pytest.approx(score(full_solution.iloc[:3], full_solution))


def test_format_table_shows_every_class_and_the_score(full_solution):
    table = score_table(full_solution.iloc[:3], full_solution)
    text = format_table(table, 0.123456)
    assert all(name in text for name in CLASS_NAMES)
    assert "0.123456" in text and text.count("not in solution") == len(CLASS_NAMES) - 1


# --------------------------------------------------------------------------- errors
def test_unknown_particle_type_raises_naming_it_and_the_valid_ones(full_solution):
    bad = pd.concat([full_solution, _frame([("TS_a", "mystery-blob", 1.0, 2.0, 3.0)])])
    with pytest.raises(SubmissionError, match="mystery-blob") as info:
        score(full_solution, bad)
    assert all(name in str(info.value) for name in CLASS_NAMES)


@pytest.mark.parametrize("value", [np.nan, np.inf, "abc"])
def test_non_finite_submission_coordinate_raises(full_solution, value):
    bad = full_solution.astype({"y": object})
    bad.loc[4, "y"] = value
    with pytest.raises(SubmissionError, match=r"'y'.*1 value.*rows 4"):
        score(full_solution, bad)


def test_missing_submission_column_raises(full_solution):
    with pytest.raises(SubmissionError, match="missing column.*particle_type"):
        score(full_solution, full_solution.drop(columns="particle_type"))


def test_solution_with_repeated_position_is_rejected(full_solution):
    repeated = pd.concat([full_solution, full_solution.iloc[[0]].assign(particle_type="ribosome")])
    with pytest.raises(DataError, match="repeats"):
        score(repeated, full_solution)


def test_solution_with_unknown_type_is_rejected(full_solution):
    with pytest.raises(DataError, match="unknown particle_type"):
        score(full_solution.assign(particle_type="mystery-blob"), full_solution)


# --------------------------------------------------------------------------- thresholds
def _with_scores(submission: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    return submission.assign(score=rng.integers(0, 10, len(submission)) / 10)  # many ties on purpose


def _brute_force_best(curve: pd.DataFrame) -> float:
    """Lowest threshold among those with the highest F4."""
    top = curve["f4"].max()
    return float(curve.loc[curve["f4"] == top, "threshold"].min())


@pytest.mark.parametrize("seed", range(2))
def test_best_thresholds_equal_rescoring_at_each_threshold(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(12):
        solution, submission = random_case(rng)
        candidates = _with_scores(submission, rng)
        grid = np.unique(np.concatenate([np.linspace(-0.05, 1.05, 7), candidates["score"].to_numpy()[:4]]))
        best, curves = best_thresholds(solution, candidates, grid)
        scored = list(dict.fromkeys(n for n in CLASS_NAMES if n in set(solution.particle_type)))
        assert list(best) == scored
        for t in grid:
            table = score_table(solution, candidates[candidates["score"] >= t])
            at_t = curves[curves["threshold"] == t].set_index("particle_type")
            for name in scored:
                assert at_t.loc[name, ["tp", "fp", "fn"]].tolist() == table.loc[name, ["tp", "fp", "fn"]].tolist()
                assert at_t.loc[name, "f4"] == pytest.approx(table.loc[name, "f4"], abs=1e-12)
        for name in scored:
            assert best[name] == _brute_force_best(curves[curves["particle_type"] == name])


def test_default_grid_covers_every_distinct_score():
    rng = np.random.default_rng(7)
    solution, submission = random_case(rng)
    candidates = _with_scores(submission, rng)
    best, curves = best_thresholds(solution, candidates)
    kept = candidates[candidates["experiment"].isin(set(solution.experiment))]
    for name in best:
        curve = curves[curves["particle_type"] == name]
        scores = np.unique(kept.loc[kept.particle_type == name, "score"])
        assert curve["threshold"].tolist() == (scores.tolist() if len(scores) else [-np.inf])
        for _, row in curve.iterrows():
            table = score_table(solution, candidates[candidates["score"] >= row["threshold"]])
            assert [row["tp"], row["fp"], row["fn"]] == table.loc[name, ["tp", "fp", "fn"]].tolist()
        assert best[name] == _brute_force_best(curve)


def test_best_threshold_prefers_the_lowest_among_ties():
    """One ref, one hit scored 0.5 and nothing else: every threshold <= 0.5 gives F4 = 1; pick the lowest."""
    solution = _frame([("TS_a", "ribosome", 0.0, 0.0, 0.0)])
    candidates = _frame([("TS_a", "ribosome", 1.0, 0.0, 0.0)]).assign(score=0.5)
    best, curves = best_thresholds(solution, candidates, grid=np.array([0.9, 0.1, 0.3, 0.5]))
    assert best == {"ribosome": 0.1}
    assert curves["f4"].tolist() == [1.0, 1.0, 1.0, 0.0]


def test_best_thresholds_need_a_score_column(full_solution):
    with pytest.raises(SubmissionError, match="score"):
        best_thresholds(full_solution, full_solution)


# --------------------------------------------------------------------------- site confusion
def test_site_confusion_names_the_highest_scoring_class_inside_the_hit_radius():
    """Three beta-gal sites: its own channel wins one, thyroglobulin outscores it at another, the third has only a
    candidate just beyond beta-gal's hit radius (45 A); a thyroglobulin site in another run is won by its class."""
    solution = _frame([("TS_a", "beta-galactosidase", 0.0, 0.0, 0.0), ("TS_a", "beta-galactosidase", 1000.0, 0.0, 0.0),
                       ("TS_a", "beta-galactosidase", 2000.0, 0.0, 0.0), ("TS_b", "thyroglobulin", 0.0, 0.0, 0.0)])
    candidates = _frame([("TS_a", "beta-galactosidase", 10.0, 0.0, 0.0), ("TS_a", "thyroglobulin", 0.0, 10.0, 0.0),
                         ("TS_a", "beta-galactosidase", 1000.0, 0.0, 0.0), ("TS_a", "thyroglobulin", 1000.0, 0.0, 20.0),
                         ("TS_a", "apo-ferritin", 2046.0, 0.0, 0.0), ("TS_a", "thyroglobulin", 2000.0, 0.0, 500.0),
                         ("TS_b", "thyroglobulin", 0.0, 0.0, 30.0), ("TS_b", "apo-ferritin", 5.0, 0.0, 0.0)])
    candidates["score"] = [0.6, 0.5, 0.3, 0.7, 0.9, 0.9, 0.8, 0.2]
    table = site_confusion(solution, candidates)
    assert table.index.tolist() == ["beta-galactosidase", "thyroglobulin"]
    assert table.loc["beta-galactosidase"].to_dict() == {"beta-galactosidase": 1, "thyroglobulin": 1, NO_CANDIDATE: 1}
    assert table.loc["thyroglobulin"].to_dict() == {"beta-galactosidase": 0, "thyroglobulin": 1, NO_CANDIDATE: 0}
    assert int(table.to_numpy().sum()) == len(solution)


def test_site_confusion_needs_scores(full_solution):
    with pytest.raises(SubmissionError, match="score"):
        site_confusion(full_solution, full_solution)


# --------------------------------------------------------------------------- imports
def test_metric_does_not_import_torch():
    code = "import sys, czii_kit.metric; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_another_particle_set_scores_with_its_own_radii_and_weights():
    from czii_kit.particles import Particle, ParticleSet

    project = ParticleSet((Particle("big", 200.0, 3.0), Particle("small", 40.0, 1.0)))
    solution = pd.DataFrame({"experiment": "r", "particle_type": ["big", "small"], "x": [0.0, 1000.0],
                             "y": 0.0, "z": 0.0})
    # 90 Å off: inside big's hit radius (100 Å), outside small's (20 Å)
    submission = solution.assign(x=solution["x"] + 90.0)
    table = score_table(solution, submission, project)
    assert table.loc["big", "tp"] == 1 and table.loc["small", "tp"] == 0
    assert score(solution, submission, project) == pytest.approx(3.0 / 4.0)  # (3 x 1 + 1 x 0) / (3 + 1)
    with pytest.raises(SubmissionError, match="unknown particle_type value"):
        score(solution, submission.assign(particle_type="ribosome"), project)


def test_pick_threshold_prefers_a_plateau_when_smoothed():
    thresholds = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    f4 = np.array([0.7, 0.7, 0.7, 0.0, 0.8, 0.0])  # a broad plateau and a one-point spike
    assert pick_threshold(thresholds, f4) == 0.5
    assert pick_threshold(thresholds, f4, smooth=1) == 0.1  # window means .70 .70 .47 .50 .27 .00
    assert pick_threshold(thresholds[:3], np.array([0.2, 0.9, 0.9])) == 0.2  # ties go to the lowest threshold


def test_smoothing_needs_a_fixed_grid():
    from czii_kit.errors import ConfigError

    solution = pd.DataFrame({"experiment": ["r"], "particle_type": ["ribosome"], "x": [100.0], "y": [100.0],
                             "z": [100.0]})
    candidates = solution.assign(score=0.8)
    assert best_thresholds(solution, candidates, np.array([0.5, 0.9]), smooth=1)[0] == {"ribosome": 0.5}
    with pytest.raises(ConfigError, match="fixed threshold grid"):
        best_thresholds(solution, candidates, smooth=1)
