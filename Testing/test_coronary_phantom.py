"""Procedural coronary tree: literature lengths and calibres, Murray's law, surface, topology, anatomy."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from xraycardiac.coronary import CoronaryTree
from xraycardiac.phantoms import CoronaryPhantomConfig, HeartEllipsoid, make_coronary_tree
from xraycardiac.volume import Volume

SEEDS = range(6)
DEFAULT = CoronaryPhantomConfig()


@pytest.fixture(scope="module")
def trees() -> dict[int, CoronaryTree]:
    return {seed: make_coronary_tree(CoronaryPhantomConfig(seed=seed)) for seed in SEEDS}


@pytest.fixture(scope="module")
def stenosed() -> dict[int, CoronaryTree]:
    return {seed: make_coronary_tree(CoronaryPhantomConfig(seed=seed, stenosis_count=3)) for seed in SEEDS}


def _children(tree: CoronaryTree, i: int) -> np.ndarray:
    return np.flatnonzero(tree.parents == i)


def _stenosis_window(tree: CoronaryTree) -> np.ndarray:
    """Points within 3 sigma (+ one step) of a recorded stenosis, on its branch."""
    arc = tree.arc_length()
    out = np.zeros(tree.num_points, dtype=bool)
    for s in tree.meta["stenoses"]:
        on = tree.branch == tree.branch_id(s["branch"])
        out |= on & (np.abs(arc - s["arc_length_mm"]) <= 3 * s["sigma_mm"] + 1.0)
    return out


# --------------------------------------------------------------------------------------------------
# Lengths and calibres
# --------------------------------------------------------------------------------------------------


def test_branch_lengths_are_in_the_configured_ranges(trees: dict[int, CoronaryTree]) -> None:
    ranges = {
        "LM": DEFAULT.lm_length_mm,
        "LAD": DEFAULT.lad_length_mm,
        "LCx": DEFAULT.lcx_length_mm,
        "RCA": DEFAULT.rca_length_mm,
        "D": DEFAULT.diagonal_length_mm,
        "OM": DEFAULT.obtuse_marginal_length_mm,
        "AM": DEFAULT.acute_marginal_length_mm,
        "PDA": DEFAULT.pda_length_mm,
    }
    for seed, t in trees.items():
        for name in t.branch_names:
            lo, hi = ranges[name.rstrip("0123456789")]
            length = t.branch_length_mm(name)
            # Chords of an arc sampled every ~1 mm are shorter than the arc by < 0.1 %.
            assert lo * 0.999 <= length <= hi, f"seed {seed}: {name} is {length:.2f} mm, range [{lo}, {hi}]"


def test_branch_names_and_counts(trees: dict[int, CoronaryTree]) -> None:
    for seed, t in trees.items():
        names = t.branch_names
        assert names[:3] == ["LM", "LAD", "LCx"] and "RCA" in names and "PDA" in names, names
        for prefix, (lo, hi) in (
            ("D", DEFAULT.n_diagonals),
            ("OM", DEFAULT.n_obtuse_marginals),
            ("AM", DEFAULT.n_acute_marginals),
        ):
            n = sum(1 for s in names if s.rstrip("0123456789") == prefix)
            assert lo <= n <= hi, f"seed {seed}: {n} {prefix} branches, range [{lo}, {hi}]"
        for name in names:
            expected = 1 if name in ("RCA", "PDA") or name.startswith("AM") else 0
            assert np.all(t.tree[t.branch_points(name)] == expected), f"seed {seed}: {name} in the wrong tree"


def test_proximal_and_distal_diameters_follow_the_literature(trees: dict[int, CoronaryTree]) -> None:
    for seed, t in trees.items():
        d0 = {name: 2 * t.radii[t.branch_points(name)[0]] for name in t.branch_names}
        assert DEFAULT.lm_diameter_mm[0] <= d0["LM"] <= DEFAULT.lm_diameter_mm[1], (
            f"seed {seed}: LM {d0['LM']:.2f}"
        )
        assert DEFAULT.rca_diameter_mm[0] <= d0["RCA"] <= DEFAULT.rca_diameter_mm[1], (
            f"seed {seed}: RCA {d0['RCA']}"
        )
        assert 3.2 <= d0["LAD"] <= 4.2 and 2.9 <= d0["LCx"] <= 3.8, (
            f"seed {seed}: LAD/LCx {d0['LAD']}, {d0['LCx']}"
        )
        assert d0["LAD"] > d0["LCx"], f"seed {seed}: LAD {d0['LAD']:.2f} <= LCx {d0['LCx']:.2f} mm"
        for name, d in d0.items():
            if name not in ("LM", "LAD", "LCx", "RCA"):
                assert 0.9 <= d <= 3.0, f"seed {seed}: side branch {name} starts at {d:.2f} mm"
        ends = 2 * t.radii[t.endpoints()]
        lo, hi = DEFAULT.distal_diameter_mm
        assert np.all((ends >= lo - 1e-9) & (ends <= hi + 1e-9)), (
            f"seed {seed}: distal diameters {np.sort(ends)}"
        )
        assert 2 * t.radii.min() >= lo - 1e-9, f"seed {seed}: thinnest lumen {2 * t.radii.min():.3f} mm"


def test_radii_never_increase_from_ostium_to_endpoint(trees: dict[int, CoronaryTree]) -> None:
    for seed, t in trees.items():
        child = np.flatnonzero(t.parents >= 0)
        grow = child[t.radii[child] > t.radii[t.parents[child]] * (1 + 1e-12)]
        assert grow.size == 0, (
            f"seed {seed}: radius grows at points {grow[:5]} (branches {t.branch[grow[:5]]})"
        )


def test_radii_never_increase_outside_stenoses(stenosed: dict[int, CoronaryTree]) -> None:
    for seed, t in stenosed.items():
        child = np.flatnonzero((t.parents >= 0) & ~_stenosis_window(t))
        grow = child[t.radii[child] > t.radii[t.parents[child]] * (1 + 1e-12)]
        assert grow.size == 0, f"seed {seed}: radius grows outside stenoses at {grow[:5]}"


@pytest.mark.parametrize("exponent", [3.0, 2.5])
def test_murrays_law_holds_at_every_bifurcation(exponent: float) -> None:
    for seed in SEEDS:
        for n_sten in (0, 3):
            cfg = CoronaryPhantomConfig(seed=seed, murray_exponent=exponent, stenosis_count=n_sten)
            t = make_coronary_tree(cfg)
            assert t.meta["murray_exponent"] == exponent
            bifs = t.bifurcations()
            assert len(bifs) == len(t.branch_names) - 3, f"seed {seed}: {len(bifs)} bifurcations"
            for b in bifs:
                kids = _children(t, b)
                err = np.sum(t.radii[kids] ** exponent) / t.radii[b] ** exponent - 1
                assert abs(err) < 0.05, f"seed {seed}, k={exponent}: Murray error {err:+.3%} at point {b}"


# --------------------------------------------------------------------------------------------------
# Geometry and topology
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [2.0, 0.0])
def test_points_lie_on_the_epicardial_surface(offset: float) -> None:
    for seed in SEEDS:
        t = make_coronary_tree(CoronaryPhantomConfig(seed=seed, surface_offset_mm=offset))
        heart = HeartEllipsoid.from_dict(t.meta["heart"])
        assert t.meta["heart"]["surface_offset_mm"] == offset
        np.testing.assert_allclose(heart.center_ras_mm, DEFAULT.heart_center_ras_mm)
        d = heart.signed_distance_mm(t.points)
        worst = float(np.max(np.abs(d - offset)))
        assert worst < 0.25, f"seed {seed}: a point is {worst:.3f} mm off the surface at offset {offset} mm"


def test_signed_distance_is_exact_on_known_points() -> None:
    heart = HeartEllipsoid.from_long_axis((1.0, 2.0, 3.0), (-0.62, 0.51, -0.59), (50.0, 40.0, 30.0))
    u, v, w = heart.axes_ras
    probes = np.array(
        [heart.center_ras_mm + 55 * u, heart.center_ras_mm + 37 * v, heart.center_ras_mm + 30 * w]
    )
    np.testing.assert_allclose(heart.signed_distance_mm(probes), [5.0, -3.0, 0.0], atol=1e-6)
    surface = heart.surface_points([30.0, 100.0, 170.0], [-60.0, 20.0, 140.0])
    np.testing.assert_allclose(heart.signed_distance_mm(surface), 0.0, atol=1e-6)


def test_one_tree_per_side_without_loops(trees: dict[int, CoronaryTree]) -> None:
    for seed, t in trees.items():
        roots = t.roots()
        assert len(roots) == 2 and t.tree[roots].tolist() == [0, 1], f"seed {seed}: roots {roots}"
        assert len(t.segments()) == t.num_points - 2, f"seed {seed}: {len(t.segments())} segments"
        root_of = t.root_of()
        for side in (0, 1):
            assert np.unique(root_of[t.tree == side]).size == 1, f"seed {seed}: tree {side} is split"


@pytest.mark.parametrize("seed", [0, 4])
def test_voxelized_tree_is_one_component_per_side(seed: int) -> None:
    t = make_coronary_tree(CoronaryPhantomConfig(seed=seed))
    lo, hi = t.points.min(axis=0) - 4.0, t.points.max(axis=0) + 4.0
    shape = np.ceil((hi - lo) / 0.5).astype(int) + 1
    ref = Volume.from_geometry(np.zeros(shape[::-1], dtype=np.uint8), (0.5, 0.5, 0.5), tuple(lo))
    label = t.voxelize(ref)
    for value in (1, 2):
        _, n = ndimage.label(label.array == value, structure=np.ones((3, 3, 3)))
        assert n == 1, f"seed {seed}: label {value} has {n} components (beta0), expected 1"


def test_curves_are_smooth_away_from_bifurcations(stenosed: dict[int, CoronaryTree]) -> None:
    for seed, t in stenosed.items():
        counts = t.children_count()
        worst = 0.0
        for p, c in t.segments():
            g = t.parents[p]
            if g < 0 or counts[p] >= 2:
                continue
            a, b = t.points[p] - t.points[g], t.points[c] - t.points[p]
            angle = np.degrees(np.arccos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))
            worst = max(worst, float(angle))
        assert worst < 20.0, f"seed {seed}: {worst:.1f} deg between consecutive segments"


def test_spacing_follows_step_mm() -> None:
    for step in (0.5, 2.0):
        t = make_coronary_tree(CoronaryPhantomConfig(seed=1, step_mm=step))
        seg = t.segment_lengths()[t.parents >= 0]
        assert np.all(np.abs(seg / step - 1) < 0.2), (
            f"step {step}: spacing {seg.min():.3f}..{seg.max():.3f} mm"
        )


def test_anatomy_is_in_place(trees: dict[int, CoronaryTree]) -> None:
    for seed, t in trees.items():
        heart = HeartEllipsoid.from_dict(t.meta["heart"])
        p = {name: t.points[t.branch_points(name)] for name in t.branch_names}
        lad_end = p["LAD"][-1]
        to_apex, to_base = np.linalg.norm(lad_end - heart.apex_ras), np.linalg.norm(lad_end - heart.base_ras)
        assert to_apex < 0.5 * to_base, (
            f"seed {seed}: LAD ends {to_apex:.0f} mm from apex, {to_base:.0f} from base"
        )
        lad_x = p["LAD"][0, 0]
        rca_prox = p["RCA"][: len(p["RCA"]) // 2]
        assert rca_prox[:, 0].min() > lad_x, (
            f"seed {seed}: proximal RCA x >= {rca_prox[:, 0].min():.1f} <= LAD {lad_x:.1f}"
        )
        assert p["RCA"][0, 0] > p["LM"][0, 0], "the right ostium must lie right (+x) of the left one"
        # The LCx runs to the left (-x) and posteriorly (-y) of the LM bifurcation.
        lcx = p["LCx"]
        assert lcx[-1, 0] < lcx[0, 0] - 10 and lcx[-1, 1] < lcx[0, 1] - 10, (
            f"seed {seed}: LCx {lcx[0]} -> {lcx[-1]}"
        )
        # The LM ends in the bifurcation that opens the LAD and the LCx.
        kids = _children(t, int(t.branch_points("LM")[-1]))
        assert sorted(t.branch_names[b] for b in t.branch[kids]) == ["LAD", "LCx"]
        # The PDA heads for the apex; the ostia sit on the basal half of the heart.
        pda = p["PDA"]
        assert np.linalg.norm(pda[-1] - heart.apex_ras) < np.linalg.norm(pda[0] - heart.apex_ras) - 20
        for name in ("LM", "RCA"):
            along = (p[name][0] - heart.center_ras_mm) @ heart.axes_ras[0]
            assert along < 0, f"seed {seed}: {name} ostium is on the apical half ({along:.1f} mm)"


def test_left_and_right_trees_do_not_touch(trees: dict[int, CoronaryTree]) -> None:
    for seed, t in trees.items():
        left, right = t.tree == 0, t.tree == 1
        d, j = cKDTree(t.points[left]).query(t.points[right])
        gap = d - t.radii[right] - t.radii[left][j]
        assert gap.min() > 2.0, f"seed {seed}: left and right lumens {gap.min():.2f} mm apart"


# --------------------------------------------------------------------------------------------------
# Stenoses, determinism, configuration
# --------------------------------------------------------------------------------------------------


def test_stenoses_are_recorded_and_narrow_by_their_severity(
    trees: dict[int, CoronaryTree], stenosed: dict[int, CoronaryTree]
) -> None:
    for seed in SEEDS:
        clean, t = trees[seed], stenosed[seed]
        np.testing.assert_array_equal(t.points, clean.points)  # same anatomy, only radii differ
        records = t.meta["stenoses"]
        assert len(records) == 3, records
        arc = t.arc_length()
        for s in records:
            assert s["branch"] in ("LM", "LAD", "LCx", "RCA")
            assert DEFAULT.stenosis_severity[0] <= s["severity"] <= DEFAULT.stenosis_severity[1]
            i = s["point_index"]
            assert t.branch_names[t.branch[i]] == s["branch"] and arc[i] == pytest.approx(s["arc_length_mm"])
            ratio = t.radii[i] / clean.radii[i]
            assert ratio == pytest.approx(1 - s["severity"], abs=1e-9), f"seed {seed}: {ratio} vs {s}"
        outside = ~_stenosis_window(t)
        np.testing.assert_array_equal(t.radii[outside], clean.radii[outside])


def test_same_seed_same_tree_other_seed_other_tree(trees: dict[int, CoronaryTree]) -> None:
    again = make_coronary_tree(CoronaryPhantomConfig(seed=2))
    t = trees[2]
    for name in ("points", "radii", "parents", "branch", "tree"):
        assert np.array_equal(getattr(again, name), getattr(t, name)), f"{name} differs for the same seed"
    assert again.branch_names == t.branch_names
    assert json.dumps(again.meta, sort_keys=True) == json.dumps(t.meta, sort_keys=True)
    other = trees[3]
    assert other.num_points != t.num_points or not np.allclose(other.points, t.points)
    assert t.meta["seed"] == 2 and json.loads(t.meta["config_json"])["seed"] == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", -1),
        ("heart_long_axis_ras", (0.0, 0.0, 1.0)),
        ("heart_semi_axes_mm", (5.0, 40.0, 40.0)),
        ("heart_scale", (1.1, 0.9)),
        ("step_mm", 0.0),
        ("surface_offset_mm", -1.0),
        ("lad_length_mm", (130.0, 100.0)),
        ("n_diagonals", (1.0, 2.0)),
        ("n_acute_marginals", (0, 9)),
        ("lad_flow_fraction", (0.5, 1.2)),
        ("side_branch_ratio", (0.5, 1.0)),
        ("distal_diameter_mm", (3.0, 4.0)),
        ("murray_exponent", 1.0),
        ("stenosis_count", 5),
        ("stenosis_severity", (0.5, 0.95)),
        ("rca_diameter_mm", (float("nan"), 4.0)),
    ],
)
def test_bad_config_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"CoronaryPhantomConfig.{field}"):
        dataclasses.replace(DEFAULT, **{field: value})


def test_impossible_requests_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="heart_semi_axes_mm.*too small"):
        make_coronary_tree(
            CoronaryPhantomConfig(heart_semi_axes_mm=(30.0, 22.0, 20.0), heart_scale=(1.0, 1.0))
        )
    with pytest.raises(ValueError, match="stenosis_count.*no room"):
        make_coronary_tree(CoronaryPhantomConfig(stenosis_count=4, stenosis_length_mm=(30.0, 30.0)))
