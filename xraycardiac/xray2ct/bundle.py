"""An "x2ct model": the three trained parts of XRayToCT (CLS-DM) in one folder, checked as a whole.

Layout (format ``xraycardiac.x2ct_bundle``, version 1), written by :func:`write_bundle`::

    OUT/autoencoder.pt   the 3D KL autoencoder (with latent_scale and its data config)
    OUT/encoder.pt       the X-ray encoder
    OUT/ldm.pt           the latent diffusion model
    OUT/bundle.json      format, version, name, mode ("biplanar": PA + lateral | "single": PA),
                         views, the cache's data config (cube grid, voxel size, HU window, C-arm
                         distances, DRR scale), latent_scale, per part {file, sha256, config} and how
                         each part was trained (its model.json: name, version, command, data, notes)
    OUT/model.json       manifest entry whose ``file`` is bundle.json (so its sha256 covers the parts'
                         sha256s) and whose config summarises the bundle

Checks. Writing and loading refuse parts that do not fit together, naming the file and the field:
the encoder's ``grid``, ``latent_channels`` and ``latent_factor`` against the autoencoder's grid,
latent channels and downsampling; its ``view_size`` against the data config's view size; the LDM's
``latent_channels`` / ``cond_channels`` against the autoencoder / encoder, its levels against the
latent grid, its global embedding's ``n_views``; and, where a part's ``model.json`` records what it
was trained with (``autoencoder_sha256``, ``encoder_sha256``, from :mod:`xraycardiac.xray2ct.train`),
that those are the bundled files. Loading also checks every file's sha256 against bundle.json and
bundle.json's against model.json (a folder) or the model manifest (a name).

Model cache: ``xraycardiac models import`` copies only model.json and the file it names, so a bundle
is installed with :func:`import_bundle` (``xraycardiac x2ct install FOLDER`` or ``x2ct bundle
--install``): it copies the three parts, sha256-verified, into the cache folder of the entry and then
registers the entry with :func:`xraycardiac.models.import_model`. :func:`load_bundle` takes a folder
or such a name.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xraycardiac.models.weights import ModelSource, locate_model
from xraycardiac.outputs import atomic_path, write_json_atomic
from xraycardiac.xray2ct.autoencoder import X2CTAutoencoderConfig, X2CTAutoencoderKL, load_weights
from xraycardiac.xray2ct.data import X2CTDataConfig
from xraycardiac.xray2ct.encoder import XRayEncoder, XRayEncoderConfig, load_encoder
from xraycardiac.xray2ct.ldm import X2CTDenoiser, X2CTGeneration, X2CTLDMConfig, generate, load_ldm

__all__ = [
    "BUNDLE_FORMAT",
    "BUNDLE_JSON",
    "MODES",
    "PART_FILES",
    "RunSource",
    "X2CTBundle",
    "check_autoencoder_data",
    "check_encoder_fits",
    "check_ldm_fits",
    "import_bundle",
    "load_bundle",
    "locate_run",
    "view_names",
    "write_bundle",
]

BUNDLE_FORMAT = "xraycardiac.x2ct_bundle"
BUNDLE_VERSION = 1
BUNDLE_JSON = "bundle.json"
MODEL_JSON = "model.json"
PART_FILES: dict[str, str] = {"autoencoder": "autoencoder.pt", "encoder": "encoder.pt", "ldm": "ldm.pt"}
MODES = {2: "biplanar", 1: "single"}
INTENDED_USE = "research only, not for clinical use"
SIDE_FILES = ("input_stats.json", "uncertainty.json")
"""Files made after training that travel with a bundle folder (input statistics, uncertainty calibration)."""


def view_names(n_views: int) -> tuple[str, ...]:
    """The named views an encoder of ``n_views`` takes, in its input order: ("pa",) or ("pa", "lateral")."""
    return ("pa", "lateral")[:n_views]


# --- where a trained part is ----------------------------------------------------------------------

# A located weights file (file, sha256, manifest entry or None) and how it is found: a run folder
# (model.json + weights), a weights file, or a manifest name; see xraycardiac.models.weights.
RunSource = ModelSource
locate_run = locate_model


# --- do the parts fit ------------------------------------------------------------------------------


def _raise_mismatch(where: str, cls: str, rows: list[tuple[str, Any, Any, str]]) -> None:
    bad = [(name, got, want, what) for name, got, want, what in rows if got != want]
    if bad:
        text = "; ".join(f"{cls}.{n} is {g!r} but {what} is {w!r}" for n, g, w, what in bad)
        raise ValueError(f"{where}: does not fit the other parts: {text}")


def check_autoencoder_data(
    ae_data_config: dict[str, Any] | None, data_config: X2CTDataConfig, where: str
) -> None:
    """The autoencoder's training cube (grid, voxel size, HU window) must be the data config's.

    Raises:
        ValueError: naming ``where`` and the differing X2CTDataConfig fields.
    """
    if ae_data_config is None:
        raise ValueError(
            f"{where}: the autoencoder records no data_config (train it with train_x2ct_autoencoder)"
        )
    ae = X2CTDataConfig.from_dict(ae_data_config, where=f"{where} data_config")
    rows = [(name, getattr(ae, name), getattr(data_config, name), "the data config's")
            for name in ("grid", "spacing_mm", "hu_window")]  # fmt: skip
    _raise_mismatch(where, "X2CTDataConfig (autoencoder's)", rows)


def check_encoder_fits(
    encoder: XRayEncoderConfig, autoencoder: X2CTAutoencoderConfig, data_config: X2CTDataConfig, where: str
) -> None:
    """Encoder config vs the autoencoder and the data (grid, latent, views); a ValueError naming ``where``."""
    rows = [
        ("grid", encoder.grid, autoencoder.grid, "the autoencoder's grid"),
        ("latent_channels", encoder.latent_channels, autoencoder.latent_channels,
         "the autoencoder's latent_channels"),
        ("latent_factor", encoder.latent_factor, autoencoder.downsample_factor,
         "the autoencoder's downsampling factor"),
        ("view_size", encoder.view_size, data_config.image_size, "the data config's view size (pixels)"),
    ]  # fmt: skip
    _raise_mismatch(where, "XRayEncoderConfig", rows)
    missing = [v for v in view_names(encoder.n_views) if v not in data_config.views]
    if missing:
        raise ValueError(
            f"{where}: XRayEncoderConfig.n_views is {encoder.n_views} (views {list(view_names(encoder.n_views))}) "
            f"but the data config has views {list(data_config.views)} (missing {missing})"
        )


def check_ldm_fits(
    ldm: X2CTLDMConfig, encoder: XRayEncoderConfig, autoencoder: X2CTAutoencoderConfig, where: str
) -> None:
    """LDM config vs the autoencoder's latent and the encoder's condition map; a ValueError naming ``where``."""
    rows = [
        ("latent_channels", ldm.latent_channels, autoencoder.latent_channels,
         "the autoencoder's latent_channels"),
        ("cond_channels", ldm.cond_channels, encoder.latent_channels, "the encoder's latent_channels"),
    ]  # fmt: skip
    _raise_mismatch(where, "X2CTLDMConfig", rows)
    latent_grid = autoencoder.latent_shape[1]
    if latent_grid % ldm.downsample_factor:
        raise ValueError(
            f"{where}: X2CTLDMConfig.channels has {len(ldm.channels)} levels (factor {ldm.downsample_factor}), "
            f"which does not divide the latent grid {latent_grid}"
        )
    if ldm.global_embedding and ldm.n_views > encoder.n_views:
        raise ValueError(
            f"{where}: X2CTLDMConfig.n_views is {ldm.n_views} but the encoder takes {encoder.n_views} view(s)"
        )


def _check_trained_with(part: str, record: dict[str, Any], shas: dict[str, str], where: str) -> None:
    """A part's training record (``<other>_sha256``) must name the bundled files."""
    for other in ("autoencoder", "encoder"):
        key = f"{other}_sha256"
        if record.get(key) is not None and other in shas and record[key] != shas[other]:
            raise ValueError(
                f"{where}: the {part} was trained with another {other} ({key} {record[key][:12]}... in its "
                f"model.json) than the bundled {PART_FILES[other]} ({shas[other][:12]}...); retrain it or "
                "bundle the parts it was trained with"
            )


# --- the loaded model ------------------------------------------------------------------------------


@dataclass
class X2CTBundle:
    """A loaded x2ct model (eval mode, on one device).

    Attributes:
        autoencoder: the 3D KL autoencoder (its ``decode`` turns latent / latent_scale into CT).
        encoder: the X-ray encoder.
        ldm: the latent diffusion denoiser.
        latent_scale: the autoencoder's latent scale factor.
        data_config: the cube and view geometry the parts were trained on.
        mode: "biplanar" (PA + lateral) or "single" (PA).
        views: ("pa", "lateral") or ("pa",), the encoder's input order.
        info: the bundle.json content.
        source: {"model", "version", "folder", "bundle_sha256", "sha256": {part: sha256}}.
    """

    autoencoder: X2CTAutoencoderKL
    encoder: XRayEncoder
    ldm: X2CTDenoiser
    latent_scale: float
    data_config: X2CTDataConfig
    mode: str
    views: tuple[str, ...]
    info: dict[str, Any]
    source: dict[str, Any]

    @property
    def view_size(self) -> int:
        """Pixels per side of the views the encoder takes."""
        return self.encoder.config.view_size

    def generate(
        self,
        views: Any,
        projection_matrices: Any,
        ijk_to_ras: Any,
        n_samples: int = 4,
        steps: int | None = None,
        seed: int = 0,
        progress: Callable[[int, int], None] | None = None,
    ) -> X2CTGeneration:
        """CT from views: :func:`xraycardiac.xray2ct.ldm.generate` with this bundle's parts.

        Args:
            views: (B, V, S, S) views in view units (line integral / (mu_water x drr_water_mm)).
            projection_matrices: (V, 3, 4) RAS mm -> pixel of the S x S views.
            ijk_to_ras: (4, 4) of the output cube (``data_config.grid``³).
            n_samples: K; the std needs K >= 2 (None for K = 1).
            steps: sampler steps (None: the LDM's default).
            seed: noise seed.
            progress: ``progress(i, n)`` after each sampler step.
        """
        return generate(
            self.encoder, self.autoencoder.decode, self.ldm, views, projection_matrices, ijk_to_ras,
            self.latent_scale, n_samples=n_samples, steps=steps, seed=seed, uncertainty=n_samples >= 2,
            progress=progress,
        )  # fmt: skip


def _configs_fit(
    ae_cfg: X2CTAutoencoderConfig,
    ae_extras: dict[str, Any],
    enc_cfg: XRayEncoderConfig,
    ldm_cfg: X2CTLDMConfig,
    data_config: X2CTDataConfig,
    files: dict[str, str],
) -> None:
    check_autoencoder_data(ae_extras.get("data_config"), data_config, files["autoencoder"])
    if not (isinstance(ae_extras.get("latent_scale"), int | float) and ae_extras["latent_scale"] > 0):
        raise ValueError(f"{files['autoencoder']}: no latent_scale (train it with train_x2ct_autoencoder)")
    check_encoder_fits(enc_cfg, ae_cfg, data_config, files["encoder"])
    check_ldm_fits(ldm_cfg, enc_cfg, ae_cfg, files["ldm"])


def _training_record(src: RunSource) -> dict[str, Any] | None:
    if src.entry is None:
        return None
    keep = ("name", "version", "sha256", "training_data", "training_command", "description")
    record = {k: src.entry.get(k) for k in keep}
    record.update({k: v for k, v in src.config.items() if k.endswith("_sha256")})
    return record


def write_bundle(
    out: str | os.PathLike[str],
    autoencoder: str | os.PathLike[str],
    encoder: str | os.PathLike[str],
    ldm: str | os.PathLike[str],
    *,
    name: str = "x2ct-model",
    version: str = "0.1.0",
    description: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Pack three trained parts into a bundle folder (see the module docstring), atomically.

    Args:
        out: the bundle folder (absent or empty, or replaced with ``overwrite``).
        autoencoder, encoder, ldm: run folders (``model.json`` + ``model.pt`` from ``xraycardiac
            train x2ct-...``), weights files, or model names.
        name, version: manifest name and version of the bundle.
        description: one line for listings (default: mode, grid and the parts' names).
        overwrite: replace a non-empty ``out``.

    Returns:
        The bundle.json content.

    Raises:
        ValueError: parts that do not fit together (names the file and the field), a part trained
            with other files than the bundled ones, bad files.
        FileNotFoundError: a missing part.
        FileExistsError: ``out`` is not empty and ``overwrite`` is False.
    """
    from xraycardiac.models import ModelEntry

    srcs = {"autoencoder": locate_run(autoencoder, "autoencoder"), "encoder": locate_run(encoder, "encoder"),
            "ldm": locate_run(ldm, "ldm")}  # fmt: skip
    files = {part: str(s.file) for part, s in srcs.items()}
    _, ae_cfg, ae_extras = load_weights(srcs["autoencoder"].file)
    enc_cfg = load_encoder(srcs["encoder"].file).config
    ldm_cfg = load_ldm(srcs["ldm"].file).config
    if ae_extras.get("data_config") is None:
        raise ValueError(f"{files['autoencoder']}: the autoencoder records no data_config")
    data_config = X2CTDataConfig.from_dict(
        ae_extras["data_config"], where=f"{files['autoencoder']} data_config"
    )
    enc_data = srcs["encoder"].config.get("data_config")
    if enc_data is not None:  # the encoder's views were rendered with its cache's geometry: use that
        data_config = X2CTDataConfig.from_dict(enc_data, where=f"{files['encoder']} data_config")
    _configs_fit(ae_cfg, ae_extras, enc_cfg, ldm_cfg, data_config, files)
    shas = {part: s.sha256 for part, s in srcs.items()}
    for part in ("encoder", "ldm"):
        _check_trained_with(part, srcs[part].config, shas, files[part])
    mode = MODES[enc_cfg.n_views]
    info = {
        "format": BUNDLE_FORMAT,
        "version": BUNDLE_VERSION,
        "name": name,
        "model_version": version,
        "mode": mode,
        "views": list(view_names(enc_cfg.n_views)),
        "data_config": data_config.to_dict(),
        "latent_scale": float(ae_extras["latent_scale"]),
        "intended_use": INTENDED_USE,
        "files": {part: {"file": PART_FILES[part], "sha256": shas[part]} for part in PART_FILES},
        "configs": {"autoencoder": ae_cfg.to_dict(), "encoder": enc_cfg.to_dict(), "ldm": ldm_cfg.to_dict()},
        "training": {part: _training_record(s) for part, s in srcs.items()},
    }
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise FileExistsError(
            f"out: {out} exists and is not an empty folder; choose another or pass overwrite"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    work.mkdir()
    try:
        for part, s in srcs.items():
            shutil.copyfile(s.file, work / PART_FILES[part])
        write_json_atomic(work / BUNDLE_JSON, info, indent=2, allow_nan=False, default=None)
        from xraycardiac.models import sha256_file

        trained = ", ".join(
            f"{p} {(r or {}).get('name', Path(files[p]).name)}" for p, r in info["training"].items()
        )
        entry = ModelEntry(
            name=name, version=version, file=BUNDLE_JSON, sha256=sha256_file(work / BUNDLE_JSON),
            licence="Apache-2.0",
            training_data="; ".join(f"{p}: {(r or {}).get('training_data', 'unknown')}"
                                    for p, r in info["training"].items()),
            training_command=" && ".join(f"{(r or {}).get('training_command', '?')}"
                                         for r in info["training"].values()),
            intended_use=INTENDED_USE,
            config={"format": BUNDLE_FORMAT, "mode": mode, "views": info["views"], "grid": data_config.grid,
                    "spacing_mm": data_config.spacing_mm, "hu_window": list(data_config.hu_window),
                    "files": info["files"]},
            description=description or f"XRayToCT (CLS-DM) {mode} model, {data_config.grid}^3 cube of "
            f"{data_config.spacing_mm:g} mm; parts: {trained}",
        )  # fmt: skip
        write_json_atomic(work / MODEL_JSON, entry.to_dict(), indent=2, allow_nan=False, default=None)
        if out.exists():
            aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.rename(out, aside)
            os.rename(work, out)
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return info


def _read_bundle_json(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: not an x2ct bundle (format {BUNDLE_FORMAT!r} expected)")
    if info.get("version") != BUNDLE_VERSION:
        raise ValueError(
            f"{path}: bundle version {info.get('version')!r}; this library reads {BUNDLE_VERSION}"
        )
    files = info.get("files")
    if not isinstance(files, dict) or set(files) != set(PART_FILES):
        raise ValueError(f"{path}: 'files' must list {sorted(PART_FILES)}")
    return info


def _locate_bundle(model: str | os.PathLike[str]) -> tuple[Path, dict[str, Any]]:
    """(folder, manifest entry dict) of a bundle folder or name, bundle.json's sha256 checked."""
    p = Path(model)
    if not p.is_dir() and (len(p.parts) > 1 or p.exists()):
        raise FileNotFoundError(f"model: {p} is not a bundle folder")
    found = locate_model(model, "model")
    assert found.entry is not None  # a folder or a name: both have their entry
    return found.file.parent, found.entry


def load_bundle(model: str | os.PathLike[str], device: str | torch.device = "cpu") -> X2CTBundle:
    """Load an x2ct model from a bundle folder or by name from the model cache, every sha256 checked.

    Args:
        model: a bundle folder (:func:`write_bundle`) or the name of an installed one (:func:`import_bundle`).
        device: torch device of the loaded parts.

    Returns:
        The :class:`X2CTBundle`.

    Raises:
        FileNotFoundError: a missing folder, bundle.json or part.
        ValueError: an unknown name, a sha256 that differs from bundle.json / model.json, a foreign
            file, or a part whose config does not fit the others (names the file and the field).
    """
    from xraycardiac.models import sha256_file

    folder, entry = _locate_bundle(model)
    info = _read_bundle_json(folder / entry["file"])
    if info.get("model_version") != entry["version"]:
        raise ValueError(
            f"{folder / entry['file']}: model_version {info.get('model_version')!r} but the manifest entry "
            f"of {entry['name']!r} says {entry['version']!r}"
        )
    paths: dict[str, Path] = {}
    shas: dict[str, str] = {}
    for part in PART_FILES:
        rec = info["files"][part]
        path = folder / str(rec.get("file"))
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: the {part} of x2ct model {entry['name']!r} is missing; install bundles with "
                "`xraycardiac x2ct install FOLDER` (models import copies bundle.json only)"
            )
        sha = sha256_file(path)
        if sha != rec.get("sha256"):
            raise ValueError(
                f"{path}: sha256 {sha[:12]}... differs from {BUNDLE_JSON}'s {str(rec.get('sha256'))[:12]}... "
                f"(the {part} was modified or replaced); refused"
            )
        paths[part], shas[part] = path, sha
    dev = str(device)
    ae, ae_cfg, ae_extras = load_weights(paths["autoencoder"], device=dev)
    enc = load_encoder(paths["encoder"], device=dev)
    ldm = load_ldm(paths["ldm"], device=dev)
    data_config = X2CTDataConfig.from_dict(info.get("data_config") or {}, where=str(folder / BUNDLE_JSON))
    files = {part: str(path) for part, path in paths.items()}
    _configs_fit(ae_cfg, ae_extras, enc.config, ldm.config, data_config, files)
    for part in ("encoder", "ldm"):
        _check_trained_with(part, (info.get("training") or {}).get(part) or {}, shas, files[part])
    mode = MODES[enc.config.n_views]
    if info.get("mode") != mode:
        raise ValueError(f"{folder / BUNDLE_JSON}: mode {info.get('mode')!r} but {files['encoder']} takes "
                         f"{enc.config.n_views} view(s) ({mode})")  # fmt: skip
    for net in (ae, enc, ldm):
        net.requires_grad_(False)
    source = {"model": entry["name"], "version": entry["version"], "folder": str(folder),
              "bundle_sha256": entry["sha256"], "sha256": shas}  # fmt: skip
    return X2CTBundle(
        autoencoder=ae, encoder=enc, ldm=ldm, latent_scale=float(ae_extras["latent_scale"]),
        data_config=data_config, mode=mode, views=view_names(enc.config.n_views), info=info, source=source,
    )  # fmt: skip


def import_bundle(folder: str | os.PathLike[str]) -> Any:
    """Install a bundle folder into the model cache, so :func:`load_bundle` finds it by name.

    The parts are verified against bundle.json and copied (temporary name, then rename) into the
    entry's cache folder, then model.json + bundle.json are registered by
    :func:`xraycardiac.models.import_model` (which checks bundle.json's sha256).

    Returns:
        The registered :class:`xraycardiac.models.ModelEntry`.

    Raises:
        FileNotFoundError / ValueError: as :func:`load_bundle` on the folder, or a name/version
            already installed with other files.
    """
    from xraycardiac.models import import_model, list_models, models_dir, sha256_file

    src = Path(folder)
    if not src.is_dir():
        raise FileNotFoundError(f"folder: {src} is not a bundle folder")
    _, entry = _locate_bundle(src)
    info = _read_bundle_json(src / entry["file"])
    for known in list_models():  # refuse before a part of an installed bundle is overwritten
        if (known.name, known.version) == (entry["name"], entry["version"]) and known.sha256 != entry[
            "sha256"
        ]:
            raise ValueError(
                f"folder: x2ct model {entry['name']!r} version {entry['version']!r} is already {known.origin} "
                "with other files; give the new bundle another version"
            )
    dest = models_dir() / entry["name"] / entry["version"]  # the cache folder import_model uses
    created = not dest.exists()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        for rec in info["files"].values():
            path = src / str(rec["file"])
            if not path.is_file() or sha256_file(path) != rec["sha256"]:
                raise ValueError(
                    f"{path}: missing, or its sha256 differs from {BUNDLE_JSON}; nothing imported"
                )
            with atomic_path(dest / path.name) as tmp:
                shutil.copyfile(path, tmp)
        for (
            extra
        ) in SIDE_FILES:  # input check reference (xray2ct.input_stats), uncertainty weights, when made
            if (src / extra).is_file():
                with atomic_path(dest / extra) as tmp:
                    shutil.copyfile(src / extra, tmp)
        installed = import_model(src)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        raise
    if installed.directory is not None and Path(installed.directory) != dest:  # another cache layout
        for name in [rec["file"] for rec in info["files"].values()] + list(SIDE_FILES):
            if (dest / name).is_file():
                shutil.copyfile(dest / name, Path(installed.directory) / name)
    return installed


def package_bundle(bundle: str | os.PathLike[str], dest: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """Copy a bundle folder into a flat weights folder as ``<name>.json`` + ``<name>.<part>.pt``.

    The packaged weights folder (``xraycardiac/models/weights``) holds files of several models side by
    side, so the parts get the bundle's name as a prefix and the bundle JSON lists those names; the
    returned manifest entry (``file`` = ``<name>.json``, its sha256) goes into the packaged manifest.

    Raises:
        ValueError / FileNotFoundError: as :func:`load_bundle` for a bad bundle folder.
    """
    from xraycardiac.models import sha256_file

    src = Path(bundle)
    folder, entry = _locate_bundle(src)
    info = _read_bundle_json(folder / entry["file"])
    dest = Path(dest)
    for part, rec in info["files"].items():
        target = f"{name}.{part}.pt"
        shutil.copyfile(folder / rec["file"], dest / target)
        if sha256_file(dest / target) != rec["sha256"]:
            raise ValueError(f"{dest / target}: sha256 differs from {folder / entry['file']}'s after copying")
        rec["file"] = target
    info["name"] = name
    write_json_atomic(dest / f"{name}.json", info, indent=2, allow_nan=False, default=None)
    return {**entry, "name": name, "file": f"{name}.json", "sha256": sha256_file(dest / f"{name}.json")}
