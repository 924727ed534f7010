"""XRayToCT (CLS-DM): CT volumes from a PA + lateral chest radiograph pair (or a PA alone) by latent diffusion.

The parts: the data pipeline (CT cubes in [-1, 1] with their DRR views, cached per case;
:mod:`~xraycardiac.xray2ct.data`), the 3D KL autoencoder (:mod:`~xraycardiac.xray2ct.autoencoder`),
the X-ray encoder aligned to its latent (:mod:`~xraycardiac.xray2ct.encoder`), the latent diffusion
model (:mod:`~xraycardiac.xray2ct.ldm`), the training of stages 2 and 3
(:mod:`~xraycardiac.xray2ct.train`), the x2ct model bundle (:mod:`~xraycardiac.xray2ct.bundle`) and
the SART / CGLS sparse-view baselines (:mod:`~xraycardiac.xray2ct.sparse_view`). Generation from
files is :mod:`~xraycardiac.xray2ct.pipeline` (run as the ``x2ct-generate`` job,
:mod:`xraycardiac.jobs.x2ct_generate`); the evaluation against the baselines is
:mod:`~xraycardiac.xray2ct.evaluate`.

The names below are imported from their submodule on first use (PEP 562), so importing this
package (e.g. by ``xraycardiac --help``) does not import torch or MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_SUBMODULE = {
    "X2CTAutoencoderConfig": "autoencoder",
    "X2CTAutoencoderKL": "autoencoder",
    "autoencoder_loss": "autoencoder",
    "build_autoencoder": "autoencoder",
    "compute_latent_scale": "autoencoder",
    "load_autoencoder": "autoencoder",
    "load_weights": "autoencoder",
    "save_weights": "autoencoder",
    "train_x2ct_autoencoder": "autoencoder",
    "BUNDLE_FORMAT": "bundle",
    "BUNDLE_JSON": "bundle",
    "MODES": "bundle",
    "PART_FILES": "bundle",
    "RunSource": "bundle",
    "X2CTBundle": "bundle",
    "check_autoencoder_data": "bundle",
    "check_encoder_fits": "bundle",
    "check_ldm_fits": "bundle",
    "import_bundle": "bundle",
    "load_bundle": "bundle",
    "locate_run": "bundle",
    "view_names": "bundle",
    "write_bundle": "bundle",
    "CTCase": "data",
    "X2CTDataConfig": "data",
    "X2CTDataset": "data",
    "augment_views": "data",
    "build_cache": "data",
    "cube_ijk_to_ras": "data",
    "discover_cases": "data",
    "hu_to_unit": "data",
    "parse_shard": "data",
    "prepare_ct": "data",
    "read_cache_info": "data",
    "render_views": "data",
    "split_of_group": "data",
    "unit_to_hu": "data",
    "view_geometries": "data",
    "ENCODER_FORMAT": "encoder",
    "FUSIONS": "encoder",
    "XRayEncoder": "encoder",
    "XRayEncoderConfig": "encoder",
    "back_project": "encoder",
    "check_views": "encoder",
    "encoder_loss": "encoder",
    "info_nce": "encoder",
    "lift_grid": "encoder",
    "load_encoder": "encoder",
    "load_model_file": "encoder",
    "make_encoder_loss_fn": "encoder",
    "patch_tokens": "encoder",
    "read_weights_file": "encoder",
    "save_encoder": "encoder",
    "write_weights_file": "encoder",
    "evaluate_x2ct": "evaluate",
    "format_x2ct_table": "evaluate",
    "write_x2ct_results": "evaluate",
    "LDM_FORMAT": "ldm",
    "PREDICTION_TYPES": "ldm",
    "SAMPLERS": "ldm",
    "ViewEmbedder": "ldm",
    "X2CTDenoiser": "ldm",
    "X2CTGeneration": "ldm",
    "X2CTLDMConfig": "ldm",
    "build_ldm": "ldm",
    "build_scheduler": "ldm",
    "generate": "ldm",
    "guided_prediction": "ldm",
    "ldm_loss": "ldm",
    "load_ldm": "ldm",
    "make_ldm_loss_fn": "ldm",
    "sample_latents": "ldm",
    "save_ldm": "ldm",
    "GenerateConfig": "pipeline",
    "generate_ct": "pipeline",
    "window_metrics": "pipeline",
    "ProjectionOperator": "sparse_view",
    "cgls": "sparse_view",
    "mean_prior": "sparse_view",
    "mu_to_hu": "sparse_view",
    "reconstruct_sparse_view": "sparse_view",
    "sart": "sparse_view",
    "apply_overrides": "train",
    "cache_geometry": "train",
    "train_x2ct_encoder": "train",
    "train_x2ct_ldm": "train",
}

__all__ = sorted(_SUBMODULE)


def __getattr__(name: str) -> Any:
    """Import ``name`` from its submodule on first access (keeps ``import xraycardiac.xray2ct`` light)."""
    module = _SUBMODULE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
