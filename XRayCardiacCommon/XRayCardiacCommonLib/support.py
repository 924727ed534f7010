"""Which 3D Slicer the extension supports, checked when a module loads.

XRayCardiac needs 3D Slicer 5.10 or newer: 5.10 is the first release on Python 3.12 (5.8 runs Python
3.9, older than the ``xraycardiac`` library's ``requires-python >= 3.10``). The module files, this file
and everything they import while Slicer loads them stay importable on Python 3.9, so that an older
Slicer shows ``unsupported_slicer_message`` instead of a SyntaxError or TypeError trace
(Testing/test_slicer_python39.py checks that). Nothing here imports ``xraycardiac``, Qt or ``slicer``.
"""

from __future__ import annotations

import sys

__all__ = [
    "MINIMUM_PYTHON_VERSION",
    "MINIMUM_SLICER_VERSION",
    "SLICER_PYTHON_VERSION",
    "unsupported_slicer_message",
]

MINIMUM_SLICER_VERSION = (5, 10)
"""Oldest supported 3D Slicer release (major, minor)."""

SLICER_PYTHON_VERSION = "3.12"
"""The Python of ``MINIMUM_SLICER_VERSION`` (Slicer's SuperBuild/External_python.cmake at v5.10.0)."""

MINIMUM_PYTHON_VERSION = (3, 10)
"""Oldest Python the bundled ``xraycardiac`` library runs on (pyproject.toml ``requires-python``)."""


def _dotted(version: tuple[int, ...] | None) -> str:
    return "unknown" if version is None else ".".join(str(v) for v in version)


def unsupported_slicer_message(
    slicer_version: tuple[int, ...] | None, python_version: tuple[int, ...] | None = None
) -> str | None:
    """The message to show on an unsupported Slicer, or None when this one is supported.

    Args:
        slicer_version: the running Slicer's (major, minor[, patch]); None when not inside the
            Slicer application (slicer-core, plain Python): then only Python is checked.
        python_version: the running Python's (major, minor[, micro]); ``sys.version_info`` when None.

    Returns:
        E.g. "XRayCardiac needs 3D Slicer 5.10 or newer (Python 3.12); this is Slicer 5.8.1 with
        Python 3.9.10. ...", or None.
    """
    python = tuple(python_version) if python_version is not None else tuple(sys.version_info[:3])
    too_old_slicer = slicer_version is not None and tuple(slicer_version[:2]) < MINIMUM_SLICER_VERSION
    if not too_old_slicer and python[:2] >= MINIMUM_PYTHON_VERSION:
        return None
    return (
        f"XRayCardiac needs 3D Slicer {_dotted(MINIMUM_SLICER_VERSION)} or newer (Python "
        f"{SLICER_PYTHON_VERSION}); this is Slicer {_dotted(slicer_version)} with Python {_dotted(python)}. "
        "Install a current 3D Slicer release from https://download.slicer.org and install the "
        "XRayCardiac extension there."
    )
