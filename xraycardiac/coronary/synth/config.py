"""What a coronary synthesis run makes: :class:`SynthConfig` (checked once, where it is built).

The renderers, injections and the shard syntax (``"i/N"``) live here too; the engine that writes the
pairs is :mod:`xraycardiac.coronary.synth.engine`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

from xraycardiac.coronary.synth.dataset import MAX_PAIRS_PER_TREE, MAX_TREES
from xraycardiac.jsonutil import is_int

__all__ = ["INJECTIONS", "RENDERERS", "SynthConfig", "check_renderer"]

RENDERERS = ("physics", "diffusion")
INJECTIONS = ("alternate", "left", "right", "both")
_REFERENCE_SIZE = 512  # the view sampler's default detector, whose field of view smaller images keep


def check_renderer(name: str) -> str:
    """Return ``name`` if it is a renderer (one of ``RENDERERS``); a ValueError naming ``renderer`` otherwise."""
    if name not in RENDERERS:
        raise ValueError(f"renderer: expected one of {RENDERERS}, got {name!r}")
    return name


def _positive_int(name: str, value: Any, upper: int | None = None) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    if not ok or (upper is not None and value > upper):
        limit = f" and <= {upper}" if upper is not None else ""
        raise ValueError(f"{name}: expected an integer >= 1{limit}, got {value!r}")


def _positive_number(name: str, value: Any) -> None:
    if not (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")


@dataclass(frozen=True)
class SynthConfig:
    """What a synthesis run makes (the same for every shard of one dataset).

    Attributes:
        trees: number of trees, indices 0..trees-1 (a shard takes its part of them).
        pairs_per_tree: view pairs per tree, 1..100.
        renderer: "physics" (Beer-Lambert, :mod:`~xraycardiac.coronary.synth.render_physics`) or "diffusion"
            (the mask-conditioned IDDPM, :mod:`~xraycardiac.coronary.synth.render_diffusion`).
        seed: base seed (>= 0); tree t uses phantom seed ``seed + t``, pair (t, k) draws from
            ``SeedSequence([seed, t, k])``.
        injection: "alternate" (default: LCA for even trees, RCA for odd), "left", "right", "both".
        image_size: detector (rows, cols) in pixels, or one int for a square; None = 512 x 512 for
            "physics", the model's own grid for "diffusion" (other sizes are resampled to it).
        pixel_spacing_mm: detector pixel size in mm, a number or a (lo, hi) range drawn per view;
            None = the view sampler's (0.3, 0.4) mm scaled by 512 / max(image_size), which keeps
            the field of view of a 512-pixel detector (~150-200 mm).
        keypoint_spacing_mm: arc-length spacing of the centreline keypoints, mm.
        overlap_px: radius of the overlap ambiguity flag, pixels.
        voxel_mm: voxel size of the rasterised tube, mm; None = the smallest detector pixel seen
            at the isocentre (lowest spacing x lowest SOD / highest SID), clipped to [0.25, 0.5].
        device: torch device of the projection ray marcher ("cpu", "cuda", "auto").
        renderer_config: ``PhysicsRendererConfig`` overrides (field -> value) for "physics";
            ``DiffusionSamplingConfig`` fields (model, steps, sampler) for "diffusion".
        phantom_config: ``CoronaryPhantomConfig`` overrides (all but ``seed``).
        labelmap: path of a coronary label map file (NRRD, NIfTI, MetaImage; read in RAS): tree 0
            is extracted from it (``trees`` must be 1) instead of grown from ``seed``; None =
            procedural trees.
        left_label: label value of the left coronary tree in ``labelmap`` (tree 0), or None to skip it.
        right_label: label value of the right coronary tree (tree 1), or None to skip it; may equal
            ``left_label`` when one label holds both trees (ImageCAS).
    """

    trees: int = 10
    pairs_per_tree: int = 4
    renderer: str = "physics"
    seed: int = 0
    injection: str = "alternate"
    image_size: int | tuple[int, int] | None = None
    pixel_spacing_mm: float | tuple[float, float] | None = None
    keypoint_spacing_mm: float = 5.0
    overlap_px: float = 3.0
    voxel_mm: float | None = None
    device: str = "cpu"
    renderer_config: Mapping[str, Any] = field(default_factory=dict)
    phantom_config: Mapping[str, Any] = field(default_factory=dict)
    labelmap: str | None = None
    left_label: int | None = 1
    right_label: int | None = 2

    def __post_init__(self) -> None:
        _positive_int("trees", self.trees, MAX_TREES)
        _positive_int("pairs_per_tree", self.pairs_per_tree, MAX_PAIRS_PER_TREE)
        check_renderer(self.renderer)
        if not (isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.seed >= 0):
            raise ValueError(f"seed: expected an integer >= 0, got {self.seed!r}")
        if self.injection not in INJECTIONS:
            raise ValueError(f"injection: expected one of {INJECTIONS}, got {self.injection!r}")
        size = self.image_size
        if size is not None:
            size = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
            if len(size) != 2:
                raise ValueError(f"image_size: expected an int or (rows, cols), got {self.image_size!r}")
            for s in size:
                _positive_int("image_size", s, 8192)
            object.__setattr__(self, "image_size", size)
        px = self.pixel_spacing_mm
        if px is not None:
            px = (px, px) if isinstance(px, int | float) and not isinstance(px, bool) else tuple(px)
            if len(px) != 2 or not px[0] <= px[1]:
                raise ValueError(
                    f"pixel_spacing_mm: expected a number or (lo, hi) with lo <= hi, got {self.pixel_spacing_mm!r}"
                )
            for p in px:
                _positive_number("pixel_spacing_mm", p)
            object.__setattr__(self, "pixel_spacing_mm", tuple(float(p) for p in px))
        _positive_number("keypoint_spacing_mm", self.keypoint_spacing_mm)
        if not (
            isinstance(self.overlap_px, int | float)
            and math.isfinite(self.overlap_px)
            and self.overlap_px >= 0
        ):
            raise ValueError(f"overlap_px: expected a number >= 0 pixels, got {self.overlap_px!r}")
        if self.voxel_mm is not None:
            _positive_number("voxel_mm", self.voxel_mm)
        for name in ("renderer_config", "phantom_config"):
            if not isinstance(getattr(self, name), Mapping):
                raise ValueError(
                    f"{name}: expected an object of field overrides, got {getattr(self, name)!r}"
                )
            object.__setattr__(self, name, dict(getattr(self, name)))
        if "seed" in self.phantom_config:
            raise ValueError(
                "phantom_config: 'seed' is set per tree (seed + tree index); use the seed parameter"
            )
        self._check_labelmap()
        self.renderer_settings()  # fail now on bad renderer settings (and an unknown diffusion model)
        self.view_config()  # fail now on bad detector overrides
        self.phantom_for(0)

    def _check_labelmap(self) -> None:
        """Validate ``labelmap``, ``left_label``, ``right_label`` (and ``trees`` with a label map)."""
        for name in ("left_label", "right_label"):
            value = getattr(self, name)
            if value is not None and not (is_int(value, numpy=True) and value >= 1):
                raise ValueError(
                    f"{name}: expected an integer label >= 1 or None (skip that side), got {value!r}"
                )
            if value is not None:
                object.__setattr__(self, name, int(value))
        if self.labelmap is None:
            return
        if not isinstance(self.labelmap, str | PathLike) or not str(self.labelmap).strip():
            raise ValueError(f"labelmap: expected the path of a label map file, got {self.labelmap!r}")
        object.__setattr__(self, "labelmap", str(self.labelmap))
        if self.left_label is None and self.right_label is None:
            raise ValueError("left_label, right_label: both are None; a label map needs at least one label")
        if self.trees != 1:
            raise ValueError(
                f"trees: a label map gives one coronary tree, so trees must be 1 with labelmap, got {self.trees}"
            )
        if not Path(self.labelmap).is_file():
            raise FileNotFoundError(f"labelmap: {self.labelmap} does not exist or is not a file")

    # ------------------------------------------------------------------------------ derived configs

    def view_config(self) -> Any:
        """The ``ViewSamplingConfig`` with this run's detector size and pixel spacing."""
        from xraycardiac.coronary.synth.views import ViewSamplingConfig

        base = ViewSamplingConfig()
        default = (base.detector_rows, base.detector_cols)
        if self.renderer == "diffusion":
            size = self.diffusion_model()[0].image_size
            default = (size, size)
        rows, cols = self.image_size or default
        px = self.pixel_spacing_mm
        if px is None:
            scale = _REFERENCE_SIZE / max(rows, cols)
            px = (base.pixel_spacing_mm[0] * scale, base.pixel_spacing_mm[1] * scale)
        return ViewSamplingConfig(detector_rows=rows, detector_cols=cols, pixel_spacing_mm=px)

    def resolved_voxel_mm(self) -> float:
        """The tube voxel size in mm (``voxel_mm`` or its default, see the class docstring)."""
        if self.voxel_mm is not None:
            return float(self.voxel_mm)
        v = self.view_config()
        at_iso = v.pixel_spacing_mm[0] * v.sod_mm[0] / v.sid_mm[1]
        return float(min(0.5, max(0.25, at_iso)))

    def renderer_settings(self) -> Any:
        """``PhysicsRendererConfig`` or ``DiffusionSamplingConfig`` (defaults plus ``renderer_config``)."""
        from xraycardiac.coronary.synth.render_diffusion import DiffusionSamplingConfig
        from xraycardiac.coronary.synth.render_physics import PhysicsRendererConfig

        cls = PhysicsRendererConfig if self.renderer == "physics" else DiffusionSamplingConfig
        try:
            return cls(**self.renderer_config)
        except TypeError as exc:
            raise ValueError(f"renderer_config: {exc} (renderer {self.renderer!r})") from None

    def physics_config(self) -> Any:
        """The ``PhysicsRendererConfig`` (defaults plus ``renderer_config``); renderer "physics" only."""
        if self.renderer != "physics":
            raise ValueError(f"physics_config: renderer is {self.renderer!r}")
        return self.renderer_settings()

    def diffusion_model(self) -> tuple[Any, dict[str, Any]]:
        """(AngioDiffusionConfig, provenance) of the diffusion model (sha256 checked); renderer "diffusion"."""
        settings = self.renderer_settings()
        try:
            config, source = _cached_model_info(settings.model)
        except (ValueError, FileNotFoundError) as exc:
            raise type(exc)(f"renderer_config.model: {exc}") from None
        if settings.sampler == "ddpm" and settings.steps != config.num_train_timesteps:
            raise ValueError(
                f"renderer_config.steps: the DDPM sampler runs the model's full chain of "
                f"{config.num_train_timesteps} steps, got {settings.steps}; use sampler 'ddim' for fewer"
            )
        return config, source

    def phantom_for(self, tree_index: int) -> Any:
        """The ``CoronaryPhantomConfig`` of tree ``tree_index`` (seed = seed + tree_index)."""
        from xraycardiac.phantoms.coronary import CoronaryPhantomConfig

        try:
            return CoronaryPhantomConfig(seed=self.seed + tree_index, **self.phantom_config)
        except TypeError as exc:
            raise ValueError(f"phantom_config: {exc}") from None

    def side_of(self, tree_index: int) -> tuple[str, tuple[int, ...]]:
        """(view set "left"/"right", opacified tree ids) of tree ``tree_index``."""
        alternate = "left" if tree_index % 2 == 0 else "right"
        if self.injection == "alternate":
            return alternate, ((0,) if alternate == "left" else (1,))
        if self.injection == "both":
            return alternate, (0, 1)
        return self.injection, ((0,) if self.injection == "left" else (1,))

    def generator_params(self) -> dict[str, Any]:
        """JSON-ready parameters stored in ``dataset.json`` (what determines every sample's bytes)."""
        phantom = asdict(self.phantom_for(0))
        phantom.pop("seed")
        views = asdict(self.view_config())
        return {
            "generator": "xraycardiac.jobs.coronary_synth",  # stored in dataset.json: kept as written
            "trees": self.trees,
            "pairs_per_tree": self.pairs_per_tree,
            "seed": self.seed,
            "tree_seed": "seed + tree index",
            "pair_seed": "numpy SeedSequence([seed, tree index, pair index])",
            "injection": self.injection,
            "keypoint_spacing_mm": float(self.keypoint_spacing_mm),
            "overlap_px": float(self.overlap_px),
            "voxel_mm": self.resolved_voxel_mm(),
            "views": views,
            "phantom": phantom,
            **({"tree_source": self.tree_source()} if self.labelmap is not None else {}),
        }

    def tree_source(self) -> dict[str, Any] | None:
        """JSON-ready record of the label map tree 0 comes from (file name, sha256, labels); None if procedural."""
        if self.labelmap is None:
            return None
        from xraycardiac.models.manifest import sha256_file

        path = Path(self.labelmap)
        return {
            "kind": "labelmap",
            "file": path.name,
            "sha256": sha256_file(path),
            "left_label": self.left_label,
            "right_label": self.right_label,
        }

    def renderer_params(self) -> dict[str, Any]:
        """JSON-ready renderer record for ``dataset.json`` (for "diffusion": the model's sha256 and config)."""
        if self.renderer == "physics":
            return {"name": self.renderer, "config": asdict(self.physics_config())}
        config, source = self.diffusion_model()
        settings = asdict(self.renderer_settings())
        return {"name": self.renderer, "config": {**settings, **source, "model_config": config.to_dict()}}


def _cached_model_info(model: str) -> tuple[Any, dict[str, Any]]:
    """``model_info`` once per (model, file state) in this process (it hashes the weights)."""
    from xraycardiac.coronary.synth.render_diffusion import model_info

    key = model
    p = Path(model)
    if p.exists():
        st = p.stat()
        key = f"{p.resolve()}:{st.st_mtime_ns}:{st.st_size}"
    if key not in _MODEL_INFO:
        _MODEL_INFO[key] = model_info(model)
    return _MODEL_INFO[key]


_MODEL_INFO: dict[str, tuple[Any, dict[str, Any]]] = {}
