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
  (:mod:`xraycardiac.cardiac.ssv`) of the same noise sampled with several DDIM step counts (the
  model's clean-image estimates pooled over the runs, smoothed, calibrated: about the probability
  that a voxel is within 100 HU of the warped template it renders).
  Template labels beyond the model's classes (the undivided heart 10, the great vessels 11-15) are
  given to it as background, where the image follows the warped template (a template with none of
  its classes is refused before anything is written). The model works in its HU window
  (``TCDMConfig.hu_window``, -1000..1000) and knows nothing beyond it: where the warped template lies
  beyond it (contrast above 1000 HU, air below -1000) its values are kept (``WINDOW_BLEND_HU``), so
  no contrast is clipped. With ``hu_harmonise`` (default) each structure's mean HU is then brought to
  the warped template's by a smooth correction (:func:`harmonise_hu`): the model's intensity prior is
  its phantoms' (on the real chest CT its blood pool came out 22-26 HU darker than the template it was
  asked to render), the template is what the user asked for. With ``texture_harmonise`` (default) the
  model's fine-scale deviation from the warped template is scaled per structure so that the case's
  fine texture has the template's power (:func:`~xraycardiac.cardiac.harmonise.harmonise_texture`: the
  model paints its phantoms' ~45 HU white noise over a real CT's finer texture); what it changes at the
  scale of structures stays (:mod:`xraycardiac.cardiac.harmonise`).

Output folder (nnU-Net / MONAI conventions, readable by ``xraycardiac cardiac pretrain``)::

    imagesTr/case_00000_0000.nii.gz   image, HU (float32)
    labelsTr/case_00000.nii.gz        label map (uint8, consecutive 0..N-1: the template's structures in
                                      the order of their table values, as nnU-Net requires; the table
                                      value of each is in dataset.json / synth.json "label_values")
    confidenceTr/case_00000.nii.gz    confidence in [0, 1] (float32)
    cases/case_00000.json             how the case was made (MGM draw, renderer, timing)
    records/case_00000.done.json      the case's four files with sizes and sha256, written last: the
                                      record that the case is complete (:mod:`xraycardiac.outputs`)
    dataset.json                      nnU-Net v2 (channel_names, labels, numTraining, file_ending);
                                      passes nnunetv2's verify_dataset_integrity
    datalist.json                     MONAI ({"training": [{"image", "label", "confidence"}, ...]})
    synth.json                        the settings (config, template), the label table, the cases

Every file is written atomically. A rerun keeps a case only if its record is there and its files
still match it, and makes every other case again (resume), after deleting what is left of it;
``shard=(i, N)`` makes cases ``i, i+N, ...`` so several processes can share one folder. A folder
made with other settings is refused, naming the first that differs. The index files
(``dataset.json``, ``datalist.json``, ``synth.json``'s ``cases``) list only verified cases: they
are rewritten from the records at the start of a run, after each case and at the end, so a run that
fails or is killed leaves them true, and a case that fails midway is deleted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xraycardiac.cardiac.harmonise import (
    HU_HARMONISE_SIGMA_MM,
    TEXTURE_SIGMA_MM,
    harmonise_hu,
    harmonise_texture,
)
from xraycardiac.cardiac.mgm import MGMConfig
from xraycardiac.cardiac.templates import CardiacTemplate
from xraycardiac.outputs import check_output, discard, recorded_sample, verify_record, write_json_atomic
from xraycardiac.volume import Volume

__all__ = [
    "DEFAULT_DATASET_ID",
    "DEFAULT_DATASET_NAME",
    "RENDERERS",
    "CardiacSynthConfig",
    "case_name",
    "dataset_label_values",
    "nnunet_dataset_folder",
    "nnunet_dataset_path",
    "synthesize_dataset",
]

RENDERERS = ("warp", "tcdm")
WINDOW_BLEND_HU = 100.0
"""``"tcdm"``: the warped template replaces the model's image where it lies beyond the model's HU
window, blended in linearly over this many HU inside the window's edges."""
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
        hu_harmonise: ``"tcdm"``: after sampling, bring each structure's mean HU (every label of the
            case's label map but the background) to the warped template's over the same voxels, by
            :func:`harmonise_hu` (a correction smoothed over ``HU_HARMONISE_SIGMA_MM`` within the
            structure, so the diffusion's texture and detail stay). Why: the model's intensity prior is
            that of its phantom training data and it pulls a template unlike them towards it (the real
            chest CT's blood pool by -22..-26 HU); the template is what the user asked for. The step has
            no fitted constants; the confidence map is the sampler's, computed before it. Each case's
            ``cases/*.json`` records the per-structure mean offset before and after (``hu_harmonise``).
        texture_harmonise: ``"tcdm"``: after ``hu_harmonise``, scale the model's fine-scale deviation
            from the warped template (two bands finer than 5 mm, ``TEXTURE_SIGMA_MM``) per structure so
            that the case's fine texture has the template's power, never more than the model's
            (:func:`~xraycardiac.cardiac.harmonise.harmonise_texture`). Why: the demo model paints its
            phantoms' ~45 HU white noise over any template (noise power 15-73x the real chest CT's in
            soft tissue). No fitted constants; the confidence map is computed before it; each case's
            ``cases/*.json`` records the per-region scales and band RMS (``texture_harmonise``).
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
    hu_harmonise: bool = True
    texture_harmonise: bool = True

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
        if not isinstance(self.hu_harmonise, bool):
            raise ValueError(f"{name}.hu_harmonise: expected true or false, got {self.hu_harmonise!r}")
        if not isinstance(self.texture_harmonise, bool):
            raise ValueError(
                f"{name}.texture_harmonise: expected true or false, got {self.texture_harmonise!r}"
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


def _record(root: Path, i: int) -> Path:
    """``records/case_<i>.done.json``: the record written after case ``i``'s files."""
    return root / "records" / f"{case_name(i)}.done.json"


_OWN = (
    "imagesTr",
    "labelsTr",
    "confidenceTr",
    "cases",
    "records",
    "dataset.json",
    "datalist.json",
    "synth.json",
)


def _settings(template: CardiacTemplate, config: CardiacSynthConfig) -> dict[str, Any]:
    """What a folder's cases depend on, as stored in ``synth.json`` (a rerun must give the same)."""
    return {
        "format": FORMAT,
        "config": config.to_dict(),
        "template": {"name": template.name, "labels": template.labels_present, "meta": template.meta},
    }


def _label_values(template: CardiacTemplate) -> dict[int, int]:
    """Consecutive file value (1..N) -> table value of the template's structures."""
    return {i: v for i, v in enumerate(template.labels_present, start=1)}


DEFAULT_DATASET_ID = 900
DEFAULT_DATASET_NAME = "CardiacSynth"


def nnunet_dataset_folder(dataset_id: int = DEFAULT_DATASET_ID, name: str = DEFAULT_DATASET_NAME) -> str:
    """``Dataset900_CardiacSynth``: the folder name nnU-Net v2 finds a dataset by (``-d 900``).

    Args:
        dataset_id: nnU-Net dataset ID, 1..999 (pick one your ``nnUNet_raw`` does not use yet).
        name: letters, digits, ``_`` and ``-``.

    Raises:
        ValueError: an ID outside 1..999 or a name with other characters.
    """
    import re

    if not (isinstance(dataset_id, int) and not isinstance(dataset_id, bool) and 1 <= dataset_id <= 999):
        raise ValueError(f"dataset_id: expected an nnU-Net dataset ID from 1 to 999, got {dataset_id!r}")
    if not (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name)):
        raise ValueError(
            f"dataset_name: expected letters, digits, '_' and '-' (e.g. CardiacSynth), got {name!r}"
        )
    return f"Dataset{dataset_id:03d}_{name}"


def nnunet_dataset_path(
    nnunet_raw: str | os.PathLike[str], dataset_id: int = DEFAULT_DATASET_ID, name: str = DEFAULT_DATASET_NAME
) -> Path:
    """``nnunet_raw/Dataset<ID>_<NAME>`` (:func:`nnunet_dataset_folder`), refusing an ID already in use there.

    nnU-Net v2 finds a dataset by its ID alone (``-d 7``) and stops when two folders of ``nnunet_raw``
    share it, so another ``Dataset<ID>_*`` folder beside the target is an error.

    Raises:
        ValueError: a bad ID or name, ``nnunet_raw`` is a file, or the ID is used by another dataset.
    """
    raw = Path(nnunet_raw)
    folder = nnunet_dataset_folder(dataset_id, name)
    if raw.exists() and not raw.is_dir():
        raise ValueError(
            f"nnunet_raw: {raw} is a file; expected the nnUNet_raw folder (it may not exist yet)"
        )
    if raw.is_dir():
        taken = sorted(p.name for p in raw.glob(f"Dataset{dataset_id:03d}_*") if p.name != folder)
        if taken:
            raise ValueError(
                f"dataset_id: {dataset_id} is already used in {raw} by {taken}; nnU-Net finds datasets by ID, "
                "so choose another ID"
            )
    return raw / folder


def dataset_label_values(root: str | os.PathLike[str]) -> dict[int, int]:
    """File value -> cardiac table value of a ``synthesize_dataset`` folder's ``labelsTr`` maps.

    Read from ``synth.json`` (``label_values``); a folder written before labels were consecutive
    (no ``label_values``) holds table values, and the identity over the table is returned.

    Raises:
        FileNotFoundError / ValueError: ``synth.json`` missing or unreadable.
    """
    import json

    from xraycardiac.cardiac.labels import LABEL_TABLE

    path = Path(root) / "synth.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: missing (not a cardiac synth dataset folder)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    values = doc.get("label_values") if isinstance(doc, dict) else None
    if values is None:
        return {e.value: e.value for e in LABEL_TABLE}
    return {int(k): int(v) for k, v in values.items()}


def _index_files(
    root: Path, template: CardiacTemplate, config: CardiacSynthConfig, verified: set[int]
) -> None:
    """dataset.json (nnU-Net), datalist.json (MONAI) and synth.json, listing the ``verified`` cases only."""
    from xraycardiac import __version__
    from xraycardiac.cardiac.labels import LABEL_TABLE, label_names

    present = template.labels_present
    names = label_names(present)
    values = _label_values(template)
    done = sorted(verified)
    write_json_atomic(
        root / "dataset.json",
        {
            "name": "xraycardiac_cardiac_synth",
            "description": "synthetic cardiac CT (research use only, not for clinical use)",
            "channel_names": {"0": "CT"},
            "labels": {"background": 0, **{names[v]: i for i, v in values.items()}},
            "label_values": {str(i): v for i, v in values.items()},  # file value -> cardiac table value
            "numTraining": len(done),
            "file_ending": ".nii.gz",
        },
    )
    write_json_atomic(
        root / "datalist.json",
        {"training": [{k: _files(i)[k] for k in ("image", "label", "confidence")} for i in done]},
    )
    write_json_atomic(
        root / "synth.json",
        {
            **_settings(template, config),
            "xraycardiac_version": __version__,
            "label_table": [asdict(lbl) for lbl in LABEL_TABLE if lbl.value in present],
            "label_values": {str(i): v for i, v in values.items()},
            "cases": [case_name(i) for i in done],
        },
    )


def _render_warp(
    template: CardiacTemplate,
    sample: Any,
    config: CardiacSynthConfig,
    progress: Callable[..., None] | None = None,
) -> tuple[Volume, np.ndarray, dict]:
    from xraycardiac.cardiac.mgm import warp_image

    image = warp_image(template.image, sample.ddf_ras_mm)
    return image, np.ones(image.array.shape, dtype=np.float32), {"renderer": "warp"}


def _tcdm_renderer(
    template: CardiacTemplate, config: CardiacSynthConfig
) -> tuple[Callable[..., Any], str | None]:
    """The ``"tcdm"`` renderer: load the model once, check the template against it.

    Returns:
        (renderer, note): the note says which template labels the model conditions on as
        background (coarse labels beyond its classes), or is None.
    """
    import torch

    from xraycardiac.cardiac.labels import label_info
    from xraycardiac.cardiac.mgm import warp_image
    from xraycardiac.cardiac.ssv import resolve_tau, skip_sampling_variance
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
    coarse = [v for v in template.labels_present if v >= cfg.n_classes]
    known = [v for v in template.labels_present if v < cfg.n_classes]
    if not known:
        raise ValueError(
            f"template: its labels {[f'{v} {label_info(v).name}' for v in coarse]} are all outside the "
            f"0..{cfg.n_classes - 1} that model {config.model!r} conditions on (the fine structures "
            f"{[f'{v} {label_info(v).name}' for v in range(1, cfg.n_classes)]}); give a template with some of "
            "them (e.g. TotalSegmentator's heartchambers_highres task: --label-mapping "
            "totalsegmentator_heartchambers), or use --renderer warp"
        )
    lut = np.arange(256, dtype=np.int64)
    lut[coarse] = 0  # conditioned as background: the image there follows the warped template
    scheduler = build_tcdm(cfg)[1]
    t_image = cfg.hu_to_unit(torch.from_numpy(np.asarray(template.image.array, np.float32)))[None, None]
    t_labels = torch.from_numpy(lut[template.labels.array])[None]
    schedules = tuple(dict.fromkeys([*config.ssv_steps, config.steps]))  # the kept image's count included

    def render(
        template: CardiacTemplate, sample: Any, config: CardiacSynthConfig,
        progress: Callable[[str, float], None] | None = None,
    ) -> tuple[Volume, np.ndarray, dict]:  # fmt: skip
        kept: dict[str, torch.Tensor] = {}
        runs = {n: k for k, n in enumerate(schedules)}

        def sample_fn(
            cond: torch.Tensor, steps: int, generator: Any, noise: torch.Tensor, on_x0: Callable[..., None]
        ) -> torch.Tensor:
            k = runs[steps]

            def on_step(i: int, n: int) -> None:  # one event per DDIM step: a long case is never silent
                if progress is not None:
                    stage = f"TCDM sampling, run {k + 1}/{len(schedules)} ({steps} DDIM steps): step {i}/{n}"
                    progress(stage, (k + i / max(n, 1)) / len(schedules))

            x0 = sample_tcdm(
                unet, scheduler, cond, steps, generator, noise, progress=on_step,
                start_strength=config.start_strength, on_x0=on_x0,
            )  # fmt: skip
            if steps == config.steps:
                kept["x0"] = x0
            return x0

        mask = torch.from_numpy(lut[sample.labels.array])[None]
        ddf = torch.from_numpy(sample.ddf_voxel())[None]
        cond = encode_condition(cfg, mask, t_image, t_labels, ddf).to(device)
        seed = int(sample.meta.get("seed", 0))
        gen = torch.Generator(device=device).manual_seed(seed)
        _, variance, confidence = skip_sampling_variance(sample_fn, cond, schedules, generator=gen)
        hu = cfg.unit_to_hu(kept["x0"])[0, 0].cpu().numpy().astype(np.float32)
        # The model works in its HU window and knows nothing beyond it: where the warped template is
        # beyond it (contrast above 1000 HU, air below -1000) its values are kept, blended in over the
        # last WINDOW_BLEND_HU inside the window, so no contrast is clipped.
        warped = warp_image(template.image, sample.ddf_ras_mm).array
        lo, hi = cfg.hu_window
        beyond = np.clip(
            np.maximum(warped - (hi - WINDOW_BLEND_HU), (lo + WINDOW_BLEND_HU) - warped), 0.0, None
        )
        w = np.minimum(beyond / WINDOW_BLEND_HU, 1.0)
        spacing = np.linalg.norm(sample.labels.ijk_to_ras[:3, :3], axis=0)
        harmonised = {"applied": config.hu_harmonise, "sigma_mm": HU_HARMONISE_SIGMA_MM}
        if config.hu_harmonise:
            hu, harmonised["structures"] = harmonise_hu(
                hu, warped, sample.labels.array, 1.0 - w, HU_HARMONISE_SIGMA_MM / spacing
            )
        texture = {"applied": config.texture_harmonise, "sigma_mm": TEXTURE_SIGMA_MM}
        if config.texture_harmonise:
            hu, texture["regions"] = harmonise_texture(
                hu, warped, sample.labels.array, template.image.array, template.labels.array, 1.0 - w,
                tuple(sigma / spacing for sigma in TEXTURE_SIGMA_MM),
            )  # fmt: skip
        hu = ((1.0 - w) * hu + w * warped).astype(np.float32)
        image = Volume(hu, sample.labels.ijk_to_ras.copy())
        info_case = {
            "renderer": "tcdm", "model": info, "steps": config.steps, "ssv_steps": list(schedules),
            "start_strength": config.start_strength,
            "variance_mean": float(variance.mean()), "confidence_tau": resolve_tau(None, max(shape)),
            "conditioned_as_background": coarse, "hu_harmonise": harmonised,
            "texture_harmonise": texture,
        }  # fmt: skip
        return image, confidence[0, 0].cpu().numpy().astype(np.float32), info_case

    note = None
    if coarse:
        note = (
            f"TCDM model {config.model!r} conditions on labels 0..{cfg.n_classes - 1}: template labels "
            f"{[f'{v} {label_info(v).name}' for v in coarse]} are given to it as background (the image "
            "there follows the warped template); the label maps keep them"
        )
    return render, note


def synthesize_dataset(
    template: CardiacTemplate,
    out_dir: str | os.PathLike[str],
    config: CardiacSynthConfig | None = None,
    shard: tuple[int, int] = (0, 1),
    progress: Callable[..., None] | None = None,
    cancelled: Callable[[], bool] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Make (or resume) cases ``shard[0]::shard[1]`` of a synthetic dataset (module docstring).

    Args:
        template: template image (HU) + label map on one grid
            (:func:`~xraycardiac.cardiac.templates.load_template`, ``template_from_phantom``, ...).
        out_dir: dataset folder (created): absent, empty, or a dataset made with the same settings.
        config: :class:`CardiacSynthConfig` (default: defaults).
        shard: (i, N): this process makes cases i, i + N, ...
        progress: ``progress(stage, fraction, **extra)`` at each stage of a case (MGM, each sampler
            step) and after it; ``fraction`` is the shard's overall fraction done.
        cancelled: polled between cases; True stops (complete cases stay, nothing partial).
        overwrite: delete this command's files in ``out_dir`` (whatever settings made them) and
            start again.

    Returns:
        ``written`` / ``skipped`` case names, ``redone`` (cases found incomplete, with the reason),
        ``mgm`` (rejections summed over the written cases), ``seconds_per_case``, ``cases`` and ``shard``.

    Raises:
        ValueError: bad shard, a folder made with other settings (naming the first that differs and
            both values), a template MGM cannot deform.
        FileExistsError: ``out_dir`` is a file, or a non-empty folder that is not such a dataset.
        PermissionError: ``out_dir`` is read-only.
        OSError: a write failed; the case being written is deleted, the index files stay true.
    """
    from xraycardiac.cardiac.mgm import generate_masks
    from xraycardiac.io import write_volume

    config = config or CardiacSynthConfig()
    ok = isinstance(shard, tuple | list) and len(shard) == 2 and all(isinstance(v, int) for v in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard: expected (i, N) with 0 <= i < N, got {shard!r}")
    root = Path(out_dir)
    check_output(
        root, overwrite=overwrite, settings_file="synth.json", settings=_settings(template, config),
        ignore=("template.meta",), what="out_dir", how="pass --overwrite (overwrite=True)",
        kind="a cardiac synth dataset",
    )  # fmt: skip
    render, note = (_render_warp, None) if config.renderer == "warp" else _tcdm_renderer(template, config)
    if note is not None and progress is not None:
        progress(note, 0.0)
    if overwrite:
        discard(None, root, _OWN, folders=True)
    root.mkdir(parents=True, exist_ok=True)
    incomplete = {i: verify_record(_record(root, i), root) for i in range(config.n)}
    verified = {i for i, why in incomplete.items() if why is None}
    _index_files(root, template, config, verified)  # first (the settings), and without cases that fail
    for sub in ("imagesTr", "labelsTr", "confidenceTr", "cases", "records"):
        (root / sub).mkdir(exist_ok=True)
    to_file = np.zeros(256, dtype=np.uint8)  # table value -> consecutive file value
    for i, v in _label_values(template).items():
        to_file[v] = i
    todo = list(range(shard[0], config.n, shard[1]))
    written, skipped, redone, times = [], [], [], []
    rejections: dict[str, int] = {}
    attempts = 0
    for done, i in enumerate(todo):
        if cancelled is not None and cancelled():
            break
        name = case_name(i)
        if i in verified:
            skipped.append(name)
            continue
        files = _files(i)
        if any((root / f).exists() for f in files.values()):
            redone.append({"case": name, "reason": incomplete[i]})
        t0 = time.perf_counter()

        def in_case(stage: str, fraction: float, done: int = done, name: str = name) -> None:
            if progress is not None:
                progress(f"case {name} ({done + 1}/{len(todo)}): {stage}", (done + 0.99 * fraction) / len(todo),
                         case=name)  # fmt: skip

        with recorded_sample(_record(root, i), root, files.values()):
            case_seed = int(np.random.SeedSequence([config.seed, i]).generate_state(1)[0])
            in_case("MGM: deforming the template's label map", 0.0)
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
            in_case(f"rendering the image ({config.renderer})", 0.05)
            image, confidence, info = render(template, sample, config,
                                             lambda stage, f: in_case(stage, 0.05 + 0.9 * f))  # fmt: skip
            write_volume(Volume(image.array.astype(np.float32), image.ijk_to_ras), root / files["image"])
            write_volume(
                Volume(to_file[sample.labels.array], sample.labels.ijk_to_ras), root / files["label"]
            )
            write_volume(Volume(confidence.astype(np.float32), image.ijk_to_ras), root / files["confidence"])
            seconds = time.perf_counter() - t0
            write_json_atomic(
                root / files["case"],
                {"name": name, "case_seed": case_seed, "mgm": sample.meta, "mgm_report": report.to_dict(),
                 **info, "seconds": seconds},
            )  # fmt: skip
        verified.add(i)
        _index_files(root, template, config, verified)
        written.append(name)
        times.append(seconds)
        if progress is not None:
            progress(f"case {name}", (done + 1) / len(todo), case=name)
    # cases other shards finished meanwhile
    verified |= {
        i for i in range(config.n) if i not in verified and verify_record(_record(root, i), root) is None
    }
    _index_files(root, template, config, verified)
    return {
        "written": written,
        "skipped": skipped,
        "redone": redone,
        "cases": config.n,
        "shard": list(shard),
        "mgm": {"attempts": attempts, "rejected": rejections},
        "seconds_per_case": float(np.mean(times)) if times else None,
        "notes": [note] if note else [],
    }
