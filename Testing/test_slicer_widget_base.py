"""The module panels share one base: lifecycle and job UI written once, three layers from widget to process.

``XRayCardiacCommon.XRayCardiacWidget`` holds the widget lifecycle (setup, cleanup, enter, exit, scene
close, parameter node and its observer) and ``runJob`` (dependency check, the module's Lib logic, progress
with Cancel, import). A module widget subclasses it and writes only its own hooks; its module logic
translates the parameter node into the Lib logic's arguments and runs no job itself, so a job goes
widget -> Lib logic (``XRayCardiacCommonLib.JobLogic``) -> ``xraycardiac.jobs.JobProcess``. Checked on
the source (the Qt side cannot run here), on the real modules and on broken copies.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from test_slicer_static import MODULES, REPO

BASE = "XRayCardiacWidget"
LIFECYCLE = (
    "setup",
    "cleanup",
    "enter",
    "exit",
    "onSceneStartClose",
    "onSceneEndClose",
    "initializeParameterNode",
    "setParameterNode",
)
# What only the base may call: the parameter node binding, observers, progress sections, the .ui load.
BASE_ONLY_CALLS = {"connectGui", "disconnectGui", "addObserver", "removeObserver", "loadUI", "JobProgress"}
# A module logic that calls these runs (forwards) a job: the layer this base removed.
JOB_CALLS = {"start", "import_results", "cancel", "wait_and_import", "run", "poll"}
PANEL_MODULES = [m for m in MODULES if m.name != "XRayCardiacCommon"]


def _classes(py: Path) -> dict[str, ast.ClassDef]:
    return {n.name: n for n in ast.parse(py.read_text(encoding="utf-8")).body if isinstance(n, ast.ClassDef)}


def _methods(cls: ast.ClassDef) -> list[str]:
    return [f.name for f in cls.body if isinstance(f, ast.FunctionDef)]


def _called(node: ast.AST) -> set[str]:
    return {
        getattr(n.func, "attr", getattr(n.func, "id", "")) for n in ast.walk(node) if isinstance(n, ast.Call)
    }


def check_base(common: Path) -> list[str]:
    """The base exists in XRayCardiacCommon.py and defines every lifecycle method exactly once."""
    base = _classes(common).get(BASE)
    if base is None:
        return [f"{common.name}: no class {BASE}"]
    methods = _methods(base)
    return [
        f"{common.name}: {BASE} defines {name}() {methods.count(name)} times, expected once"
        for name in (*LIFECYCLE, "runJob")
        if methods.count(name) != 1
    ]


def check_module_widget(module: Path) -> list[str]:
    """The module widget subclasses the base only, writes no lifecycle method and no base-only call."""
    py = module / f"{module.name}.py"
    classes = _classes(py)
    widget = classes.get(f"{module.name}Widget")
    if widget is None:
        return [f"{py.name}: no class {module.name}Widget"]
    problems = []
    bases = [ast.unparse(b) for b in widget.bases]
    if bases != [f"XRayCardiacCommon.{BASE}"]:
        problems.append(f"{py.name}: {widget.name} derives from {bases}, expected [XRayCardiacCommon.{BASE}]")
    for name in _methods(widget):
        if name in LIFECYCLE and name != "initializeParameterNode":
            problems.append(f"{py.name}: {widget.name}.{name}() repeats the base's lifecycle")
    for fn in widget.body:
        if isinstance(fn, ast.FunctionDef):
            extra = _called(fn) & BASE_ONLY_CALLS
            if fn.name == "initializeParameterNode" and "initializeParameterNode" not in _called(fn):
                problems.append(
                    f"{py.name}: {widget.name}.initializeParameterNode() does not call the base's"
                )
            if extra:
                problems.append(
                    f"{py.name}: {widget.name}.{fn.name}() calls {sorted(extra)} (the base's job)"
                )
    return problems


def check_module_logic(module: Path) -> list[str]:
    """The module logic runs no job (no forwarding layer), and each ``*_LOGIC`` names a Lib logic class."""
    py = module / f"{module.name}.py"
    tree = ast.parse(py.read_text(encoding="utf-8"))
    problems = []
    logic = _classes(py).get(f"{module.name}Logic")
    if logic is None:
        return [f"{py.name}: no class {module.name}Logic"]
    for fn in logic.body:
        if isinstance(fn, ast.FunctionDef):
            forwarded = _called(fn) & JOB_CALLS
            if forwarded:
                problems.append(f"{py.name}: {logic.name}.{fn.name}() runs a job ({sorted(forwarded)})")
    targets = [
        (t.id, n.value.value)
        for n in tree.body
        if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
        for t in n.targets
        if isinstance(t, ast.Name) and t.id.endswith("_LOGIC")
    ]
    if not targets:
        problems.append(f"{py.name}: no *_LOGIC constant naming the Lib logic of a job")
    for name, dotted in targets:
        *parts, cls = dotted.split(".")
        lib = module.joinpath(*parts).with_suffix(".py")
        if not lib.is_file():
            problems.append(f"{py.name}: {name} = {dotted!r}: no file {lib.relative_to(module)}")
            continue
        found = _classes(lib).get(cls)
        if found is None or not any("JobLogic" in ast.unparse(b) for b in found.bases):
            problems.append(f"{py.name}: {name} = {dotted!r} is not a JobLogic class of {lib.name}")
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    problems += [
        f"{py.name}: {name} is never used (no runJob starts it)" for name, _ in targets if name not in used
    ]
    return problems


def test_base_defines_the_lifecycle_once() -> None:
    assert check_base(REPO / "XRayCardiacCommon" / "XRayCardiacCommon.py") == []


@pytest.mark.parametrize("module", PANEL_MODULES, ids=lambda m: m.name)
def test_module_widget_uses_the_base(module: Path) -> None:
    assert check_module_widget(module) == []


@pytest.mark.parametrize("module", PANEL_MODULES, ids=lambda m: m.name)
def test_module_logic_forwards_no_job(module: Path) -> None:
    assert check_module_logic(module) == []


def test_lifecycle_lives_only_in_the_base() -> None:
    """Across the four module files' widgets, each lifecycle method is defined once: in the base."""
    defined = [
        name
        for m in MODULES
        for cls in _classes(m / f"{m.name}.py").values()
        if cls.name.endswith("Widget")
        for name in _methods(cls)
        if name in LIFECYCLE and name != "initializeParameterNode"
    ]
    assert sorted(defined) == sorted(n for n in LIFECYCLE if n != "initializeParameterNode"), defined


# ----------------------------------------------------------------------------- the checks can fail


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    for name in ("XRayCardiacCommon", "XRayToCT"):
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("*.png", "__pycache__"))
    return tmp_path


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_second_lifecycle_copy_is_caught(broken: Path) -> None:
    common = broken / "XRayCardiacCommon" / "XRayCardiacCommon.py"
    _replace(
        common,
        "    def enter(self) -> None:",
        "    def enter(self) -> None:\n        pass\n\n    def enter(self) -> None:",
    )
    assert any("enter() 2 times" in p for p in check_base(common))


def test_widget_with_its_own_lifecycle_is_caught(broken: Path) -> None:
    py = broken / "XRayToCT" / "XRayToCT.py"
    _replace(
        py,
        "    def createLogic(self)",
        "    def cleanup(self) -> None:\n        self.removeObservers()\n\n    def createLogic(self)",
    )
    assert any("cleanup() repeats" in p for p in check_module_widget(broken / "XRayToCT"))


def test_widget_off_the_base_is_caught(broken: Path) -> None:
    py = broken / "XRayToCT" / "XRayToCT.py"
    _replace(
        py, "class XRayToCTWidget(XRayCardiacCommon.XRayCardiacWidget):", "class XRayToCTWidget(object):"
    )
    assert any("derives from" in p for p in check_module_widget(broken / "XRayToCT"))


def test_forwarding_module_logic_is_caught(broken: Path) -> None:
    py = broken / "XRayToCT" / "XRayToCT.py"
    _replace(
        py,
        "    def getParameterNode(self) -> XRayToCTParameterNode:",
        "    def finishSimulation(self, run):\n        return self.lib.import_results(run)\n\n"
        "    def getParameterNode(self) -> XRayToCTParameterNode:",
    )
    assert any("runs a job" in p for p in check_module_logic(broken / "XRayToCT"))


def test_misnamed_lib_logic_is_caught(broken: Path) -> None:
    py = broken / "XRayToCT" / "XRayToCT.py"
    _replace(py, '"XRayToCTLib.simulate.SimulateRadiographsLogic"', '"XRayToCTLib.simulate.SimulationLogic"')
    assert any("is not a JobLogic class" in p for p in check_module_logic(broken / "XRayToCT"))


# ------------------------------------------------------------------- three layers: widget, Lib logic, process

# What acts on a job; only JobLogic may define it, a JobRun (sub)class is a record.
RUN_CONTROL = {"start", "start_job", "start_from_nodes", "poll", "wait", "cancel", "cleanup", "result"}


def check_job_layers(repo: Path) -> list[str]:
    """A start goes widget -> Lib logic (``JobLogic``) -> ``JobProcess``: no class in between.

    Every ``JobRun`` class (in ``jobs.py`` and each ``<Module>Lib/``) defines none of ``RUN_CONTROL``, and
    the only Slicer-side code that calls ``JobProcess.start`` is ``JobLogic`` in ``jobs.py``.
    """
    problems = []
    lib_files = [repo / "XRayCardiacCommon" / "XRayCardiacCommonLib" / "jobs.py"]
    lib_files += sorted(p for m in PANEL_MODULES for p in (repo / m.name / f"{m.name}Lib").glob("*.py"))
    for py in lib_files:
        for cls in _classes(py).values():
            bases = [ast.unparse(b) for b in cls.bases]
            if cls.name == "JobRun" or any(b.endswith("JobRun") for b in bases):
                control = sorted(set(_methods(cls)) & RUN_CONTROL)
                if control:
                    problems.append(f"{py.name}: {cls.name} (a JobRun) defines {control}: JobLogic's work")
            elif cls.name != "JobLogic" and any(
                isinstance(n, ast.Name) and n.id == "JobProcess" for n in ast.walk(cls)
            ):
                problems.append(f"{py.name}: {cls.name} uses JobProcess: only JobLogic starts a process")
    return problems


def test_a_job_passes_three_layers() -> None:
    assert check_job_layers(REPO) == []


def test_a_run_with_its_own_control_is_caught(tmp_path: Path) -> None:
    for m in (*PANEL_MODULES, REPO / "XRayCardiacCommon"):
        shutil.copytree(m, tmp_path / m.name, ignore=shutil.ignore_patterns("*.png", "__pycache__"))
    _replace(
        tmp_path / "XRayToCT" / "XRayToCTLib" / "simulate.py",
        "    params: dict[str, Any] = field(default_factory=dict)\n",
        "    params: dict[str, Any] = field(default_factory=dict)\n\n"
        "    def poll(self) -> None:\n        self.process.poll()\n",
    )
    assert any("SimulationRun (a JobRun) defines ['poll']" in p for p in check_job_layers(tmp_path))
