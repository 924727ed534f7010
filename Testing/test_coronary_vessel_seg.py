"""Learned vessel segmentation (issue 19, items 1, 2, 6): appearance randomisation, the network, its
training command, the reconstruct job's use of it, and the plausibility check of a reconstruction."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from xraycardiac.coronary.synth.appearance import (
    AppearanceConfig,
    VesselScene,
    crop_scene,
    render_randomised,
    with_background,
)


def _toy_scene(size: int = 64) -> VesselScene:
    """A horizontal and a diagonal vessel (path length of a 3 px / 2 px radius tube), no geometry."""
    vv, uu = np.mgrid[0:size, 0:size].astype(np.float64)
    d1 = np.abs(vv - size / 2)
    d2 = np.abs(vv - uu) / np.sqrt(2)
    t = 2 * np.sqrt(np.clip(9 - d1**2, 0, None)) + 2 * np.sqrt(np.clip(4 - d2**2, 0, None))
    line = np.stack([np.arange(size, dtype=float), np.full(size, size / 2)], axis=1)
    return VesselScene(t.astype(np.float32), t > 0.05, line, None, "lowfreq")


# ------------------------------------------------------------------------------ appearance


def test_randomised_looks_are_seeded_and_vary():
    scene = _toy_scene()
    a, la, da = render_randomised(scene, rng=3)
    b, lb, db = render_randomised(scene, rng=3)
    c, _, _ = render_randomised(scene, rng=4)
    assert a.dtype == np.float32 and a.shape == scene.mask.shape and 0 <= a.min() and a.max() <= 1
    assert np.array_equal(a, b) and np.array_equal(la, lb) and da == db
    assert not np.array_equal(a, c)


def test_held_out_families_are_not_drawn_by_default_and_unknown_ones_are_refused():
    draws = [render_randomised(_toy_scene(32), rng=s)[2] for s in range(40)]
    assert {d["profile"] for d in draws} <= {"beer-lambert", "flat", "blurred-edge"}
    assert {d["noise"] for d in draws} <= {"poisson", "gaussian"}
    held = render_randomised(_toy_scene(32), AppearanceConfig(profiles=("halo",), noises=("correlated",)), 0)[
        2
    ]
    assert (held["profile"], held["noise"]) == ("halo", "correlated")
    with pytest.raises(ValueError, match=r"AppearanceConfig.profiles.*'speckle'"):
        AppearanceConfig(profiles=("speckle",))


def test_collimated_vessels_leave_the_label():
    cfg = AppearanceConfig(p_collimator=1.0, p_catheter=0.0)
    scene = _toy_scene()
    hidden = [(d, label) for s in range(10) for _, label, d in [render_randomised(scene, cfg, s)]]
    assert all(d.get("collimator") for d, _ in hidden)
    assert any(label.sum() < scene.mask.sum() for _, label in hidden)  # a shutter covered some vessel
    assert all(not (label & ~scene.mask).any() for _, label in hidden)


def test_crops_keep_vessels_and_need_a_geometry_for_anatomy():
    scene = _toy_scene(96)
    crop = crop_scene(scene, np.random.default_rng(0), 32, zoom=2.0)
    assert crop.mask.shape == (32, 32) and crop.mask.any()
    with pytest.raises(ValueError, match="no geometry"):
        with_background(crop, "chest-phantom", 0)


def test_vessel_seg_config_refuses_the_held_out_background():
    from xraycardiac.coronary.segment.vessel_seg import VesselSegConfig

    with pytest.raises(ValueError, match="real-ct.*held-out"):
        VesselSegConfig(backgrounds=("chest-phantom", "real-ct"))


# ------------------------------------------------------------------------------ network + scores


def test_network_weights_round_trip_any_image_size_and_refuse_a_flipped_byte(tmp_path):
    import torch

    from xraycardiac.coronary.segment.vessel_seg import (
        VesselSegConfig,
        build_network,
        load_segmenter,
        save_weights,
    )

    torch.manual_seed(0)
    cfg = VesselSegConfig(channels=(4, 8, 8), strides=(2, 2))
    path = save_weights(build_network(cfg), cfg, tmp_path / "seg.pt")
    seg = load_segmenter(str(path))(np.random.default_rng(0).random((37, 50)).astype(np.float32))
    assert seg.probability.shape == seg.mask.shape == (37, 50)
    assert seg.probability.dtype == np.float32 and 0 <= seg.probability.min() <= seg.probability.max() <= 1
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="bad.pt"):
        load_segmenter(str(bad))


def test_local_normalisation_gives_a_crop_the_same_input_as_the_whole_image():
    """Training sees crops, inference whole frames: the network input of a vessel must not depend on
    what else is in the frame (the 0.1.0 whole-image standardisation made it depend on the anatomy)."""
    import torch

    from xraycardiac.coronary.segment.vessel_seg import standardise

    rng = np.random.default_rng(0)
    vv, uu = np.mgrid[0:160, 0:160].astype(np.float32)
    image = 0.5 + 0.4 * np.tanh((uu - 120) / 5) + 0.02 * rng.standard_normal((160, 160)).astype(np.float32)
    image -= 0.1 * np.exp(-((vv - 40) ** 2) / 8)  # a dark vessel across the dim part
    box = (slice(10, 70), slice(10, 70))
    for sigma, same in ((8.0, True), (0.0, False)):
        whole = standardise(torch.from_numpy(image)[None, None], sigma)[0, 0].numpy()
        crop = standardise(torch.from_numpy(np.ascontiguousarray(image[box]))[None, None], sigma)[
            0, 0
        ].numpy()
        inner = (slice(25, 35), slice(25, 35))
        diff = np.abs(whole[box][inner] - crop[inner]).max()
        assert (diff < 0.05) == same, (sigma, diff)
    # any grey range and offset enter alike
    scaled = standardise(torch.from_numpy(1000 * image + 7)[None, None], 8.0)
    assert torch.allclose(scaled, standardise(torch.from_numpy(image)[None, None], 8.0), atol=1e-3)


def test_skeleton_recall_target_lies_on_the_label_and_background_crops_are_drawn():
    from xraycardiac.coronary.segment.train import skeleton_target

    scene = _toy_scene(64)
    skel = skeleton_target(scene.mask)
    assert skel.any() and not (skel & ~scene.mask).any()
    assert skel.sum() < 0.5 * scene.mask.sum()  # a thin target: thin branches weigh as much as thick ones
    big = _toy_scene(256)
    big.thickness_mm[:] = 0.0
    big.thickness_mm[128, 128] = 1.0
    big.mask[:] = big.thickness_mm > 0.05
    hits = [crop_scene(big, np.random.default_rng(s), 32, p_vessel=0.0).mask.any() for s in range(20)]
    assert sum(hits) < 5  # p_vessel=0: crops land anywhere, mostly on background


def test_segmentation_scores():
    from xraycardiac.metrics.vessel_seg import vessel_segmentation_scores

    truth = np.zeros((20, 20), bool)
    truth[9:12, :] = True
    pred = truth.copy()
    pred[12, :] = True  # one pixel too wide: precision at 1 px stays 1
    pred[0, 0] = True  # a far false positive
    centre = np.stack([np.arange(20.0), np.full(20, 10.0)], axis=1)
    s = vessel_segmentation_scores(pred, truth, centre)
    assert s["dice"] == pytest.approx(2 * 60 / (81 + 60))
    assert s["centreline_recall"] == 1.0 and s["precision"] == pytest.approx(80 / 81)
    assert np.isnan(vessel_segmentation_scores(np.zeros_like(truth), truth, centre)["precision"])


def test_demo_network_beats_frangi_on_a_held_out_real_ct_scene():
    from xraycardiac.coronary.matching.vessel_keypoints import detect_vessel_keypoints
    from xraycardiac.coronary.segment.vessel_seg import segment_vessels
    from xraycardiac.coronary.synth.appearance import make_scene
    from xraycardiac.metrics.vessel_seg import vessel_segmentation_scores

    scene = make_scene(90_001, 256, background="real-ct")  # seed outside the training bank
    image, label, _ = render_randomised(scene, AppearanceConfig(p_invert=0.0, p_catheter=0.0), 5)
    seg = segment_vessels(image)
    net = vessel_segmentation_scores(seg.mask, label, scene.centreline_px)
    frangi = vessel_segmentation_scores(detect_vessel_keypoints(image).mask, label, scene.centreline_px)
    assert seg.model["model"] == "coronary-vessel-seg-demo"
    # the CPU-trained demo is far from the targets (benchmarks/README.md), but ahead of Frangi
    # 0.2.0 on this scene: Dice 0.746, recall 0.974 (0.1.0 did not reach 0.65 on real-CT backgrounds)
    assert net["dice"] > 0.65 and net["centreline_recall"] > 0.9, net
    assert net["dice"] > frangi["dice"] + 0.1 and net["centreline_recall"] > frangi["centreline_recall"], (
        net,
        frangi,
    )


# ------------------------------------------------------------------------------ training command


def test_postprocessing_choice_drops_specks_and_keeps_the_vessel():
    from xraycardiac.coronary.segment.train import best_postprocessing
    from xraycardiac.coronary.segment.vessel_seg import VesselSegConfig, vessel_mask

    label = np.zeros((60, 60), bool)
    label[20:23, 10:50] = True  # a 120 px vessel
    prob = np.full(label.shape, 0.45)
    prob[label] = 0.75
    prob[40:46, 40:46] = 0.95  # a 36 px speck, more confident than the vessel
    best, table = best_postprocessing([prob], [label])
    assert best["threshold"] in (0.5, 0.6, 0.7) and best["dice"] == pytest.approx(1.0), best
    assert best["min_object_px"] >= 100 or best["min_object_fraction"] * 120 > 36, best  # the speck is gone
    # either rule alone removes the speck: by its size, or beside the largest component
    assert np.array_equal(vessel_mask(prob, 0.5, 100), label)
    assert np.array_equal(vessel_mask(prob, 0.5, 20, 0.4), label)
    assert vessel_mask(prob, 0.5, 20).sum() == 120 + 36
    assert min(r["dice"] for r in table) < 0.2  # threshold 0.3 keeps the whole background
    with pytest.raises(ValueError, match="val_seed"):
        VesselSegConfig(n_scenes=16, scene_seed=50_000, val_scenes=4, val_seed=50_040)
    VesselSegConfig(n_scenes=16, scene_seed=50_000, val_scenes=4, val_seed=70_000)


def test_train_command_makes_an_importable_package_and_resumes(tmp_path):
    from typer.testing import CliRunner

    from xraycardiac.cli import app
    from xraycardiac.train_cli import app as train_app

    out = tmp_path / "run"
    args = ["train", "coronary-vessel-seg", "--out", str(out), "n_scenes=1", "scene_sizes=64", "crop_px=32",
            "channels=4,8", "strides=2", "batch_size=2", "log_every=1", "device=cpu", "warmup_steps=0",
            "local_norm_px=4", "skeleton_weight=1", "p_vessel_crop=0.5"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "steps=2"])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "model.json").read_text())
    assert entry["name"] == "coronary-vessel-seg" and entry["sha256"]
    # the command given to the CLI, not the argv of the process that ran it (pytest here)
    assert entry["training_command"] == shlex.join(["xraycardiac", *args, "steps=2"]), entry[
        "training_command"
    ]
    assert entry["config"]["crop_px"] == 32 and (out / "scenes.npz").is_file()
    result = CliRunner().invoke(
        train_app, [*args[1:], "steps=3"]
    )  # the train sub-app alone, as tests call it
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "model.json").read_text())
    assert entry["training_command"] == shlex.join(["xraycardiac", *args, "steps=3"]), entry[
        "training_command"
    ]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3] and all(0 <= x["skeleton_recall"] <= 1 for x in log)
    assert entry["config"]["local_norm_px"] == 4
    # the mask threshold is chosen after training on validation trees; the run resumes without a step
    result = CliRunner().invoke(train_app, [*args[1:], "steps=3", "val_scenes=2", "val_seed=60000"])
    assert result.exit_code == 0, result.output
    entry = json.loads((out / "model.json").read_text())
    table = json.loads((out / "postprocessing.json").read_text())
    assert len(table) == 120 and (out / "val_scenes.npz").is_file()
    best = max(table, key=lambda r: r["dice"])
    keys = ("threshold", "min_object_px", "min_object_fraction")
    assert [entry["config"][k] for k in keys] == [best[k] for k in keys]
    assert "chosen after training on 2 validation scenes (trees 60000.." in entry["training_data"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3]
    bad = CliRunner().invoke(
        app, ["train", "coronary-vessel-seg", "--out", str(tmp_path / "x"), "colour=red"]
    )
    assert bad.exit_code != 0 and "unknown key 'colour'" in bad.output


# ------------------------------------------------------------------------------ plausibility


def _line_views(size_px=128, spacing_mm=0.8):
    from xraycardiac.coronary.synth.views import ViewSamplingConfig, sample_view_pair

    views = ViewSamplingConfig(
        detector_rows=size_px, detector_cols=size_px, pixel_spacing_mm=(spacing_mm,) * 2
    )
    g1, g2 = sample_view_pair("left", np.random.default_rng(0), views, (0.0, 0.0, 0.0))
    pts = np.linspace([-20.0, -10.0, -15.0], [20.0, 15.0, 10.0], 200)
    paths, masks = [], []
    for g in (g1, g2):
        uv = g.project(pts)
        paths.append([uv])
        m = np.zeros((size_px, size_px), bool)
        ij = np.round(uv).astype(int)
        m[ij[:, 1], ij[:, 0]] = True
        from scipy import ndimage

        masks.append(ndimage.binary_dilation(m, iterations=2))
    return (g1, g2), pts, paths, masks


def test_plausibility_passes_a_consistent_tree_and_warns_on_an_offset_one():
    from xraycardiac.coronary.recon.plausibility import plausibility

    gs, pts, paths, masks = _line_views()
    stats = {"matched_samples": 100, "inconsistent_dropped": 5, "rejected_reprojection": 2}
    good = plausibility(pts, gs, tuple(paths), tuple(masks), stats)
    assert good["plausible"] and good["reprojection_over_tol"] == 0 and good["outside_vessels"] == 0
    assert good["dropped"] == pytest.approx(7 / 105)
    with pytest.raises(ValueError, match="2 geometries, 1 centrelines and 2 vessel maps"):
        plausibility(pts, gs, paths[:1], masks, stats)
    bad = plausibility(pts + [0.0, 0.0, 8.0], gs, tuple(paths), tuple(masks), stats)
    assert not bad["plausible"] and bad["outside_vessels"] > 0.5
    assert any("outside the vessels" in w for w in bad["warnings"])
    dropped = plausibility(
        pts, gs, tuple(paths), tuple(masks), {"matched_samples": 10, "inconsistent_dropped": 90}
    )
    assert not dropped["plausible"] and "rejected" in dropped["warnings"][0]


def test_plausibility_warns_when_half_the_matched_samples_were_rejected():
    """Held-out 512 px pairs (trees 50200-50203, benchmarks/coronary_vessel_seg.py --pairs 4): the job's
    trees within 0.25 mm of the truth dropped 4-6 % of their matched samples, the wrong ones (4.7-40 mm)
    50-83 %; the 0.1.0 network's 26 mm tree dropped 49.75 % (397 of 804) and passed the old 50 % limit."""
    from xraycardiac.coronary.recon.plausibility import plausibility

    gs, pts, paths, masks = _line_views(512, 0.3)  # the 512 px pairs' pixel: 0.2 mm at the isocentre
    wrong = plausibility(
        pts, gs, tuple(paths), tuple(masks), {"matched_samples": 407, "inconsistent_dropped": 397}
    )
    assert not wrong["plausible"] and "rejected" in wrong["warnings"][0]
    right = plausibility(
        pts, gs, tuple(paths), tuple(masks), {"matched_samples": 753, "inconsistent_dropped": 36}
    )
    assert right["plausible"], right["warnings"]


def test_the_dropped_limit_scales_with_the_pixel_size_at_the_isocentre():
    """Issue 20: with exact geometry and true masks the left-right check drops ~5 % of the samples at
    512 px but up to 42 % at 256 px (its 1 mm is 4 pixels at the isocentre at 512 px, 2 at 256 px). The
    limit follows the pixel size: 40 % passes at 256 px (0.53 mm at the isocentre) and warns at 512 px;
    80 % warns at both; a wider left-right tolerance (2.5 mm, over 4 pixels) brings the 512 px limit back."""
    from xraycardiac.coronary.recon.plausibility import plausibility

    half = {"matched_samples": 60, "inconsistent_dropped": 40}
    most = {"matched_samples": 20, "inconsistent_dropped": 80}
    for size, spacing, half_passes in ((512, 0.3, False), (256, 0.6, False), (256, 0.8, True)):
        gs, pts, paths, masks = _line_views(size, spacing)
        pixel = max(g.pixel_spacing_mm[0] * g.sod_mm / g.sid_mm for g in gs)
        got = plausibility(pts, gs, tuple(paths), tuple(masks), half)
        limit = got["max_fraction"]["dropped"]
        print(f"\n{size} px, {pixel:.2f} mm at the isocentre: dropped limit {limit:.2f}")
        assert got["plausible"] is half_passes, (size, spacing, limit, got["warnings"])
        share = 2 / np.pi * np.arcsin(min(1.0, np.sin(0.1 * np.pi) * 4.0 * pixel))  # 1 mm = 1 / pixel px
        assert limit == pytest.approx(max(0.2, share))
        assert not plausibility(pts, gs, tuple(paths), tuple(masks), most)["plausible"]
    wide = plausibility(pts, gs, tuple(paths), tuple(masks), half, consistency_mm=2.5)  # 256 px, 0.8 mm
    assert wide["max_fraction"]["dropped"] == pytest.approx(0.2) and not wide["plausible"]
    with pytest.raises(ValueError, match="consistency_mm"):
        plausibility(pts, gs, tuple(paths), tuple(masks), half, consistency_mm=0.0)


@pytest.mark.slow  # ~1 min: one tree rendered at 256 and 512 px
def test_true_masks_pass_and_a_wrong_isocentre_warns_at_256_and_512_px(tmp_path):
    """The same synthesized pair at both sizes, true masks and matches: the exact geometry passes; view 2's
    isocentre 10 mm off (7 mm of 3D error) is flagged at both sizes. View 2 five degrees off (2.4 mm)
    drops 16-20 %, within the limits: printed, not asserted (the check flags gross errors only)."""
    from xraycardiac.coronary.recon.calibration import apply_corrections
    from xraycardiac.coronary.recon.plausibility import plausibility
    from xraycardiac.coronary.recon.reconstruct import reconstruct_tree
    from xraycardiac.coronary.synth import SynthConfig, synthesize
    from xraycardiac.coronary.synth.dataset import read_sample, sample_path
    from xraycardiac.geometry import CArmGeometry

    for size in (256, 512):
        synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=size, seed=3), tmp_path / str(size))
        s = read_sample(sample_path(tmp_path / str(size), 0, 0), load_thickness=False)
        g1, g2 = (CArmGeometry.from_dict(s["geometry"][f"view{v}"]) for v in (1, 2))
        kp = s["keypoints"]
        both = kp["in_field1"] & kp["in_field2"]
        seen = {}
        for name, off in (
            ("exact", {}),
            ("5 deg", {"primary_offset_deg": 5.0}),
            ("10 mm", {"isocenter_shift_s_mm": 10.0}),
        ):
            g = apply_corrections(g2, off)
            r = reconstruct_tree(s["mask1"], s["mask2"], g1, g, kp["uv1"][both], kp["uv2"][both])
            graphs = (r.graphs[0].paths, r.graphs[1].paths)
            seen[name] = plausibility(r.points3d, (g1, g), graphs, (s["mask1"], s["mask2"]), r.stats)
        print(f"\n{size} px: dropped " + ", ".join(f"{k} {v['dropped']:.0%}" for k, v in seen.items())
              + f" (limit {seen['exact']['max_fraction']['dropped']:.0%})")  # fmt: skip
        assert seen["exact"]["plausible"], (size, seen["exact"]["warnings"])
        assert not seen["10 mm"]["plausible"] and "rejected" in seen["10 mm"]["warnings"][0], size


# ------------------------------------------------------------------------------ the reconstruct job


@pytest.fixture(scope="module")
def pair_inputs(tmp_path_factory):
    """Inputs (images + geometries, no masks) of one synthesized 256 px pair."""
    from xraycardiac.coronary.synth import SynthConfig, synthesize
    from xraycardiac.coronary.synth.dataset import read_sample, sample_path
    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.io import write_volume
    from xraycardiac.volume import Volume

    root = tmp_path_factory.mktemp("pair")
    synthesize(SynthConfig(trees=1, pairs_per_tree=1, image_size=256, seed=3), root / "dataset")
    s = read_sample(sample_path(root / "dataset", 0, 0), load_thickness=False)
    files = {}
    for v in (1, 2):
        g = CArmGeometry.from_dict(s["geometry"][f"view{v}"])
        files[f"image{v}"] = str(
            write_volume(Volume(s[f"image{v}"][None], g.detector_ijk_to_ras()), root / f"i{v}.nrrd")
        )
        (root / f"g{v}.json").write_text(json.dumps(s["geometry"][f"view{v}"]))
        files[f"geometry{v}"] = str(root / f"g{v}.json")
    return files, g.detector_ijk_to_ras()


def test_job_without_masks_segments_with_the_network_and_reports_plausibility(pair_inputs, tmp_path):
    from xraycardiac.io import read_volume
    from xraycardiac.jobs import JobSpec, run_job

    files, affine2 = pair_inputs
    events = []
    out = tmp_path / "out"
    summary = run_job(
        JobSpec("coronary-reconstruct", files, {"device": "cpu"}, str(out)), on_event=events.append
    )
    assert summary["vessels"] == {"view1": "network", "view2": "network"}
    prob = read_volume(out / "vessel_probability2.nrrd")
    assert prob.array.shape == (1, 256, 256) and 0 <= prob.array.min() and prob.array.max() <= 1
    assert np.allclose(prob.ijk_to_ras, affine2)
    record = json.loads((out / "report.json").read_text())["plausibility"]
    assert {"reprojection_over_tol", "outside_vessels", "dropped", "warnings", "plausible"} <= set(record)
    assert summary["status"] == ("ok" if record["plausible"] else "warning")
    logged = [e["message"] for e in events if e.get("event") == "log" and e.get("level") == "warning"]
    assert all(w in logged for w in record["warnings"])
    assert summary["outputs"]["vessel_probability1"] == "vessel_probability1.nrrd"


def test_job_frangi_baseline_writes_no_probability_and_bad_segmentation_is_refused(pair_inputs, tmp_path):
    from xraycardiac.jobs import JobSpec, run_job

    files, _ = pair_inputs
    with pytest.raises(ValueError, match=r"params.segmentation: expected one of \('network', 'frangi'\)"):
        run_job(JobSpec("coronary-reconstruct", files, {"segmentation": "otsu"}, str(tmp_path / "a")))
    out = tmp_path / "b"
    summary = run_job(
        JobSpec("coronary-reconstruct", files, {"device": "cpu", "segmentation": "frangi"}, str(out))
    )
    assert summary["vessels"] == {"view1": "frangi", "view2": "frangi"}
    assert not (out / "vessel_probability1.nrrd").exists() and "vessel_probability1" not in summary["outputs"]
