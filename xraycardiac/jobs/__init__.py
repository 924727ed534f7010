"""Jobs: one entry point per pipeline -- files in, files out, JSON-lines progress, cancel.

The GUI, the CLI and the tests all run pipelines through this package:

- ``JobSpec``: pipeline name, input files, JSON parameters, output folder (a ``job.json``).
- ``run_job(spec)``: run in this process; ``JobProcess.start(spec)``: run in a child process
  (``python -m xraycardiac.jobs <pipeline> job.json``) that a GUI timer polls and can cancel;
  ``run_in_subprocess(spec)``: the blocking form of the latter.
- ``register(name)``: how a pipeline module declares ``fn(spec, work_dir, progress) -> summary``.

Importing this package is light (no torch): pipeline modules are imported on first lookup.
"""

from __future__ import annotations

from xraycardiac.jobs.process import JobProcess, run_in_subprocess
from xraycardiac.jobs.registry import PIPELINE_MODULES, Progress, get, names, register
from xraycardiac.jobs.runner import REPORT_NAME, JobCancelled, JobError, run_job
from xraycardiac.jobs.spec import JobSpec

__all__ = [
    "PIPELINE_MODULES",
    "REPORT_NAME",
    "JobCancelled",
    "JobError",
    "JobProcess",
    "JobSpec",
    "Progress",
    "get",
    "names",
    "register",
    "run_in_subprocess",
    "run_job",
]
