"""Post-processing switches on hand-made detections with known answers."""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from czii_kit.config import load_config
from czii_kit.errors import ConfigError, DataError
from czii_kit.particles import RADIUS
from czii_kit.post import (
    POSTPROCESSORS,
    add_hard_particle_offsets,
    apply_thresholds,
    dbscan_merge,
    merge_close,
    postprocess,
    with_steps,
)

BASE_POST = load_config()["post"]  # the defaults live in configs/base.yaml only


def settings(step: str, **changes) -> dict:
    """A step's base.yaml settings (without ``enabled``), with ``changes``."""
    return {**{k: v for k, v in BASE_POST[step].items() if k != "enabled"}, **changes}

THYRO, BGAL, APO = "thyroglobulin", "beta-galactosidase", "apo-ferritin"
ORIGIN = np.array([2000.0, 3000.0, 1000.0])


def detections(*rows) -> pd.DataFrame:
    """Rows of (experiment, particle_type, (x, y, z), score)."""
    return pd.DataFrame(
        [{"experiment": e, "particle_type": p, "x": xyz[0], "y": xyz[1], "z": xyz[2], "score": s}
         for e, p, xyz, s in rows]
    )


def positions(df: pd.DataFrame) -> np.ndarray:
    return df[["x", "y", "z"]].to_numpy()


def sorted_rows(points: np.ndarray) -> np.ndarray:
    return points[np.lexsort(points.T[::-1])]


def expected_offsets(centre: np.ndarray, radius: float, primary: float = 0.116, diagonal: float = 0.100) -> np.ndarray:
    """The spec written out: 6 axis offsets at primary*R, 8 diagonal ones at diagonal*R."""
    axis_steps = [s * primary * radius * np.eye(3)[a] for a in range(3) for s in (1, -1)]
    signs = itertools.product((1, -1), repeat=3)
    diagonal_steps = [diagonal * radius * np.array(sign) / np.sqrt(3) for sign in signs]
    return centre + np.array(axis_steps + diagonal_steps)


# --------------------------------------------------------------------------- offsets
def test_offsets_of_a_single_detection_are_exactly_the_14_points():
    out = add_hard_particle_offsets(detections(("run", THYRO, ORIGIN, 0.8)), **settings("offsets", score_factor=0.5))
    assert out["source"].tolist() == ["peak"] + ["offset"] * 14
    new = out[out["source"] == "offset"]
    np.testing.assert_allclose(sorted_rows(positions(new)), sorted_rows(expected_offsets(ORIGIN, RADIUS[THYRO])))
    distances = np.linalg.norm(positions(new) - ORIGIN, axis=1)
    np.testing.assert_allclose(sorted(distances), [0.1 * RADIUS[THYRO]] * 8 + [0.116 * RADIUS[THYRO]] * 6)
    assert new["score"].tolist() == pytest.approx([0.4] * 14)
    assert (new["experiment"] == "run").all() and (new["particle_type"] == THYRO).all()


def test_offsets_skip_classes_not_asked_for_and_keep_existing_source():
    df = detections(("run", APO, ORIGIN, 0.8)).assign(source="merged")
    out = add_hard_particle_offsets(df, **settings("offsets"))
    assert len(out) == 1 and out["source"].tolist() == ["merged"]
    assert len(add_hard_particle_offsets(detections(("run", APO, ORIGIN, 0.8)), **settings("offsets", classes=[APO]))) == 15


def test_offsets_spacing_check_removes_candidates_near_another_detection():
    radius = RADIUS[BGAL]
    a, b = ORIGIN, ORIGIN + [0.6 * radius, 0, 0]
    out = add_hard_particle_offsets(detections(("run", BGAL, a, 0.9), ("run", BGAL, b, 0.7)),
                                    **settings("offsets", min_spacing_frac=0.5))
    candidates = np.concatenate([expected_offsets(a, radius), expected_offsets(b, radius)])
    rival = np.concatenate([np.repeat([b], 14, axis=0), np.repeat([a], 14, axis=0)])
    survivors = candidates[np.linalg.norm(candidates - rival, axis=1) > 0.5 * radius]
    assert len(survivors) == 26  # a's +x candidate is 0.484 R from b, and b's -x one from a
    new = out[out["source"] == "offset"]
    np.testing.assert_allclose(sorted_rows(positions(new)), sorted_rows(survivors))
    assert not np.any(np.all(np.isclose(positions(new), a + [0.116 * radius, 0, 0]), axis=1))


def test_offsets_are_not_blocked_by_other_classes_or_experiments():
    near = ORIGIN + [0.05 * RADIUS[THYRO], 0, 0]
    df = detections(("run1", THYRO, ORIGIN, 0.9), ("run2", THYRO, near, 0.9), ("run1", APO, near, 0.9))
    out = add_hard_particle_offsets(df, **settings("offsets"))
    assert (out["source"] == "offset").sum() == 28


def test_offsets_reject_unknown_classes():
    with pytest.raises(ConfigError, match="thyroglobin"):
        add_hard_particle_offsets(detections(("run", THYRO, ORIGIN, 0.9)), **settings("offsets", classes=["thyroglobin"]))


# --------------------------------------------------------------------------- merge_close
def test_merge_close_merges_near_pairs_into_their_centroid():
    radius = RADIUS[APO]
    df = detections(
        ("run", APO, ORIGIN, 0.4),
        ("run", APO, ORIGIN + [0.05 * radius, 0.02 * radius, 0], 0.9),  # close: merged
        ("run", APO, ORIGIN + [5 * radius, 0, 0], 0.5),
        ("run", APO, ORIGIN + [5 * radius, 0.2 * radius, 0], 0.6),  # 0.2 R apart: kept
    ).assign(source=["peak", "offset", "peak", "peak"])
    out = merge_close(df, radius_frac=0.1)
    assert len(out) == 3
    merged = out[out["score"] == 0.9]
    np.testing.assert_allclose(positions(merged), [ORIGIN + [0.025 * radius, 0.01 * radius, 0]])
    assert merged["source"].tolist() == ["offset"]  # other columns come from the best member
    assert sorted(out["score"]) == [0.5, 0.6, 0.9]


def test_merge_close_follows_chains():
    step = 0.08 * RADIUS[APO]  # ends are 0.16 R apart, joined through the middle one
    df = detections(*[("run", APO, ORIGIN + [i * step, 0, 0], s) for i, s in enumerate([0.3, 0.2, 0.5])])
    out = merge_close(df, **settings("merge"))
    np.testing.assert_allclose(positions(out), [ORIGIN + [step, 0, 0]])
    assert out["score"].tolist() == [0.5]


def test_merge_never_crosses_classes_or_experiments():
    df = detections(("run1", APO, ORIGIN, 0.5), ("run1", THYRO, ORIGIN, 0.6), ("run2", APO, ORIGIN, 0.7))
    for out in (merge_close(df, radius_frac=1.0), dbscan_merge(df, **settings("dbscan", eps_frac=1.0))):
        assert len(out) == 3
        assert sorted(zip(out["experiment"], out["particle_type"])) == [("run1", APO), ("run1", THYRO), ("run2", APO)]


# --------------------------------------------------------------------------- dbscan
def test_dbscan_cluster_becomes_score_weighted_centroid_with_max_score():
    radius = RADIUS[THYRO]
    points = [ORIGIN, ORIGIN + [0.3 * radius, 0, 0], ORIGIN + [0, 0.3 * radius, 0]]
    scores = [0.2, 0.3, 0.5]
    far = ORIGIN + [10 * radius, 0, 0]
    df = detections(*[("run", THYRO, p, s) for p, s in zip(points, scores)], ("run", THYRO, far, 0.4))
    out = dbscan_merge(df, eps_frac=0.5, min_samples=1)
    assert len(out) == 2
    cluster = out[out["score"] == 0.5]
    expected = ORIGIN + [0.3 * 0.3 * radius, 0.5 * 0.3 * radius, 0]  # sum(w * p) / sum(w), sum(w) = 1
    np.testing.assert_allclose(positions(cluster), [expected])
    np.testing.assert_allclose(positions(out[out["score"] == 0.4]), [far])


def test_dbscan_min_samples_drops_singletons():
    radius = RADIUS[THYRO]
    df = detections(("run", THYRO, ORIGIN, 0.5), ("run", THYRO, ORIGIN + [0.2 * radius, 0, 0], 0.5),
                    ("run", THYRO, ORIGIN + [10 * radius, 0, 0], 0.9))
    out = dbscan_merge(df, eps_frac=0.5, min_samples=2)
    np.testing.assert_allclose(positions(out), [ORIGIN + [0.1 * radius, 0, 0]])
    assert len(dbscan_merge(df, eps_frac=0.5, min_samples={THYRO: 1})) == 2


def test_dbscan_per_class_eps_and_zero_scores():
    df = detections(("run", APO, ORIGIN, 0.0), ("run", APO, ORIGIN + [0.3 * RADIUS[APO], 0, 0], 0.0))
    merged = dbscan_merge(df, **settings("dbscan", eps_frac={APO: 0.5}))
    np.testing.assert_allclose(positions(merged), [ORIGIN + [0.15 * RADIUS[APO], 0, 0]])  # plain mean
    assert len(dbscan_merge(df, **settings("dbscan", eps_frac={APO: 0.2}))) == 2
    with pytest.raises(ConfigError, match=APO):
        dbscan_merge(df, **settings("dbscan", eps_frac={THYRO: 0.5}))


# --------------------------------------------------------------------------- pipeline
def enabled(**steps) -> dict:
    return {name: {"enabled": True, **settings(name, **changes)} for name, changes in steps.items()}


def test_pipeline_merges_before_adding_offsets():
    near_duplicate = ORIGIN + [0.01 * RADIUS[THYRO], 0, 0]
    df = detections(("run", THYRO, ORIGIN, 0.9), ("run", THYRO, near_duplicate, 0.8))
    out = postprocess(df, enabled(merge={}, offsets={}))
    # merged first: one detection plus its 14 offsets (offsets first would have blocked each other)
    assert (out["source"] == "peak").sum() == 1 and (out["source"] == "offset").sum() == 14
    centre = positions(out[out["source"] == "peak"])[0]
    np.testing.assert_allclose(centre, (ORIGIN + near_duplicate) / 2)


def test_pipeline_runs_dbscan_after_merge():
    radius = RADIUS[APO]
    df = detections(("run", APO, ORIGIN, 0.5), ("run", APO, ORIGIN + [0.05 * radius, 0, 0], 0.5),
                    ("run", APO, ORIGIN + [0.4 * radius, 0, 0], 0.5))
    out = postprocess(df, enabled(merge={"radius_frac": 0.1}, dbscan={"eps_frac": 0.5}))
    # merge: (0, 0.05) -> 0.025 (weight 0.5); dbscan: mean of 0.025 and 0.4, equal scores
    np.testing.assert_allclose(positions(out), [ORIGIN + [0.2125 * radius, 0, 0]])


def test_default_config_is_valid_and_changes_nothing():
    df = detections(("run", THYRO, ORIGIN, 0.9), ("run", THYRO, ORIGIN + [1.0, 0, 0], 0.8))
    assert list(BASE_POST) == list(POSTPROCESSORS) == ["merge", "dbscan", "offsets"]
    pd.testing.assert_frame_equal(postprocess(df, BASE_POST), df)
    pd.testing.assert_frame_equal(postprocess(df, {}), df)


def test_with_steps_switches_exactly_the_named_steps_and_keeps_settings():
    cfg = with_steps(BASE_POST, ["dbscan"])
    assert [name for name, step in cfg.items() if step["enabled"]] == ["dbscan"]
    assert cfg["dbscan"]["eps_frac"] == BASE_POST["dbscan"]["eps_frac"]
    assert BASE_POST["dbscan"]["enabled"] is False  # the input is not changed
    with pytest.raises(ConfigError, match="unknown post-processing step"):
        with_steps(BASE_POST, ["nms"])


def test_an_enabled_step_without_its_settings_is_refused():
    df = detections(("run", THYRO, ORIGIN, 0.9))
    with pytest.raises(ConfigError, match="post.merge is enabled but lacks radius_frac.*base.yaml"):
        postprocess(df, {"merge": {"enabled": True}})


@pytest.mark.parametrize("cfg, message", [
    ({"nms": {"enabled": True}}, "post.nms"),
    ({"merge": {"enabled": True, "radius": 0.1}}, "post.merge.radius"),
    ({"offsets": {"enabled": "yes"}}, "post.offsets.enabled"),
    ({"dbscan": 0.5}, "post.dbscan"),
    ({"merge": {"enabled": True, "radius_frac": -1}}, "merge.radius_frac"),
])
def test_config_errors_name_the_key(cfg, message):
    df = detections(("run", THYRO, ORIGIN, 0.9))
    with pytest.raises(ConfigError, match=message):
        postprocess(df, cfg)


def test_missing_columns_are_a_data_error():
    with pytest.raises(DataError, match="score"):
        postprocess(detections(("run", THYRO, ORIGIN, 0.9)).drop(columns="score"), {})


# --------------------------------------------------------------------------- thresholds
def test_apply_thresholds_is_per_class_and_inclusive():
    df = detections(("run", APO, ORIGIN, 0.5), ("run", APO, ORIGIN, 0.49), ("run", THYRO, ORIGIN, 0.3),
                    ("run", THYRO, ORIGIN, 0.2))
    out = apply_thresholds(df, {APO: 0.5, THYRO: 0.25})
    assert list(zip(out["particle_type"], out["score"])) == [(APO, 0.5), (THYRO, 0.3)]


def test_apply_thresholds_errors_name_the_class():
    df = detections(("run", APO, ORIGIN, 0.5), ("run", THYRO, ORIGIN, 0.3))
    with pytest.raises(ConfigError, match=THYRO):
        apply_thresholds(df, {APO: 0.5})
    with pytest.raises(ConfigError, match="ribosom"):
        apply_thresholds(df, {APO: 0.5, THYRO: 0.5, "ribosom": 0.5})


def test_every_step_accepts_no_detections():
    empty = detections(("run", APO, ORIGIN, 0.5)).iloc[:0]
    out = postprocess(empty, with_steps(BASE_POST, POSTPROCESSORS))
    assert len(out) == 0 and list(out.columns) == ["experiment", "particle_type", "x", "y", "z", "score", "source"]
