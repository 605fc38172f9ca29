"""``init_from``: start a run from another run's weights (or the released ones), with a fresh optimizer.

Sources: a ``var-train`` checkpoint of the same stage (its ``state_dict``, i.e. the EMA weights when that run
used EMA), a released file (``vae_ch160v4096z32.pth`` for the tokenizer stage, ``var_d16.pth`` ... for
the VAR stage; ``.pth`` or ``.safetensors``) or, for the VAR stage, a released model's name
(``init_from=var_d16``, resolved through the Hugging Face Hub cache). Continuing a run with its optimizer, step and data position is ``resume=<ckpt>`` instead.

What the VAR stage adapts, and why it can (every decision is logged):

* **Classes.** ``class_emb`` has ``num_classes + 1`` rows, the last being the null class of classifier-free
  guidance. Both checkpoints carry class names (var-train records the data's; the released models are
  ImageNet's), so rows are matched by name: a class both have keeps its row wherever it sits, a new class
  starts from the mean of the source's class rows (an average object: it samples like a blend of the known
  classes, closer to images than a random row), the null row moves to the new last row; the log lists kept, new and dropped classes. Without names on either side, rows are kept by
  index, and the log says so.
* **Scale schedule.** ``pos_1LC`` is a concatenation of one (pn x pn, C) position table per scale. A new
  scale takes the table of an old scale of the same side, else the table of the nearest old side resized
  bicubically (positions are smooth over the grid). ``pos_start`` likewise. ``lvl_embed`` rows are kept by
  scale index; extra scales copy the last old row (the closest "fine scale" level). The derived buffers
  (``lvl_1L``, ``attn_bias_for_masking``) are always this model's own.
* Everything else (blocks, head, word embedding) must match in shape: a different depth, width or
  tokenizer vocabulary cannot be fine-tuned and is reported key by key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from var_lightning.checkpoints.build import check_dtypes
from var_lightning.checkpoints.hub import PRETRAINED, imagenet_class_names, imagenet_wnids
from var_lightning.checkpoints.load import LoadedModels, load_models
from var_lightning.checkpoints.model_repo import looks_like_repo_id
from var_lightning.checkpoints.safe_io import CheckpointError

log = logging.getLogger(__name__)

_KEY = "init_from"


@dataclass
class InitReport:
    """What ``init_from`` did: tensors copied as they were, resized (with how), and left at this model's
    initialisation. ``summary()`` is the logged message."""

    source: str
    kind: str
    kept: list[str] = field(default_factory=list)
    resized: dict[str, str] = field(default_factory=dict)
    fresh: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"init_from {self.source} ({self.kind}): kept {len(self.kept)} tensors unchanged"]
        lines += [f"  resized {k}: {v}" for k, v in self.resized.items()]
        if self.fresh:
            lines.append(f"  freshly initialised: {', '.join(self.fresh)}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- helpers
def _resize_grid(table_lC: torch.Tensor, side: int) -> torch.Tensor:
    """(q*q, C) position table -> (side*side, C), bicubic over the q x q grid."""
    q = round(table_lC.shape[0] ** 0.5)
    grid_1Cqq = table_lC.float().T.reshape(1, -1, q, q)
    out = F.interpolate(grid_1Cqq, size=(side, side), mode="bicubic", align_corners=False)
    return out.reshape(-1, side * side).T.to(table_lC.dtype)


def _per_scale(pos_1LC: torch.Tensor, patch_nums: Sequence[int]) -> dict[int, torch.Tensor]:
    """Split a (1, L, C) table into {side: (side*side, C)}."""
    out, cur = {}, 0
    for pn in patch_nums:
        out[pn] = pos_1LC[0, cur : cur + pn * pn]
        cur += pn * pn
    return out


def adapt_positions(
    old_1LC: torch.Tensor, old_pns: Sequence[int], new_pns: Sequence[int]
) -> tuple[torch.Tensor, str]:
    """Position tables for ``new_pns`` from those of ``old_pns`` (see the module docstring)."""
    old = _per_scale(old_1LC, old_pns)
    blocks, how = [], []
    for pn in new_pns:
        if pn in old:
            blocks.append(old[pn])
            how.append(f"{pn}x{pn} kept")
        else:
            src = min(old, key=lambda q: (abs(q - pn), -q))
            blocks.append(_resize_grid(old[src], pn))
            how.append(f"{pn}x{pn} from {src}x{src} (bicubic)")
    return torch.cat(blocks, 0)[None], "; ".join(how)


def _stage_mismatch(path: str, got: str, want: str) -> ValueError:
    if want == "var":
        hint = "the VAR stage starts from a VAR checkpoint or var_d16.pth ... var_d36.pth; a tokenizer goes in model.tokenizer_ckpt"
    else:
        hint = "the tokenizer stage starts from a tokenizer checkpoint or vae_ch160v4096z32.pth"
    return ValueError(f"{_KEY}={path} is a {got!r} checkpoint, but this run trains the {want} stage: {hint}")


def _check_shapes(sd: dict[str, torch.Tensor], model: nn.Module, what: str, path: str) -> None:
    params = dict(model.named_parameters())
    try:
        check_dtypes(sd, params, what)
    except CheckpointError as e:
        raise ValueError(f"{_KEY}={path}: {e}") from None
    missing = sorted(set(params) - set(sd))
    unexpected = sorted(k for k in set(sd) - set(params) if k not in dict(model.named_buffers()))
    wrong = sorted(
        f"{k} {tuple(sd[k].shape)} vs {tuple(p.shape)}"
        for k, p in params.items()
        if k in sd and sd[k].shape != p.shape
    )
    if missing or unexpected or wrong:
        parts = [
            f"{n} {label}: {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}"
            for label, v, n in (
                ("missing", missing, len(missing)),
                ("unexpected", unexpected, len(unexpected)),
                ("with other shapes", wrong, len(wrong)),
            )
            if v
        ]
        raise ValueError(
            f"{_KEY}={path}: the {what} architecture differs from this run's ({'; '.join(parts)}); fine-tuning needs the "
            f"same depth/width/heads and tokenizer vocabulary (set model.transformer.* / model.tokenizer.* to match)"
        )


# ---------------------------------------------------------------------------------------------- VAR
def _norm(name: str) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def match_class_rows(old_names: Sequence[str], new_names: Sequence[str]) -> tuple[dict[int, int], str]:
    """{new row: old row} for the classes both lists name (case, ``_``/``-``/space insensitive; a source with
    the 1000 ImageNet classes also answers to their WordNet ids, ``n01440764``), and the
    report line: which rows were kept (by name), which are new (the mean class row), which dropped."""
    index = {_norm(n): i for i, n in enumerate(old_names)}

    if len(old_names) == 1000 and list(old_names) == imagenet_class_names():  # the released models' classes:
        index.update(
            {w: i for i, w in enumerate(imagenet_wnids())}
        )  # an ImageNet folder names them n01440764 ...
    rows = {j: index[_norm(n)] for j, n in enumerate(new_names) if _norm(n) in index}
    new = [n for j, n in enumerate(new_names) if j not in rows]
    kept_old = set(rows.values())
    dropped = [n for i, n in enumerate(old_names) if i not in kept_old]

    def show(names: list[str]) -> str:
        return ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "") or "none"

    moved = [f"{new_names[j]} {i}->{j}" for j, i in rows.items() if i != j]
    how = (
        f"{len(old_names)}+1 -> {len(new_names)}+1 rows matched by class name: kept {len(rows)} "
        f"({show([new_names[j] for j in rows])}){'; moved ' + show(moved) if moved else ''}; new {len(new)} "
        f"(start from the mean of the source's class rows: {show(new)}); dropped {len(dropped)} ({show(dropped)}); "
        "null class kept"
    )
    return rows, how


def adapt_var_state(
    sd: dict[str, torch.Tensor],
    old_pns: Sequence[int],
    var: nn.Module,
    report: InitReport,
    path: str = "?",
    old_names: Sequence[str] | None = None,
    new_names: Sequence[str] | None = None,
) -> dict[str, torch.Tensor]:
    """A state_dict for ``var`` (the new model) from ``sd`` of a VAR trained with schedule ``old_pns``.
    With both class-name lists, class rows are matched by name; otherwise by index (and the report says so)."""
    own = var.state_dict()
    out = {k: v for k, v in sd.items() if k in own and k not in dict(var.named_buffers())}
    new_pns = tuple(var.patch_nums)
    if "class_emb.weight" in out:
        old_W, new_W = out["class_emb.weight"], own["class_emb.weight"].clone()
        n_old, n_new = old_W.shape[0] - 1, new_W.shape[0] - 1
        named = old_names is not None and new_names is not None
        if (
            named
            and len(old_names) == n_old
            and len(new_names) == n_new
            and list(old_names) != list(new_names)
        ):
            rows, how = match_class_rows(old_names, new_names)
            new_W[:-1] = old_W[:-1].mean(0)  # a new class starts from the average class: a generic object
            for new_i, old_i in rows.items():
                new_W[new_i] = old_W[old_i]
            new_W[-1] = old_W[-1]  # the null class
            out["class_emb.weight"] = new_W
            report.resized["class_emb.weight"] = how
        elif n_old != n_new and old_W.shape[1] == new_W.shape[1]:
            k = min(n_old, n_new)
            new_W[:k] = old_W[:k]
            new_W[-1] = old_W[-1]  # the null class
            out["class_emb.weight"] = new_W
            extra = (
                f"; classes {n_old}..{n_new - 1} keep this model's initialisation" if n_new > n_old else ""
            )
            why = "the source has no class names" if new_names else "this run's data has no class names"
            if not new_names and not old_names:
                why = "neither side has class names"
            report.resized["class_emb.weight"] = (
                f"{n_old}+1 -> {n_new}+1 rows BY INDEX ({why}): kept classes 0..{k - 1} and the null class{extra}"
            )
    if new_pns != tuple(old_pns):
        for key in ("pos_1LC", "pos_start"):
            if key not in out:
                continue
            pns_old = list(old_pns) if key == "pos_1LC" else [old_pns[0]]
            pns_new = list(new_pns) if key == "pos_1LC" else [new_pns[0]]
            out[key], how = adapt_positions(out[key], pns_old, pns_new)
            report.resized[key] = how
        if "lvl_embed.weight" in out:
            old_W, new_W = out["lvl_embed.weight"], own["lvl_embed.weight"].clone()
            k = min(old_W.shape[0], new_W.shape[0])
            new_W[:k] = old_W[:k]
            new_W[k:] = old_W[-1]
            out["lvl_embed.weight"] = new_W
            report.resized["lvl_embed.weight"] = (
                f"{old_W.shape[0]} -> {new_W.shape[0]} scales: rows kept by scale "
                f"index" + ("; extra scales copy the last row" if new_W.shape[0] > k else "")
            )
    _check_shapes(out, var, "transformer", path)
    report.kept = sorted(k for k in out if k not in report.resized)
    return out


def init_var_module(
    module: nn.Module, models: LoadedModels, path: str, class_names: Sequence[str] | None = None
) -> InitReport:
    """Load a VAR checkpoint's transformer weights into ``module.var`` (a VARModule), adapting class rows (by
    name when both sides have names: ``class_names`` are this run's) and schedule. The tokenizer stays the one
    from ``model.tokenizer_ckpt``; a different one is refused."""
    var, vae, info = models
    if info.stage != "var":
        raise _stage_mismatch(path, info.stage, "var")
    kinds = {"var_lightning": "var_lightning VAR checkpoint", "released": "released VAR weights"}
    named = info.kind == "released" and info.pretrained
    kind = f"released {path} ({info.files['var']})" if named else kinds[info.kind]
    report = InitReport(path, kind)
    new_sd = adapt_var_state(
        var.state_dict(), var.patch_nums, module.var, report, path, info.class_names, class_names
    )
    missing, unexpected = module.var.load_state_dict(new_sd, strict=False)
    buffers = set(dict(module.var.named_buffers()))
    assert not unexpected and set(missing) <= buffers, (missing, unexpected)
    if info.kind == "var_lightning":
        theirs, mine = vae.cfg, module.vae.cfg
        if (theirs.vocab_size, theirs.z_channels) != (mine.vocab_size, mine.z_channels):
            raise ValueError(
                f"{_KEY}={path} was trained on a tokenizer with V={theirs.vocab_size}, "
                f"Cvae={theirs.z_channels}, but model.tokenizer_ckpt has V={mine.vocab_size}, "
                f"Cvae={mine.z_channels}; use the same tokenizer"
            )
    log.info("%s", report.summary())
    return report


def init_ar_module(module: nn.Module, models: LoadedModels, path: str) -> InitReport:
    """Load an AR-baseline checkpoint's weights into an ARModule (same shape; no adaptation: the AR model is
    a baseline, not a fine-tuning target)."""
    if models.info.stage != "ar":
        raise ValueError(
            f"{_KEY}={path} is a {models.info.stage!r} checkpoint, but this run trains the AR baseline: start it "
            "from an AR checkpoint (var-train experiment=ar_*)"
        )
    sd = models.var.state_dict()
    mine = module.var.state_dict()
    bad = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in mine.items()
        if k in sd and sd[k].shape != v.shape
    ]
    missing = [k for k in mine if k not in sd]
    if bad or missing:
        raise ValueError(
            f"{_KEY}={path} does not fit this AR model ({'; '.join((bad + missing)[:4])}); use the same "
            f"model.transformer shape, schedule and class count"
        )
    module.var.load_state_dict({k: sd[k] for k in mine}, strict=True)
    report = InitReport(str(path), "var_lightning AR checkpoint", kept=list(mine))
    log.info("%s", report.summary())
    return report


# ---------------------------------------------------------------------------------------------- tokenizer
def init_tokenizer_module(module: nn.Module, models: LoadedModels, path: str) -> InitReport:
    """Load autoencoder (and, from a var-train checkpoint, discriminator) weights into a TokenizerModule."""
    if models.info.stage != "tokenizer":
        raise _stage_mismatch(path, models.info.stage, "tokenizer")
    disc = getattr(module.loss, "discriminator", None)
    released = models.info.kind == "released"
    report = InitReport(
        path, "released tokenizer weights" if released else "var_lightning tokenizer checkpoint"
    )
    own = module.vae.state_dict()  # usage statistics over another number of scales: this model's own
    vae_sd = {k: v for k, v in models.vae.state_dict().items() if k not in own or v.shape == own[k].shape}
    disc_sd = {k.removeprefix("loss.discriminator."): v for k, v in models.other.items()
               if k.startswith("loss.discriminator.")}  # fmt: skip
    _check_shapes(vae_sd, module.vae, "tokenizer", path)
    module.vae.load_state_dict(vae_sd, strict=False)
    report.kept = sorted(vae_sd)
    if disc is not None:
        if disc_sd and all(
            k in disc_sd and disc_sd[k].shape == v.shape for k, v in disc.state_dict().items()
        ):
            disc.load_state_dict(disc_sd)
            report.kept += [f"loss.discriminator.{k}" for k in disc_sd]
        else:
            report.fresh.append("loss.discriminator (not in the source or another shape)")
    log.info("%s", report.summary())
    return report


def init_from_checkpoint(
    module: nn.Module, path: str | Path, trust_pickle: bool = False, class_names: Sequence[str] | None = None
) -> InitReport:
    """Read ``path`` once through the one loader, then dispatch on the module's ``STAGE``: ``ar``, ``var``
    (VARModule) or ``tokenizer``. ``path``: a checkpoint file, a model repository (a folder or a Hub id,
    ``var-convert to-hub``), or for the VAR stage a released model's name (``init_from=var_d16``; the
    transformer alone). ``class_names``: this run's classes (the data's), to match class rows by name."""
    stage, path = getattr(module, "STAGE", None), str(path)
    by_name = not Path(path).expanduser().exists() and (
        (stage == "var" and path in PRETRAINED) or looks_like_repo_id(path)
    )
    if not by_name and not Path(path).expanduser().exists():
        released = ", or a released model name: " + ", ".join(PRETRAINED) if stage == "var" else ""
        raise FileNotFoundError(
            f"{_KEY}={path}: no such file (a var-train .ckpt, a released .pth / .safetensors, a model repository "
            f"folder or <user>/<name> on the Hub{released})"
        )
    where = {"pretrained": path} if by_name else {"ckpt_path": path, "trust_pickle": trust_pickle}
    models = load_models(**where, require_var=False, need_tokenizer=False, key=_KEY)
    if stage == "ar":
        return init_ar_module(module, models, path)
    if stage == "var":
        return init_var_module(module, models, path, class_names)
    return init_tokenizer_module(module, models, path)
