"""Static checks of the Slicer modules that need no Slicer: .ui files, parameter nodes, CMake lists.

Each check is a function returning a list of problems (empty = fine); the tests run it on the real
modules and on a deliberately broken copy, so every check is shown to be able to fail.
"""

from __future__ import annotations

import ast
import py_compile
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QT_MODULES = ("qt", "ctk", "PythonQt")
QT_SLICER_PREFIXES = ("slicer.qMRML", "slicer.qSlicer")


def module_dirs(root: Path = REPO) -> list[Path]:
    """Top-level folders that hold a Slicer module: ``<Name>/<Name>.py``."""
    return sorted(d for d in root.iterdir() if d.is_dir() and (d / f"{d.name}.py").is_file())


MODULES = module_dirs()
MODULE_IDS = [d.name for d in MODULES]


# ------------------------------------------------------------------------------------------ checkers


def check_ui_parses(module: Path) -> list[str]:
    """Every .ui file under the module parses as XML with a <ui> root."""
    problems = []
    for ui in sorted(module.rglob("*.ui")):
        try:
            root = ET.parse(ui).getroot()
        except ET.ParseError as exc:
            problems.append(f"{ui}: not valid XML ({exc})")
            continue
        if root.tag != "ui":
            problems.append(f"{ui}: root element is <{root.tag}>, expected <ui>")
    return problems


def _ui_path(module: Path) -> Path:
    return module / "Resources" / "UI" / f"{module.name}.ui"


def ui_widget_names(ui: Path) -> set[str]:
    """Object names of all widgets, layouts and actions in a .ui file."""
    root = ET.parse(ui).getroot()
    return {
        el.get("name") for el in root.iter() if el.tag in ("widget", "layout", "action") and el.get("name")
    }


def ui_parameter_names(ui: Path) -> dict[str, str]:
    """widget name -> its ``SlicerParameterName`` dynamic property."""
    out = {}
    for widget in ET.parse(ui).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[widget.get("name")] = (prop.findtext("string") or "").strip()
    return out


def ui_references(py: Path) -> set[str]:
    """Names used as ``self.ui.<name>`` in a module file."""
    names = set()
    for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "ui"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


def parameter_node_fields(py: Path) -> dict[str, set[str]]:
    """Class name -> annotated field names, for each ``@parameterNodeWrapper`` class in a file."""
    out = {}
    for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.ClassDef):
            continue
        decorators = {
            d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in node.decorator_list
        }
        if "parameterNodeWrapper" in decorators:
            out[node.name] = {
                s.target.id
                for s in node.body
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
            }
    return out


def check_ui_references(module: Path) -> list[str]:
    """Every ``self.ui.<name>`` in the module file names a widget of its .ui file."""
    py, ui = module / f"{module.name}.py", _ui_path(module)
    used = ui_references(py)
    if not ui.is_file():
        return [f"{py} uses self.ui.{n} but {ui} does not exist" for n in sorted(used)]
    missing = used - ui_widget_names(ui)
    return [f"{py}: self.ui.{n} is not a widget in {ui.name}" for n in sorted(missing)]


def check_parameter_names(module: Path) -> list[str]:
    """Every ``SlicerParameterName`` in the .ui is a field of the module's parameterNodeWrapper class."""
    py, ui = module / f"{module.name}.py", _ui_path(module)
    if not ui.is_file():
        return []
    bindings = ui_parameter_names(ui)
    wrappers = parameter_node_fields(py)
    if bindings and not wrappers:
        return [
            f"{ui.name} binds {sorted(bindings.values())} but {py.name} has no @parameterNodeWrapper class"
        ]
    fields = set().union(*wrappers.values()) if wrappers else set()
    return [
        f"{ui.name}: widget {w} has SlicerParameterName {p!r}, not a field of {sorted(wrappers)} "
        f"(fields: {sorted(fields)})"
        for w, p in sorted(bindings.items())
        if p not in fields
    ]


def _cmake_list(text: str, variable: str, module_name: str) -> list[str] | None:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    if match is None:
        return None
    body = re.sub(r"#.*", "", match.group(1))
    return [item.replace("${MODULE_NAME}", module_name) for item in body.split()]


def check_cmake_lists(module: Path) -> list[str]:
    """MODULE_PYTHON_SCRIPTS = every .py outside Testing/, MODULE_PYTHON_RESOURCES = every file in Resources/."""
    cmake = module / "CMakeLists.txt"
    if not cmake.is_file():
        return [f"{cmake} is missing"]
    text = cmake.read_text(encoding="utf-8")
    name_match = re.search(r"set\(\s*MODULE_NAME\s+(\S+)\s*\)", text)
    problems = []
    if name_match is None or name_match.group(1) != module.name:
        problems.append(f"{cmake}: MODULE_NAME must be {module.name}")
    if "slicerMacroBuildScriptedModule" not in text:
        problems.append(f"{cmake}: no slicerMacroBuildScriptedModule call")

    def on_disk(files: list[Path]) -> set[str]:
        return {f.relative_to(module).as_posix() for f in files if "__pycache__" not in f.parts}

    expected = {
        "MODULE_PYTHON_SCRIPTS": on_disk(
            [p for p in module.rglob("*.py") if p.relative_to(module).parts[0] != "Testing"]
        ),
        "MODULE_PYTHON_RESOURCES": on_disk(
            [p for p in (module / "Resources").rglob("*") if p.is_file() and not p.name.startswith(".")]
        ),
    }
    for variable, files in expected.items():
        listed = _cmake_list(text, variable, module.name)
        if listed is None:
            problems.append(f"{cmake}: set({variable} ...) is missing")
            continue
        for item in sorted(set(listed) - files):
            problems.append(f"{cmake}: {variable} lists {item}, which does not exist")
        for item in sorted(files - set(listed)):
            problems.append(f"{cmake}: {variable} does not list {item}")
        if len(listed) != len(set(listed)):
            problems.append(f"{cmake}: {variable} lists a file twice")
    return problems


def check_top_level_cmake(root: Path = REPO) -> list[str]:
    """The top-level CMakeLists adds exactly the module folders, and declares the extension metadata."""
    text = re.sub(r"#.*", "", (root / "CMakeLists.txt").read_text(encoding="utf-8"))
    added = set(re.findall(r"add_subdirectory\(\s*(\S+?)\s*\)", text))
    modules = {d.name for d in module_dirs(root)}
    problems = [
        f"CMakeLists.txt: module folder {m} is not added (add_subdirectory)" for m in sorted(modules - added)
    ]
    problems += [
        f"CMakeLists.txt: add_subdirectory({a}) is not a module folder" for a in sorted(added - modules)
    ]
    for key in (
        "EXTENSION_HOMEPAGE",
        "EXTENSION_CATEGORY",
        "EXTENSION_CONTRIBUTORS",
        "EXTENSION_DESCRIPTION",
        "EXTENSION_ICONURL",
        "EXTENSION_SCREENSHOTURLS",
        "EXTENSION_DEPENDS",
    ):
        if not re.search(rf"set\(\s*{key}\s+\S", text):
            problems.append(f"CMakeLists.txt: {key} is not set")
    for line in ("${Slicer_EXTENSION_GENERATE_CONFIG}", "${Slicer_EXTENSION_CPACK}"):
        if line not in text:
            problems.append(f"CMakeLists.txt: include({line}) is missing")
    return problems


def check_compiles(module: Path, tmp: Path) -> list[str]:
    """Every .py of the module byte-compiles."""
    problems = []
    for n, py in enumerate(sorted(module.rglob("*.py"))):
        try:
            py_compile.compile(str(py), cfile=str(tmp / f"{n}.pyc"), doraise=True)
        except py_compile.PyCompileError as exc:
            problems.append(f"{py}: does not compile ({exc.msg.strip().splitlines()[-1]})")
    return problems


def _forbidden(name: str) -> bool:
    """True for qt / ctk / PythonQt modules and Slicer's Qt classes (slicer.qMRML*, slicer.qSlicer*)."""
    return name.split(".")[0] in QT_MODULES or name.startswith(QT_SLICER_PREFIXES)


def check_lib_has_no_qt(module: Path) -> list[str]:
    """No file of ``<Module>Lib/`` imports qt, ctk or Slicer's Qt widgets (they must run with slicer-core)."""
    problems = []
    for py in sorted((module / f"{module.name}Lib").rglob("*.py")):
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "slicer"
            ):
                names = [f"slicer.{node.attr}"]
            bad = [name for name in names if _forbidden(name)]
            if bad:
                problems.append(f"{py}:{node.lineno}: uses {bad[0]} (Lib files must run without Qt)")
    return problems


# ------------------------------------------------------------------------------------------ the repo


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
@pytest.mark.parametrize(
    "check",
    [check_ui_parses, check_ui_references, check_parameter_names, check_cmake_lists, check_lib_has_no_qt],
    ids=lambda f: f.__name__,
)
def test_module(module: Path, check, tmp_path: Path) -> None:
    problems = check(module)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_module_compiles(module: Path, tmp_path: Path) -> None:
    problems = check_compiles(module, tmp_path)
    assert problems == [], "\n".join(problems)


def test_expected_modules_present() -> None:
    assert set(MODULE_IDS) == {"XRayCardiacCommon", "XRayCoronaryRecon", "XRayToCT", "CardiacSynth"}, (
        MODULE_IDS
    )


def test_top_level_cmake() -> None:
    problems = check_top_level_cmake()
    assert problems == [], "\n".join(problems)


def test_icons_are_128_png() -> None:
    from PIL import Image

    for icon in [REPO / "Resources" / "Icons" / "XRayCardiac.png"] + [
        m / "Resources" / "Icons" / f"{m.name}.png" for m in MODULES
    ]:
        with Image.open(icon) as im:
            assert (im.format, im.size) == ("PNG", (128, 128)), (icon, im.format, im.size)


def test_common_module_is_hidden() -> None:
    text = (REPO / "XRayCardiacCommon" / "XRayCardiacCommon.py").read_text(encoding="utf-8")
    assert re.search(r"self\.parent\.hidden\s*=\s*True", text), "XRayCardiacCommon must be a hidden module"


# ------------------------------------------------------------------------------ each check can fail


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """A copy of the XRayToCT module to break."""
    dst = tmp_path / "XRayToCT"
    shutil.copytree(REPO / "XRayToCT", dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_broken_ui_xml_is_caught(broken: Path) -> None:
    _replace(broken / "Resources/UI/XRayToCT.ui", "</ui>", "")
    assert check_ui_parses(broken), "truncated .ui not reported"


def test_missing_widget_is_caught(broken: Path) -> None:
    _replace(broken / "Resources/UI/XRayToCT.ui", 'name="cancelButton"', 'name="stopButton"')
    problems = check_ui_references(broken)
    assert any("cancelButton" in p for p in problems), problems


def test_unknown_parameter_name_is_caught(broken: Path) -> None:
    _replace(broken / "Resources/UI/XRayToCT.ui", "<string>sidMm</string>", "<string>sid</string>")
    problems = check_parameter_names(broken)
    assert any("'sid'" in p for p in problems), problems


def test_unlisted_and_missing_files_are_caught(broken: Path) -> None:
    (broken / "XRayToCTLib" / "extra.py").write_text("x = 1\n", encoding="utf-8")
    (broken / "Resources" / "UI" / "XRayToCT.ui").unlink()
    problems = check_cmake_lists(broken)
    assert any("does not list XRayToCTLib/extra.py" in p for p in problems), problems
    assert any("lists Resources/UI/XRayToCT.ui, which does not exist" in p for p in problems), problems


def test_missing_add_subdirectory_is_caught(tmp_path: Path) -> None:
    for name in MODULE_IDS:
        (tmp_path / name).mkdir()
        (tmp_path / name / f"{name}.py").write_text("", encoding="utf-8")
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8").replace("add_subdirectory(CardiacSynth)", "")
    (tmp_path / "CMakeLists.txt").write_text(text, encoding="utf-8")
    problems = check_top_level_cmake(tmp_path)
    assert problems == ["CMakeLists.txt: module folder CardiacSynth is not added (add_subdirectory)"], (
        problems
    )


def test_syntax_error_is_caught(broken: Path, tmp_path: Path) -> None:
    _replace(broken / "XRayToCT.py", "class XRayToCTLogic(", "class XRayToCTLogic(:")
    assert check_compiles(broken, tmp_path), "syntax error not reported"


@pytest.mark.parametrize(
    "line", ["import qt", "from ctk import ctkSliderWidget", "w = slicer.qMRMLNodeComboBox()"]
)
def test_qt_in_lib_is_caught(broken: Path, line: str) -> None:
    path = broken / "XRayToCTLib" / "choices.py"
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    problems = check_lib_has_no_qt(broken)
    assert len(problems) == 1, problems


def test_slicer_requirements_match_the_library_dependencies():
    """Slicer installs exactly what pyproject asks for, less torch (the PyTorch extension's) and vtk (Slicer's)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = sorted(d.replace(" ", "") for d in project if not d.startswith(("torch", "vtk")))
    req = REPO / "XRayCardiacCommon" / "Resources" / "requirements.txt"
    lines = [ln.strip() for ln in req.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert sorted(lines) == wanted, f"{req} differs from pyproject.toml: {sorted(set(lines) ^ set(wanted))}"
