"""Model manifest and weights cache: list, resolve (sha256-verified), import and export models.

See ``xraycardiac.models.manifest`` for the manifest format and where weights live. The command
line front end is ``xraycardiac.models.cli`` (``xraycardiac models list|import|export``).
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

__all__ = [
    "DEFAULT_INTENDED_USE",
    "ModelEntry",
    "ModelIntegrityError",
    "clear_hash_cache",
    "export_model",
    "find",
    "import_model",
    "list_models",
    "load_manifest",
    "models_dir",
    "models_home",
    "resolve",
    "resolve_entry",
    "save_manifest",
    "sha256_file",
    "verify_file",
]
