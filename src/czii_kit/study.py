"""Recipe studies that survive seeds: each arm (a list of config overrides) trained with several seeds on the
same fold, every model scored on a held-out test set with the thresholds it carries (tuned on its validation
run; with fold -1, its config's or its starting model's);
mean and spread per class and overall. Results are appended to a CSV as they come, so a study resumes where it
stopped.

    czii study --study configs/studies/hard_classes.yaml --test-data data/hard --out reports/hard
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from czii_kit.config import class_dict, load_config, particle_set
from czii_kit.data.open_data import open_data
from czii_kit.errors import ConfigError, PredictionError
from czii_kit.metric import best_thresholds, lowest_near_best, pick_threshold, score_table, table_score, tuned_score
from czii_kit.post.steps import apply_thresholds
from czii_kit.utils.atomic import check_output_folder, write_text_atomic
from czii_kit.utils.jobs import TrialRunner, in_process
from czii_kit.utils.markdown import markdown_table
from czii_kit.utils.progress import progress_bar

RESULTS = "results.csv"
TRAIN_LOW_TOLERANCE = 0.02  # train-low: the lowest threshold within this much F4 of the best on the training runs
FLOOR = 0.05  # candidates kept down to this score, so thresholds can be tuned on the test split


def model_dir(out: str | Path, arm: str, seed: int) -> Path:
    """Where a study keeps the model of one arm and seed."""
    return Path(out) / "weights" / f"{arm}-seed{int(seed)}"


def tta_suffix(tta: str) -> str:
    """File-name suffix of a TTA setting ('' for none), for caches and reports."""
    return "" if tta == "none" else f"_{tta}"


def load_study(path: str | Path, seeds: Sequence[int] | None = None) -> dict:
    """{config, fold, seeds, arms: {name: [overrides]}} from a study YAML, checked (every arm's config loads).

    An optional top-level ``overrides`` list goes before every arm's own: it pins what the study held fixed (e.g.
    the recipe it measured, after the config's defaults move on), and an arm's own overrides win over it.
    ``seeds`` replaces the file's seeds (more seeds for a study whose spread is too wide to decide)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"study file {path} is not readable YAML ({e})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("arms"), Mapping) or not doc["arms"]:
        raise ConfigError(f"study file {path} needs 'arms: {{name: [key=value, ...]}}' (and config, fold, seeds)")
    study = {"config": doc.get("config", "cpu_quick"), "fold": int(doc.get("fold", 0)),
             "seeds": [int(s) for s in (doc.get("seeds", [0, 1, 2]) if seeds is None else seeds)], "arms": {}}
    common = doc.get("overrides") or []
    if not isinstance(common, list) or not all(isinstance(o, str) for o in common):
        raise ConfigError(f"study file {path}: 'overrides' must be a list of key=value strings, got {common!r}")
    for name, overrides in doc["arms"].items():
        overrides = [*common, *(overrides or [])]
        load_config(study["config"], overrides)  # unknown keys fail here, before any training
        study["arms"][str(name)] = overrides
    if len(set(study["seeds"])) < 3:
        where = f"study file {path}" if seeds is None else "--seeds"
        raise ConfigError(f"{where}: use at least three distinct seeds per arm, got {study['seeds']} "
                          "(differences smaller than the seed spread are noise)")
    return study


@dataclass
class HeldOutScore:
    """One prediction of a test split, scored twice: at given thresholds and at thresholds tuned on the split."""

    fixed: pd.DataFrame  # per-class table at the checkpoints' own thresholds: what a submission gets
    tuned: pd.DataFrame  # with thresholds tuned on the test split itself: the probability maps' quality
    seconds_per_run: float

    def row(self) -> dict:
        return {"score": table_score(self.fixed), "score_tuned": table_score(self.tuned),
                **{f"f4_{c}": self.fixed.loc[c, "f4"] for c in self.fixed.index},
                **{f"tuned_f4_{c}": self.tuned.loc[c, "f4"] for c in self.tuned.index}}


def predict_candidates(plan, data, split: str, runs: Sequence[str] | None = None, out: str | Path | None = None):
    """One quiet prediction of ``split`` (or ``runs`` of it) with ``plan`` (thresholds lowered with
    ``PredictionPlan.down_to``, so that thresholds can be chosen afterwards); the detections are also written to
    ``out`` as a submission when given. Returns the ``SplitResult``."""
    from czii_kit.infer.split import available_devices, predict_split
    from czii_kit.submission import write_submission

    plan = plan.on_runs(open_data(data), split, runs)
    plan.check_fusion()
    result = predict_split(plan, available_devices(plan.cfg["infer"]["device"]), progress=False,
                           report=lambda line: None)
    if result.failures:
        raise PredictionError(f"predicting {split} of {data} failed: {result.failures}")
    if out is not None:
        write_submission(result.detections, out, plan.particles)
    return result


def score_held_out(weights: Sequence[str | Path], data, split: str = "test", overrides: Sequence[str] = (),
                   tta: str | None = "none", device: str = "cpu", floor: float = FLOOR,
                   out: str | Path | None = None) -> HeldOutScore:
    """Predict ``split`` of ``data`` with the one plan (candidates down to ``floor``) and score it at the
    checkpoints' own thresholds and at thresholds tuned on the split."""
    from czii_kit.infer.plan import PredictionPlan

    data = open_data(data)
    plan = PredictionPlan.from_weights(weights, overrides=overrides, tta=tta, device=device)
    own, particles = plan.thresholds, plan.particles
    solution = data.solution(split)
    result = predict_candidates(plan.down_to(floor), data, split, out=out)
    candidates = result.detections
    fixed = score_table(solution, apply_thresholds(candidates, own, particles), particles)
    _, tuned, _ = tuned_score(solution, candidates, particles=particles)
    return HeldOutScore(fixed, tuned, sum(result.seconds.values()) / len(result.seconds))


@dataclass(frozen=True)
class Trial:
    """One (arm, seed) of a study: what a worker needs to train and score it (plain values, absolute paths)."""

    arm: str
    seed: int
    cfg: dict
    fold: int
    train_data: str
    test_data: str
    out: str
    progress: bool = True


def run_trial(trial: Trial) -> dict:
    """Train one (arm, seed) and score it on the test split: its row of results.csv."""
    from czii_kit.train import trainer_for

    weights = model_dir(trial.out, trial.arm, trial.seed)
    trained = trainer_for(trial.cfg)(trial.cfg, trial.fold, trial.train_data, weights, progress=trial.progress)
    held_out = score_held_out([weights], trial.test_data, out=weights / "test.csv")
    return {"arm": trial.arm, "seed": trial.seed, "val_f4": trained["best"]["score"], "epochs": len(trained["log"]),
            "train_minutes": float(trained["log"]["seconds"].sum() / 60), **held_out.row()}


def in_study_order(results: pd.DataFrame, study: Mapping) -> pd.DataFrame:
    """Rows in the order a sequential study writes them: arms as the study lists them, then seeds; rows of arms
    the study file no longer lists stay, after those."""
    arms, seeds = list(study["arms"]), list(study["seeds"])
    key = pd.DataFrame({"arm": [arms.index(a) if a in arms else len(arms) for a in results["arm"]],
                        "seed": [seeds.index(s) if s in seeds else len(seeds) for s in results["seed"]]})
    order = key.sort_values(["arm", "seed"], kind="stable").index
    return results.iloc[order].reset_index(drop=True)


@dataclass
class StudyRun:
    results: pd.DataFrame  # every row of results.csv, in study order
    failures: dict[str, str]  # "arm seed N" -> why (only through a runner that goes on after a failure)


def run_study(study: Mapping, train_data, test_data, out: str | Path, arms: Sequence[str] | None = None,
              progress: bool = True, runner: TrialRunner = in_process) -> StudyRun:
    """Train and score every (arm, seed) not in ``out/results.csv`` yet (only ``arms`` when given); each row is
    saved as it comes. ``runner`` runs the trials (here one after the other, or as Ray trials)."""
    out = check_output_folder(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS
    done = pd.read_csv(results_path) if results_path.is_file() else pd.DataFrame(columns=["arm", "seed"])
    train_location, test_location = (str(Path(str(open_data(d))).resolve()) for d in (train_data, test_data))
    trials = {}
    for arm, overrides in study["arms"].items():
        if arms is not None and arm not in arms:
            continue
        for seed in study["seeds"]:
            if not ((done["arm"] == arm) & (done["seed"] == seed)).any():
                cfg = load_config(study["config"], [*overrides, f"seed={seed}"])
                trials[f"{arm} seed {seed}"] = Trial(arm, seed, cfg, study["fold"], train_location, test_location,
                                                     str(out), progress)

    def save(name: str, row: dict) -> None:
        nonlocal done
        done = in_study_order(pd.concat([done, pd.DataFrame([row])], ignore_index=True), study)
        write_text_atomic(results_path, done.to_csv(index=False))

    failures = runner(run_trial, trials, save)
    return StudyRun(done, failures)


def metric_columns(classes: Sequence[str], tuned: bool = False) -> list[str]:
    """Result columns of the overall score and each class's F4, at own (default) or tuned thresholds."""
    return ["score_tuned", *(f"tuned_f4_{c}" for c in classes)] if tuned else ["score", *(f"f4_{c}" for c in classes)]


def _mean_spread(grouped, columns: Sequence[str], digits: int = 3) -> pd.DataFrame:
    """'mean ± standard deviation' strings per group and column (one format for every study table)."""
    selected = grouped[list(columns)]
    mean, spread = selected.mean(), selected.std(ddof=1)
    return pd.DataFrame({c: [f"{m:.{digits}f} ± {s:.{digits}f}" for m, s in zip(mean[c], spread[c])]
                         for c in columns}, index=mean.index)


def summarize(results: pd.DataFrame, classes: Sequence[str], tuned: bool = False) -> pd.DataFrame:
    """Per arm: mean and standard deviation over seeds of the test score and of each class's F4."""
    grouped = results.groupby("arm", sort=False)
    out = _mean_spread(grouped, metric_columns(classes, tuned))
    out.columns = [c.removeprefix("tuned_") for c in out.columns]
    out.insert(0, "seeds", grouped.size())
    return out.reset_index()


def verdicts(results: pd.DataFrame, baseline: str, classes: Sequence[str],
             tuned: bool = False) -> dict[str, dict[str, str]]:
    """Per arm and metric: 'better' / 'worse' when the mean moved by more than the larger of the two seed spreads
    (standard deviations), else 'noise'."""
    columns = metric_columns(classes, tuned)
    grouped = results.groupby("arm", sort=False)[columns]
    mean, spread = grouped.mean(), grouped.std(ddof=1)
    out = {}
    for arm in mean.index:
        if arm == baseline:
            continue
        out[arm] = {}
        for c in columns:
            delta, noise = mean.loc[arm, c] - mean.loc[baseline, c], max(spread.loc[arm, c], spread.loc[baseline, c])
            verdict = "noise" if abs(delta) <= noise else ("better" if delta > 0 else "worse")
            out[arm][c.removeprefix("tuned_")] = verdict
    return out


MARKS = {"better": " ▲", "worse": " ▼", "noise": ""}


def marked_summary(results: pd.DataFrame, classes: Sequence[str], baseline: str, tuned: bool = False) -> pd.DataFrame:
    """``summarize`` with ▲ / ▼ after every mean that moved beyond the seed spread against ``baseline``."""
    table = summarize(results, classes, tuned)
    for arm, moved in verdicts(results, baseline, classes, tuned).items():
        row = table.index[table["arm"] == arm][0]
        for column, verdict in moved.items():
            table.loc[row, column] += MARKS[verdict]
    return table


def training_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per arm: validation F4, epochs reached and training minutes, mean ± standard deviation."""
    grouped = results.groupby("arm", sort=False)
    parts = [_mean_spread(grouped, ["val_f4"]), _mean_spread(grouped, ["epochs"], 1),
             _mean_spread(grouped, ["train_minutes"], 2)]
    return pd.concat(parts, axis=1).reset_index()


def write_report(results: pd.DataFrame, out: str | Path, classes: Sequence[str], baseline: str) -> Path:
    """out/study.md: per-arm tables at own and at test-tuned thresholds, marked against ``baseline``, and how
    each arm trained (validation F4, epochs reached within the time limit, minutes)."""
    out = Path(out)
    lines = ["# Recipe study", "", f"Mean ± standard deviation over seeds on the held-out test set. ▲ / ▼: the "
             f"mean moved by more than the larger seed spread of the arm and {baseline}; every other difference is "
             "noise.", ""]
    for tuned, title in ((False, "At the thresholds each model carries (what it submits)"),
                         (True, "At thresholds tuned on the test set (the probability maps, free of threshold luck)")):
        lines += [f"## {title}", "", markdown_table(marked_summary(results, classes, baseline, tuned)), ""]
    lines += ["## Training", "", markdown_table(training_summary(results)), ""]
    path = out / "study.md"
    write_text_atomic(path, "\n".join(lines))
    return path


# --------------------------------------------------------------------------- threshold choice
OWN, TEST_TUNED = "own", "test-tuned"


def scored_candidates(weights: Path, data, split: str, runs: Sequence[str] | None, tta: str, cache: Path,
                      floor: float = FLOOR) -> pd.DataFrame:
    """Every detection of one model scoring >= ``floor`` on ``runs`` of ``split``; cached as CSV with what it was
    predicted from beside it (reused only for the same data, split, runs, TTA and floor, and when newer than the
    checkpoint), so comparing threshold rules again costs no prediction."""
    key = {"data": str(Path(data.location).resolve()), "split": split, "runs": sorted(runs) if runs else None,
           "tta": tta, "floor": floor}
    key_path = cache.with_suffix(".json")
    if (cache.is_file() and key_path.is_file() and cache.stat().st_mtime >= weights.stat().st_mtime
            and json.loads(key_path.read_text()) == key):
        return pd.read_csv(cache, dtype={"experiment": str, "particle_type": str})
    from czii_kit.infer.plan import PredictionPlan

    plan = PredictionPlan.from_weights([weights], tta=tta, thresholds=dict.fromkeys(data.particles.names, floor))
    result = predict_candidates(plan, data, split, runs)
    key_path.unlink(missing_ok=True)  # a cache without its key is never reused
    write_text_atomic(cache, result.detections.to_csv(index=False))
    write_text_atomic(key_path, json.dumps(key))
    return result.detections


def study_models(study_dir: str | Path, arms: Sequence[str] | None = None) -> list[tuple[str, int, Path]]:
    """(arm, seed, checkpoint) of every model in a study's results.csv (only ``arms`` when given), checked before
    any prediction."""
    from czii_kit.utils.checkpoint_files import find_checkpoints

    study_dir = Path(study_dir)
    results = study_dir / RESULTS
    if not results.is_file():
        raise ConfigError(f"{results} does not exist: --study-dir must be an --out folder of czii study "
                          "(tools/ablate.py)")
    done = pd.read_csv(results)[["arm", "seed"]]
    unknown = sorted(set(arms or ()) - set(done["arm"]))
    if unknown:
        raise ConfigError(f"arm(s) {', '.join(unknown)} not in {results} ({', '.join(dict.fromkeys(done['arm']))})")
    models = []
    for arm, seed in (done[done["arm"].isin(arms)] if arms else done).itertuples(index=False):
        found = find_checkpoints(model_dir(study_dir, arm, seed))
        if len(found) != 1:
            raise ConfigError(f"{model_dir(study_dir, arm, seed)} holds {len(found)} checkpoints; "
                              "a study model is one fold")
        models.append((str(arm), int(seed), found[0]))
    return models


def no_validation_rules(ckpt: dict, train, runs: Sequence[str], candidates: pd.DataFrame,
                        tolerance: float = TRAIN_LOW_TOLERANCE) -> dict[str, dict[str, float]]:
    """Thresholds for a model trained without a validation run (fold -1), by each rule there is: ``own`` (what its
    checkpoint stores), ``config`` (the config's defaults), ``init`` (the thresholds of the checkpoint it started
    from, when it did), ``train`` (the highest F4 on its own training runs) and ``train-low`` (the lowest threshold
    within ``tolerance`` F4 of that highest: a guard against the optimism of runs the model has seen, leaning to
    recall, which F4 weighs 16 times precision)."""
    from czii_kit.train.experiment import inherited_thresholds, threshold_grid

    cfg, particles = ckpt["config"], particle_set(ckpt["config"])
    grid, default = threshold_grid(cfg), class_dict(cfg, "threshold")
    _, curves = best_thresholds(train.solution("train", runs), candidates, grid, particles)
    rules = {OWN: dict(ckpt["thresholds"]), "config": default,
             "train": {c: pick_threshold(g["threshold"], g["f4"]) for c, g in curves.groupby("particle_type")},
             "train-low": {c: lowest_near_best(g["threshold"], g["f4"], tolerance)
                           for c, g in curves.groupby("particle_type")}}
    if ckpt.get("init_from"):
        rules["init"] = inherited_thresholds(cfg, ckpt["init_from"])
    return {rule: {c: float(picked.get(c, default[c])) for c in particles.names} for rule, picked in rules.items()}


def threshold_rules(study_dir: str | Path, train_data, test_data, smooths: Sequence[int] = (1, 2, 3),
                    ttas: Sequence[str] = ("none",), arms: Sequence[str] | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """Test score of each study model at thresholds picked on its own validation run by each rule: ``own`` (the
    highest F4 on the validation grid, what the checkpoint stores), ``smooth<k>`` (F4 averaged over k grid points
    either side first) and ``test-tuned`` (picked on the test split itself: the ceiling); both predictions with
    each TTA of ``ttas``. A model trained without a validation run (fold -1) gets ``no_validation_rules`` instead,
    picked on its training runs. One row per model, TTA and rule: score, F4 and threshold per class."""
    from czii_kit.checkpoints import load_checkpoint
    from czii_kit.data.folds import fold_runs
    from czii_kit.train.experiment import threshold_grid

    train, test = open_data(train_data), open_data(test_data)
    test_solution = test.solution("test")
    models = [(*model, tta) for tta in ttas for model in study_models(study_dir, arms)]
    rows = []
    for arm, seed, path, tta in progress_bar(models, desc="threshold rules", enabled=progress):
        suffix = tta_suffix(tta)
        ckpt = load_checkpoint(path)
        cfg, particles, runs = ckpt["config"], particle_set(ckpt["config"]), ckpt["validation"]["runs"]
        grid, default = threshold_grid(cfg), class_dict(cfg, "threshold")
        held_out = scored_candidates(path, test, "test", None, tta, path.parent / f"candidates_test{suffix}.csv")
        if runs:
            val = scored_candidates(path, train, "train", runs, tta, path.parent / f"candidates_val{suffix}.csv")
            val_solution = train.solution("train", runs)
            rules = {name: best_thresholds(val_solution, val, grid, particles, smooth=k)[0]
                     for name, k in (("own", 0), *((f"smooth{k}", k) for k in smooths))}
        else:  # trained on every run it had: the rules a model without a validation run can use
            trained_on, _ = fold_runs(train, cfg["data"], int(ckpt["fold"]))  # the split its training used
            seen = scored_candidates(path, train, "train", trained_on, tta,
                                     path.parent / f"candidates_train{suffix}.csv")
            rules = no_validation_rules(ckpt, train, trained_on, seen)
        rules[TEST_TUNED] = best_thresholds(test_solution, held_out, grid, particles)[0]
        for rule, picked in rules.items():
            thresholds = {c: picked.get(c, default[c]) for c in particles.names}
            table = score_table(test_solution, apply_thresholds(held_out, thresholds, particles), particles)
            rows.append({"arm": arm, "seed": seed, "tta": tta, "rule": rule, "score": table_score(table),
                         **{f"f4_{c}": table.loc[c, "f4"] for c in table.index},
                         **{f"threshold_{c}": thresholds[c] for c in particles.names}})
    return pd.DataFrame(rows)


def paired_differences(rows: pd.DataFrame, columns: Sequence[str], reference: str = OWN) -> pd.DataFrame:
    """Per rule: mean ± standard deviation over models of (rule - ``reference``) in each column, and in how many
    of the models where the two differ the rule is higher. Paired: the same models, so seed luck cancels."""
    wide = rows.pivot_table(index=["arm", "seed", "tta"], columns="rule", values=list(columns))
    out = []
    for rule in dict.fromkeys(rows["rule"]):
        if rule == reference:
            continue
        line = {"rule": rule, "models": int(wide[(columns[0], rule)].notna().sum())}
        for c in columns:
            delta = (wide[(c, rule)] - wide[(c, reference)]).dropna()  # models that have both rules
            moved = delta[delta.abs() > 1e-12]
            line[c] = f"{delta.mean():+.3f} ± {delta.std(ddof=1):.3f} ({int((moved > 0).sum())}/{len(moved)} up)"
        out.append(line)
    return pd.DataFrame(out)


def write_threshold_report(rows: pd.DataFrame, out: str | Path, classes: Sequence[str]) -> Path:
    """Markdown: paired score differences of each rule against ``own``, and how far the validation run's
    thresholds sit from the test split's (a bias shared by every model means the run, not the rule)."""
    columns = ["score", *(f"f4_{c}" for c in classes)]
    picked = [f"threshold_{c}" for c in classes]
    ttas = list(dict.fromkeys(rows["tta"]))
    lines = ["# Threshold rules", "", "Test score of each rule minus `own` (the highest validation F4, what "
             "checkpoints store): mean ± standard deviation over models (paired: the same models, so seed luck "
             "cancels), and in how many models the rule scored higher where the two differ.", ""]
    for tta in ttas:
        part = rows[rows["tta"] == tta]
        own, tuned = (part[part["rule"] == r].set_index(["arm", "seed"])[picked] for r in (OWN, TEST_TUNED))
        gap = _mean_spread((own - tuned.reindex(own.index)).assign(models="all").groupby("models"), picked)
        lines += [f"## TTA {tta}: {len(own)} models", "", markdown_table(paired_differences(part, columns)), "",
                  "Own threshold minus test-tuned threshold per class (a bias every model shares belongs to the "
                  "validation run, not to the rule):", "", markdown_table(gap.reset_index(drop=True)), ""]
    if len(ttas) > 1:  # each TTA against the first, at the same rule, on the same models
        lines += [f"## TTA against {ttas[0]}", ""]
        for rule in (OWN, TEST_TUNED):
            same_rule = rows[rows["rule"] == rule].assign(rule=lambda f: f["tta"], tta=rule)
            lines += [f"At `{rule}` thresholds:", "", markdown_table(paired_differences(same_rule, columns, ttas[0])),
                      ""]
    path = Path(out)
    write_text_atomic(path, "\n".join(lines))
    write_text_atomic(path.with_suffix(".csv"), rows.to_csv(index=False))
    return path
