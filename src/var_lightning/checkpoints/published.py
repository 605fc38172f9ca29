"""Load and export checkpoints in the layout of the published VAR implementation (FoundationVision/VAR).

The released files (``vae_ch160v4096z32.pth``, ``var_d16.pth`` ... ``var_d36.pth``) are plain state_dicts
that the published demos load with ``strict=True``. Our module and parameter names already follow that
layout, with one exception: the tokenizer's phi convolutions are always ``quant_resi.qresi_ls.{i}`` here,
while the published classes name them ``quant_resi.qresi`` (one shared phi, ``share_quant_resi=1``),
``quant_resi.{i}`` (one per scale, ``share_quant_resi=0``) or ``quant_resi.qresi_ls.{i}`` (n > 1 partially
shared). Loading is strict: every missing, unexpected or wrongly shaped tensor is reported by name in one
error, and the derived buffers (``lvl_1L``, ``attn_bias_for_masking``, ``zero_k_bias``) must agree with
the configuration. The one tolerance is the published one: the tokenizer's usage statistics
``quantize.ema_vocab_hit_SV`` may have been recorded with another number of scales (then it is reset).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from var_lightning.checkpoints.build import fill, on_meta
from var_lightning.checkpoints.published_config import StateDict, infer_vae_config, infer_var_config
from var_lightning.checkpoints.published_shapes import KINDS, OfficialCheckpointError, checked_state
from var_lightning.checkpoints.reader import read_checkpoint
from var_lightning.checkpoints.safe_io import CheckpointError, UnsafeCheckpointError
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.var import VAR

Source = str | os.PathLike | Mapping[str, torch.Tensor]
KeyTable = list[tuple[str, tuple[int, ...], torch.dtype]]


# ---------------------------------------------------------------------------------------------- reading
def _read(src: Source, kind: str, map_location: str | torch.device) -> tuple[object, str]:
    """What ``src`` holds (a path goes through the one reader) and a name for messages."""
    if not isinstance(src, (str, os.PathLike)):
        return src, "the given state_dict"
    try:
        return read_checkpoint(src, key="path", map_location=map_location), str(src)
    except UnsafeCheckpointError as e:
        raise OfficialCheckpointError(
            f"{src}: torch.load(weights_only=True) refused the file ({e}). The released checkpoints are plain "
            "state_dicts and load this way; if you trust this file, load it with "
            "var_lightning.checkpoints.reader.read_checkpoint(path, trust_pickle=True) and pass the state_dict "
            f"to {KINDS[kind][1]}"
        ) from e
    except CheckpointError as e:
        raise OfficialCheckpointError(str(e)) from e


# ---------------------------------------------------------------------------------------------- key names
_OUR_PHI = re.compile(r"quantize\.quant_resi\.qresi_ls\.(\d+)\.(.+)")


def _vae_key_to_official(key: str, share_quant_resi: int) -> str:
    """Our phi names -> the published class's names for the given sharing mode; others are unchanged."""
    m = _OUR_PHI.fullmatch(key)
    if m is None or share_quant_resi > 1:
        return key
    if share_quant_resi == 1:
        return f"quantize.quant_resi.qresi.{m.group(2)}"
    return f"quantize.quant_resi.{m.group(1)}.{m.group(2)}"


def _official_names(model: nn.Module) -> dict[str, str]:
    """Published key -> our key, in state_dict order."""
    if isinstance(model, MultiScaleVQVAE):
        mode = model.cfg.share_quant_resi
        return {_vae_key_to_official(k, mode): k for k in model.state_dict()}
    if isinstance(model, VAR):
        return {k: k for k in model.state_dict()}
    raise TypeError(f"expected a MultiScaleVQVAE or a VAR, got {type(model).__name__}")


def _export(model: nn.Module) -> dict[str, torch.Tensor]:
    ours = model.state_dict()
    return {pub: ours[k] for pub, k in _official_names(model).items()}


def _portable(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32 if t.is_floating_point() else t.dtype)


def export_official_vae(model: MultiScaleVQVAE) -> dict[str, torch.Tensor]:
    """Our tokenizer -> a state_dict the published ``VQVAE`` loads with ``strict=True`` (same keys, order,
    shapes; float32, on CPU). Like ``state_dict()`` it shares storage with a CPU float32 model."""
    if not isinstance(model, MultiScaleVQVAE):
        raise TypeError(f"export_official_vae expects a MultiScaleVQVAE, got {type(model).__name__}")
    return {k: _portable(v) for k, v in _export(model).items()}


def export_official_var(model: VAR) -> dict[str, torch.Tensor]:
    """Our transformer -> a state_dict the published ``VAR`` loads with ``strict=True`` (float32 and int64
    ``lvl_1L``, on CPU, including the derived buffers). Shares storage with a CPU float32 model."""
    if not isinstance(model, VAR):
        raise TypeError(f"export_official_var expects a VAR, got {type(model).__name__}")
    return {k: _portable(v) for k, v in _export(model).items()}


def official_key_table(model_or_cfg: nn.Module | VQVAEConfig | VARConfig) -> KeyTable:
    """(key, shape, dtype) of every entry the published class writes for this configuration, in order.
    A config is built on the meta device, so even the largest models cost nothing."""
    model = model_or_cfg
    if isinstance(model_or_cfg, (VQVAEConfig, VARConfig)):
        model = _on_meta(model_or_cfg)
    return [(k, tuple(v.shape), v.dtype) for k, v in _export(model).items()]


def _on_meta(cfg: VQVAEConfig | VARConfig) -> nn.Module:
    return on_meta(lambda: MultiScaleVQVAE(cfg) if isinstance(cfg, VQVAEConfig) else VAR(cfg))


# ---------------------------------------------------------------------------------------------- loading
def _load(
    src: Source,
    kind: str,
    cfg: VQVAEConfig | VARConfig | None,
    map_location: str | torch.device,
    infer: Callable[[StateDict, dict], VQVAEConfig | VARConfig],
) -> nn.Module:
    """Read, check against the published layout (published_shapes), then build through the one builder
    (:func:`~var_lightning.checkpoints.build.fill`) under our names."""
    obj, name = _read(src, kind, map_location)
    sd, cfg = checked_state(obj, kind, name, cfg, infer, lambda c: _export(_on_meta(c)))
    model = _on_meta(cfg)
    ours = {key: sd[pub] for pub, key in _official_names(model).items()}
    return fill(model, ours, map_location, type(model).__name__, copy=not isinstance(src, (str, os.PathLike)))


def load_official_vae(
    src: Source,
    cfg: VQVAEConfig | None = None,
    map_location: str | torch.device = "cpu",
    patch_nums: Sequence[int] | None = None,
) -> MultiScaleVQVAE:
    """Tokenizer from a published-layout state_dict (e.g. ``vae_ch160v4096z32.pth``), in eval mode.

    src: a file (``.pth`` read with ``torch.load(weights_only=True)``, or ``.safetensors``), a state_dict, or a training checkpoint of
        the published trainer (its ``trainer['vae_local']`` is used).
    cfg: None infers everything the tensors determine (``infer_vae_config``). patch_nums: the scale
        schedule when cfg is None (the weights do not depend on it): default the trainer checkpoint's, else
        the 256px one; ``SCHEDULE_512`` for the 512px model. Tensors are cast to float32 on ``map_location``.
    """
    if cfg is not None and patch_nums is not None and tuple(patch_nums) != tuple(cfg.patch_nums):
        raise ValueError(
            f"patch_nums={tuple(patch_nums)} disagrees with cfg.patch_nums={cfg.patch_nums}; give one"
        )

    def infer(sd: StateDict, trainer_config: dict) -> VQVAEConfig:
        schedule = patch_nums if patch_nums is not None else cfg.patch_nums if cfg is not None else None
        return infer_vae_config(sd, schedule if schedule is not None else trainer_config.get("patch_nums"))

    return _load(src, "tokenizer", cfg, map_location, infer)  # type: ignore[return-value]


def load_official_var(
    src: Source,
    cfg: VARConfig | None = None,
    map_location: str | torch.device = "cpu",
    num_heads: int | None = None,
) -> VAR:
    """Transformer from a published-layout state_dict (``var_d16.pth`` ... ``var_d36.pth``), in eval mode.

    src: a file, a state_dict, or a published training checkpoint (its ``trainer['var_wo_ddp']`` is used).
    cfg: None infers it (``infer_var_config``); ``num_heads`` is needed only for models without
    L2-normalised attention whose head count is not the depth. The buffers ``lvl_1L``,
    ``attn_bias_for_masking`` and ``zero_k_bias`` must match the configuration.
    """

    def infer(sd: StateDict, trainer_config: dict) -> VARConfig:
        return infer_var_config(sd, num_heads)

    return _load(src, "transformer", cfg, map_location, infer)  # type: ignore[return-value]


def load_official_models(
    ckpt: StateDict, stage: str, tokenizer: StateDict | None = None, map_location: str | torch.device = "cpu"
) -> tuple[VAR | None, MultiScaleVQVAE | None]:
    """(transformer, tokenizer) of a published-layout checkpoint of ``stage`` (``official-var``: a released
    transformer, its tokenizer from ``tokenizer`` when given, or a published trainer checkpoint holding both;
    ``official-vae``: a released tokenizer alone). The tokenizer takes the transformer's schedule."""
    if stage == "official-vae":
        return None, load_official_vae(ckpt, map_location=map_location)
    var = load_official_var(ckpt, map_location=map_location)
    vae_src = ckpt if "trainer" in ckpt else tokenizer
    vae = (
        load_official_vae(vae_src, map_location=map_location, patch_nums=var.patch_nums) if vae_src else None
    )
    return var, vae
