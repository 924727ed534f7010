"""On Windows the job process starts without a console window (as Slicer's launchConsoleProcess does).

Windows cannot be run here, so the Popen call of ``xraycardiac.jobs.process`` is read: its Windows
creation flags must hold CREATE_NO_WINDOW (no black console over Slicer for every job) and keep
CREATE_NEW_PROCESS_GROUP (a Ctrl+C in the console that started Slicer does not reach the job).
"""

from __future__ import annotations

import ast

from test_slicer_static import REPO

PROCESS = REPO / "xraycardiac" / "jobs" / "process.py"


def creation_flags(source: str) -> list[set[str]]:
    """The ``subprocess.X`` names in each ``"creationflags": ...`` value or ``creationflags=...`` keyword."""
    found = []
    for node in ast.walk(ast.parse(source)):
        values = []
        if isinstance(node, ast.Dict):
            values = [
                v
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and k.value == "creationflags"
            ]
        elif isinstance(node, ast.keyword) and node.arg == "creationflags":
            values = [node.value]
        for value in values:
            found.append({n.attr for n in ast.walk(value) if isinstance(n, ast.Attribute)})
    return found


def test_job_process_has_no_console_window_on_windows() -> None:
    flags = creation_flags(PROCESS.read_text(encoding="utf-8"))
    assert flags, f"{PROCESS}: no creationflags for Windows"
    for names in flags:
        assert {"CREATE_NO_WINDOW", "CREATE_NEW_PROCESS_GROUP"} <= names, names


def test_check_reads_flags() -> None:
    source = 'g = {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}\n'
    assert creation_flags(source) == [{"CREATE_NEW_PROCESS_GROUP"}]
