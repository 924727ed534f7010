"""Model manifest and weights cache: list, resolve (sha256-verified), import and export models.

See ``xraycardiac.models.manifest`` for the manifest format and where weights live, and
``xraycardiac.models.weights`` for the weights files every model writes and reads and for locating
a trained model (run folder, weights file or manifest name). The command line front end is
``xraycardiac.models.cli`` (``xraycardiac models list|import|export``).
Importing this package does not import torch.
"""

from __future__ import annotations

from xraycardiac.models.manifest import (
    DEFAULT_INTENDED_USE,
    ModelEntry,
    ModelIntegrityError,
    clear_hash_cache,
    export_model,
    find,
    import_model,
    list_models,
    load_manifest,
    models_dir,
    models_home,
    resolve,
    resolve_entry,
    save_manifest,
    sha256_file,
    verify_file,
)
from xraycardiac.models.weights import (
    JsonConfig,
    ModelSource,
    WeightsFormat,
    config_differences,
    load_model_file,
    load_state,
    locate_model,
    read_model_config,
    read_weights_file,
    read_weights_payload,
    state_digest,
    write_weights_file,
)

__all__ = [
    "DEFAULT_INTENDED_USE",
    "JsonConfig",
    "ModelEntry",
    "ModelIntegrityError",
    "ModelSource",
    "WeightsFormat",
    "clear_hash_cache",
    "config_differences",
    "export_model",
    "find",
    "import_model",
    "list_models",
    "load_manifest",
    "load_model_file",
    "load_state",
    "locate_model",
    "models_dir",
    "models_home",
    "read_model_config",
    "read_weights_file",
    "read_weights_payload",
    "resolve",
    "resolve_entry",
    "save_manifest",
    "sha256_file",
    "state_digest",
    "verify_file",
    "write_weights_file",
]
