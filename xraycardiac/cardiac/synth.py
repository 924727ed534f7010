"""Synthetic cardiac CT datasets for segmentation pretraining: MGM masks -> image -> confidence.

:func:`synthesize_dataset` draws, for each case ``i`` of ``0..n-1``, one deformed label map from
the template by the training-free Mask Generation Module (:func:`xraycardiac.cardiac.mgm.generate_masks`,
seeded by ``SeedSequence([seed, i])`` so a case does not depend on which shard makes it), then an
image for it:

* ``renderer="warp"``: the template image warped by the same deformation
  (:func:`~xraycardiac.cardiac.mgm.warp_image`). Exact image/mask correspondence by construction,
  but no new appearance: the training-free baseline. Confidence is 1 everywhere.
* ``renderer="tcdm"``: the template-guided conditional diffusion model
  (:mod:`xraycardiac.cardiac.tcdm`) conditioned on the target mask and the template brought into the
  target frame by the MGM deformation; the confidence map is the skip-sampling variance
  (:mod:`xraycardiac.cardiac.ssv`) of the same noise sampled with several DDIM step counts.

Output folder (nnU-Net / MONAI conventions, readable by ``xraycardiac cardiac pretrain``)::

    imagesTr/case_00000_0000.nii.gz   image, HU (float32)
    labelsTr/case_00000.nii.gz        label map (uint8, values of xraycardiac.cardiac.labels)
    confidenceTr/case_00000.nii.gz    confidence in [0, 1] (float32)
    cases/case_00000.json             how the case was made (MGM draw, renderer, timing); written
                                      last, so it marks a complete case
    dataset.json                      nnU-Net v2 (channel_names, labels, numTraining, file_ending)
    datalist.json                     MONAI ({"training": [{"image", "label", "confidence"}, ...]})
    synth.json                        the config, the template's provenance, the label table

Every file is written atomically; rerunning skips complete cases (resume), and ``shard=(i, N)``
makes cases ``i, i+N, ...`` so several processes can share one folder. All shards write the same
``dataset.json`` / ``datalist.json`` / ``synth.json`` (they list all ``n`` cases by name).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.cardiac.mgm import MGMConfig
from xraycardiac.cardiac.templates import CardiacTemplate
from xraycardiac.volume import Volume

__all__ = ["RENDERERS", "CardiacSynthConfig", "case_name", "synthesize_dataset"]

RENDERERS = ("warp", "tcdm")
FORMAT = "xraycardiac.cardiac_synth"


@dataclass(frozen=True)
class CardiacSynthConfig:
    """What :func:`synthesize_dataset` makes.

    Attributes:
        n: number of cases (>= 1).
        seed: base seed (case i uses ``SeedSequence([seed, i])``).
        renderer: ``"warp"`` or ``"tcdm"`` (module docstring).
        model: TCDM model name or run folder (``renderer="tcdm"`` only).
        steps: DDIM steps of the image the case keeps (``"tcdm"``).
        ssv_steps: DDIM step counts whose spread gives the confidence (``"tcdm"``); the case's image
            is the one sampled with ``steps``, which is added to the list if missing.
        start_strength: ``"tcdm"`` sampling starts from the warped template noised to this fraction
            of the diffusion (SDEdit-style, :func:`~xraycardiac.cardiac.tcdm.sample_tcdm`); 1 = from
            pure noise as in FCaS. 0.5 by default because the CPU-trained demo model predicts x0 poorly
            at high noise (its x0 correlates 0.27 with the truth at t = 800 vs 0.89 at t = 500).
        mgm: the mask generation settings.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
    """

    n: int = 8
    seed: int = 0
    renderer: str = "warp"
    model: str | None = None
    steps: int = 20
    ssv_steps: tuple[int, ...] = (10, 20, 50)
    start_strength: float = 0.5
    mgm: MGMConfig = field(default_factory=MGMConfig)
    device: str = "auto"

    def __post_init__(self) -> None:
        name = "CardiacSynthConfig"
        if not (isinstance(self.n, int) and not isinstance(self.n, bool) and self.n >= 1):
            raise ValueError(f"{name}.n: expected an integer >= 1, got {self.n!r}")
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0):
            raise ValueError(f"{name}.seed: expected an integer >= 0, got {self.seed!r}")
        if self.renderer not in RENDERERS:
            raise ValueError(f"{name}.renderer: expected one of {RENDERERS}, got {self.renderer!r}")
        if self.renderer == "tcdm" and not self.model:
            raise ValueError(f"{name}.model: renderer 'tcdm' needs a model name or run folder")
        if not (isinstance(self.steps, int) and self.steps >= 1):
            raise ValueError(f"{name}.steps: expected an integer >= 1, got {self.steps!r}")
        steps = tuple(self.ssv_steps)
        if len(steps) < 2 or not all(isinstance(s, int) and s >= 1 for s in steps) or len(set(steps)) < 2:
            raise ValueError(
                f"{name}.ssv_steps: expected >= 2 distinct integers >= 1, got {self.ssv_steps!r}"
            )
        if not (isinstance(self.start_strength, int | float) and 0.0 < self.start_strength <= 1.0):
            raise ValueError(
                f"{name}.start_strength: expected a number in (0, 1], got {self.start_strength!r}"
            )
        if not isinstance(self.mgm, MGMConfig):
            raise ValueError(f"{name}.mgm: expected an MGMConfig, got {type(self.mgm).__name__}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        out = asdict(self)
        out["ssv_steps"] = list(self.ssv_steps)
        return out


def case_name(i: int) -> str:
    """``case_00042``: the name of case ``i``."""
    return f"case_{i:05d}"


def _files(i: int) -> dict[str, str]:
    name = case_name(i)
    return {
        "image": f"imagesTr/{name}_0000.nii.gz",
        "label": f"labelsTr/{name}.nii.gz",
        "confidence": f"confidenceTr/{name}.nii.gz",
        "case": f"cases/{name}.json",
    }


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _complete(root: Path, i: int) -> bool:
    return all((root / f).is_file() for f in _files(i).values())


def _index_files(root: Path, template: CardiacTemplate, config: CardiacSynthConfig) -> None:
    """dataset.json (nnU-Net), datalist.json (MONAI) and synth.json: the same for every shard."""
    from xraycardiac import __version__
    from xraycardiac.cardiac.labels import LABEL_TABLE, label_names

    present = template.labels_present
    names = label_names(present)
    cases = [_files(i) for i in range(config.n)]
    _write_json(
        root / "dataset.json",
        {
            "name": "xraycardiac_cardiac_synth",
            "description": "synthetic cardiac CT (research use only, not for clinical use)",
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{names[v]: v for v in present}},
            "numTraining": config.n,
            "file_ending": ".nii.gz",
        },
    )
    _write_json(
        root / "datalist.json",
        {"training": [{k: c[k] for k in ("image", "label", "confidence")} for c in cases]},
    )
    _write_json(
        root / "synth.json",
        {
            "format": FORMAT,
            "xraycardiac_version": __version__,
            "config": config.to_dict(),
            "template": {"name": template.name, "labels": present, "meta": template.meta},
            "label_table": [asdict(lbl) for lbl in LABEL_TABLE if lbl.value in present],
            "cases": config.n,
        },
    )


def _check_existing(root: Path, template: CardiacTemplate, config: CardiacSynthConfig) -> None:
    """Refuse a folder made with other settings or another template (mixing would be silent)."""
    path = root / "synth.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}); remove it or choose another --out") from exc
    new = json.loads(json.dumps(config.to_dict(), default=str))
    if (
        old.get("format") != FORMAT
        or old.get("config") != new
        or old.get("template", {}).get("name") != template.name
    ):
        raise ValueError(
            f"{root}: holds a synthetic dataset made with other settings or template "
            f"({old.get('template', {}).get('name')!r}); use the same settings to resume, or another --out"
        )


def _render_warp(
    template: CardiacTemplate, sample: Any, config: CardiacSynthConfig
) -> tuple[Volume, np.ndarray, dict]:
    from xraycardiac.cardiac.mgm import warp_image

    image = warp_image(template.image, sample.ddf_ras_mm)
    return image, np.ones(image.array.shape, dtype=np.float32), {"renderer": "warp"}


def _tcdm_renderer(template: CardiacTemplate, config: CardiacSynthConfig) -> Callable[..., Any]:
    """The ``"tcdm"`` renderer: load the model once, check the template against it, return the renderer."""
    import torch

    from xraycardiac.cardiac.ssv import skip_sampling_variance
    from xraycardiac.cardiac.tcdm import build_tcdm, encode_condition, load_tcdm, sample_tcdm
    from xraycardiac.runtime import select_device

    device = select_device(config.device)
    unet, info = load_tcdm(str(config.model), device=str(device))
    cfg = unet.config
    shape = tuple(template.labels.array.shape)
    if shape != (cfg.grid,) * 3:
        raise ValueError(
            f"template: its grid is {shape} voxels but model {config.model!r} was trained on {cfg.grid}^3; "
            f"resample the template to {cfg.grid}^3"
        )
    too_high = int(template.labels.array.max()) >= cfg.n_classes
    if too_high:
        raise ValueError(
            f"template: label {int(template.labels.array.max())} is outside the model's 0..{cfg.n_classes - 1}"
        )
    scheduler = build_tcdm(cfg)[1]
    t_image = cfg.hu_to_unit(torch.from_numpy(np.asarray(template.image.array, np.float32)))[None, None]
    t_labels = torch.from_numpy(template.labels.array.astype(np.int64))[None]
    schedules = tuple(dict.fromkeys([*config.ssv_steps, config.steps]))  # the kept image's count included

    def render(
        template: CardiacTemplate, sample: Any, config: CardiacSynthConfig
    ) -> tuple[Volume, np.ndarray, dict]:
        kept: dict[str, torch.Tensor] = {}

        def sample_fn(cond: torch.Tensor, steps: int, generator: Any, noise: torch.Tensor) -> torch.Tensor:
            x0 = sample_tcdm(
                unet, scheduler, cond, steps, generator, noise, start_strength=config.start_strength
            )
            if steps == config.steps:
                kept["x0"] = x0
            return x0

        mask = torch.from_numpy(sample.labels.array.astype(np.int64))[None]
        ddf = torch.from_numpy(sample.ddf_voxel())[None]
        cond = encode_condition(cfg, mask, t_image, t_labels, ddf).to(device)
        seed = int(sample.meta.get("seed", 0))
        gen = torch.Generator(device=device).manual_seed(seed)
        _, variance, confidence = skip_sampling_variance(sample_fn, cond, schedules, generator=gen)
        hu = cfg.unit_to_hu(kept["x0"])[0, 0].cpu().numpy().astype(np.float32)
        image = Volume(hu, sample.labels.ijk_to_ras.copy())
        info_case = {
            "renderer": "tcdm", "model": info, "steps": config.steps, "ssv_steps": list(schedules),
            "start_strength": config.start_strength,
            "variance_mean": float(variance.mean()),
        }  # fmt: skip
        return image, confidence[0, 0].cpu().numpy().astype(np.float32), info_case

    return render


def synthesize_dataset(
    template: CardiacTemplate,
    out_dir: str | os.PathLike[str],
    config: CardiacSynthConfig | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[..., None] | None = None,
    cancelled: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Make (or resume) cases ``shard[0]::shard[1]`` of a synthetic dataset (module docstring).

    Args:
        template: template image (HU) + label map on one grid
            (:func:`~xraycardiac.cardiac.templates.load_template`, ``template_from_phantom``, ...).
        out_dir: dataset folder (created).
        config: :class:`CardiacSynthConfig` (default: defaults).
        shard: (i, N): this process makes cases i, i + N, ...
        progress: ``progress(stage, fraction, **extra)`` after each case.
        cancelled: polled between cases; True stops (complete cases stay, nothing partial).

    Returns:
        ``written`` / ``skipped`` case names, ``mgm`` (rejections summed over the written cases),
        ``seconds_per_case``, ``cases`` and ``shard``.

    Raises:
        ValueError: bad shard, a folder made with other settings, a template MGM cannot deform.
    """
    from xraycardiac.cardiac.mgm import generate_masks
    from xraycardiac.io import write_volume

    config = config or CardiacSynthConfig()
    ok = isinstance(shard, tuple | list) and len(shard) == 2 and all(isinstance(v, int) for v in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard: expected (i, N) with 0 <= i < N, got {shard!r}")
    root = Path(out_dir)
    _check_existing(root, template, config)
    for sub in ("imagesTr", "labelsTr", "confidenceTr", "cases"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    _index_files(root, template, config)
    render = _render_warp if config.renderer == "warp" else _tcdm_renderer(template, config)
    todo = list(range(shard[0], config.n, shard[1]))
    written, skipped, times = [], [], []
    rejections: dict[str, int] = {}
    attempts = 0
    for done, i in enumerate(todo):
        if cancelled is not None and cancelled():
            break
        name = case_name(i)
        if _complete(root, i):
            skipped.append(name)
            continue
        t0 = time.perf_counter()
        case_seed = int(np.random.SeedSequence([config.seed, i]).generate_state(1)[0])
        samples, report = generate_masks(template.labels, 1, config.mgm, seed=case_seed)
        attempts += report.attempts
        for reason, count in report.rejected.items():
            rejections[reason] = rejections.get(reason, 0) + count
        if not samples:
            raise ValueError(
                f"case {name}: MGM found no topology-preserving deformation in {report.attempts} attempts "
                f"(rejections {report.rejected}); {template.topology_mismatch() or 'lower mgm.strength_mm'}"
            )
        sample = samples[0]
        image, confidence, info = render(template, sample, config)
        files = _files(i)
        write_volume(Volume(image.array.astype(np.float32), image.ijk_to_ras), root / files["image"])
        write_volume(
            Volume(sample.labels.array.astype(np.uint8), sample.labels.ijk_to_ras), root / files["label"]
        )
        write_volume(Volume(confidence.astype(np.float32), image.ijk_to_ras), root / files["confidence"])
        seconds = time.perf_counter() - t0
        _write_json(
            root / files["case"],
            {"name": name, "case_seed": case_seed, "mgm": sample.meta, "mgm_report": report.to_dict(),
             **info, "seconds": seconds},
        )  # fmt: skip
        written.append(name)
        times.append(seconds)
        if progress is not None:
            progress(f"case {name}", (done + 1) / len(todo), case=name)
    return {
        "written": written,
        "skipped": skipped,
        "cases": config.n,
        "shard": list(shard),
        "mgm": {"attempts": attempts, "rejected": rejections},
        "seconds_per_case": float(np.mean(times)) if times else None,
    }
