"""Slicer's own process never imports torch: every computation runs in the job's child process.

Opening a panel imports the module file and what it imports at load; starting a job imports the
module's Lib logic (it writes the inputs and starts ``python -m xraycardiac.jobs``). Neither may
import torch (seconds of start-up and ~1 GB of memory in Slicer, and a torch that could then no
longer be upgraded or uninstalled without a restart). Checked in a fresh interpreter with the same
sys.path as Slicer (every module folder, and the library next to them).
"""

from __future__ import annotations

import json
import subprocess
import sys

from test_slicer_python39 import SLICER_SYS_PATH, load_time_files
from test_slicer_static import MODULES, REPO

LIB_PACKAGES = [f"{m.name}Lib" for m in MODULES]

# Importing each name in turn; after each, does sys.modules hold torch (or kornia, which imports it)?
_CHILD = """
import importlib, json, sys
sys.path[:0] = json.loads(sys.argv[1])
first = None
for name in json.loads(sys.argv[2]):
    if name.startswith("getattr:"):
        package = importlib.import_module(name.split(":")[1])
        for attr in package.__all__:
            getattr(package, attr)
    else:
        importlib.import_module(name)
    if first is None and ("torch" in sys.modules or "kornia" in sys.modules):
        first = name
print(json.dumps(first))
"""


def _import_names() -> list[str]:
    """Module names in the order Slicer's process imports them: load-time files, then each Lib in full."""
    names: list[str] = []
    for module in MODULES:
        for py in load_time_files(module / f"{module.name}.py"):
            if py.parent in MODULES:  # the module file itself: needs Slicer's Qt, checked statically
                continue
            root = next(r for r in SLICER_SYS_PATH if py.is_relative_to(r))
            parts = list(py.relative_to(root).with_suffix("").parts)
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [*dict.fromkeys(names), *(f"getattr:{p}" for p in LIB_PACKAGES)]


def test_slicer_process_imports_no_torch() -> None:
    names = _import_names()
    assert "XRayToCTLib.choices" in names and "getattr:XRayCoronaryReconLib" in names, names
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([str(p) for p in SLICER_SYS_PATH]), json.dumps(names)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    first = json.loads(out.stdout.strip().splitlines()[-1])
    assert first is None, f"importing {first} imported torch into Slicer's process"
