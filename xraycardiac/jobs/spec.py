"""``JobSpec``: the one description of a job that the GUI, the CLI and the tests hand to a pipeline.

A job is "files in -> files out": named input files, JSON parameters and one output folder. On disk
it is a ``job.json``::

    {
      "pipeline": "selftest",
      "inputs": {"ct": "ct.nrrd"},
      "params": {"n_files": 5},
      "output_dir": "out"
    }

Relative paths in a ``job.json`` (inputs and ``output_dir``) resolve against the folder that holds
the ``job.json``, so a job folder can be moved as a whole. One parameter is reserved for every
pipeline: ``params["overwrite"]`` (bool, default false) lets a job replace a non-empty
``output_dir``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xraycardiac.outputs import write_json_atomic

_FIELDS = ("pipeline", "inputs", "params", "output_dir")
_PIPELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RESERVED_PARAMS = frozenset({"overwrite"})
_MISSING = object()


def _as_path_str(value: Any, what: str) -> str:
    """Return ``value`` as a non-empty path string, or raise ValueError naming ``what``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty path string, got {value!r}")
    return value


@dataclass(frozen=True)
class JobSpec:
    """What to run, on which files, with which parameters, and where to put the result.

    The dataclass is frozen and its dicts are private copies, so a spec handed to a pipeline cannot
    be changed behind the caller's back by reassignment (the dicts themselves are still plain dicts;
    pipelines must treat them as read-only).

    Attributes:
        pipeline: registered pipeline name, e.g. ``"selftest"`` or ``"drr"``.
        inputs: input name -> file or folder path (absolute, or relative to the current directory;
            ``from_json`` makes them relative to the job.json folder).
        params: JSON-serialisable pipeline parameters; ``overwrite`` (bool) is reserved.
        output_dir: folder that receives the outputs; it appears only when the job succeeds.
    """

    pipeline: str
    inputs: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    output_dir: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.pipeline, str) or not _PIPELINE_NAME.match(self.pipeline):
            raise ValueError(
                f"pipeline must be a name of letters, digits, '_', '.', '-' (e.g. 'selftest'), "
                f"got {self.pipeline!r}"
            )
        if not isinstance(self.inputs, Mapping):
            raise ValueError(
                f"inputs must be an object mapping names to paths, got {type(self.inputs).__name__}"
            )
        inputs: dict[str, str] = {}
        for key, value in self.inputs.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"inputs: names must be non-empty strings, got {key!r}")
            inputs[key] = _as_path_str(value, f"inputs.{key}")
        if not isinstance(self.params, Mapping):
            raise ValueError(f"params must be an object, got {type(self.params).__name__}")
        for key in self.params:
            if not isinstance(key, str) or not key:
                raise ValueError(f"params: names must be non-empty strings, got {key!r}")
        try:
            # A deep copy through JSON: the spec owns its parameters and they survive job.json.
            params = json.loads(json.dumps(dict(self.params), allow_nan=False))
        except (TypeError, ValueError) as exc:
            where = _unserialisable(dict(self.params), "params")
            raise ValueError(
                f"{where or 'params'} must be JSON-serialisable (finite numbers, no objects): {exc}"
            ) from exc
        if "overwrite" in params and not isinstance(params["overwrite"], bool):
            raise ValueError(f"params.overwrite must be true or false, got {params['overwrite']!r}")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "output_dir", _as_path_str(self.output_dir, "output_dir"))

    # ----------------------------------------------------------------------------------- I/O

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], base_dir: str | os.PathLike[str] | None = None) -> JobSpec:
        """Build a spec from a parsed job.json object.

        Args:
            data: mapping with ``pipeline`` and ``output_dir`` (required), ``inputs`` and ``params``
                (optional); any other key is an error.
            base_dir: folder that relative input paths and ``output_dir`` are relative to;
                None keeps them as given.

        Raises:
            ValueError: naming the offending field for unknown keys, missing keys or wrong types.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"a job spec must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise ValueError(f"unknown job spec field(s) {unknown}; allowed: {list(_FIELDS)}")
        for required in ("pipeline", "output_dir"):
            if required not in data:
                raise ValueError(f"job spec field {required!r} is missing")
        spec = cls(
            pipeline=data["pipeline"],
            inputs=data.get("inputs", {}),
            params=data.get("params", {}),
            output_dir=data["output_dir"],
        )
        return spec if base_dir is None else spec.resolved(base_dir)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> JobSpec:
        """Read a job.json; relative paths in it resolve against its folder.

        Raises:
            FileNotFoundError: the job.json does not exist.
            ValueError: it is not valid JSON or not a valid spec (the message names the file).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise FileNotFoundError(f"job spec file not found: {path}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"job spec {path} is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(data, base_dir=path.resolve().parent)
        except ValueError as exc:
            raise ValueError(f"job spec {path}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The job.json object (paths as stored in the spec)."""
        return {
            "pipeline": self.pipeline,
            "inputs": dict(self.inputs),
            "params": json.loads(json.dumps(self.params)),
            "output_dir": self.output_dir,
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the spec as job.json (temp file + rename, so a reader never sees half a file).

        Paths are written as stored; call ``resolved()`` first when the file will be read from
        another folder.
        """
        return write_json_atomic(path, self.to_dict(), indent=2, default=None)

    def resolved(self, base_dir: str | os.PathLike[str] | None = None) -> JobSpec:
        """A copy with absolute input paths and output_dir (relative ones joined to ``base_dir``).

        Args:
            base_dir: folder for relative paths; None means the current directory.
        """
        base = Path(base_dir) if base_dir is not None else Path.cwd()

        def absolute(p: str) -> str:
            return os.path.abspath(os.path.join(base, os.path.expanduser(p)))

        return JobSpec(
            pipeline=self.pipeline,
            inputs={k: absolute(v) for k, v in self.inputs.items()},
            params=self.params,
            output_dir=absolute(self.output_dir),
        )

    # ------------------------------------------------------------------------- pipeline helpers

    def check_inputs(self) -> None:
        """Check that every input path exists (file or folder).

        Raises:
            FileNotFoundError: naming the first missing input's key and path.
        """
        for key, value in self.inputs.items():
            if not os.path.exists(value):
                raise FileNotFoundError(
                    f"input {key!r} of pipeline {self.pipeline!r} not found: {os.path.abspath(value)}"
                )

    def input_path(self, key: str) -> Path:
        """The path of input ``key``.

        Raises:
            ValueError: the spec has no such input (the message lists the inputs it has).
        """
        if key not in self.inputs:
            raise ValueError(
                f"pipeline {self.pipeline!r} needs input {key!r}; the job has {sorted(self.inputs)}"
            )
        return Path(self.inputs[key])

    def param(self, name: str, default: Any = _MISSING, kind: type | tuple[type, ...] | None = None) -> Any:
        """Read parameter ``name`` with an optional default and type check.

        Args:
            name: parameter name.
            default: value when the parameter is absent; without it the parameter is required.
            kind: accepted type(s); ``int`` accepts no bool, ``float`` also accepts int (returned as
                float). None skips the check.

        Raises:
            ValueError: the parameter is required and missing, or has the wrong type.
        """
        if name not in self.params:
            if default is _MISSING:
                raise ValueError(f"pipeline {self.pipeline!r} needs parameter params.{name}")
            return default
        value = self.params[name]
        if kind is None:
            return value
        kinds = kind if isinstance(kind, tuple) else (kind,)
        for k in kinds:
            if k is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if k is int and isinstance(value, bool):
                continue
            if isinstance(value, k):
                return value
        names = " or ".join(k.__name__ for k in kinds)
        raise ValueError(f"params.{name} must be {names}, got {value!r}")

    def check_param_names(self, allowed: Iterable[str]) -> None:
        """Reject parameters the pipeline does not know (``overwrite`` is always allowed).

        Raises:
            ValueError: listing the unknown names and the allowed ones.
        """
        allowed_set = set(allowed) | RESERVED_PARAMS
        unknown = sorted(set(self.params) - allowed_set)
        if unknown:
            raise ValueError(
                f"unknown parameter(s) {unknown} for pipeline {self.pipeline!r}; allowed: {sorted(allowed_set)}"
            )


def _unserialisable(value: Any, where: str) -> str:
    """The dotted name of the first value in ``value`` that strict JSON cannot hold ('' if none)."""
    if isinstance(value, Mapping):
        items = ((f"{where}.{k}", v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            return f"{where} ({value!r})"
        return ""
    for name, v in items:
        if found := _unserialisable(v, name):
            return found
    return ""
