"""Standard angiographic view-pair sampling: DICOM signs, ranges, separation, degenerate pairs."""

from __future__ import annotations

import numpy as np
import pytest

from xraycardiac.coronary.synth.views import (
    StandardView,
    ViewSamplingConfig,
    angle_between_views,
    check_view_pair,
    sample_view_pair,
)
from xraycardiac.geometry import CArmGeometry


@pytest.mark.parametrize("side", ["left", "right"])
def test_samples_respect_ranges_signs_and_separation(side):
    cfg = ViewSamplingConfig()
    views = {v.name: v for v in cfg.views_for(side)}
    rng = np.random.default_rng(1234)
    iso = np.array([10.0, -20.0, 30.0])
    names = set()
    for _ in range(200):
        g1, g2 = sample_view_pair(side, rng, cfg, iso)
        sep = angle_between_views(g1, g2)
        assert sep >= cfg.min_separation_deg, f"{g1.name}/{g2.name}: separation {sep:.2f} deg < 25"
        assert g1.name != g2.name, f"the same standard view twice: {g1.name}"
        for g in (g1, g2):
            names.add(g.name)
            v = views[g.name]
            a, b = g.primary_angle_deg, g.secondary_angle_deg
            assert v.primary_deg[0] <= a <= v.primary_deg[1], f"{g.name}: primary {a}"
            assert v.secondary_deg[0] <= b <= v.secondary_deg[1], f"{g.name}: secondary {b}"
            # DICOM signs: LAO > 0, RAO < 0, CRA > 0, CAU < 0
            if g.name.startswith("LAO"):
                assert a > 0, f"{g.name} has primary {a} <= 0"
            if g.name.startswith("RAO"):
                assert a < 0, f"{g.name} has primary {a} >= 0"
            if g.name.endswith("CRA"):
                assert b > 0, f"{g.name} has secondary {b} <= 0"
            if g.name.endswith("CAU"):
                assert b < 0, f"{g.name} has secondary {b} >= 0"
            assert 900 <= g.sid_mm <= 1200 and 600 <= g.sod_mm <= 800, (g.sid_mm, g.sod_mm)
            assert g.sid_mm - g.sod_mm >= 250 - 1e-9, f"air gap {g.sid_mm - g.sod_mm:.1f} mm < 250"
            jit = np.abs(g.isocenter - iso).max()
            assert jit <= 10.0 + 1e-9, f"isocentre jitter {jit:.2f} mm > 10"
            assert (g.detector_rows, g.detector_cols) == (512, 512)
            assert 0.3 <= g.pixel_spacing_mm[0] <= 0.4
    assert names == set(views), f"views never drawn: {set(views) - names}"


def test_lao_view_puts_the_detector_on_the_patients_left():
    """LAO: the detector (beam end) is on the patient's left (RAS -x); cranial: toward the head (+z)."""
    g = CArmGeometry(45.0, 20.0)
    d = g.beam_direction
    assert d[0] < 0 and d[2] > 0, f"LAO 45 CRA 20 beam direction {d}"


def test_sampling_is_reproducible_from_the_seed():
    a = sample_view_pair("RCA", np.random.default_rng(7))
    b = sample_view_pair("rca", np.random.default_rng(7))
    assert a == b


def test_identical_angles_are_rejected_with_the_separation():
    g = CArmGeometry(30.0, 20.0, name="LAO-CRA")
    with pytest.raises(ValueError, match=r"0\.00 deg apart, at least 25\.00"):
        check_view_pair(g, g.with_(sid_mm=1100.0), 25.0)
    with pytest.raises(ValueError, match=r"10\.00 deg apart"):
        check_view_pair(CArmGeometry(0.0, 0.0), CArmGeometry(10.0, 0.0), 25.0)
    sep = check_view_pair(CArmGeometry(-30.0, 0.0), CArmGeometry(30.0, 0.0), 25.0)
    assert sep == pytest.approx(60.0), f"RAO 30 vs LAO 30: {sep} deg"


def test_impossible_separation_raises():
    narrow = (StandardView("A", (0.0, 1.0), (0.0, 0.0)), StandardView("B", (2.0, 3.0), (0.0, 0.0)))
    cfg = ViewSamplingConfig(rca_views=narrow, max_attempts=20)
    with pytest.raises(ValueError, match="min_separation_deg"):
        sample_view_pair("right", np.random.default_rng(0), cfg)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"sid_mm": (900.0, 950.0), "sod_mm": (750.0, 800.0)}, "min_air_gap_mm"),
        ({"lca_views": (StandardView("X", (0.0, 1.0), (0.0, 0.0)),)}, "lca_views"),
        ({"pixel_spacing_mm": (0.4, 0.3)}, "pixel_spacing_mm"),
        ({"min_separation_deg": 180.0}, "min_separation_deg"),
    ],
)
def test_bad_config_names_the_field(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ViewSamplingConfig(**kwargs)


def test_bad_tree_side():
    with pytest.raises(ValueError, match="tree_side"):
        sample_view_pair("middle", np.random.default_rng(0))
