"""The one trainer every ``xraycardiac train ...`` command uses: config, EMA, checkpoints, exact resume, DDP.

A training run is a model (``torch.nn.Module``), a loss function ``loss_fn(model, batch, generator)
-> (loss, {name: float})``, a map-style dataset and a :class:`TrainConfig`. :class:`Trainer` owns
the rest, the same way on a 2-core CPU and under ``torchrun`` on N GPUs:

* **Batches are a pure function of (seed, step)**: step s takes the global batch
  ``permutation(seed, epoch)[offset : offset + batch_size]`` of the dataset (``epoch, offset`` from
  ``s * batch_size``; the last partial batch of an epoch wraps into the next permutation), and the
  loss function gets a ``torch.Generator`` seeded with ``(seed, step, rank)`` for its noise. So a
  resumed run replays exactly the batches and noise an uninterrupted one would have seen.
* **Checkpoints** (``out/checkpoint.pt``, written atomically every ``checkpoint_every`` steps and at
  the end) hold the model, its EMA, the optimizer, the step and both configs (nanoGPT-style);
  ``fit()`` continues from one when it exists and the configs agree (``steps`` may grow).
* **EMA** of the weights via ``torch.optim.swa_utils.AveragedModel`` (``ema_decay``; 0 disables);
  the EMA weights are what :meth:`Trainer.export` writes.
* **AMP** (bfloat16 autocast) on CUDA when ``amp`` is True; CPU runs in float32.
* **DDP** when started by ``torchrun`` (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on CPU; each rank
  takes its slice of the global batch; rank 0 alone writes files and reports progress.
* ``out/log.jsonl``: one JSON line per ``log_every`` steps (step, loss, lr, seconds, metrics).

Learning rate: linear warm-up over ``warmup_steps``, then constant (diffusion practice: DDPM,
IDDPM and MONAI's generative tutorials train at a constant rate).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch

from xraycardiac.outputs import atomic_path, write_json_atomic

__all__ = [
    "TrainConfig", "Trainer", "batch_indices", "crop_batch", "parse_override_value", "parse_overrides",
    "write_model_package",
]  # fmt: skip

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"
LossFn = Callable[[torch.nn.Module, dict[str, torch.Tensor], torch.Generator], tuple[torch.Tensor, dict]]


@dataclass(frozen=True)
class TrainConfig:
    """How a model is optimised (what it is lives in the model's own config).

    Attributes:
        steps: optimisation steps in total (a resumed run continues up to this).
        batch_size: global batch (split over DDP ranks; must divide by the world size).
        lr: AdamW learning rate after warm-up.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        grad_clip: max gradient norm; 0 = no clipping.
        ema_decay: EMA decay per step in [0, 1); 0 = no EMA (export the raw weights).
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        seed: seeds the batch order, the model's noise and the initial weights.
        device: "auto", "cpu", "cuda[:N]" or "mps" (under torchrun each rank takes cuda:LOCAL_RANK).
        num_workers: DataLoader worker processes.
        log_every: steps between lines of ``log.jsonl``.
        checkpoint_every: steps between checkpoints (one is always written at the end).
    """

    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    amp: bool = True
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    log_every: int = 25
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every", "checkpoint_every"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                raise ValueError(f"TrainConfig.{name}: expected an integer >= 1, got {v!r}")
        for name in ("warmup_steps", "num_workers", "seed"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"TrainConfig.{name}: expected an integer >= 0, got {v!r}")
        for name, lo, hi in (("lr", 0.0, 1.0), ("weight_decay", 0.0, 1.0), ("grad_clip", 0.0, math.inf)):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and not isinstance(v, bool) and lo <= v <= hi):
                raise ValueError(f"TrainConfig.{name}: expected a number in [{lo}, {hi}], got {v!r}")
        if not (isinstance(self.ema_decay, int | float) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"TrainConfig.ema_decay: expected a number in [0, 1), got {self.ema_decay!r}")


def parse_overrides(pairs: list[str], *configs: Any) -> list[Any]:
    """Apply ``key=value`` overrides to frozen dataclass configs (nanoGPT style); unknown keys are errors.

    Each key must name a field of exactly one of ``configs``; the value is read according to the
    field's type (:func:`parse_override_value`: ``channels=8,16`` or ``channels=[8,16]`` for a
    tuple of ints). Each config is rebuilt once with all its changes, so fields checked together
    (``channels`` and ``attention_levels``) can change together.

    Args:
        pairs: e.g. ``["steps=500", "lr=1e-4", "channels=16,32,64,64"]``.
        configs: the dataclass instances to update.

    Returns:
        The updated configs, in the order given (their ``__post_init__`` checks the values).

    Raises:
        ValueError: a pair without "=", a key no config has (names the allowed keys), or a value
            that is not of the field's type (names the key and the type).
    """
    names = [{f.name for f in fields(c)} for c in configs]
    changes: list[dict[str, Any]] = [{} for _ in configs]
    for pair in pairs:
        key, sep, raw = str(pair).partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not sep or not key:
            raise ValueError(f"override {pair!r}: expected key=value")
        owners = [i for i, n in enumerate(names) if key in n]
        if not owners:
            allowed = sorted(set().union(*names))
            raise ValueError(f"override {pair!r}: unknown key {key!r}; allowed keys: {', '.join(allowed)}")
        try:
            changes[owners[0]][key] = parse_override_value(configs[owners[0]], key, raw)
        except ValueError as exc:
            raise ValueError(f"override {pair!r}: {exc}") from None
    return [replace(c, **ch) if ch else c for c, ch in zip(configs, changes, strict=True)]


def parse_override_value(config: Any, key: str, raw: str) -> Any:
    """The value of a ``key=raw`` setting for field ``key`` of dataclass ``config``, read by the field's type.

    ``int``, ``float``, ``bool`` (true/false/1/0/yes/no/on/off), ``str``; ``X | None`` (none/null
    give None); tuples and lists as comma-separated values (``8,16``) or a JSON list (``[8, 16]``),
    their items read by the item type (``tuple[tuple[int, ...], ...]``: ``[[1, 5], [2]]``); a
    ``Literal`` of strings. Fields of any other type take JSON when it parses, else the string.

    Raises:
        ValueError: the value does not read as the field's type (names the key, the type and the value).
    """
    hint = _field_types(type(config)).get(key, Any)
    try:
        return _read_as(raw.strip(), hint)
    except ValueError:
        raise ValueError(f"{key} expects {_describe(hint)}, got {raw!r}") from None


@functools.cache
def _field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation of a dataclass (empty where annotations do not resolve)."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        return {}


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def _read_as(raw: str, hint: Any) -> Any:
    """``raw`` read as type ``hint``; ValueError when it does not fit."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if type(None) in args and raw.lower() in ("none", "null"):
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _read_as(raw, option)
            except ValueError:
                continue
        raise ValueError(raw)
    if hint is bool:
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise ValueError(raw)
    if hint is int:
        return int(raw)
    if hint is float:
        return float(raw)
    if hint is str:
        return json.loads(raw) if raw.startswith('"') and raw.endswith('"') and len(raw) > 1 else raw
    if origin is Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ValueError(raw)
    if origin in (tuple, list, Sequence):
        if raw.startswith("["):
            try:
                items = [i if isinstance(i, str) else json.dumps(i) for i in json.loads(raw)]
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(raw) from exc
        else:
            items = [i.strip() for i in raw.split(",")] if raw else []
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(raw)
            return tuple(_read_as(i, a) for i, a in zip(items, args, strict=True))
        item_type = args[0] if args else Any
        return tuple(_read_as(i, item_type) for i in items)
    try:  # Any, dicts, nested configs: JSON when it parses, else the string (lists become tuples)
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return tuple(value) if isinstance(value, list) else value


def _describe(hint: Any) -> str:
    """A type in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        words = [_describe(a) for a in args if a is not type(None)]
        return " or ".join(words + (["none"] if type(None) in args else []))
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (tuple, list, Sequence):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"{len(args)} values separated by commas ({', '.join(_describe(a) for a in args)})"
        item = args[0] if args else Any
        if typing.get_origin(item) in (tuple, list, Sequence):
            return "a JSON list of lists, e.g. [[1, 5], [2]]"
        words, example = {int: ("integers", "8,16"), float: ("numbers", "0.5,1.5"),
                          bool: ("true/false values", "true,false"), str: ("strings", "a,b")}.get(item, ("values", "a,b"))  # fmt: skip
        return f"{words} separated by commas, e.g. {example} (or a JSON list)"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def batch_indices(step: int, batch_size: int, n: int, seed: int) -> np.ndarray:
    """Dataset indices of global batch ``step``: a pure function of (step, batch_size, n, seed).

    Epoch e is ``permutation(n)`` drawn from ``SeedSequence([seed, e])``; batches run through the
    concatenation of epochs 0, 1, 2 ... so every sample is seen once per epoch.
    """
    if n < 1:
        raise ValueError("the training dataset is empty")
    start = step * batch_size
    out = []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def crop_batch(
    batch: Mapping[str, Any], size_vox: int, generator: torch.Generator, grid: int
) -> dict[str, Any]:
    """The same random ``size_vox``³ block of every volume in a batch (patch training, as MAISI's).

    A tensor is a volume when its last three dimensions are ``grid``³ (``batch`` values shaped
    (B, [C,] G, G, G)); other entries pass unchanged. One corner per batch, drawn from ``generator``
    (so a resumed run replays it). A fully convolutional network trained on blocks runs on the whole
    cube at inference.

    Raises:
        ValueError: ``size_vox`` outside 1 .. ``grid``.
    """
    if not 1 <= size_vox <= grid:
        raise ValueError(f"train_crop_vox: expected 1 .. {grid} (the cube side), got {size_vox}")
    if size_vox == grid:
        return dict(batch)
    lo = torch.randint(0, grid - size_vox + 1, (3,), generator=generator, device=generator.device).tolist()
    block = tuple(slice(a, a + size_vox) for a in lo)
    return {
        k: v[(..., *block)]
        if torch.is_tensor(v) and v.ndim >= 3 and tuple(v.shape[-3:]) == (grid,) * 3
        else v
        for k, v in batch.items()
    }


class _StepSampler(torch.utils.data.Sampler):
    """Yields this rank's share of the global batches of steps ``first .. last - 1``."""

    def __init__(self, first: int, last: int, config: TrainConfig, n: int, rank: int, world: int) -> None:
        self.first, self.last, self.config, self.n, self.rank, self.world = (
            first,
            last,
            config,
            n,
            rank,
            world,
        )

    def __len__(self) -> int:
        return self.last - self.first

    def __iter__(self):
        local = self.config.batch_size // self.world
        for step in range(self.first, self.last):
            idx = batch_indices(step, self.config.batch_size, self.n, self.config.seed)
            yield idx[self.rank * local : (self.rank + 1) * local].tolist()


def write_model_package(
    out: str | os.PathLike[str],
    weights: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    training_data: str,
    config: Mapping[str, Any],
    description: str,
    command: str | None = None,
) -> dict[str, Any]:
    """Write ``out/model.json``: the manifest entry of a finished run's weights (an importable package).

    Args:
        out: the run folder (holding ``weights``).
        weights: the exported weights file (its sha256 goes into the entry).
        name, version: manifest name and version.
        training_data: what the weights were trained on.
        config: the model's config (JSON-ready).
        description: one line for listings.
        command: the command line that made them (``xraycardiac train`` passes the one it was given);
            default: this process's own argv (e.g. ``pytest ...`` when a test calls the library).

    Returns:
        The entry written (``xraycardiac models import OUT`` installs it).
    """
    import shlex
    import sys

    from xraycardiac.models import sha256_file

    weights = Path(weights)
    entry = {
        "name": name,
        "version": version,
        "file": weights.name,
        "sha256": sha256_file(weights),
        "licence": "Apache-2.0",
        "training_data": training_data,
        "training_command": command or shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "config": dict(config),
        "description": description,
    }
    path = Path(out) / "model.json"
    write_json_atomic(path, entry, indent=2, default=None)
    return entry


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def is_main_process() -> bool:
    """False on a DDP rank other than 0: torch.distributed's rank once a group is up, else ``RANK``
    (set by torchrun for every process before it starts)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


class Trainer:
    """Trains ``model`` on ``dataset`` with ``loss_fn`` (see the module docstring).

    Args:
        model: the network (weights initialised by the caller, seeded by ``config.seed``).
        loss_fn: ``loss_fn(model, batch, generator) -> (scalar loss, {metric: float})``; ``batch``
            is the default-collated dict of tensors moved to the device.
        dataset: map-style dataset of dicts of tensors.
        config: the :class:`TrainConfig`.
        out_dir: folder for ``checkpoint.pt`` and ``log.jsonl``.
        model_config: JSON-ready model config, stored in checkpoints and compared on resume.
        resume_free: ``model_config`` keys that may differ on resume (settings chosen after training,
            which do not change the optimisation, e.g. a mask threshold).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        dataset: torch.utils.data.Dataset,
        config: TrainConfig,
        out_dir: str | os.PathLike[str],
        model_config: Mapping[str, Any],
        resume_free: tuple[str, ...] = (),
    ) -> None:
        from xraycardiac.runtime import select_device

        self.config = config
        self.model_config = json.loads(json.dumps(dict(model_config)))
        self.resume_free = frozenset(resume_free)
        self.out_dir = Path(out_dir)
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if config.batch_size % self.world:
            raise ValueError(
                f"TrainConfig.batch_size: {config.batch_size} does not divide by the {self.world} DDP ranks"
            )
        if self.world > 1:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            cuda = torch.cuda.is_available() and config.device != "cpu"
            self.device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
            if not torch.distributed.is_initialized():
                torch.distributed.init_process_group("nccl" if cuda else "gloo")
        else:
            self.device = select_device(config.device)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.dataset = dataset
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.ema = None
        if config.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay))
        self.step = 0
        self._ddp = None
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self._ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and reports progress (rank 0)."""
        return self.rank == 0

    # ------------------------------------------------------------------------------ checkpoints

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "train_config": asdict(self.config),
            "model_config": self.model_config,
        }

    def save_checkpoint(self) -> Path:
        """Write ``checkpoint.pt`` atomically (rank 0 only) and return its path."""
        path = self.out_dir / CHECKPOINT
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _atomic_save(self._state(), path)
        return path

    def load_checkpoint(self, path: str | os.PathLike[str]) -> int:
        """Restore model, EMA, optimizer and step from ``path``; returns the step.

        Raises:
            ValueError: the checkpoint was made with another model config (other than the
                ``resume_free`` keys) or another training
                config (other than ``steps``, ``device``, ``num_workers``, ``log_every``,
                ``checkpoint_every``); names the first differing key.
        """
        state = torch.load(path, map_location=self.device, weights_only=False)
        stored = {k: v for k, v in state.get("model_config", {}).items() if k not in self.resume_free}
        current = {k: v for k, v in self.model_config.items() if k not in self.resume_free}
        if stored != current:
            keys = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
            raise ValueError(
                f"{path}: checkpoint of another model config (differs in {keys}); use a new --out folder"
            )
        free = {"steps", "device", "num_workers", "log_every", "checkpoint_every"}
        old = {k: v for k, v in state.get("train_config", {}).items() if k not in free}
        new = {k: v for k, v in asdict(self.config).items() if k not in free}
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(
                f"{path}: checkpoint made with another training config (differs in {diff}); "
                "resume with the same settings or use a new --out folder"
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        return self.step

    def averaged_model(self) -> torch.nn.Module:
        """The EMA model (or the raw model when EMA is off), for evaluation and export."""
        return self.ema.module if self.ema is not None else self.model

    # ------------------------------------------------------------------------------ training

    def _lr(self, step: int) -> float:
        w = self.config.warmup_steps
        return self.config.lr * min(1.0, (step + 1) / w) if w > 0 else self.config.lr

    def fit(self, progress: Callable[..., None] | None = None, resume: bool = True) -> dict[str, Any]:
        """Train up to ``config.steps``, continuing from ``out/checkpoint.pt`` when ``resume``.

        Args:
            progress: ``progress(stage, fraction, **extra)`` callback (e.g. a job's progress).
            resume: continue from an existing checkpoint; False with one present is an error.

        Returns:
            Summary: steps run now, final step, last logged loss, seconds, seconds per step.

        Raises:
            FileExistsError: a checkpoint exists and ``resume`` is False.
        """
        cfg = self.config
        ckpt = self.out_dir / CHECKPOINT
        resumed_from = None
        if ckpt.exists():
            if not resume:
                raise FileExistsError(f"{ckpt} exists: resume it or choose another --out folder")
            resumed_from = self.load_checkpoint(ckpt)
        first = self.step
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_sampler=_StepSampler(first, cfg.steps, cfg, len(self.dataset), self.rank, self.world),
            num_workers=cfg.num_workers,
        )
        net = self._ddp if self._ddp is not None else self.model
        net.train()
        amp = cfg.amp and self.device.type == "cuda"
        t0 = time.monotonic()
        last: dict[str, Any] = {}
        running, count = 0.0, 0
        for batch in loader:
            step = self.step
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(step)
            batch = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            gen = torch.Generator(device=self.device)
            gen.manual_seed(int(np.random.SeedSequence([cfg.seed, step, self.rank]).generate_state(1)[0]))
            with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=amp):
                loss, metrics = self.loss_fn(net, batch, gen)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"training loss is {loss.item()} at step {step}; lower lr")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            self.step += 1
            running += float(loss.detach())
            count += 1
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                elapsed = time.monotonic() - t0
                last = {
                    "step": self.step,
                    "loss": running / count,
                    "lr": self._lr(step),
                    "seconds": round(elapsed, 2),
                    **{k: float(v) for k, v in metrics.items()},
                }
                running, count = 0.0, 0
                if self.is_main:
                    self.out_dir.mkdir(parents=True, exist_ok=True)
                    with open(self.out_dir / LOG, "a", encoding="utf-8") as f:
                        f.write(json.dumps(last) + "\n")
                if progress is not None and self.is_main:  # one progress stream under torchrun
                    done = (self.step - first) / max(cfg.steps - first, 1)
                    eta = elapsed / max(self.step - first, 1) * (cfg.steps - self.step)
                    progress(f"step {self.step}/{cfg.steps} loss {last['loss']:.4f}", done, eta_s=round(eta))
            if self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
        self.save_checkpoint()
        seconds = time.monotonic() - t0
        ran = self.step - first
        return {
            "steps_run": ran,
            "step": self.step,
            "resumed_from": resumed_from,
            "last_log": last,
            "seconds": round(seconds, 2),
            "seconds_per_step": round(seconds / ran, 4) if ran else None,
            "device": str(self.device),
            "world_size": self.world,
        }
