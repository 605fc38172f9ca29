"""Memory and batch planning for a VAR (or AR) training run: what each GPU holds, the largest batch that fits,
tokens and FLOPs per step, and the time per epoch at a stated MFU. ``var-plan`` prints it for a composed
``var-train`` config (:mod:`var_lightning.cli.plan`).

Per GPU, in bytes (N transformer parameters, W ranks that share the shards, B images per GPU):

* **parameters** 4N (fp32 master weights; FSDP full-shard: 4N / W, plus one block gathered at a time),
  plus 2N for the bf16 copies autocast keeps for backward under ``bf16-mixed`` / ``16-mixed``;
* **gradients** 4N (ZeRO-2 and full shard: 4N / W); **optimizer** 8N (AdamW's two fp32 moments; sharded like
  the gradients);
* **activations** B x (L tokens) x (``BLOCK_SAVED`` x C per block x depth + ``TRUNK_SAVED`` x C) elements at
  the autocast width, plus the head's logits (L x V: bf16 logits and fp32 log-probabilities; none with
  ``fused_ce``). ``BLOCK_SAVED`` counts the tensors our AdaLN block saves for backward per token (qkv,
  attention output, the 4C-wide MLP input and GELU output, the norms and modulations): 24 C, checked against
  autograd's saved tensors in the tests. With activation checkpointing a block keeps only its input (C) and
  one block is recomputed at a time;
* **tokenizer** its fp32 weights (frozen) and two of the encoder's full-resolution feature maps (ch x H x W,
  fp32) for B images: tokenizing on the fly holds them briefly (no grad); pre-tokenized shards avoid it;
* **overhead** ``CUDA_OVERHEAD`` (context, cuBLAS / NCCL workspaces) and ``FRAGMENTATION`` of the rest.

Validation (image grids, generation metrics) samples in calls of :func:`sampling_batch` images, sized so one
call's working memory (:func:`sampling_bytes_per_image`: the KV cache over every block, classifier-free
guidance doubling it, the last scale's attention scores and logits, the tokenizer's decode) stays within a
budget (``model.train.sample_memory_gib``). Its peak (:func:`validation_plan`) is what stays resident from
training (weights, gradients, AdamW state, the tokenizer) plus, when the transformer is sharded, the full
copy sampling gathers (bf16 under a bf16 precision), plus one call's working memory.

FLOPs come from :mod:`var_lightning.scaling.flops` (matmuls only, training = 3 x forward); time per epoch =
steps x FLOPs per step / (GPUs x peak x MFU). Estimates, not measurements: the largest batch keeps a margin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from var_lightning.scaling.flops import ar_seq_len, model_flops, model_num_params

GIB = 1024**3
BLOCK_SAVED = 24  # elements per token per block, in units of the width C (see the module docstring)
TRUNK_SAVED = 4  # embeddings, the final AdaLN and the head's input, in units of C per token
CUDA_OVERHEAD = 2.0 * GIB
FRAGMENTATION = 0.08
# dense bf16 tensor-core peak, FLOP/s, and memory, GiB (the GPUs users name with --gpu)
GPUS = {
    "h200": (989e12, 141),
    "h100": (989e12, 80),
    "a100-80": (312e12, 80),
    "a100": (312e12, 40),
    "l40s": (362e12, 48),
    "a6000": (155e12, 48),
    "4090": (165e12, 24),
}


@dataclass
class Setup:
    """What decides the memory of one training step, per GPU."""

    batch_per_gpu: int
    gpus: int = 1
    gpus_per_node: int = 8
    precision: str = "bf16-mixed"
    strategy: str = "ddp"  # ddp | fsdp | fsdp_grad_op | fsdp_hybrid
    activation_checkpointing: bool = False
    fused_ce: bool = False
    accumulate: int = 1

    @property
    def low_precision(self) -> bool:
        return any(k in str(self.precision) for k in ("bf16", "16-mixed", "16"))  # fp16/bf16 autocast

    @property
    def shard_ranks(self) -> int:
        """Ranks that share one copy of the sharded states (1 under DDP)."""
        if self.strategy == "fsdp_hybrid":
            return min(self.gpus, self.gpus_per_node)
        return self.gpus if self.strategy.startswith("fsdp") else 1


def _act_bytes(low: bool) -> float:
    return 2.0 if low else 4.0


def activations_per_image(cfg: Any, setup: Setup, kind: str = "var") -> float:
    """Bytes of activations saved for backward per training image (see the module docstring)."""

    L = ar_seq_len(cfg) if kind == "ar" else sum(p * p for p in cfg.patch_nums)
    C, depth, V = cfg.width, cfg.depth, cfg.vocab_size
    width = _act_bytes(setup.low_precision)
    per_block = (1 if setup.activation_checkpointing else BLOCK_SAVED) * C * L * width
    recompute = BLOCK_SAVED * C * L * width if setup.activation_checkpointing else 0.0
    head = 0.0 if setup.fused_ce else L * V * (4.0 + (2.0 if setup.low_precision else 0.0))
    return depth * per_block + recompute + TRUNK_SAVED * C * L * width + head


def tokenizer_bytes(vae_cfg: Any, batch: int) -> float:
    """The frozen tokenizer's fp32 weights and the encoder's largest maps for ``batch`` images (no grad)."""
    import torch

    # lazy: start time; the planner imports torch only to size a tokenizer on the meta device
    from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE

    with torch.device("meta"):
        n = sum(p.numel() for p in MultiScaleVQVAE(vae_cfg).parameters())
    side = vae_cfg.image_size
    return 4.0 * n + 2 * batch * vae_cfg.ch * side * side * 4.0  # weights; two full-resolution encoder maps


def plan(cfg: Any, vae_cfg: Any, setup: Setup, kind: str = "var") -> dict[str, float]:
    """Per-GPU bytes of each part and the total (see the module docstring)."""

    N = float(model_num_params(cfg, kind))
    W = setup.shard_ranks
    full_shard = setup.strategy in ("fsdp", "fsdp_hybrid")
    block = N / max(cfg.depth, 1)
    params = 4 * N / W + (
        2 * 4 * block if full_shard else 0.0
    )  # + the gathered block (and the next, prefetched)
    if setup.low_precision:
        params += 2 * (N / W + (2 * block if full_shard else 0.0))
    grads = 4 * N / (W if setup.strategy.startswith("fsdp") else 1)
    optim = 8 * N / (W if setup.strategy.startswith("fsdp") else 1)
    acts = setup.batch_per_gpu * activations_per_image(cfg, setup, kind)
    tok = tokenizer_bytes(vae_cfg, setup.batch_per_gpu)
    subtotal = params + grads + optim + acts + tok
    total = subtotal * (1 + FRAGMENTATION) + CUDA_OVERHEAD
    return {"parameters": params, "gradients": grads, "optimizer": optim, "activations": acts, "tokenizer": tok,
            "overhead": total - subtotal, "total": total}  # fmt: skip


DECODE_MAPS = 6  # full-resolution decoder feature maps alive at once while decoding (fp32, no grad)
ATTN_COPIES = 2  # scores and softmax of the last scale's attention (the unfused math path)
LOGIT_COPIES = 4  # logits, filtered logits, probabilities and top-p's sorted copy


def sampling_bytes_per_image(cfg: Any, vae_cfg: Any, dtype_bytes: float, kind: str = "var") -> float:
    """Working memory of one sampled image with classifier-free guidance (two rows: conditional and not),
    activations at ``dtype_bytes`` (2 for bf16 weights or autocast, 4 for fp32): the KV cache of every block
    over all L tokens, the last step's attention scores and logits (fp32), and the tokenizer's decode."""

    guided = 2
    if kind == "ar":
        L, last = ar_seq_len(cfg), 1
    else:
        L, last = sum(p * p for p in cfg.patch_nums), cfg.patch_nums[-1] ** 2
    kv = 2 * cfg.depth * L * cfg.width * dtype_bytes * guided
    attn = ATTN_COPIES * cfg.num_heads * last * L * 4.0 * guided
    mlp = 3 * 4 * cfg.width * last * dtype_bytes * guided  # one block's MLP hidden at the last scale
    logits = LOGIT_COPIES * last * cfg.vocab_size * 4.0 * guided
    side = vae_cfg.image_size
    decode = DECODE_MAPS * vae_cfg.ch * vae_cfg.ch_mult[0] * side * side * 4.0
    return kv + attn + mlp + logits + decode


def sampling_batch(cfg: Any, vae_cfg: Any, budget_bytes: float, dtype_bytes: float, kind: str = "var") -> int:
    """Images per sampling call whose working memory fits ``budget_bytes`` (at least 1)."""
    return max(1, int(budget_bytes // sampling_bytes_per_image(cfg, vae_cfg, dtype_bytes, kind)))


def validation_plan(
    cfg: Any, vae_cfg: Any, setup: Setup, budget_bytes: float, kind: str = "var"
) -> dict[str, float]:
    """Per-GPU bytes while validation samples (see the module docstring): the training states that stay
    resident, the gathered full copy of a sharded transformer, one sampling call, and the total."""

    N = float(model_num_params(cfg, kind))
    sharded = setup.strategy.startswith("fsdp")
    W = setup.shard_ranks
    dtype_bytes = 2.0 if setup.low_precision else 4.0
    resident = (4 + 4 + 8) * N / (W if sharded else 1) + tokenizer_bytes(vae_cfg, 0)
    copy = (2.0 if "bf16" in str(setup.precision) else 4.0) * N if sharded else 0.0
    batch = sampling_batch(cfg, vae_cfg, budget_bytes, dtype_bytes, kind)
    call = batch * sampling_bytes_per_image(cfg, vae_cfg, dtype_bytes, kind)
    subtotal = resident + copy + call
    total = subtotal * (1 + FRAGMENTATION) + CUDA_OVERHEAD
    return {"resident": resident, "gathered_copy": copy, "sampling_call": call, "sampling_batch": float(batch),
            "overhead": total - subtotal, "total": total}  # fmt: skip


def largest_batch(cfg: Any, vae_cfg: Any, setup: Setup, memory_bytes: float, kind: str = "var") -> int:
    """The largest images-per-GPU whose plan fits ``memory_bytes`` (0 when not even one image fits)."""
    lo, hi = 0, 1
    while (
        hi < 1 << 16
        and plan(cfg, vae_cfg, Setup(**{**asdict(setup), "batch_per_gpu": hi}), kind)["total"] <= memory_bytes
    ):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        fits = (
            plan(cfg, vae_cfg, Setup(**{**asdict(setup), "batch_per_gpu": mid}), kind)["total"]
            <= memory_bytes
        )
        lo, hi = (mid, hi) if fits else (lo, mid)
    return lo


def throughput(
    cfg: Any, setup: Setup, peak_flops: float, mfu: float, images: int | None, kind: str = "var"
) -> dict[str, float]:
    """Tokens and training FLOPs per optimizer step, and seconds per step and per epoch at ``mfu``."""

    global_batch = setup.batch_per_gpu * setup.gpus * setup.accumulate
    L = ar_seq_len(cfg) if kind == "ar" else sum(p * p for p in cfg.patch_nums)
    flops_step = model_flops(cfg, kind)["train"] * global_batch
    step_s = flops_step / (setup.gpus * peak_flops * mfu)
    out = {"global_batch": global_batch, "tokens_per_step": L * global_batch, "flops_per_step": flops_step,
           "seconds_per_step": step_s}  # fmt: skip
    if images:
        out["steps_per_epoch"] = images // global_batch
        out["hours_per_epoch"] = out["steps_per_epoch"] * step_s / 3600
    return out
