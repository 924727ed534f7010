"""Issue 19 item 3: keypoints on the vessel probability map, the epipolar-band attention mask, and the
matcher methods that use them (``vmatcher:``, ``+band``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xraycardiac.coronary.matching.attention_matcher import AttentionMatcher, AttentionMatcherConfig
from xraycardiac.coronary.matching.matcher import CoronaryMatcher, CoronaryMatcherConfig, epipolar_band_mask
from xraycardiac.coronary.matching.vessel_keypoints import probability_keypoints, ring_features
from xraycardiac.geometry import CArmGeometry
from xraycardiac.metrics.matching import symmetric_epipolar_error_px

CENTRE = np.array([64.0, 64.0])  # (u, v) of the bifurcation
CORNER = np.array([64.0, 20.0])  # the up arm turns 90 degrees here, to the right
POLYLINES = (
    [CENTRE, CORNER, np.array([110.0, 20.0])],  # up, then right: a curvature point at CORNER
    [CENTRE, np.array([20.0, 110.0])],  # down-left
    [CENTRE, np.array([110.0, 110.0])],  # down-right
)


def _tree_probability(size: int = 128) -> np.ndarray:
    """A vessel probability map: a Y whose upper arm has a right-angle bend, ~4 px wide, values in [0, 1]."""
    vv, uu = np.mgrid[0:size, 0:size].astype(np.float64)
    p = np.stack([uu, vv], axis=-1)
    d = np.full((size, size), np.inf)
    for line in POLYLINES:
        for a, b in zip(line[:-1], line[1:], strict=True):
            t = np.clip(((p - a) @ (b - a)) / ((b - a) @ (b - a)), 0.0, 1.0)
            d = np.minimum(d, np.linalg.norm(p - (a + t[..., None] * (b - a)), axis=-1))
    return np.clip(1.2 - d / 2.5, 0.0, 1.0)


def test_probability_keypoints_find_the_tree_and_its_structure():
    det = probability_keypoints(_tree_probability(), threshold=0.5)
    kinds = {k: det.keypoints[det.kind == k] for k in ("bifurcation", "endpoint", "curvature", "centreline")}
    assert len(kinds["bifurcation"]) == 1, f"bifurcations: {kinds['bifurcation'].tolist()}"
    assert np.linalg.norm(kinds["bifurcation"][0] - CENTRE) <= 2.5, kinds["bifurcation"].tolist()
    assert len(kinds["endpoint"]) == 3, f"endpoints: {kinds['endpoint'].tolist()}"
    curv = kinds["curvature"]
    assert len(curv) >= 1 and np.linalg.norm(curv - CORNER, axis=1).min() <= 3.0, (
        f"curvature points {curv.tolist()}, none within 3 px of the bend at {CORNER.tolist()}"
    )
    assert len(kinds["centreline"]) >= 20, f"{len(kinds['centreline'])} centreline samples"
    # every keypoint sits on the skeleton of the thresholded probability (u, v order: a swap fails this)
    on = det.skeleton[np.round(det.keypoints[:, 1]).astype(int), np.round(det.keypoints[:, 0]).astype(int)]
    near = on | (det.kind == "bifurcation")  # a bifurcation is a junction cluster's centroid
    assert near.all(), f"{np.count_nonzero(~near)} keypoints off the skeleton"
    # graph features: branches leaving each keypoint
    deg = dict(zip(det.kind, det.degree, strict=True))
    assert det.degree[det.kind == "bifurcation"][0] == 3, deg
    assert np.all(det.degree[det.kind == "endpoint"] == 1), det.degree[det.kind == "endpoint"].tolist()
    assert np.mean(det.degree[det.kind == "centreline"] == 2) >= 0.9, det.degree.tolist()


def test_ring_features_directions_of_a_bifurcation():
    det = probability_keypoints(_tree_probability(), threshold=0.5)
    degree, directions = ring_features(det.skeleton, CENTRE[None], ring_px=8.0)
    assert degree.tolist() == [3]
    got = np.sort(np.rad2deg(directions[0, :3]) % 360)
    # image axes: up = -v = 270 deg, down-left = 135 deg, down-right = 45 deg
    assert np.allclose(got, [45.0, 135.0, 270.0], atol=12.0), got.tolist()


def test_probability_keypoints_reject_bad_input():
    with pytest.raises(ValueError, match="probability"):
        probability_keypoints(np.full((32, 32), 2.0))
    with pytest.raises(ValueError, match="threshold"):
        probability_keypoints(np.zeros((32, 32)), threshold=1.5)
    assert len(probability_keypoints(np.zeros((32, 32)))) == 0


def _views() -> np.ndarray:
    common = dict(detector_rows=128, detector_cols=128, pixel_spacing_mm=(1.2, 1.2))
    g1 = CArmGeometry(-30.0, -20.0, sid_mm=1100.0, sod_mm=750.0, **common)
    g2 = CArmGeometry(45.0, 20.0, sid_mm=1150.0, sod_mm=720.0, **common)
    return np.stack([g1.projection_matrix(), g2.projection_matrix()])


def test_epipolar_band_mask_is_the_pairwise_symmetric_distance():
    p = _views()
    rng = np.random.default_rng(3)
    k1, k2 = rng.uniform(0, 127, (20, 2)), rng.uniform(0, 127, (30, 2))
    band = epipolar_band_mask(k1, k2, p, 10.0)
    i, j = np.meshgrid(np.arange(20), np.arange(30), indexing="ij")
    d = symmetric_epipolar_error_px(k1[i.ravel()], k2[j.ravel()], p[0], p[1]).reshape(20, 30)
    assert band.shape == (20, 30) and np.array_equal(band, d <= 10.0), np.argwhere(band != (d <= 10.0))
    assert 0 < band.sum() < band.size, band.mean()
    with pytest.raises(ValueError, match="band_px"):
        epipolar_band_mask(k1, k2, p, 0.0)


def test_band_mask_gates_attention_and_assignment():
    torch.manual_seed(0)
    net = AttentionMatcher(
        AttentionMatcherConfig(descriptor_dim=16, n_layers=2, num_heads=2, filter_threshold=0.0)
    )
    m, n = 12, 10
    desc0 = torch.nn.functional.normalize(torch.randn(1, m, 16), dim=-1)
    desc1 = desc0[:, :n].clone()  # keypoint i of image 1 is keypoint i of image 0: easy matches
    kp0, kp1 = torch.rand(1, m, 2) * 64, torch.rand(1, n, 2) * 64
    allowed = torch.rand(1, m, n) > 0.5
    out = net(kp0, kp1, desc0, desc1, (64, 64), (64, 64), return_attention=True, allowed=allowed)
    m0 = out["matches0"][0]
    hit = m0 >= 0
    assert hit.any(), "no match at all"
    assert bool(allowed[0, torch.arange(m)[hit], m0[hit]].all()), "a match outside the band"
    for attn01, attn10 in out["cross_attention"]:
        assert float(attn01.detach().masked_select(~allowed[:, None]).abs().max()) == 0.0
        assert float(attn10.detach().masked_select(~allowed.transpose(1, 2)[:, None]).abs().max()) == 0.0


def test_matcher_on_given_keypoints_with_the_band():
    """CoronaryMatcher.match on the caller's keypoints: they come back as given, every match in the band."""
    torch.manual_seed(0)
    config = CoronaryMatcherConfig.from_dict(
        {"keypoint_net": {"channels": [4, 8, 8], "descriptor_dim": 16, "head_channels": 8},
         "matcher": {"descriptor_dim": 16, "n_layers": 1, "num_heads": 2, "filter_threshold": 0.0}}
    )  # fmt: skip
    net = CoronaryMatcher(config)
    prob = _tree_probability()
    image = (1.0 - 0.6 * prob).astype(np.float32)
    kp = probability_keypoints(prob, 0.5).keypoints
    p = _views()
    r = net.match(image, image, projection_matrices=p, keypoints=(kp, kp), band_px=6.0)
    assert np.allclose(r.keypoints1, kp, atol=1e-4) and np.allclose(r.keypoints2, kp, atol=1e-4)
    assert r.num_matches > 0, "no match"
    d = symmetric_epipolar_error_px(r.x1, r.x2, p[0], p[1])
    assert d.max() <= 6.0 + 1e-6, f"matches outside the 6 px band: {np.sort(d)[-5:]}"
    allowed = epipolar_band_mask(kp, kp, p, 6.0)
    assert allowed.mean() < 0.2, f"the band allows {allowed.mean():.0%} of the pairs: the test cannot see it"
    assert r.info["band_px"] == 6.0 and r.method.endswith("+band")


def test_parse_method_band_needs_the_samples_band():
    from xraycardiac.coronary.matching.evaluate import parse_method

    with pytest.raises(ValueError, match="unknown"):
        parse_method("sift+band")


@pytest.mark.slow  # ~1 min: a synthetic pair and the chest phantom's DRR
def test_restyle_keeps_the_ground_truth_and_redraws_the_images(tmp_path):
    from xraycardiac.coronary.synth import SynthConfig, synthesize
    from xraycardiac.coronary.synth.dataset import list_samples, read_sample
    from xraycardiac.coronary.synth.restyle import restyle_dataset

    src = tmp_path / "pairs"
    assert synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=96, seed=7), src)["written"] == 1
    record = restyle_dataset(src, tmp_path / "styled", "halo-correlated", seed=3)
    assert record["pairs"] == 1 and record["family"] == "halo-correlated"
    (a,), (b,) = list_samples(src), list_samples(tmp_path / "styled")
    for name in ("keypoints.json", "geometry.json", "mask1.png", "mask2.png", "thickness1.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), f"{name} changed"
    sa, sb = read_sample(a, load_thickness=False), read_sample(b, load_thickness=False)
    for v in (1, 2):
        diff = np.abs(sa[f"image{v}"] - sb[f"image{v}"]).mean()
        assert diff > 0.02, f"view {v} not redrawn: mean change {diff:.3f}"
        assert sb[f"image{v}"].min() >= 0.0 and sb[f"image{v}"].max() <= 1.0
    with pytest.raises(FileExistsError, match="styled"):
        restyle_dataset(src, tmp_path / "styled", "training")
    with pytest.raises(ValueError, match="family"):
        restyle_dataset(src, tmp_path / "other", "cartoon")
    assert not (tmp_path / "other").exists()


def test_reconstruct_pair_band_matcher_never_leaves_the_prior_band(tmp_path):
    """The job's ``vmatcher-nofm:<model>+band``: every match lies within the band of the prior's sigmas."""
    from xraycardiac.coronary.recon.calibration import epipolar_band_px
    from xraycardiac.coronary.recon.pipeline import PairConfig, reconstruct_pair
    from xraycardiac.coronary.synth import SynthConfig, synthesize
    from xraycardiac.coronary.synth.dataset import list_samples, read_sample

    assert synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=128, seed=7), tmp_path / "p")[
        "written"
    ]
    s = read_sample(list_samples(tmp_path / "p")[0], load_thickness=False)
    g1, g2 = (CArmGeometry.from_dict(s["geometry"][f"view{v}"]) for v in (1, 2))
    torch.manual_seed(0)
    config = CoronaryMatcherConfig.from_dict(
        {"keypoint_net": {"channels": [4, 8, 8], "descriptor_dim": 16, "head_channels": 8},
         "matcher": {"descriptor_dim": 16, "n_layers": 1, "num_heads": 2, "filter_threshold": 0.0}}
    )  # fmt: skip
    model = CoronaryMatcher(config).save(tmp_path / "m.pt")
    params = PairConfig(
        method=f"vmatcher-nofm:{model}+band",
        refine_calibration=False,
        prior_sigma_deg=0.3,
        prior_sigma_mm=0.5,
    )
    out = reconstruct_pair((s["image1"], s["image2"]), (g1, g2), (s["mask1"], s["mask2"]), params)
    band = max(params.epipolar_tolerance_px, epipolar_band_px(g1, g2, params.calibration_config()))
    assert out.match.info["band_px"] == pytest.approx(band), out.match.info
    assert len(out.x1) > 0, "no match"
    d = symmetric_epipolar_error_px(out.x1, out.x2, g1.projection_matrix(), g2.projection_matrix())
    assert d.max() <= band + 1e-6, f"matches outside the {band:.1f} px band: {np.sort(d)[-3:]}"
