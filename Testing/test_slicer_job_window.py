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
    """The ``subprocess.X`` names in each ``"creationflags": ...`` value (the job's Popen keywords)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        values = []
        if isinstance(node, ast.Dict):
            values = [
                v
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and k.value == "creationflags"
            ]
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


def windows_only_commands_without_flags(source: str) -> list[str]:
    """``subprocess.run/Popen`` calls of Windows programs (taskkill) that lack CREATE_NO_WINDOW."""
    missing = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("run", "Popen", "call", "check_call") or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.List) and first.elts and isinstance(first.elts[0], ast.Constant)):
            continue
        if first.elts[0].value != "taskkill":
            continue
        flags = [k.value for k in node.keywords if k.arg == "creationflags"]
        names = {n.attr for f in flags for n in ast.walk(f) if isinstance(n, ast.Attribute)}
        if "CREATE_NO_WINDOW" not in names:
            missing.append(f"line {node.lineno}")
    return missing


def test_cancel_on_windows_flashes_no_console() -> None:
    missing = windows_only_commands_without_flags(PROCESS.read_text(encoding="utf-8"))
    assert missing == [], f"{PROCESS}: taskkill started without CREATE_NO_WINDOW at {missing}"


def test_cancel_check_finds_a_missing_flag() -> None:
    source = 'subprocess.run(["taskkill", "/T", "/F", "/PID", "1"], check=False)\n'
    assert windows_only_commands_without_flags(source) == ["line 1"]
