"""``selftest``: a diagnostic pipeline that checks the job runner end to end, with no science in it.

It is what ``xraycardiac jobs selftest`` and the Slicer modules' "check the job runner" button run:
if it works, the interpreter, the import of ``xraycardiac``, JSON-lines progress, the work-folder
rename into ``output_dir``, error reporting and cancel all work on this machine.

It writes ``n_files`` small text files one by one, ``delay_s`` seconds apart, reporting progress
after each, then returns a summary. Parameters:

- ``n_files`` (int >= 0, default 5): number of files ``file_000.txt``, ``file_001.txt``, ...
- ``delay_s`` (float >= 0, default 0.2): seconds to sleep before each file.
- ``fail_at`` (int, optional): raise ``RuntimeError`` when about to write file number ``fail_at``
  (0-based), to check that a failing job leaves nothing behind.
- ``spawn_helper`` (bool, default false): start a sleeping helper child process for the duration of
  the job, to check that cancel ends the whole process tree; its pid is in each progress event.

Inputs are optional; each one's size and SHA-256 are recorded in the summary (a check that files
reach the job process).
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from xraycardiac.jobs.registry import Progress, register
from xraycardiac.jobs.spec import JobSpec

PARAMS = ("n_files", "delay_s", "fail_at", "spawn_helper")


@register("selftest")
def selftest(spec: JobSpec, work_dir: Path, progress: Progress) -> dict[str, Any]:
    """Write ``n_files`` small files with progress; see the module docstring for the parameters.

    Returns:
        ``{"outputs": {"file_000": "file_000.txt", ...}, "n_files": int, "inputs": {key: {"bytes",
        "sha256"}}, "pid": int, "python": str, "platform": str}``.
    """
    spec.check_param_names(PARAMS)
    n_files = spec.param("n_files", 5, int)
    delay_s = spec.param("delay_s", 0.2, float)
    fail_at = spec.param("fail_at", None, (int, type(None)))
    spawn_helper = spec.param("spawn_helper", False, bool)
    if n_files < 0:
        raise ValueError(f"params.n_files must be >= 0, got {n_files}")
    if delay_s < 0:
        raise ValueError(f"params.delay_s must be >= 0 seconds, got {delay_s}")

    inputs = {key: _describe(Path(path)) for key, path in spec.inputs.items()}
    helper = _start_helper() if spawn_helper else None
    extra = {} if helper is None else {"helper_pid": helper.pid}
    outputs: dict[str, str] = {}
    try:
        progress("starting", 0.0, **extra)
        for i in range(n_files):
            time.sleep(delay_s)
            if fail_at is not None and i == fail_at:
                raise RuntimeError(f"selftest failed on purpose before file {i} (params.fail_at = {fail_at})")
            name = f"file_{i:03d}.txt"
            (work_dir / name).write_text(
                f"selftest file {i} of {n_files}, pid {os.getpid()}\n", encoding="utf-8"
            )
            outputs[name.removesuffix(".txt")] = name
            progress("writing files", (i + 1) / n_files, file=name, **extra)
    finally:
        if helper is not None:
            helper.kill()
            helper.wait()
    progress("done", 1.0)
    return {
        "outputs": outputs,
        "n_files": n_files,
        "inputs": inputs,
        "pid": os.getpid(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _describe(path: Path) -> dict[str, Any]:
    """Size and SHA-256 of a file input (folders: number of entries)."""
    if path.is_dir():
        return {"folder": True, "entries": sum(1 for _ in path.iterdir())}
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _start_helper() -> subprocess.Popen:
    """A child process that just sleeps: a stand-in for worker processes a real pipeline may start."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(3600)"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
