"""The one reader: whatever a path is (a checkpoint file of any format, a sharded DCP directory, a model
repository folder), :func:`read_checkpoint` returns it as a checkpoint dict, read without executing pickled
code; :func:`checkpoint_stage` says what the dict holds.

Two kinds of content come through here:

* a **var_lightning checkpoint**: a Lightning checkpoint (or a ``var-convert`` output, a model repository)
  with ``checkpoint["var_lightning"]["stage"]`` = ``"tokenizer"``, ``"var"`` or ``"ar"`` (the AR baseline),
  the model configs in ``hyper_parameters`` and the weights in ``state_dict`` (``vae.*``, ``var.*``);
* a **released state_dict** in the published layout (``vae_ch160v4096z32.pth``, ``var_d16.pth`` ...), or the
  published trainer's ``ar-ckpt-*.pth``, as ``.pth`` or ``.safetensors``.

Names (a released model, a Hub repository id) become paths before they get here:
:func:`~var_lightning.checkpoints.hub.resolve_source`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from var_lightning.checkpoints.hub import PRETRAINED, VAE_FILE, Source
from var_lightning.checkpoints.model_repo import is_model_repo, read_model_repo
from var_lightning.checkpoints.safe_io import (
    SAFETENSORS_SUFFIX,
    CheckpointError,
    is_safetensors,
    read_safetensors,
    resolve_file,
    torch_load,
)
from var_lightning.checkpoints.sharded import is_sharded_checkpoint, read_sharded_checkpoint

_META_KEY = "var_lightning"
log = logging.getLogger(__name__)


def read_checkpoint(
    path: str | os.PathLike,
    key: str = "ckpt_path",
    trust_pickle: bool = False,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Any checkpoint file (``.ckpt``, ``.pth``, ``.safetensors``), a sharded checkpoint directory written
    by ``trainer=fsdp*`` (weights only), or a model repository directory (``var-convert to-hub``,
    :mod:`~var_lightning.checkpoints.model_repo`), as a dict, loaded safely."""
    if is_model_repo(path):
        return read_model_repo(path, key, device=str(map_location))
    if is_sharded_checkpoint(Path(path).expanduser()):
        return read_sharded_checkpoint(Path(path).expanduser(), key, trust_pickle)
    p = resolve_file(path, key)
    if p.suffix == SAFETENSORS_SUFFIX or is_safetensors(p):
        return read_safetensors(p, key, device=str(map_location))
    obj = torch_load(p, key, trust_pickle=trust_pickle, map_location=map_location)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{key}={p}: found a {type(obj).__name__}, not a checkpoint or state_dict")
    return obj


def checkpoint_stage(ckpt: Mapping[str, Any]) -> str:
    """'tokenizer' or 'var' for var_lightning checkpoints, 'official-vae' / 'official-var' for released
    state_dicts (or the published trainer's checkpoints), 'unknown' otherwise."""
    meta = ckpt.get(_META_KEY)
    if isinstance(meta, Mapping) and "stage" in meta:
        return str(meta["stage"])
    if "state_dict" in ckpt and isinstance(ckpt.get("hyper_parameters"), Mapping):
        hp = ckpt["hyper_parameters"]
        return "var" if "transformer" in hp else ("tokenizer" if "tokenizer" in hp else "unknown")
    if "trainer" in ckpt:
        return "official-var"
    keys = set(ckpt)
    if "quantize.embedding.weight" in keys:
        return "official-vae"
    if "class_emb.weight" in keys and "head.weight" in keys:
        return "official-var"
    return "unknown"


@dataclass
class Read:
    """What :func:`read_source` found: the checkpoint, its stage, and a released transformer's tokenizer."""

    ckpt: dict[str, Any]
    stage: str
    tokenizer: dict[str, Any] | None = None
    tokenizer_path: Path | None = None


def _sibling_tokenizer(source: Source) -> Path:
    if source.vae_path is not None:
        return source.vae_path
    var_path = source.path
    for candidate in (
        var_path.parent / VAE_FILE,
        var_path.parent / Path(VAE_FILE).with_suffix(".safetensors"),
    ):
        if candidate.is_file():
            log.info("using the tokenizer %s found beside %s", candidate, var_path.name)
            return candidate
    name = var_path.stem if var_path.stem in PRETRAINED else "var_d16"
    raise CheckpointError(
        f"{source.key}={var_path} is a released transformer, which needs its tokenizer: pass "
        f"vae_path=/path/to/{VAE_FILE}, put {VAE_FILE} beside it, or use pretrained={name}"
    )


def read_source(source: Source, trust_pickle: bool = False, map_location: str | torch.device = "cpu") -> Read:
    """Read ``source.path`` and, for a released transformer, its tokenizer file (``source.vae_path`` or the
    released file lying beside it) unless ``source.need_tokenizer`` is False."""
    ckpt = read_checkpoint(source.path, source.key, trust_pickle, map_location)
    stage = checkpoint_stage(ckpt)
    if stage != "official-var" or "trainer" in ckpt:
        if source.vae_path is not None:
            log.warning("vae_path=%s ignored: %s carries its own tokenizer", source.vae_path, source.path)
        return Read(ckpt, stage)
    if not source.need_tokenizer:
        return Read(ckpt, stage)
    vae_path = _sibling_tokenizer(source)
    tokenizer = read_checkpoint(vae_path, "vae_path", trust_pickle, map_location)
    if checkpoint_stage(tokenizer) != "official-vae":
        raise CheckpointError(
            f"vae_path={vae_path} is a {checkpoint_stage(tokenizer)!r} file, not the released tokenizer "
            f"({VAE_FILE}'s layout)"
        )
    return Read(ckpt, stage, tokenizer, vae_path)
