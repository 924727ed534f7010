"""Static checks of the Slicer modules that need no Slicer: .ui files, parameter nodes, CMake lists.

Each check is a function returning a list of problems (empty = fine); the tests run it on the real
modules and on a deliberately broken copy, so every check is shown to be able to fail.
"""

from __future__ import annotations

import ast
import json
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


def test_extension_catalog_entry() -> None:
    entry = json.loads((REPO / "SlicerXRayCardiac.json").read_text(encoding="utf-8"))
    allowed = {
        "$schema",
        "category",
        "scm_url",
        "scm_revision",
        "scm_type",
        "build_dependencies",
        "dicom_support_rule",
        "build_subdirectory",
        "enabled",
        "tier",
    }
    assert set(entry) <= allowed, f"unknown keys {sorted(set(entry) - allowed)}"
    assert {"$schema", "category", "scm_url"} <= set(entry), sorted(entry)
    assert entry["build_dependencies"] == ["PyTorch"], entry.get("build_dependencies")
    assert 1 <= entry["tier"] <= 5, entry["tier"]
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    category = re.search(r'set\(EXTENSION_CATEGORY\s+"([^"]+)"\)', cmake)
    assert category and category.group(1) == entry["category"], (
        category and category.group(1),
        entry["category"],
    )


def test_icons_are_128_png() -> None:
    from PIL import Image

    for icon in [REPO / "Resources" / "Icons" / "SlicerXRayCardiac.png"] + [
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


def test_extension_bundles_the_core_library():
    cmake = (REPO / "CMakeLists.txt").read_text()
    assert "install(DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}/xraycardiac" in cmake
    for url_var in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        url = cmake.split(f"set({url_var} ")[1].split(")")[0].strip('"')
        local = url.split("/main/")[1]
        assert (REPO / local).is_file(), f"{url_var} points to {local}, which is not in the repository"


# ------------------------------------------------------- Slicer < 5.10: a message, not a trace at load
#
# XRayCardiac needs Slicer >= 5.10 (Python 3.12); Slicer 5.8 runs Python 3.9. What Slicer runs when it
# loads a module file (its module-level code and the repository files that imports, transitively) must
# import under Python 3.9, so that the module can say "XRayCardiac needs 3D Slicer 5.10 or newer"
# (XRayCardiacCommonLib.support) instead of failing with a SyntaxError / TypeError trace.

SLICER_SYS_PATH = [
    *MODULES,
    REPO,
]  # Slicer puts every module folder on sys.path, and the library next to them


def _module_file(name: str, roots: list[Path]) -> Path | None:
    """The file ``import name`` loads from the repository (a package's ``__init__.py``), None if not ours."""
    parts = name.split(".")
    for root in roots:
        base = root.joinpath(*parts)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def _lazy_names(py: Path) -> dict[str, str]:
    """A package's PEP 562 ``_LAZY = {"name": "module", ...}`` table (empty when it has none)."""
    for node in ast.parse(py.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    return {}


def _load_time_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """(module, names) of the imports that run at import time: everything outside function bodies."""
    found: list[tuple[str, list[str]]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return  # runs when called, after the version check
        if isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def load_time_files(entry: Path, roots: list[Path] = SLICER_SYS_PATH) -> list[Path]:
    """The repository files that run when Slicer loads ``entry``: ``entry`` and its load-time imports, transitively.

    ``import a.b`` runs ``a/__init__.py`` and ``a/b.py``; ``from a import x`` runs ``a/__init__.py``, and
    ``a/x.py`` when x is a submodule or a lazy (PEP 562 ``_LAZY``) name of ``a``. Imports inside functions
    run later and are not followed.
    """
    seen: list[Path] = []
    todo = [entry]
    while todo:
        py = todo.pop()
        if py in seen:
            continue
        seen.append(py)
        for module, names in _load_time_imports(ast.parse(py.read_text(encoding="utf-8"))):
            parts = module.split(".")
            targets = [".".join(parts[: i + 1]) for i in range(len(parts))]
            package = _module_file(module, roots)
            lazy = _lazy_names(package) if package is not None else {}
            targets += [lazy.get(n, f"{module}.{n}") for n in names]
            todo += [f for f in (_module_file(t, roots) for t in targets) if f is not None]
    return seen


def _has_pep604_union(node: ast.AST | None) -> bool:
    return node is not None and any(
        isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(node)
    )


def check_python39_load(py: Path) -> list[str]:
    """Python 3.9 syntax, and no ``X | Y`` evaluated at run time: in isinstance / issubclass, or in
    annotations that Python evaluates (files without ``from __future__ import annotations``)."""
    text = py.read_text(encoding="utf-8")
    try:
        tree = ast.parse(text, filename=str(py), feature_version=(3, 9))
    except SyntaxError as exc:
        return [f"{py}:{exc.lineno}: not Python 3.9 syntax ({exc.msg})"]
    postponed = any(
        isinstance(n, ast.ImportFrom)
        and n.module == "__future__"
        and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    problems = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
            and _has_pep604_union(node.args[1])
        ):
            problems.append(f"{py}:{node.lineno}: {node.func.id}(..., X | Y) is a TypeError on Python 3.9")
    if postponed:
        return problems

    def annotations(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and _has_pep604_union(arg.annotation):
                    problems.append(f"{py}:{arg.lineno}: annotation of {arg.arg!r} uses X | Y")
            if _has_pep604_union(node.returns):
                problems.append(f"{py}:{node.lineno}: return annotation of {node.name}() uses X | Y")
            in_function = True
        elif isinstance(node, ast.AnnAssign) and not in_function and _has_pep604_union(node.annotation):
            problems.append(f"{py}:{node.lineno}: annotation uses X | Y")
        for child in ast.iter_child_nodes(node):
            annotations(child, in_function)

    annotations(tree, False)
    return problems


def _python39() -> str | None:
    """A Python 3.9 interpreter (Slicer 5.8's Python), or None."""
    import glob
    import os
    import subprocess

    candidates = [os.environ.get("XRAYCARDIAC_PYTHON39"), shutil.which("python3.9")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    for exe in filter(None, candidates):
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
        except OSError:
            continue
        if out.returncode == 0 and out.stdout.startswith("Python 3.9"):
            return exe
    return None


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_module_load_is_python39_clean(module: Path) -> None:
    files = load_time_files(module / f"{module.name}.py")
    problems = [p for f in files for p in check_python39_load(f)]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_module_load_needs_no_library(module: Path) -> None:
    """Loading a module file runs no file of ``xraycardiac``: its dependencies may not be installed yet
    (and it needs Python >= 3.10); the shared version check is among the files that load."""
    files = load_time_files(module / f"{module.name}.py")
    names = sorted(f.relative_to(REPO).as_posix() for f in files)
    assert not [n for n in names if n.startswith("xraycardiac/")], names
    assert "XRayCardiacCommon/XRayCardiacCommonLib/support.py" in names, names


@pytest.mark.parametrize("module", MODULES, ids=MODULE_IDS)
def test_module_load_compiles_under_python39(module: Path, tmp_path: Path) -> None:
    import subprocess

    python39 = _python39()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter (set XRAYCARDIAC_PYTHON39 to one)")
    files = [str(f) for f in load_time_files(module / f"{module.name}.py")]
    script = (
        "import py_compile, sys\n"
        "for i, f in enumerate(sys.argv[2:]):\n"
        "    py_compile.compile(f, cfile=f'{sys.argv[1]}/{i}.pyc', doraise=True)\n"
    )
    out = subprocess.run(
        [python39, "-c", script, str(tmp_path), *files], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]


def test_load_time_files_follow_imports() -> None:
    names = {f.relative_to(REPO).as_posix() for f in load_time_files(REPO / "XRayToCT" / "XRayToCT.py")}
    assert {
        "XRayToCT/XRayToCT.py",
        "XRayToCT/XRayToCTLib/__init__.py",
        "XRayToCT/XRayToCTLib/choices.py",
        "XRayCardiacCommon/XRayCardiacCommon.py",
    } <= names, names
    assert "XRayToCT/XRayToCTLib/generate.py" not in names, "imported inside methods only"


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ("from __future__ import annotations\ndef f(x):\n    return isinstance(x, int | float)\n", True),
        ("def f(x: int | None) -> None:\n    pass\n", True),
        ("def f(x) -> int | None:\n    pass\n", True),
        ("class C:\n    x: int | None = None\n", True),
        ("def f(x):\n    match x:\n        case 1:\n            pass\n", True),
        ("from __future__ import annotations\ndef f(x: int | None) -> int | None:\n    pass\n", False),
        ("def f(x: 'int | None') -> None:\n    y: int | None = x\n", False),
        ("def f(x):\n    return isinstance(x, (int, float)) and x | 1\n", False),
    ],
)
def test_python39_check_can_fail(tmp_path: Path, source: str, caught: bool) -> None:
    py = tmp_path / "mod.py"
    py.write_text(source, encoding="utf-8")
    assert bool(check_python39_load(py)) == caught, check_python39_load(py)


def test_lazy_import_of_the_library_is_followed(tmp_path: Path) -> None:
    """A load-time ``from Pkg import name`` of a lazy name runs the module the name comes from."""
    (tmp_path / "Pkg").mkdir()
    (tmp_path / "Pkg" / "__init__.py").write_text('_LAZY = {"heavy": "Pkg.heavy"}\n', encoding="utf-8")
    (tmp_path / "Pkg" / "heavy.py").write_text("import xraycardiac.geometry\n", encoding="utf-8")
    (tmp_path / "M.py").write_text("from Pkg import heavy\n", encoding="utf-8")
    names = {
        f.relative_to(REPO).as_posix()
        for f in load_time_files(tmp_path / "M.py", [tmp_path, REPO])
        if f.is_relative_to(REPO)
    }
    assert "xraycardiac/geometry/__init__.py" in names, names


def test_version_check_runs_under_python39() -> None:
    """The shared check itself runs on Slicer 5.8's Python and names both versions."""
    import subprocess

    python39 = _python39()
    if python39 is None:
        pytest.skip("no Python 3.9 interpreter (set XRAYCARDIAC_PYTHON39 to one)")
    script = (
        "import sys\n"
        "import XRayCardiacCommonLib\n"
        "from XRayCardiacCommonLib.support import unsupported_slicer_message\n"
        "print(unsupported_slicer_message((5, 8)))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('xraycardiac', 'numpy', 'torch')))\n"
    )
    out = subprocess.run(
        [python39, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO / "XRayCardiacCommon",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    message, imported = out.stdout.strip().splitlines()
    assert message.startswith(
        "XRayCardiac needs 3D Slicer 5.10 or newer (Python 3.12); this is Slicer 5.8 "
    ), message
    assert "with Python 3.9." in message, message
    assert imported == "[]", imported


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


# --------------------------------------------- self-tests on a fresh Slicer: install or skip, say why

SELFTEST_GUARD = "dependenciesForSelfTest"
_JOB_CALLS = {"simulate", "synthesize", "generate", "run", "wait_and_import"}


def check_selftests_guard_dependencies(py: Path) -> list[str]:
    """Every ``test_*`` method of a module's self-test that runs a job or imports the library (torch,
    kornia, scipy through the Lib code) first passes ``XRayCardiacCommon.dependenciesForSelfTest``,
    which installs the dependencies (when asked to) or skips with the reason."""
    problems = []
    for cls in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
        if not (isinstance(cls, ast.ClassDef) and cls.name.endswith("Test")):
            continue
        for fn in cls.body:
            if not (isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_")):
                continue
            needs = any(
                (isinstance(n, ast.Attribute) and n.attr in _JOB_CALLS and isinstance(n.ctx, ast.Load))
                or (
                    isinstance(n, ast.ImportFrom)
                    and (n.module or "").split(".")[0].endswith("Lib")
                    or isinstance(n, ast.ImportFrom)
                    and (n.module or "").startswith("xraycardiac")
                )
                for n in ast.walk(fn)
            )
            if not needs:
                continue
            body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            first = body[0] if body else None
            guarded = isinstance(first, ast.If) and any(
                isinstance(n, ast.Attribute) and n.attr == SELFTEST_GUARD for n in ast.walk(first.test)
            )
            if not guarded:
                problems.append(
                    f"{py.name}:{fn.lineno}: {cls.name}.{fn.name} needs the Python dependencies but does not "
                    f"start with 'if not XRayCardiacCommon.{SELFTEST_GUARD}(self, ...): return'"
                )
    return problems


@pytest.mark.parametrize(
    "module", [m for m in MODULES if m.name != "XRayCardiacCommon"], ids=lambda m: m.name
)
def test_selftests_install_or_skip(module: Path) -> None:
    problems = check_selftests_guard_dependencies(module / f"{module.name}.py")
    assert problems == [], "\n".join(problems)


def test_unguarded_selftest_is_caught(tmp_path: Path) -> None:
    py = tmp_path / "M.py"
    py.write_text(
        "class MTest:\n"
        "    def test_a(self):\n"
        "        '''doc'''\n"
        "        if not XRayCardiacCommon.dependenciesForSelfTest(self, 'M'):\n"
        "            return\n"
        "        logic.simulate(p)\n"
        "    def test_b(self):\n"
        "        from XRayToCTLib.generate import installed_x2ct_models\n"
        "    def test_c(self):\n"
        "        self.assertEqual(1, 1)\n",
        encoding="utf-8",
    )
    problems = check_selftests_guard_dependencies(py)
    assert len(problems) == 1 and "test_b" in problems[0], problems
