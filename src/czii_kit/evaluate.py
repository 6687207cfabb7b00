"""Cross-validation report: out-of-fold predictions of every fold checkpoint, one ablation table.

For each fold checkpoint (U-Net and/or YOLO) the held-out run of that fold is predicted once,
keeping every candidate above a low floor. Then, for each source (U-Net, YOLO, the two fusion
rules) and each post-processing variant (none, light merge, DBSCAN, hard-particle offsets, all
three), per-class thresholds are tuned jointly on all out-of-fold candidates with the exact
metric (``best_thresholds``) and the thresholded candidates are scored (``score_table``).
Thresholds are tuned on the same predictions they are scored on, so the numbers are an upper
bound of what fixed thresholds achieve; use them to compare rows, not as a leaderboard guess.

Outputs in the report folder: report.md (tables), ablation.csv (one row per source x variant),
per_class.csv (threshold, precision, recall, F4 per class and row), f4_curves_<source>.png
(per-class F4 versus threshold) and overlay_<run>_<source>.png (ground truth against
predictions on one slice: hits, misses and false positives in different colours).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from czii_kit.data import io, layout
from czii_kit.errors import CheckpointError, DataError
from czii_kit.metric import best_thresholds, tuned_score
from czii_kit.particles import CLASS_NAMES, RADIUS, VOXEL_SPACING, angstrom_to_voxel, particle
from czii_kit.post.fusion import FUSION_METHODS, fuse, fusion_settings
from czii_kit.post.pipeline import apply_thresholds, default_post_config, postprocess
from czii_kit.train.checkpoint import find_checkpoints, load_checkpoint
from czii_kit.train.folds import split_runs
from czii_kit.utils.atomic import atomic_path, write_text_atomic
from czii_kit.viz import busiest_slice, picks_in_slice, save_curves
from czii_kit.yolo.predict import is_yolo_checkpoint

VARIANTS: dict[str, tuple[str, ...]] = {  # name -> post steps enabled
    "plain": (), "merge": ("merge",), "dbscan": ("dbscan",), "offsets": ("offsets",),
    "merge+dbscan+offsets": ("merge", "dbscan", "offsets"),
}
CURVE_GRID = np.round(np.arange(0.0, 1.0 + 1e-9, 0.01), 6)
HIT, MISS, FALSE_POSITIVE = "#2ca02c", "#ff7f0e", "#d62728"


@dataclass
class FoldPrediction:
    """Raw out-of-fold candidates of one held-out run, per source (before post-processing)."""
    fold: int
    run: str
    solution: pd.DataFrame
    sources: dict[str, pd.DataFrame] = field(default_factory=dict)


# --------------------------------------------------------------------------- checkpoints
def fold_checkpoints(weights: list[str | Path], folds: list[int] | None = None) -> dict[int, dict[str, dict]]:
    """fold -> {"unet": ckpt, "yolo": ckpt} from experiment directories (one checkpoint per kind and fold)."""
    found: dict[int, dict[str, dict]] = {}
    for w in weights:
        for path in find_checkpoints(w, folds):
            ckpt = load_checkpoint(path)
            kind = "yolo" if is_yolo_checkpoint(ckpt) else "unet"
            slot = found.setdefault(int(ckpt["fold"]), {})
            if kind in slot:
                raise CheckpointError(f"fold {ckpt['fold']} has two {kind} checkpoints ({slot[kind]['path']} and "
                                      f"{path}); pass one experiment per model kind to --weights")
            slot[kind] = ckpt
    return dict(sorted(found.items()))


def held_out_runs(root, ckpt: Mapping) -> list[str]:
    """The run(s) the checkpoint's fold held out, by the same split its training used."""
    _, val = split_runs(layout.list_runs(root, "train"), int(ckpt["fold"]), ckpt["config"]["data"]["fold_file"])
    if not val:
        raise CheckpointError(f"{ckpt['path']} was trained on all runs (fold -1): it has no out-of-fold run")
    return val


# --------------------------------------------------------------------------- predictions
def unet_candidates(ckpt: Mapping, root, run: str, device: str, floor: float, tta: str | None) -> pd.DataFrame:
    """U-Net peaks of one train run with score >= floor (no post-processing)."""
    from czii_kit.data.normalize import normalize_from_config
    from czii_kit.infer.engines import TorchEngine
    from czii_kit.infer.members import prob_model
    from czii_kit.infer.predictor import Member, predict_probabilities
    from czii_kit.infer.tta import parse_tta
    from czii_kit.post.peaks import find_peaks

    cfg = ckpt["config"]
    volume = io.read_tomogram(root, run, "train", cfg["data"]["recon"], cfg["data"]["level"])
    volume = normalize_from_config(volume, ckpt["normalization"], name=f"run {run}")
    engine = TorchEngine(prob_model(ckpt), tuple(ckpt["window"]), device=device)
    prob = predict_probabilities([Member(engine)], volume, cfg, tta=parse_tta(tta or cfg["infer"]["tta"]))
    return find_peaks(prob, list(CLASS_NAMES), {c: floor for c in CLASS_NAMES}, kernel_frac=cfg["peaks"]["kernel_frac"],
                      stride=int(ckpt["stride"]), experiment=run, topk=cfg["peaks"]["topk"])


def yolo_candidates(ckpt: Mapping, root, run: str, device: str, floor: float) -> pd.DataFrame:
    """YOLO 3D points of one train run with score >= floor."""
    from czii_kit.yolo.predict import make_runner, yolo_points

    cfg = ckpt["config"]
    volume = io.read_tomogram(root, run, "train", cfg["data"]["recon"], cfg["data"]["level"])
    runner = make_runner(ckpt, "torch", device)
    return yolo_points(runner, volume, run, cfg, floor=floor)


def predict_out_of_fold(root, checkpoints: dict[int, dict[str, dict]], device: str = "auto", floor: float = 0.05,
                        tta: str | None = None, progress: bool = True) -> list[FoldPrediction]:
    """Candidates of every fold's held-out run(s) from each of its checkpoints."""
    out = []
    for fold, kinds in tqdm(checkpoints.items(), desc="folds", disable=not progress):
        runs = {kind: held_out_runs(root, ckpt) for kind, ckpt in kinds.items()}
        if len({tuple(r) for r in runs.values()}) > 1:
            raise CheckpointError(f"fold {fold}: the U-Net and YOLO checkpoints hold out different runs {runs}; "
                                  "train both with the same data.fold_file")
        for run in next(iter(runs.values())):
            pred = FoldPrediction(fold, run, io.read_picks(root, run))
            if "unet" in kinds:
                pred.sources["unet"] = unet_candidates(kinds["unet"], root, run, device, floor, tta)
            if "yolo" in kinds:
                pred.sources["yolo"] = yolo_candidates(kinds["yolo"], root, run, device, floor)
            out.append(pred)
    return out


# --------------------------------------------------------------------------- ablation
def post_variant(post_cfg: Mapping, steps: tuple[str, ...]) -> dict:
    """The configured post parameters with exactly ``steps`` enabled."""
    cfg = default_post_config()
    for name, section in (post_cfg or {}).items():
        cfg[name].update(copy.deepcopy(dict(section)))
    for name in cfg:
        cfg[name]["enabled"] = name in steps
    return cfg


def source_candidates(pred: FoldPrediction, source: str, fusion_cfg: Mapping) -> pd.DataFrame:
    """Raw candidates of one source of one run: a model's own, or a fusion rule ("fused-<method>") over all models."""
    if source in pred.sources:
        return pred.sources[source]
    return fuse(pred.sources, **{**fusion_settings(fusion_cfg), "method": source.removeprefix("fused-")})


def available_sources(preds: list[FoldPrediction]) -> list[str]:
    """Model kinds predicted on EVERY held-out run (a row must cover all folds), then the fusion rules."""
    kinds = [k for k in ("unet", "yolo") if all(k in p.sources for p in preds)]
    return kinds + ([f"fused-{m}" for m in FUSION_METHODS] if len(kinds) > 1 else [])


def evaluate_row(candidates: pd.DataFrame, solution: pd.DataFrame) -> tuple[dict[str, float], pd.DataFrame, float]:
    """Thresholds tuned jointly on all candidates, then the exact metric: (thresholds, per-class table, score)."""
    return tuned_score(solution, candidates)


def ablation(preds: list[FoldPrediction], post_cfg: Mapping,
             fusion_cfg: Mapping | None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(one row per source x variant: score and per-class F4; long per-class table; candidates per source for plots)."""
    solution = pd.concat([p.solution for p in preds], ignore_index=True)
    rows, tables, plain = [], [], {}
    for source in available_sources(preds):
        raw = pd.concat([source_candidates(p, source, fusion_cfg) for p in preds], ignore_index=True)
        for variant, steps in VARIANTS.items():
            cands = postprocess(raw, post_variant(post_cfg, steps))
            thresholds, table, score = evaluate_row(cands, solution)
            rows.append({"source": source, "variant": variant, "score": score,
                         **{f"f4_{c}": table.loc[c, "f4"] for c in CLASS_NAMES}})
            tables.append(table.reset_index().assign(source=source, variant=variant,
                                                      threshold=[thresholds[c] for c in table.index]))
            if variant == "plain":
                plain[source] = (cands, apply_thresholds(cands, thresholds))
    return pd.DataFrame(rows), pd.concat(tables, ignore_index=True), plain


# --------------------------------------------------------------------------- pictures
def save_f4_curves(path: Path, solution: pd.DataFrame, candidates: pd.DataFrame, title: str) -> Path:
    """Per-class F4 against a shared threshold grid (exact metric counts at each threshold)."""
    _, curve = best_thresholds(solution, candidates, CURVE_GRID)
    wide = curve.pivot(index="threshold", columns="particle_type", values="f4").reset_index()
    return save_curves(path, wide, x="threshold", ys=[c for c in CLASS_NAMES if c in wide.columns], title=title)


def match_hits(solution: pd.DataFrame, predictions: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(reference hit?, prediction hit something?) per row, same class and experiment, within the hit radius."""
    ref_hit, pred_hit = np.zeros(len(solution), bool), np.zeros(len(predictions), bool)
    for (experiment, name), refs in solution.groupby(["experiment", "particle_type"]).indices.items():
        same = predictions["experiment"].eq(experiment).to_numpy() & predictions["particle_type"].eq(name).to_numpy()
        cands = np.flatnonzero(same)
        if len(cands) == 0:
            continue
        pairs = cKDTree(predictions[["x", "y", "z"]].to_numpy()[cands]).query_ball_point(
            solution[["x", "y", "z"]].to_numpy()[refs], r=particle(name).hit_radius)
        for ref, hits in zip(refs, pairs):
            ref_hit[ref] = len(hits) > 0
            pred_hit[cands[hits]] = True
    return ref_hit, pred_hit


def save_hit_overlay(path: Path, volume: np.ndarray, solution: pd.DataFrame, predictions: pd.DataFrame,
                     z: int | None = None, title: str = "") -> Path:
    """Slice z with ground truth circles (green hit, orange missed) and predictions (green hit, red false positive)."""
    solution, predictions = solution.reset_index(drop=True), predictions.reset_index(drop=True)
    ref_hit, pred_hit = match_hits(solution, predictions)
    z = busiest_slice(solution, volume.shape[0]) if z is None else int(z)
    image = volume[z]
    lo, hi = np.percentile(image, [1, 99])
    fig = Figure(figsize=(8, 8 * image.shape[0] / image.shape[1]), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(image, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    for row, is_hit in zip(picks_in_slice(solution, z).itertuples(), ref_hit[slice_rows(solution, z)]):
        ax.add_patch(Circle((row.x, row.y), row.radius, fill=False, lw=1.5, ec=HIT if is_hit else MISS))
    for row, is_hit in zip(picks_in_slice(predictions, z).itertuples(), pred_hit[slice_rows(predictions, z)]):
        ax.plot(row.x, row.y, marker="x", ms=7, mew=1.8, color=HIT if is_hit else FALSE_POSITIVE)
    handles = [Line2D([], [], ls="none", marker="o", mfc="none", ms=9, color=HIT, label="particle found"),
               Line2D([], [], ls="none", marker="o", mfc="none", ms=9, color=MISS, label="particle missed"),
               Line2D([], [], ls="none", marker="x", color=HIT, label="prediction: hit"),
               Line2D([], [], ls="none", marker="x", color=FALSE_POSITIVE, label="prediction: false positive")]
    ax.set_xlim(-0.5, image.shape[1] - 0.5)
    ax.set_ylim(image.shape[0] - 0.5, -0.5)
    ax.set_title(f"{title}  (z = {z})" if title else f"z = {z}")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def slice_rows(frame: pd.DataFrame, z: int) -> np.ndarray:
    """Positions of the rows whose sphere cuts slice z: the rows ``picks_in_slice`` returns, in its order."""
    z_vox = angstrom_to_voxel(frame[["x", "y", "z"]].to_numpy())[:, 0]
    radius = frame["particle_type"].map(RADIUS).to_numpy(dtype=float) / VOXEL_SPACING
    return np.flatnonzero(np.abs(z_vox - z) < radius)


# --------------------------------------------------------------------------- report
def markdown_table(df: pd.DataFrame, floatfmt: str = "{:.4f}") -> str:
    """A pandas frame as a GitHub markdown table (no tabulate dependency)."""
    def cell(v):
        return floatfmt.format(v) if isinstance(v, (float, np.floating)) else str(v)

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def report_markdown(rows: pd.DataFrame, per_class: pd.DataFrame, preds: list[FoldPrediction],
                    checkpoints: dict[int, dict[str, dict]], pictures: list[Path]) -> str:
    best = rows.loc[rows["score"].idxmax()]
    best_table = per_class[(per_class["source"] == best["source"]) & (per_class["variant"] == best["variant"])]
    kinds = [k for k in ("unet", "yolo") if k in set(rows["source"])]
    partial = sorted({k for c in checkpoints.values() for k in c} - set(kinds))
    lines = ["# Cross-validation report", "",
             f"Folds: {', '.join(f'{p.fold} ({p.run})' for p in preds)}; models: {', '.join(kinds)}.",
             "Per-class thresholds are tuned jointly on all out-of-fold candidates of each row and scored on the "
             "same candidates (an upper bound; compare rows with each other).", ""]
    if partial:
        lines += [f"{', '.join(partial)} checkpoints do not cover every fold, so their rows are left out.", ""]
    for kind, label in (("yolo", "YOLO"), ("unet", "U-Net")):
        if kind not in kinds and kind not in partial:
            lines += [f"No {label} checkpoints were given, so {label} and fused rows are absent.", ""]
    lines += ["## Ablation (final score and per-class F4)", "", markdown_table(rows), "",
              f"## Best row: {best['source']} / {best['variant']} (score {best['score']:.4f})", "",
              markdown_table(best_table[["particle_type", "weight", "threshold", "tp", "fp", "fn",
                                         "precision", "recall", "f4"]]), "", "## Pictures", ""]
    lines += [f"![{p.stem}]({p.name})" for p in pictures]
    return "\n".join(lines) + "\n"


def write_csv(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)


def save_pictures(out: Path, root, preds: list[FoldPrediction], plain: dict) -> list[Path]:
    """F4 curves per source, and one overlay per held-out run and source (thresholded plain candidates)."""
    solution = pd.concat([p.solution for p in preds], ignore_index=True)
    pictures = [save_f4_curves(out / f"f4_curves_{source}.png", solution, cands, f"F4 vs threshold: {source}")
                for source, (cands, _) in plain.items()]
    for pred in preds:
        volume = io.read_tomogram(root, pred.run, "train")
        for source, (_, kept) in plain.items():
            pictures.append(save_hit_overlay(out / f"overlay_{pred.run}_{source}.png", volume, pred.solution,
                                             kept[kept["experiment"] == pred.run], title=f"{pred.run}: {source}"))
    return pictures


def run_evaluation(root, weights: list[str | Path], out: str | Path, folds: list[int] | None = None,
                   device: str = "auto", floor: float = 0.05, tta: str | None = None,
                   progress: bool = True) -> dict:
    """Out-of-fold predictions, ablation, tables and pictures into ``out``; returns the frames and paths."""
    out = Path(out)
    checkpoints = fold_checkpoints(weights, folds)
    preds = predict_out_of_fold(root, checkpoints, device, floor, tta, progress)
    if not any(len(p.solution) for p in preds):
        raise DataError("the held-out runs have no picks at all, so F4 is undefined; check ROOT/train/overlay")
    first = next(iter(checkpoints.values()))
    reference = first.get("unet", first.get("yolo"))["config"]
    fusion_cfg = first["yolo"]["config"].get("fusion") if "yolo" in first else None
    rows, per_class, plain = ablation(preds, reference["post"], fusion_cfg)
    out.mkdir(parents=True, exist_ok=True)
    pictures = save_pictures(out, root, preds, plain)
    write_csv(rows, out / "ablation.csv")
    write_csv(per_class, out / "per_class.csv")
    report = out / "report.md"
    write_text_atomic(report, report_markdown(rows, per_class, preds, checkpoints, pictures))
    return {"rows": rows, "per_class": per_class, "report": report, "pictures": pictures}
