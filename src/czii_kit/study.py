"""Recipe ablations that survive seeds: each arm (a list of config overrides) trained with several seeds on the
same fold, every model scored on a held-out test set with the thresholds it tuned on its own validation run;
mean and spread per class and overall. Results are appended to a CSV as they come, so a study resumes where it
stopped.

    python tools/ablate.py --study configs/studies/hard_classes.yaml --test-data data/hard --out reports/hard
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
import yaml

from czii_kit.config import load_config
from czii_kit.data.source import open_data
from czii_kit.errors import ConfigError
from czii_kit.utils.atomic import write_text_atomic

RESULTS = "results.csv"


def load_study(path: str | Path) -> dict:
    """{config, fold, seeds, arms: {name: [overrides]}} from a study YAML, checked (every arm's config loads)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"study file {path} is not readable YAML ({e})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("arms"), Mapping) or not doc["arms"]:
        raise ConfigError(f"study file {path} needs 'arms: {{name: [key=value, ...]}}' (and config, fold, seeds)")
    study = {"config": doc.get("config", "cpu_quick"), "fold": int(doc.get("fold", 0)),
             "seeds": [int(s) for s in doc.get("seeds", [0, 1, 2])], "arms": {}}
    for name, overrides in doc["arms"].items():
        overrides = list(overrides or [])
        load_config(study["config"], overrides)  # unknown keys fail here, before any training
        study["arms"][str(name)] = overrides
    if len(study["seeds"]) < 3:
        raise ConfigError(f"study file {path}: use at least three seeds per arm (differences smaller than the seed "
                          "spread are noise)")
    return study


def run_study(study: Mapping, train_data, test_data, out: str | Path, progress: bool = True) -> pd.DataFrame:
    """Train and score every (arm, seed) not in ``out/results.csv`` yet; returns all results."""
    from czii_kit.predict import predict_submission
    from czii_kit.train import trainer_for

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / RESULTS
    done = pd.read_csv(results_path) if results_path.is_file() else pd.DataFrame(columns=["arm", "seed"])
    test = open_data(test_data)
    for arm, overrides in study["arms"].items():
        for seed in study["seeds"]:
            if ((done["arm"] == arm) & (done["seed"] == seed)).any():
                continue
            cfg = load_config(study["config"], [*overrides, f"seed={seed}"])
            weights = out / "weights" / f"{arm}-seed{seed}"
            trained = trainer_for(cfg)(cfg, study["fold"], train_data, weights, progress=progress)
            report = predict_submission(weights=[weights], data=test, split="test", out=weights / "test.csv",
                                        device="cpu", score=True, progress=False, report=lambda line: None)
            row = {"arm": arm, "seed": seed, "score": report.score, "val_f4": trained["best"]["score"],
                   "epochs": len(trained["log"]), "train_minutes": float(trained["log"]["seconds"].sum() / 60),
                   **{f"f4_{c}": report.table.loc[c, "f4"] for c in report.table.index}}
            done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
            write_text_atomic(results_path, done.to_csv(index=False))
    return done


def summarize(results: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Per arm: mean and standard deviation over seeds of the test score and of each class's F4."""
    columns = ["score", *(f"f4_{c}" for c in classes)]
    grouped = results.groupby("arm", sort=False)[columns]
    mean, spread = grouped.mean(), grouped.std(ddof=1)
    out = pd.DataFrame(index=mean.index)
    for c in columns:
        out[c] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[c], spread[c])]
    out.insert(0, "seeds", grouped.size())
    return out.reset_index()


def verdicts(results: pd.DataFrame, baseline: str, classes: Sequence[str]) -> dict[str, dict[str, str]]:
    """Per arm and metric: 'better' / 'worse' when the mean moved by more than the larger of the two seed spreads
    (standard deviations), else 'noise'."""
    columns = ["score", *(f"f4_{c}" for c in classes)]
    grouped = results.groupby("arm", sort=False)[columns]
    mean, spread = grouped.mean(), grouped.std(ddof=1)
    out = {}
    for arm in mean.index:
        if arm == baseline:
            continue
        out[arm] = {}
        for c in columns:
            delta, noise = mean.loc[arm, c] - mean.loc[baseline, c], max(spread.loc[arm, c], spread.loc[baseline, c])
            out[arm][c] = "noise" if abs(delta) <= noise else ("better" if delta > 0 else "worse")
    return out


def write_report(results: pd.DataFrame, out: str | Path, classes: Sequence[str], baseline: str) -> Path:
    from czii_kit.evaluate import markdown_table

    out = Path(out)
    table = summarize(results, classes)
    lines = ["# Recipe ablation", "", "Mean ± standard deviation over seeds, on the held-out test set, each model with "
             "the thresholds it tuned on its own validation run. A difference smaller than the spreads is noise.", "",
             markdown_table(table), "", "## Against the baseline", "", "```",
             json.dumps(verdicts(results, baseline, classes), indent=1), "```", ""]
    path = out / "ablation.md"
    write_text_atomic(path, "\n".join(lines))
    return path
