"""``xraycardiac coronary evaluate``: every matcher on the pairs of a dataset, one table (issue 4).

A 3-pair synthetic dataset at 64 x 64 pixels; the learned matcher is a tiny one trained for 2 steps
(with a tiny random DINOv2 as its foundation model when ``transformers`` is installed).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from xraycardiac.cli import app
from xraycardiac.coronary.matching.evaluate import (
    METRIC_FIELDS,
    evaluate_matchers,
    format_table,
    parse_method,
)

runner = CliRunner()
TINY = [
    "channels=[8,8,8]", "head_channels=8", "keypoint_net.descriptor_dim=16", "max_keypoints=48",
    "matcher.descriptor_dim=16", "n_layers=1", "num_heads=2", "filter_threshold=0", "n_distractors=8",
    "foundation_top_k=2", "batch_size=2", "steps=2", "device=cpu", "warmup_steps=1", "log_every=1",
]  # fmt: skip
# defined once there is a match (precision, epipolar) or a GT match (recall, AUC): both hold here
ALWAYS_DEFINED = set(METRIC_FIELDS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tiny_pair_dataset: Path) -> Path:
    return tiny_pair_dataset


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path | None]:
    """(a tiny trained matcher's run folder, its foundation folder or None)."""
    from xraycardiac.coronary.matching.train_matcher import parse_matcher_overrides, train_coronary_matcher

    root = tmp_path_factory.mktemp("eval_run")
    settings = list(TINY)
    folder = None
    try:
        import transformers
    except ImportError:
        transformers = None
    if transformers is not None:
        folder = root / "dino"
        cfg = transformers.Dinov2Config(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_ratio=2,
            patch_size=8,
            image_size=64,
        )
        transformers.Dinov2Model(cfg).save_pretrained(folder)
        settings.append(f"foundation=dinov2:{folder}")
    train_coronary_matcher(data, root / "run", *parse_matcher_overrides(settings), command="pytest")
    return root / "run", folder


def test_rows_hold_every_metric(data: Path, run: tuple[Path, Path | None]) -> None:
    run_dir, folder = run
    methods = ["sift", "vessel+epipolar", f"matcher:{run_dir}", f"matcher-nofm:{run_dir}+epipolar"]
    rows = evaluate_matchers(data, methods, split="all")
    assert [r["method"] for r in rows] == methods
    for r in rows:
        missing = [k for k in METRIC_FIELDS if k not in r]
        assert not missing, f"{r['method']}: no {missing}"
        assert r["pairs"] == 3 and len(r["per_pair"]) == 3 and r["gt_matches"] > 0
        for key in ("keypoints_per_image", "matches", "pairs_with_matches", "gt_matches", "seconds_per_pair"):
            assert math.isfinite(r[key]) and r[key] >= 0, f"{r['method']}: {key} = {r[key]}"
        for key in ("recall@3px", "recall@5px", "auc@5px", "auc@10px", "auc@20px"):
            assert 0.0 <= r[key] <= 1.0, f"{r['method']}: {key} = {r[key]} (every pair has GT matches)"
        defined = r["pairs_with_matches"] > 0
        for key in ("precision@3px", "epipolar_precision@5px", "mean_epipolar_error_px"):
            assert math.isfinite(r[key]) == defined, f"{r['method']}: {key} = {r[key]}, {defined=}"
    sift, vessel, matcher, ablation = rows
    assert sift["name"] == "SIFT + RANSAC" and vessel["name"] == "vessel kp + NN + epipolar 3px"
    assert matcher["pairs_with_matches"] == 3, "filter_threshold=0 keeps every mutual nearest neighbour"
    for r in (vessel, ablation):  # the epipolar filter bounds the error of what it keeps
        if r["pairs_with_matches"]:
            assert r["epipolar_precision@3px"] == 1.0 and r["mean_epipolar_error_px"] <= 3.0, r
    assert matcher["info"]["foundation_mask"] is (folder is not None)
    assert ablation["info"]["foundation_mask"] is False
    assert matcher["info"]["model"]["sha256"] == ablation["info"]["model"]["sha256"]
    table = format_table(rows)
    assert "SIFT + RANSAC" in table and "matcher w/o FM mask" in table and "AUC@20" in table


def test_unknown_methods_and_splits_are_refused(
    data: Path, run: tuple[Path, Path | None], tmp_path: Path
) -> None:
    for bad in ("surf", "matcher", "sift+magsac", "matcher:", "foo:bar"):
        with pytest.raises(ValueError, match=r"allowed forms|needs a model name"):
            parse_method(bad)
    with pytest.raises(ValueError, match=r"unknown; allowed forms: sift, orb, vessel .*matcher-nofm:"):
        evaluate_matchers(data, ["sift", "surf"], split="all")
    with pytest.raises(ValueError, match="no sample in split 'test'"):
        evaluate_matchers(data, ["sift"], split="test")  # trees 0-2 are all in the train split
    with pytest.raises(FileNotFoundError, match="model.json"):
        parse_method(f"matcher:{tmp_path}")
    run_dir, folder = run
    if folder is not None:
        with pytest.raises(FileNotFoundError, match="matcher-nofm"):
            parse_method(f"matcher:{run_dir}", foundation=f"dinov2:{tmp_path / 'moved'}")
        with pytest.raises(
            ValueError, match="matcher-nofm.*leave foundation empty"
        ):  # never dropped silently
            parse_method(f"matcher-nofm:{run_dir}", foundation=f"dinov2:{tmp_path / 'moved'}")


def test_cli_writes_strict_json(data: Path, run: tuple[Path, Path | None], tmp_path: Path) -> None:
    out = tmp_path / "results" / "eval.json"
    args = ["coronary", "evaluate", "--data", str(data), "--split", "all", "--out", str(out)]
    result = runner.invoke(
        app, [*args, "--method", "orb", "--method", f"matcher:{run[0]}", "--max-pairs", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "ORB + RANSAC" in result.output and "AUC@10" in result.output
    doc = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
    assert doc["format"] == "xraycardiac.coronary_match_evaluation" and doc["split"] == "all"
    assert [m["method"] for m in doc["methods"]] == ["orb", f"matcher:{run[0]}"]
    assert all(m["pairs"] == 2 for m in doc["methods"]) and doc["dataset"]["pairs"] == 3
    for m in doc["methods"]:
        assert set(METRIC_FIELDS) <= set(m), m.keys()
        values = [m[k] for k in METRIC_FIELDS if m[k] is not None]
        assert np.all(np.isfinite(values)), m
    result = runner.invoke(app, [*args, "--overwrite", "--method", "surf"])  # --out exists now
    assert result.exit_code == 1 and "allowed forms" in result.output, result.output
