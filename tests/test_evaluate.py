"""Cross-validation report: hit/miss matching, joint threshold tuning, and the full report on the tiny data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czii_kit.data.open_data import open_data
from czii_kit.evaluate import VARIANTS, run_evaluation
from czii_kit.metric import match_hits, tuned_score
from czii_kit.utils.markdown import markdown_table
from czii_kit.viz import save_hit_overlay
from czii_kit.particles import CLASS_NAMES, VOXEL_SPACING, particle


def frame(rows, score=False) -> pd.DataFrame:
    cols = ["experiment", "particle_type", "x", "y", "z"] + (["score"] if score else [])
    return pd.DataFrame(rows, columns=cols)


def test_match_hits_marks_hits_misses_and_false_positives():
    r = particle("apo-ferritin").hit_radius
    solution = frame([("TS", "apo-ferritin", 100.0, 100.0, 100.0), ("TS", "apo-ferritin", 400.0, 100.0, 100.0)])
    predictions = frame([("TS", "apo-ferritin", 100.0 + 0.9 * r, 100.0, 100.0, 0.9),  # inside the hit radius
                         ("TS", "apo-ferritin", 400.0 + 1.1 * r, 100.0, 100.0, 0.9),  # just outside: false positive
                         ("TS", "ribosome", 100.0, 100.0, 100.0, 0.9)], score=True)  # wrong class
    ref_hit, pred_hit = match_hits(solution, predictions)
    assert ref_hit.tolist() == [True, False]
    assert pred_hit.tolist() == [True, False, False]


def test_hit_overlay_png(tmp_path):
    volume = np.random.default_rng(0).normal(size=(20, 40, 40)).astype(np.float32)
    z = 10 * VOXEL_SPACING
    solution = frame([("TS", "apo-ferritin", 100.0, 100.0, z), ("TS", "ribosome", 250.0, 250.0, z)])
    predictions = frame([("TS", "apo-ferritin", 100.0, 100.0, z, 0.9)], score=True)
    path = save_hit_overlay(tmp_path / "o.png", volume, solution, predictions, title="t")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perfect_candidates_score_one_and_noise_is_thresholded_away():
    solution = frame([("TS", name, 200.0 * (i + 1), 300.0, 400.0) for i, name in enumerate(CLASS_NAMES)])
    noise = frame([("TS", name, 200.0 * (i + 1), 2000.0, 400.0, 0.1) for i, name in enumerate(CLASS_NAMES)], True)
    candidates = pd.concat([solution.assign(score=0.9), noise], ignore_index=True)
    thresholds, table, score = tuned_score(solution, candidates)
    assert score == pytest.approx(1.0)
    assert all(0.1 < thresholds[c] <= 0.9 for c in CLASS_NAMES)
    assert (table["fp"] == 0).all() and (table["tp"] == 1).all()


def test_markdown_table():
    text = markdown_table(pd.DataFrame({"a": ["x"], "b": [0.5]}))
    assert text.splitlines() == ["| a | b |", "|---|---|", "| x | 0.5000 |"]


def test_unet_only_report(tiny_experiment, synthetic_root, tmp_path):
    result = run_evaluation(synthetic_root, [tiny_experiment], tmp_path / "report", device="cpu", tta="none",
                            progress=False)
    rows = result["rows"]
    assert set(rows["source"]) == {"unet"} and rows["variant"].tolist() == list(VARIANTS)
    assert rows["score"].between(0, 1).all()
    report = (tmp_path / "report" / "report.md").read_text()
    assert "No yolo checkpoints were given, so yolo and fused rows are absent" in report and "| unet | plain |" in report
    confusion = report.split("## Which class wins at each true particle (unet)")[1].split("##")[0]
    rows_md = [line for line in confusion.splitlines() if line.startswith("| ") and "true class" not in line]
    counts = [line.split("|")[2:-1] for line in rows_md]
    picks = open_data(synthetic_root).solution("train", [_held_out(synthetic_root)])
    assert sum(int(c) for row in counts for c in row) == len(picks)  # every held-out particle counted once
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["f4_curves_unet.png", f"overlay_{_held_out(synthetic_root)}_unet.png"]
    per_class = pd.read_csv(tmp_path / "report" / "per_class.csv")
    assert {"precision", "recall", "f4", "threshold"} <= set(per_class.columns)
    assert len(per_class) == len(VARIANTS) * len(CLASS_NAMES)


def test_evaluate_replaces_an_earlier_report_but_writes_into_no_folder_of_other_files(tiny_experiment, synthetic_root,
                                                                                       tmp_path):
    from czii_kit.errors import DataError

    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.md").write_text("mine")
    with pytest.raises(DataError, match="holds files that are not an evaluate report \\(notes.md\\)"):
        run_evaluation(synthetic_root, [tiny_experiment], other, device="cpu", tta="none", progress=False)
    assert [p.name for p in other.iterdir()] == ["notes.md"]
    (other / "notes.md").unlink()
    (other / "report.md").write_text("an earlier report, cut short")
    run_evaluation(synthetic_root, [tiny_experiment], other, device="cpu", tta="none", progress=False)
    assert (other / "report.md").read_text().startswith("# Cross-validation report")


def _held_out(root) -> str:
    from czii_kit.data import layout

    return sorted(layout.list_runs(root, "train"))[0]


def test_report_with_yolo_adds_yolo_and_fused_rows(tiny_experiment, tiny_yolo_experiment, synthetic_root, tmp_path):
    result = run_evaluation(synthetic_root, [tiny_experiment, tiny_yolo_experiment], tmp_path / "report", device="cpu",
                            tta="none", progress=False)
    sources = result["rows"]["source"].unique().tolist()
    assert sources == ["unet", "yolo", "fused-dbscan", "fused-vote"]
    assert len(list((tmp_path / "report").glob("overlay_*.png"))) == 4
    assert "absent" not in (tmp_path / "report" / "report.md").read_text()


def test_a_class_without_candidates_keeps_the_default_threshold_and_is_named():
    from czii_kit.config import load_config
    from czii_kit.evaluate import FoldPrediction, tune

    cfg = load_config("cpu_quick", ["classes.apo-ferritin.threshold=0.25"])
    solution = frame([("TS", "apo-ferritin", 100.0, 100.0, 100.0), ("TS", "ribosome", 900.0, 900.0, 400.0)])
    candidates = frame([("TS", "ribosome", 900.0, 900.0, 400.0, 0.6)], score=True)
    tuning, _, score = tune([FoldPrediction(0, "TS", solution, {"unet": candidates})], cfg, {})
    assert tuning.meta["untuned"] == ["apo-ferritin"] and tuning.thresholds["apo-ferritin"] == 0.25
    assert tuning.thresholds["ribosome"] == pytest.approx(0.6) and 0 < score < 1
