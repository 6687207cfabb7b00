"""Fusion of U-Net and YOLO detections: both rules on hand-made cases with known answers."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from czii_kit.errors import ConfigError
from czii_kit.particles import particle
from czii_kit.post.fusion import fuse, fused_candidates, fusion_settings
from czii_kit.post.pipeline import default_post_config

R = particle("ribosome").radius


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
    fused = fuse({"unet": UNET, "yolo": YOLO}, method="dbscan", eps_frac=0.5, weights={"unet": 2.0, "yolo": 1.0})
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
    equal = fuse({"unet": UNET, "yolo": YOLO}, method="vote", weights={"unet": 1.0, "yolo": 1.0}, min_votes=2)
    assert len(equal) == 1
    assert at(equal, A)["score"] == pytest.approx((0.8 + 0.6) / 2)
    heavy_unet = fuse({"unet": UNET, "yolo": YOLO}, method="vote", weights={"unet": 2.0, "yolo": 1.0}, min_votes=2)
    assert len(heavy_unet) == 2  # U-Net alone has 2 votes: B stays, C (1 vote) goes
    assert at(heavy_unet, B)["score"] == pytest.approx(0.9)  # mean over present sources only
    assert at(heavy_unet, A)["score"] == pytest.approx((2 * 0.8 + 1 * 0.6) / 3)


def test_best_score_per_source_and_no_merging_across_class_or_experiment():
    unet = frame([("TS", "ribosome", *A, 0.8), ("TS", "ribosome", *A_NEAR, 0.4),  # two U-Net peaks, one particle
                  ("TS", "apo-ferritin", *A, 0.7), ("TS2", "ribosome", *A, 0.5)])
    yolo = frame([("TS", "ribosome", *A, 0.2)])
    fused = fuse({"unet": unet, "yolo": yolo}, method="dbscan", weights={"unet": 1.0, "yolo": 1.0})
    assert len(fused) == 3
    ribo = fused[(fused["experiment"] == "TS") & (fused["particle_type"] == "ribosome")]
    assert ribo["score"].tolist() == pytest.approx([(0.8 + 0.2) / 2])  # the best U-Net peak counts, not both


def test_eps_is_a_fraction_of_the_class_radius():
    far = frame([("TS", "ribosome", A[0] + 0.6 * R, A[1], A[2], 0.5)])
    assert len(fuse({"unet": frame([("TS", "ribosome", *A, 0.5)]), "yolo": far}, eps_frac=0.5)) == 2
    assert len(fuse({"unet": frame([("TS", "ribosome", *A, 0.5)]), "yolo": far}, eps_frac=0.7)) == 1


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="method"):
        fuse({"unet": UNET}, method="mean")
    with pytest.raises(ConfigError, match="no weight for source"):
        fuse({"unet": UNET, "yolo": YOLO}, weights={"unet": 1.0})
    with pytest.raises(ConfigError, match="unknown key"):
        fusion_settings({"eps": 0.5})


def test_fused_candidates_then_offsets_like_the_unet_path():
    thyro = particle("thyroglobulin").radius
    unet = frame([("TS", "thyroglobulin", 1000.0, 1000.0, 500.0, 0.8)])
    yolo = frame([("TS", "thyroglobulin", 1000.0 + 0.1 * thyro, 1000.0, 500.0, 0.6)])
    post = default_post_config()
    post["offsets"]["enabled"] = True
    out = fused_candidates({"unet": unet, "yolo": yolo}, {"method": "dbscan"}, post)
    assert (out["source"] == "unet+yolo").sum() == 1
    assert (out["source"] == "offset").sum() == 14  # 6 axis + 8 diagonal candidates around the fused point
    assert out.loc[out["source"] == "offset", "score"].to_numpy() == pytest.approx(0.9 * (0.8 + 0.6) / 2)
