"""Every speed path equals the plain path on CPU: FlexAttention block mask, the fast sampler (static
KV cache, AdaLN once per image), the chunked head cross-entropy, the module's fused loss, torch.compile.
The CUDA-only parts (graphs, compiled flex backward, bf16 on the card): tests/gpu/test_speed_paths.py."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import TINY_PN, tiny_vae, tiny_vae_cfg, tiny_var, tiny_var_cfg
from var_lightning.objectives.chunked_ce import chunked_head_cross_entropy
from var_lightning.transformer.fast_sampling import FastSampler, sample_fast
from var_lightning.transformer.layers import KVCache, StaticKVCache
from var_lightning.transformer.sampling import EditSpec, sample
from var_lightning.transformer.var import compiled_run_blocks, run_blocks

L_TINY = sum(p * p for p in TINY_PN)


def _same_output(a, b) -> None:
    assert torch.equal(a.labels, b.labels)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert torch.equal(a.images, b.images)


# ---------------------------------------------------------------------- attention
def test_static_kv_cache_equals_concatenation():
    cat, static = KVCache(), StaticKVCache(max_len=10)
    for start, n_new in ((0, 1), (1, 4), (5, 5)):
        k, v = torch.randn(2, 3, n_new, 4), torch.randn(2, 3, n_new, 4)
        static.pos = start
        for x, y in zip(cat.update(k, v), static.update(k, v), strict=True):
            assert torch.equal(x, y)
    static.pos = 8
    with pytest.raises(ValueError, match="holds 10 tokens"):
        static.update(k, v)


@pytest.mark.parametrize("l2", [True, False])
@pytest.mark.parametrize("end", [L_TINY, 14])
def test_flex_block_mask_equals_dense_mask(l2, end):
    """FlexAttention's eager reference runs on CPU (forward only): same trunk output as the dense mask."""
    from var_lightning.transformer.flex import get_block_mask

    model = tiny_var(attn_l2_norm=l2).eval()
    x_BLCv, label_B = torch.randn(3, end - 1, 8), torch.tensor([0, 2, 5])
    with torch.no_grad():
        x_BLC, cond_BD = model.embed_inputs(label_B, x_BLCv, end)
        dense = run_blocks(
            model.blocks, x_BLC, model.cond(cond_BD), model.attn_bias_for_masking[:, :, :end, :end], None
        )
        block_mask = get_block_mask(model, end, "cpu")
        flex = run_blocks(model.blocks, x_BLC, model.cond(cond_BD), None, block_mask)
    torch.testing.assert_close(flex, dense, atol=1e-6, rtol=1e-5)
    assert get_block_mask(model, end, torch.device("cpu")) is block_mask  # cached per (schedule, end, device)


def test_flex_block_mask_built_in_inference_mode_serves_training():
    """Lightning's sanity check runs under torch.inference_mode(): a mask first built (and cached) there must
    not hold inference tensors, which autograd refuses to save for backward in the training steps after."""
    from var_lightning.transformer.flex import _block_mask, get_block_mask

    _block_mask.cache_clear()
    model = tiny_var()
    with torch.inference_mode():
        mask = get_block_mask(model, 14, "cpu")
    tensors = [t for t in mask.as_tuple() if torch.is_tensor(t)]
    assert tensors and not any(t.is_inference() for t in tensors)
    assert get_block_mask(model, 14, "cpu") is mask  # and it is the cached one training reuses


def test_forward_hidden_then_logits_is_forward():
    model = tiny_var().eval()
    x_BLCv, label_B = torch.randn(2, L_TINY - 1, 8), torch.tensor([1, 4])
    h_BLC, cond_BD = model.forward_hidden(label_B, x_BLCv)
    assert h_BLC.shape == (2, L_TINY, 64) and cond_BD.shape == (2, 64)
    assert torch.equal(model.get_logits(h_BLC, cond_BD), model(label_B, x_BLCv))


# ---------------------------------------------------------------------- sampling
SAMPLING_CASES = [
    dict(cfg=1.5, top_k=20, top_p=0.9),
    dict(cfg=0.0),
    dict(cfg=3.0, top_k=30, top_p=0.95, more_smooth=True),
    dict(cfg=1.5, top_k=64, top_p=0.96, labels=[0, 3, 5]),
]


@pytest.mark.parametrize("shared_aln", [False, True])
@pytest.mark.parametrize("l2", [True, False])
def test_fast_sampler_equals_plain_fp32(shared_aln, l2):
    vae, model = tiny_vae().eval(), tiny_var(shared_aln=shared_aln, attn_l2_norm=l2).eval()
    sampler = FastSampler(model, vae)
    for kw in SAMPLING_CASES:
        _same_output(sampler.sample(3, seed=11, **kw), sample(model, vae, 3, seed=11, **kw))
    # reused with another batch size, a passed-in generator, and the one-shot helper
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    _same_output(
        sampler.sample(2, cfg=1.5, top_k=10, generator=g1),
        sample(model, vae, 2, cfg=1.5, top_k=10, generator=g2),
    )
    _same_output(sample_fast(model, vae, 2, labels=1, seed=0), sample(model, vae, 2, labels=1, seed=0))
    assert all(block.attn.kv_cache is None for block in model.blocks)  # caches detached afterwards


def test_cuda_graph_bookkeeping_with_a_fake_graph(monkeypatch):
    """The capture/replay logic runs on CPU with a stand-in graph whose replay re-runs the captured function
    into the captured output: the static inputs and modulation buffers must be refreshed for every call
    (new labels, new seed) for the tokens to stay equal to the plain sampler's."""
    import var_lightning.transformer.fast_sampling as fast

    class ReplayByRerun:
        def __init__(self, fn, out):
            self.fn, self.out = fn, out

        def replay(self):
            self.out.copy_(self.fn())

    def capture(fn, pool):
        out = fn()
        return ReplayByRerun(fn, out), out

    monkeypatch.setattr(fast, "_graphs_supported", lambda device: True)
    monkeypatch.setattr(fast, "_warm_up", lambda fns: [fn() for fn in fns])
    monkeypatch.setattr(fast, "_capture_graph", capture)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: None)
    vae, model = tiny_vae().eval(), tiny_var().eval()
    sampler = FastSampler(model, vae, cuda_graphs=True)
    for seed, labels in ((0, [0, 1, 2]), (1, [4, 3, 2]), (2, None)):
        kw = dict(labels=labels, seed=seed, cfg=1.5, top_k=20, top_p=0.9)
        _same_output(sampler.sample(3, **kw), sample(model, vae, 3, **kw))
    (plan,) = sampler._plans.values()
    assert len(plan.graphs) == len(TINY_PN) == len(plan.logits_out)


def test_fast_sampler_keeps_a_bounded_number_of_plans():
    """A plan holds a static KV cache (and graphs) for one batch size: B=256 with guidance at d16 is tens of
    GB. Sampling several batch sizes (a short last batch, the app's slider) keeps at most ``max_plans``,
    the most recently used, and still gives the plain sampler's tokens."""
    vae, model = tiny_vae().eval(), tiny_var().eval()
    sampler = FastSampler(model, vae, max_plans=2)
    for B in (1, 2, 3, 2, 4, 1):
        _same_output(sampler.sample(B, seed=B, cfg=1.5), sample(model, vae, B, seed=B, cfg=1.5))
        assert len(sampler._plans) <= 2
    assert [key[0] for key in sampler._plans] == [8, 2]  # rows: B=4 and B=1 with guidance (2B rows)
    sampler.release()
    assert not sampler._plans


def test_fast_sampler_logits_hook_and_bf16_autocast_equal_plain():
    vae, model = tiny_vae().eval(), tiny_var().eval()
    logs_plain, logs_fast = {}, {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = sample(
            model,
            vae,
            2,
            cfg=1.5,
            top_k=20,
            seed=2,
            logits_hook=lambda si, lg: logs_plain.__setitem__(si, lg),
        )
        b = FastSampler(model, vae).sample(
            2, cfg=1.5, top_k=20, seed=2, logits_hook=lambda si, lg: logs_fast.__setitem__(si, lg)
        )
    _same_output(a, b)
    assert all(torch.equal(logs_plain[si], logs_fast[si]) for si in range(len(TINY_PN)))


def test_fast_sampler_edits_exactly_like_plain():
    vae, model = tiny_vae().eval(), tiny_var().eval()
    img = torch.rand(1, 3, 8, 8) * 2 - 1
    mask = torch.zeros(4, 4)
    mask[:, :2] = 1
    edit = EditSpec(keep_idx=vae.img_to_idx(img), keep_mask_BHW=mask)
    _same_output(
        FastSampler(model, vae).sample(2, labels=1, seed=0, edit=edit),
        sample(model, vae, 2, labels=1, seed=0, edit=edit),
    )


def test_fast_decode_options():
    """channels-last in fp32 matches the plain decode; bf16 decode is within bf16 rounding of it."""
    vae, model = tiny_vae().eval(), tiny_var().eval()
    plain = sample(model, vae, 2, labels=[0, 1], seed=4)
    cl = FastSampler(model, vae, channels_last=True).sample(2, labels=[0, 1], seed=4)
    assert all(torch.equal(x, y) for x, y in zip(plain.tokens, cl.tokens, strict=True))
    torch.testing.assert_close(cl.images, plain.images, atol=1e-5, rtol=1e-5)
    bf16 = FastSampler(model, vae, decode_dtype=torch.bfloat16).sample(2, labels=[0, 1], seed=4)
    assert bf16.images.dtype == torch.float32
    torch.testing.assert_close(bf16.images, plain.images, atol=3e-2, rtol=0)
    assert vae.decoder.conv_in.weight.dtype == torch.float32  # the tokenizer itself is untouched


# ---------------------------------------------------------------------- loss
def _loss_and_grads(fused: bool, label_smoothing: float, amp: bool, chunk: int = 7):
    torch.manual_seed(0)
    model = tiny_var(init_head=1.0)  # a head large enough that the loss has structure
    x_BLCv, label_B = torch.randn(3, L_TINY - 1, 8), torch.tensor([0, 2, 4])
    gt_BL = torch.randint(0, 64, (3, L_TINY))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        h_BLC, cond_BD = model.forward_hidden(label_B, x_BLCv)
        if fused:
            loss_BL, err_BL = chunked_head_cross_entropy(
                h_BLC, cond_BD, model.head_nm, model.head, gt_BL, label_smoothing, chunk_tokens=chunk
            )
        else:
            logits_BLV = model.get_logits(h_BLC, cond_BD)
            loss_BL = F.cross_entropy(
                logits_BLV.view(-1, 64), gt_BL.view(-1), reduction="none", label_smoothing=label_smoothing
            ).view(3, L_TINY)
            err_BL = (logits_BLV.argmax(-1) != gt_BL).float()
    (loss_BL.mean() + 0.5 * loss_BL[:, -16:].mean()).backward()  # a non-uniform upstream gradient
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss_BL.detach(), err_BL, grads


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk", [7, 4096])
def test_chunked_ce_equals_plain_fp32(label_smoothing, chunk):
    loss_a, err_a, grads_a = _loss_and_grads(False, label_smoothing, amp=False)
    loss_b, err_b, grads_b = _loss_and_grads(True, label_smoothing, amp=False, chunk=chunk)
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=1e-6)
    assert torch.equal(err_b, err_a)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_b[name], grads_a[name], atol=1e-6, rtol=1e-5, msg=name)


def test_chunked_ce_bf16_within_bf16_tolerance():
    loss_a, err_a, grads_a = _loss_and_grads(False, 0.0, amp=True)
    loss_b, err_b, grads_b = _loss_and_grads(True, 0.0, amp=True)
    assert torch.equal(loss_b, loss_a) and torch.equal(
        err_b, err_a
    )  # per chunk the arithmetic is the plain one
    for name in grads_a:
        scale = grads_a[name].abs().max().clamp_min(1e-12)
        assert (grads_b[name] - grads_a[name]).abs().max() / scale < 2e-2, name


def test_module_fused_ce_gives_same_losses_and_metric_names():
    from var_lightning.training.var_module import VARModule

    def module(fused: bool) -> VARModule:
        torch.manual_seed(0)
        return VARModule(
            transformer=asdict(tiny_var_cfg(init_head=1.0)),
            tokenizer=asdict(tiny_vae_cfg()),
            train={"fused_ce": fused, "ce_chunk_tokens": 16},
        )

    plain, fused = module(False), module(True)
    fused.load_state_dict(plain.state_dict())
    batch = (torch.rand(2, 3, 8, 8) * 2 - 1, torch.tensor([1, 3]))
    out_a, out_b = (
        plain.compute_losses(batch, drop_labels=False),
        fused.compute_losses(batch, drop_labels=False),
    )
    assert out_a.keys() == out_b.keys()
    for key in out_a:
        torch.testing.assert_close(out_b[key], out_a[key], atol=1e-6, rtol=1e-6, msg=key)
    out_a["loss"].backward()
    out_b["loss"].backward()
    for (name, pa), pb in zip(plain.var.named_parameters(), fused.var.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-6, rtol=1e-5, msg=name)


# ---------------------------------------------------------------------- torch.compile (CPU inductor: slow)
@pytest.mark.slow
def test_compiled_blocks_equal_eager():
    model = tiny_var()
    x_BLCv, label_B = torch.randn(2, L_TINY - 1, 8), torch.tensor([1, 4])
    h_eager, _ = model.forward_hidden(label_B, x_BLCv)
    h_eager.square().mean().backward()
    g_eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    h_comp, _ = model.forward_hidden(label_B, x_BLCv, compile=True)
    h_comp.square().mean().backward()
    torch.testing.assert_close(h_comp, h_eager, atol=1e-5, rtol=1e-5)
    g_comp = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert g_comp.keys() == g_eager.keys()
    for name, ge in g_eager.items():
        torch.testing.assert_close(g_comp[name], ge, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.slow
def test_compiled_flex_equals_dense_on_cpu():
    """The flex call traced by dynamo (the path training takes on CUDA), forward on CPU."""
    from var_lightning.transformer.flex import get_block_mask

    model = tiny_var().eval()
    x_BLCv, label_B = torch.randn(2, L_TINY - 1, 8), torch.tensor([1, 4])
    with torch.no_grad():
        x_BLC, cond_BD = model.embed_inputs(label_B, x_BLCv)
        cond = model.cond(cond_BD)
        dense = run_blocks(model.blocks, x_BLC, cond, model.attn_bias_for_masking, None)
        flex = compiled_run_blocks()(model.blocks, x_BLC, cond, None, get_block_mask(model, L_TINY, "cpu"))
    torch.testing.assert_close(flex, dense, atol=1e-5, rtol=1e-5)
