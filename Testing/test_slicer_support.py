"""XRayCardiacCommonLib.support: the shared "needs Slicer 5.10" check, and that every module uses it."""

from __future__ import annotations

import ast

import pytest
from test_slicer_static import MODULES, REPO
from XRayCardiacCommonLib.support import MINIMUM_SLICER_VERSION, unsupported_slicer_message


@pytest.mark.parametrize(
    ("slicer", "python", "supported"),
    [
        ((5, 10), (3, 12, 10), True),
        ((5, 11, 0), (3, 12, 10), True),
        ((6, 0), (3, 13, 1), True),
        (None, (3, 11, 7), True),  # slicer-core or plain Python: only Python counts
        ((5, 8), (3, 9, 10), False),
        ((5, 6), (3, 9, 10), False),
        ((5, 9), (3, 12, 4), False),  # a 5.9 preview: older than the first supported release
        (None, (3, 9, 18), False),
    ],
)
def test_unsupported_slicer_message(slicer, python, supported: bool) -> None:
    message = unsupported_slicer_message(slicer, python)
    assert (message is None) == supported, message
    if message is not None:
        assert message.startswith("XRayCardiac needs 3D Slicer 5.10 or newer (Python 3.12); "), message
        shown = "unknown" if slicer is None else ".".join(map(str, slicer))
        assert f"this is Slicer {shown} with Python {'.'.join(map(str, python))}." in message, message


def test_minimum_is_5_10() -> None:
    assert MINIMUM_SLICER_VERSION == (5, 10)


def _calls(node: ast.AST) -> list[str]:
    """Names of the functions called in ``node``, in source order (``f()`` and ``x.f()`` both give "f")."""
    calls = sorted(
        (n for n in ast.walk(node) if isinstance(n, ast.Call)), key=lambda n: (n.lineno, n.col_offset)
    )
    return [getattr(n.func, "attr", getattr(n.func, "id", "")) for n in calls]


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_each_module_checks_the_slicer_version(module) -> None:
    """The module's __init__ notes an unsupported Slicer; its panel shows why before loading the .ui."""
    tree = ast.parse((module / f"{module.name}.py").read_text(encoding="utf-8"))
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    init = next(
        f for f in classes[module.name].body if isinstance(f, ast.FunctionDef) and f.name == "__init__"
    )
    assert "noteUnsupportedSlicer" in _calls(init), (
        f"{module.name}.__init__ does not call noteUnsupportedSlicer"
    )
    widget = classes.get(f"{module.name}Widget")
    if widget is None:  # XRayCardiacCommon: hidden, no panel
        return
    if not any(isinstance(f, ast.FunctionDef) and f.name == "setup" for f in widget.body):
        # the panel's setup is the shared base's (XRayCardiacCommon.XRayCardiacWidget)
        assert [ast.unparse(b) for b in widget.bases] == ["XRayCardiacCommon.XRayCardiacWidget"], widget.name
        common = ast.parse((REPO / "XRayCardiacCommon" / "XRayCardiacCommon.py").read_text(encoding="utf-8"))
        widget = next(n for n in common.body if isinstance(n, ast.ClassDef) and n.name == "XRayCardiacWidget")
    setup = next(f for f in widget.body if isinstance(f, ast.FunctionDef) and f.name == "setup")
    calls = _calls(setup)
    assert "showUnsupportedSlicer" in calls and calls.index("showUnsupportedSlicer") < calls.index(
        "loadUI"
    ), calls
