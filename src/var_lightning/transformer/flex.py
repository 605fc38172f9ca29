"""FlexAttention for VAR's block-causal mask (``attn_impl="flex"``).

The teacher-forced mask lets token i see token j iff scale(i) >= scale(j). As a dense (L, L) float mask it
keeps SDPA off its flash kernels and every masked score is still computed. A FlexAttention ``BlockMask``
records which 128 x 128 tiles are empty, full or partial, so the fused kernel skips the empty ones (about
half of them at 680 tokens) and applies the mask only inside the partial ones.

Model code (``layers.SelfAttention``, ``var.VAR.attention_masks``) imports this lazily, only when flex is
selected. On CUDA the kernel is ``torch.compile``-generated (a compiled ``flex_attention``, or the
enclosing compiled region's); on CPU the eager reference implementation runs forward only (torch has no
CPU backward for it), which is what the CPU equality tests use.

Shapes: B batch, H heads, L tokens (all scales up to ``end``), c head dim.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from var_lightning.transformer.compile_budget import reserve_recompiles
from var_lightning.transformer.masks import level_index

if TYPE_CHECKING:
    from var_lightning.transformer.var import VAR


@functools.lru_cache(maxsize=32)
def _block_mask(patch_nums: tuple[int, ...], end: int, device: str) -> BlockMask:
    # Built outside inference mode: the first call may come from Lightning's sanity check (under
    # torch.inference_mode), and the cached mask then serves training, whose autograd refuses to save
    # inference tensors for backward.
    with torch.inference_mode(False):
        lvl_L = level_index(patch_nums)[0, :end].to(device)

        def visible(
            b: torch.Tensor, h: torch.Tensor, q_idx: torch.Tensor, kv_idx: torch.Tensor
        ) -> torch.Tensor:
            return lvl_L[q_idx] >= lvl_L[kv_idx]

        return create_block_mask(visible, B=None, H=None, Q_LEN=end, KV_LEN=end, device=device)


def get_block_mask(model: VAR, end: int, device: torch.device | str) -> BlockMask:
    """The block-causal ``BlockMask`` over the first ``end`` tokens of ``model``'s schedule, built once per
    (schedule, end, device) and cached for the process (it is a few KB; building it costs milliseconds)."""
    # a compiled flex_attention meets every prefix length of the schedule, with and without grad, full and
    # partial batches: keep dynamo from running the last ones eagerly (the unfused path)
    reserve_recompiles(4 * len(model.patch_nums))
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _block_mask(tuple(model.patch_nums), int(end), str(device))


@functools.lru_cache(maxsize=4)
def _compiled_flex(backend: str | Callable = "inductor") -> Callable[..., torch.Tensor]:
    """``flex_attention`` compiled with static shapes (one graph per length; :func:`get_block_mask` reserves
    the budget); ``backend`` is for tests."""
    return torch.compile(flex_attention, dynamic=False, backend=backend)


def flex_attention_call(
    q_BHLc: torch.Tensor, k_BHLc: torch.Tensor, v_BHLc: torch.Tensor, block_mask: BlockMask, scale: float
) -> torch.Tensor:
    """Block-masked attention (B, H, L, c); the drop-in for ``scaled_dot_product_attention(q, k, v,
    attn_mask=dense_mask, scale=scale)``.

    Inputs are brought to one dtype as autocast does for SDPA (L2-normalised q, k come out of autocast
    in float32 while v is bf16). Inside a compiled region the enclosing graph fuses the kernel; in eager
    CUDA code a compiled ``flex_attention`` runs; on CPU the unfused reference runs (forward only).
    """
    device_type = q_BHLc.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
    else:
        dtype = torch.promote_types(torch.promote_types(q_BHLc.dtype, k_BHLc.dtype), v_BHLc.dtype)
    # Contiguous inputs: with torch 2.14's inductor (CPU), flex_attention on the head-split views of the qkv
    # projection made inside the same compiled graph returns wrong values (max error ~2 on unit-scale
    # data; tests/unit/test_fast_paths.py). Inside a compiled graph the copy fuses into the producer.
    q_BHLc, k_BHLc, v_BHLc = (t.to(dtype).contiguous() for t in (q_BHLc, k_BHLc, v_BHLc))
    if torch.compiler.is_compiling():
        return flex_attention(q_BHLc, k_BHLc, v_BHLc, block_mask=block_mask, scale=scale)
    if device_type == "cuda":
        return _compiled_flex()(q_BHLc, k_BHLc, v_BHLc, block_mask=block_mask, scale=scale)
    with warnings.catch_warnings():  # "called without torch.compile()": expected off CUDA
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q_BHLc, k_BHLc, v_BHLc, block_mask=block_mask, scale=scale)
