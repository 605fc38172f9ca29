"""The fast paths on CUDA equal the plain path: FlexAttention (forward and backward, eager and compiled),
CUDA-graph sampling (exact tokens in fp32), bf16 channels-last decode, chunked cross-entropy in bf16.

Small models on the paper's 256 px schedule (L = 680, not a multiple of FlexAttention's 128-token tiles).
Run on the card with ``benchmarks/run_h200.sh tests``. TF32 is switched off so fp32 means fp32.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_vae_cfg
from var_lightning.objectives.chunked_ce import chunked_head_cross_entropy
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.transformer.config import SCHEDULE_256, VARConfig
from var_lightning.transformer.fast_sampling import FastSampler
from var_lightning.transformer.sampling import sample
from var_lightning.transformer.var import VAR

pytestmark = pytest.mark.gpu
DEV = torch.device("cuda")
V = 512


@pytest.fixture(autouse=True)
def _strict_fp32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _var(**kw) -> VAR:
    cfg = dict(
        depth=2,
        width=128,
        num_heads=2,
        num_classes=10,
        vocab_size=V,
        cvae=8,
        patch_nums=SCHEDULE_256,
        drop_path_rate=0.0,
        init_adaln_gamma=0.5,
        init_head=1.0,
    )
    cfg.update(kw)
    torch.manual_seed(0)
    with torch.device(DEV):
        return VAR(VARConfig(**cfg))


def _vae() -> MultiScaleVQVAE:
    torch.manual_seed(0)
    with torch.device(DEV):
        return (
            MultiScaleVQVAE(tiny_vae_cfg(vocab_size=V, patch_nums=SCHEDULE_256)).eval().requires_grad_(False)
        )


def _batch(model: VAR, B: int = 4):
    g = torch.Generator(device=DEV).manual_seed(1)
    x_BLCv = torch.randn(B, model.L - 1, model.Cvae, device=DEV, generator=g)
    gt_BL = torch.randint(0, model.V, (B, model.L), device=DEV, generator=g)
    return torch.arange(B, device=DEV) % model.num_classes, x_BLCv, gt_BL


def _step(model: VAR, compile: bool, amp: bool, fused_ce: bool = False):
    label_B, x_BLCv, gt_BL = _batch(model)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        h_BLC, cond_BD = model.forward_hidden(label_B, x_BLCv, compile=compile)
        if fused_ce:
            loss_BL, _ = chunked_head_cross_entropy(
                h_BLC, cond_BD, model.head_nm, model.head, gt_BL, chunk_tokens=1000
            )
        else:
            loss_BL = F.cross_entropy(
                model.get_logits(h_BLC, cond_BD).flatten(0, 1), gt_BL.flatten(), reduction="none"
            )
    loss_BL.mean().backward()
    return loss_BL.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(got: dict, want: dict, rel: float) -> None:
    assert got.keys() == want.keys()
    for name in want:
        err = (got[name] - want[name]).abs().max() / want[name].abs().max().clamp_min(1e-12)
        assert err < rel, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("amp", [False, True])
@pytest.mark.parametrize("compile", [False, True])
def test_flex_training_step_equals_dense_mask(amp, compile):
    dense = _var()
    flex = copy.deepcopy(dense)
    flex.cfg.attn_impl = "flex"
    loss_d, grads_d = _step(dense, compile=False, amp=amp)
    loss_f, grads_f = _step(flex, compile=compile, amp=amp)
    tol = 2e-2 if amp else 1e-4
    torch.testing.assert_close(loss_f, loss_d, atol=tol, rtol=tol)
    _assert_grads_close(grads_f, grads_d, rel=5e-2 if amp else 1e-4)


def test_compiled_dense_and_fused_ce_equal_eager_bf16():
    model = _var()
    loss_a, grads_a = _step(model, compile=False, amp=True)
    loss_b, grads_b = _step(model, compile=True, amp=True, fused_ce=True)
    torch.testing.assert_close(loss_b, loss_a, atol=2e-2, rtol=2e-2)
    _assert_grads_close(grads_b, grads_a, rel=5e-2)


def test_fused_ce_saves_memory():
    model = _var(vocab_size=4096)
    label_B, x_BLCv, gt_BL = _batch(model, B=16)
    peaks = {}
    for fused in (False, True):
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            h_BLC, cond_BD = model.forward_hidden(label_B, x_BLCv)
            if fused:
                loss_BL, _ = chunked_head_cross_entropy(h_BLC, cond_BD, model.head_nm, model.head, gt_BL)
            else:
                loss_BL = F.cross_entropy(
                    model.get_logits(h_BLC, cond_BD).flatten(0, 1), gt_BL.flatten(), reduction="none"
                )
        loss_BL.mean().backward()
        torch.cuda.synchronize()
        peaks[fused] = torch.cuda.max_memory_allocated()
    logits_bytes = 16 * model.L * 4096 * 4
    assert peaks[False] - peaks[True] > logits_bytes, peaks


def _same(a, b) -> None:
    assert torch.equal(a.labels, b.labels)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert torch.equal(a.images, b.images)


@pytest.mark.parametrize(
    "kw", [dict(cfg=1.5, top_k=100, top_p=0.96), dict(cfg=0.0), dict(cfg=3.0, top_k=50, more_smooth=True)]
)
def test_cuda_graph_sampler_equals_plain_fp32(kw):
    vae, model = _vae(), _var().eval()
    sampler = FastSampler(model, vae, cuda_graphs=True)
    for seed in (0, 1):  # the first call captures, the second replays
        _same(sampler.sample(3, seed=seed, **kw), sample(model, vae, 3, seed=seed, **kw))
    assert sampler._plans and all(p.graphs for p in sampler._plans.values())


def test_cuda_graph_sampler_bf16_matches_plain():
    vae, model = _vae(), _var().eval()
    graphs, eager = FastSampler(model, vae, cuda_graphs=True), FastSampler(model, vae, cuda_graphs=False)
    logs_plain, logs_fast = {}, {}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for seed in (0, 1):
            a = graphs.sample(8, seed=seed, cfg=1.5, top_k=100, top_p=0.96, logits_hook=logs_fast.__setitem__)
            _same(
                a, eager.sample(8, seed=seed, cfg=1.5, top_k=100, top_p=0.96)
            )  # replay == same kernels eagerly
        plain = sample(
            model, vae, 8, seed=1, cfg=1.5, top_k=100, top_p=0.96, logits_hook=logs_plain.__setitem__
        )
    for si in logs_plain:
        torch.testing.assert_close(logs_fast[si], logs_plain[si], atol=3e-2, rtol=3e-2)
    agree = (
        torch.cat([(x == y).flatten() for x, y in zip(a.tokens, plain.tokens, strict=True)]).float().mean()
    )
    assert agree > 0.99, f"only {agree:.3f} of the tokens agree"


def test_bf16_channels_last_decode_close_to_plain():
    vae, model = _vae(), _var().eval()
    plain = sample(model, vae, 4, labels=[0, 1, 2, 3], seed=0)
    fast = FastSampler(model, vae, decode_dtype=torch.bfloat16, channels_last=True).sample(
        4, labels=[0, 1, 2, 3], seed=0
    )
    _same_tokens = all(torch.equal(x, y) for x, y in zip(plain.tokens, fast.tokens, strict=True))
    assert _same_tokens and fast.images.dtype == torch.float32
    torch.testing.assert_close(fast.images, plain.images, atol=3e-2, rtol=0)
