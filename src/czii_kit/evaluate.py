"""Cross-validation report: out-of-fold predictions of every fold checkpoint, one table of post-processing
variants, and the per-class thresholds (and source weights) a full-data model should use.

For each fold the held-out run(s) are predicted once by that fold's checkpoints (3D model and/or YOLO)
through its prediction plan, keeping every raw candidate above a low floor. Every row of the
variants table then re-runs ``czii_kit.infer.predictor.finalize`` on those candidates with its switches (a
source alone or a fusion rule, x post-processing variants), tunes per-class thresholds jointly on
all out-of-fold candidates with the exact metric and scores them. Thresholds are tuned on the same
predictions they are scored on, so the numbers are an upper bound of what fixed thresholds achieve;
use them to compare rows, not as a leaderboard guess.

With several sources, the fusion's source weights are also tuned per class (a source alone, or the
fusion with a weight grid): a class where fusing does not beat the best single source uses that
source alone. The thresholds for the configured post-processing with those weights go to
``thresholds.json`` (``czii_kit.tuning``), which ``tools/predict.py --thresholds-from`` reads.

Outputs in the report folder: report.md (tables, and which class wins at each true particle: the pairs the
model confuses), variants.csv (one row per source x variant),
per_class.csv (threshold, precision, recall, F4 per class and row), thresholds.json,
f4_curves_<source>.png (per-class F4 versus threshold) and overlay_<run>_<source>.png (ground truth
against predictions on one slice: hits, misses and false positives in different colours).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from czii_kit.checkpoints import describe_lineage, load_checkpoint
from czii_kit.config import class_dict, particle_set
from czii_kit.data.folds import fold_runs
from czii_kit.data.open_data import open_data
from czii_kit.data.source import DataSource
from czii_kit.errors import CheckpointError, DataError
from czii_kit.infer.kinds import KINDS, kind_of
from czii_kit.infer.plan import PredictionPlan
from czii_kit.infer.predictor import finalize
from czii_kit.metric import best_thresholds, site_confusion, tuned_score
from czii_kit.post.fusion import FUSION_METHODS
from czii_kit.post.steps import apply_thresholds, with_steps
from czii_kit.tuning import TUNING_FILE, Tuning, save_tuning
from czii_kit.utils.atomic import atomic_path, check_output_folder, write_text_atomic
from czii_kit.utils.checkpoint_files import find_checkpoints
from czii_kit.utils.markdown import markdown_table
from czii_kit.utils.progress import progress_bar
from czii_kit.viz import save_f4_curves, save_hit_overlay

VARIANTS: dict[str, tuple[str, ...]] = {  # name -> post steps enabled
    "plain": (), "merge": ("merge",), "dbscan": ("dbscan",), "offsets": ("offsets",),
    "merge+dbscan+offsets": ("merge", "dbscan", "offsets"),
}
SOURCE_WEIGHT_GRID = (0.5, 1.0, 2.0)  # weight of the last source relative to the others, tried per class


@dataclass
class FoldPrediction:
    """Raw out-of-fold candidates of one held-out run, per source (before post-processing)."""
    fold: int
    run: str
    solution: pd.DataFrame
    sources: dict[str, pd.DataFrame] = field(default_factory=dict)


# --------------------------------------------------------------------------- checkpoints
def fold_checkpoints(weights: list[str | Path], folds: list[int] | None = None) -> dict[int, dict[str, dict]]:
    """fold -> {kind: ckpt} from experiment directories (one checkpoint per kind and fold)."""
    found: dict[int, dict[str, dict]] = {}
    for w in weights:
        for path in find_checkpoints(w, folds):
            ckpt = load_checkpoint(path)
            kind = kind_of(ckpt).name
            slot = found.setdefault(int(ckpt["fold"]), {})
            if kind in slot:
                raise CheckpointError(f"fold {ckpt['fold']} has two {kind} checkpoints ({slot[kind]['path']} and "
                                      f"{path}); pass one experiment per model kind to --weights")
            slot[kind] = ckpt
    return dict(sorted(found.items()))


def lineages(checkpoints: Mapping[int, Mapping[str, Mapping]]) -> dict[str, str]:
    """'fold K KIND' -> where that model started, for the fine-tuned ones (``train.init_from``)."""
    return {f"fold {fold} {kind}": describe_lineage(ckpt["init_from"]) for fold, by_kind in checkpoints.items()
            for kind, ckpt in by_kind.items() if ckpt.get("init_from")}


def held_out_runs(data: DataSource, ckpt: Mapping) -> list[str]:
    """The run(s) the checkpoint's fold held out, by the same split its training used."""
    _, val = fold_runs(data, ckpt["config"]["data"], int(ckpt["fold"]))
    if not val:
        raise CheckpointError(f"{ckpt['path']} was trained on all runs (fold -1): it has no out-of-fold run")
    return val


# --------------------------------------------------------------------------- predictions
def predict_out_of_fold(data: DataSource, checkpoints: dict[int, dict[str, dict]], device: str = "auto",
                        floor: float = 0.05,
                        tta: str | None = None, progress: bool = True) -> list[FoldPrediction]:
    """Raw candidates of every fold's held-out run(s), one source per model kind, through each fold's plan."""
    out = []
    for fold, kinds in progress_bar(checkpoints.items(), total=len(checkpoints), desc="folds", unit="fold",
                                  enabled=progress):
        runs = {kind: held_out_runs(data, ckpt) for kind, ckpt in kinds.items()}
        if len({tuple(r) for r in runs.values()}) > 1:
            raise CheckpointError(f"fold {fold}: the checkpoints of this fold hold out different runs {runs}; "
                                  "train every model kind with the same data.fold_file")
        plan = PredictionPlan.from_checkpoints(list(kinds.values()), tta=tta)
        cfg, predictor = plan.cfg, plan.load(device, "torch")
        for run in next(iter(runs.values())):
            tomogram = data.read_run(run, "train", cfg["data"])
            out.append(FoldPrediction(fold, run, data.read_picks(run, cfg["data"]),
                                      predictor.raw_candidates(tomogram, floor)))
    return out


# --------------------------------------------------------------------------- post-processing variants
def available_sources(preds: list[FoldPrediction]) -> list[str]:
    """Sources predicted on EVERY held-out run (a row must cover all folds), in registry order."""
    return [k for k in KINDS if all(k in p.sources for p in preds)]


def source_rows(sources: list[str]) -> list[str]:
    """Variant rows: each source alone, then (with several) every fusion rule ("fused-<method>")."""
    return sources + ([f"fused-{m}" for m in FUSION_METHODS] if len(sources) > 1 else [])


def row_setup(row: str, sources: list[str], cfg: Mapping, steps: Sequence[str]) -> tuple[list[str], dict]:
    """(sources the row uses, config with its fusion rule and post steps)."""
    variant = {**cfg, "post": with_steps(cfg["post"], steps)}
    if row.startswith("fused-"):
        return sources, {**variant, "fusion": {**cfg["fusion"], "method": row.removeprefix("fused-")}}
    return [row], variant


def candidates_of(preds: list[FoldPrediction], sources: Sequence[str], cfg: Mapping,
                  source_weights: Mapping | None = None) -> pd.DataFrame:
    """``finalize`` (no thresholds) of every held-out run with ``sources``: the candidates a row tunes on."""
    return pd.concat([finalize({s: p.sources[s] for s in sources}, cfg, None, source_weights) for p in preds],
                     ignore_index=True)


def solution_of(preds: list[FoldPrediction]) -> pd.DataFrame:
    return pd.concat([p.solution for p in preds], ignore_index=True)


def variant_table(preds: list[FoldPrediction], cfg: Mapping) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(one row per source x variant: score and per-class F4; long per-class table; candidates per source for plots)."""
    solution = solution_of(preds)
    sources = available_sources(preds)
    particles = particle_set(cfg)
    rows, tables, plain = [], [], {}
    for source in source_rows(sources):
        for variant, steps in VARIANTS.items():
            used, row_cfg = row_setup(source, sources, cfg, steps)
            cands = candidates_of(preds, used, row_cfg)
            thresholds, table, score = tuned_score(solution, cands, particles=particles)
            rows.append({"source": source, "variant": variant, "score": score,
                         **{f"f4_{c}": table.loc[c, "f4"] for c in particles.names}})
            tables.append(table.reset_index().assign(source=source, variant=variant,
                                                      threshold=[thresholds[c] for c in table.index]))
            if variant == "plain":
                plain[source] = (cands, apply_thresholds(cands, thresholds, particles))
    return pd.DataFrame(rows), pd.concat(tables, ignore_index=True), plain


# --------------------------------------------------------------------------- tuning
def weight_options(sources: list[str]) -> list[dict[str, float]]:
    """Per-class choices: each source alone first (ties go to them), then the fusion over a weight grid."""
    alone = [{s: float(s == one) for s in sources} for one in sources]
    fused = [{s: (g if s == sources[-1] else 1.0) for s in sources} for g in SOURCE_WEIGHT_GRID]
    return alone + (fused if len(sources) > 1 else [])


def tune_source_weights(preds: list[FoldPrediction], cfg: Mapping) -> dict[str, dict[str, float]] | None:
    """Per class, the source weights whose out-of-fold F4 (at its best threshold) is highest; None for one source."""
    sources = available_sources(preds)
    if len(sources) < 2:
        return None
    solution = solution_of(preds)
    particles = particle_set(cfg)
    best: dict[str, tuple[float, dict[str, float]]] = {}
    for option in weight_options(sources):
        cands = candidates_of(preds, sources, cfg, dict.fromkeys(particles.names, option))
        _, curves = best_thresholds(solution, cands, particles=particles)
        for name, curve in curves.groupby("particle_type"):
            f4 = float(curve["f4"].max())
            if name not in best or f4 > best[name][0]:
                best[name] = (f4, option)
    return {name: dict(option) for name, (_, option) in best.items()}


def tune(preds: list[FoldPrediction], cfg: Mapping, meta: Mapping) -> tuple[Tuning, pd.DataFrame, float]:
    """Per-class thresholds (and source weights) for the configured pipeline, tuned on all out-of-fold candidates."""
    sources = available_sources(preds)
    weights = tune_source_weights(preds, cfg)
    cands = candidates_of(preds, sources, cfg, weights)
    default = class_dict(cfg, "threshold")
    particles = particle_set(cfg)
    thresholds, table, score = tuned_score(solution_of(preds), cands, fallback=default, particles=particles)
    # a class without any candidate tunes to -inf ("keep all"); at predict time that would keep every voxel
    untuned = [c for c, t in thresholds.items() if not math.isfinite(t)]
    thresholds = {c: default[c] if c in untuned else t for c, t in thresholds.items()}
    info = {**meta, "sources": sources, "score": score, "folds": sorted({p.fold for p in preds}),
            "runs": [p.run for p in preds], "untuned": untuned}
    return Tuning(thresholds, weights, list(particles.names), meta=info), table, score


# --------------------------------------------------------------------------- report
def report_markdown(rows: pd.DataFrame, per_class: pd.DataFrame, preds: list[FoldPrediction],
                    checkpoints: dict[int, dict[str, dict]], pictures: list[Path], tuning: Tuning,
                    tuned_table: pd.DataFrame, confusions: Mapping[str, pd.DataFrame] | None = None) -> str:
    best = rows.loc[rows["score"].idxmax()]
    best_table = per_class[(per_class["source"] == best["source"]) & (per_class["variant"] == best["variant"])]
    kinds = available_sources(preds)
    partial = sorted({k for c in checkpoints.values() for k in c} - set(kinds))
    started = [f"- {model}: {lineage}" for model, lineage in lineages(checkpoints).items()]
    lines = ["# Cross-validation report", "",
             f"Folds: {', '.join(f'{p.fold} ({p.run})' for p in preds)}; models: {', '.join(kinds)}.",
             *(["", "Fine-tuned models:", *started] if started else []),
             "Per-class thresholds are tuned jointly on all out-of-fold candidates of each row and scored on the "
             "same candidates (an upper bound; compare rows with each other).", ""]
    if partial:
        lines += [f"{', '.join(partial)} checkpoints do not cover every fold, so their rows are left out.", ""]
    for kind in KINDS:
        if kind not in kinds and kind not in partial:
            lines += [f"No {kind} checkpoints were given, so {kind} and fused rows are absent.", ""]
    lines += ["## Post-processing variants (final score and per-class F4)", "", markdown_table(rows), "",
              f"## Best row: {best['source']} / {best['variant']} (score {best['score']:.4f})", "",
              markdown_table(best_table[["particle_type", "weight", "threshold", "tp", "fp", "fn", "precision",
                                         "recall", "f4"]].replace(-math.inf, math.nan)), "",  # no candidates
              *([f"No out-of-fold candidates for {', '.join(tuning.meta['untuned'])}: thresholds.json keeps the "
                 "config's default for them.", ""] if tuning.meta["untuned"] else [])]
    weights = tuning.source_weights
    tuned = tuned_table.reset_index().assign(threshold=lambda t: t["particle_type"].map(tuning.thresholds))
    if weights:
        tuned["sources"] = tuned["particle_type"].map(
            lambda c: ", ".join(f"{s} x{w:g}" for s, w in weights.get(c, {}).items() if w > 0))
    lines += [f"## Tuned for prediction: thresholds.json (score {tuning.meta['score']:.4f})", "",
              "The configured pipeline (its post-processing" + (", per-class source weights" if weights else "")
              + ") with per-class thresholds tuned on every out-of-fold candidate; "
              "`tools/predict.py --thresholds-from` this folder uses them.", "",
              markdown_table(tuned[[c for c in ("particle_type", "sources", "threshold", "tp", "fp", "fn",
                                                "precision", "recall", "f4") if c in tuned.columns]]), ""]
    for source, table in (confusions or {}).items():
        lines += [f"## Which class wins at each true particle ({source})", "",
                  "For every out-of-fold particle, the class of the highest-scoring candidate (any class, above the "
                  "floor) within its hit radius: which pairs the model confuses. Peaks are found per class, so such a "
                  "site still counts for its class when that class's own peak passes its threshold; the winning "
                  "class adds a false positive there.", "",
                  markdown_table(table.reset_index()), ""]
    lines += ["## Pictures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    return "\n".join(lines) + "\n"


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def save_pictures(out: Path, data: DataSource, preds: list[FoldPrediction], plain: dict, cfg: Mapping) -> list[Path]:
    """F4 curves per source, and one overlay per held-out run and source (thresholded plain candidates)."""
    solution = solution_of(preds)
    particles = particle_set(cfg)
    pictures = [save_f4_curves(out / f"f4_curves_{source}.png", solution, cands, f"F4 vs threshold: {source}",
                               particles) for source, (cands, _) in plain.items()]
    for pred in preds:
        tomogram = data.read_run(pred.run, "train", cfg["data"])
        for source, (_, kept) in plain.items():
            pictures.append(save_hit_overlay(out / f"overlay_{pred.run}_{source}.png", tomogram.volume, pred.solution,
                                             kept[kept["experiment"] == pred.run], title=f"{pred.run}: {source}",
                                             spacing=tomogram.spacing, particles=particles))
    return pictures


def is_report_file(path: Path) -> bool:
    """A file run_evaluation writes (an earlier report, maybe cut short, is replaced by the next), or a dot-entry (a
    killed write's temporary, the system's own files)."""
    return path.name.startswith(".") or path.is_file() and (path.suffix == ".png" or path.name in (
        "report.md", "variants.csv", "per_class.csv", TUNING_FILE))


def run_evaluation(root, weights: list[str | Path], out: str | Path, folds: list[int] | None = None,
                   device: str = "auto", floor: float = 0.05, tta: str | None = None,
                   progress: bool = True) -> dict:
    """Out-of-fold predictions, the variants table, thresholds.json, tables and pictures into ``out``."""
    out = check_output_folder(out)
    foreign = sorted(p.name for p in out.iterdir() if not is_report_file(p)) if out.is_dir() else []
    if foreign:
        raise DataError(f"--out {out} holds files that are not an evaluate report ({', '.join(foreign[:3])}); choose "
                        "a new --out (an earlier report there is replaced, nothing else is)")
    data = open_data(root)
    data.check_outside(out)
    checkpoints = fold_checkpoints(weights, folds)
    preds = predict_out_of_fold(data, checkpoints, device, floor, tta, progress)
    if not any(len(p.solution) for p in preds):
        raise DataError("the held-out runs have no picks at all, so F4 is undefined; check ROOT/train/overlay")
    cfg = PredictionPlan.from_checkpoints(list(next(iter(checkpoints.values())).values()), tta=tta).cfg
    rows, per_class, plain = variant_table(preds, cfg)
    tuning, tuned_table, _ = tune(preds, cfg, {"weights": [str(w) for w in weights], "floor": floor,
                                               "tta": cfg["infer"]["tta"]})
    out.mkdir(parents=True, exist_ok=True)
    thresholds_file = save_tuning(tuning, out)
    pictures = save_pictures(out, data, preds, plain, cfg)
    write_csv(rows, out / "variants.csv")
    write_csv(per_class, out / "per_class.csv")
    report = out / "report.md"
    particles = particle_set(cfg)
    confusions = {source: site_confusion(solution_of(preds), cands, particles) for source, (cands, _) in plain.items()}
    write_text_atomic(report, report_markdown(rows, per_class, preds, checkpoints, pictures, tuning, tuned_table,
                                              confusions))
    return {"rows": rows, "per_class": per_class, "report": report, "pictures": pictures, "tuning": tuning,
            "thresholds": thresholds_file, "lineage": lineages(checkpoints)}
