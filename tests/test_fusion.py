"""Fusion of U-Net and YOLO detections: both rules on hand-made cases with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czii_kit.config import load_config
from czii_kit.errors import ConfigError
from czii_kit.infer.predictor import finalize
from czii_kit.particles import particle
from czii_kit.post.fusion import fuse, fuse_sources, fusion_settings
from czii_kit.post.steps import with_steps

R = particle("ribosome").radius
BASE = load_config()  # fusion and post defaults live in configs/base.yaml only


def fused(sources, **changes) -> pd.DataFrame:
    """``fuse`` with base.yaml's fusion settings, some changed."""
    return fuse(sources, **{**BASE["fusion"], **changes})


def frame(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["experiment", "particle_type", "x", "y", "z", "score"])


A = (1000.0, 1000.0, 500.0)
A_NEAR = (1000.0 + 0.3 * R, 1000.0, 500.0)  # same particle seen by YOLO, 0.3 R away
B = (3000.0, 1000.0, 500.0)  # U-Net only
C = (1000.0, 3000.0, 500.0)  # YOLO only

UNET = frame([("TS", "ribosome", *A, 0.8), ("TS", "ribosome", *B, 0.9)])
YOLO = frame([("TS", "ribosome", *A_NEAR, 0.6), ("TS", "ribosome", *C, 0.9)])


def at(df: pd.DataFrame, xyz) -> pd.Series:
    hit = np.linalg.norm(df[["x", "y", "z"]].to_numpy() - np.asarray(xyz), axis=1) < 0.5 * R
    assert hit.sum() == 1, f"expected one fused point near {xyz}, got {int(hit.sum())}"
    return df[hit].iloc[0]


def test_dbscan_rule_weighted_positions_and_scores():
    fused = fuse({"unet": UNET, "yolo": YOLO}, method="dbscan", eps_frac=0.5, weights={"unet": 2.0, "yolo": 1.0},
                 min_votes=1.0)
    assert len(fused) == 3
    a = at(fused, A)
    w_unet, w_yolo = 2.0 * 0.8, 1.0 * 0.6  # position weight = source weight x score
    assert a["x"] == pytest.approx((w_unet * A[0] + w_yolo * A_NEAR[0]) / (w_unet + w_yolo))
    assert a["score"] == pytest.approx((2.0 * 0.8 + 1.0 * 0.6) / 3.0)
    assert a["source"] == "unet+yolo"
    assert at(fused, B)["score"] == pytest.approx(2.0 * 0.9 / 3.0)  # absent source counts as 0
    assert at(fused, C)["score"] == pytest.approx(1.0 * 0.9 / 3.0)
    assert at(fused, C)["source"] == "yolo"


def test_vote_rule_drops_weak_support_and_averages_present_sources():
    equal = fused({"unet": UNET, "yolo": YOLO}, method="vote", weights={"unet": 1.0, "yolo": 1.0}, min_votes=2)
    assert len(equal) == 1
    assert at(equal, A)["score"] == pytest.approx((0.8 + 0.6) / 2)
    heavy_unet = fused({"unet": UNET, "yolo": YOLO}, method="vote", weights={"unet": 2.0, "yolo": 1.0}, min_votes=2)
    assert len(heavy_unet) == 2  # U-Net alone has 2 votes: B stays, C (1 vote) goes
    assert at(heavy_unet, B)["score"] == pytest.approx(0.9)  # mean over present sources only
    assert at(heavy_unet, A)["score"] == pytest.approx((2 * 0.8 + 1 * 0.6) / 3)


def test_best_score_per_source_and_no_merging_across_class_or_experiment():
    unet = frame([("TS", "ribosome", *A, 0.8), ("TS", "ribosome", *A_NEAR, 0.4),  # two U-Net peaks, one particle
                  ("TS", "apo-ferritin", *A, 0.7), ("TS2", "ribosome", *A, 0.5)])
    yolo = frame([("TS", "ribosome", *A, 0.2)])
    out = fused({"unet": unet, "yolo": yolo}, method="dbscan", weights={"unet": 1.0, "yolo": 1.0})
    assert len(out) == 3
    ribo = out[(out["experiment"] == "TS") & (out["particle_type"] == "ribosome")]
    assert ribo["score"].tolist() == pytest.approx([(0.8 + 0.2) / 2])  # the best U-Net peak counts, not both


def test_eps_is_a_fraction_of_the_class_radius():
    far = frame([("TS", "ribosome", A[0] + 0.6 * R, A[1], A[2], 0.5)])
    assert len(fused({"unet": frame([("TS", "ribosome", *A, 0.5)]), "yolo": far}, eps_frac=0.5)) == 2
    assert len(fused({"unet": frame([("TS", "ribosome", *A, 0.5)]), "yolo": far}, eps_frac=0.7)) == 1


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="method"):
        fused({"unet": UNET}, method="mean")
    with pytest.raises(ConfigError, match="no weight for source"):
        fused({"unet": UNET, "yolo": YOLO}, weights={"unet": 1.0})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['eps'\]"):
        fusion_settings({**BASE["fusion"], "eps": 0.5})
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['min_votes'\].*base.yaml"):
        fusion_settings({k: v for k, v in BASE["fusion"].items() if k != "min_votes"})
    with pytest.raises(ConfigError, match="ribosom"):
        fuse_sources({"unet": UNET, "yolo": YOLO}, BASE["fusion"], {"ribosom": {"unet": 1.0}})


def test_finalize_fuses_then_adds_offsets_like_the_single_model_path():
    thyro = particle("thyroglobulin").radius
    unet = frame([("TS", "thyroglobulin", 1000.0, 1000.0, 500.0, 0.8)])
    yolo = frame([("TS", "thyroglobulin", 1000.0 + 0.1 * thyro, 1000.0, 500.0, 0.6)])
    cfg = {**BASE, "post": with_steps(BASE["post"], ["offsets"])}
    out = finalize({"unet": unet, "yolo": yolo}, cfg)
    assert (out["source"] == "unet+yolo").sum() == 1
    assert (out["source"] == "offset").sum() == 14  # 6 axis + 8 diagonal candidates around the fused point
    assert out.loc[out["source"] == "offset", "score"].to_numpy() == pytest.approx(0.9 * (0.8 + 0.6) / 2)


def test_per_class_source_weights_use_a_source_alone_where_fusing_did_not_help():
    apo = frame([("TS", "apo-ferritin", *A, 0.7)])
    sources = {"unet": pd.concat([UNET, apo], ignore_index=True), "yolo": YOLO}
    weights = {"ribosome": {"unet": 1.0, "yolo": 0.0}, "apo-ferritin": {"unet": 0.0, "yolo": 1.0}}
    out = fuse_sources(sources, BASE["fusion"], weights)
    ribo = out[out["particle_type"] == "ribosome"]
    # U-Net alone: its rows unchanged (scores not diluted by the absent source), YOLO's ribosomes gone
    assert sorted(ribo["score"]) == [0.8, 0.9] and set(ribo["source"]) == {"unet"}
    assert (out["particle_type"] == "apo-ferritin").sum() == 0  # apo-ferritin: YOLO alone, which has none
    both = fuse_sources(sources, BASE["fusion"], {"ribosome": {"unet": 1.0, "yolo": 1.0}})
    ribo = both[both["particle_type"] == "ribosome"]
    assert len(ribo) == 3 and at(ribo, A)["score"] == pytest.approx((0.8 + 0.6) / 2)
    # a class without an entry uses fusion.weights: apo-ferritin fused with an absent YOLO halves its score
    assert both.loc[both["particle_type"] == "apo-ferritin", "score"].tolist() == pytest.approx([0.35])
    single = fuse_sources({"unet": UNET}, BASE["fusion"])
    pd.testing.assert_frame_equal(single, UNET)  # one source and no per-class weights: untouched
