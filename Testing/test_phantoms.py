"""Procedural chest CT phantom: anatomy in RAS, HU per tissue, geometry, determinism, configuration."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from xraycardiac.phantoms import HU, LABELS, ChestPhantomConfig, make_chest_phantom
from xraycardiac.volume import Volume

# (shape, spacing mm): the demo grid, and coarser / finer grids that hold the same ~380 mm chest.
GRIDS = [(96, 4.0), (64, 6.0), (128, 3.0)]


@pytest.fixture(scope="module")
def phantom() -> tuple[Volume, Volume]:
    return make_chest_phantom(ChestPhantomConfig())


def _centroid(labels: Volume, mask: np.ndarray) -> np.ndarray:
    k, j, i = np.nonzero(mask)
    assert k.size, "empty mask"
    return labels.ijk_to_ras_points(np.stack([i, j, k], axis=1).mean(axis=0, keepdims=True))[0]


def test_ct_and_labels_share_the_documented_grid(phantom: tuple[Volume, Volume]) -> None:
    ct, labels = phantom
    assert ct.array.shape == labels.array.shape == (96, 96, 96)
    assert ct.array.dtype == np.float32 and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(ct.ijk_to_ras, labels.ijk_to_ras)
    np.testing.assert_allclose(
        ct.directions, np.eye(3), err_msg="directions must be identity (I=R, J=A, K=S)"
    )
    np.testing.assert_allclose(ct.spacing, [4.0, 4.0, 4.0])
    np.testing.assert_allclose(
        ct.center_ras(), [0.0, 0.0, 0.0], atol=1e-9, err_msg="grid centre must be RAS 0"
    )
    assert np.all(np.isfinite(ct.array))
    assert set(np.unique(labels.array).tolist()) <= set(LABELS.values())


@pytest.mark.parametrize(("n", "spacing"), [*GRIDS, (64, 4.0)])
def test_every_label_is_present(n: int, spacing: float) -> None:
    _, labels = make_chest_phantom(ChestPhantomConfig(shape_ijk=(n, n, n), spacing_mm=spacing, seed=1))
    counts = {name: int((labels.array == v).sum()) for name, v in LABELS.items()}
    assert min(counts.values()) > 0, f"{n}^3 at {spacing} mm: voxels per label {counts}"


def test_anatomy_is_in_place(phantom: tuple[Volume, Volume]) -> None:
    _, labels = phantom
    lab = labels.array
    c = {name: _centroid(labels, lab == v) for name, v in LABELS.items() if name != "air"}

    lungs, n_lungs = ndimage.label(lab == LABELS["lungs"])
    assert n_lungs == 2, f"expected two separate lungs, got {n_lungs} components"
    xs = sorted(_centroid(labels, lungs == i)[0] for i in (1, 2))
    assert xs[0] < -40 and xs[1] > 40, (
        f"lung centroids x = {xs} mm: expected one left (< -40) and one right (> 40)"
    )

    heart, spine = c["heart"], c["spine"]
    assert heart[0] < -5, f"heart centroid x = {heart[0]:.1f} mm: expected on the patient's left (x < 0)"
    assert heart[1] > spine[1] + 40, (
        f"heart y = {heart[1]:.1f} mm, spine y = {spine[1]:.1f}: heart not anterior"
    )
    assert abs(spine[0]) < 2, f"spine centroid x = {spine[0]:.1f} mm: expected on the midline"
    assert spine[1] < c["body"][1] - 40, (
        f"spine y = {spine[1]:.1f} mm vs body {c['body'][1]:.1f}: not posterior"
    )
    assert heart[2] < c["lungs"][2], (
        f"heart z = {heart[2]:.1f} not below the lungs' centroid {c['lungs'][2]:.1f}"
    )

    liver = c["liver"]
    assert liver[0] > 15, f"liver centroid x = {liver[0]:.1f} mm: expected on the patient's right"
    assert liver[2] < c["lungs"][2] - 60, f"liver z = {liver[2]:.1f} mm: expected below the lungs"
    assert abs(c["airways"][0]) < 5, f"airways centroid x = {c['airways'][0]:.1f} mm: expected midline"

    # Descending aorta (the part below the heart's centre slice): left of the spine.
    k_heart = int(round(np.nonzero(lab == LABELS["heart"])[0].mean()))
    lower = np.zeros_like(lab, dtype=bool)
    lower[:k_heart] = lab[:k_heart] == LABELS["aorta"]
    desc = _centroid(labels, lower)
    assert desc[0] < spine[0] - 15, (
        f"descending aorta x = {desc[0]:.1f} mm, spine x = {spine[0]:.1f}: not left"
    )

    # Ribs: twelve pairs plus the sternum, each a separate bony band.
    _, n_ribs = ndimage.label(lab == LABELS["ribs"])
    assert n_ribs == 25, f"expected 24 ribs + sternum = 25 components, got {n_ribs}"


@pytest.mark.parametrize(("n", "spacing"), GRIDS)
@pytest.mark.parametrize("seed", [0, 3])
def test_heart_spine_aorta_are_one_piece(n: int, spacing: float, seed: int) -> None:
    _, labels = make_chest_phantom(ChestPhantomConfig(shape_ijk=(n, n, n), spacing_mm=spacing, seed=seed))
    for name in ("heart", "spine", "aorta"):
        _, count = ndimage.label(labels.array == LABELS[name])  # face connectivity: the strict one
        assert count == 1, f"{name}: {count} connected components at {n}^3, {spacing} mm, seed {seed}"


def test_hu_medians_per_label(phantom: tuple[Volume, Volume]) -> None:
    ct, labels = phantom
    expected = {
        "air": (-1010, -990),
        "body": (-100, 40),
        "lungs": (-900, -780),
        "heart": (25, 60),
        "aorta": (25, 200),
        "spine": (300, 700),
        "ribs": (400, 1000),
        "liver": (40, 70),
        "airways": (-1010, -500),
    }
    medians = {name: float(np.median(ct.array[labels.array == LABELS[name]])) for name in expected}
    bad = {n: round(m, 1) for n, m in medians.items() if not expected[n][0] <= m <= expected[n][1]}
    assert not bad, f"median HU out of range: {bad} (expected {expected})"
    # Lung vessels: brighter tubular structures inside the lungs, -600..0 HU once blurred.
    lung = ct.array[labels.array == LABELS["lungs"]]
    vessel_fraction = float(np.mean(lung > -600))
    assert 0.01 < vessel_fraction < 0.2, f"fraction of lung voxels above -600 HU = {vessel_fraction:.3f}"


def test_same_seed_is_identical_and_other_seeds_differ() -> None:
    cfg = ChestPhantomConfig(shape_ijk=(64, 64, 64), spacing_mm=6.0, seed=7)
    ct1, lab1 = make_chest_phantom(cfg)
    ct2, lab2 = make_chest_phantom(cfg)
    np.testing.assert_array_equal(ct1.array, ct2.array)
    np.testing.assert_array_equal(lab1.array, lab2.array)
    ct3, lab3 = make_chest_phantom(dataclasses.replace(cfg, seed=8))
    changed = float(np.mean(lab1.array != lab3.array))
    assert changed > 0.01, f"seeds 7 and 8 give label maps differing in only {changed:.4f} of voxels"
    assert json.loads(ct1.meta["parameters_json"]) != json.loads(ct3.meta["parameters_json"])


def test_sampled_parameters_lie_in_the_configured_ranges() -> None:
    cfg = ChestPhantomConfig()
    for seed in range(5):
        ct, _ = make_chest_phantom(
            dataclasses.replace(cfg, shape_ijk=(32, 32, 32), spacing_mm=12.0, seed=seed)
        )
        params = json.loads(ct.meta["parameters_json"])
        for name, value in params.items():
            lo, hi = getattr(cfg, name)
            for v in value if isinstance(value, list) else [value]:
                assert lo <= v <= hi, f"seed {seed}: {name} = {v} outside [{lo}, {hi}]"


def test_torso_size_follows_the_config() -> None:
    cfg = ChestPhantomConfig(torso_half_width_mm=(170.0, 170.0), torso_half_depth_mm=(110.0, 110.0), seed=2)
    _, labels = make_chest_phantom(cfg)
    k, j, i = np.nonzero(labels.array != LABELS["air"])
    ras = labels.ijk_to_ras_points(np.stack([i, j, k], axis=1))
    half_width, half_depth = np.abs(ras[:, 0]).max(), np.abs(ras[:, 1]).max()
    assert abs(half_width - 170.0) <= 4.0, f"body half-width {half_width:.1f} mm, configured 170"
    assert abs(half_depth - 110.0) <= 4.0, f"body half-depth {half_depth:.1f} mm, configured 110"


def test_noise_smoothing_and_blood_hu_follow_the_config() -> None:
    base = ChestPhantomConfig(shape_ijk=(64, 64, 64), spacing_mm=6.0, seed=4, smoothing_sigma_mm=0.0)
    clean, labels = make_chest_phantom(dataclasses.replace(base, noise_std_hu=0.0, blood_pool_hu=300.0))
    liver = clean.array[labels.array == LABELS["liver"]]
    np.testing.assert_array_equal(
        liver, np.float32(HU["liver"]), err_msg="liver must be exactly its nominal HU"
    )
    aorta = clean.array[labels.array == LABELS["aorta"]]
    np.testing.assert_array_equal(aorta, np.float32(300.0), err_msg="aorta must carry blood_pool_hu")
    noisy, _ = make_chest_phantom(dataclasses.replace(base, noise_std_hu=25.0, blood_pool_hu=300.0))
    inside = (clean.array > -1000) & (clean.array < 3000)  # away from the clipping limits
    std = float((noisy.array - clean.array)[inside].std())
    assert abs(std - 25.0) < 1.0, f"noise std {std:.2f} HU, configured 25"


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("shape_ijk", (8, 96, 96), "shape_ijk"),
        ("spacing_mm", 0.0, "spacing_mm"),
        ("seed", -1, "seed"),
        ("heart_scale", (1.2, 0.9), "heart_scale"),
        ("rib_spacing_mm", (0.0, 20.0), "rib_spacing_mm"),
        ("noise_std_hu", -1.0, "noise_std_hu"),
        ("torso_half_depth_mm", (50.0, 60.0), "torso_half_depth_mm"),
    ],
)
def test_bad_config_raises_naming_the_field(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ChestPhantomConfig(**{field: value})


def test_write_phantom_pair_round_trips(tmp_path) -> None:
    io = pytest.importorskip("xraycardiac.io")
    from xraycardiac.phantoms import write_phantom_pair

    cfg = ChestPhantomConfig(shape_ijk=(32, 32, 32), spacing_mm=12.0, seed=5)
    ct_path, lab_path = write_phantom_pair(tmp_path, cfg)
    ct, labels = make_chest_phantom(cfg)
    ct_back, lab_back = io.read_volume(ct_path), io.read_volume(lab_path)
    np.testing.assert_array_equal(lab_back.array, labels.array)
    np.testing.assert_allclose(ct_back.array, ct.array)
    np.testing.assert_allclose(ct_back.ijk_to_ras, ct.ijk_to_ras, atol=1e-6)
    np.testing.assert_allclose(lab_back.ijk_to_ras, labels.ijk_to_ras, atol=1e-6)
