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

import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from var_lightning.checkpoints.files import (
    SAFETENSORS_SUFFIX,
    UnsafeCheckpointError,
    check_dtypes,
    is_safetensors,
    read_safetensors,
    torch_load,
)
from var_lightning.checkpoints.published_shapes import (
    StateDict,
    detect_kind,
    infer_vae_config,
    infer_var_config,
    patch_nums_from_level_index,
    shape_fields,
)
from var_lightning.distributed import rank
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.masks import block_causal_bias, level_index
from var_lightning.transformer.var import VAR

log = logging.getLogger(__name__)

Source = str | os.PathLike | Mapping[str, torch.Tensor]
KeyTable = list[tuple[str, tuple[int, ...], torch.dtype]]

_EMA_KEY = "quantize.ema_vocab_hit_SV"
_MAX_LISTED = 20
_KINDS = {
    "tokenizer": (
        "a VQVAE tokenizer state_dict (encoder.*, decoder.*, quantize.*)",
        "load_official_vae",
        "vae_local",
    ),
    "transformer": (
        "a VAR transformer state_dict (pos_1LC, class_emb.*, blocks.*)",
        "load_official_var",
        "var_wo_ddp",
    ),
}


class OfficialCheckpointError(ValueError):
    """A checkpoint that is not (or does not fit) the expected published-layout state_dict."""


def _info(msg: str) -> None:
    if rank() == 0:
        log.info(msg)


# ---------------------------------------------------------------------------------------------- reading
def _read(
    src: Source, kind: str, map_location: str | torch.device
) -> tuple[dict[str, torch.Tensor], str, dict]:
    """The plain state_dict inside ``src`` (a path or a mapping), a name for messages, and the published
    trainer's ``config`` dict when ``src`` is one of its training checkpoints (else {})."""
    what, loader, sub = _KINDS[kind]
    if isinstance(src, (str, os.PathLike)):
        name = str(src)
        try:
            if str(src).endswith(SAFETENSORS_SUFFIX) or (Path(src).is_file() and is_safetensors(src)):
                obj = read_safetensors(src, key="path", device=str(map_location))
            else:
                obj = torch_load(src, key="path", map_location=map_location)
        except UnsafeCheckpointError as e:
            raise OfficialCheckpointError(
                f"{name}: torch.load(weights_only=True) refused the file ({e}). The released checkpoints are "
                f"plain state_dicts and load this way; if you trust this file, load it with "
                f"var_lightning.checkpoints.files.read_checkpoint(path, trust_pickle=True) and pass the state_dict to {loader}"
            ) from e
    else:
        name, obj = "the given state_dict", src
    if isinstance(obj, nn.Module):
        raise OfficialCheckpointError(f"{name}: got an nn.Module; pass its state_dict() instead")
    if not isinstance(obj, Mapping):
        raise OfficialCheckpointError(f"{name}: found a {type(obj).__name__}, expected {what}")
    config: dict = {}
    trainer = obj.get("trainer")
    if isinstance(trainer, Mapping) and ("var_wo_ddp" in trainer or "vae_local" in trainer):
        if sub not in trainer:
            raise OfficialCheckpointError(
                f"{name}: a published-trainer checkpoint without trainer['{sub}'] (has {sorted(trainer)})"
            )
        obj, name = trainer[sub], f"{name} (trainer['{sub}'] of a published training checkpoint)"
        config = dict(trainer.get("config") or {})
    elif isinstance(obj.get("state_dict"), Mapping) and any(
        k in obj for k in ("pytorch-lightning_version", "global_step", "epoch")
    ):
        raise OfficialCheckpointError(
            f"{name}: found a PyTorch Lightning checkpoint (top-level keys {_listing(sorted(obj), 8)}), expected "
            f"{what} as released by the VAR authors. Its state_dict holds {_prefix_summary(obj['state_dict'])}; "
            "restore the LightningModule from it and export the model with export_official_vae/export_official_var"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise OfficialCheckpointError(
            f"{name}: found a dict with non-tensor entries {_listing(sorted(map(str, bad)), 8)}, expected {what}"
        )
    return dict(obj), name, config


def _listing(items: Sequence[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _prefix_summary(state_dict: Mapping[str, object]) -> str:
    counts: dict[str, int] = {}
    for k in state_dict:
        p = str(k).split(".", 1)[0] + "."
        counts[p] = counts.get(p, 0) + 1
    return ", ".join(f"{n} keys under '{p}'" for p, n in sorted(counts.items(), key=lambda x: -x[1])[:6])


def _check_kind(sd: Mapping[str, torch.Tensor], kind: str, name: str) -> None:
    found = detect_kind(sd)
    if found == kind:
        return
    what, loader, _ = _KINDS[kind]
    if found in _KINDS:
        raise OfficialCheckpointError(
            f"{name}: this is {_KINDS[found][0]}, but {loader} expects {what}; use {_KINDS[found][1]} for it"
        )
    if found == "mixed":
        msg = f"{name}: the state_dict mixes tokenizer and transformer keys, expected {what} only"
    else:
        msg = f"{name}: no key of {what}; found {_prefix_summary(sd) or 'no keys'}"
    prefixes = {k.split(".", 1)[0] for k in sd}
    if len(prefixes) <= 3 and all("." in k for k in sd):
        msg += " (if the keys carry a wrapper prefix such as 'module.' or 'var.', strip it first)"
    raise OfficialCheckpointError(msg)


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
        model = _build_meta(model_or_cfg)
    return [(k, tuple(v.shape), v.dtype) for k, v in _export(model).items()]


def _build_meta(cfg: VQVAEConfig | VARConfig) -> nn.Module:
    with torch.device("meta"):
        return MultiScaleVQVAE(cfg) if isinstance(cfg, VQVAEConfig) else VAR(cfg)


# ---------------------------------------------------------------------------------------------- loading
def _describe(cfg: VQVAEConfig | VARConfig) -> str:
    return f"{type(cfg).__name__}({', '.join(f'{k}={v!r}' for k, v in shape_fields(cfg).items())})"


def _hint(cfg: VQVAEConfig | VARConfig, inferred: bool, infer: Callable[[], VQVAEConfig | VARConfig]) -> str:
    if inferred:
        return (
            "the configuration was inferred from this file, so the file itself is incomplete or not in the published "
            "layout (the published classes would reject it too with strict=True)"
        )
    try:
        file_fields = shape_fields(infer())
    except ValueError:
        return "pass cfg=None to infer the configuration from the tensors"
    ours = shape_fields(cfg)
    diffs = [f"{k}={v!r} (cfg has {ours.get(k)!r})" for k, v in file_fields.items() if ours.get(k) != v]
    if not diffs:
        return (
            "the file's shapes agree with cfg, so the file is incomplete or not in the published layout "
            "(the published classes would reject it too with strict=True)"
        )
    return (
        f"the file looks like {', '.join(diffs)}; pass cfg=None to infer the configuration from the tensors"
    )


def _mismatch_report(
    sd: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], tolerated: set[str]
) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and k not in tolerated and tuple(sd[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, wrong


def _raise_mismatch(
    name: str, cfg, missing: list[str], unexpected: list[str], wrong: list[str], hint: str
) -> None:
    lines = [f"{name} does not fit {_describe(cfg)}:"]
    for label, items in (("missing key", missing), ("unexpected key", unexpected), ("shape mismatch", wrong)):
        if items:
            plural = "es" if label.endswith("ch") else "s"
            lines.append(f"  {len(items)} {label}{plural if len(items) != 1 else ''}: {_listing(items)}")
    lines.append(f"Hint: {hint}")
    raise OfficialCheckpointError("\n".join(lines))


def _check_var_buffers(sd: Mapping[str, torch.Tensor], cfg: VARConfig, name: str) -> None:
    """The derived buffers must be the ones the configuration implies (they define the model's masking)."""
    problems = []
    lvl = sd["lvl_1L"].detach().cpu()
    if not torch.equal(lvl.long(), level_index(cfg.patch_nums)):
        try:
            found = f"encodes patch_nums={patch_nums_from_level_index(lvl)}"
        except ValueError as e:
            found = f"is not a level index ({e})"
        problems.append(f"lvl_1L {found} but the config has patch_nums={cfg.patch_nums}")
    if not torch.equal(sd["attn_bias_for_masking"].detach().cpu().float(), block_causal_bias(cfg.patch_nums)):
        problems.append(
            f"attn_bias_for_masking is not the block-causal 0/-inf mask of patch_nums={cfg.patch_nums} "
            "(token i may attend to j iff level(i) >= level(j))"
        )
    nonzero = [k for k, v in sd.items() if k.endswith(".attn.zero_k_bias") and bool(v.detach().ne(0).any())]
    if nonzero:
        problems.append(
            f"zero_k_bias must be all zeros (the key bias is fixed at 0), but is not in {_listing(nonzero)}"
        )
    if problems:
        raise OfficialCheckpointError(f"{name}: inconsistent buffers:\n  " + "\n  ".join(problems))


def _assign(model: nn.Module, sd: Mapping[str, torch.Tensor], device: str | torch.device, copy: bool) -> None:
    """Load ``sd`` (published names, already validated) into the meta-built ``model`` by assignment, cast
    to the model's dtypes; the model ends up on ``device`` without a wasted random initialisation."""
    names = _official_names(model)
    expected = model.state_dict()
    check_dtypes({names[p]: sd[p] for p in names if p in sd}, expected, type(model).__name__)
    ours = {}
    for pub, key in names.items():
        t = sd[pub]
        if pub == _EMA_KEY and tuple(t.shape) != tuple(expected[key].shape):
            _info(
                f"{_EMA_KEY} was recorded over {t.shape[0]} scales, the model has {expected[key].shape[0]}: reset"
            )
            t = torch.zeros(expected[key].shape)
        ours[key] = t.detach().to(device=device, dtype=expected[key].dtype, copy=copy)
    model.load_state_dict(ours, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # cannot happen with a strict load; guards against a model gaining non-persistent state
        raise RuntimeError(f"tensors left uninitialised after loading: {left}")


def _load(
    src: Source,
    kind: str,
    cfg: VQVAEConfig | VARConfig | None,
    map_location: str | torch.device,
    infer: Callable[[Mapping[str, torch.Tensor], dict], VQVAEConfig | VARConfig],
    check_buffers: Callable[[Mapping[str, torch.Tensor], VQVAEConfig | VARConfig, str], None] | None,
) -> nn.Module:
    sd, name, trainer_config = _read(src, kind, map_location)
    _check_kind(sd, kind, name)
    inferred = cfg is None
    if cfg is None:
        try:
            cfg = infer(sd, trainer_config)
        except ValueError as e:
            raise OfficialCheckpointError(f"{name}: {e}") from e
        _info(f"{name}: inferred {_describe(cfg)}")
    model = _build_meta(cfg)
    expected = _export(model)
    missing, unexpected, wrong = _mismatch_report(sd, expected, tolerated={_EMA_KEY})
    if missing or unexpected or wrong:
        _raise_mismatch(
            name, cfg, missing, unexpected, wrong, _hint(cfg, inferred, lambda: infer(sd, trainer_config))
        )
    if check_buffers is not None:
        check_buffers(sd, cfg, name)
    _assign(model, sd, map_location, copy=not isinstance(src, (str, os.PathLike)))
    return model.eval()


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

    return _load(src, "tokenizer", cfg, map_location, infer, None)  # type: ignore[return-value]


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

    return _load(src, "transformer", cfg, map_location, infer, _check_var_buffers)  # type: ignore[return-value]
