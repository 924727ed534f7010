"""``xraycardiac cardiac ...``: synthetic cardiac CT for segmentation pretraining.

``synth`` writes cases straight into ``--out`` through
:func:`xraycardiac.cardiac.synth.synthesize_dataset` (the function the ``cardiac-synth`` job runs
for the GUI): rerunning a killed command resumes it, and ``--shard i/N`` runs may share one folder::

    xraycardiac cardiac synth --template ct.nii.gz --template-mask seg.nii.gz --n 1000 --out synth/
    xraycardiac cardiac synth --phantom-seed 0 --n 8 --out synth/ --shard 0/4
    xraycardiac cardiac synth --template ct.nii.gz --template-mask seg.nii.gz --label-mapping totalsegmentator \\
        --nnunet-raw $nnUNet_raw --dataset-id 901 --n 8   # -> $nnUNet_raw/Dataset901_CardiacSynth/
    xraycardiac cardiac synth --template ct.nii.gz --template-mask seg.nii.gz --label-mapping mmwhs \\
        --renderer tcdm --model runs/tcdm --n 100 --out synth/

Heavy imports happen inside the commands, so ``--help`` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from xraycardiac.cli_errors import ErrorHandlingGroup

DEFAULT_TCDM_MODEL = "cardiac-tcdm-demo"  # shipped with the package (xraycardiac/models/manifest.json)

app = typer.Typer(
    help="Synthetic cardiac CT (template + MGM masks + TCDM) for segmentation pretraining (research use only).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=ErrorHandlingGroup,
)


@app.command()
def synth(
    out: Annotated[
        Path | None, typer.Option(help="Dataset folder (created; rerun to resume). Or --nnunet-raw.")
    ] = None,
    nnunet_raw: Annotated[
        Path | None,
        typer.Option(
            help="Instead of --out: an nnUNet_raw folder; the dataset goes to its Dataset<ID>_<NAME> folder "
            "(--dataset-id, --dataset-name), ready for nnUNetv2_plan_and_preprocess -d <ID>."
        ),
    ] = None,
    dataset_id: Annotated[int, typer.Option(help="--nnunet-raw: the nnU-Net dataset ID (1..999).")] = 900,
    dataset_name: Annotated[str, typer.Option(help="--nnunet-raw: the dataset name.")] = "CardiacSynth",
    n: Annotated[int, typer.Option(min=1, help="Number of cases.")] = 8,
    template: Annotated[Path | None, typer.Option(help="Template image (CT, HU; NIfTI/NRRD).")] = None,
    template_mask: Annotated[Path | None, typer.Option(help="Its label map on the same grid.")] = None,
    label_mapping: Annotated[
        str | None,
        typer.Option(
            help="How the mask's values map to the cardiac table: totalsegmentator (v2 'total'; other "
            "classes -> background, listed) | totalsegmentator_heartchambers | mmwhs | imagecas | FILE.json "
            '({"<value>": "<table key or value>", "*": "background"}); default: the mask holds table values.'
        ),
    ] = None,
    clean_mask: Annotated[
        bool,
        typer.Option(
            help="Remove specks, tunnels and cavities of the mask after mapping (real segmentations; the MGM "
            "keeps each structure's topology, which it cannot do with a heart full of tiny tunnels)."
        ),
    ] = True,
    phantom_seed: Annotated[
        int, typer.Option(min=0, help="No --template: the cardiac phantom of this seed.")
    ] = 0,
    phantom_grid: Annotated[int, typer.Option(min=16, help="No --template: phantom voxels per side.")] = 64,
    phantom_spacing_mm: Annotated[
        float, typer.Option(min=0.3, max=6.0, help="No --template: phantom voxel size (mm).")
    ] = 2.5,
    renderer: Annotated[
        str, typer.Option(help="warp (template image deformed) | tcdm (diffusion model).")
    ] = "warp",
    model: Annotated[
        str | None,
        typer.Option(
            help=f"TCDM model name or run folder (--renderer tcdm); default: the shipped {DEFAULT_TCDM_MODEL} "
            "(64^3 grid: keep --phantom-grid 64 or give a 64^3 template)."
        ),
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="DDIM steps of each image (tcdm).")] = 20,
    ssv_steps: Annotated[
        str, typer.Option(help="DDIM step counts of the confidence (tcdm), e.g. 10,20,50.")
    ] = "10,20,50",
    strength_mm: Annotated[float, typer.Option(min=0.0, help="MGM deformation strength (mm).")] = 4.0,
    start_strength: Annotated[
        float,
        typer.Option(min=0.01, max=1.0, help="tcdm: start from the template noised this far (1 = noise)."),
    ] = 0.5,
    hu_harmonise: Annotated[
        bool,
        typer.Option(
            help="tcdm: bring each structure's mean HU to the warped template's (smooth correction)."
        ),
    ] = True,
    texture_harmonise: Annotated[
        bool,
        typer.Option(
            help="tcdm: give each structure the template's fine-scale texture power (the model's own "
            "fine noise scaled down where it exceeds it)."
        ),
    ] = True,
    seed: Annotated[int, typer.Option(min=0, help="Base seed (case i: SeedSequence([seed, i])).")] = 0,
    shard: Annotated[str, typer.Option(help="i/N: make cases i, i+N, ... only.")] = "0/1",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N].")] = "auto",
    overwrite: Annotated[
        bool, typer.Option(help="Delete a dataset already in --out (any settings) and start again.")
    ] = False,
) -> None:
    """Deform a template's label map (MGM), render an image for each mask and write a training set."""
    from dataclasses import replace

    from rich.console import Console

    from xraycardiac.cardiac.mgm import MGMConfig
    from xraycardiac.cardiac.synth import CardiacSynthConfig, nnunet_dataset_path, synthesize_dataset
    from xraycardiac.cardiac.templates import load_template, template_from_phantom
    from xraycardiac.outputs import parse_shard

    console = Console(stderr=True)
    if (out is None) == (nnunet_raw is None):
        raise ValueError(
            "give one of --out (the dataset folder) or --nnunet-raw (a Dataset<ID>_<NAME> folder in it)"
        )
    if nnunet_raw is not None:
        out = nnunet_dataset_path(nnunet_raw, dataset_id, dataset_name)
    if (template is None) != (template_mask is None):
        raise ValueError("--template and --template-mask go together (an image and its label map)")
    if template is not None:
        tmpl = load_template(template, template_mask, label_mapping, clean=clean_mask)
        if tmpl.meta.get("dropped_labels"):
            console.print(
                f"label mapping {label_mapping!r}: values {tmpl.meta['dropped_labels']} of {template_mask} "
                f"(non-cardiac structures) mapped to background; kept {tmpl.labels_present}"
            )
    else:
        from xraycardiac.phantoms.cardiac import CardiacPhantomConfig

        tmpl = template_from_phantom(
            CardiacPhantomConfig(
                seed=phantom_seed, shape_ijk=(phantom_grid,) * 3, spacing_mm=phantom_spacing_mm
            )
        )
    try:
        schedule = tuple(int(s) for s in ssv_steps.split(","))
    except ValueError as exc:
        raise ValueError(f"--ssv-steps: expected integers separated by commas, got {ssv_steps!r}") from exc
    if renderer == "tcdm" and model is None:
        model = DEFAULT_TCDM_MODEL
    config = CardiacSynthConfig(
        n=n, seed=seed, renderer=renderer, model=model, steps=steps, ssv_steps=schedule, start_strength=start_strength,
        mgm=replace(MGMConfig(), strength_mm=strength_mm), device=device, hu_harmonise=hu_harmonise,
        texture_harmonise=texture_harmonise,
    )  # fmt: skip
    summary = synthesize_dataset(
        tmpl, out, config, shard=parse_shard(shard), overwrite=overwrite,
        progress=lambda stage, fraction, **_: console.print(f"[dim]{100 * fraction:5.1f}%  {stage}[/dim]"),
    )  # fmt: skip
    per_case = summary["seconds_per_case"]
    typer.echo(
        f"{len(summary['written'])} cases written"
        + (f" ({len(summary['redone'])} of them incomplete before)" if summary["redone"] else "")
        + f", {len(summary['skipped'])} already complete "
        f"({summary['cases']} in all, shard {shard}); MGM attempts {summary['mgm']['attempts']}, "
        f"rejected {summary['mgm']['rejected']}"
        + (f"; {per_case:.1f} s per case" if per_case else "")
        + f" -> {out}"
    )


@app.command()
def phantoms(
    out: Annotated[Path, typer.Option(help="Folder receiving images/ and labels/ (TCDM training layout).")],
    n: Annotated[int, typer.Option(min=1, help="Number of phantoms.")] = 16,
    seed: Annotated[
        int, typer.Option(min=0, help="Seed of the first phantom (phantom k uses seed + k).")
    ] = 0,
    grid: Annotated[int, typer.Option(min=16, help="Voxels per side.")] = 64,
    spacing_mm: Annotated[float, typer.Option(min=0.3, max=6.0, help="Voxel size (mm).")] = 2.5,
    overwrite: Annotated[
        bool, typer.Option(help="Delete the phantoms already in --out (any grid) and start again.")
    ] = False,
) -> None:
    """Write procedural cardiac phantoms (image in HU + label map) as a training folder for `train cardiac-tcdm`.

    Rerunning completes the folder: phantoms whose files match their record are kept, the rest are
    made again; another --grid or --spacing-mm is refused unless --overwrite.
    """
    from rich.console import Console

    from xraycardiac.phantoms.cardiac_folder import write_cardiac_phantoms

    console = Console(stderr=True)
    summary = write_cardiac_phantoms(
        out, n, seed=seed, grid=grid, spacing_mm=spacing_mm, overwrite=overwrite,
        progress=lambda name, fraction: console.print(f"[dim]{100 * fraction:5.1f}%  {name}[/dim]"),
    )  # fmt: skip
    redone = f"; {len(summary['redone'])} were incomplete and made again" if summary["redone"] else ""
    typer.echo(
        f"{len(summary['written'])} phantoms written ({len(summary['kept'])} already there{redone}) -> {out}"
    )


@app.command()
def pretrain(
    synthetic: Annotated[Path, typer.Option(help="A `cardiac synth` folder (images, labels, confidence).")],
    finetune: Annotated[Path, typer.Option(help="Few 'real' labelled cases: images/ + labels/.")],
    test: Annotated[Path, typer.Option(help="Held-out labelled cases: images/ + labels/.")],
    out: Annotated[Path | None, typer.Option(help="Run folder (checkpoints per arm; results.json).")] = None,
    arm: Annotated[
        list[str] | None, typer.Option(help="none | synthetic | cal (repeat; default all).")
    ] = None,
    settings: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides of CALConfig (steps, finetune_steps, ...)."),
    ] = None,
) -> None:
    """Segmentation with no / plain synthetic / confidence-aware (CAL) pretraining: Dice and HD95 per structure."""
    import json

    from rich.console import Console

    from xraycardiac.cardiac.cal import CALConfig
    from xraycardiac.cardiac.pretrain import ARMS, compare_pretraining, format_pretraining_table
    from xraycardiac.trainer import parse_overrides

    console = Console(stderr=True)
    (config,) = parse_overrides(list(settings or ()), CALConfig())
    rows = compare_pretraining(
        synthetic, finetune, test, config, tuple(arm or ARMS), out,
        progress=lambda stage, fraction, **_: console.print(f"[dim]{100 * fraction:5.1f}%  {stage}[/dim]"),
    )  # fmt: skip
    typer.echo(format_pretraining_table(rows))
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        doc = {"config": config.to_dict(), "synthetic": str(synthetic), "finetune": str(finetune), "test": str(test),
               "rows": rows}  # fmt: skip
        (out / "results.json").write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
