"""``xraycardiac train ...``: training commands, all on the shared :class:`xraycardiac.trainer.Trainer`.

Settings are ``key=value`` arguments naming a field of the model config or of ``TrainConfig``
(nanoGPT style; unknown keys are errors), e.g.::

    xraycardiac train angio-diffusion --data synth/ --out runs/angio steps=3000 batch_size=16 image_size=256
    xraycardiac train coronary-matcher --data synth/ --out runs/matcher --foundation dinov2:/models/dinov2
        steps=20000 batch_size=4 matcher.n_layers=6
    xraycardiac train coronary-foundation --data synth/ --out runs/fm    # our offline DINOv2 stand-in
    xraycardiac train coronary-vessel-seg --out runs/vseg steps=600 batch_size=6   # no --data: scenes are made

XRayToCT (CLS-DM) trains in three stages, each on the frozen results of the one before, and the
three runs are packed into one x2ct model with ``xraycardiac x2ct bundle`` (see
:mod:`xraycardiac.xray2ct.bundle`)::

    xraycardiac train x2ct-autoencoder --data cache/ --out runs/ae steps=4000
    xraycardiac train x2ct-encoder --data cache/ --out runs/enc --autoencoder runs/ae steps=4000
    xraycardiac train x2ct-ldm --data cache/ --out runs/ldm --autoencoder runs/ae --encoder runs/enc
    xraycardiac x2ct bundle --autoencoder runs/ae --encoder runs/enc --ldm runs/ldm --out x2ct-demo --install

Rerunning the same command continues from ``OUT/checkpoint.pt``. Under ``torchrun`` the same
command trains with DDP. Heavy imports happen inside the commands, so ``--help`` is quick.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any

import typer

from xraycardiac.cli_errors import ErrorHandlingGroup

# the command line given to `xraycardiac train ...` while one of its commands runs (for model.json)
_COMMAND: ContextVar[str | None] = ContextVar("xraycardiac_train_command", default=None)


class TrainGroup(ErrorHandlingGroup):
    """The ``train`` group: records the command it was given, which each run writes into model.json.

    The arguments reach the group whether it runs under ``xraycardiac`` or alone (tests), and are the
    user's own: not the argv of the process that parsed them (pytest, a notebook, ``torchrun``).
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        ctx.meta["xraycardiac.train_command"] = shlex.join(["xraycardiac", "train", *args])
        return super().parse_args(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        token = _COMMAND.set(ctx.meta.get("xraycardiac.train_command"))
        try:
            return super().invoke(ctx)
        finally:
            _COMMAND.reset(token)


app = typer.Typer(
    help="Train models on the shared trainer (EMA, checkpoints, exact resume, DDP under torchrun).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    cls=TrainGroup,
)


@app.callback()
def _train() -> None:
    """Train models on the shared trainer (EMA, checkpoints, exact resume, DDP under torchrun)."""


# the options every training command shares
_CacheOption = Annotated[Path, typer.Option(help="XRayToCT cache (CT cubes + views, from build_cache).")]
_OutOption = Annotated[Path, typer.Option(help="Run folder (checkpoint, log, model.pt + model.json).")]
_NameOption = Annotated[str, typer.Option(help="Model name written into model.json.")]
_SplitOption = Annotated[str, typer.Option(help="train | val | test | all.")]
_InitOption = Annotated[
    str | None,
    typer.Option(
        help="Start from these weights (run folder, weights file or name; same config): fine-tuning."
    ),
]
_AutoencoderOption = Annotated[
    str, typer.Option(help="Frozen autoencoder: run folder of train x2ct-autoencoder, weights file or name.")
]


def _train(out: Path, train: Callable[..., dict], *args: Any, **kwargs: Any) -> None:
    """Run ``train(*args, progress=..., command=..., **kwargs)`` printing progress lines (rank 0 only under
    torchrun), ``command`` being the ``xraycardiac train ...`` line given; errors reach the CLI's one error
    handler, on every rank."""
    from rich.console import Console

    from xraycardiac.trainer import is_main_process

    console = Console(stderr=True)

    def progress(stage: str, fraction: float, **extra) -> None:
        if not is_main_process():
            return
        eta = extra.get("eta_s")
        console.print(f"{100 * fraction:5.1f}%  {stage}" + (f"  eta {eta} s" if eta is not None else ""))

    summary = train(*args, progress=progress, command=_COMMAND.get(), **kwargs)
    if not is_main_process():
        return
    console.print(
        f"trained to step {summary['step']} ({summary['steps_run']} now, {summary['seconds']} s); "
        f"model package: {out} (model.pt sha256 {summary.get('entry', {}).get('sha256', '?')[:12]}...)"
    )


@app.command("angio-diffusion")
def angio_diffusion(
    data: Annotated[Path, typer.Option(help="Coronary pair dataset, or a folder with images/ and masks/.")],
    out: _OutOption,
    settings: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides of AngioDiffusionConfig / TrainConfig fields."),
    ] = None,
    name: _NameOption = "angio-diffusion",
    split: Annotated[str, typer.Option(help="train | val | test | all (coronary pair datasets).")] = "train",
) -> None:
    """Train the mask-conditioned angiogram IDDPM (the diffusion renderer of `coronary synth`)."""
    from xraycardiac.coronary.synth.render_diffusion import AngioDiffusionConfig
    from xraycardiac.coronary.synth.train_diffusion import train_angio_diffusion
    from xraycardiac.trainer import TrainConfig, parse_overrides

    def train(**kwargs: Any) -> dict:
        mcfg, tcfg = parse_overrides(settings or [], AngioDiffusionConfig(), TrainConfig())
        return train_angio_diffusion(data, out, mcfg, tcfg, **kwargs)

    _train(out, train, name=name, split=split)


@app.command("coronary-matcher")
def coronary_matcher(
    data: Annotated[Path, typer.Option(help="Coronary pair dataset (xraycardiac coronary synth).")],
    out: _OutOption,
    settings: Annotated[
        list[str] | None,
        typer.Argument(
            help="key=value overrides: CoronaryMatcherConfig fields, keypoint_net.<f> / matcher.<f> / "
            "loss.<f> (or the bare name where unique), TrainConfig fields."
        ),
    ] = None,
    foundation: Annotated[
        str | None,
        typer.Option(
            help="family:/path of a local foundation model (dinov2, clip, sam) whose feature similarity "
            "masks cross-attention; its weights are not part of the matcher's."
        ),
    ] = None,
    name: _NameOption = "coronary-matcher",
    split: _SplitOption = "train",
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune: start from this matcher (model name, run folder or .pt) with the same network "
            "settings, e.g. a 128 px model on 256 px pairs."
        ),
    ] = None,
) -> None:
    """Train the coronary keypoint matcher (KeypointNet + foundation-masked attention matcher, Zhao et al. 2025)."""
    from dataclasses import replace

    from xraycardiac.coronary.matching.train_matcher import parse_matcher_overrides, train_coronary_matcher

    def train(**kwargs: Any) -> dict:
        mcfg, tcfg = parse_matcher_overrides(settings or [])
        if foundation is not None:
            mcfg = replace(mcfg, foundation=foundation)
        return train_coronary_matcher(data, out, mcfg, tcfg, init=init, **kwargs)

    _train(out, train, name=name, split=split)


@app.command("coronary-vessel-seg")
def coronary_vessel_seg(
    out: _OutOption,
    settings: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides of VesselSegConfig / TrainConfig fields."),
    ] = None,
    name: _NameOption = "coronary-vessel-seg",
) -> None:
    """Train the angiogram vessel segmentation network (U-Net, probability output) on synthetic scenes with
    randomised appearance; the scene bank is made on the first run and cached in OUT/scenes.npz."""
    from xraycardiac.coronary.segment.train import train_vessel_seg
    from xraycardiac.coronary.segment.vessel_seg import VesselSegConfig
    from xraycardiac.trainer import TrainConfig, parse_overrides

    def train(**kwargs: Any) -> dict:
        mcfg, tcfg = parse_overrides(settings or [], VesselSegConfig(), TrainConfig())
        return train_vessel_seg(out, mcfg, tcfg, **kwargs)

    _train(out, train, name=name)


@app.command("coronary-foundation")
def coronary_foundation(
    data: Annotated[
        Path, typer.Option(help="Coronary pair dataset of square images (xraycardiac coronary synth).")
    ],
    out: _OutOption,
    settings: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides of AngioFoundationConfig / TrainConfig fields."),
    ] = None,
    name: _NameOption = "angio-foundation",
    split: _SplitOption = "train",
) -> None:
    """Train our small DINOv2-architecture angiogram encoder (the offline stand-in for DINOv2); OUT/foundation
    is then used as --foundation dinov2:OUT/foundation."""
    from xraycardiac.coronary.matching.train_foundation import (
        AngioFoundationConfig,
        train_coronary_foundation,
    )
    from xraycardiac.trainer import TrainConfig, parse_overrides

    def train(**kwargs: Any) -> dict:
        fcfg, tcfg = parse_overrides(settings or [], AngioFoundationConfig(), TrainConfig())
        return train_coronary_foundation(data, out, fcfg, tcfg, **kwargs)

    _train(out, train, name=name, split=split)


@app.command("x2ct-autoencoder")
def x2ct_autoencoder(
    data: _CacheOption,
    out: _OutOption,
    settings: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides of X2CTAutoencoderConfig / TrainConfig fields."),
    ] = None,
    name: _NameOption = "x2ct-autoencoder",
    split: _SplitOption = "train",
) -> None:
    """Train the 3D KL autoencoder of XRayToCT (CLS-DM stage 1) on CT cubes; stores its latent_scale."""
    from xraycardiac.xray2ct.autoencoder import train_x2ct_autoencoder

    _train(out, train_x2ct_autoencoder, data, out, overrides=settings or [], name=name, split=split)


@app.command("x2ct-encoder")
def x2ct_encoder(
    data: _CacheOption,
    out: _OutOption,
    autoencoder: _AutoencoderOption,
    settings: Annotated[
        list[str] | None,
        typer.Argument(
            help="key=value overrides of XRayEncoderConfig / TrainConfig fields, e.g. n_views=1 (single-view) "
            "or contrastive_weight=0 (the CLS-DM ablation without contrastive alignment)."
        ),
    ] = None,
    name: _NameOption = "x2ct-encoder",
    split: _SplitOption = "train",
    init: _InitOption = None,
) -> None:
    """Train the X-ray encoder of XRayToCT (CLS-DM stage 2) against the frozen autoencoder's scaled latent."""
    from xraycardiac.xray2ct.train import train_x2ct_encoder

    _train(out, train_x2ct_encoder, data, out, autoencoder, overrides=settings or [], name=name, split=split,
           init=init)  # fmt: skip


@app.command("x2ct-ldm")
def x2ct_ldm(
    data: _CacheOption,
    out: _OutOption,
    autoencoder: _AutoencoderOption,
    encoder: Annotated[
        str,
        typer.Option(help="Frozen X-ray encoder: run folder of train x2ct-encoder, weights file or name."),
    ],
    settings: Annotated[
        list[str] | None,
        typer.Argument(help="key=value overrides of X2CTLDMConfig / TrainConfig fields, e.g. sampler=rflow."),
    ] = None,
    name: _NameOption = "x2ct-ldm",
    split: _SplitOption = "train",
    init: _InitOption = None,
) -> None:
    """Train the latent diffusion model of XRayToCT (CLS-DM stage 3), conditioned on the frozen encoder."""
    from xraycardiac.xray2ct.train import train_x2ct_ldm

    _train(
        out,
        train_x2ct_ldm,
        data,
        out,
        autoencoder,
        encoder,
        overrides=settings or [],
        name=name,
        split=split,
        init=init,
    )


@app.command("cardiac-tcdm")
def cardiac_tcdm(
    data: Annotated[
        Path, typer.Option(help="Folder with images/ and labels/ (e.g. `xraycardiac cardiac phantoms`).")
    ],
    out: _OutOption,
    settings: Annotated[
        list[str] | None,
        typer.Argument(
            help="key=value overrides of TCDMConfig / TrainConfig fields (use_template=false: ablation)."
        ),
    ] = None,
    name: _NameOption = "cardiac-tcdm",
    init: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune: start from this TCDM (model name, run folder or .pt) with the same network "
            "settings; a model of fewer classes is widened (e.g. cardiac-tcdm-demo 0.2.0 to the heart label)."
        ),
    ] = None,
) -> None:
    """Train the template-guided conditional diffusion model of CardiacSynth (`cardiac synth --renderer tcdm`)."""
    from xraycardiac.cardiac.tcdm_train import train_cardiac_tcdm

    _train(out, train_cardiac_tcdm, data, out, list(settings or ()), name=name, init=init)
