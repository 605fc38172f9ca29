"""Fast sampling: a preallocated KV cache, AdaLN modulation once per image, one CUDA graph per scale and an
optional bf16 channels-last decode. Same tokens as :func:`var_lightning.transformer.sampling.sample`.

Why it is faster. The plain sampler grows its KV cache with ``torch.cat`` (a full copy per scale and
block), recomputes every block's AdaLN projection at every scale although it depends on the class only,
and launches ~20 small kernels per block per scale, which dominates at small batch. Here each block
writes k, v into a :class:`StaticKVCache`, the modulation is computed once, and on CUDA the whole trunk
of one scale (blocks + head) is captured in a CUDA graph and replayed.

Why it gives the same tokens. The trunk runs the blocks' own code (``forward_modulated``) on the same
inputs, so fp32 numbers are equal; under autocast the cache stores k, v already in the autocast dtype,
the cast SDPA would apply anyway. Everything random or data-dependent between scales (guidance, the
logits hook, top-k/top-p filtering, ``multinomial``, the Gumbel draw of ``more_smooth``, teacher-forced
edit tokens, the tokenizer's next input) is the plain sampler's own loop (``sampling.run_scales``), run
eagerly outside any graph, so a seeded generator is consumed call for call as in the plain path
(specification section d) and editing works the same way.

Shapes: B batch, N transformer rows (2B with guidance, else B), K scales, l tokens of one scale, L tokens
of all scales, C width, V vocabulary, Cv tokenizer codebook dim.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.transformer.ar import ar_sample
from var_lightning.transformer.config import SamplingArgs
from var_lightning.transformer.layers import StaticKVCache
from var_lightning.transformer.sampling import (
    Labels,
    SampleCall,
    SampleOutput,
    check_compatible,
    run_scales,
    sample,
    start_sampling,
)
from var_lightning.transformer.var import VAR


def _graphs_supported(device: torch.device) -> bool:
    return device.type == "cuda"


def _warm_up(fns: Sequence[Callable[[], torch.Tensor]]) -> None:
    """Run every function twice on a side stream (lazy cuBLAS/cuDNN set-up must not happen in a capture)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            for fn in fns:
                fn()
    torch.cuda.current_stream().wait_stream(side)


def _capture_graph(fn: Callable[[], torch.Tensor], pool: object) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=pool):
        out = fn()
    return graph, out


def _autocast_state(device: torch.device) -> tuple[bool, torch.dtype | None]:
    if torch.is_autocast_enabled(device.type):
        return True, torch.get_autocast_dtype(device.type)
    return False, None


@dataclass
class _Plan:
    """Static state for one (rows, device, autocast, graphs) combination: caches, modulation buffers, and
    per scale the graph with its input and output tensors."""

    caches: list[StaticKVCache]
    ada_B16C: list[torch.Tensor] = field(default_factory=list)  # per block, filled per sample (graphs)
    head_ada_B12C: torch.Tensor | None = None
    x_in: list[torch.Tensor] = field(default_factory=list)
    logits_out: list[torch.Tensor] = field(default_factory=list)
    graphs: list[torch.cuda.CUDAGraph] = field(default_factory=list)  # one per scale


class FastSampler:
    """Reusable fast sampler for one transformer and tokenizer.

    cuda_graphs: on CUDA, capture the trunk of every scale once per (batch, autocast) combination and
    replay it (not used in training mode, where drop-path draws random numbers). decode_dtype: e.g.
    ``torch.bfloat16`` runs the tokenizer decoder under autocast with weights cast once (the plain path
    under the same autocast gives equal numbers). channels_last: decode in channels-last memory format
    (faster convolutions on tensor cores). The decode options work on a private copy of the decoder, taken
    at the first decode: the tokenizer is frozen while the transformer trains, so the copy stays valid.

    max_plans: how many plans (a static KV cache, and on CUDA the graphs, for one batch size and precision)
    are kept, least recently used dropped first: one plan of d16 at B=256 with guidance holds tens of GB.
    ``release()`` drops them all.

    Usage: ``sampler = FastSampler(var, vae); out = sampler.sample(64, labels, PUBLISHED, seed=0)`` (or
    ``cfg=1.5, top_k=900, top_p=0.96`` as keywords): the arguments of the plain :func:`sample`. Call it under
    ``torch.autocast`` for bf16 sampling as with the plain path.
    """

    def __init__(
        self,
        var: VAR,
        vae: MultiScaleVQVAE,
        cuda_graphs: bool = True,
        decode_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        max_plans: int = 2,
    ) -> None:
        check_compatible(var, vae)
        if max_plans < 1:
            raise ValueError(f"max_plans={max_plans} must be >= 1")
        self.var, self.vae = var, vae
        self.cuda_graphs, self.decode_dtype, self.channels_last = cuda_graphs, decode_dtype, channels_last
        self.max_plans = max_plans
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()  # least recently used first
        self._decoder: nn.Module | None = None

    # ------------------------------------------------------------------ public
    @torch.no_grad()
    def sample(
        self,
        B: int,
        labels: Labels = None,
        args: SamplingArgs | None = None,
        **options: Any,
    ) -> SampleOutput:
        """Generate B images; arguments (``options``: :class:`SampleCall`) and result as
        :func:`var_lightning.transformer.sampling.sample`."""
        var, vae, call = self.var, self.vae, SampleCall.of(args, options)
        st = start_sampling(var, vae, B, labels, call.args, call.generator, call.edit)
        n_rows = st.x_NlC.shape[0]
        ada_B16C = [block.modulation(st.cond) for block in var.blocks]
        head_ada_B12C = var.head_nm.modulation(st.cond_BD)
        plan, run_scale = self._prepare(
            n_rows, st.x_NlC.device, st.x_NlC, ada_B16C, head_ada_B12C, st.cond_BD.dtype
        )
        with self._attached(plan):
            f_hat, tokens = run_scales(
                var, vae, st, run_scale, call.args, call.edit, call.logits_hook, call.scale_hook
            )
        images = self.decode(f_hat).add_(1).mul_(0.5)
        return SampleOutput(images=images, tokens=tokens, labels=st.label_B, f_hat=f_hat)

    __call__ = sample

    def release(self) -> None:
        """Drop every plan (KV caches, graphs and their memory pool) until the next call."""
        self._plans.clear()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.empty_cache()

    def decode(self, f_hat_BCvhw: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1]; with ``decode_dtype``/``channels_last`` on the prepared copy."""
        if self.decode_dtype is None and not self.channels_last:
            return self.vae.fhat_to_img(f_hat_BCvhw)
        device_type = f_hat_BCvhw.device.type
        outer_autocast = torch.is_autocast_enabled(device_type)
        post_quant_conv, decoder = self._fast_decoder(f_hat_BCvhw.device)
        if self.channels_last:
            f_hat_BCvhw = f_hat_BCvhw.contiguous(memory_format=torch.channels_last)
        dtype = self.decode_dtype or (torch.get_autocast_dtype(device_type) if outer_autocast else None)
        with torch.autocast(device_type, dtype=dtype, enabled=dtype is not None):
            img_B3HW = decoder(post_quant_conv(f_hat_BCvhw)).clamp_(-1, 1)
        return img_B3HW if outer_autocast else img_B3HW.float()

    # ------------------------------------------------------------------ trunk
    def _trunk_scale(
        self,
        plan: _Plan,
        si: int,
        x_NlC: torch.Tensor,
        ada_B16C: Sequence[torch.Tensor],
        head_ada_B12C: torch.Tensor,
    ) -> torch.Tensor:
        """Logits (N, l, V) float32 of scale ``si``: what ``block(x, cond, None)`` for every block and then
        ``get_logits`` compute in the plain sampler, given the precomputed modulations."""
        var, start = self.var, self.var.begin_ends[si][0]
        for block, cache, ada in zip(var.blocks, plan.caches, ada_B16C, strict=True):
            cache.pos = start
            x_NlC = block.forward_modulated(x_NlC, ada, None)
        return var.head(var.head_nm.forward_modulated(x_NlC.float(), head_ada_B12C).float()).float()

    def _prepare(
        self,
        n_rows: int,
        device: torch.device,
        x0_NlC: torch.Tensor,
        ada_B16C: list[torch.Tensor],
        head_ada_B12C: torch.Tensor,
        latent_dtype: torch.dtype,
    ) -> tuple[_Plan, Callable[[int, torch.Tensor], torch.Tensor]]:
        """This call's plan and ``run_scale(si, x_NlC) -> logits``, replaying graphs or running eagerly."""
        amp_enabled, amp_dtype = _autocast_state(device)
        graphs = self.cuda_graphs and _graphs_supported(device) and not self.var.training
        key = (n_rows, str(device), amp_enabled, amp_dtype, graphs)
        plan = self._plans.get(key)
        if plan is not None:
            self._plans.move_to_end(key)
        else:
            while len(self._plans) >= self.max_plans:  # bounded: evict the least recently used plan
                self._plans.popitem(last=False)
            # under autocast SDPA casts k, v to the autocast dtype; storing them cast is equal and lighter
            plan = _Plan(
                [StaticKVCache(self.var.L, amp_dtype if amp_enabled else None) for _ in self.var.blocks]
            )
            self._plans[key] = plan
            if graphs:
                self._capture(plan, x0_NlC, ada_B16C, head_ada_B12C, latent_dtype, amp_enabled, amp_dtype)
        if not graphs:
            return plan, lambda si, x_NlC: self._trunk_scale(plan, si, x_NlC, ada_B16C, head_ada_B12C)
        for static, fresh in zip(plan.ada_B16C, ada_B16C, strict=True):
            static.copy_(fresh)
        plan.head_ada_B12C.copy_(head_ada_B12C)

        def replay(si: int, x_NlC: torch.Tensor) -> torch.Tensor:
            plan.x_in[si].copy_(x_NlC)
            plan.graphs[si].replay()
            return plan.logits_out[si]

        return plan, replay

    def _capture(
        self,
        plan: _Plan,
        x0_NlC: torch.Tensor,
        ada_B16C: list[torch.Tensor],
        head_ada_B12C: torch.Tensor,
        latent_dtype: torch.dtype,
        amp_enabled: bool,
        amp_dtype: torch.dtype | None,
    ) -> None:
        """Warm up on a side stream, then capture one graph per scale into a shared memory pool."""
        var = self.var
        plan.ada_B16C = [a.clone() for a in ada_B16C]
        plan.head_ada_B12C = head_ada_B12C.clone()
        probe_Cv = torch.zeros(1, 1, var.Cvae, device=x0_NlC.device, dtype=latent_dtype)
        later_dtype = (var.word_embed(probe_Cv) + var.pos_1LC[:, :1]).dtype  # dtype of scales >= 1 inputs
        n_rows = x0_NlC.shape[0]
        plan.x_in = [
            torch.zeros(
                n_rows, pn * pn, var.C, device=x0_NlC.device, dtype=x0_NlC.dtype if si == 0 else later_dtype
            )
            for si, pn in enumerate(var.patch_nums)
        ]
        # weight casts must not go to the autocast cache while capturing (torch.cuda.graph's requirement)
        amp = torch.autocast(x0_NlC.device.type, dtype=amp_dtype, enabled=amp_enabled, cache_enabled=False)
        with self._attached(plan), amp:
            fns = [
                functools.partial(
                    self._trunk_scale, plan, si, plan.x_in[si], plan.ada_B16C, plan.head_ada_B12C
                )
                for si in range(len(var.patch_nums))
            ]
            _warm_up(fns)
            pool = torch.cuda.graph_pool_handle()
            for fn in fns:
                graph, out = _capture_graph(fn, pool)
                plan.graphs.append(graph)
                plan.logits_out.append(out)

    @contextmanager
    def _attached(self, plan: _Plan) -> Iterator[None]:
        """Give every attention layer its static cache for the duration of a run."""
        attns = [block.attn for block in self.var.blocks]
        saved = [a.kv_cache for a in attns]
        for a, cache in zip(attns, plan.caches, strict=True):
            a.kv_cache = cache
        try:
            yield
        finally:
            for a, old in zip(attns, saved, strict=True):
                a.kv_cache = old

    def _fast_decoder(self, device: torch.device) -> tuple[nn.Module, nn.Module]:
        """The decoder copy with conv weights cast and/or channels-last (rebuilt if the tokenizer moved)."""
        if self._decoder is None or self._decoder[0].weight.device != device:
            pair = nn.ModuleList([copy.deepcopy(self.vae.post_quant_conv), copy.deepcopy(self.vae.decoder)])
            pair.eval().requires_grad_(False)
            # only conv weights change: GroupNorm keeps fp32 affine parameters, as under autocast
            for m in pair.modules():
                if isinstance(m, nn.Conv2d):
                    if self.decode_dtype is not None:
                        m.to(self.decode_dtype)
                    if self.channels_last:
                        m.to(memory_format=torch.channels_last)
            self._decoder = pair
        return self._decoder[0], self._decoder[1]


def sample_fast(var: VAR, vae: MultiScaleVQVAE, B: int, *call: Any, **kwargs: Any) -> SampleOutput:
    """One-shot fast sampling with :func:`sample`'s arguments (static cache, modulation once; no graphs,
    whose capture only pays off when a :class:`FastSampler` is reused)."""
    return FastSampler(var, vae, cuda_graphs=False).sample(B, *call, **kwargs)


SAMPLERS = ("fast", "plain")


def _with_sample_signature(
    fn: Callable[..., SampleOutput], model: nn.Module, vae: MultiScaleVQVAE
) -> Callable[..., SampleOutput]:
    """``fn(model, vae, B, labels, call)`` as :func:`sample` is called, minus ``var, vae``."""

    def draw(B: int, labels: Labels = None, args: SamplingArgs | None = None, **options: Any) -> SampleOutput:
        return fn(model, vae, B, labels, SampleCall.of(args, options))

    return draw


def build_sampler(
    var: VAR, vae: MultiScaleVQVAE, kind: str = "fast", channels_last: bool = True, key: str = "sampler"
) -> Callable[..., SampleOutput]:
    """The sampling function the commands use, with :func:`sample`'s signature minus ``var, vae``.

    ``fast`` (default): a :class:`FastSampler` (static KV cache, AdaLN once per image, a CUDA graph per
    scale on GPU, channels-last decode), reused across calls so graphs are captured once per batch size.
    ``plain``: :func:`~var_lightning.transformer.sampling.sample`. Both draw the same tokens for a seed.
    An AR baseline model (:mod:`var_lightning.transformer.ar`) gets :func:`~var_lightning.transformer.ar.ar_sample`.
    """
    if getattr(var, "kind", "var") == "ar":  # the raster-order baseline has one sampler (static KV cache)
        if kind not in SAMPLERS:
            raise ValueError(f"{key}={kind!r}: choose one of {', '.join(SAMPLERS)}")
        return _with_sample_signature(ar_sample, var, vae)
    if kind == "plain":
        return functools.partial(sample, var, vae)
    if kind == "fast":
        return FastSampler(var, vae, cuda_graphs=True, channels_last=channels_last).sample
    raise ValueError(f"{key}={kind!r}: choose one of {', '.join(SAMPLERS)}")
