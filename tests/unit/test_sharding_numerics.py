"""FSDP2 numerics and compilation on one CPU rank (gloo, world size 1, in process): the blocks' bf16 policy
keeps the residual stream in fp32 under autocast, and ``model.train.compile`` under sharding compiles each
block once per shape however deep the model is (counted with dynamo's counting backend)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from var_lightning.training.sharding import ShardingPlan, shard_transformer, trunk_compile
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.var import VAR


@pytest.fixture()
def mesh(tmp_path):
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield init_device_mesh("cpu", (1,))  # the conftest hygiene fixture destroys the group


def _var(depth: int = 2, drop_path_rate: float = 0.0, gamma: float = 1e-5) -> VAR:
    torch.manual_seed(0)
    cfg = VARConfig(depth=depth, width=64, num_heads=2, num_classes=4, vocab_size=64, cvae=8,
                    patch_nums=(1, 2, 3), drop_path_rate=drop_path_rate, init_adaln_gamma=gamma)  # fmt: skip
    return VAR(cfg)


def _block_updates(net: VAR, label_B: torch.Tensor, x_BLCv: torch.Tensor) -> list[torch.Tensor]:
    """What each block adds to the residual stream (output - input), in fp32, under bf16 autocast."""
    ups: list[torch.Tensor] = []
    hooks = [
        b.register_forward_hook(lambda m, i, o: ups.append(o.float() - i[0].float())) for b in net.blocks
    ]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        net.forward_hidden(label_B, x_BLCv)
    for h in hooks:
        h.remove()
    return ups


def test_plan_knows_when_the_forward_runs_under_autocast():
    assert ShardingPlan().resolved("bf16-mixed").autocast
    assert ShardingPlan(param_dtype="bfloat16").resolved("16-mixed").autocast
    assert not ShardingPlan().resolved("bf16-true").autocast
    assert not ShardingPlan().resolved("32-true").autocast


def test_bf16_sharded_blocks_keep_the_published_init_updates(mesh):
    """At the published init (AdaLN gamma 1e-5) a block adds ~1e-7 to the residual stream. Cast to bf16 between
    blocks (spacing ~1e-3 there) that vanishes; kept fp32 it matches the unsharded autocast run (DDP's)."""
    plain = _var()
    sharded = copy.deepcopy(plain)
    shard_transformer(sharded, mesh, ShardingPlan().resolved("bf16-mixed"))
    label_B, x_BLCv = torch.tensor([0, 3]), torch.randn(2, 13, 8)
    ref, got = _block_updates(plain, label_B, x_BLCv), _block_updates(sharded, label_B, x_BLCv)
    for r, g in zip(ref, got, strict=True):
        size = r.abs().max()
        assert 0 < size < 1e-5  # the effect: far below bf16's spacing at unit scale
        assert g.abs().max() > 0.5 * size  # the sharded block's update survives
        # within a quarter of the update itself (the l2-norm temperature is a bf16 parameter when sharded)
        assert (g - r).abs().max() < 0.25 * size
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        h_BLC, _ = sharded.forward_hidden(label_B, x_BLCv)
    assert h_BLC.dtype == torch.float32  # the residual stream leaves the last block in fp32


def _compiled_sharded_run(mesh, depth: int) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()
    net = _var(depth, drop_path_rate=0.3, gamma=0.5)  # every block its own drop-path rate
    eager = copy.deepcopy(net).eval()
    shard_transformer(net, mesh, ShardingPlan(param_dtype=None), compile=True, backend=counter)
    compile = trunk_compile(net, True)
    assert compile is False  # the trunk itself stays uncompiled: its blocks are
    label_B = torch.tensor([0, 1])
    for L in (13, 13, 4, 4):  # two sequence lengths (a progressive prefix and the whole schedule)
        net.train()
        h_BLC, _ = net.forward_hidden(label_B, torch.randn(2, L, 8), compile=compile)
        h_BLC.sum().backward()
    x_BLCv = torch.randn(2, 13, 8)
    net.eval()
    with torch.no_grad():
        got, want = net.forward_hidden(label_B, x_BLCv)[0], eager.forward_hidden(label_B, x_BLCv)[0]
    return counter.frame_count, counter.op_count, got, want


def test_compile_under_sharding_compiles_each_block_once_per_shape(mesh):
    frames2, ops2, got, want = _compiled_sharded_run(mesh, depth=2)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # the compiled blocks compute the model
    frames12, ops12, _, _ = _compiled_sharded_run(mesh, depth=12)
    # 12 blocks with 12 drop-path rates compile exactly what 2 blocks do: graphs are shared, none recompiles
    # per block, and no block falls back to eager past dynamo's recompile limit (8)
    assert (frames12, ops12) == (frames2, ops2)
    assert frames2 <= 2 * 3 * 2  # per shape, train and eval: attention, FFN and the last add around drop-path


def test_compiled_flex_attention_has_a_graph_for_every_prefix_of_the_schedule():
    """The paper's 10-scale schedule gives 10 prefix lengths; dynamo's default limit of 8 graphs would send
    the two largest to the unfused eager path (progressive training, gpu_check's flex timing)."""
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.testing import CompileCounter

    from var_lightning.transformer import flex
    from var_lightning.transformer.compile_budget import recompile_limit

    dynamo_config.recompile_limit = (
        8  # torch's default, whatever earlier tests raised it to (conftest restores)
    )
    torch._dynamo.reset()
    counter = CompileCounter()
    cfg = VARConfig(depth=1, width=64, num_heads=2, num_classes=4, vocab_size=64, cvae=8,
                    patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16))  # fmt: skip
    net = VAR(cfg)
    for _, end in net.begin_ends:
        mask = flex.get_block_mask(net, end, "cpu")
        q_BHLc = torch.randn(1, 2, end, 32)
        flex._compiled_flex(counter)(q_BHLc, q_BHLc, q_BHLc, block_mask=mask, scale=0.1)
    assert counter.frame_count == len(cfg.patch_nums)  # one graph per length, none left to eager
    assert recompile_limit() >= 4 * len(cfg.patch_nums)  # with and without grad, full and partial batches


def test_the_ema_of_a_sharded_transformer_is_one_fused_update_per_step(mesh, monkeypatch):
    """Each rank averages its own shards with one ``_foreach_lerp_`` (no per-parameter Python loop, no
    collective), and the values are the plain lerp of the stored weights."""
    from types import SimpleNamespace

    from var_lightning.callbacks.ema import TransformerEMA
    from var_lightning.training.sharding import local_tensors

    raw, ema = _var(gamma=0.5), _var(gamma=0.5)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    for net in (raw, ema):
        shard_transformer(net, mesh, ShardingPlan(param_dtype=None))
    want = [e + 0.1 * (r - e) for e, r in zip(local_tensors(ema), local_tensors(raw), strict=True)]
    calls = []
    lerp = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda *a: (calls.append(len(a[0])), lerp(*a)))
    TransformerEMA(decay=0.9).on_train_batch_end(
        SimpleNamespace(global_step=5), SimpleNamespace(var=raw, var_ema=ema)
    )
    assert calls == [len(list(raw.parameters()))]
    for got, w in zip(local_tensors(ema), want, strict=True):
        torch.testing.assert_close(got, w)


def test_the_sampling_copy_is_gathered_tensor_by_tensor_in_the_runs_dtype(mesh, monkeypatch):
    """``full_copy`` (validation's sampling under sharding) fills a plain copy one gathered tensor at a time, in
    bf16 under a bf16 precision: it never builds the full fp32 state dict (8 GB per rank at d30)."""
    import torch.distributed.checkpoint.state_dict as dcp_sd

    from var_lightning.training.sharding import full_copy

    plain = _var(gamma=0.5)
    sharded = copy.deepcopy(plain)
    shard_transformer(sharded, mesh, ShardingPlan().resolved("bf16-mixed"))

    def refuse(*a, **k):
        raise AssertionError("the full state dict was gathered")

    monkeypatch.setattr(dcp_sd, "get_model_state_dict", refuse)
    for dtype in (torch.bfloat16, None):
        got = full_copy(sharded, dtype)
        assert type(got) is VAR and not any(hasattr(p, "to_local") for p in got.parameters())
        for (name, p), q in zip(plain.named_parameters(), got.parameters(), strict=True):
            assert q.dtype == (dtype or torch.float32) and not q.requires_grad, name
            assert torch.equal(q, p.detach().to(q.dtype)), name
        for (name, b), c in zip(plain.named_buffers(), got.buffers(), strict=True):
            assert c.dtype == b.dtype and torch.equal(c, b), name  # the mask keeps its dtype
