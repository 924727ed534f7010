"""Pipeline registry and the ``Progress`` reporter handed to every pipeline.

A pipeline is a function ``fn(spec, work_dir, progress) -> dict`` registered under a name::

    @register("selftest")
    def selftest(spec: JobSpec, work_dir: Path, progress: Progress) -> dict:
        ...
        progress("writing files", 0.5)
        return {"outputs": {"report": "report.json"}}

It writes its files into ``work_dir`` (a private, empty folder that becomes ``spec.output_dir`` only
when the job succeeds) and returns a JSON-serialisable summary, typically with ``"outputs"`` mapping
output names to file names relative to the output folder.

Pipelines live in the modules listed in ``PIPELINE_MODULES``. They are imported lazily, on the
first lookup of a name that is not registered yet, so ``import xraycardiac.jobs`` never pulls in
torch; a module that fails to import is remembered and reported when a name is not found.
"""

from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from xraycardiac.jobs.spec import JobSpec

# Modules that register pipelines, imported in this order until a looked-up name is found.
PIPELINE_MODULES: tuple[str, ...] = (
    "xraycardiac.jobs.selftest",
    "xraycardiac.jobs.drr",
    "xraycardiac.jobs.coronary_synth",
    "xraycardiac.jobs.coronary_reconstruct",
    "xraycardiac.jobs.x2ct_generate",
    "xraycardiac.jobs.cardiac_synth",
)

EventSink = Callable[[dict[str, Any]], None]
_RESERVED_EVENT_KEYS = frozenset({"event", "stage", "progress", "eta_s", "elapsed_s"})


class Progress:
    """Progress reporter: ``progress(stage, fraction, **extra)`` sends a progress event to a sink.

    The event is ``{"event": "progress", "stage": str, "progress": float in [0, 1],
    "eta_s": float | None, "elapsed_s": float, **extra}``. ``fraction`` is the job's *overall*
    fraction done; the remaining time is extrapolated linearly from the time elapsed since this
    reporter was created (None until some progress is made). Reported fractions never go backwards:
    a smaller value than the last one is raised to it, so a progress bar does not jump back.

    Args:
        sink: called with each event dict; None drops events.
        clock: monotonic clock in seconds (injectable for tests).
    """

    def __init__(self, sink: EventSink | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._sink = sink
        self._clock = clock
        self._start = clock()
        self._last = 0.0

    @property
    def fraction(self) -> float:
        """The last overall fraction reported, in [0, 1]."""
        return self._last

    def __call__(self, stage: str, fraction: float, **extra: Any) -> None:
        """Report that the job is ``fraction`` done and now in ``stage``.

        Args:
            stage: short human-readable stage, e.g. ``"rendering DRR"``.
            fraction: overall fraction done, 0..1 (values outside are clipped).
            **extra: JSON-serialisable details added to the event (e.g. ``file="a.nrrd"``).

        Raises:
            ValueError: ``fraction`` is not a finite number, or ``extra`` uses a reserved key.
        """
        fraction = float(fraction)
        if not math.isfinite(fraction):
            raise ValueError(f"progress fraction must be a finite number in [0, 1], got {fraction!r}")
        clash = _RESERVED_EVENT_KEYS.intersection(extra)
        if clash:
            raise ValueError(f"progress extra keys {sorted(clash)} are reserved")
        self._last = max(self._last, min(1.0, max(0.0, fraction)))
        elapsed = self._clock() - self._start
        eta = elapsed * (1.0 - self._last) / self._last if self._last > 0 else None
        event: dict[str, Any] = {
            "event": "progress",
            "stage": str(stage),
            "progress": round(self._last, 6),
            "eta_s": None if eta is None else round(eta, 2),
            "elapsed_s": round(elapsed, 3),
        }
        event.update(extra)
        self.emit(event)

    def log(self, message: str, level: str = "info") -> None:
        """Send a ``{"event": "log", "level": level, "message": message}`` event."""
        self.emit({"event": "log", "level": level, "message": str(message)})

    def emit(self, event: dict[str, Any]) -> None:
        """Send a raw event dict to the sink."""
        if self._sink is not None:
            self._sink(event)


class Pipeline(Protocol):
    """The signature every registered pipeline has."""

    def __call__(self, spec: JobSpec, work_dir: Path, progress: Progress) -> dict[str, Any]: ...


_PIPELINES: dict[str, Pipeline] = {}
_IMPORTED: set[str] = set()
_IMPORT_ERRORS: dict[str, str] = {}


def register(name: str) -> Callable[[Pipeline], Pipeline]:
    """Decorator registering a pipeline function under ``name``.

    Raises:
        ValueError: another function is already registered under ``name``.
    """

    def decorator(fn: Pipeline) -> Pipeline:
        existing = _PIPELINES.get(name)
        # Re-registering the "same" function (module reloaded) is fine; a second pipeline is not.
        if existing is not None and _qualname(existing) != _qualname(fn):
            raise ValueError(
                f"pipeline {name!r} is already registered by {_qualname(existing)}; cannot register {_qualname(fn)}"
            )
        _PIPELINES[name] = fn
        return fn

    return decorator


def get(name: str) -> Pipeline:
    """The pipeline registered as ``name``, importing pipeline modules as needed.

    Raises:
        ValueError: no such pipeline; the message lists the known ones and modules that failed to
            import.
    """
    if name not in _PIPELINES:
        for module in PIPELINE_MODULES:
            _import(module)
            if name in _PIPELINES:
                break
    if name not in _PIPELINES:
        msg = f"unknown pipeline {name!r}; known pipelines: {sorted(_PIPELINES)}"
        if _IMPORT_ERRORS:
            msg += "; modules that failed to import: " + "; ".join(
                f"{m} ({e})" for m, e in _IMPORT_ERRORS.items()
            )
        raise ValueError(msg)
    return _PIPELINES[name]


def names() -> list[str]:
    """All pipeline names (imports every module in ``PIPELINE_MODULES``)."""
    for module in PIPELINE_MODULES:
        _import(module)
    return sorted(_PIPELINES)


def import_errors() -> dict[str, str]:
    """Pipeline modules that failed to import so far -> error message."""
    return dict(_IMPORT_ERRORS)


def _import(module: str) -> None:
    """Import one pipeline module once, remembering a failure instead of raising it."""
    if module in _IMPORTED:
        return
    _IMPORTED.add(module)
    try:
        importlib.import_module(module)
    except Exception as exc:  # a broken optional pipeline must not hide the others
        _IMPORT_ERRORS[module] = f"{type(exc).__name__}: {exc}"


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
