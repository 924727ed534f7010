"""Cardiac label table and the procedural cardiac CT phantom (labels, topology, anatomy, determinism)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from xraycardiac.cardiac.labels import (
    AORTA,
    CORONARY_LABELS,
    FINE_LABELS,
    LA,
    LABEL_TABLE,
    LCA,
    LV,
    MYO,
    PA,
    RA,
    RCA,
    RV,
    WHOLE_HEART,
    expected_betti,
    label_by_name,
    label_info,
    slicer_color_table,
    structure_betti,
)
from xraycardiac.metrics.topology import per_label_betti
from xraycardiac.phantoms import CardiacPhantomConfig, build_cardiac_phantom, make_cardiac_phantom

HEART = (LV, RV, LA, RA, MYO, LCA, RCA)


@pytest.fixture(scope="module")
def phantom0():
    return build_cardiac_phantom(CardiacPhantomConfig(seed=0))


def _centroid(labels, values) -> np.ndarray:
    kji = np.argwhere(np.isin(labels.array, values))
    return labels.ijk_to_ras_points(kji[:, ::-1].astype(float)).mean(axis=0)


# ---- label table ----


def test_label_table_is_consistent():
    values = [e.value for e in LABEL_TABLE]
    assert values == sorted(set(values)) == list(range(1, 16))  # 10 heart, 11-15 great vessels
    assert FINE_LABELS == tuple(range(1, 10)) and CORONARY_LABELS == (8, 9) and WHOLE_HEART == 10
    assert all(all(0 <= c <= 255 for c in e.color_rgb) for e in LABEL_TABLE)
    assert len({e.color_rgb for e in LABEL_TABLE}) == len(LABEL_TABLE), "colours must be distinguishable"
    for v in FINE_LABELS:
        assert expected_betti(v) == (1, 0, 0)
    assert all(expected_betti(v) is None for v in range(WHOLE_HEART, 16))
    # Contrast-enhanced blood 250-400 HU, myocardium ~100 HU.
    for v in (LV, LA, AORTA, LCA, RCA):
        assert 300 <= label_info(v).hu_mean <= 400, label_info(v)
    assert 60 <= label_info(MYO).hu_mean <= 140
    assert [e.tubular for e in LABEL_TABLE].count(True) == 2
    assert label_by_name("LV myocardium").value == MYO and label_by_name("rca").value == RCA
    with pytest.raises(ValueError, match="not in the cardiac label table"):
        label_info(42)
    table = slicer_color_table()
    assert table.splitlines()[1] == "0 background 0 0 0 0" and "\n5 myo 188 65 28 255\n" in table


def test_structure_betti_matches_per_label_betti(phantom0):
    labels = phantom0.labels.array
    assert structure_betti(labels, [*FINE_LABELS, 10]) == per_label_betti(labels, [*FINE_LABELS, 10])


# ---- phantom ----


def test_phantom_labels_present_with_expected_topology(phantom0):
    image, labels = phantom0.image, phantom0.labels
    assert labels.array.dtype == np.uint8 and image.array.dtype == np.float32
    assert labels.array.shape == image.array.shape == (64, 64, 64)
    np.testing.assert_array_equal(labels.ijk_to_ras, image.ijk_to_ras)
    assert sorted(int(v) for v in np.unique(labels.array)) == [0, *FINE_LABELS]
    found = structure_betti(labels.array, FINE_LABELS)
    for v in FINE_LABELS:
        assert found[v] == label_info(v).betti, f"{label_info(v).name}: Betti {found[v]}"
    # Plausible volumes (mL) at heart scale 0.82-0.92: chambers tens of mL, coronaries a few.
    ml = {v: float((labels.array == v).sum()) * 2.5**3 / 1000.0 for v in FINE_LABELS}
    for v in (LV, RV, MYO):
        assert 20.0 < ml[v] < 150.0, (label_info(v).name, ml[v])
    for v in (LA, RA, PA):
        assert 8.0 < ml[v] < 80.0, (label_info(v).name, ml[v])
    for v in CORONARY_LABELS:
        assert 1.0 < ml[v] < 15.0, (label_info(v).name, ml[v])


def test_phantom_image_intensities(phantom0):
    image, labels = phantom0.image.array, phantom0.labels.array
    assert -1024.0 <= image.min() and image.max() <= 3071.0

    def median(v: int) -> float:
        core = labels == v
        return float(np.median(image[core]))

    params = json.loads(phantom0.labels.meta["config_json"])
    jitter = params["enhancement_jitter_hu"]
    assert abs(median(LV) - label_info(LV).hu_mean) <= jitter + 20.0, median(LV)
    assert abs(median(AORTA) - label_info(AORTA).hu_mean) <= jitter + 20.0, median(AORTA)
    assert 40.0 < median(MYO) < 180.0, median(MYO)
    assert median(LV) - median(MYO) > 150.0
    assert np.percentile(image[labels == 0], 5) < -700.0, "no lung in the background"
    # Texture + noise: the blood pool is not flat, but not wildly noisy either.
    assert 10.0 < float(image[labels == AORTA].std()) < 80.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_phantom_anatomy_left_heart_and_apex_direction(seed):
    ph = build_cardiac_phantom(CardiacPhantomConfig(seed=seed))
    labels = ph.labels
    # The heart lies left of the midsagittal plane x = 0 (RAS: left = -x), the LV left of the RV.
    heart = _centroid(labels, HEART)
    assert heart[0] < -10.0, f"heart centroid {heart}"
    lv, rv, la, ra = (_centroid(labels, [v]) for v in ((LV, MYO), RV, LA, RA))
    assert lv[0] < rv[0], (lv, rv)
    # Atria posterior-superior of the ventricles; RA right of the LA.
    assert la[1] < lv[1] and la[2] > lv[2], (la, lv)
    assert ra[2] > rv[2] and ra[0] > la[0], (ra, rv, la)
    # LV long axis (principal axis of LV + myocardium, oriented from the atria to the apex) points
    # left-anterior-inferior.
    kji = np.argwhere(np.isin(labels.array, (LV, MYO)))
    pts = labels.ijk_to_ras_points(kji[:, ::-1].astype(float))
    _, _, vt = np.linalg.svd(pts - pts.mean(axis=0), full_matrices=False)
    axis = vt[0] if vt[0] @ (lv - la) > 0 else -vt[0]
    assert axis[0] < -0.3 and axis[1] > 0.2 and axis[2] < -0.2, f"LV axis {axis}"
    assert np.dot(axis, ph.landmarks["lv_long_axis_ras"]) > 0.9
    # Great vessels: the aorta reaches above the heart; the PA root is anterior of the aortic root.
    kji = np.argwhere(labels.array == AORTA)
    assert labels.ijk_to_ras_points(kji[:, ::-1].astype(float))[:, 2].max() > _centroid(labels, HEART)[2] + 40
    assert ph.landmarks["pa_root_ras"][1] > ph.landmarks["aortic_root_ras"][1]


def test_phantom_deterministic_per_seed_and_varies_across_seeds():
    image_a, labels_a = make_cardiac_phantom(CardiacPhantomConfig(seed=3))
    image_b, labels_b = make_cardiac_phantom(CardiacPhantomConfig(seed=3))
    np.testing.assert_array_equal(labels_a.array, labels_b.array)
    np.testing.assert_array_equal(image_a.array, image_b.array)
    _, labels_c = make_cardiac_phantom(CardiacPhantomConfig(seed=4))
    changed = float(np.mean(labels_a.array != labels_c.array))
    assert changed > 0.01, f"seeds 3 and 4 differ in only {changed:.4f} of the voxels"
    va = [(labels_a.array == v).sum() for v in FINE_LABELS]
    vc = [(labels_c.array == v).sum() for v in FINE_LABELS]
    assert va != vc


def test_phantom_coronaries_are_single_trees_at_coarse_spacing():
    # 4 mm voxels: distal vessels are 4x thinner than a voxel; each tree must still be one
    # 26-connected component without loops or cavities.
    cfg = CardiacPhantomConfig(seed=5, shape_ijk=(40, 40, 40), spacing_mm=4.0)
    ph = build_cardiac_phantom(cfg)
    found = structure_betti(ph.labels.array, CORONARY_LABELS)
    assert found == {LCA: (1, 0, 0), RCA: (1, 0, 0)}, found
    coverage = json.loads(ph.labels.meta["parameters_json"])["coronary_voxel_coverage"]
    assert min(coverage.values()) > 0.9, coverage
    # The tree ground truth is returned and lies on this heart (centrelines just outside it).
    assert ph.coronary_tree is not None
    d = ph.heart.signed_distance_mm(ph.coronary_tree.points)
    assert np.allclose(d, cfg.coronary_surface_offset_mm, atol=0.05), (d.min(), d.max())


def test_phantom_without_coronaries_and_config_errors():
    _, labels = make_cardiac_phantom(
        CardiacPhantomConfig(seed=1, coronary=False, shape_ijk=(48, 48, 48), spacing_mm=3.4)
    )
    present = {int(v) for v in np.unique(labels.array)}
    assert present == {0, LV, RV, LA, RA, MYO, AORTA, PA}
    with pytest.raises(ValueError, match="CardiacPhantomConfig.spacing_mm"):
        CardiacPhantomConfig(spacing_mm=0.0)
    with pytest.raises(ValueError, match="CardiacPhantomConfig.heart_scale"):
        CardiacPhantomConfig(heart_scale=(1.0, 0.9))
    with pytest.raises(ValueError, match="CardiacPhantomConfig.shape_ijk"):
        CardiacPhantomConfig(shape_ijk=(8, 64, 64))
    with pytest.raises(ValueError, match="CardiacPhantomConfig.seed"):
        CardiacPhantomConfig(seed=-1)
