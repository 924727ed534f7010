"""The pipeline evaluation (matches -> refinement -> 3D) of ``xraycardiac coronary evaluate --pipeline``."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from xraycardiac.coronary.recon.evaluate_pipeline import (
    evaluate_pipeline,
    format_pipeline_table,
    perturb_view,
)
from xraycardiac.geometry import CArmGeometry


@pytest.fixture(scope="module")
def pair_dataset(tmp_path_factory):
    """One synthesized 256 px pair (the tree of the reconstruction tests)."""
    from xraycardiac.coronary.synth import SynthConfig, synthesize

    root = tmp_path_factory.mktemp("pipeline") / "pairs"
    synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=256, seed=3), root)
    return root


def test_gt_matches_give_the_pipeline_upper_bound(pair_dataset):
    rows = evaluate_pipeline(pair_dataset, ["gt"], "all", perturb_deg=5.0, perturb_mm=10.0, seed=1)
    print("\n" + format_pipeline_table(rows))
    r = rows[0]
    assert r["pairs"] == 1 and r["matches"] > 20
    assert r["exact_mean_mm"] <= 1.0, f"exact-geometry 3D error {r['exact_mean_mm']:.2f} mm"
    assert r["refined_fraction"] == 1.0
    # refinement undoes most of the error the perturbation made (up to the unobservable scale)
    assert r["unrefined_mean_mm"] > 2 * r["refined_scaled_mean_mm"], (
        r["unrefined_mean_mm"], r["refined_scaled_mean_mm"],
    )  # fmt: skip
    assert r["refined_scaled_mean_mm"] <= 2.0, f"refined, scale-fixed {r['refined_scaled_mean_mm']:.2f} mm"
    pair = r["per_pair"][0]
    assert set(pair["perturbation"]) >= {"primary_offset_deg", "isocenter_shift_r_mm"}
    assert np.isfinite(pair["separation_deg"]) and len(pair["photons_per_pixel"]) == 2


def test_no_perturbation_means_unrefined_equals_exact(pair_dataset):
    r = evaluate_pipeline(pair_dataset, ["gt"], "all", perturb_deg=0.0, perturb_mm=0.0)[0]
    assert r["unrefined_mean_mm"] == pytest.approx(r["exact_mean_mm"], abs=1e-9)


def test_perturbation_is_seeded_and_bounded():
    g = CArmGeometry(primary_angle_deg=30.0, secondary_angle_deg=10.0)
    a = perturb_view(g, np.random.default_rng([0, 4]), 5.0, 10.0)
    b = perturb_view(g, np.random.default_rng([0, 4]), 5.0, 10.0)
    assert a[1] == b[1]
    assert all(abs(v) <= 5.0 for k, v in a[1].items() if k.endswith("_deg"))
    assert all(abs(v) <= 10.0 for k, v in a[1].items() if k.endswith("_mm"))
    assert a[0].primary_angle_deg == pytest.approx(30.0 + a[1]["primary_offset_deg"])


def test_bad_settings_name_the_parameter(pair_dataset):
    with pytest.raises(ValueError, match="perturb_deg"):
        evaluate_pipeline(pair_dataset, ["gt"], "all", perturb_deg=-1.0)
    with pytest.raises(ValueError, match="methods"):
        evaluate_pipeline(pair_dataset, [], "all")
    with pytest.raises(ValueError, match="unknown"):
        evaluate_pipeline(pair_dataset, ["surf"], "all")


def test_cli_prints_and_writes_the_pipeline_table(pair_dataset, tmp_path):
    from xraycardiac.cli import app

    out = tmp_path / "results.json"
    result = CliRunner().invoke(
        app,
        ["coronary", "evaluate", "--data", str(pair_dataset), "--split", "all", "--method", "vessel+epipolar",
         "--pipeline", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "3D centreline error" in result.output and "| gt |" in result.output
    doc = json.loads(out.read_text())
    assert [r["method"] for r in doc["pipeline"]] == ["vessel+epipolar", "gt"]
    assert doc["settings"]["perturb_deg"] == 5.0


def test_calibration_benchmark_is_never_worse_with_true_matches(pair_dataset):
    """Issue 20 item 6 on one pair: both perturbation models side by side; with the true matches the
    refinement is accepted and brings the rotation error down. The absolute 3D error keeps the
    scale two views cannot observe (the isocentre along the baseline): on this pair's realistic
    draw the recorded pose's rotation error happened to offset part of it (2.19 mm recorded,
    2.28 mm refined, 0.33 mm once the scale is fixed), so the 3D check is on the scale-fixed error."""
    from xraycardiac.coronary.recon.evaluate_calibration import (
        evaluate_calibration,
        format_calibration_table,
        rotation_error_deg,
    )

    rows = evaluate_calibration(pair_dataset, ["gt"], "all", seed=1)
    table = format_calibration_table(rows)
    print("\n" + table)
    assert {r["model"] for r in rows} == {"realistic", "pessimistic"}
    assert "realistic: rot deg" in table and "pessimistic: worse" in table
    for r in rows:
        assert r["worse_rotation"] == 0 and r["accepted"] == 1, r["per_pair"][0]["reason"]
        assert r["rotation_after_deg"] < 0.5 * r["rotation_before_deg"]
        assert r["scaled_after_mm"] < 0.5 * r["mean_before_mm"]
    g = CArmGeometry(primary_angle_deg=30.0, secondary_angle_deg=10.0)
    assert rotation_error_deg(g.with_(primary_angle_deg=33.0), g) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="models"):
        evaluate_calibration(pair_dataset, ["gt"], "all", models={"bad": (0.0, 3.0)})
