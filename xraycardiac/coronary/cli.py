"""``xraycardiac coronary ...``: the synthetic coronary angiography commands.

``synth`` writes view pairs straight into ``--out`` (one atomic sample folder at a time) through
:func:`xraycardiac.coronary.synth.engine.synthesize`, the function the ``coronary-synth`` job runs
for the GUI, so rerunning a killed command resumes it and ``--shard i/N`` runs may share one
folder. Heavy imports (torch, the coronary engine) happen inside the command, so ``--help`` is quick.

``synth --labelmap FILE`` takes the (one) tree from a coronary label map instead of growing
procedural trees: ``--left-label`` / ``--right-label`` give its label values (equal when one label
holds both trees, as in ImageCAS; 0 skips a side).

``phase RUN.dcm`` prints the frame of a multi-frame XA run at the wanted cardiac phase (end-diastole by
default, from the run's ECG or, without one, its images); ``reconstruct`` runs the
``coronary-reconstruct`` job on two views, each a multi-frame XA run (``--frame1/--frame2 auto|N``,
``--ecg-offset-ms``) or one 2D image with its geometry JSON; ``--image`` (repeated, with ``--geometry``,
``--mask``, ``--frame`` in the same order) adds views 3, 4, ... for one joint N-view calibration.

``restyle --data D --out D2 --family training|real-ct|halo-correlated|diffusion`` copies a pair dataset
with every view redrawn in another appearance family (:mod:`xraycardiac.coronary.synth.restyle`): the
matcher's appearance-randomised training data and the held-out families of its benchmark.

``evaluate`` runs keypoint matchers (SIFT, ORB, the vessel-keypoint baseline, trained
``matcher:RUN`` models and their ``matcher-nofm:RUN`` ablation) on the pairs of a split and prints
one table (:func:`xraycardiac.coronary.matching.evaluate.evaluate_matchers`); ``--out`` writes it as JSON::

    xraycardiac coronary evaluate --data synth/ --method sift --method vessel+epipolar
        --method matcher:runs/matcher --method matcher-nofm:runs/matcher --out results.json
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from xraycardiac.cli_errors import ErrorHandlingGroup

app = typer.Typer(
    help="Synthetic coronary angiography: view pairs with ground-truth correspondences (research use only).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=ErrorHandlingGroup,
)


# SynthConfig field -> the option that sets it (where the names differ)
_OPTION_OF = {
    "image_size": "--size",
    "pixel_spacing_mm": "--pixel-mm",
    "renderer_config.model": "--diffusion-model",
    "renderer_config.steps": "--diffusion-steps",
}


@app.callback()
def _coronary() -> None:
    """Synthetic coronary angiography: view pairs with ground-truth correspondences (research use only)."""


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Dataset folder (created; an existing one is continued).")],
    trees: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=99_999,
            help="Number of coronary trees (indices 0..N-1) (default 10; 1 with --labelmap).",
        ),
    ] = None,
    pairs_per_tree: Annotated[int, typer.Option(min=1, max=100, help="View pairs per tree.")] = 4,
    renderer: Annotated[
        str, typer.Option(help="physics | diffusion (the mask-conditioned IDDPM; see --diffusion-model).")
    ] = "physics",
    diffusion_model: Annotated[
        str,
        typer.Option(
            help="Diffusion renderer: a model name (xraycardiac models list), folder or weights file."
        ),
    ] = "angio-diffusion-demo",
    diffusion_steps: Annotated[int, typer.Option(min=1, help="Diffusion renderer: DDIM steps.")] = 50,
    shard: Annotated[str, typer.Option(help="i/N: make the trees t with t % N == i (0 <= i < N).")] = "0/1",
    seed: Annotated[int, typer.Option(min=0, help="Base seed: tree t uses seed + t.")] = 0,
    size: Annotated[
        int | None, typer.Option(min=8, max=8192, help="Detector rows = columns in pixels (default 512).")
    ] = None,
    pixel_mm: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            help="Detector pixel size (mm) (default 0.3-0.4 mm x 512 / size: the field of view of 512 pixels).",
        ),
    ] = None,
    keypoint_spacing_mm: Annotated[
        float, typer.Option(min=0.1, help="Arc-length spacing of the centreline keypoints (mm).")
    ] = 5.0,
    overlap_px: Annotated[
        float, typer.Option(min=0.0, help="Overlap radius of the ambiguity flags (pixels).")
    ] = 3.0,
    injection: Annotated[
        str, typer.Option(help="alternate (LCA for even trees, RCA for odd) | left | right | both.")
    ] = "alternate",
    voxel_mm: Annotated[
        float | None,
        typer.Option(
            min=0.05, help="Tube voxel size (mm) (default: the pixel size at the isocentre, within 0.25-0.5)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="Projection device: cpu | cuda[:N] | auto.")] = "cpu",
    resume: Annotated[
        bool, typer.Option(help="Keep this shard's samples already in --out and make the rest.")
    ] = True,
    labelmap: Annotated[
        Path | None,
        typer.Option(
            help="Coronary label map (NRRD, NIfTI, MetaImage): its centreline tree replaces the procedural "
            "one (one tree: --trees 1)."
        ),
    ] = None,
    left_label: Annotated[
        int, typer.Option(min=0, help="With --labelmap: label value of the left coronary tree (0 = none).")
    ] = 1,
    right_label: Annotated[
        int,
        typer.Option(
            min=0,
            help="With --labelmap: label value of the right coronary tree (0 = none; equal to --left-label "
            "when one label holds both trees, as in ImageCAS).",
        ),
    ] = 2,
) -> None:
    """Synthesize coronary angiogram view pairs (images, masks, thickness, geometry, GT matches) into --out."""
    from xraycardiac.coronary.synth import SynthConfig, check_renderer, parse_shard

    try:
        check_renderer(renderer)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--renderer") from e
    try:
        shard_ij = parse_shard(shard)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--shard") from e
    if device == "auto":
        from xraycardiac.runtime import select_device

        device = str(select_device("auto"))
    if trees is None:
        trees = 1 if labelmap is not None else 10
    labels = {"left_label": left_label or None, "right_label": right_label or None} if labelmap else {}
    try:
        config = SynthConfig(
            trees=trees, pairs_per_tree=pairs_per_tree, renderer=renderer, seed=seed, injection=injection,
            image_size=size, pixel_spacing_mm=pixel_mm, keypoint_spacing_mm=keypoint_spacing_mm,
            overlap_px=overlap_px, voxel_mm=voxel_mm, device=device,
            renderer_config=(
                {"model": diffusion_model, "steps": diffusion_steps} if renderer == "diffusion" else {}
            ),
            labelmap=str(labelmap) if labelmap is not None else None, **labels,
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as e:
        name = str(e).split(":", 1)[0].split(",")[0]
        option = _OPTION_OF.get(name, f"--{name.replace('_', '-')}")
        raise typer.BadParameter(str(e), param_hint=option) from e
    summary = _synthesize_with_progress(config, out, shard_ij, resume)
    typer.echo(
        f"shard {summary['shard']}: {summary['written']} pair(s) written, {summary['resumed']} already there, "
        f"{summary['skipped']} skipped (outside the field of view) in {summary['seconds']:.1f} s; "
        f"{out} holds {summary['counts']['samples']} sample(s) of {summary['counts']['trees']} tree(s)"
    )
    for s in summary["skipped_pairs"]:
        typer.echo(f"  skipped {s['sample']}: {s['reason']}")


def _synthesize_with_progress(config: Any, out: Path, shard: tuple[int, int], resume: bool) -> dict:
    """Run ``synthesize`` under a rich progress bar; Ctrl-C says how to resume."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from xraycardiac.coronary.synth import synthesize

    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(), TimeRemainingColumn(),
    ) as bar:  # fmt: skip
        task = bar.add_task("coronary synth", total=1.0)

        done = [0.0]  # the bar never moves back

        def on_progress(stage: str, fraction: float, **extra: Any) -> None:
            done[0] = max(done[0], min(1.0, max(0.0, float(fraction))))
            bar.update(task, completed=done[0], description=stage)

        try:
            return synthesize(config, out, shard=shard, resume=resume, progress=on_progress)
        except KeyboardInterrupt:
            bar.console.print(
                f"interrupted; the samples written so far are kept: rerun the same command to resume {out}"
            )
            raise typer.Exit(130) from None


def _progress_lines(console: Any, prefix: str = "") -> Callable[[str, float], None]:
    """``progress(stage, fraction)`` printing one dim line per call."""
    return lambda stage, fraction: console.print(f"[dim]{100 * fraction:5.1f}%  {prefix}{stage}[/dim]")


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="Coronary pair dataset (xraycardiac coronary synth).")],
    method: Annotated[
        list[str],
        typer.Option(
            help="A method: sift, orb, vessel [+ransac|+epipolar|+none], matcher:<model or run folder>, "
            "matcher-nofm:<...> [+epipolar]. Repeat for several."
        ),
    ],
    split: Annotated[str, typer.Option(help="train | val | test | all.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Write the results as JSON here (a new file).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing --out file.")] = False,
    epipolar_tolerance: Annotated[
        float, typer.Option(min=0.0, help="Tolerance of the +epipolar filter (pixels).")
    ] = 3.0,
    ransac_threshold: Annotated[float, typer.Option(min=0.0, help="RANSAC inlier threshold (pixels).")] = 2.0,
    foundation: Annotated[
        str | None,
        typer.Option(
            help="family:/path of the foundation model for matcher: (default: the one it was trained with)."
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="Device of learned matchers: cpu | cuda[:N] | auto.")] = "cpu",
    max_pairs: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N pairs only.")] = None,
    pipeline: Annotated[
        bool,
        typer.Option(
            help="Also run matches -> refinement of view 2 -> 3D centreline per method (and with the GT "
            "matches, the upper bound) and print the 3D errors (mm) with exact and perturbed geometry."
        ),
    ] = False,
    perturb_deg: Annotated[
        float, typer.Option(min=0.0, help="--pipeline: view 2 angle error bound (deg).")
    ] = 5.0,
    perturb_mm: Annotated[
        float, typer.Option(min=0.0, help="--pipeline: view 2 isocentre error bound per axis (mm).")
    ] = 10.0,
    frangi: Annotated[
        bool,
        typer.Option(help="--pipeline: segment vessels with Frangi instead of using the dataset's masks."),
    ] = False,
) -> None:
    """Match every view pair of a split with each method and print precision / recall / AUC side by side."""
    from rich.console import Console

    from xraycardiac.coronary.matching.evaluate import (
        dataset_summary,
        evaluate_matchers,
        format_table,
        write_results,
    )

    console = Console(stderr=True)
    if out is not None:  # before the work: a refused --out must not cost the whole evaluation
        from xraycardiac.outputs import check_output

        check_output(out, overwrite=overwrite, file=True)
    summary = dataset_summary(data, split)
    console.print(
        f"{summary['pairs']} pairs of {summary['image_shape']} px, "
        f"{summary['gt_keypoints_per_view']:.0f} GT keypoints per view on average ({data}, split {split})"
    )
    rows = evaluate_matchers(
        data, method, split, epipolar_tolerance_px=epipolar_tolerance, ransac_threshold_px=ransac_threshold,
        device=device, foundation=foundation, max_pairs=max_pairs, progress=_progress_lines(console),
    )  # fmt: skip
    typer.echo(format_table(rows))
    meta: dict = {"data": str(data), "split": split, "dataset": summary}
    if pipeline:
        from xraycardiac.coronary.recon.evaluate_pipeline import evaluate_pipeline, format_pipeline_table

        prows = evaluate_pipeline(
            data, [*method, "gt"], split, perturb_deg=perturb_deg, perturb_mm=perturb_mm,
            use_masks=not frangi, epipolar_tolerance_px=epipolar_tolerance, device=device,
            foundation=foundation, max_pairs=max_pairs, progress=_progress_lines(console, "3D: "),
        )  # fmt: skip
        typer.echo(
            f"\n3D centreline error (mm) from {'Frangi vessels' if frangi else 'the vessel masks'}; view 2 "
            f"perturbed by up to {perturb_deg:g} deg / {perturb_mm:g} mm per axis; 'scale-fixed' uses the "
            "oracle scale about view 1's source (the gauge two views cannot see)\n"
            + format_pipeline_table(prows)
        )
        meta["pipeline"] = prows
    if out is not None:
        meta["settings"] = {"epipolar_tolerance_px": epipolar_tolerance, "ransac_threshold_px": ransac_threshold,
                            "device": device, "foundation": foundation, "max_pairs": max_pairs,
                            "perturb_deg": perturb_deg, "perturb_mm": perturb_mm, "frangi": frangi}  # fmt: skip
        write_results(rows, out, meta)
        typer.echo(f"results: {out}")


@app.command()
def restyle(
    data: Annotated[Path, typer.Option(help="A coronary pair dataset (xraycardiac coronary synth).")],
    out: Annotated[Path, typer.Option(help="The new dataset folder (must not exist).")],
    family: Annotated[
        str, typer.Option(help="training | real-ct | halo-correlated | diffusion (appearance family).")
    ] = "training",
    seed: Annotated[int, typer.Option(min=0, help="Base seed of the draws.")] = 0,
) -> None:
    """Copy a pair dataset with every view redrawn in another appearance family (same ground truth)."""
    import json

    from xraycardiac.coronary.synth.restyle import restyle_dataset

    record = restyle_dataset(data, out, family, seed)
    typer.echo(json.dumps(record, indent=2))


def _frame_option(value: str) -> int | str:
    """``auto`` or a frame index, for --frame / --frame1 / --frame2."""
    from xraycardiac.coronary.recon.phase import parse_frame

    try:
        return parse_frame(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


@app.command()
def phase(
    run: Annotated[Path, typer.Argument(help="A multi-frame DICOM XA (or RF) run.")],
    frame: Annotated[str, typer.Option(help="auto (suggested phase) or a frame index.")] = "auto",
    ecg_offset_ms: Annotated[
        float, typer.Option(help="Wanted phase after the R peak (ms); 0 = end-diastole.")
    ] = 0.0,
    method: Annotated[
        str, typer.Option(help="auto (the ECG when usable, else the images) | ecg | image.")
    ] = "auto",
) -> None:
    """Print the frame of a cine run at the wanted cardiac phase (end-diastole by default) as JSON."""
    import json

    from xraycardiac.coronary.recon.phase import frame_from_run

    chosen = frame_from_run(run, _frame_option(frame), ecg_offset_ms, method)
    typer.echo(json.dumps(chosen.summary(), indent=2))


@app.command()
def reconstruct(
    image1: Annotated[Path, typer.Option(help="View 1: a multi-frame DICOM XA run, or one 2D image file.")],
    image2: Annotated[Path, typer.Option(help="View 2: a multi-frame DICOM XA run, or one 2D image file.")],
    out: Annotated[Path, typer.Option(help="Output folder (new, or empty; see --overwrite).")],
    geometry1: Annotated[
        Path | None, typer.Option(help="C-arm geometry JSON of view 1 (default: a DICOM run's header).")
    ] = None,
    geometry2: Annotated[
        Path | None, typer.Option(help="C-arm geometry JSON of view 2 (default: a DICOM run's header).")
    ] = None,
    mask1: Annotated[Path | None, typer.Option(help="Vessel mask of view 1's frame (> 0 = vessel).")] = None,
    mask2: Annotated[Path | None, typer.Option(help="Vessel mask of view 2's frame (> 0 = vessel).")] = None,
    frame1: Annotated[
        str, typer.Option(help="Frame of run 1: auto (end-diastole + offset) or an index.")
    ] = "auto",
    frame2: Annotated[
        str, typer.Option(help="Frame of run 2: auto (end-diastole + offset) or an index.")
    ] = "auto",
    ecg_offset_ms: Annotated[
        float, typer.Option(help="Wanted phase after the R peak (ms); 0 = end-diastole.")
    ] = 0.0,
    method: Annotated[
        str, typer.Option(help="Keypoint matcher (as the coronary-reconstruct job).")
    ] = "vessel+epipolar",
    refine: Annotated[bool, typer.Option(help="Refine view 2's geometry from the matches.")] = True,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
    image: Annotated[
        list[Path] | None, typer.Option(help="Views 3, 4, ...: a run or an image (repeat; N-view job).")
    ] = None,
    geometry: Annotated[
        list[Path] | None, typer.Option(help="Geometry JSON of each --image, in order (none for runs).")
    ] = None,
    mask: Annotated[list[Path] | None, typer.Option(help="Vessel mask of each --image, in order.")] = None,
    frame: Annotated[list[str] | None, typer.Option(help="Frame of each --image run, in order.")] = None,
) -> None:
    """Match, refine and reconstruct the 3D centreline from two views, or N with --image (the coronary-reconstruct job)."""
    import json

    from rich.console import Console

    from xraycardiac.jobs import JobSpec, run_job

    inputs = {"image1": image1, "image2": image2, "geometry1": geometry1, "geometry2": geometry2,
              "mask1": mask1, "mask2": mask2}  # fmt: skip
    params = {"method": method, "refine_calibration": refine, "device": device, "ecg_offset_ms": ecg_offset_ms,
              "frame1": _frame_option(frame1), "frame2": _frame_option(frame2), "overwrite": overwrite}  # fmt: skip
    more = list(image or [])
    for name, values in (("--geometry", geometry), ("--mask", mask), ("--frame", frame)):
        if values and len(values) != len(more):
            raise typer.BadParameter(
                f"{len(more)} --image but {len(values)} {name}: give one {name} per --image, in order, or none"
            )
    for k, path in enumerate(more, start=3):
        inputs[f"image{k}"] = path
        inputs[f"geometry{k}"] = geometry[k - 3] if geometry else None
        inputs[f"mask{k}"] = mask[k - 3] if mask else None
        if frame:
            params[f"frame{k}"] = _frame_option(frame[k - 3])
    spec = JobSpec(
        "coronary-reconstruct", {k: str(v) for k, v in inputs.items() if v is not None}, params, str(out)
    )
    console = Console(stderr=True)
    show = _progress_lines(console)
    summary = run_job(
        spec,
        on_event=lambda e: show(e["stage"], e.get("progress", 0.0)) if e.get("event") == "progress" else None,
    )
    typer.echo(json.dumps(summary, indent=2))
