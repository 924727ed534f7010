"""Choices and defaults of the XRayToCT panel, importable before ``xraycardiac`` is installed.

The module file builds its parameter node from these at Slicer start-up, when the Python
dependencies may not be installed yet, so nothing here imports ``xraycardiac``. The defaults are
``CArmGeometry.preset``'s (X2CT-GAN distances, 256 x 256 pixels of 2.8 mm); a test checks that they
stay equal.
"""

from __future__ import annotations

POSE_CHOICES = ("PA", "Lateral", "PA + lateral", "Custom")
"""Pose presets: the first three render the ``CArmGeometry.preset`` views, Custom one view as given."""

DEVICE_CHOICES = ("auto", "cpu", "cuda")
"""Where the DRR job renders; ``auto`` = CUDA when available, else the CPU."""

DEFAULT_SID_MM = 949.0
DEFAULT_SOD_MM = 541.0
DEFAULT_DETECTOR_ROWS = 256
DEFAULT_DETECTOR_COLS = 256
DEFAULT_PIXEL_SPACING_MM = 2.8

INTENSITY_CHOICES = ("auto", "line-integral", "log", "linear", "display")
"""What a radiograph node holds (``xraycardiac.radiograph.ENCODINGS`` plus ``auto``; a test keeps them equal)."""
