"""Weights files of the trained models, and where a trained model is found: one implementation for all.

A weights file is one ``torch.save`` of a dict, read back with ``weights_only=True``::

    {"format": TAG, "config": {...}, <extras>, <digest key>: "<sha256 hex>", "state_dict": {name: tensor}}

``format`` names the kind of model (``"xraycardiac.x2ct_encoder"``, ...), so a file of another kind
is refused with a message saying which kind it is; ``config`` is the model's frozen-dataclass config
as a JSON-ready dict (:class:`JsonConfig`); formats with a ``digest_key`` (:class:`WeightsFormat`)
also store a sha256 over the tensors (and the config, ``digest_config``), checked on reading, so an
edited or corrupted file is refused even where no manifest records its file hash. Files are written
under a temporary name and renamed (:func:`write_weights_file`): a crash leaves no half-written file.

A trained model is located (:func:`locate_model`) from one of three things:

* a run or package folder: ``model.json`` (the manifest entry that ``xraycardiac train`` writes when
  it ends) and the file it names, whose sha256 must be the entry's;
* a weights file (its sha256 computed; the entry of a ``model.json`` beside it is kept when it
  describes this very file, same name and sha256);
* a model name of the manifest (``xraycardiac models list``), resolved and sha256-verified by
  :func:`xraycardiac.models.resolve_entry`.

Importing this module does not import torch (the functions that need it import it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from xraycardiac.models.manifest import MODEL_JSON, ModelEntry, resolve_entry, sha256_file
from xraycardiac.outputs import atomic_path

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "JsonConfig",
    "ModelSource",
    "WeightsFormat",
    "config_differences",
    "load_model_file",
    "load_state",
    "locate_model",
    "read_model_config",
    "read_weights_file",
    "read_weights_payload",
    "state_digest",
    "write_weights_file",
]

_C = TypeVar("_C", bound="JsonConfig")


# --- configs ---------------------------------------------------------------------------------------


class JsonConfig:
    """Mixin of the frozen dataclass configs stored with weights: a JSON round trip that names bad keys."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists, nested dataclass configs as dicts)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any], where: str = "model config") -> _C:
        """Inverse of :meth:`to_dict`; a non-object or unknown keys are a ValueError naming ``where``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{where}: unknown {cls.__name__} field(s) {unknown}")
        return cls(**data)


def config_differences(found: Any, expected: Any) -> dict[str, tuple[Any, Any]]:
    """{field: (found value, expected value)} of the fields where two configs of one class differ."""
    pairs = ((f.name, getattr(found, f.name), getattr(expected, f.name)) for f in dataclasses.fields(found))
    return {name: (a, b) for name, a, b in pairs if a != b}


# --- weights files ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsFormat:
    """How one kind of weights file is tagged and checked.

    Attributes:
        tag: the file's ``"format"`` value, e.g. ``"xraycardiac.x2ct_autoencoder"``.
        kind: what the file is, with its article, for messages (``"an X2CT autoencoder"``).
        digest_key: key of the stored sha256 digest of the tensors; None: no digest.
        digest_config: the digest covers the config too (an edited config is refused as well).
    """

    tag: str
    kind: str = "the expected kind of"
    digest_key: str | None = None
    digest_config: bool = False


def _spec(fmt: str | WeightsFormat) -> WeightsFormat:
    return fmt if isinstance(fmt, WeightsFormat) else WeightsFormat(fmt)


def state_digest(state: Mapping[str, torch.Tensor], config: Mapping[str, Any] | None = None) -> str:
    """sha256 (hex) over the canonical JSON of ``config`` (when given), then (name, dtype, shape, bytes)
    of every tensor in name order."""
    import torch

    h = hashlib.sha256() if config is None else hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def write_weights_file(
    path: str | os.PathLike[str],
    fmt: str | WeightsFormat,
    config: Mapping[str, Any],
    module: nn.Module,
    half: bool = False,
    extras: Mapping[str, Any] | None = None,
) -> Path:
    """Write a weights file (see the module docstring) atomically.

    Args:
        path: destination ``.pt`` file; its folder must exist.
        fmt: the format tag, or a :class:`WeightsFormat` (whose ``digest_key`` adds the digest).
        config: the model's config as a JSON-ready dict.
        module: the network whose ``state_dict`` is written (tensors copied to the CPU).
        half: store floating-point tensors as float16 (half the size; outputs change by ~1e-3).
        extras: further JSON-ready entries stored beside the config (e.g. ``latent_scale``).

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: an ``extras`` key that is one of the file's own keys.
    """
    import torch

    spec = _spec(fmt)
    clash = sorted(set(extras or {}) & {"format", "config", "state_dict", spec.digest_key})
    if clash:
        raise ValueError(f"extras: {clash} are keys of the weights file itself")
    path = Path(path)
    state = {k: (v.half() if half and v.is_floating_point() else v).detach().cpu()
             for k, v in module.state_dict().items()}  # fmt: skip
    data: dict[str, Any] = {"format": spec.tag, "config": dict(config), **(extras or {})}
    if spec.digest_key is not None:
        data[spec.digest_key] = state_digest(state, data["config"] if spec.digest_config else None)
    data["state_dict"] = state
    with atomic_path(path) as tmp:
        torch.save(data, tmp)
    return path


def read_weights_payload(path: str | os.PathLike[str], fmt: str | WeightsFormat) -> dict[str, Any]:
    """The whole dict of a :func:`write_weights_file` file (config, state_dict, extras), every check passed.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable; another format (says which one); no config or state_dict; tensors
            (or config) that fail the stored digest.
    """
    import torch

    spec = _spec(fmt)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: weights file not found")
    try:
        data = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle/zip errors of a foreign or truncated file
        raise ValueError(f"{p}: not a readable torch weights file ({exc})") from None
    found = data.get("format") if isinstance(data, dict) else None
    if found != spec.tag:
        raise ValueError(f"{p}: not {spec.kind} weights file (format {found!r}, expected {spec.tag!r})")
    config, state = data.get("config"), data.get("state_dict")
    if not (isinstance(config, dict) and isinstance(state, dict)
            and all(isinstance(v, torch.Tensor) for v in state.values())):  # fmt: skip
        raise ValueError(f"{p}: {spec.tag} file without its config or state_dict")
    if spec.digest_key is not None:
        if state_digest(state, config if spec.digest_config else None) != data.get(spec.digest_key):
            covered = "config or weights" if spec.digest_config else "weights"
            raise ValueError(
                f"{p}: the {covered} fail their sha256 digest (modified or corrupted file); refused"
            )
    return data


def read_weights_file(
    path: str | os.PathLike[str], fmt: str | WeightsFormat
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict) of a :func:`write_weights_file` file; raises as
    :func:`read_weights_payload`."""
    data = read_weights_payload(path, fmt)
    return data["config"], data["state_dict"]


def read_model_config(
    path: str | os.PathLike[str], fmt: str | WeightsFormat, config_cls: Any, expected: Any = None
) -> tuple[Any, dict[str, Any]]:
    """(config as ``config_cls``, the file's whole dict) of a :func:`write_weights_file` file.

    Args:
        path: the weights file.
        fmt: its format tag or :class:`WeightsFormat`.
        config_cls: the config class (``from_dict(data, where=...)``, e.g. a :class:`JsonConfig`).
        expected: when given, the stored config must equal it.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_weights_payload`; unknown config fields; a
            config other than ``expected`` (lists the differing fields).
    """
    data = read_weights_payload(path, fmt)
    config = config_cls.from_dict(data["config"], where=str(path))
    if expected is not None and config != expected:
        diff = "; ".join(f"{k}: {a!r} != {b!r}" for k, (a, b) in config_differences(config, expected).items())
        raise ValueError(f"{path}: {config_cls.__name__} differs from the expected one ({diff})")
    return config, data


def load_state(
    module: nn.Module, state: Mapping[str, torch.Tensor], where: str | os.PathLike[str], device: str = "cpu"
) -> nn.Module:
    """``module`` with ``state`` (floating tensors as float32), in eval mode on ``device``.

    Raises:
        ValueError: naming ``where``, when the tensors do not fit the module (its config).
    """
    try:
        module.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    except RuntimeError as exc:  # torch lists every misfit tensor, one per line after a heading
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = "; ".join(lines[1:3] or lines[:1]) + ("; ..." if len(lines) > 3 else "")
        raise ValueError(f"{where}: weights do not fit their config ({detail})") from None
    return module.to(device).eval()


def load_model_file(
    path: str | os.PathLike[str],
    fmt: str | WeightsFormat,
    config_cls: Any,
    build: Callable[[Any], nn.Module],
    expected: Any = None,
    device: str = "cpu",
) -> nn.Module:
    """``build(config)`` with the weights of a :func:`write_weights_file` file, in eval mode on ``device``.

    Args:
        path, fmt, config_cls, expected: as :func:`read_model_config`.
        build: config -> freshly initialised network.
        device: torch device of the result.

    Raises:
        FileNotFoundError / ValueError: as :func:`read_model_config`; weights that do not fit the config.
    """
    config, data = read_model_config(path, fmt, config_cls, expected)
    return load_state(build(config), data["state_dict"], path, device)


# --- where a trained model is ----------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSource:
    """A located weights file of a trained model.

    Attributes:
        file: the weights file (for a model bundle: the file its ``model.json`` names).
        sha256: its sha256 (checked against ``model.json`` / the manifest where there is one).
        entry: its manifest entry (``model.json``) as a dict, or None for a bare weights file.
    """

    file: Path
    sha256: str
    entry: dict[str, Any] | None

    @property
    def config(self) -> dict[str, Any]:
        """The entry's config (model config, training records such as ``autoencoder_sha256``), or {}."""
        return dict((self.entry or {}).get("config") or {})

    @property
    def provenance(self) -> dict[str, Any]:
        """{"model", "version", "file", "sha256"} recorded with results (bare file: its stem, no version)."""
        entry = self.entry or {}
        return {"model": entry.get("name", self.file.stem), "version": entry.get("version"),
                "file": str(self.file), "sha256": self.sha256}  # fmt: skip


def _read_model_folder(folder: Path, prefix: str) -> ModelSource:
    """The file a folder's ``model.json`` names, its sha256 checked against the entry."""
    meta = folder / MODEL_JSON
    if not meta.is_file():
        raise FileNotFoundError(
            f"{prefix}{folder} has no {MODEL_JSON}; a model folder holds {MODEL_JSON} and the file it "
            "names (a training run writes them when it ends: an unfinished run has only checkpoint.pt)"
        )
    try:
        entry = ModelEntry.from_dict(json.loads(meta.read_text(encoding="utf-8")), where=str(meta))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{prefix}{meta} is not valid JSON ({exc})") from None
    file = folder / entry.file
    if not file.is_file():
        raise FileNotFoundError(f"{prefix}{file}, named by {meta}, not found")
    sha = sha256_file(file)
    if sha != entry.sha256:
        raise ValueError(
            f"{prefix}{file}: sha256 {sha[:12]}... differs from {meta}'s {entry.sha256[:12]}...; refused"
        )
    return ModelSource(file, sha, entry.to_dict())


def _entry_beside(file: Path, sha: str) -> dict[str, Any] | None:
    """The ``model.json`` entry next to ``file`` when it describes this very file (name and sha256)."""
    meta = file.parent / MODEL_JSON
    try:
        data = json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None
    if isinstance(data, dict) and data.get("file") == file.name and data.get("sha256") == sha:
        return data
    return None


def locate_model(source: str | os.PathLike[str], what: str | None = "model") -> ModelSource:
    """A run folder (``model.json`` + weights), a weights file, or a manifest name -> its weights file.

    Args:
        source: folder, weights file or model name.
        what: the argument's name, put in front of error messages (None: nothing, for callers that
            add their own).

    Returns:
        The :class:`ModelSource`, sha256 checked against ``model.json`` or the manifest.

    Raises:
        FileNotFoundError: a missing folder, model.json, or weights file.
        ValueError: a bad model.json, a sha256 that differs from it (or from the manifest:
            :class:`~xraycardiac.models.ModelIntegrityError`), or an unknown model name.
    """
    prefix = f"{what}: " if what else ""
    p = Path(source)
    if p.is_dir():
        return _read_model_folder(p, prefix)
    if p.is_file():
        sha = sha256_file(p)
        return ModelSource(p, sha, _entry_beside(p, sha))
    if p.suffix in (".pt", ".pth") or len(p.parts) > 1:  # a path, not a name
        raise FileNotFoundError(f"{prefix}{p} does not exist")
    try:
        entry = resolve_entry(str(source))
    except ValueError as exc:
        if not prefix:
            raise
        raise type(exc)(f"{prefix}{exc}") from None  # a ModelIntegrityError stays one
    assert entry.path is not None  # listed entries have their folder
    return ModelSource(entry.path, entry.sha256, entry.to_dict())
