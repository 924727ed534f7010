"""Demo sections 1 and 6: simulated radiographs of a CT (the real chest CT, the chest phantom) through
the ``drr`` job."""

from __future__ import annotations

import time
from pathlib import Path

from xraycardiac.demo.settings import DEMO_VIEWS
from xraycardiac.demo.slices import coronal_slice
from xraycardiac.demo_progress import DemoProgress
from xraycardiac.report import Section


def render_case(
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
        coronal_slice(ct), coronal_slice(labels), legend_from_names(label_names), inputs_dir / f"{name}_ct_coronal.png",
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
