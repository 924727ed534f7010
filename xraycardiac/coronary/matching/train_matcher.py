"""``xraycardiac train coronary-matcher``: training the :class:`~xraycardiac.coronary.matching.matcher.CoronaryMatcher`.

What the matcher is (its two trained parts, and why the foundation model is not part of its
weights) is said once, in :mod:`xraycardiac.coronary.matching.matcher`.

Training (:func:`train_coronary_matcher`, on the shared :class:`xraycardiac.trainer.Trainer`):
each step takes whole samples of a coronary pair dataset (``xraycardiac coronary synth``), and the
loss function builds the matcher's inputs with :func:`~xraycardiac.coronary.matching.matcher_loss.matcher_inputs`
(the in-field GT keypoints jittered by ``jitter_px`` plus ``n_distractors`` random vessel pixels per
view) from the trainer's per-step generator, so a resumed run sees exactly the inputs an
uninterrupted one would have. :func:`~xraycardiac.coronary.matching.matcher_loss.matcher_training_step`
gives the loss: the matcher's deep-supervised assignment NLL (which also trains the descriptors)
plus the detector cross-entropy on the GT keypoints. Foundation features, when a spec is given,
are computed inside the loss function without gradients, every step (the images are not
augmented, but caching the maps of a large dataset would not fit in GPU memory).

Output folder ``OUT``: ``checkpoint.pt`` (resumable: rerun the same command), ``log.jsonl`` and,
at the end, the importable package ``model.pt`` (EMA weights, float32) + ``model.json`` (the
manifest entry: name, version, sha256, training data and command, config), so
``xraycardiac models import OUT`` installs it and ``matcher:OUT`` evaluates it directly.

Settings (``key=value`` on the command line, :func:`parse_matcher_overrides`): the fields of
:class:`CoronaryMatcherConfig` by name; those of its sub-configs as ``keypoint_net.<field>``,
``matcher.<field>``, ``loss.<field>``, or by the bare field name where only one config has it
(``channels=[8,8,8]``; ``descriptor_dim`` is in two and needs its prefix); those of
:class:`~xraycardiac.trainer.TrainConfig` by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from xraycardiac.coronary.matching.matcher import (
    SUBCONFIGS,
    CoronaryMatcher,
    CoronaryMatcherConfig,
)

__all__ = [
    "MatcherTrainingPairs",
    "parse_matcher_overrides",
    "train_coronary_matcher",
]


def _norm_key(key: str) -> str:
    return key.strip().lstrip("-").replace("-", "_")


def _apply(base: Any, items: list[tuple[str, str]]) -> Any:
    """``replace(base, **items)`` in one go, so that dependent fields (cell and channels) change together;
    each value read by its field's type (:func:`xraycardiac.trainer.parse_override_value`)."""
    from xraycardiac.trainer import parse_override_value

    if not items:
        return base
    values = {}
    for key, raw in items:
        try:
            values[key] = parse_override_value(base, key, raw)
        except ValueError as exc:
            raise ValueError(f"setting {key}={raw}: {exc}") from None
    try:
        return replace(base, **values)
    except TypeError as exc:  # a value of the wrong type compared in __post_init__
        shown = ", ".join(f"{k}={v}" for k, v in items)
        raise ValueError(
            f"settings {shown}: a value of the wrong type for {type(base).__name__} ({exc})"
        ) from None


def parse_matcher_overrides(
    pairs: Sequence[str],
    config: CoronaryMatcherConfig | None = None,
    train_config: Any = None,
) -> tuple[CoronaryMatcherConfig, Any]:
    """Apply ``key=value`` settings to a matcher config and a training config (unknown keys are errors).

    Keys (module docstring): a :class:`CoronaryMatcherConfig` field; ``keypoint_net.<f>``,
    ``matcher.<f>``, ``loss.<f>``; a sub-config field by its bare name when no other config has it;
    a :class:`~xraycardiac.trainer.TrainConfig` field. Values are read by the field's type, as
    :func:`xraycardiac.trainer.parse_overrides` does (``channels=8,16,32`` or ``[8,16,32]``);
    the settings of one config are applied together, so ``cell=16 channels=8,16,32`` works.

    Args:
        pairs: e.g. ``["steps=500", "channels=[8,8,8]", "matcher.descriptor_dim=32"]``.
        config: the matcher config to start from (default: defaults).
        train_config: the ``TrainConfig`` to start from (default: defaults).

    Returns:
        (matcher config, training config), checked by their ``__post_init__``.

    Raises:
        ValueError: a pair without "=", an unknown key (names the allowed keys) or an ambiguous
            bare key (names its prefixed forms), or a bad value (names the field).
    """
    from xraycardiac.trainer import TrainConfig

    config = config or CoronaryMatcherConfig()
    train_config = train_config or TrainConfig()
    top = {f.name for f in fields(CoronaryMatcherConfig)} - set(SUBCONFIGS)
    sub_fields = {k: {f.name for f in fields(c)} for k, c in SUBCONFIGS.items()}
    train_fields = {f.name for f in fields(TrainConfig)}
    owners: dict[str, list[str]] = {}
    for prefix, names in sub_fields.items():
        for n in names:
            owners.setdefault(n, []).append(prefix)
    routed: dict[str, list[tuple[str, str]]] = {"top": [], "train": [], **{k: [] for k in SUBCONFIGS}}
    for pair in pairs:
        raw_key, sep, value = pair.partition("=")
        key = _norm_key(raw_key)
        if not sep or not key:
            raise ValueError(f"setting {pair!r}: expected key=value")
        prefix, dot, leaf = key.partition(".")
        if dot and prefix in sub_fields and leaf in sub_fields[prefix]:
            routed[prefix].append((leaf, value))
        elif not dot and key in top:
            routed["top"].append((key, value))
        elif not dot and key in train_fields:
            routed["train"].append((key, value))
        elif not dot and len(owners.get(key, [])) == 1:
            routed[owners[key][0]].append((key, value))
        elif not dot and key in owners:
            forms = " or ".join(f"{p}.{key}" for p in owners[key])
            raise ValueError(f"setting {pair!r}: {key!r} is in several configs; write {forms}")
        else:
            allowed = sorted(top | train_fields) + sorted(
                f"{p}.{n}" for p, names in sub_fields.items() for n in names
            )
            raise ValueError(f"setting {pair!r}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
    subs = {key: _apply(getattr(config, key), routed[key]) for key in SUBCONFIGS}
    if not any(k == "input_dim" for k, _ in routed["matcher"]):
        subs["matcher"] = replace(subs["matcher"], input_dim=None)  # follows the (new) descriptor size
    config = _apply(replace(config, **subs), routed["top"])
    return config, _apply(train_config, routed["train"])


# --- Training --------------------------------------------------------------------------------------


class MatcherTrainingPairs(torch.utils.data.Dataset):
    """Samples of a coronary pair dataset as fixed-size tensors (the trainer's default collate stacks them).

    Each item: ``image1``, ``image2`` [1 x H x W] float32 in [0, 1]; ``mask1``, ``mask2`` [1 x H x W]
    float32; ``keypoints1`` [K x 2], ``keypoints2`` [K x 2] float32 pixel (u, v) of the in-field GT
    keypoints, zero-padded to K (the dataset's largest count) with their counts ``num_keypoints1``,
    ``num_keypoints2``; ``matches`` [Mmax x 2] int64 with ``num_matches``; ``index``.

    Args:
        root: a coronary pair dataset (``xraycardiac coronary synth``).
        split: "train", "val", "test" or "all".

    Raises:
        ValueError: no sample in the split, or images of different sizes.
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        from xraycardiac.coronary.synth import dataset as ds

        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"training data folder {self.root} not found")
        self.pairs = ds.CoronaryPairDataset(
            self.root, split=None if split == "all" else split, load_thickness=False
        )
        if len(self.pairs) == 0:
            raise ValueError(f"{self.root}: the coronary pair dataset has no sample in split {split!r}")
        shapes, k, mm = set(), 0, 0
        for sample in self.pairs.samples:
            meta = ds.read_json(sample / "sample.json", "coronary pair sample")
            counts = meta.get("counts", {})
            shapes.update(tuple(s) for s in meta.get("image_shape", []))
            k = max(k, int(counts.get("view1", 0)), int(counts.get("view2", 0)))
            mm = max(mm, int(counts.get("matches", 0)))
        if len(shapes) > 1:
            raise ValueError(
                f"{self.root}: images of several sizes {sorted(shapes)}; train on a dataset of one image size"
            )
        self.image_shape = next(iter(shapes)) if shapes else None
        self.max_keypoints, self.max_matches = k, mm

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.pairs[index]
        out = {key: item[key] for key in ("image1", "image2", "mask1", "mask2")}
        for v in (1, 2):
            kp = item[f"keypoints{v}"]
            if len(kp) > self.max_keypoints:  # internal invariant: sample.json counts the in-field keypoints
                raise AssertionError(f"{self.pairs.samples[index]}: more keypoints than sample.json counts")
            out[f"keypoints{v}"] = F.pad(kp, (0, 0, 0, self.max_keypoints - len(kp)))
            out[f"num_keypoints{v}"] = torch.tensor(len(kp), dtype=torch.int64)
        matches = item["matches"].reshape(-1, 2)
        out["matches"] = F.pad(matches, (0, 0, 0, self.max_matches - len(matches)))
        out["num_matches"] = torch.tensor(len(matches), dtype=torch.int64)
        out["index"] = torch.tensor(int(item["index"]), dtype=torch.int64)
        return out


def _matcher_batch(
    batch: dict[str, torch.Tensor], config: CoronaryMatcherConfig, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Collated matcher inputs of a trainer batch; jitter and distractors come from ``generator``."""
    from xraycardiac.coronary.matching.matcher_loss import collate_matcher_inputs, matcher_inputs

    # matcher_inputs draws on the CPU; a CPU generator seeded from the step's keeps resume exact
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    cpu_gen = torch.Generator().manual_seed(seed)
    device, c = batch["image1"].device, config
    items = []
    for b in range(batch["image1"].shape[0]):
        sample = {key: batch[key][b].cpu() for key in ("image1", "image2", "mask1", "mask2")}
        sample["keypoints1"] = batch["keypoints1"][b, : int(batch["num_keypoints1"][b])].cpu()
        sample["keypoints2"] = batch["keypoints2"][b, : int(batch["num_keypoints2"][b])].cpu()
        sample["matches"] = batch["matches"][b, : int(batch["num_matches"][b])].cpu()
        items.append(
            matcher_inputs(sample, c.n_distractors, c.jitter_px, c.min_distractor_distance_px, cpu_gen)
        )
    return {k: v.to(device) for k, v in collate_matcher_inputs(items).items()}


def _init_from(model: CoronaryMatcher, init: str | os.PathLike[str]) -> str:
    """Copy the weights of matcher ``init`` into ``model``; returns the note for ``model.json``."""
    source = CoronaryMatcher.load(init)
    mine, theirs = model.state_dict(), source.state_dict()
    wrong = sorted(k for k in mine.keys() | theirs.keys() if k not in mine or k not in theirs
                   or mine[k].shape != theirs[k].shape)  # fmt: skip
    if wrong:
        raise ValueError(
            f"init={init}: its networks differ from the configured ones in {len(wrong)} tensor(s) "
            f"(first: {wrong[0]}); give the same keypoint_net / matcher settings as it was trained with"
        )
    model.load_state_dict(theirs)
    src = source.source or {}
    return f", initialised from {src.get('model', init)} (sha256 {str(src.get('sha256', '?'))[:12]}...)"


def train_coronary_matcher(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: CoronaryMatcherConfig | None = None,
    train_config: Any = None,
    name: str = "coronary-matcher",
    version: str = "0.1.0",
    split: str = "train",
    progress: Callable[..., None] | None = None,
    command: str | None = None,
    init: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Train (or resume) a :class:`CoronaryMatcher` and write an importable model package into ``out``.

    Args:
        data: a coronary pair dataset (``xraycardiac coronary synth``); images of one size, a
            multiple of ``config.keypoint_net.cell``.
        out: run folder (``checkpoint.pt``, ``log.jsonl``, at the end ``model.pt`` + ``model.json``).
        config: :class:`CoronaryMatcherConfig` (default: defaults).
        train_config: :class:`xraycardiac.trainer.TrainConfig` (default: its defaults).
        name, version: manifest name and version of the result.
        split: which split of the dataset to train on ("train", "val", "test", "all").
        progress: ``progress(stage, fraction, **extra)``.
        command: the command line recorded in ``model.json`` (default: this process's argv).
        init: fine-tune: start from this matcher's weights (model name, run folder or ``.pt``); its
            networks must have ``config``'s shapes (``match_size_px`` and the foundation may differ).
            A resumed run continues from its checkpoint instead.

    Returns:
        The trainer summary plus ``"model"`` (path of model.pt) and ``"entry"`` (the manifest entry).

    Raises:
        FileNotFoundError: ``data`` or the foundation folder is missing.
        ValueError: an empty split, images of several sizes or not a multiple of the cell, a run
            folder holding a checkpoint of other settings, an ``init`` model of other shapes.
    """
    from xraycardiac.coronary.matching.foundation import FoundationSpec, load_foundation, sample_features
    from xraycardiac.trainer import TrainConfig, Trainer, write_model_package

    cfg = config or CoronaryMatcherConfig()
    tcfg = train_config or TrainConfig()
    if cfg.foundation is not None and not cfg.matcher.foundation_mask:
        raise ValueError(
            f"foundation {cfg.foundation!r}: matcher.foundation_mask is false, so training would not use it; "
            "leave foundation empty or set matcher.foundation_mask=true"
        )
    spec = FoundationSpec.parse(cfg.foundation) if cfg.foundation is not None else None
    dataset = MatcherTrainingPairs(data, split)
    cell = cfg.keypoint_net.cell
    if dataset.image_shape is not None and any(s % cell for s in dataset.image_shape):
        raise ValueError(
            f"{data}: images of {dataset.image_shape[0]} x {dataset.image_shape[1]} pixels are not a multiple "
            f"of keypoint_net.cell={cell}; synthesize with another --size or set keypoint_net.cell"
        )
    if cfg.match_size_px is None and dataset.image_shape is not None:
        cfg = replace(cfg, match_size_px=int(max(dataset.image_shape)))
    torch.manual_seed(tcfg.seed)
    model = CoronaryMatcher(cfg)
    init_text = ""
    if init is not None:
        init_text = _init_from(model, init)
    out = Path(out)
    fm_holder: dict[str, Any] = {}

    def foundation_fn(image: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        feats = fm_holder["model"].patch_features(image)
        return sample_features(feats, keypoints, tuple(image.shape[-2:])).to(keypoints.device)

    use_fm = spec is not None and cfg.matcher.foundation_mask

    def loss_fn(net: nn.Module, batch: dict[str, torch.Tensor], gen: torch.Generator):
        inputs = _matcher_batch(batch, cfg, gen)
        res = net(inputs, foundation=foundation_fn if use_fm else None)
        metrics = {key: res[key] for key in ("precision", "recall", "accuracy")}
        metrics["matcher"] = float(res["matcher"].detach())
        if res["detector"] is not None:
            metrics["detector"] = float(res["detector"].detach())
        return res["total"], metrics

    trainer = Trainer(model, loss_fn, dataset, tcfg, out, cfg.to_dict())
    if use_fm:
        fm_holder["model"] = load_foundation(spec, trainer.device, input_size=cfg.foundation_input_size)
    summary = trainer.fit(progress=progress)
    if not trainer.is_main:
        return summary
    averaged = trainer.averaged_model()
    weights = averaged.save(out / "model.pt")
    fm_text = "none"
    if use_fm:
        info = fm_holder["model"].info
        shas = ", ".join(f"{k} {v[:12]}..." for k, v in sorted(info["weights_sha256"].items()))
        fm_text = f"{info['family']} {info['model_class']} ({shas}; not included)"
    shape = dataset.image_shape
    entry = write_model_package(
        out, weights, name=name, version=version, command=command, config=cfg.to_dict(),
        training_data=(
            f"{len(dataset)} coronary view pairs"
            + (f" of {shape[0]} x {shape[1]} px" if shape else "")
            + f" from {Path(data).name} (split {split})"
        ),
        description=(
            f"coronary keypoint matcher (KeypointNet {list(cfg.keypoint_net.channels)} D={cfg.keypoint_net.descriptor_dim}"
            f" + attention matcher {cfg.matcher.n_layers} layers D={cfg.matcher.descriptor_dim}, foundation mask "
            f"{cfg.matcher.foundation_mask}); foundation model: {fm_text}; {summary['step']} steps x batch "
            f"{tcfg.batch_size}, EMA {tcfg.ema_decay}{init_text}; train config "
            + json.dumps(asdict(tcfg), sort_keys=True)
        ),
    )  # fmt: skip
    return {**summary, "model": str(weights), "entry": entry}
