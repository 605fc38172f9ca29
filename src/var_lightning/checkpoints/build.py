"""Models from weights: every model a checkpoint holds is built here, on the meta device, and filled by
assignment (so even the 2B-parameter models load without a wasted random initialisation). Errors name the
missing, unexpected, misshaped and wrongly typed tensors. :mod:`~var_lightning.checkpoints.load` and
:mod:`~var_lightning.checkpoints.published` both build through :func:`materialize`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from var_lightning.checkpoints.safe_io import CheckpointError
from var_lightning.keys import closest
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.transformer.ar import ARTransformer
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.var import VAR

# usage statistics recorded over another number of scales are reset, not refused
USAGE_KEY = "ema_vocab_hit_SV"


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating-point"
    if dtype.is_complex:
        return "complex"
    return "boolean" if dtype == torch.bool else "integer"


def check_dtypes(state_dict: Mapping[str, Any], expected: Mapping[str, torch.Tensor], what: str) -> None:
    """Refuse a stored tensor whose dtype cannot be the model's (an integer or boolean tensor for a float
    weight, a float for an integer buffer): a cast would load it silently as garbage. Precisions of the same
    kind (bf16 for fp32) are fine and are cast."""
    bad = [
        f"{k} is {state_dict[k].dtype} but the model's is {v.dtype}"
        for k, v in expected.items()
        if k in state_dict and torch.is_tensor(state_dict[k]) and _kind(state_dict[k].dtype) != _kind(v.dtype)
    ]
    if bad:
        raise CheckpointError(
            f"the {what} weights hold {len(bad)} tensor(s) of the wrong kind ({'; '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}); the file is damaged or was converted by another tool: export it "
            f"again from its source (var-convert) or use the original file"
        )


def on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` built on the meta device: shapes and names, no memory, no initialisation."""
    with torch.device("meta"):
        return factory()


def _check_fit(state_dict: Mapping[str, Any], expected: Mapping[str, torch.Tensor], what: str) -> None:
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape) and not k.endswith(USAGE_KEY)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(v)} {label}: {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
            for label, v in (("missing", missing), ("unexpected", unexpected), ("misshaped", shapes))
            if v
        ]
        raise CheckpointError(f"the {what} weights do not fit its stored config ({'; '.join(parts)})")


def fill(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    device: str | torch.device,
    what: str,
    copy: bool = False,
) -> nn.Module:
    """Load ``state_dict`` into the meta-built ``model`` strictly, by assignment, cast to the model's dtypes
    on ``device`` (``copy``: never share storage with ``state_dict``); returns it in eval mode."""
    expected = model.state_dict()
    _check_fit(state_dict, expected, what)
    check_dtypes(state_dict, expected, what)
    sd = {}
    for k, v in expected.items():
        t = state_dict[k]
        if k.endswith(USAGE_KEY) and tuple(t.shape) != tuple(v.shape):
            t = torch.zeros(v.shape)
        sd[k] = t.detach().to(device=device, dtype=v.dtype, copy=copy)
    nn.Module.load_state_dict(model, sd, strict=True, assign=True)
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # cannot happen with a strict load; guards against a model gaining non-persistent state
        raise RuntimeError(f"tensors left uninitialised after loading the {what}: {left[:8]}")
    return model.eval()


def materialize(
    factory: Callable[[], nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    device: str | torch.device,
    what: str,
) -> nn.Module:
    """:func:`on_meta` then :func:`fill`."""
    return fill(on_meta(factory), state_dict, device, what)


def sub_state_dict(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def transformer_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The transformer weights to sample / evaluate / fine-tune from: the run's EMA (``var_ema.*``, written
    with ``callbacks=ema``) when it kept one, else ``var.*``."""
    ema = sub_state_dict(state_dict, "var_ema.")
    return ema if ema else sub_state_dict(state_dict, "var.")


def config_from_hparams(cls: type, values: Mapping[str, Any], key: str, block: str) -> Any:
    """``cls(**values)`` for a checkpoint's stored ``block`` config, with errors that name the file and the
    field (a file written by another version, or edited) instead of a TypeError."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        guess = closest(unknown[0], names)
        raise CheckpointError(
            f"{key}: the checkpoint's {block} config has unknown field(s) {unknown}"
            f"{f' (did you mean {guess}?)' if guess else ''}; it was written by another var_lightning version or "
            f"edited: export it again with this version (var-convert to-hub), or upgrade var_lightning"
        )
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{key}: the checkpoint's {block} config is invalid ({e})") from e


def tokenizer_from_hparams(
    hp: Mapping[str, Any], sd: Mapping[str, torch.Tensor], device: str | torch.device, key: str
) -> MultiScaleVQVAE:
    """The tokenizer of a var_lightning checkpoint (``hyper_parameters['tokenizer']``, weights ``vae.*``)."""
    if not isinstance(hp.get("tokenizer"), Mapping):
        raise CheckpointError(f"{key}: the checkpoint's hyper_parameters have no 'tokenizer' config")
    cfg = config_from_hparams(VQVAEConfig, dict(hp["tokenizer"]), key, "tokenizer")
    return materialize(lambda: MultiScaleVQVAE(cfg), sub_state_dict(sd, "vae."), device, "tokenizer")


def transformer_from_hparams(
    hp: Mapping[str, Any], sd: Mapping[str, torch.Tensor], device: str | torch.device, key: str, stage: str
) -> VAR:
    """The transformer of a ``var`` checkpoint (its EMA when it kept one), or the raster-order baseline of
    an ``ar`` one."""
    if not isinstance(hp.get("transformer"), Mapping):
        raise CheckpointError(f"{key}: the checkpoint's hyper_parameters have no 'transformer' config")
    cfg = config_from_hparams(VARConfig, dict(hp["transformer"]), key, "transformer")
    if stage == "ar":
        return materialize(lambda: ARTransformer(cfg), transformer_state_dict(sd), device, "AR transformer")
    return materialize(lambda: VAR(cfg), transformer_state_dict(sd), device, "transformer")


def models_from_checkpoint(
    ckpt: Mapping[str, Any], stage: str, device: str | torch.device, key: str
) -> tuple[VAR | None, MultiScaleVQVAE, dict[str, torch.Tensor]]:
    """(transformer or None, tokenizer, the other weights) of a var_lightning checkpoint of ``stage``
    (``var``, ``ar`` or ``tokenizer``); the other weights are those outside the models (a tokenizer run's
    ``loss.discriminator.*``)."""
    if not isinstance(ckpt.get("state_dict"), Mapping):
        raise CheckpointError(f"{key}: the checkpoint has no state_dict of weights")
    hp = ckpt.get("hyper_parameters") or {}
    if not isinstance(hp, Mapping):
        raise CheckpointError(
            f"{key}: hyper_parameters is a {type(hp).__name__}, not a mapping of model configs"
        )
    sd = ckpt["state_dict"]
    vae = tokenizer_from_hparams(hp, sd, device, key)
    var = transformer_from_hparams(hp, sd, device, key, stage) if stage != "tokenizer" else None
    other = {k: v for k, v in sd.items() if not k.startswith(("vae.", "var.", "var_ema."))}
    return var, vae, other
