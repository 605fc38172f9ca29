"""Analytic parameter and FLOP counts of the VAR transformer (and of the raster-order AR baseline,
:func:`ar_flops` / :func:`ar_num_params`), for the compute axis of scaling laws and the AR-vs-VAR table.

Only matrix multiplications are counted (2 FLOPs per multiply-add), as in Kaplan et al. (2020) and in
``torch.utils.flop_counter``; norms, softmax, GELU, biases, embeddings lookups and the loss are
ignored (they are O(L C) against O(L C^2)). Forward FLOPs of one image, with L tokens over all scales,
l_1 first-scale tokens, width C, condition width D (= C), MLP hidden width F, vocabulary V, codebook dim Cv:

* ``word_embed``  2 (L - l_1) Cv C  (the start tokens come from the class embedding, no matmul)
* per block: ``qkv`` 2 L C 3C, ``attn_scores`` (q k^T) 2 P C, ``attn_values`` (a v) 2 P C, ``proj``
  2 L C C, ``mlp`` 2 L C F * 2
* ``adaln``  2 D 6C per block (or once with a shared AdaLN), ``head_adaln`` 2 D 2C: these linears act
  on the (B, D) condition, once per image, not per token
* ``head``  2 L C V

P is the number of attended (query, key) token pairs; each costs 2C FLOPs for its score and 2C for its
share of the values, summed over heads (H heads of width c = C / H). With the block-causal mask a token
of scale k sees every token of scales 1..k, so ``P = sum_k l_k * (l_1 + ... + l_k)``, 62% of L^2 at 256px (the last scale holds 38% of the tokens
and sees all of them). ``attention="block_causal"`` (the default) counts these pairs: it is the work the
model needs, independent of the kernel, and what FlexAttention's block-sparse kernel does up to its
tile granularity. ``attention="dense"`` counts P = L^2: what the SDPA path computes with its dense
additive mask, and what torch's FLOP counter reports for SDPA (on CUDA; on CPU it has no formula for the
fused kernel, so the test runs SDPA's math backend, two dense batched matmuls). At 256px (L = 680)
attention is 6% (block-causal) or 10% (dense) of a d16 forward.

Training FLOPs per image are 3x forward: each matmul's backward computes the input gradient and the
weight gradient, each as costly as the forward product (the word-embed input gradient, which is not
needed, makes the true factor slightly below 3: ~2.99 on the test's tiny models). Total training compute is
``C = train_flops_per_image * images_seen``.
"""

from __future__ import annotations

from collections.abc import Sequence

from var_lightning.transformer.config import VARConfig

TRAIN_FORWARD_RATIO = 3  # forward + backward (2x forward)


def attention_pairs(patch_nums: Sequence[int], dense: bool = False) -> int:
    """(query, key) pairs one head attends over: block-causal ``sum_k l_k * cum_l_k``, or dense ``L^2``."""
    sizes = [int(p) ** 2 for p in patch_nums]
    if dense:
        return sum(sizes) ** 2
    pairs, seen = 0, 0
    for l_k in sizes:
        seen += l_k
        pairs += l_k * seen
    return pairs


def _trunk_flops(cfg: VARConfig, tokens: int, pairs: int) -> dict[str, int]:
    """Forward FLOPs of the blocks, AdaLN and head over ``tokens`` tokens and ``pairs`` attended pairs:
    what VAR and the AR baseline share (only the input embedding and the mask differ)."""
    d, C = cfg.depth, int(cfg.width)
    D, F = C, round(C * cfg.mlp_ratio)
    return {
        "qkv": d * 2 * tokens * C * 3 * C,
        "attn_scores": d * 2 * pairs * C,
        "attn_values": d * 2 * pairs * C,
        "proj": d * 2 * tokens * C * C,
        "mlp": d * 2 * 2 * tokens * C * F,
        "adaln": (1 if cfg.shared_aln else d) * 2 * D * 6 * C,
        "head_adaln": 2 * D * 2 * C,
        "head": 2 * tokens * C * cfg.vocab_size,
    }


def var_flops(cfg: VARConfig, attention: str = "block_causal") -> dict[str, int]:
    """FLOPs of one image through ``VAR(cfg)``.

    Returns the per-component forward counts (``word_embed``, ``qkv``, ``attn_scores``, ``attn_values``,
    ``proj``, ``mlp``, ``adaln``, ``head_adaln``, ``head``; block terms summed over depth), their sum
    ``forward``, ``train`` = 3 * forward, and ``attn_pairs`` / ``attn_pairs_dense`` / ``seq_len`` for
    reference. ``attention``: "block_causal" (default) or "dense", see the module docstring.
    """
    if attention not in ("block_causal", "dense"):
        raise ValueError(f"attention={attention!r}: choose 'block_causal' or 'dense'")
    L, l1 = cfg.seq_len, cfg.first_l
    pairs = attention_pairs(cfg.patch_nums, dense=attention == "dense")
    out = {"word_embed": 2 * (L - l1) * cfg.cvae * int(cfg.width), **_trunk_flops(cfg, L, pairs)}
    forward = sum(out.values())
    out.update(
        forward=forward,
        train=TRAIN_FORWARD_RATIO * forward,
        attn_pairs=attention_pairs(cfg.patch_nums),
        attn_pairs_dense=attention_pairs(cfg.patch_nums, dense=True),
        seq_len=L,
    )
    return out


def training_compute(train_flops_per_image: float, images_seen: int | float) -> float:
    """Total training compute C in FLOPs."""
    if train_flops_per_image < 0 or images_seen < 0:
        raise ValueError(f"negative FLOPs per image ({train_flops_per_image}) or images ({images_seen})")
    return float(train_flops_per_image) * float(images_seen)


def _trunk_params(cfg: VARConfig) -> int:
    """Blocks, the shared AdaLN (``-s`` models), the head and the class embedding: what VAR and the AR
    baseline share."""
    C = D = int(cfg.width)
    F = round(C * cfg.mlp_ratio)
    H = int(cfg.num_heads)
    # qkv weight, q/v biases, proj, per-head temperature
    attn = 3 * C * C + 2 * C + (C * C + C) + (H if cfg.attn_l2_norm else 0)
    mlp = (C * F + F) + (F * C + C)
    ada = 6 * C if cfg.shared_aln else D * 6 * C + 6 * C  # ada_gss or the block's own AdaLN linear
    shared = D * 6 * C + 6 * C if cfg.shared_aln else 0
    head = (D * 2 * C + 2 * C) + (C * cfg.vocab_size + cfg.vocab_size)
    return (cfg.num_classes + 1) * C + shared + cfg.depth * (attn + mlp + ada) + head


def num_params(cfg: VARConfig) -> int:
    """Exact parameter count of ``VAR(cfg)`` (embeddings, AdaLN and head included)."""
    C, K, L, l1 = int(cfg.width), len(cfg.patch_nums), cfg.seq_len, cfg.first_l
    embeddings = (l1 + L) * C + K * C  # pos_start, pos_1LC, lvl_embed
    word_embed = cfg.cvae * C + C
    return embeddings + word_embed + _trunk_params(cfg)


# ---------------------------------------------------------------------------------------------- AR baseline
def ar_seq_len(cfg: VARConfig) -> int:
    """N: the AR baseline's tokens (and sampling steps), the last scale's grid."""
    return int(cfg.patch_nums[-1]) ** 2


def ar_flops(cfg: VARConfig, attention: str = "causal") -> dict[str, int]:
    """FLOPs of one image through ``ARTransformer(cfg)`` (:mod:`var_lightning.transformer.ar`), counted as
    :func:`var_flops` counts VAR's, over N = h * w tokens. The token embedding is a table lookup (no
    matmul, 0 FLOPs); with the causal mask token i attends to i + 1 tokens, ``P = N (N + 1) / 2`` pairs
    (``attention="dense"``: N^2, what a dense-mask kernel computes). Same keys as :func:`var_flops`, with
    ``tok_embed`` in place of ``word_embed``."""
    if attention not in ("causal", "dense"):
        raise ValueError(f"attention={attention!r}: choose 'causal' or 'dense'")
    N = ar_seq_len(cfg)
    pairs = N * N if attention == "dense" else N * (N + 1) // 2
    out = {"tok_embed": 0, **_trunk_flops(cfg, N, pairs)}
    forward = sum(out.values())
    out.update(forward=forward, train=TRAIN_FORWARD_RATIO * forward, attn_pairs=N * (N + 1) // 2,
               attn_pairs_dense=N * N, seq_len=N)  # fmt: skip
    return out


def ar_num_params(cfg: VARConfig) -> int:
    """Exact parameter count of ``ARTransformer(cfg)``: positions (N x C), the token table (V x C) and VAR's
    trunk (blocks, class embedding, AdaLN, head)."""
    C = int(cfg.width)
    return ar_seq_len(cfg) * C + cfg.vocab_size * C + _trunk_params(cfg)


def model_flops(cfg: VARConfig, kind: str = "var") -> dict[str, int]:
    """:func:`var_flops` or :func:`ar_flops` by model kind (``"var"`` / ``"ar"``)."""
    return ar_flops(cfg) if kind == "ar" else var_flops(cfg)


def model_num_params(cfg: VARConfig, kind: str = "var") -> int:
    return ar_num_params(cfg) if kind == "ar" else num_params(cfg)


def paper_num_params(depth: int) -> int:
    """The paper's main count (Eq. 8): ``N(d) = d (4 w^2 + 8 w^2 + 6 w^2) = 73728 d^3`` for w = 64 d.

    It keeps only the attention, MLP and per-block AdaLN weight matrices, so it is below ``num_params``
    (e.g. d16: 302M against 310M) and is given for reference; the scaling studies use ``num_params``.
    """
    return 73728 * depth**3
