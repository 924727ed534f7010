"""``xraycardiac x2ct ...``: the CT-from-radiographs commands.

``cache`` turns CT volumes (files, DICOM series, folders of them, or chest phantoms
``phantom:<a>-<b>``) into the training cache of :mod:`xraycardiac.xray2ct.data`: each case resampled
to a cube in a stated HU window, with its PA and lateral DRRs. It is resumable (complete cases are
skipped) and shardable (``--shard i/N`` runs may share one folder)::

    xraycardiac x2ct cache --source phantom:0-199 --out cache/ --preset demo
    xraycardiac x2ct cache --source /data/LIDC-IDRI --out cache/ --preset paper --shard 0/8

Heavy imports happen inside the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="CT from one or two radiographs: training cache, generation, evaluation (research use only).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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

    from xraycardiac.xray2ct.data import X2CTDataConfig, build_cache, parse_shard

    console = Console(stderr=True)
    overrides = {k: v for k, v in (("grid", grid), ("spacing_mm", spacing_mm)) if v is not None}
    try:
        config = X2CTDataConfig.preset(preset, **overrides)
        summary = build_cache(
            source, out, config, seed=seed, shard=parse_shard(shard),
            progress=lambda stage, fraction: console.print(f"[dim]{100 * fraction:5.1f}%  {stage}[/dim]"),
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    typer.echo(
        f"{len(summary['written'])} cases written, {len(summary['skipped'])} already complete "
        f"({summary['cases']} in all, shard {shard}) in {summary['seconds']:.0f} s -> {out}"
    )
