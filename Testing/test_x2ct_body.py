"""Whole-body chest phantom and the ``body:`` source of the XRayToCT cache (radiograph-like training views)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xraycardiac.geometry import CArmGeometry
from xraycardiac.geometry.carm import project_points
from xraycardiac.phantoms.chest_body import BODY_LABELS, make_body_phantom
from xraycardiac.projection import MU_WATER_PER_MM, render_drr
from xraycardiac.volume import Volume
from xraycardiac.xray2ct.body_source import degrade_view
from xraycardiac.xray2ct.data import X2CTDataConfig, X2CTDataset, build_cache, unit_to_hu
from xraycardiac.xray2ct.evaluate import load_cache_cases

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = X2CTDataConfig(grid=16, spacing_mm=16.0)


def test_body_phantom_holds_the_whole_torso_and_the_added_anatomy() -> None:
    ct, labels = make_body_phantom(3, spacing_mm=12.0)
    again, _ = make_body_phantom(3, spacing_mm=12.0)
    np.testing.assert_array_equal(ct.array, again.array)
    lab = np.asarray(labels.array)
    present = set(np.unique(lab).tolist())
    for name in ("heart", "aorta", "lungs", "ribs", "spine", "pulmonary_arteries", "clavicles", "scapulae"):
        assert BODY_LABELS[name] in present, name
    # The body never touches the x / y faces of the field: a radiograph of it shows no box edge.
    body = lab != BODY_LABELS["air"]
    assert not body[:, :, [0, -1]].any() and not body[:, [0, -1], :].any()
    draws = [json.loads(make_body_phantom(s, spacing_mm=16.0)[0].meta["body_json"]) for s in range(8)]
    assert {d["contrast"] for d in draws} == {True, False}
    assert any("breast_glandular_fraction" in d for d in draws)
    assert any("breast_glandular_fraction" not in d for d in draws)
    with pytest.raises(ValueError, match="seed"):
        make_body_phantom(-1)


def test_degrade_view_heel_scatter_noise_and_collimation() -> None:
    lines = np.tile(np.linspace(0.0, 4.0, 32), (32, 1))
    clean = {
        "heel": 0.0,
        "scatter_to_primary": 0.0,
        "scatter_sigma_mm": 40.0,
        "photons": 1e12,
        "collimation": None,
    }
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(degrade_view(lines, clean, 8.0, rng), lines, atol=1e-4)
    scatter = degrade_view(lines, {**clean, "scatter_to_primary": 0.5}, 8.0, rng)
    assert scatter[:, -1].mean() < lines[:, -1].mean() - 0.1  # scatter lifts the dark end: less contrast
    assert scatter[:, 0].mean() < 0.1  # flat-field normalised: air stays about 0
    heel = degrade_view(np.full((32, 32), 2.0), {**clean, "heel": 0.1}, 8.0, rng)
    assert heel[0].mean() > heel[-1].mean() + 0.1  # less incident intensity at the top rows
    noisy = degrade_view(lines, {**clean, "photons": 1e3}, 8.0, rng)
    assert 0.01 < np.std(noisy - lines) < 1.0
    col = degrade_view(lines, {**clean, "collimation": [0.25, 0.0, 0.0, 0.0]}, 8.0, rng)
    assert np.all(col[:8] == col[0, 0]) and col[0, 0] >= np.percentile(lines, 99)


def test_body_cache_renders_the_whole_body_about_a_drawn_isocentre(tmp_path: Path) -> None:
    out = tmp_path / "cache"
    summary = build_cache(["body:0-2"], out, SMALL, seed=5)
    assert summary["written"] == ["body_00000", "body_00001", "body_00002"]
    data = X2CTDataset(out, "all")
    items = [data[i] for i in range(len(data))]
    matrices = [it["projection_matrices"].numpy() for it in items]
    assert not np.allclose(matrices[0], matrices[1])  # a drawn geometry per case
    s = SMALL.image_size
    evals = load_cache_cases(out, "all")  # each case with the geometry of its drawn acquisition
    for it, case, ev in zip(items, data.cases, evals, strict=True):
        with np.load(out / case["file"]) as z:
            np.testing.assert_array_equal(it["projection_matrices"].numpy(), z["projection_matrices"])
            acq = json.loads(str(z["acquisition"]))
        assert 1000.0 <= acq["sid_mm"] <= 1800.0
        a = it["ijk_to_ras"].numpy()
        centre = (a @ np.r_[np.full(3, (SMALL.grid - 1) / 2.0), 1.0])[:3]
        for p in it["projection_matrices"].numpy():  # the cube is centred on the isocentre
            np.testing.assert_allclose(project_points(p, centre[None])[0], [(s - 1) / 2.0] * 2, atol=1e-6)
        # Whole body, not the cube: compared with the cube rendered alone in the same geometry.
        cube = Volume(array=unit_to_hu(it["ct"].numpy()[0], SMALL.hu_window), ijk_to_ras=a)
        pixel = acq["detector_mm"] / s
        for k, view in enumerate(SMALL.views):
            g = CArmGeometry.preset(view, sid_mm=acq["sid_mm"], sod_mm=acq["sid_mm"] - acq["views"][view]["gap_mm"],
                                    detector_rows=s, detector_cols=s, pixel_spacing_mm=(pixel, pixel),
                                    isocenter_ras_mm=tuple(centre))  # fmt: skip
            assert ev.geometries[k] == g, (ev.geometries[k], g)
            np.testing.assert_allclose(g.projection_matrix(), it["projection_matrices"].numpy()[k], rtol=1e-9)
            alone = render_drr(cube, g).array[0] / (MU_WATER_PER_MM * SMALL.drr_water_mm)
            outside = alone < 1e-6  # rays that miss the cube: the body shows there (no box edge)
            assert outside.mean() > 0.1 and (it["views"].numpy()[k][outside] > 0.05).mean() > 0.25
    again = tmp_path / "again"
    build_cache(["body:1"], again, SMALL, seed=5)
    with np.load(out / "cases/body_00001.npz") as z1, np.load(again / "cases/body_00001.npz") as z2:
        np.testing.assert_array_equal(z1["views"], z2["views"])  # deterministic per (seed, k)
    with pytest.raises(ValueError, match="body:<k> or body:<a>-<b>"):
        build_cache(["body:3-1"], tmp_path / "bad", SMALL)


def test_encoder_trains_on_each_body_case_geometry_single_and_biplanar(tmp_path: Path) -> None:
    from xraycardiac.xray2ct.autoencoder import train_x2ct_autoencoder
    from xraycardiac.xray2ct.train import train_x2ct_encoder

    build_cache(["body:0-3"], tmp_path / "cache", SMALL, seed=2)
    fast = ["batch_size=2", "device=cpu", "log_every=1", "warmup_steps=1", "checkpoint_every=1", "steps=1"]
    kw = dict(split="all", command="test")
    train_x2ct_autoencoder(tmp_path / "cache", tmp_path / "ae", overrides=["grid=16", "channels=[8,8,8]",
                           "norm_num_groups=4", *fast], **kw)  # fmt: skip
    enc = ["cnn_channels=[8,8]", "unet_channels=[8,8]", "feature_channels=4", *fast]
    for n_views in (1, 2):  # the batch's per-case matrices are picked for the encoder's views
        out = train_x2ct_encoder(tmp_path / "cache", tmp_path / f"enc{n_views}", tmp_path / "ae",
                                 overrides=[*enc, f"n_views={n_views}"], **kw)  # fmt: skip
        assert out["step"] == 1 and np.isfinite(out["last_log"]["loss"])


def test_sart_reconstructs_a_body_case_with_its_own_geometry(tmp_path: Path) -> None:
    """x2ct evaluate's classical rows on a body: cache: SART runs with each case's drawn geometry (it
    refused these cases before), beats the air it starts from, and beats the same SART given the
    training geometry instead (measured 9.9 vs 7.1 dB)."""
    from dataclasses import replace

    from xraycardiac.metrics import psnr
    from xraycardiac.xray2ct.data import view_geometries
    from xraycardiac.xray2ct.evaluate import parse_x2ct_method
    from xraycardiac.xray2ct.sparse_view import reconstruct_sparse_view

    build_cache(["body:0"], tmp_path / "cache", SMALL, seed=5)
    (case,) = load_cache_cases(tmp_path / "cache", "all")
    got = parse_x2ct_method("sart:5").run(case)
    assert got.shape == case.truth_hu.shape and np.isfinite(got).all()
    cfg = case.config
    training = list(view_geometries(replace(cfg, views=case.view_names), case.centre_ras).values())
    lines = case.views.astype(np.float64) * (MU_WATER_PER_MM * cfg.drr_water_mm)
    wrong = reconstruct_sparse_view(lines, training, case.truth_hu.shape, case.ijk_to_ras, "sart", 5,
                                    step_mm=cfg.drr_step_mm).array  # fmt: skip
    score = {k: psnr(v, case.truth_hu, data_range=2000.0) for k, v in
             (("own", got), ("training", wrong), ("air", np.full_like(got, -1000.0)))}  # fmt: skip
    assert score["own"] > score["air"] and score["own"] > score["training"] + 2.0, score
