"""Demo section 2: coronary angiograms (physics and diffusion renderers), ground-truth and learned
matches, the 3D centreline from two views."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from xraycardiac.demo.settings import DEMO_ANGIO_DDIM_STEPS, FOUNDATION_DEMO, MATCHER_DEMO
from xraycardiac.demo_progress import DemoProgress
from xraycardiac.report import Section


def learned_matches(images, gt, geometries, out: Path, device: str) -> tuple[Path, str]:
    """The shipped matcher on the physics pair: a picture (red = not a GT match) and one sentence."""
    from xraycardiac.coronary.matching.foundation import FoundationSpec, load_foundation
    from xraycardiac.coronary.matching.matcher import CoronaryMatcher
    from xraycardiac.coronary.visualize import draw_matches
    from xraycardiac.metrics.matching import keypoint_correct, symmetric_epipolar_error_px

    net = CoronaryMatcher.load(MATCHER_DEMO, device=device)
    fm = (
        load_foundation(FoundationSpec.parse(FOUNDATION_DEMO), net.device)
        if net.config.matcher.foundation_mask
        else None
    )
    res = net.match(images[0], images[1], foundation=fm)
    side = max(images[0].shape)
    tol = 5.0 * side / (net.config.match_size_px or side)  # 5 px at the matcher's working size
    gt1, gt2 = gt.matched_uv()
    ok = keypoint_correct(res.x1, res.x2, gt1, gt2, tol)
    p1, p2 = (g.projection_matrix() for g in geometries)
    epi = symmetric_epipolar_error_px(res.x1, res.x2, p1, p2) if len(res.x1) else np.zeros(0)
    png = draw_matches(images[0], images[1], res.x1, res.x2, out / "learned_matches.png", incorrect=~ok)
    text = (
        f"Learned matcher ({net.source.get('model')} {net.source.get('version')}, sha256 "
        f"{str(net.source.get('sha256'))[:12]}; foundation mask {'on: ' + FOUNDATION_DEMO if fm else 'off'}) "
        f"on the physics pair at its {net.config.match_size_px} px working size: {len(res.keypoints1)} / "
        f"{len(res.keypoints2)} keypoints, {len(res.x1)} matches in {res.seconds:.2f} s, "
        f"{int(ok.sum())} within {tol:.0f} px of a ground-truth match in both views (green; red = not), median "
        f"epipolar error {np.median(epi) if len(epi) else float('nan'):.1f} px. The demo weights are small and "
        "CPU-trained (see `xraycardiac models list` and benchmarks/coronary_match.py for the held-out figures)."
    )
    return png, text


def coronary_case(work: Path, sections: list[Section], progress: DemoProgress, device: str = "cpu") -> None:
    """A procedural left coronary tree, one standard view pair rendered by both renderers, GT matches."""
    from xraycardiac.coronary import (
        PhysicsRendererConfig,
        ViewSamplingConfig,
        angle_between_views,
        ground_truth_matches,
        project_vessels,
        render_angiogram,
        sample_keypoints,
        sample_view_pair,
    )
    from xraycardiac.coronary.recon.reconstruct import centreline_error_mm, reconstruct_tree, save_tube_vtp
    from xraycardiac.coronary.synth.render_diffusion import DEFAULT_MODEL, load_renderer
    from xraycardiac.coronary.visualize import draw_matches
    from xraycardiac.figures import draw_centrelines_3d
    from xraycardiac.io import write_png
    from xraycardiac.phantoms import CoronaryPhantomConfig, make_coronary_tree

    out = work / "coronary"
    out.mkdir()
    progress.stage("1/5 coronary tree, view pair, vessel projections, physics renderer", 0.0)
    t0 = time.perf_counter()
    tree = make_coronary_tree(CoronaryPhantomConfig(seed=0))
    tree.save_json(out / "tree.json")
    tree.save_vtp(out / "tree.vtp")
    rng = np.random.default_rng(0)
    left = tree.points[tree.tree == 0]
    g1, g2 = sample_view_pair("left", rng, ViewSamplingConfig(), (left.min(axis=0) + left.max(axis=0)) / 2)
    p1, p2 = project_vessels(tree, g1, trees=(0,)), project_vessels(tree, g2, trees=(0,))
    gt = ground_truth_matches(sample_keypoints(tree, trees=(0,)), g1, g2, p1, p2)
    background = rng.integers(2**31)  # one background generator state for both views: one patient
    images = [render_angiogram(p.thickness_mm, g, PhysicsRendererConfig(), np.random.default_rng([background, n]))
              for n, (p, g) in enumerate(((p1, g1), (p2, g2)))]  # fmt: skip
    seconds_physics = time.perf_counter() - t0
    stage = f"2/5 diffusion renderer ({DEFAULT_MODEL}, DDIM {DEMO_ANGIO_DDIM_STEPS} steps, 2 views)"
    progress.stage(stage, 0.15)
    t1 = time.perf_counter()
    renderer = load_renderer(DEFAULT_MODEL, device)
    diffused = renderer.render(
        np.stack([p1.mask, p2.mask]), np.stack([p1.thickness_mm, p2.thickness_mm]), seed=0,
        steps=DEMO_ANGIO_DDIM_STEPS, progress=lambda i, n: progress.stage(f"{stage}: step {i}/{n}", 0.15 + 0.55 * i / n),
    )  # fmt: skip
    seconds_diffusion = time.perf_counter() - t1
    pngs = []
    for n, img in enumerate(diffused, start=1):
        pngs.append(write_png(img, out / f"view{n}_diffusion.png", window=(0.0, 1.0)))
    for n, (img, p, g) in enumerate(zip(images, (p1, p2), (g1, g2), strict=True), start=1):
        pngs.insert(n - 1, write_png(img, out / f"view{n}_physics.png", window=(0.0, 1.0)))
        write_png(p.mask.astype(np.float32), out / f"mask{n}.png", window=(0.0, 1.0))
        g.save_json(out / f"view{n}.geometry.json")
    x1, x2 = gt.matched_uv()
    ambiguous = gt.ambiguous1[gt.index1[gt.matches[:, 0]]] | gt.ambiguous2[gt.index2[gt.matches[:, 1]]]
    matches_png = draw_matches(images[0], images[1], x1, x2, out / "gt_matches.png", ambiguous=ambiguous)
    progress.stage(f"3/5 learned matcher ({MATCHER_DEMO}) on the physics pair", 0.7)
    learned_png, learned_text = learned_matches(images, gt, (g1, g2), out, device)
    progress.stage("4/5 3D centreline from the two vessel masks", 0.8)
    t2 = time.perf_counter()
    rec = reconstruct_tree(p1.mask, p2.mask, g1, g2)  # exact geometry, no seeds: the masks' epipolar geometry
    rec.tree.save_vtp(out / "reconstruction.vtp")
    save_tube_vtp(rec.tree, out / "reconstruction_tube.vtp")
    err = centreline_error_mm(rec.points3d, tree, tree_ids=(0,), geometries=(g1, g2))
    progress.stage("5/5 figures", 0.95)
    recon_png = draw_centrelines_3d(tree.points[tree.tree == 0], rec.points3d, out / "reconstruction.png")
    seconds_recon = time.perf_counter() - t2
    epi = gt.epipolar_error_px()
    rows = [[g.name, f"{g.primary_angle_deg:+.1f}", f"{g.secondary_angle_deg:+.1f}", f"{g.sid_mm:.0f}",
             f"{g.sod_mm:.0f}", f"{int(f.sum())}", f"{int(a.sum())}"]
            for g, f, a in ((g1, gt.in_field1, gt.ambiguous1), (g2, gt.in_field2, gt.ambiguous2))]  # fmt: skip
    sections.append(
        Section(
            title="Coronary: synthetic angiogram pair with ground-truth correspondences",
            paragraphs=[
                f"Procedural coronary tree (seed 0): {len(tree.branch_names)} branches, "
                f"{len(tree.bifurcations())} bifurcations; LAD {tree.branch_length_mm('LAD'):.0f} mm, "
                f"LCx {tree.branch_length_mm('LCx'):.0f} mm, RCA {tree.branch_length_mm('RCA'):.0f} mm. "
                f"Left tree injected; views {angle_between_views(g1, g2):.0f} deg apart; "
                f"{len(gt.matches)} ground-truth matches (green; orange = overlap-ambiguous), max epipolar "
                f"error {epi.max() if len(epi) else 0:.1e} px. Physics renderer (Beer-Lambert iodine on a "
                f"procedural thorax, scatter, Poisson noise, range compression): {seconds_physics:.1f} s "
                f"with the projections. Diffusion renderer ({renderer.source['model']} "
                f"{renderer.source['version']}, sha256 {renderer.source['sha256'][:12]}): the mask-conditioned "
                f"IDDPM, DDIM {DEMO_ANGIO_DDIM_STEPS} steps (the library default is 50) at its {renderer.config.image_size} px grid, upsampled to "
                f"{g1.detector_rows} px, {seconds_diffusion:.1f} s for the pair; the demo weights are a small "
                "CPU-trained model (see `xraycardiac models list` and benchmarks/angio_diffusion_quality.py).",
                f"3D centreline from the two vessel masks with the exact geometry (no keypoint seeds; "
                f"xraycardiac.coronary.recon.reconstruct): {len(rec.points3d)} points, error to the true centreline "
                f"mean {err['mean']:.2f} mm, p95 {err['p95']:.2f} mm, coverage {100 * err['coverage']:.0f} % "
                f"(within 2 mm), {seconds_recon:.1f} s; shown in three orthographic views (red) over the "
                "truth (grey), RAS axes in mm.",
                learned_text,
            ],
            tables=[
                (
                    [
                        "view",
                        "primary (deg)",
                        "secondary (deg)",
                        "SID (mm)",
                        "SOD (mm)",
                        "keypoints in field",
                        "ambiguous",
                    ],
                    rows,
                )
            ],  # fmt: skip
            images=[
                (str(pngs[0]), "view 1, physics"),
                (str(pngs[1]), "view 2, physics"),
                (str(pngs[2]), "view 1, diffusion"),
                (str(pngs[3]), "view 2, diffusion"),
                (str(matches_png), "GT matches"),
                (str(learned_png), "learned matcher (red: not a GT match)"),
                (
                    str(recon_png),
                    "3D reconstruction (red) over the truth (grey): frontal, lateral, axial (mm)",
                ),
            ],  # fmt: skip
        )
    )
