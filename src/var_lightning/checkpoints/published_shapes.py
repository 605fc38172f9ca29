"""What the tensors of a state_dict in the published VAR layout say: which model it is and whether it fits a
configuration (:func:`checked_state`: every check before a published-layout file is built; the configuration
itself is read off the tensors by :mod:`~var_lightning.checkpoints.published_config`).

"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from var_lightning.checkpoints.published_config import StateDict, patch_nums_from_level_index
from var_lightning.distributed import rank
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.masks import block_causal_bias, level_index

log = logging.getLogger(__name__)

USAGE_KEY = "quantize.ema_vocab_hit_SV"  # may be recorded over another number of scales: reset, not refused
_MAX_LISTED = 20
KINDS = {
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


_VAE_PREFIXES = ("encoder.", "decoder.", "quantize.", "quant_conv.", "post_quant_conv.")
_VAR_PREFIXES = (
    "pos_start", "pos_1LC", "lvl_1L", "attn_bias_for_masking", "word_embed.", "class_emb.", "lvl_embed.",
    "shared_ada_lin.", "blocks.", "head_nm.", "head.",
)  # fmt: skip


def detect_kind(state_dict: StateDict) -> str | None:
    """``"tokenizer"``, ``"transformer"``, ``"mixed"`` (keys of both) or None (keys of neither)."""
    n_vae = sum(k.startswith(_VAE_PREFIXES) for k in state_dict)
    n_var = sum(k.startswith(_VAR_PREFIXES) for k in state_dict)
    if n_vae and n_var:
        return "mixed"
    return "tokenizer" if n_vae else "transformer" if n_var else None


VAE_SHAPE_FIELDS = (
    "ch", "ch_mult", "num_res_blocks", "vocab_size", "z_channels", "in_channels", "attn_lowest", "attn_mid",
    "quant_conv_ks", "share_quant_resi", "default_qresi_counts",
)  # fmt: skip
VAR_SHAPE_FIELDS = (
    "depth", "width", "num_heads", "mlp_ratio", "shared_aln", "attn_l2_norm", "num_classes", "vocab_size", "cvae",
    "patch_nums",
)  # fmt: skip


def shape_fields(cfg: VQVAEConfig | VARConfig) -> dict[str, object]:
    """The configuration fields a state_dict determines (what ``infer_*_config`` gives back)."""
    if isinstance(cfg, VQVAEConfig):
        out: dict[str, object] = {f: getattr(cfg, f) for f in VAE_SHAPE_FIELDS}
        out["phi_convs"] = abs(cfg.quant_resi) > 1e-6
        if not out["phi_convs"]:  # identity phis: the sharing mode leaves no trace
            out.pop("share_quant_resi"), out.pop("default_qresi_counts")
        return out
    out = {f: getattr(cfg, f) for f in VAR_SHAPE_FIELDS}
    if not cfg.attn_l2_norm:
        out.pop("num_heads")
    return out


# ---------------------------------------------------------------------------------------------- checks
class OfficialCheckpointError(ValueError):
    """A checkpoint that is not (or does not fit) the expected published-layout state_dict."""


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
    what, loader, _ = KINDS[kind]
    if found in KINDS:
        raise OfficialCheckpointError(
            f"{name}: this is {KINDS[found][0]}, but {loader} expects {what}; use {KINDS[found][1]} for it"
        )
    if found == "mixed":
        msg = f"{name}: the state_dict mixes tokenizer and transformer keys, expected {what} only"
    else:
        msg = f"{name}: no key of {what}; found {_prefix_summary(sd) or 'no keys'}"
    prefixes = {k.split(".", 1)[0] for k in sd}
    if len(prefixes) <= 3 and all("." in k for k in sd):
        msg += " (if the keys carry a wrapper prefix such as 'module.' or 'var.', strip it first)"
    raise OfficialCheckpointError(msg)


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


def _unwrap(obj: object, kind: str, name: str) -> tuple[dict[str, torch.Tensor], str, dict]:
    """The plain state_dict inside ``obj``, its name for messages, and the published trainer's ``config`` when
    ``obj`` is one of its training checkpoints (else {})."""
    what, _, sub = KINDS[kind]
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


def checked_state(
    obj: object,
    kind: str,
    name: str,
    cfg: VQVAEConfig | VARConfig | None,
    infer: Callable[[StateDict, dict], VQVAEConfig | VARConfig],
    expected_for: Callable[[VQVAEConfig | VARConfig], Mapping[str, torch.Tensor]],
) -> tuple[dict[str, torch.Tensor], VQVAEConfig | VARConfig]:
    """(the state_dict, its configuration) once every check has passed: the kind of model, the configuration
    (``cfg``, else inferred from the tensors), every key and shape against ``expected_for(cfg)`` (published
    names), and a transformer's derived buffers."""
    sd, name, trainer_config = _unwrap(obj, kind, name)
    _check_kind(sd, kind, name)
    inferred = cfg is None
    if cfg is None:
        try:
            cfg = infer(sd, trainer_config)
        except ValueError as e:
            raise OfficialCheckpointError(f"{name}: {e}") from e
        if rank() == 0:
            log.info("%s: inferred %s", name, _describe(cfg))
    missing, unexpected, wrong = _mismatch_report(sd, expected_for(cfg), tolerated={USAGE_KEY})
    if missing or unexpected or wrong:
        _raise_mismatch(
            name, cfg, missing, unexpected, wrong, _hint(cfg, inferred, lambda: infer(sd, trainer_config))
        )
    if isinstance(cfg, VARConfig):
        _check_var_buffers(sd, cfg, name)
    return sd, cfg
