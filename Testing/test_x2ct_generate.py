"""Pipeline ``x2ct-generate``: outputs on the right cube, uncertainty, determinism, metrics, bad inputs, CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner
from x2ct_helpers import AE, CONFIG, ENC, FAST, LDM, G

import xraycardiac.jobs.x2ct_generate  # noqa: F401 -- registers the pipeline
from xraycardiac.cli import app
from xraycardiac.io import read_volume, write_volume
from xraycardiac.jobs import JobSpec, run_job
from xraycardiac.projection import MU_WATER_PER_MM
from xraycardiac.volume import Volume
from xraycardiac.xray2ct.autoencoder import train_x2ct_autoencoder
from xraycardiac.xray2ct.bundle import write_bundle
from xraycardiac.xray2ct.data import build_cache, cube_ijk_to_ras, view_geometries
from xraycardiac.xray2ct.train import train_x2ct_encoder, train_x2ct_ldm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A biplanar and a single-view 3-step bundle on a 4-phantom 16³ cache, and input files of case 0."""
    t0 = time.perf_counter()
    root = tmp_path_factory.mktemp("x2ct_generate")
    cache = root / "cache"
    build_cache(["phantom:0-3"], cache, CONFIG)
    train_x2ct_autoencoder(cache, root / "ae", overrides=[*AE, *FAST],
                           split="all")  # fmt: skip
    for mode, extra in (("bi", []), ("single", ["n_views=1"])):
        train_x2ct_encoder(
            cache, root / f"enc_{mode}", root / "ae", overrides=[*ENC, *FAST, *extra], split="all"
        )
        train_x2ct_ldm(cache, root / f"ldm_{mode}", root / "ae", root / f"enc_{mode}", overrides=[*LDM, *FAST],
                       split="all")  # fmt: skip
        write_bundle(root / f"model_{mode}", root / "ae", root / f"enc_{mode}", root / f"ldm_{mode}",
                     name=f"x2ct-{mode}")  # fmt: skip
    with np.load(cache / "cases" / "phantom_00000.npz") as z:
        views = z["views"].astype(np.float64) * MU_WATER_PER_MM * CONFIG.drr_water_mm  # line integrals of mu
    geoms = view_geometries(CONFIG, (0.0, 0.0, 0.0))
    files = {"root": root, "bi": root / "model_bi", "single": root / "model_single"}
    for v, name in enumerate(("pa", "lateral")):
        np.save(root / f"{name}.npy", views[v])
        write_volume(Volume(views[v][None].astype(np.float32), geoms[name].detector_ijk_to_ras()),
                     root / f"{name}.nrrd")  # fmt: skip
        files[name], files[f"{name}_npy"] = root / f"{name}.nrrd", root / f"{name}.npy"
    print(f"fixture: cache, 2 bundles, inputs in {time.perf_counter() - t0:.1f} s")
    return files


def _run(setup: dict[str, Path], out: Path, inputs: dict[str, Path], **params) -> dict:
    events: list[dict] = []
    spec = JobSpec("x2ct-generate", {k: str(v) for k, v in inputs.items()},
                   {"model": str(setup["bi"]), "steps": 5, "samples": 2, "seed": 0, "device": "cpu", **params},
                   str(out))  # fmt: skip
    summary = run_job(spec, on_event=events.append)
    summary["_events"] = events
    return summary


def _geometry_file(path: Path, view: str, centre: tuple[float, float, float], size: int = G) -> Path:
    side = CONFIG.image_size * CONFIG.detector_pixel_mm
    g = view_geometries(CONFIG, centre)[view].with_(detector_rows=size, detector_cols=size,
                                                     pixel_spacing_mm=(side / size, side / size))  # fmt: skip
    path.write_text(json.dumps(g.to_dict()))
    return path


def test_outputs_lie_on_the_cube_with_uncertainty_and_are_deterministic(setup, tmp_path: Path) -> None:
    centre = (10.0, -20.0, 30.0)
    inputs = {"pa": setup["pa"], "lateral": setup["lateral"],
              "geometry_pa": _geometry_file(tmp_path / "pa.json", "pa", centre),
              "geometry_lateral": _geometry_file(tmp_path / "lat.json", "lateral", centre)}  # fmt: skip
    t0 = time.perf_counter()
    summary = _run(setup, tmp_path / "out", inputs)
    took = time.perf_counter() - t0
    out = tmp_path / "out"
    assert summary["outputs"] == {"ct": "ct.nrrd", "uncertainty": "uncertainty.nrrd", "direct": "direct.nrrd",
                                  "report": "report.json"}  # fmt: skip
    ct, std, direct = (read_volume(out / f) for f in ("ct.nrrd", "uncertainty.nrrd", "direct.nrrd"))
    a = cube_ijk_to_ras(CONFIG, centre)
    for vol in (ct, std, direct):
        assert vol.array.shape == (G, G, G)
        np.testing.assert_allclose(vol.ijk_to_ras, a, atol=1e-4)
        np.testing.assert_allclose(vol.spacing, [16.0] * 3)
    # the cube's centre (voxel (7.5, 7.5, 7.5)) is the PA isocentre; I, J, K run along +R, +A, +S
    np.testing.assert_allclose(ct.ijk_to_ras_points(np.array([[7.5, 7.5, 7.5]]))[0], centre, atol=1e-4)
    np.testing.assert_allclose(
        ct.ijk_to_ras_points(np.array([[0, 0, 0]]))[0], np.array(centre) - 16 * 7.5, atol=1e-4
    )
    np.testing.assert_allclose(
        ct.ijk_to_ras_points(np.array([[15, 0, 0]]))[0, 0], centre[0] + 16 * 7.5, atol=1e-4
    )
    print(f"job K=2, 5 steps: {took:.2f} s; HU [{ct.array.min():.0f}, {ct.array.max():.0f}], std HU "
          f"[{std.array.min():.1f}, {std.array.max():.1f}] mean {std.array.mean():.1f}")  # fmt: skip
    assert ct.array.min() >= -1000.0 and ct.array.max() <= 1000.0
    assert direct.array.min() >= -1000.0 and direct.array.max() <= 1000.0
    assert std.array.min() >= 0.0 and std.array.max() > 0.0
    assert ct.meta.get("model") == "x2ct-bi" and ct.meta.get("seed") == 0
    report = json.loads((out / "report.json").read_text())
    bundle = json.loads((setup["bi"] / "bundle.json").read_text())
    assert report["model"]["sha256"] == {p: f["sha256"] for p, f in bundle["files"].items()}
    assert report["model"]["mode"] == "biplanar" and report["metrics"] is None
    assert report["views"]["pa"]["geometry"].startswith("geometry JSON given")
    assert report["cube"]["centre_ras_mm"] == list(centre)
    assert report["timing_s"]["generate"] > 0 and report["peak_memory"]["process_peak_rss_mb"] > 0
    steps = [e["step"] for e in summary["_events"] if e.get("event") == "progress" and "step" in e]
    assert steps == [0, 1, 2, 3, 4, 5]
    # the same seed gives the same volumes; another seed other ones; a translated geometry the same array
    again = _run(setup, tmp_path / "again", inputs)
    assert again["outputs"] == summary["outputs"]
    assert np.array_equal(read_volume(tmp_path / "again" / "ct.nrrd").array, ct.array)
    assert np.array_equal(read_volume(tmp_path / "again" / "uncertainty.nrrd").array, std.array)
    _run(setup, tmp_path / "other", inputs, seed=1)
    assert not np.array_equal(read_volume(tmp_path / "other" / "ct.nrrd").array, ct.array)
    _run(setup, tmp_path / "plain", {"pa": setup["pa_npy"], "lateral": setup["lateral_npy"]})
    moved = read_volume(tmp_path / "plain" / "ct.nrrd")
    np.testing.assert_allclose(moved.ijk_to_ras, cube_ijk_to_ras(CONFIG, (0.0, 0.0, 0.0)), atol=1e-4)
    diff = float(np.abs(moved.array - ct.array).max())
    print(f"default geometry about (0, 0, 0) vs given geometry about {centre}: max |diff| {diff:.3g} HU")
    assert diff < 1.0


def test_views_are_resampled_to_the_model_size(setup, tmp_path: Path) -> None:
    base = _run(setup, tmp_path / "base", {"pa": setup["pa_npy"], "lateral": setup["lateral_npy"]})
    big = {}
    for name in ("pa", "lateral"):
        big[name] = tmp_path / f"{name}32.npy"
        np.save(big[name], np.kron(np.load(setup[f"{name}_npy"]), np.ones((2, 2))))  # same detector, 32 px
    up = _run(setup, tmp_path / "up", big)
    assert up["views"]["pa"]["shape"] == [32, 32] and up["views"]["pa"]["resampled_to"] == [G, G]
    diff = float(np.abs(read_volume(tmp_path / "up" / "ct.nrrd").array
                        - read_volume(tmp_path / "base" / "ct.nrrd").array).max())  # fmt: skip
    print(f"32 px views resampled to 16 vs 16 px views: max |diff| {diff:.3g} HU")
    assert diff < 1.0 and base["views"]["pa"]["resampled_to"] == [G, G]


def test_reference_metrics(setup, tmp_path: Path) -> None:
    first = _run(setup, tmp_path / "first", {"pa": setup["pa"], "lateral": setup["lateral"]})
    assert first["metrics"] is None
    ref = tmp_path / "first" / "ct.nrrd"
    same = _run(setup, tmp_path / "same", {"pa": setup["pa"], "lateral": setup["lateral"], "reference": ref})
    m = same["metrics"]
    print(f"reference == output: {m['ct']}; direct: {m['direct']}")
    assert m["reference"] == "as is" and m["window_hu"] == [-1000.0, 1000.0] and m["data_range_hu"] == 2000.0
    assert m["ct"]["psnr_db"] == 100.0 and m["ct"]["psnr_capped"] is True
    assert m["ct"]["ssim_3d"] == pytest.approx(1.0) and m["ct"]["ssim_slicewise"] == pytest.approx(1.0)
    assert m["ct"]["mae_hu"] == 0.0 and "hu_window_metrics" in m["method"]
    assert json.loads((tmp_path / "same" / "report.json").read_text())["metrics"] == m
    # a reference on another grid is resampled onto the cube; the direct estimate is scored too
    vol = read_volume(ref)
    coarse = Volume(vol.array[::2, ::2, ::2].copy(), vol.ijk_to_ras @ np.diag([2.0, 2.0, 2.0, 1.0]))
    write_volume(coarse, tmp_path / "coarse.nrrd")
    res = _run(setup, tmp_path / "res", {"pa": setup["pa"], "lateral": setup["lateral"],
                                         "reference": tmp_path / "coarse.nrrd"})["metrics"]  # fmt: skip
    assert res["reference"] == "resampled" and 0 < res["ct"]["psnr_db"] < 100 and res["ct"]["mae_hu"] > 0
    direct = read_volume(tmp_path / "first" / "direct.nrrd").array.astype(np.float64)
    expected_mae = float(np.mean(np.abs(direct - vol.array)))
    assert m["direct"]["mae_hu"] == pytest.approx(expected_mae, rel=1e-5)


def _no_leftovers(parent: Path, name: str) -> None:
    assert not (parent / name).exists()
    assert not [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def test_bad_inputs_name_the_input_and_leave_nothing(setup, tmp_path: Path) -> None:
    write_volume(Volume(np.zeros((4, G, G), np.float32), np.eye(4)), tmp_path / "ct3d.nrrd")
    np.save(tmp_path / "vol.npy", np.zeros((3, G, G)))
    np.save(tmp_path / "small.npy", np.zeros((2 * G, 2 * G)))
    pa, lat = setup["pa"], setup["lateral"]
    cases = [
        ({"pa": tmp_path / "ct3d.nrrd", "lateral": lat}, {}, r"inputs\.pa: ct3d\.nrrd is a 3D volume of 4 slices"),
        ({"pa": tmp_path / "vol.npy", "lateral": lat}, {}, r"inputs\.pa: vol\.npy is a 3D volume"),
        ({"pa": pa, "lateral": tmp_path / "small.npy"}, {}, r"inputs\.lateral: 32 x 32 pixels but inputs\.pa is 16 x 16"),
        ({"pa": pa, "oblique": lat}, {}, r"inputs\.oblique: unknown input"),
        ({"lateral": lat}, {}, r"inputs\.pa: required"),
        ({"pa": pa}, {}, r"inputs\.lateral: model 'x2ct-bi' is biplanar"),
        ({"pa": pa, "lateral": lat}, {"model": str(setup["single"])}, r"inputs\.lateral: .* single-view"),
        ({"pa": pa, "lateral": lat, "geometry_pa": _geometry_file(tmp_path / "g.json", "pa", (0, 0, 0), 32)}, {},
         r"inputs\.geometry_pa: its detector is 32 x 32"),
        ({"pa": pa, "lateral": lat}, {"steps": 26}, r"params\.steps: expected an integer in 1\.\.25"),
        ({"pa": pa, "lateral": lat}, {"samples": 0}, r"params\.samples"),
        ({"pa": pa, "lateral": lat}, {"model": str(tmp_path / "nowhere")}, r"model: .*nowhere"),
    ]  # fmt: skip
    for n, (inputs, params, message) in enumerate(cases):
        with pytest.raises((ValueError, FileNotFoundError), match=message):
            _run(setup, tmp_path / f"out{n}", inputs, **params)
        _no_leftovers(tmp_path, f"out{n}")


def test_single_view_model_and_one_sample(setup, tmp_path: Path) -> None:
    summary = _run(setup, tmp_path / "one", {"pa": setup["pa_npy"]}, model=str(setup["single"]), samples=1)
    assert summary["model"]["mode"] == "single" and "uncertainty" not in summary["outputs"]
    assert not (tmp_path / "one" / "uncertainty.nrrd").exists()
    assert read_volume(tmp_path / "one" / "ct.nrrd").array.shape == (G, G, G)
    assert any(e.get("event") == "log" and "K >= 2" in e["message"] for e in summary["_events"])


def test_cli_generate_exit_codes(setup, tmp_path: Path) -> None:
    base = [
        "x2ct",
        "generate",
        "--model",
        str(setup["bi"]),
        "--steps",
        "3",
        "--samples",
        "2",
        "--device",
        "cpu",
    ]
    ok = CliRunner().invoke(app, [*base, "--pa", str(setup["pa"]), "--lateral", str(setup["lateral"]),
                                  "--out", str(tmp_path / "ok")])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert {p.name for p in (tmp_path / "ok").iterdir()} >= {"ct.nrrd", "uncertainty.nrrd", "direct.nrrd",
                                                             "report.json"}  # fmt: skip
    assert "uncertainty map: std over samples (unbiased), HU; NOT calibrated" in ok.output, ok.output
    write_volume(Volume(np.zeros((4, G, G), np.float32), np.eye(4)), tmp_path / "ct3d.nrrd")
    bad = CliRunner().invoke(app, [*base, "--pa", str(tmp_path / "ct3d.nrrd"), "--lateral", str(setup["lateral"]),
                                   "--out", str(tmp_path / "bad")])  # fmt: skip
    assert bad.exit_code == 1 and "inputs.pa" in bad.output, bad.output
    _no_leftovers(tmp_path, "bad")


def test_calibrated_uncertainty_is_written_with_its_method_and_other_weights_fall_back(
    setup, tmp_path, xraycardiac_home
) -> None:
    import shutil

    from xraycardiac.xray2ct.bundle import import_bundle
    from xraycardiac.xray2ct.uncertainty import RESIDUAL_CANDIDATES, UncertaintyCalibration

    model = tmp_path / "model"
    shutil.copytree(setup["bi"], model)
    cal_file = model / "uncertainty.json"
    cli = CliRunner().invoke(app, ["x2ct", "calibrate-uncertainty", "--model", str(model), "--data",
                                   str(setup["root"] / "cache"), "--split", "all", "--max-cases", "2", "--samples",
                                   "2", "--steps", "3", "--out", str(cal_file)])  # fmt: skip
    assert cli.exit_code == 0, cli.output
    cal = UncertaintyCalibration.load(cal_file)
    assert cal.source["cases"] == 2 and "calibrate-uncertainty" in cal.source["command"], cal.source
    chosen = cal.source["view_residual_selection"]["loo_block_spearman_mean"]  # --view-residual auto
    assert cal.view_residual in chosen and chosen[cal.view_residual] == max(chosen.values()), cal.source
    assert set(chosen) == set(RESIDUAL_CANDIDATES), chosen
    inputs = {"pa": setup["pa"], "lateral": setup["lateral"]}
    summary = _run(setup, tmp_path / "out", inputs, model=str(model))
    unc = read_volume(tmp_path / "out" / "uncertainty.nrrd")
    assert summary["uncertainty"].startswith("expected |error|, HU"), summary["uncertainty"]
    assert unc.meta.get("content") == summary["uncertainty"] and unc.meta.get("quantity") == "HU", unc.meta
    assert unc.array.min() >= cal.intercept_hu - 1e-3 and summary["timing_s"]["uncertainty"] > 0
    plain = _run(setup, tmp_path / "plain", inputs)  # the same weights, no calibration: the sample std
    std = read_volume(tmp_path / "plain" / "uncertainty.nrrd").array
    assert "NOT calibrated" in plain["uncertainty"] and not np.allclose(std, unc.array), plain["uncertainty"]
    import_bundle(model)  # the calibration travels with the bundle into the model cache
    installed = _run(setup, tmp_path / "installed", inputs, model="x2ct-bi")
    assert installed["uncertainty"].startswith("expected |error|, HU"), installed["uncertainty"]
    stale = UncertaintyCalibration(
        cal.intercept_hu, cal.weights, {**cal.parts_sha256, "ldm": "0" * 64}, cal.source
    )
    stale.save(cal_file)  # fitted for other weights: not used, and the report says why
    other = _run(setup, tmp_path / "stale", inputs, model=str(model))
    assert "other weights" in other["uncertainty"], other["uncertainty"]
    assert np.array_equal(read_volume(tmp_path / "stale" / "uncertainty.nrrd").array, std)
    # a calibration without the residual term is applied as such: here exactly the sample std
    weights = {"sample_std": 1.0, "direct_gap": 0.0, "local_std": 0.0, "view_residual": 0.0}
    UncertaintyCalibration(0.0, weights, cal.parts_sha256, {**cal.source, "view_residual": "none"}).save(
        cal_file
    )
    none = _run(setup, tmp_path / "none", inputs, model=str(model))
    assert (
        none["uncertainty"].startswith("expected |error|, HU") and "view residual none" in none["uncertainty"]
    )
    np.testing.assert_allclose(read_volume(tmp_path / "none" / "uncertainty.nrrd").array, std, atol=1e-3)
