"""Matching metrics, the classical SIFT / ORB baselines and the vessel keypoint detector + matcher (issue 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xraycardiac.coronary.matching.baselines import MatcherConfig, match_orb, match_sift
from xraycardiac.coronary.matching.vessel_keypoints import (
    VesselKeypointConfig,
    detect_vessel_keypoints,
    match_vessel_keypoints,
)
from xraycardiac.geometry import CArmGeometry, epipolar_lines, fundamental_matrix, project_points
from xraycardiac.metrics import (
    assign_matches_to_gt,
    cumulative_error_auc,
    matching_metrics,
    sample_matching_metrics,
    symmetric_epipolar_error_px,
)

# --- Hand-made two-view ground truth --------------------------------------------------------------


def _views() -> tuple[np.ndarray, np.ndarray]:
    g1 = CArmGeometry(30.0, 0.0, detector_rows=256, detector_cols=256, pixel_spacing_mm=(0.8, 0.8))
    g2 = CArmGeometry(-30.0, 20.0, detector_rows=256, detector_cols=256, pixel_spacing_mm=(0.8, 0.8))
    return g1.projection_matrix(), g2.projection_matrix()


@pytest.fixture(scope="module")
def gt() -> dict:
    """~30 3D points (RAS mm) projected in two views, at least 14 px apart from each other in both."""
    p1, p2 = _views()
    rng = np.random.default_rng(3)
    pts = rng.uniform(-35.0, 35.0, size=(400, 3))
    uv1, uv2 = project_points(p1, pts), project_points(p2, pts)
    keep: list[int] = []
    for i in range(len(pts)):
        if all(np.linalg.norm(uv1[i] - uv1[j]) > 14 and np.linalg.norm(uv2[i] - uv2[j]) > 14 for j in keep):
            keep.append(i)
    keep = keep[:30]
    assert len(keep) >= 20, f"only {len(keep)} well-separated points"
    k = len(keep)
    return {
        "points": pts[keep], "uv1": uv1[keep], "uv2": uv2[keep], "p1": p1, "p2": p2,
        "in1": np.ones(k, dtype=bool), "in2": np.ones(k, dtype=bool),
    }  # fmt: skip


def _metrics(gt: dict, x1: np.ndarray, x2: np.ndarray, **kw):
    return matching_metrics(x1, x2, gt["uv1"], gt["uv2"], gt["in1"], gt["in2"], gt["p1"], gt["p2"], **kw)


def test_perfect_matches_score_one(gt):
    m = _metrics(gt, gt["uv1"], gt["uv2"], keypoints1=gt["uv1"])
    figures = m.as_dict()
    for key in ("precision@3px", "precision@5px", "recall@3px", "recall@5px", "epipolar_precision@3px",
                "matching_score@3px", "auc@5px", "auc@10px", "auc@20px"):  # fmt: skip
        assert figures[key] == pytest.approx(1.0), f"{key} = {figures[key]} for perfect matches: {figures}"
    assert m.mean_epipolar_error_px < 1e-6, (
        f"epipolar error of exact projections: {m.mean_epipolar_error_px} px"
    )
    assert m.num_matches == m.num_gt_matches == len(gt["uv1"])


def test_matches_shifted_by_4px(gt):
    """Both ends 4 px off (random directions): wrong at 3 px, right at 5 px; AUC = 1 - 4 / T exactly."""
    rng = np.random.default_rng(1)
    k = len(gt["uv1"])
    a1, a2 = rng.uniform(0, 2 * np.pi, (2, k))
    x1 = gt["uv1"] + 4.0 * np.stack([np.cos(a1), np.sin(a1)], 1)
    x2 = gt["uv2"] + 4.0 * np.stack([np.cos(a2), np.sin(a2)], 1)
    m = _metrics(gt, x1, x2)
    assert m.precision[3.0] == 0.0 and m.precision[5.0] == 1.0, f"precision {m.precision}"
    assert m.recall[3.0] == 0.0 and m.recall[5.0] == 1.0, f"recall {m.recall}"
    for t, auc in m.auc.items():
        assert auc == pytest.approx(1.0 - 4.0 / t), f"AUC@{t} = {auc}, expected {1 - 4 / t}"


def test_random_matches_have_low_precision(gt):
    rng = np.random.default_rng(2)
    x1, x2 = rng.uniform(0, 255, (2, 300, 2))
    m = _metrics(gt, x1, x2, keypoints1=x1)
    assert m.precision[5.0] < 0.05 and m.recall[5.0] < 0.2, f"random matches: {m.as_dict()}"
    assert m.auc[5.0] < 0.05, f"random matches: {m.as_dict()}"
    assert m.mean_epipolar_error_px > 10.0, (
        f"random matches: mean epipolar error {m.mean_epipolar_error_px} px"
    )


def test_epipolar_error_zero_for_projected_points_and_exact_for_a_normal_offset(gt):
    x1, x2, p1, p2 = gt["uv1"], gt["uv2"], gt["p1"], gt["p2"]
    err = symmetric_epipolar_error_px(x1, x2, p1, p2)
    assert err.max() < 1e-6, f"largest epipolar error of true pairs: {err.max()} px"
    # move x2 3 px along the normal of its epipolar line: its distance to that line is 3 px exactly
    lines = epipolar_lines(fundamental_matrix(p1, p2), x1)
    moved = x2 + 3.0 * lines[:, :2]
    err = symmetric_epipolar_error_px(x1, moved, p1, p2)
    assert np.all(err >= 3.0 - 1e-6), f"symmetric error below the one-sided 3 px: {err.min()}"
    assert np.all(err < 10.0), f"symmetric error far above 3 px: {err.max()}"


def test_symmetric_epipolar_error_is_the_larger_point_to_line_distance(gt):
    """Against a plain-numpy evaluation of x2^T F x1: the larger of the two point-to-line distances."""
    rng = np.random.default_rng(4)
    x1, x2 = rng.uniform(0, 255, (2, 50, 2))
    f = fundamental_matrix(gt["p1"], gt["p2"])  # x2^T F x1 = 0
    h1, h2 = np.c_[x1, np.ones(50)], np.c_[x2, np.ones(50)]
    l2, l1 = h1 @ f.T, h2 @ f  # lines in image 2 (of x1) and in image 1 (of x2)
    d2 = np.abs((l2 * h2).sum(1)) / np.linalg.norm(l2[:, :2], axis=1)
    d1 = np.abs((l1 * h1).sum(1)) / np.linalg.norm(l1[:, :2], axis=1)
    err = symmetric_epipolar_error_px(x1, x2, gt["p1"], gt["p2"])
    assert np.allclose(err, np.maximum(d1, d2), atol=1e-6), (
        f"largest difference {np.abs(err - np.maximum(d1, d2)).max()}"
    )
    assert np.mean(np.abs(d1 - d2) > 0.1) > 0.5, "the two directions should differ for most random pairs"


def test_along_the_epipolar_line_is_epipolar_correct_but_not_keypoint_correct(gt):
    """Sliding x2 10 px along its epipolar line: the lenient precision says right, the strict one wrong."""
    lines = epipolar_lines(fundamental_matrix(gt["p1"], gt["p2"]), gt["uv1"])
    along = np.stack([-lines[:, 1], lines[:, 0]], axis=1)
    m = _metrics(gt, gt["uv1"], gt["uv2"] + 10.0 * along)
    assert m.epipolar_precision[3.0] == 1.0 and m.precision[5.0] == 0.0, m.as_dict()


def test_recall_is_one_to_one_and_precision_counts_duplicates(gt):
    x1 = np.repeat(gt["uv1"][:1], 5, axis=0)
    x2 = np.repeat(gt["uv2"][:1], 5, axis=0)
    m = _metrics(gt, x1, x2, keypoints1=gt["uv1"])
    k = len(gt["uv1"])
    assert m.precision[3.0] == 1.0, m.as_dict()
    assert m.recall[3.0] == pytest.approx(1 / k), (
        f"5 copies of one match recovered {m.recall[3.0] * k} GT matches"
    )
    assert m.matching_score[3.0] == pytest.approx(5 / k), m.as_dict()
    errors = assign_matches_to_gt(x1, x2, gt["uv1"], gt["uv2"], 20.0)
    assert np.count_nonzero(np.isfinite(errors)) == 1, errors


def test_one_prediction_recovers_one_gt_match_even_between_two():
    """Two GT matches 2 px apart in both images and one prediction between them: recall 1 of 2, not 2."""
    gt1 = np.array([[50.0, 50.0], [52.0, 50.0]])
    gt2 = np.array([[80.0, 40.0], [80.0, 42.0]])
    errors = assign_matches_to_gt(np.array([[51.0, 50.0]]), np.array([[80.0, 41.0]]), gt1, gt2, 20.0)
    assert np.count_nonzero(np.isfinite(errors)) == 1 and np.nanmin(errors) == pytest.approx(1.0), errors
    # a second prediction on GT match 1 takes it; the greedy order gives each the nearer one
    errors = assign_matches_to_gt(
        np.array([[51.0, 50.0], [52.0, 50.0]]), np.array([[80.0, 41.0], [80.0, 42.0]]), gt1, gt2, 20.0
    )
    assert errors[1] == 0.0 and errors[0] == pytest.approx(1.0), errors


def test_out_of_field_keypoints_are_not_gt_matches(gt):
    in2 = gt["in2"].copy()
    in2[::2] = False
    m = matching_metrics(gt["uv1"], gt["uv2"], gt["uv1"], gt["uv2"], gt["in1"], in2, gt["p1"], gt["p2"])
    assert m.num_gt_matches == int(in2.sum()), m.as_dict()
    assert m.recall[3.0] == 1.0 and m.precision[3.0] == pytest.approx(in2.mean()), m.as_dict()


def test_empty_prediction_and_auc_helper():
    m = matching_metrics(
        np.zeros((0, 2)), np.zeros((0, 2)), np.zeros((3, 2)), np.zeros((3, 2)),
        np.ones(3, bool), np.ones(3, bool), *_views(),
    )  # fmt: skip
    assert m.num_matches == 0 and np.isnan(m.precision[3.0]) and m.recall[3.0] == 0.0 and m.auc[5.0] == 0.0
    assert cumulative_error_auc(np.array([0.0, 5.0, np.inf]), [10.0]) == pytest.approx([0.5])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x1": np.zeros((4, 3))}, "x1"),
        ({"x2": np.zeros((5, 2))}, "pairs"),
        ({"in1": np.ones(3, bool)}, "in_field1"),
        ({"p2": np.eye(3)}, "p2"),
        ({"keypoints1": np.zeros((4,))}, "keypoints1"),
    ],
)
def test_bad_shapes_raise(gt, change, message):
    args = {"x1": np.zeros((4, 2)), "x2": np.zeros((4, 2)), "in1": gt["in1"], "p2": gt["p2"], **change}
    kp1 = args.pop("keypoints1", None)
    with pytest.raises(ValueError, match=message):
        matching_metrics(
            args["x1"], args["x2"], gt["uv1"], gt["uv2"], args["in1"], gt["in2"], gt["p1"], args["p2"],
            keypoints1=kp1,
        )  # fmt: skip


# --- Vessel keypoint detector on a drawn Y ------------------------------------------------------

Y_CENTRE = (64.0, 70.0)  # (u, v)
Y_ENDS = ((64.0, 115.0), (25.0, 20.0), (108.0, 25.0))


def _y_image(size: int = 128, seed: int = 0) -> np.ndarray:
    """A dark ~3 px wide Y on a bright background with noise sigma 0.02; stem pointing down."""
    vv, uu = np.mgrid[0:size, 0:size].astype(np.float64)
    p = np.stack([uu, vv], axis=-1)
    d = np.full((size, size), np.inf)
    for end in Y_ENDS:
        a, b = np.asarray(Y_CENTRE), np.asarray(end)
        t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0.0, 1.0)
        d = np.minimum(d, np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1))
    image = 0.8 - 0.45 * np.clip(1.6 - d / 1.5, 0.0, 1.0)
    return image + np.random.default_rng(seed).normal(0.0, 0.02, image.shape)


def test_vessel_keypoints_on_a_drawn_y():
    det = detect_vessel_keypoints(_y_image())
    bif = det.keypoints[det.kind == "bifurcation"]
    ends = det.keypoints[det.kind == "endpoint"]
    assert len(bif) == 1, f"bifurcations found: {bif.tolist()}"
    err = np.linalg.norm(bif[0] - np.asarray(Y_CENTRE))
    assert err <= 2.0, f"bifurcation at {bif[0].tolist()}, {err:.2f} px from {Y_CENTRE}"
    assert len(ends) == 3, f"endpoints found: {ends.tolist()}"
    for end in Y_ENDS:  # (u, v): a row/column swap would put the stem's end at (115, 64)
        d = np.linalg.norm(ends - np.asarray(end), axis=1).min()
        assert d <= 4.0, f"nearest endpoint to {end} is {d:.2f} px away: {ends.tolist()}"
    line = det.keypoints[det.kind == "centreline"]
    spacing = VesselKeypointConfig().spacing_px
    arms = sum(np.linalg.norm(np.asarray(e) - np.asarray(Y_CENTRE)) for e in Y_ENDS)
    assert 0.6 * arms / spacing <= len(line) <= 1.2 * arms / spacing, (
        f"{len(line)} centreline samples on {arms:.0f} px of vessel at {spacing} px spacing"
    )
    assert np.all(det.skeleton[np.round(line[:, 1]).astype(int), np.round(line[:, 0]).astype(int)])


def test_short_spurs_are_pruned():
    """A straight vessel with a 4 px side stub: one vessel (2 endpoints, no bifurcation) after pruning.

    Without pruning the stub is a branch of the skeleton, so the test sees the pruning at work.
    """
    vv, uu = np.mgrid[0:128, 0:128].astype(np.float64)
    d = np.minimum(np.abs(vv - 64.0) + np.maximum(np.abs(uu - 64.0) - 54.0, 0.0),
                   np.abs(uu - 64.0) + np.maximum(vv - 68.0, 0.0) + np.maximum(64.0 - vv, 0.0))  # fmt: skip
    image = (
        0.8 - 0.45 * np.clip(1.6 - d / 1.5, 0.0, 1.0) + np.random.default_rng(5).normal(0.0, 0.02, d.shape)
    )
    det = detect_vessel_keypoints(image)
    kinds = {k: int(np.count_nonzero(det.kind == k)) for k in ("bifurcation", "endpoint")}
    assert kinds == {"bifurcation": 0, "endpoint": 2}, f"with pruning: {kinds}"
    raw = detect_vessel_keypoints(image, VesselKeypointConfig(prune_px=0.1))
    assert np.count_nonzero(raw.kind == "bifurcation") == 1, f"without pruning: {raw.kind.tolist()}"


def test_vessel_keypoints_blank_image_and_bad_input():
    det = detect_vessel_keypoints(np.full((64, 64), 0.7))
    assert len(det) == 0 and det.keypoints.shape == (0, 2)
    with pytest.raises(ValueError, match="image"):
        detect_vessel_keypoints(np.zeros((64, 64, 3)))


def test_vessel_matcher_recovers_a_translation():
    """Image 2 = image 1 moved by (du, dv) = (-5, 7): most mutual nearest neighbours move by exactly that."""
    image1 = _y_image()
    image2 = np.roll(image1, (7, -5), axis=(0, 1))
    r = match_vessel_keypoints(image1, image2, config=MatcherConfig(filter="none"))
    shift = r.x2 - r.x1
    ok = np.all(np.abs(shift - np.array([-5.0, 7.0])) <= 1.0, axis=1)
    assert r.num_matches >= 10 and ok.mean() >= 0.7, (
        f"{r.num_matches} matches, {ok.mean():.2f} with the true shift; median shift {np.median(shift, 0)}"
    )


# --- SIFT / ORB / vessel matcher on a real synthetic pair -------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict:
    from xraycardiac.coronary.synth import SynthConfig, synthesize
    from xraycardiac.coronary.synth.dataset import list_samples, read_sample

    root = Path(tmp_path_factory.mktemp("match")) / "pairs"
    summary = synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=256, seed=7), root)
    assert summary["written"] == 1, summary
    return read_sample(list_samples(root)[0], load_thickness=False)


def _well_formed(r, shape: tuple[int, int]) -> None:
    for name in ("keypoints1", "keypoints2", "x1", "x2"):
        a = getattr(r, name)
        assert a.ndim == 2 and a.shape[1] == 2 and a.dtype == np.float64, (
            f"{r.method} {name}: {a.shape} {a.dtype}"
        )
        assert np.all(np.isfinite(a)), f"{r.method} {name} not finite"
        assert np.all((a >= -0.5) & (a <= np.array(shape[::-1]) - 0.5)), f"{r.method} {name} off the image"
    assert len(r.x1) == len(r.x2) == len(r.scores), f"{r.method}: {len(r.x1)}, {len(r.x2)}, {len(r.scores)}"
    assert np.all((r.scores >= 0) & (r.scores <= 1)), f"{r.method} scores {r.scores}"
    assert r.seconds > 0 and len(r.keypoints1) > 0 and len(r.keypoints2) > 0, r.method
    # each match joins detected keypoints
    for x, kp in ((r.x1, r.keypoints1), (r.x2, r.keypoints2)):
        if len(x):
            assert np.abs(x[:, None] - kp[None]).sum(-1).min(axis=1).max() < 1e-9, r.method


@pytest.mark.parametrize("matcher", [match_sift, match_orb, match_vessel_keypoints])
@pytest.mark.parametrize("flt", ["ransac", "none"])
def test_matchers_return_well_formed_results(sample, matcher, flt):
    r = matcher(sample["image1"], sample["image2"], sample["projection_matrices"], MatcherConfig(filter=flt))
    _well_formed(r, sample["image1"].shape)
    m = sample_matching_metrics(r.x1, r.x2, sample, keypoints1=r.keypoints1)
    assert m.num_matches == r.num_matches and m.num_gt_matches > 20, m.as_dict()


@pytest.mark.parametrize("matcher", [match_orb, match_vessel_keypoints])
def test_epipolar_filter_keeps_exactly_the_matches_under_the_tolerance(sample, matcher):
    images, pm = (sample["image1"], sample["image2"]), sample["projection_matrices"]
    raw = matcher(*images, pm, MatcherConfig(filter="none"))
    err = symmetric_epipolar_error_px(raw.x1, raw.x2, pm[0], pm[1])
    assert len(err) >= 4, f"{raw.method}: only {len(err)} tentative matches to filter"
    tol = float(np.median(err))  # some are kept, some dropped
    kept = matcher(*images, pm, MatcherConfig(filter="epipolar", epipolar_tolerance_px=tol))
    kept_err = symmetric_epipolar_error_px(kept.x1, kept.x2, pm[0], pm[1])
    assert np.all(kept_err <= tol), f"{kept.method} kept errors {np.sort(kept_err)[-3:]} over {tol:.2f} px"
    expected = np.concatenate([raw.x1, raw.x2], 1)[err <= tol]
    got = np.concatenate([kept.x1, kept.x2], 1)
    assert 0 < len(got) < len(err) and np.array_equal(got, expected), (
        f"{kept.method}: kept {len(got)} of {len(err)}, expected {len(expected)} at tolerance {tol:.2f} px"
    )


def test_sift_recovers_a_translation(sample):
    """SIFT between a view and itself moved by (du, dv) = (-5, 7) px: the matches move by that (u = column)."""
    image1 = sample["image1"]
    image2 = np.roll(image1, (7, -5), axis=(0, 1))
    r = match_sift(image1, image2, config=MatcherConfig(filter="none"))
    ok = np.all(np.abs(r.x2 - r.x1 - np.array([-5.0, 7.0])) <= 1.0, axis=1)
    assert r.num_matches >= 20 and ok.mean() >= 0.9, (
        f"{r.num_matches} matches, {ok.mean():.2f} with the shift"
    )


def test_ground_truth_of_a_sample_scores_perfectly(sample):
    kp = sample["keypoints"]
    both = kp["in_field1"] & kp["in_field2"]
    m = sample_matching_metrics(kp["uv1"][both], kp["uv2"][both], sample)
    assert m.precision[3.0] == 1.0 and m.recall[3.0] == 1.0 and m.auc[5.0] == 1.0, m.as_dict()
    assert m.mean_epipolar_error_px < 1e-6, f"GT matches of a stored sample: {m.mean_epipolar_error_px} px"


def test_epipolar_filter_needs_the_geometry(sample):
    for matcher in (match_sift, match_vessel_keypoints):
        with pytest.raises(ValueError, match="projection_matrices"):
            matcher(sample["image1"], sample["image2"], None, MatcherConfig(filter="epipolar"))
    with pytest.raises(ValueError, match="filter"):
        MatcherConfig(filter="magic")


def test_ransac_filter_on_degenerate_matches_returns_none() -> None:
    from xraycardiac.coronary.matching.baselines import MatcherConfig, filter_matches

    x1 = np.stack([np.linspace(0, 100, 12), np.linspace(0, 100, 12)], 1)  # collinear: F is undetermined
    keep, info = filter_matches(x1, x1 + 3.0, np.ones(12), MatcherConfig(filter="ransac"), None)
    assert len(keep) == 0 and "fundamental_matrix" not in info
