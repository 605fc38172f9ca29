"""The raster-scan AR baseline (paper Table 3, row 1) in the same framework as VAR.

A GPT-style decoder with VAR's own blocks (AdaLN conditioned on the class embedding, normalised q/k
attention) that predicts the tokens of one h x w token map one by one in raster order (left to right, top
to bottom) under a causal mask. The class embedding is the start token and the AdaLN condition, as in VAR;
every position adds a learned absolute position embedding. Tokens enter through a learned embedding table
(V x C, GPT-2 style), since the AR model sees token ids, not the tokenizer's multi-scale inputs.

Tokens. The model uses the same tokenizer as VAR with its scale schedule reduced to the last scale alone:
the continuous latent ``f`` (B, Cv, h, w) is quantized once at the full grid (the nearest shared-codebook
entry per position, no residual pyramid) and decoded through the last scale's phi. This is the one-scale
VQ-VAE that the multi-scale tokenizer generalises (K = 1), the setting of the paper's AR row. Its
reconstructions are coarser than the K-scale ones (the codebook serves residuals of K scales), which bounds
what any AR model on these tokens can reach; :mod:`var_lightning.studies.ar_vs_var` reports both
reconstruction errors next to the comparison.

Sampling (:func:`ar_sample`): one token per step (h * w steps), with a preallocated KV cache and the AdaLN
modulation computed once per image; classifier-free guidance ``(1 + cfg) * cond - cfg * uncond`` at a
constant strength (the common AR practice; VAR ramps it over scales), top-k / top-p as in VAR's sampler.

Shapes: B batch, N = h * w tokens, n tokens of a prefix, C width, V vocabulary, Cv codebook dim.
"""

from __future__ import annotations

import torch
from torch import nn

from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.layers import AdaLNBeforeHead, AdaLNSelfAttn, SharedAdaLin, StaticKVCache
from var_lightning.transformer.sampling import (
    Labels,
    SampleCall,
    SampleOutput,
    check_compatible,
    check_sampling_args,
    resolve_labels,
    sample_tokens,
)
from var_lightning.transformer.var import VAR, compiled_run_blocks, run_blocks


def causal_bias(n: int) -> torch.Tensor:
    """(1, 1, n, n) additive mask: 0 where token i may attend to token j (j <= i), else -inf."""
    i = torch.arange(n)
    return torch.where(i.view(-1, 1) >= i.view(1, -1), 0.0, -torch.inf).view(1, 1, n, n)


class ARTransformer(nn.Module):
    """Class-conditional raster-order AR transformer over the last scale's grid (a plain ``nn.Module``).

    ``cfg`` is a :class:`VARConfig` (same depth rule, blocks and initialisation); only the last entry of
    ``patch_nums`` matters (the token grid side). ``patch_nums`` is kept whole so the tokenizer check of
    VAR applies unchanged. Attributes the commands rely on match VAR's (``num_classes``, ``V``, ``Cvae``,
    ``patch_nums``, ``depth``, ``check_labels``, ``kv_caching``).
    """

    kind = "ar"

    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        self.cfg = cfg
        C = D = cfg.width
        self.C, self.D, self.V, self.Cvae = C, D, cfg.vocab_size, cfg.cvae
        self.num_classes, self.depth = cfg.num_classes, cfg.depth
        self.patch_nums = tuple(cfg.patch_nums)
        self.grid = self.patch_nums[-1]
        self.L = self.grid * self.grid  # tokens generated, one per step
        self.begin_ends = [(0, self.L)]  # one "scale": the whole raster sequence
        std = cfg.resolved_init_std

        self.pos_1LC = nn.Parameter(torch.empty(1, self.L, C))
        nn.init.trunc_normal_(self.pos_1LC, mean=0.0, std=std)
        self.register_buffer("attn_bias_for_masking", causal_bias(self.L))
        self.tok_embed = nn.Embedding(self.V, C)
        self.class_emb = nn.Embedding(self.num_classes + 1, C)  # index num_classes = null class
        self.shared_ada_lin = (
            nn.Sequential(nn.SiLU(inplace=False), SharedAdaLin(D, 6 * C)) if cfg.shared_aln else nn.Identity()
        )
        dpr = [cfg.drop_path_rate * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            [
                AdaLNSelfAttn(C, D, cfg.num_heads, cfg.mlp_ratio, cfg.drop_rate, cfg.attn_drop, dpr[i],
                              cfg.norm_eps, cfg.shared_aln, cfg.attn_l2_norm)
                for i in range(cfg.depth)
            ]
        )  # fmt: skip
        self.head_nm = AdaLNBeforeHead(C, D, cfg.norm_eps)
        self.head = nn.Linear(C, self.V)
        self.init_weights()

    # VAR's initialisation and trunk helpers, shared as they are: they use only the attributes both classes
    # define (cfg, C, blocks, shared_ada_lin, head_nm, head, num_classes).
    init_weights = VAR.init_weights
    kv_caching = VAR.kv_caching
    check_labels = VAR.check_labels
    cond = VAR.cond
    get_logits = VAR.get_logits

    def embed_inputs(self, label_B: torch.Tensor, idx_Bn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs (B, n, C) = [class embedding; embeddings of tokens 0..n-2] + positions, and ``cond_BD``."""
        n = idx_Bn.shape[1]
        with torch.autocast(device_type=idx_Bn.device.type, enabled=False):
            cond_BD = self.class_emb(label_B)
            x_BnC = torch.cat((cond_BD.unsqueeze(1), self.tok_embed(idx_Bn[:, : n - 1])), dim=1)
            x_BnC = x_BnC + self.pos_1LC[:, :n]
        return x_BnC, cond_BD

    def forward_hidden(
        self, label_B: torch.Tensor, idx_Bn: torch.Tensor, compile: bool | str = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The trunk's output (B, n, C) predicting tokens 0..n-1, and ``cond_BD``."""
        n = idx_Bn.shape[1]
        if not 1 <= n <= self.L:
            raise ValueError(
                f"the AR model takes 1..{self.L} tokens of a {self.grid}x{self.grid} grid, got {n}"
            )
        x_BnC, cond_BD = self.embed_inputs(label_B, idx_Bn)
        trunk = run_blocks if not compile else compiled_run_blocks(None if compile is True else compile)
        return trunk(
            self.blocks, x_BnC, self.cond(cond_BD), self.attn_bias_for_masking[:, :, :n, :n], None
        ), cond_BD

    def forward(self, label_B: torch.Tensor, idx_Bn: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (B, n, V) float32: position i predicts token i from the class and tokens
        < i. ``idx_Bn``: the ground-truth tokens in raster order (a prefix of n tokens gives n logits)."""
        h_BnC, cond_BD = self.forward_hidden(label_B, idx_Bn)
        return self.get_logits(h_BnC, cond_BD)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.pos_1LC.numel() + self.class_emb.weight.numel() + self.tok_embed.weight.numel()
        return n


# ---------------------------------------------------------------------------------------------- tokens
@torch.no_grad()
def raster_tokens(vae: MultiScaleVQVAE, img_B3HW: torch.Tensor) -> torch.Tensor:
    """The AR model's tokens of a batch of images: (B, h * w) in raster order (see the module docstring)."""
    with torch.autocast(device_type=img_B3HW.device.type, enabled=False):
        return vae.quantize.f_to_single_scale_idx(vae.encode(img_B3HW.float()))


def raster_tokens_to_img(vae: MultiScaleVQVAE, idx_BN: torch.Tensor) -> torch.Tensor:
    """Decode raster-order tokens (B, h * w) to images in [-1, 1]."""
    return vae.fhat_to_img(vae.quantize.single_scale_fhat(idx_BN))


# ---------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def ar_sample(
    model: ARTransformer, vae: MultiScaleVQVAE, B: int, labels: Labels, call: SampleCall
) -> SampleOutput:
    """Generate B images token by token with ``call``'s arguments and options; ``build_sampler`` gives it
    VAR's ``sample`` signature (``draw(B, labels, args, cfg=..., seed=...)``), which the commands call.

    ``logits_hook(i, logits_B1V)`` sees the guided logits of step i; ``scale_hook(0, f_hat)`` the final latent
    (there is one scale). Labels are drawn as VAR's sampler draws them (one multinomial when not given).
    Editing and ``more_smooth`` are VAR features and raise here.
    """
    a, generator, logits_hook, scale_hook = call.args, call.generator, call.logits_hook, call.scale_hook
    cfg, top_k, top_p, seed = a.cfg, a.top_k, a.top_p, a.seed
    if call.edit is not None:
        raise ValueError("zero-shot editing needs a VAR model; this is the raster-order AR baseline")
    if a.more_smooth:
        raise ValueError(
            "more_smooth is a VAR sampling option (Gumbel-smoothed scales); set more_smooth=false"
        )
    check_compatible(model, vae)
    check_sampling_args(model, cfg, top_k, top_p)
    device = model.pos_1LC.device
    if generator is None and seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    label_B = resolve_labels(model, B, labels, generator, device)
    guided = cfg > 0
    cond_label = torch.cat((label_B, torch.full_like(label_B, model.num_classes))) if guided else label_B
    cond_BD = model.class_emb(cond_label)
    cond = model.cond(cond_BD)
    ada = [block.modulation(cond) for block in model.blocks]  # once per image, not per token
    head_ada = model.head_nm.modulation(cond_BD)
    caches = [StaticKVCache(model.L) for _ in model.blocks]
    for block, cache in zip(model.blocks, caches, strict=True):
        block.attn.kv_cache = cache
    tokens_BN = torch.empty(B, model.L, dtype=torch.long, device=device)
    x_N1C = cond_BD.unsqueeze(1) + model.pos_1LC[:, :1]
    try:
        for i in range(model.L):
            h = x_N1C
            for block, cache, a in zip(model.blocks, caches, ada, strict=True):
                cache.pos = i
                h = block.forward_modulated(h, a, None)
            logits_B1V = model.head(model.head_nm.forward_modulated(h.float(), head_ada).float()).float()
            if guided:
                logits_B1V = (1 + cfg) * logits_B1V[:B] - cfg * logits_B1V[B:]
            if logits_hook is not None:
                logits_hook(i, logits_B1V.clone())
            idx_B1 = sample_tokens(logits_B1V, top_k, top_p, generator)
            tokens_BN[:, i : i + 1] = idx_B1
            if i + 1 < model.L:
                x_N1C = model.tok_embed(idx_B1) + model.pos_1LC[:, i + 1 : i + 2]
                x_N1C = x_N1C.repeat(2, 1, 1) if guided else x_N1C
    finally:
        model.kv_caching(False)
    f_hat = vae.quantize.single_scale_fhat(tokens_BN)
    if scale_hook is not None:
        scale_hook(0, f_hat)
    images = vae.fhat_to_img(f_hat).add_(1).mul_(0.5)
    return SampleOutput(images=images, tokens=[tokens_BN], labels=label_B, f_hat=f_hat)
