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


def parameter_node_types(py: Path) -> dict[str, list[str]]:
    """Field -> the MRML classes its annotation names, for node fields of ``@parameterNodeWrapper`` classes.

    These are the ``nodeTypes`` Slicer's binding sets on the field's qMRMLNodeComboBox
    (``parameterNodeWrapper.guiConnectors.qMRMLNodeComboBoxToNodeConnector`` -> ``util.getNodeTypes``):
    ``vtkMRMLScalarVolumeNode`` -> [it]; ``Union[A, B, None]`` -> [A, B]; ``Annotated[T, ...]`` -> T's.
    """

    def classes(node: ast.AST) -> list[str]:
        if isinstance(node, ast.Name):
            return [node.id] if node.id.startswith("vtkMRML") else []
        if isinstance(node, ast.Subscript):
            base = node.value.id if isinstance(node.value, ast.Name) else getattr(node.value, "attr", "")
            args = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            if base == "Annotated":
                return classes(args[0])
            if base in ("Union", "Optional"):
                return [c for a in args for c in classes(a)]
        return []

    out = {}
    for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", getattr(d, "attr", "")) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            for s in node.body:
                if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name) and classes(s.annotation):
                    out[s.target.id] = classes(s.annotation)
    return out


def _ui_property(widget: ET.Element, name: str) -> ET.Element | None:
    return next((p for p in widget.findall("property") if p.get("name") == name), None)


def check_node_selectors(module: Path) -> list[str]:
    """Node selectors bound to the parameter node show what the .ui says, after the binding has run.

    The binding overwrites a selector's ``nodeTypes`` with the field's classes (and keeps every other
    property), so (1) a ``nodeTypes`` written in the .ui must be the field's, and (2) a field that names
    vtkMRMLScalarVolumeNode but not vtkMRMLLabelMapVolumeNode (a grey-level image) hides label maps (a
    subclass) with ``showChildNodeTypes`` false or ``hideChildNodeTypes``; a field that takes label maps
    names vtkMRMLLabelMapVolumeNode.
    """
    py, ui = module / f"{module.name}.py", _ui_path(module)
    if not ui.is_file():
        return []
    fields = parameter_node_types(py)
    problems = []
    for widget in ET.parse(ui).getroot().iter("widget"):
        if widget.get("class") != "qMRMLNodeComboBox":
            continue
        name = widget.get("name")
        param = _ui_property(widget, "SlicerParameterName")
        field = (param.findtext("string") or "").strip() if param is not None else ""
        if field not in fields:
            continue
        bound = fields[field]
        written = _ui_property(widget, "nodeTypes")
        if written is not None:
            ui_types = [(s.text or "").strip() for s in written.iter("string")]
            if set(ui_types) != set(bound):
                problems.append(
                    f"{ui.name}: {name} lists nodeTypes {ui_types}, but the binding of {field!r} sets {bound}"
                )
        if "vtkMRMLScalarVolumeNode" in bound and "vtkMRMLLabelMapVolumeNode" not in bound:
            show = _ui_property(widget, "showChildNodeTypes")
            hide = _ui_property(widget, "hideChildNodeTypes")
            hidden = show is not None and (show.findtext("bool") or "").strip() == "false"
            hidden = hidden or (
                hide is not None and "vtkMRMLLabelMapVolumeNode" in [s.text for s in hide.iter("string")]
            )
            if not hidden:
                problems.append(
                    f"{ui.name}: {name} ({field!r}: {bound}) lists label maps; set showChildNodeTypes false "
                    "or hideChildNodeTypes vtkMRMLLabelMapVolumeNode, or name vtkMRMLLabelMapVolumeNode in "
                    "the field's type if it takes label maps"
                )
    return problems


# ------------------------------------------------------------------------------------------ the repo


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
@pytest.mark.parametrize(
    "check",
    [
        check_ui_parses,
        check_ui_references,
        check_parameter_names,
        check_cmake_lists,
        check_lib_has_no_qt,
        check_node_selectors,
    ],
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
    """Slicer installs exactly what pyproject asks for, less torch (the PyTorch extension's), vtk and the
    packages Slicer ships (its own builds, never replaced)."""
    from packaging.requirements import Requirement
    from XRayCardiacCommonLib.dependencies import SLICER_PACKAGES

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    shipped = {name.lower() for name in (*SLICER_PACKAGES, "torch", "vtk")}
    wanted = sorted(d.replace(" ", "") for d in project if Requirement(d).name.lower() not in shipped)
    req = REPO / "XRayCardiacCommon" / "Resources" / "requirements.txt"
    lines = [ln.strip() for ln in req.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert sorted(lines) == wanted, f"{req} differs from pyproject.toml: {sorted(set(lines) ^ set(wanted))}"


def test_parameter_node_types_follow_the_binding() -> None:
    types = parameter_node_types(REPO / "CardiacSynth" / "CardiacSynth.py")
    assert types["templateVolume"] == ["vtkMRMLScalarVolumeNode"], types
    assert types["templateSegmentation"] == ["vtkMRMLSegmentationNode", "vtkMRMLLabelMapVolumeNode"], types
    assert "numSamples" not in types


def test_label_maps_in_an_image_selector_are_caught(broken: Path) -> None:
    ui = broken / "Resources/UI/XRayToCT.ui"
    text = ui.read_text(encoding="utf-8")
    start = text.index('name="paVolumeSelector"')
    end = text.index("</widget>", start)
    ui.write_text(
        text[:start] + text[start:end].replace("<bool>false</bool>", "<bool>true</bool>", 1) + text[end:],
        encoding="utf-8",
    )
    problems = check_node_selectors(broken)
    assert len(problems) == 1 and "paVolumeSelector" in problems[0] and "label maps" in problems[0], problems


def test_ui_node_types_the_binding_replaces_are_caught(broken: Path) -> None:
    ui = broken / "Resources/UI/XRayToCT.ui"
    text = ui.read_text(encoding="utf-8")
    start = text.index('name="referenceCTSelector"')
    end = text.index("</widget>", start)
    part = text[start:end].replace(
        "<string>vtkMRMLScalarVolumeNode</string>", "<string>vtkMRMLVectorVolumeNode</string>", 1
    )
    ui.write_text(text[:start] + part + text[end:], encoding="utf-8")
    problems = check_node_selectors(broken)
    assert len(problems) == 1 and "referenceCTSelector" in problems[0], problems
