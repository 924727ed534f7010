"""Demo section 5: XRayToCT, a CT and its uncertainty from a PA + lateral DRR pair of the real CT (the
``x2ct-generate`` job)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from xraycardiac.demo.settings import DEMO_X2CT_SAMPLES, DEMO_X2CT_STEPS, X2CT_DEMO_MODEL
from xraycardiac.demo.slices import three_planes
from xraycardiac.demo_progress import DemoProgress
from xraycardiac.report import Section


def x2ct_case(work: Path, sections: list[Section], progress: DemoProgress, device: str = "cpu") -> None:
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
        for plane, img in zip(("axial", "coronal", "sagittal"), three_planes(vol, *centre), strict=True):
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
