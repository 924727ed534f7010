"""Procedural phantoms with exact ground truth (label maps, geometry): chest CT so far."""

from __future__ import annotations

from xraycardiac.phantoms.chest import HU, LABELS, ChestPhantomConfig, make_chest_phantom, write_phantom_pair

__all__ = ["HU", "LABELS", "ChestPhantomConfig", "make_chest_phantom", "write_phantom_pair"]

# Coronary trees on the chest phantom's heart (procedural, exact ground truth).
from xraycardiac.phantoms.coronary import CoronaryPhantomConfig, make_coronary_tree  # noqa: E402
from xraycardiac.phantoms.heart import HeartEllipsoid  # noqa: E402

__all__ += ["CoronaryPhantomConfig", "HeartEllipsoid", "make_coronary_tree"]

# Cardiac CT phantom: the nine CardiacSynth structures with a CT-like image (exact ground truth).
from xraycardiac.phantoms.cardiac import (  # noqa: E402
    CardiacPhantom,
    CardiacPhantomConfig,
    build_cardiac_phantom,
    make_cardiac_phantom,
)

__all__ += ["CardiacPhantom", "CardiacPhantomConfig", "build_cardiac_phantom", "make_cardiac_phantom"]

# A resumable folder of cardiac phantoms in the TCDM training layout (`xraycardiac cardiac phantoms`).
from xraycardiac.phantoms.cardiac_folder import write_cardiac_phantoms  # noqa: E402

__all__ += ["write_cardiac_phantoms"]
