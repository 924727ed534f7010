"""xraycardiac: X-ray cardiac imaging research pipelines behind the XRayCardiac 3D Slicer extension.

Research use only; not for clinical decisions.
"""

from __future__ import annotations

__version__ = "0.1.0"

from xraycardiac.volume import Volume

__all__ = ["Volume", "__version__"]
