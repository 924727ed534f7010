"""The calibrated XRayToCT uncertainty (xraycardiac.xray2ct.uncertainty): it ranks the error, the sample std does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xraycardiac.xray2ct import uncertainty as unc
from xraycardiac.xray2ct.data import CTCase, X2CTDataConfig, load_case_ct, render_views, view_geometries

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = X2CTDataConfig(grid=32, spacing_mm=8.0)
BLOCK = 4  # 8³ blocks of a 32³ cube would be 64; 4³ gives 512


def _confidently_wrong(
    phantom: int, centre: tuple[int, int, int], seed: int, residual: str = unc.RESIDUAL_DEFAULT
) -> tuple[dict, np.ndarray]:
    """Features and |error| of a "generation" that is wrong around ``centre`` (up to +600 HU, a 5-voxel
    Gaussian) and everywhere else right, with samples that agree (std 20 HU noise everywhere) and a direct
    estimate equal to the mean: only the input consistency can see where the CT is wrong."""
    truth = load_case_ct(CTCase(f"p{phantom}", f"phantom:{phantom}", f"p{phantom}", "phantom"), CFG)
    views = render_views(truth, CFG)
    k, j, i = np.indices(truth.array.shape)
    d2 = (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2
    wrong = np.clip(truth.array + 600.0 * np.exp(-d2 / (2 * 5.0**2)), -1000, 1000)
    rng = np.random.default_rng(seed)
    samples = wrong[None] + rng.normal(0.0, 20.0, (4, *wrong.shape))
    mean = samples.mean(axis=0)
    geoms = view_geometries(CFG, truth.center_ras())
    feats = unc.uncertainty_features(
        samples, mean, truth.ijk_to_ras, views, list(geoms.values()), CFG, residual
    )
    return feats, np.abs(mean - np.clip(truth.array, -1000, 1000))


@pytest.fixture(scope="module")
def cases() -> dict[str, tuple[dict, np.ndarray]]:
    return {
        "calibration": _confidently_wrong(0, (12, 18, 10), 0),
        "held_out": _confidently_wrong(1, (20, 12, 20), 1),
        "calibration_none": _confidently_wrong(0, (12, 18, 10), 0, "none"),
        "held_out_none": _confidently_wrong(1, (20, 12, 20), 1, "none"),
    }


def test_no_residual_form_is_zeros_and_the_choice_keeps_a_residual_that_sees_the_error(cases) -> None:
    """'none' leaves the view residual out (zeros, the other features unchanged); choosing on a case left
    out of the fit keeps the residual where it is the only feature that sees the error, and records
    every form's score."""
    (f, err), (f_none, _) = cases["held_out"], cases["held_out_none"]
    assert not f_none["view_residual"].any() and f["view_residual"].max() > 0
    for name in ("sample_std", "direct_gap", "local_std"):
        np.testing.assert_array_equal(f_none[name], f[name])
    errors = [cases["calibration"][1], err]
    by_form = {
        "none": [cases["calibration_none"][0], f_none],
        unc.RESIDUAL_DEFAULT: [cases["calibration"][0], f],
    }
    best, scores = unc.select_view_residual(by_form, errors, BLOCK)
    assert best == unc.RESIDUAL_DEFAULT and set(scores) == set(by_form), scores
    assert min(scores[best]) > max(scores["none"]) + 0.2, scores
    with pytest.raises(ValueError, match="needs >= 2 cases"):
        unc.select_view_residual({"none": [f_none]}, [err], BLOCK)
    for bad in ("median", "median:-5", "gauss:4", ""):
        with pytest.raises(ValueError, match="expected 'none', 'raw' or 'median:<window mm > 0>'"):
            unc.parse_view_residual(bad)
    assert unc.parse_view_residual("median:55") == ("median", 55.0) and unc.parse_view_residual("none") == (
        "none",
        None,
    )


def test_calibrated_map_ranks_a_confidently_wrong_region_and_std_or_constant_do_not(cases) -> None:
    (f_cal, e_cal), (f, err) = cases["calibration"], cases["held_out"]
    intercept, weights = unc.fit_calibration([f_cal], [e_cal], block=BLOCK)
    cal = unc.UncertaintyCalibration(intercept, weights, {}, {})
    ours = unc.block_spearman(unc.calibrated_uncertainty(f, cal), err, BLOCK)
    std = unc.block_spearman(f["sample_std"], err, BLOCK)
    constant = unc.block_spearman(np.full_like(err, 30.0), err, BLOCK)
    assert ours >= 0.4, f"calibrated map: block Spearman {ours:.2f} < 0.4 (weights {weights})"
    assert std < 0.4 and constant < 0.4, f"std {std:.2f} / constant {constant:.2f} should not rank the error"
    worst = np.unravel_index(np.argmax(unc.block_means(err, BLOCK)), (8, 8, 8))
    u = unc.block_means(unc.calibrated_uncertainty(f, cal), BLOCK)
    assert u[np.ravel_multi_index(worst, (8, 8, 8))] > np.quantile(u, 0.9), "the worst block is not flagged"


def _outside_slab_views(truth, geoms: list, thickness_mm: float = 100.0) -> np.ndarray:
    """(V, S, S) view units of a water slab outside the cube in each view: ``thickness_mm`` thick,
    perpendicular to that view's beam, 150 mm beyond the cube centre toward the detector (the cube
    reaches 128 mm), wider than the field (tissue outside the volume, as in a real radiograph)."""
    from xraycardiac.projection import MU_WATER_PER_MM
    from xraycardiac.projection.drr import DRRConfig, render_drr
    from xraycardiac.volume import Volume

    n, step = 81, 10.0  # an 800 mm box about the centre
    c = truth.center_ras()
    ijk_to_ras = np.diag([step, step, step, 1.0])
    ijk_to_ras[:3, 3] = c - step * (n - 1) / 2.0
    k, j, i = np.indices((n, n, n))
    ras = np.stack([i, j, k], axis=-1) * step + ijk_to_ras[:3, 3] - c
    out = []
    for g in geoms:
        depth = ras @ g.beam_direction
        slab = np.where((depth >= 150.0) & (depth < 150.0 + thickness_mm), 0.0, -1000.0).astype(np.float32)
        line = render_drr(Volume(slab, ijk_to_ras, {}), g, DRRConfig(step_mm=CFG.drr_step_mm)).array[0]
        out.append(line / (MU_WATER_PER_MM * CFG.drr_water_mm))
    return np.stack(out)


def test_view_residual_ignores_tissue_outside_the_volume_and_still_sees_the_wrong_region() -> None:
    """A radiograph holds tissue outside the cube: the raw residual then lights up every ray (and stops
    ranking the error); the residual with its local median removed barely changes and still ranks it."""
    truth = load_case_ct(CTCase("p1", "phantom:1", "p1", "phantom"), CFG)
    geoms = list(view_geometries(CFG, truth.center_ras()).values())
    views = render_views(truth, CFG)
    k, j, i = np.indices(truth.array.shape)
    wrong = truth.array + 600.0 * np.exp(-((k - 20) ** 2 + (j - 12) ** 2 + (i - 20) ** 2) / (2 * 5.0**2))
    wrong = np.clip(wrong, -1000, 1000)
    err = np.abs(wrong - np.clip(truth.array, -1000, 1000))
    slab = _outside_slab_views(truth, geoms)
    assert slab.min() > 0.2, f"the slab must lie on every ray (min {slab.min():.3f} view units)"

    def residual(v: np.ndarray, median_mm: float | None) -> np.ndarray:
        return unc.view_residual(wrong, truth.ijk_to_ras, v, geoms, CFG, median_mm=median_mm)

    raw, raw_slab = residual(views, None), residual(views + slab, None)
    new, new_slab = residual(views, unc.RESIDUAL_MEDIAN_MM), residual(views + slab, unc.RESIDUAL_MEDIAN_MM)
    rho = {name: unc.block_spearman(x, err, BLOCK) for name, x in
           {"raw": raw, "raw_slab": raw_slab, "new": new, "new_slab": new_slab}.items()}  # fmt: skip
    change = {
        "raw": np.abs(raw_slab - raw).mean() / raw.mean(),
        "new": np.abs(new_slab - new).mean() / new.mean(),
    }
    assert rho["raw"] >= 0.4 and rho["raw_slab"] < 0.4, f"the raw residual should lose the error: {rho}"
    assert rho["new_slab"] >= 0.4, f"the residual without its local median should rank the error: {rho}"
    assert change["raw"] > 1.0 and change["new"] < 0.25, f"mean relative change from the slab: {change}"


def test_fit_recovers_known_weights_and_the_reliability_table_matches_the_error() -> None:
    rng = np.random.default_rng(0)
    feats = [
        {n: rng.gamma(2.0, 10.0, (16, 16, 16)).astype(np.float32) for n in unc.FEATURES} for _ in range(3)
    ]
    errors = [12.0 + 2.0 * f["direct_gap"] + 0.5 * f["view_residual"] for f in feats]
    intercept, weights = unc.fit_calibration(feats, errors, block=4)
    assert intercept == pytest.approx(12.0, abs=1e-3)
    assert weights == pytest.approx({"sample_std": 0.0, "direct_gap": 2.0, "local_std": 0.0, "view_residual": 0.5},
                                    abs=1e-4)  # fmt: skip
    cal = unc.UncertaintyCalibration(intercept, weights, {}, {})
    table = unc.reliability_table(
        [unc.calibrated_uncertainty(f, cal) for f in feats], errors, bins=4, block=4
    )
    assert [t["mean_abs_error_hu"] for t in table] == pytest.approx(
        [t["mean_uncertainty_hu"] for t in table], abs=0.2
    )
    assert all(
        a["mean_abs_error_hu"] < b["mean_abs_error_hu"] for a, b in zip(table, table[1:], strict=False)
    )


def test_calibration_file_round_trip_and_other_weights_are_not_used(tmp_path: Path) -> None:
    parts = {"autoencoder": "a" * 64, "encoder": "b" * 64, "ldm": "c" * 64}
    source = {"command": "x", "view_residual_median_mm": unc.RESIDUAL_MEDIAN_MM}
    cal = unc.UncertaintyCalibration(5.0, dict.fromkeys(unc.FEATURES, 1.0), parts, source)
    cal.save(tmp_path / "uncertainty.json")
    found, where = unc.find_calibration(tmp_path, "m", parts)
    assert found == cal and where.endswith("uncertainty.json")
    # fitted on the raw view residual (before the median window was recorded): not used with this one
    unc.UncertaintyCalibration(5.0, dict.fromkeys(unc.FEATURES, 1.0), parts, {"command": "x"}).save(
        tmp_path / "m.uncertainty.json"
    )
    stale, why = unc.find_calibration(tmp_path, "m", parts)
    assert stale is None and "another view_residual" in why, why
    (tmp_path / "m.uncertainty.json").unlink()
    other, why = unc.find_calibration(tmp_path, "m", {**parts, "ldm": "d" * 64})
    assert other is None and "other weights" in why
    assert "NOT calibrated" in unc.describe_method(other, why)
    (tmp_path / "uncertainty.json").write_text(
        '{"format": "xraycardiac.x2ct_uncertainty", "features": ["std"]}'
    )
    with pytest.raises(ValueError, match="uncertainty.json: not xraycardiac.x2ct_uncertainty"):
        unc.find_calibration(tmp_path, "m", parts)


def test_calibration_records_its_residual_form_none_included_and_a_mismatch_is_refused(
    tmp_path: Path,
) -> None:
    parts = {"autoencoder": "a" * 64, "encoder": "b" * 64, "ldm": "c" * 64}
    weights = {"sample_std": 1.5, "direct_gap": 0.5, "local_std": 0.0, "view_residual": 0.0}
    none = unc.UncertaintyCalibration(
        3.0, weights, parts, {"view_residual": "none", "view_residual_median_mm": None}
    )
    none.save(tmp_path / "m.uncertainty.json")
    found, _ = unc.find_calibration(tmp_path, "m", parts)
    assert found == none and found.view_residual == "none", found
    assert "view residual none" in unc.describe_method(found, "here")
    raw = unc.UncertaintyCalibration(3.0, weights, parts, {"view_residual": "raw"})
    assert raw.view_residual == "raw"
    # the window alone (files written before the form was recorded): the median form
    assert (
        unc.UncertaintyCalibration(3.0, weights, parts, {"view_residual_median_mm": 55.0}).view_residual
        == "median:55"
    )
    refused = {
        "no residual recorded": ({}, weights),
        "median without a window": ({"view_residual": "median"}, weights),
        "a form this version does not compute": (
            {"view_residual": "gauss", "view_residual_median_mm": 4.0},
            weights,
        ),
        "not a string": ({"view_residual": None}, weights),
        "'none' with a residual weight": ({"view_residual": "none"}, {**weights, "view_residual": 2.0}),
    }
    for what, (source, w) in refused.items():
        unc.UncertaintyCalibration(3.0, w, parts, source).save(tmp_path / "m.uncertainty.json")
        cal, why = unc.find_calibration(tmp_path, "m", parts)
        assert cal is None and "view_residual" in why and "calibrate-uncertainty" in why, (what, why)
        assert "NOT calibrated" in unc.describe_method(cal, why)
