"""Run-time plumbing shared by every pipeline: device choice, seeding, structured logging.

torch is imported inside the functions that need it, so that importing this module (for logging,
say, in ``xraycardiac models list``) stays fast and torch-free.

Logging: every library logger lives under the ``xraycardiac`` namespace (``get_logger``). Nothing is
configured on import; applications (the CLI, the job runner) call ``configure_logging`` once. With
``json_lines=True`` each record is one JSON object on stderr, e.g.
``{"time": "2025-01-01T12:00:00.123+00:00", "level": "INFO", "logger": "xraycardiac.jobs",
"message": "...", "stage": "denoise"}``; fields passed through ``extra=`` are included.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import random
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "ROOT_LOGGER",
    "available_memory_bytes",
    "configure_logging",
    "get_logger",
    "onednn_conv3d",
    "require_memory",
    "seed_everything",
    "select_device",
]

ROOT_LOGGER = "xraycardiac"
"""Name of the logger every library logger descends from."""

_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(?::(\d+))?)$")
_DEVICE_CHOICES = "auto, cpu, cuda, cuda:N (N = 0, 1, ...), mps"

_log = logging.getLogger(f"{ROOT_LOGGER}.runtime")


# --------------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------------


def _mps_available(torch_mod: Any) -> bool:
    backend = getattr(torch_mod.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(spec: str = "auto") -> torch.device:
    """Turn a ``--device`` string into a ``torch.device``, falling back to CPU when it is not there.

    Args:
        spec: ``auto`` (CUDA if available, else Apple MPS, else CPU), ``cpu``, ``cuda``, ``cuda:N``
            or ``mps``; case and surrounding spaces are ignored.

    Returns:
        The device to run on. A requested accelerator that is not available gives the CPU, with a
        warning on the ``xraycardiac.runtime`` logger that says why and what to check.

    Raises:
        ValueError: ``spec`` is not one of the forms above.
    """
    if not isinstance(spec, str):
        raise ValueError(
            f"select_device: spec (--device) must be a string, one of {_DEVICE_CHOICES}; got {spec!r}"
        )
    match = _DEVICE_RE.match(spec.strip().lower())
    if match is None:
        raise ValueError(
            f"select_device: spec (--device) = {spec!r} is not valid; expected one of {_DEVICE_CHOICES}"
        )
    import torch

    name = match.group(1)
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available(torch):
            return torch.device("mps")
        return torch.device("cpu")
    if name == "mps":
        if _mps_available(torch):
            return torch.device("mps")
        _log.warning(
            "MPS requested but torch.backends.mps.is_available() is False (not an Apple-silicon Mac, or "
            "macOS < 12.3?); using CPU"
        )
        return torch.device("cpu")
    # cuda or cuda:N
    if not torch.cuda.is_available():
        cuda_build = getattr(torch.version, "cuda", None)
        hint = (
            "CPU build of torch?"
            if cuda_build is None
            else f"torch built for CUDA {cuda_build}: check the NVIDIA driver and CUDA_VISIBLE_DEVICES"
        )
        _log.warning("CUDA requested but torch.cuda.is_available() is False (%s); using CPU", hint)
        return torch.device("cpu")
    if match.group(2) is not None:
        index = int(match.group(2))
        count = torch.cuda.device_count()
        if index >= count:
            _log.warning(
                "%s requested but only %d CUDA device(s) are visible (indices 0..%d; check "
                "CUDA_VISIBLE_DEVICES); using CPU",
                name,
                count,
                count - 1,
            )
            return torch.device("cpu")
        return torch.device("cuda", index)
    return torch.device("cuda")


# --------------------------------------------------------------------------------------------------
# Seeding
# --------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and all CUDA devices).

    This makes a run repeatable on the same machine and library versions; GPU kernels may still
    differ between runs unless deterministic algorithms are also requested.

    Args:
        seed: integer in [0, 2**32 - 1] (NumPy's limit).

    Raises:
        ValueError: seed is not an integer in that range.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ValueError(f"seed_everything: seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - legacy global generator still used by third-party code
    torch.manual_seed(seed)  # seeds every CUDA device too


# --------------------------------------------------------------------------------------------------
# Logging
# --------------------------------------------------------------------------------------------------

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class _JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, extras, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": _dt.datetime.fromtimestamp(record.created, tz=_dt.timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (so redirections and test capture work)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def get_logger(name: str) -> logging.Logger:
    """The logger ``name`` inside the ``xraycardiac`` namespace.

    Args:
        name: a module name such as ``__name__`` (``xraycardiac.io``) or a short name (``jobs``,
            which becomes ``xraycardiac.jobs``).
    """
    if name != ROOT_LOGGER and not name.startswith(ROOT_LOGGER + "."):
        name = f"{ROOT_LOGGER}.{name}"
    return logging.getLogger(name)


def configure_logging(level: str | int = "INFO", json_lines: bool = False) -> logging.Logger:
    """Send ``xraycardiac`` log records to stderr, as text or as JSON lines.

    Calling it again replaces the handler it installed before (no duplicated lines). Records stop
    propagating to the root logger, so a host application's own handlers do not print them twice.

    Args:
        level: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``, ``CRITICAL`` (any case) or a logging int.
        json_lines: one JSON object per line (for the job runner and log collectors) instead of text.

    Returns:
        The ``xraycardiac`` root logger.

    Raises:
        ValueError: unknown level name.
    """
    if isinstance(level, str):
        numeric = logging.getLevelName(level.strip().upper())
        if not isinstance(numeric, int):
            raise ValueError(
                f"configure_logging: level={level!r} is not a level name; expected DEBUG, INFO, WARNING, "
                "ERROR or CRITICAL"
            )
    elif isinstance(level, int) and not isinstance(level, bool):
        numeric = level
    else:
        raise ValueError(f"configure_logging: level must be a level name or int, got {level!r}")
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        if getattr(handler, "_xraycardiac", False):
            logger.removeHandler(handler)
    handler = _StderrHandler()
    handler._xraycardiac = True  # type: ignore[attr-defined]
    if json_lines:
        handler.setFormatter(_JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(numeric)
    logger.propagate = False
    return logger


def _status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` field (kB) in MB; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux ``/proc/self/clear_refs``); False where it cannot be."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return _status_mb("VmHWM") is not None
    except OSError:
        return False


def rss_mb() -> float | None:
    """The process's resident set size now (VmRSS), MB; None off Linux."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """The process's RSS high-water mark in MB: VmHWM (since :func:`reset_peak_rss`) on Linux, else
    ``ru_maxrss`` (since the start; in a fork + exec child it also counts the parent's RSS at the fork)."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


# --------------------------------------------------------------------------------------------------
# CPU convolution backend
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def onednn_conv3d(module: torch.nn.Module) -> Iterator[None]:
    """Inside the block, run ``module``'s 3D convolutions through oneDNN whatever their batch size.

    PyTorch picks a CPU convolution backend per call; for a batch of one, a 3x3x3 float32 convolution
    goes to its native (im2col) kernel unless N*C*D*H exceeds 20480, so the 8- to 32-channel 32³ and
    16³ feature maps of our diffusion U-Nets run there, measured 12x slower than oneDNN on the same
    call (a 16-channel 32³ layer, 2 threads: 76 ms vs 6.4 ms; ``benchmarks/cardiac.py --time-grid``).
    Inside the block every ``torch.nn.Conv3d`` of ``module`` calls ``torch.mkldnn_convolution`` when
    the call needs no gradient (``no_grad`` / ``inference_mode``), its input is a float32 CPU tensor,
    its padding is numeric with ``padding_mode="zeros"`` and oneDNN is available; any other call
    (training, GPU, half precision) uses the layer's own forward. The results agree with the native
    kernel to float rounding. On leaving, the layers are as they were.
    """
    import torch

    layers = [m for m in module.modules() if type(m) is torch.nn.Conv3d]
    if not torch.backends.mkldnn.is_available() or not layers:
        yield
        return

    def fast(layer: torch.nn.Conv3d) -> Any:
        plain = layer.forward

        def forward(x: torch.Tensor) -> torch.Tensor:
            if (
                torch.is_grad_enabled() or x.device.type != "cpu" or x.dtype != torch.float32
                or layer.weight.dtype != torch.float32 or layer.weight.device.type != "cpu"
            ):  # fmt: skip
                return plain(x)
            return torch.mkldnn_convolution(
                x.contiguous(), layer.weight, layer.bias, layer.padding, layer.stride, layer.dilation,
                layer.groups,
            )  # fmt: skip

        return forward

    patched = [m for m in layers if m.padding_mode == "zeros" and not isinstance(m.padding, str)]
    try:
        for m in patched:
            m.forward = fast(m)  # type: ignore[method-assign]
        yield
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def available_memory_bytes() -> int | None:
    """Memory a new allocation can get without swapping, in bytes; None where it cannot be told.

    Linux: ``MemAvailable`` of ``/proc/meminfo``, capped by the cgroup v2 limit (``memory.max`` minus
    ``memory.current``) when the process runs in a container. Elsewhere: free physical pages
    (``os.sysconf``), which undercounts reclaimable caches.
    """
    avail: int | None = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, OSError, ValueError):
            return None
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as fh:
            limit = fh.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as fh:
            current = int(fh.read().strip())
        if limit.isdigit():
            avail = min(avail, max(int(limit) - current, 0))
    except (OSError, ValueError):
        pass
    return avail


def require_memory(nbytes: float, what: str, change: str) -> None:
    """Refuse, before allocating, work that needs more memory than the machine has available.

    Args:
        nbytes: estimated peak memory of the work, bytes.
        what: what needs it, for the message (e.g. ``"reading ct.nrrd (1200 x 1200 x 1200 float)"``).
        change: what the user can change, for the message (e.g. ``"use a smaller --size"``).

    Raises:
        ValueError: ``nbytes`` exceeds :func:`available_memory_bytes` (never raised where that is unknown).
    """
    avail = available_memory_bytes()
    if avail is not None and nbytes > avail:
        raise ValueError(
            f"{what} needs about {nbytes / 2**30:.1f} GiB of memory but only {avail / 2**30:.1f} GiB is "
            f"available; {change}"
        )
