"""Interoperability with the published VAR implementation: load and export its released checkpoints."""

from var_lightning.interop.infer import infer_vae_config, infer_var_config
from var_lightning.interop.official import (
    OfficialCheckpointError,
    export_official_vae,
    export_official_var,
    load_official_vae,
    load_official_var,
    official_key_table,
)

__all__ = [
    "OfficialCheckpointError",
    "export_official_vae",
    "export_official_var",
    "infer_vae_config",
    "infer_var_config",
    "load_official_vae",
    "load_official_var",
    "official_key_table",
]
