"""Class-conditional sampling with a KV cache, guidance ramped over scales, top-k/top-p filtering and
optional teacher-forced tokens (zero-shot editing).

Random draws follow the published implementation call for call (with a seeded generator the same
weights give the same tokens): labels ``multinomial(uniform (1, num_classes), B)`` when not given, then
per scale one ``multinomial(probs (B*l, V), 1)`` over the filtered probabilities and, with
``more_smooth``, one ``exponential_`` for the Gumbel noise.

Shapes: B batch, K scales, l tokens of one scale (pn * pn), L tokens of all scales, V vocabulary,
C width, Cv tokenizer codebook dim, H,W image side, h,w token grid.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.transformer.config import PUBLISHED_SAMPLING, SamplingArgs  # noqa: F401 - re-exported
from var_lightning.transformer.var import VAR


def check_compatible(var: VAR, vae: MultiScaleVQVAE) -> None:
    """Raise a clear error when a transformer and a tokenizer cannot work together."""
    problems = []
    if tuple(var.patch_nums) != tuple(vae.patch_nums):
        problems.append(
            f"scale schedules differ: transformer patch_nums={tuple(var.patch_nums)}, tokenizer {tuple(vae.patch_nums)}"
        )
    if vae.cfg.vocab_size != var.V:
        problems.append(
            f"vocabulary sizes differ: transformer vocab_size={var.V}, tokenizer {vae.cfg.vocab_size}"
        )
    if var.Cvae != vae.cfg.z_channels:
        problems.append(
            f"codebook dims differ: transformer cvae={var.Cvae}, tokenizer z_channels={vae.cfg.z_channels}"
        )
    if problems:
        raise ValueError(
            "the tokenizer does not match the transformer: "
            + "; ".join(problems)
            + " (set model.transformer.patch_nums / vocab_size / cvae to the tokenizer's values, or use the tokenizer the "
            "transformer was trained with)"
        )


# top-k of the published protocol (900 of V = 4096), kept as the same fraction for other vocabularies
REFERENCE_TOP_K, REFERENCE_VOCAB = 900, 4096
SAMPLING_KEYS = ("cfg", "top_k", "top_p", "more_smooth")


def scaled_top_k(vocab_size: int) -> int:
    """The published top-k (900 of 4096 tokens, 22%) at another vocabulary size: 56 for V = 256."""
    return max(1, min(vocab_size, round(REFERENCE_TOP_K * vocab_size / REFERENCE_VOCAB)))


def resolve_sampling(stored: Mapping[str, Any] | None, vocab_size: int) -> dict[str, Any]:
    """A checkpoint's sampling defaults, complete and valid for its vocabulary.

    Missing values take the published protocol's (cfg 1.5, top-p 0.96, no smoothing); top-k None (or one
    larger than the vocabulary, from a recipe written for V = 4096) becomes :func:`scaled_top_k`."""
    out = {**PUBLISHED_SAMPLING, "top_k": None}
    out.update({k: v for k, v in dict(stored or {}).items() if k in SAMPLING_KEYS and v is not None})
    if out["top_k"] is None or int(out["top_k"]) > vocab_size:
        if out["top_k"] is not None:
            logging.getLogger(__name__).info(
                "sampling top_k=%s exceeds the vocabulary (%d): using %d (900/4096 of it)",
                out["top_k"],
                vocab_size,
                scaled_top_k(vocab_size),
            )
        out["top_k"] = scaled_top_k(vocab_size)
    out["top_k"], out["top_p"] = int(out["top_k"]), float(out["top_p"])
    out["cfg"], out["more_smooth"] = float(out["cfg"]), bool(out["more_smooth"])
    return out


TOP_P_RULE = "top-p keeps the smallest set of tokens holding that probability mass; 0 or 1 = off"
"""The one top-p convention of the commands, the configs and the app: both 0 (the published code's "off")
and 1 (all the mass) filter nothing and draw the same tokens."""


MAX_CFG = 100.0
"""The largest guidance strength the samplers take: beyond it ``(1 + w) * cond - w * uncond`` leaves the
range of the logits' dtype (inf, then NaN probabilities)."""


def check_sampling_args(var: VAR, cfg: float, top_k: int, top_p: float, prefix: str = "sampling.") -> None:
    """Raise a clear error for settings the sampler cannot use; ``prefix`` is prepended to the key names in
    the messages (``""`` for a command whose keys are plain ``cfg`` / ``top_k`` / ``top_p``)."""
    if cfg < 0:
        raise ValueError(
            f"cfg={cfg} is negative; guidance strength must be >= 0 (0 = no guidance) (key {prefix}cfg)"
        )
    if not cfg <= MAX_CFG:  # NaN too
        raise ValueError(
            f"cfg={cfg:g} is too large: guidance above {MAX_CFG:g} overflows the logits (the paper samples with "
            f"1.5 to 4) (key {prefix}cfg)"
        )
    if top_k < 0 or top_k > var.V:
        raise ValueError(
            f"top_k={top_k} is outside 0..{var.V} (the vocabulary size; 0 disables top-k) (key {prefix}top_k)"
        )
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p={top_p} is outside [0, 1] ({TOP_P_RULE}) (key {prefix}top_p)")


def filter_logits_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """In place: keep the top-k logits (ties with the k-th kept), then the smallest set whose probability
    exceeds ``top_p`` (a token is removed when the ascending cumulative probability up to it is
    <= 1 - top_p; the most likely token always stays). Removed entries become -inf. ``top_p`` 0 or 1 filters
    nothing (:data:`TOP_P_RULE`)."""
    if top_k > 0:
        kth_Bl1 = logits_BlV.topk(top_k, dim=-1, largest=True, sorted=False)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth_Bl1, -torch.inf)
    if 0 < top_p < 1:
        sorted_BlV, order_BlV = logits_BlV.sort(dim=-1, descending=False)
        remove_sorted = sorted_BlV.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove_sorted[..., -1:] = False
        logits_BlV.masked_fill_(remove_sorted.scatter(-1, order_BlV, remove_sorted), -torch.inf)
    return logits_BlV


def sample_tokens(
    logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Filter in place and draw one token per position: (B, l)."""
    B, l, V = logits_BlV.shape
    filter_logits_(logits_BlV, top_k, top_p)
    probs = logits_BlV.softmax(dim=-1).view(-1, V)
    return torch.multinomial(probs, num_samples=1, replacement=True, generator=generator).view(B, l)


def gumbel_soft_embedding(
    logits_BlV: torch.Tensor, codebook_VC: torch.Tensor, tau: float, generator: torch.Generator | None
) -> torch.Tensor:
    """Soft token embedding (B, l, Cv) = softmax((logits + Gumbel) / tau) @ codebook."""
    gumbels = -torch.empty_like(logits_BlV).exponential_(generator=generator).log()
    return ((logits_BlV + gumbels) / tau).softmax(dim=-1) @ codebook_VC.unsqueeze(0)


def scale_masks(
    keep_mask_BHW: torch.Tensor, patch_nums: Sequence[int], keep_first_scale: bool = True
) -> list[torch.Tensor]:
    """Per-scale keep masks (B, 1, pn, pn) in {0, 1} from a last-scale mask (B, h, w) or (h, w): bilinear
    downsampling (``align_corners=False``) then > 0.5, as the published editing notebook does.

    With ``keep_first_scale`` (the published rule) scales with at most 3 tokens (in practice the 1x1 start)
    are always kept: the image's global token anchors the edit. Without it they follow the mask like any
    other scale, so an all-zero mask regenerates everything and equals plain sampling.
    """
    if keep_mask_BHW.ndim == 2:
        keep_mask_BHW = keep_mask_BHW.unsqueeze(0)
    if keep_mask_BHW.ndim != 3:
        raise ValueError(f"the keep mask must be (h, w) or (B, h, w), got shape {tuple(keep_mask_BHW.shape)}")
    m_B1HW = keep_mask_BHW.float().unsqueeze(1)
    out = []
    for pn in patch_nums:
        if keep_first_scale and pn * pn <= 3:
            out.append(torch.ones(m_B1HW.shape[0], 1, pn, pn, device=m_B1HW.device))
        else:
            down_B1hw = F.interpolate(m_B1HW, size=(pn, pn), mode="bilinear", align_corners=False)
            out.append((down_B1hw > 0.5).float())
    return out


Labels = int | Sequence[int] | torch.Tensor | None
"""What a sampler takes as ``labels``: one class id for all, one per image, or None (drawn at random)."""


@dataclass
class EditSpec:
    """Tokens to teacher-force while sampling (zero-shot editing).

    keep_idx: the image's tokens, K tensors (B or 1, l). keep_mask_BHW: a keep mask at the last scale,
    (B or 1, h, w) or (h, w), with 1 = keep the image's token, 0 = generate; ``scale_masks`` derives the
    coarser scales' masks. keep_first_scale: always keep scales of <= 3 tokens (published behaviour).
    """

    keep_idx: Sequence[torch.Tensor]
    keep_mask_BHW: torch.Tensor
    keep_first_scale: bool = True

    def check(self, patch_nums: Sequence[int], B: int) -> None:
        """Raise a clear error when the tokens do not fit the schedule or the batch."""
        if len(self.keep_idx) != len(patch_nums):
            raise ValueError(
                f"EditSpec.keep_idx has {len(self.keep_idx)} scales but the model has {len(patch_nums)} "
                f"(patch_nums={tuple(patch_nums)}); tokenize the image with vae.img_to_idx"
            )
        for si, (idx, pn) in enumerate(zip(self.keep_idx, patch_nums, strict=True)):
            if idx.ndim != 2 or idx.shape[1] != pn * pn or idx.shape[0] not in (1, B):
                raise ValueError(
                    f"EditSpec.keep_idx[{si}] has shape {tuple(idx.shape)}; expected (1 or {B}, {pn * pn})"
                )
        n = self.keep_mask_BHW.shape[0] if self.keep_mask_BHW.ndim == 3 else 1
        if n not in (1, B):
            raise ValueError(f"EditSpec.keep_mask_BHW holds {n} masks for a batch of {B}; give 1 or {B}")


@dataclass
class SampleOutput:
    images: torch.Tensor  # (B, 3, H, W) in [0, 1]
    tokens: list[torch.Tensor]  # K tensors (B, l): the tokens that formed f_hat (kept ones when editing)
    labels: torch.Tensor  # (B,)
    f_hat: torch.Tensor | None = None  # (B, Cv, h, w): the final latent the images were decoded from


def resolve_labels(
    var: VAR, B: int, labels, generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """None -> uniform random classes (one multinomial draw); int -> that class for all (negative = null);
    sequence/tensor -> as given. Out-of-range ids raise a clear error."""
    if labels is None:
        uniform = torch.full((1, var.num_classes), 1.0 / var.num_classes, device=device)
        return torch.multinomial(uniform, num_samples=B, replacement=True, generator=generator).reshape(B)
    if isinstance(labels, int):
        labels = var.num_classes if labels < 0 else labels
        label_B = torch.full((B,), labels, device=device, dtype=torch.long)
    else:
        label_B = torch.as_tensor(labels, device=device, dtype=torch.long).reshape(-1)
        if label_B.numel() != B:
            raise ValueError(f"got {label_B.numel()} labels for a batch of {B}")
    var.check_labels(label_B, allow_null=True)
    return label_B


@dataclass
class SamplingStart:
    """What every sampler computes before the first scale: labels, the class embeddings (conditional rows,
    then unconditional rows when guided), the AdaLN input, the first scale's input tokens and the per-scale
    keep masks of an edit."""

    label_B: torch.Tensor  # (B,)
    cond_BD: torch.Tensor  # (N, D), N = 2B with guidance else B
    cond: torch.Tensor  # the blocks' AdaLN input: cond_BD or its shared projection
    x_NlC: torch.Tensor  # (N, l_1, C) first-scale input
    lvl_pos_1LC: torch.Tensor  # (1, L, C) level + position embeddings
    guided: bool
    generator: torch.Generator | None
    masks: list[torch.Tensor] | None  # per-scale keep masks (B or 1, 1, h, w) when editing


def start_sampling(
    var: VAR,
    vae: MultiScaleVQVAE,
    B: int,
    labels: Labels,
    args: SamplingArgs,
    generator: torch.Generator | None,
    edit: EditSpec | None,
) -> SamplingStart:
    """Checks, the seeded generator, labels (one multinomial draw when random) and the first input."""
    check_compatible(var, vae)
    check_sampling_args(var, args.cfg, args.top_k, args.top_p)
    device = var.pos_1LC.device
    if generator is None and args.seed is not None:
        generator = torch.Generator(device=device).manual_seed(args.seed)
    label_B = resolve_labels(var, B, labels, generator, device)
    patch_nums = var.patch_nums
    guided = args.cfg > 0  # with cfg == 0 the unconditional half cannot change the logits: skip it
    n_rows = 2 * B if guided else B
    masks = None
    if edit is not None:
        edit.check(patch_nums, B)
        masks = scale_masks(edit.keep_mask_BHW.to(device), patch_nums, edit.keep_first_scale)
    cond_label = torch.cat((label_B, torch.full_like(label_B, var.num_classes))) if guided else label_B
    sos_BD = cond_BD = var.class_emb(cond_label)
    lvl_pos_1LC = var.lvl_embed(var.lvl_1L) + var.pos_1LC
    x_NlC = (
        sos_BD.unsqueeze(1).expand(n_rows, var.first_l, -1)
        + var.pos_start.expand(n_rows, var.first_l, -1)
        + lvl_pos_1LC[:, : var.first_l]
    )
    return SamplingStart(label_B, cond_BD, var.cond(cond_BD), x_NlC, lvl_pos_1LC, guided, generator, masks)


def run_scales(
    var: VAR,
    vae: MultiScaleVQVAE,
    st: SamplingStart,
    run_scale: Callable[[int, torch.Tensor], torch.Tensor],
    args: SamplingArgs,
    edit: EditSpec | None,
    logits_hook: Callable[[int, torch.Tensor], None] | None,
    scale_hook: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The coarse-to-fine loop shared by every sampler: ``run_scale(si, x_NlC) -> logits (N, l, V)`` is the
    transformer (with whatever cache the caller keeps); guidance, filtering, the random draws, teacher-forced
    edit tokens and the ``f_hat`` update happen here, identically for all. ``scale_hook(si, f_hat)`` sees
    the cumulative latent (B, Cv, h, w) after each scale (e.g. to show the coarse-to-fine progression).
    Returns ``f_hat`` and the tokens of every scale."""
    B, K, patch_nums = st.label_B.shape[0], len(var.patch_nums), var.patch_nums
    device = st.x_NlC.device
    codebook_VC = vae.quantize.embedding.weight
    f_hat = st.cond_BD.new_zeros(B, var.Cvae, patch_nums[-1], patch_nums[-1])
    tokens: list[torch.Tensor] = []
    x_NlC, cur_L = st.x_NlC, 0
    for si, pn in enumerate(patch_nums):
        ratio = si / (K - 1) if K > 1 else 0.0
        cur_L += pn * pn
        logits_BlV = run_scale(si, x_NlC)
        if st.guided:
            t = args.cfg * ratio
            logits_BlV = (1 + t) * logits_BlV[:B] - t * logits_BlV[B:]
        if logits_hook is not None:
            logits_hook(si, logits_BlV.clone())
        idx_Bl = sample_tokens(logits_BlV, args.top_k, args.top_p, st.generator)
        if args.more_smooth:
            tau = max(0.27 * (1 - ratio * 0.95), 0.005)
            h_BlCv = gumbel_soft_embedding(logits_BlV.mul(1 + ratio), codebook_VC, tau, st.generator)
        else:
            h_BlCv = vae.quantize.embedding(idx_Bl)
        h_BCvhw = h_BlCv.transpose(1, 2).reshape(B, var.Cvae, pn, pn)
        if st.masks is not None:
            keep_B1hw = st.masks[si]
            gt_Bl = edit.keep_idx[si].to(device).expand(B, -1)
            gt_BCvhw = vae.quantize.embedding(gt_Bl).transpose(1, 2).reshape(B, var.Cvae, pn, pn)
            # where() rather than the notebook's gt*m + h*(1-m): equal for finite values, and a
            # non-finite sampled value at a kept position cannot leak into f_hat.
            h_BCvhw = torch.where(keep_B1hw.bool(), gt_BCvhw, h_BCvhw)
            keep_Bl = keep_B1hw.view(-1, pn * pn).expand(B, -1).bool()
            idx_Bl = torch.where(keep_Bl, gt_Bl, idx_Bl)
        tokens.append(idx_Bl)
        f_hat, next_BCvhw = vae.quantize.next_autoregressive_input(si, f_hat, h_BCvhw)
        if scale_hook is not None:
            scale_hook(si, f_hat)
        if si != K - 1:
            nxt = next_BCvhw.view(B, var.Cvae, -1).transpose(1, 2)
            x_NlC = var.word_embed(nxt) + st.lvl_pos_1LC[:, cur_L : cur_L + patch_nums[si + 1] ** 2]
            x_NlC = x_NlC.repeat(2, 1, 1) if st.guided else x_NlC
    return f_hat, tokens


@dataclass
class SampleCall:
    """A sampler's keyword options beside ``B`` / ``labels`` / ``args``, as :func:`sample` names them: the
    other samplers (fast, the AR baseline's) take ``**options`` and read them here, so the signature is
    written once."""

    args: SamplingArgs
    generator: torch.Generator | None = None
    edit: EditSpec | None = None
    logits_hook: Callable[[int, torch.Tensor], None] | None = None
    scale_hook: Callable[[int, torch.Tensor], None] | None = None

    @classmethod
    def of(cls, args: SamplingArgs | None, options: dict[str, Any]) -> SampleCall:
        own = {k: options.pop(k) for k in ("generator", "edit", "logits_hook", "scale_hook") if k in options}
        return cls(SamplingArgs.of(args, **options), **own)


@torch.no_grad()
def sample(
    var: VAR,
    vae: MultiScaleVQVAE,
    B: int,
    labels: Labels = None,
    args: SamplingArgs | None = None,
    *,
    generator: torch.Generator | None = None,
    edit: EditSpec | None = None,
    logits_hook: Callable[[int, torch.Tensor], None] | None = None,
    scale_hook: Callable[[int, torch.Tensor], None] | None = None,
    **settings: Any,
) -> SampleOutput:
    """Generate B images coarse to fine with ``args`` (:class:`SamplingArgs`; ``settings``: fields over it,
    e.g. ``cfg=3, seed=0``).

    Guidance at scale k of K: ``t = cfg * k / (K - 1)``, ``logits = (1 + t) * cond - t * uncond`` (no
    guidance at the first scale; ``cfg`` is w - 1 in the ``u + w (c - u)`` form). ``seed`` seeds a fresh
    generator on the model's device (CPU and CUDA streams differ); ``generator`` passes one in.
    ``logits_hook(si, logits_BlV)`` sees the guided logits of every scale before filtering,
    ``scale_hook(si, f_hat_BCvhw)`` the cumulative latent after it (decode it with ``vae.fhat_to_img``). The result
    holds the images, the tokens of every scale, the labels and the final latent ``f_hat``.
    """
    a = SamplingArgs.of(args, **settings)
    st = start_sampling(var, vae, B, labels, a, generator, edit)

    def run_scale(si: int, x_NlC: torch.Tensor) -> torch.Tensor:
        h_NlC = x_NlC
        for block in var.blocks:  # each block appends this scale's k, v to its cache
            h_NlC = block(h_NlC, st.cond, None)
        return var.get_logits(h_NlC, st.cond_BD)

    var.kv_caching(True)
    try:
        f_hat, tokens = run_scales(var, vae, st, run_scale, a, edit, logits_hook, scale_hook)
    finally:
        var.kv_caching(False)
    images = vae.fhat_to_img(f_hat).add_(1).mul_(0.5)
    return SampleOutput(images=images, tokens=tokens, labels=st.label_B, f_hat=f_hat)
