"""The demo's sizes, views, model names and sections (its own settings; the library's defaults are not
changed by them)."""

from __future__ import annotations

# Views rendered for both CTs: the two X2CT-GAN presets and one oblique angiography-like pose.
DEMO_VIEWS = [
    {"name": "PA", "preset": "pa"},
    {"name": "Lateral", "preset": "lateral"},
    {"name": "LAO30_CRA20", "preset": "pa", "primary_angle_deg": 30.0, "secondary_angle_deg": 20.0},
]
REAL_CT_SPACING_MM = 2.0  # resampled for a CPU demo; the library renders any resolution
X2CT_DEMO_MODEL = "x2ct-demo"  # the shipped CLS-DM bundle (xraycardiac/models/manifest.json)
# The demo's own sampler settings (library defaults in brackets): fewer steps and cases keep the
# whole demo near 2 minutes on 2 CPU cores; the report states each.
DEMO_ANGIO_DDIM_STEPS = 20  # coronary diffusion renderer (50)
DEMO_CARDIAC_CASES = 1  # cardiac-synth n (4)
DEMO_CARDIAC_STEPS = 10  # TCDM DDIM steps of the kept image (20)
DEMO_CARDIAC_SSV_STEPS = (5, 10, 20)  # skip-sampling-variance step counts ((10, 20, 50))
DEMO_X2CT_STEPS = 10  # CLS-DM latent sampler steps (20)
DEMO_X2CT_SAMPLES = 3  # samples averaged; their std is the uncertainty (4)

# (key, title, weight of the section in the overall fraction and ETA: its CPU seconds measured on a
# 2-core CPU, so the overall percentage advances with the work done)
SECTIONS: tuple[tuple[str, str, float], ...] = (
    ("real_ct", "real chest CT: simulated radiographs", 13.0),
    ("coronary", "coronary angiograms: renderers, matches, 3D centreline", 45.0),
    ("cardiac", "CardiacSynth: synthetic cardiac CT", 48.0),
    ("cardiac_real", "CardiacSynth: real chest CT + TotalSegmentator labels as the template", 20.0),
    ("x2ct", "XRayToCT: CT from a PA + lateral pair", 16.0),
    ("phantom", "chest phantom: simulated radiographs", 6.0),
    ("report", "writing the report", 0.5),
)

MATCHER_DEMO = "coronary-matcher-demo"
FOUNDATION_DEMO = "dinov2:angio-foundation-demo"
