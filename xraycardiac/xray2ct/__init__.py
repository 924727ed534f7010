"""XRayToCT (CLS-DM): CT volumes from a PA + lateral chest radiograph pair by latent diffusion.

Stage 1 lives here so far: the data pipeline (CT cubes in [-1, 1] with their DRR views, cached per
case; :mod:`xraycardiac.xray2ct.data`) and the 3D KL autoencoder
(:mod:`xraycardiac.xray2ct.autoencoder`).
"""

from __future__ import annotations

from xraycardiac.xray2ct.autoencoder import (
    X2CTAutoencoderConfig,
    X2CTAutoencoderKL,
    autoencoder_loss,
    build_autoencoder,
    compute_latent_scale,
    load_autoencoder,
    load_weights,
    save_weights,
    train_x2ct_autoencoder,
)
from xraycardiac.xray2ct.data import (
    CTCase,
    X2CTDataConfig,
    X2CTDataset,
    augment_views,
    build_cache,
    discover_cases,
    hu_to_unit,
    parse_shard,
    prepare_ct,
    read_cache_info,
    render_views,
    split_of_group,
    unit_to_hu,
    view_geometries,
)

__all__ = [
    "CTCase",
    "X2CTAutoencoderConfig",
    "X2CTAutoencoderKL",
    "X2CTDataConfig",
    "X2CTDataset",
    "augment_views",
    "autoencoder_loss",
    "build_autoencoder",
    "build_cache",
    "compute_latent_scale",
    "discover_cases",
    "hu_to_unit",
    "load_autoencoder",
    "load_weights",
    "parse_shard",
    "prepare_ct",
    "read_cache_info",
    "render_views",
    "save_weights",
    "split_of_group",
    "train_x2ct_autoencoder",
    "unit_to_hu",
    "view_geometries",
]
