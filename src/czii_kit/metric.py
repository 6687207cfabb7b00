"""The Kaggle CZII metric, reproduced exactly (quirks included), and exact threshold tuning.

Official behaviour, kept as is:
- hit radius = particle radius x DISTANCE_MULTIPLIER; a candidate hits a reference at distance <= radius
  (found with ``KDTree.query_ball_tree``, like the official code);
- submission rows of experiments absent from the solution are dropped first; an unknown particle_type
  in the remaining rows is an error;
- only classes present in the solution are scored. Per (experiment, class): no references -> fp = #candidates;
  no candidates -> fn = #references; else tp = #distinct references hit by any candidate,
  fp = #candidates - tp (negative when one candidate hits several references), fn = #references - tp;
- tp/fp/fn are summed over experiments, F-beta (beta=4) per class, and the final score is
  sum(weight x F4 over solution classes) / sum of all six weights;
- radii and weights are the six CZII classes' (``czii_kit.particles.CZII``); every function takes another
  ``particles`` set for a copick project's classes (the same rules, its radii and weights);
- the solution must not repeat an (experiment, x, y, z), whatever the class (the official code asserts it).
One deliberate difference: non-finite coordinates in the scored rows are a clear ``SubmissionError``
(Kaggle's KDTree fails on them too, but it ignores them in classes the solution lacks).

Torch-free on purpose: the metric runs in light processes (tools, notebooks).
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy.spatial import KDTree

from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import BETA, CZII, ParticleSet
from czii_kit.tables import (PICK_COLUMNS, XYZ, require_columns, require_experiment_names, require_finite,
                             require_known_types)

GROUP = ["experiment", "particle_type"]
TABLE_COLUMNS = ["tp", "fp", "fn", "precision", "recall", "f4", "weight", "scored"]
CURVE_COLUMNS = ["particle_type", "threshold", "tp", "fp", "fn", "precision", "recall", "f4"]
_NO_POSITIONS = np.empty(0, dtype=np.intp)


# --------------------------------------------------------------------------- inputs
def _check_solution(solution: pd.DataFrame, particles: ParticleSet) -> None:
    """Ground truth must be complete, finite, of known classes and free of repeated positions."""
    require_columns(solution, PICK_COLUMNS, "solution", DataError)
    require_experiment_names(solution, "solution", DataError)
    require_known_types(solution, "solution", DataError, particles)
    require_finite(solution, XYZ, "solution", DataError)
    repeated = solution.duplicated(subset=["experiment", *XYZ]).to_numpy()
    if repeated.any():
        raise DataError(
            f"solution repeats an (experiment, x, y, z) in {int(repeated.sum())} row(s) "
            f"(first at row {solution.index[np.argmax(repeated)]}); the Kaggle metric rejects such a solution: "
            "drop the duplicates (solution.drop_duplicates(subset=['experiment', 'x', 'y', 'z']))"
        )


def _scored_rows(solution: pd.DataFrame, submission: pd.DataFrame, particles: ParticleSet,
                 extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The submission rows Kaggle looks at (experiments of the solution), checked."""
    require_columns(submission, [*PICK_COLUMNS, *extra], "submission")
    kept = submission[submission["experiment"].isin(solution["experiment"].unique())]
    require_known_types(kept, "submission", particles=particles)
    require_finite(kept, [*XYZ, *extra], "submission")
    return kept


def _positions(df: pd.DataFrame) -> dict[tuple[str, str], np.ndarray]:
    """(experiment, particle_type) -> row positions, computed once per frame."""
    return df.groupby(GROUP, sort=False).indices


def _scored_groups(refs: dict, cands: dict, scored: set[str]) -> list[tuple[str, str]]:
    """Every (experiment, class) with references or candidates, for classes of the solution."""
    return [key for key in refs.keys() | cands.keys() if key[1] in scored]


# --------------------------------------------------------------------------- matching
def _hits(refs: np.ndarray, cands: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(candidate index, reference index) of every pair within ``radius``, as the official query finds them."""
    neighbours = KDTree(cands).query_ball_tree(KDTree(refs), r=radius)
    counts = np.fromiter(map(len, neighbours), dtype=np.intp, count=len(neighbours))
    ref_index = np.fromiter(itertools.chain.from_iterable(neighbours), dtype=np.intp, count=int(counts.sum()))
    return np.repeat(np.arange(len(cands)), counts), ref_index


def _group_counts(refs: np.ndarray, cands: np.ndarray, radius: float) -> tuple[int, int, int]:
    """tp, fp, fn of one (experiment, class), with the official empty-side rules."""
    if len(refs) == 0:
        return 0, len(cands), 0
    if len(cands) == 0:
        return 0, 0, len(refs)
    _, ref_index = _hits(refs, cands, radius)
    tp = int(np.unique(ref_index).size)
    return tp, len(cands) - tp, len(refs) - tp


def _rates(tp, fp, fn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall and F-beta with the official zero conventions (element-wise)."""
    tp, fp, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, fn))
    b2 = BETA**2
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        fbeta = np.where(precision + recall > 0,
                         (1 + b2) * (precision * recall) / (b2 * precision + recall), 0.0)
    return precision, recall, fbeta


# --------------------------------------------------------------------------- score
def score_table(solution: pd.DataFrame, submission: pd.DataFrame, particles: ParticleSet = CZII) -> pd.DataFrame:
    """Per-class tp/fp/fn/precision/recall/f4/weight for every class (``scored`` False: not in solution)."""
    _check_solution(solution, particles)
    submission = _scored_rows(solution, submission, particles)
    ref_xyz = solution[XYZ].to_numpy(dtype=np.float64)
    cand_xyz = submission[XYZ].to_numpy(dtype=np.float64)
    refs, cands = _positions(solution), _positions(submission)
    scored = set(solution["particle_type"])
    counts = {name: np.zeros(3, dtype=np.int64) for name in particles.names}
    for key in _scored_groups(refs, cands, scored):
        counts[key[1]] += _group_counts(ref_xyz[refs.get(key, _NO_POSITIONS)],
                                        cand_xyz[cands.get(key, _NO_POSITIONS)], particles[key[1]].hit_radius)
    table = pd.DataFrame.from_dict(counts, orient="index", columns=["tp", "fp", "fn"])
    table.index.name = "particle_type"
    precision, recall, f4 = _rates(table["tp"], table["fp"], table["fn"])
    is_scored = table.index.isin(list(scored))
    table["precision"] = np.where(is_scored, precision, np.nan)
    table["recall"] = np.where(is_scored, recall, np.nan)
    table["f4"] = np.where(is_scored, f4, np.nan)
    table["weight"] = [particles[name].weight for name in table.index]
    table["scored"] = is_scored
    return table[TABLE_COLUMNS]


def table_score(table: pd.DataFrame) -> float:
    """Final score of a ``score_table``: sum(weight x f4 over scored classes) / sum of all weights."""
    scored = table[table["scored"]]
    return float((scored["f4"] * scored["weight"]).sum() / table["weight"].sum())


def score(solution: pd.DataFrame, submission: pd.DataFrame, particles: ParticleSet = CZII) -> float:
    """The Kaggle leaderboard score of ``submission`` against ``solution``."""
    return table_score(score_table(solution, submission, particles))


def format_table(table: pd.DataFrame, score: float) -> str:
    """Fixed-width per-class table and the final score, for terminals and logs."""
    header = (f"{'particle_type':<20} {'weight':>6} {'tp':>6} {'fp':>6} {'fn':>6} "
              f"{'precision':>9} {'recall':>7} {'f4':>7}")
    lines = [header, "-" * len(header)]
    for name, row in table.iterrows():
        if row["scored"]:
            numbers = (f"{int(row['tp']):>6d} {int(row['fp']):>6d} {int(row['fn']):>6d} "
                       f"{row['precision']:>9.4f} {row['recall']:>7.4f} {row['f4']:>7.4f}")
        else:
            numbers = f"{'-':>6} {'-':>6} {'-':>6} {'-':>9} {'-':>7} {'-':>7}  (not in solution)"
        lines.append(f"{name:<20} {row['weight']:>6g} {numbers}")
    lines.append("-" * len(header))
    lines.append(f"score = sum(weight x f4) / {table['weight'].sum():g} = {score:.6f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- diagnostics
NO_CANDIDATE = "(none)"


def site_confusion(solution: pd.DataFrame, candidates: pd.DataFrame, particles: ParticleSet = CZII) -> pd.DataFrame:
    """Which class wins at each true particle: for every reference, the class of the highest-scoring candidate of
    ANY class within the reference's hit radius (``(none)`` when there is none). Returns counts, one row per true
    class and one column per winning class: which pairs the model confuses. Peaks are found per class, so a site
    another class wins is still found when the true class's own peak passes its threshold; the confusion lowers
    that peak and puts a detection of the winning class (a false positive) on the particle."""
    _check_solution(solution, particles)
    candidates = _scored_rows(solution, candidates, particles, extra=("score",))
    winners = np.full(len(solution), NO_CANDIDATE, dtype=object)
    ref_xyz = solution[XYZ].to_numpy(dtype=np.float64)
    cand_xyz = candidates[XYZ].to_numpy(dtype=np.float64)
    scores = candidates["score"].to_numpy(dtype=np.float64)
    types = candidates["particle_type"].to_numpy(dtype=object)
    by_run = candidates.groupby("experiment", sort=False).indices
    for (run, name), ref_pos in _positions(solution).items():
        cand_pos = by_run.get(run, _NO_POSITIONS)
        if len(cand_pos) == 0:
            continue
        cand_index, ref_index = _hits(ref_xyz[ref_pos], cand_xyz[cand_pos], particles[name].hit_radius)
        order = np.lexsort((-scores[cand_pos][cand_index], ref_index))  # per reference, best candidate first
        first = np.unique(ref_index[order], return_index=True)[1]
        winners[ref_pos[ref_index[order][first]]] = types[cand_pos][cand_index[order][first]]
    present = set(winners)
    columns = [n for n in [*particles.names, NO_CANDIDATE] if n in present]
    table = pd.crosstab(solution["particle_type"].to_numpy(), winners).reindex(columns=columns, fill_value=0)
    table.index.name, table.columns.name = "true class", "highest-scoring class at the site"
    return table.reindex([n for n in particles.names if n in table.index])


def match_hits(solution: pd.DataFrame, predictions: pd.DataFrame,
               particles: ParticleSet = CZII) -> tuple[np.ndarray, np.ndarray]:
    """(reference hit?, prediction hit something?) per row, same class and experiment, within the hit radius."""
    ref_hit, pred_hit = np.zeros(len(solution), bool), np.zeros(len(predictions), bool)
    for (experiment, name), refs in solution.groupby(["experiment", "particle_type"]).indices.items():
        same = predictions["experiment"].eq(experiment).to_numpy() & predictions["particle_type"].eq(name).to_numpy()
        cands = np.flatnonzero(same)
        if len(cands) == 0:
            continue
        pairs = KDTree(predictions[XYZ].to_numpy()[cands]).query_ball_point(
            solution[XYZ].to_numpy()[refs], r=particles[name].hit_radius)
        for ref, hits in zip(refs, pairs):
            ref_hit[ref] = len(hits) > 0
            pred_hit[cands[hits]] = True
    return ref_hit, pred_hit


# --------------------------------------------------------------------------- thresholds
def _count_at_least(values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """For each threshold t, how many values are >= t."""
    ordered = np.sort(values)
    return len(ordered) - np.searchsorted(ordered, thresholds, side="left")


def _check_grid(grid) -> np.ndarray:
    values = np.unique(np.asarray(grid, dtype=np.float64).ravel())
    if values.size == 0 or np.isnan(values).any():
        raise ConfigError(f"threshold grid must be a non-empty array of numbers, got {grid!r}")
    return values


def _default_thresholds(scores: np.ndarray) -> np.ndarray:
    """Every distinct score is an operating point; -inf (keep all) when there is none."""
    return np.unique(scores) if scores.size else np.array([-np.inf])


def _best_hit_scores(solution: pd.DataFrame, candidates: pd.DataFrame, scored: set[str],
                     particles: ParticleSet) -> dict[str, np.ndarray]:
    """Per class: for every reference hit by some candidate, the highest score among its hitters.

    A reference counts as a true positive at threshold t exactly when that score is >= t.
    """
    ref_xyz = solution[XYZ].to_numpy(dtype=np.float64)
    cand_xyz = candidates[XYZ].to_numpy(dtype=np.float64)
    scores = candidates["score"].to_numpy(dtype=np.float64)
    refs, cands = _positions(solution), _positions(candidates)
    best = {name: [np.empty(0)] for name in scored}
    for key in _scored_groups(refs, cands, scored):
        ref_pos, cand_pos = refs.get(key, _NO_POSITIONS), cands.get(key, _NO_POSITIONS)
        if len(ref_pos) and len(cand_pos):
            cand_index, ref_index = _hits(ref_xyz[ref_pos], cand_xyz[cand_pos], particles[key[1]].hit_radius)
            per_ref = np.full(len(ref_pos), -np.inf)
            np.maximum.at(per_ref, ref_index, scores[cand_pos][cand_index])
            best[key[1]].append(per_ref[np.bincount(ref_index, minlength=len(ref_pos)) > 0])
    return {name: np.concatenate(parts) for name, parts in best.items()}


def _curve(name: str, hit_scores: np.ndarray, cand_scores: np.ndarray, n_refs: int,
           thresholds: np.ndarray) -> pd.DataFrame:
    """Exact metric counts of one class when keeping candidates with score >= each threshold."""
    tp = _count_at_least(hit_scores, thresholds)
    fp = _count_at_least(cand_scores, thresholds) - tp
    fn = n_refs - tp
    precision, recall, f4 = _rates(tp, fp, fn)
    return pd.DataFrame({"particle_type": name, "threshold": thresholds, "tp": tp, "fp": fp, "fn": fn,
                         "precision": precision, "recall": recall, "f4": f4})


def pick_threshold(thresholds: np.ndarray, f4: np.ndarray, smooth: int = 0) -> float:
    """The threshold of the highest F4, ties to the lowest; with ``smooth`` = k the F4 curve is first averaged over
    k grid points either side (edge-padded), which prefers a broad plateau to a one-point spike on a small run."""
    f4 = np.asarray(f4, dtype=np.float64)
    if smooth:
        f4 = np.convolve(np.pad(f4, smooth, mode="edge"), np.full(2 * smooth + 1, 1 / (2 * smooth + 1)), mode="valid")
    return float(np.asarray(thresholds)[int(np.argmax(f4))])  # first max = lowest threshold


def lowest_near_best(thresholds: np.ndarray, f4: np.ndarray, tolerance: float) -> float:
    """The lowest threshold whose F4 is within ``tolerance`` of the highest: a recall-leaning pick where the curve
    is flat near its top (or optimistic, on runs the model was trained on)."""
    f4 = np.asarray(f4, dtype=np.float64)
    return float(np.asarray(thresholds)[int(np.argmax(f4 >= f4.max() - tolerance))])


def best_thresholds(solution: pd.DataFrame, candidates: pd.DataFrame, grid: np.ndarray | None = None,
                    particles: ParticleSet = CZII, smooth: int = 0) -> tuple[dict[str, float], pd.DataFrame]:
    """Per-class score threshold maximising the class F4, computed exactly and without re-scoring.

    ``candidates`` is a detections frame with a ``score`` column; keeping rows with score >= t gives
    exactly the tp/fp/fn that ``score_table`` would report. ``grid`` (shared by all classes) defaults to
    each class's distinct candidate scores, which covers every operating point ([-inf] for a class
    without candidates). Ties go to the LOWEST threshold: equal F4, more recall headroom.
    ``smooth`` > 0 (needs ``grid``) picks on the F4 curve averaged over that many grid points either side
    (``pick_threshold``). Only classes of the solution are tuned. Returns ({class: threshold}, long table of
    particle_type, threshold, tp, fp, fn, precision, recall, f4 sorted by class then threshold).
    """
    _check_solution(solution, particles)
    candidates = _scored_rows(solution, candidates, particles, extra=("score",))
    fixed_grid = None if grid is None else _check_grid(grid)
    if smooth and fixed_grid is None:
        raise ConfigError("smoothing the F4 curve needs a fixed threshold grid (grid=...), not every distinct score")
    scored = set(solution["particle_type"])
    hit_scores = _best_hit_scores(solution, candidates, scored, particles)
    n_refs = solution["particle_type"].value_counts()
    cand_scores = {name: group.to_numpy(dtype=np.float64)
                   for name, group in candidates.groupby("particle_type")["score"]}
    best, curves = {}, []
    for name in (n for n in particles.names if n in scored):
        scores = cand_scores.get(name, np.empty(0))
        thresholds = _default_thresholds(scores) if fixed_grid is None else fixed_grid
        curve = _curve(name, hit_scores[name], scores, int(n_refs[name]), thresholds)
        best[name] = pick_threshold(thresholds, curve["f4"].to_numpy(), smooth)
        curves.append(curve)
    table = pd.concat(curves, ignore_index=True) if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    return best, table


def tuned_score(solution: pd.DataFrame, candidates: pd.DataFrame, grid: np.ndarray | None = None,
                fallback: dict[str, float] | None = None,
                particles: ParticleSet = CZII) -> tuple[dict[str, float], pd.DataFrame, float]:
    """Tune per-class thresholds, keep candidates scoring >= them, score exactly: (thresholds, table, score).

    Classes absent from the solution get no tuned threshold: they take ``fallback`` (default: +inf, i.e. dropped).
    """
    tuned, _ = best_thresholds(solution, candidates, grid, particles)
    thresholds = {c: float(tuned.get(c, (fallback or {}).get(c, np.inf))) for c in particles.names}
    limit = candidates["particle_type"].map(thresholds).to_numpy(float)  # float even when empty (pandas 3)
    kept = candidates[candidates["score"].to_numpy(float) >= limit]
    table = score_table(solution, kept, particles)
    return thresholds, table, table_score(table)
