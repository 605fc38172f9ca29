"""Progressive (coarse-to-fine) training: the published stage rule, the loss-weight ramp and its counters,
the truncated forward, the weighted prefix loss, and the lin<T> learning-rate schedule."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import tiny_vae, tiny_var
from var_lightning.objectives.losses import next_scale_losses, tokenize
from var_lightning.objectives.progressive import RAMP_FLOOR, ProgressiveSchedule, Stage, stage_at
from var_lightning.training.schedules import check_schedule, lr_factor


def test_stage_rule_matches_a_table_worked_out_by_hand():
    # K = 6 scales, start 2, warm-up 10 steps, 100 steps, until 0.5: the prefix grows over steps 10..50.
    # p = (t - 10) / 40 and stage = 2 + round(3 p), with Python's round (half to even: 1.5 -> 2 at t = 30).
    table = {0: 2, 10: 2, 11: 2, 16: 2, 17: 3, 29: 3, 30: 4, 43: 4, 44: 5, 49: 5, 50: 5, 99: 5}
    got = {t: stage_at(t, 10, 100, 0.5, 2, 6) for t in table}
    assert got == table
    assert stage_at(5, 10, 100, 0.0, 2, 6) == 5  # until = 0: always the whole sequence


def _schedule(ramp_steps: float = 4) -> ProgressiveSchedule:
    begin_ends = [(0, 1), (1, 5), (5, 14), (14, 30)]  # scales 1, 2, 3, 4
    return ProgressiveSchedule(until=0.5, start_scale=1, begin_ends=begin_ends, ramp_steps=ramp_steps)


def test_ramp_is_off_in_the_first_and_last_stage_and_restarts_per_stage():
    sched = _schedule(ramp_steps=4)
    # warm-up 2, 20 steps, until 0.5: p = (t - 2) / 8, stage = 1 + round(2 p): 1 for t <= 4 (2p = 0.5 at t = 4
    # rounds to 0), 2 for t = 5..7, 3 from t = 8 (2p = 1.5 rounds to 2)
    stages = [sched.advance(t, 2, 20) for t in range(12)]
    assert [s.scale for s in stages] == [1, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3]
    assert [s.ramp for s in stages[:5]] == [1.0] * 5  # first stage: the lr warm-up covers it
    assert [s.ramp for s in stages[5:8]] == [0.25, 0.5, 0.75]  # i / 4 since the stage began
    assert all(s.full and s.ramp == 1.0 for s in stages[8:])  # the last scale trains as without progressive
    assert [s.end for s in stages[:6]] == [5] * 5 + [14]
    slow = _schedule(ramp_steps=1000)
    for t in range(6):
        st = slow.advance(t, 2, 20)
    assert st.scale == 2 and st.ramp == RAMP_FLOOR  # 1/1000 clipped up to 0.01


def test_counters_round_trip_so_a_resumed_run_continues_the_ramp():
    ref, run = _schedule(), _schedule()
    for t in range(6):
        ref.advance(t, 2, 20)
        run.advance(t, 2, 20)
    restored = _schedule()
    restored.load_state_dict(copy.deepcopy(run.state_dict()))
    assert [ref.advance(t, 2, 20) for t in range(6, 12)] == [restored.advance(t, 2, 20) for t in range(6, 12)]
    assert ref.advance(12, 2, 20) == restored.advance(12, 2, 20)
    fresh = _schedule()  # without the counters the stage restarts as a "first" stage: no ramp (wrong)
    assert fresh.advance(6, 2, 20).ramp == 1.0 and _schedule_after(6).ramp == 0.5


def _schedule_after(steps: int) -> Stage:
    s = _schedule()
    for t in range(steps):
        s.advance(t, 2, 20)
    return s.advance(steps, 2, 20)


def test_a_start_scale_outside_the_schedule_is_refused_with_the_key():
    with pytest.raises(ValueError, match="model.train.progressive.start_scale=4"):
        ProgressiveSchedule(0.5, 4, [(0, 1), (1, 5)], ramp_steps=1)
    ProgressiveSchedule(0.0, 4, [(0, 1), (1, 5)], ramp_steps=1)  # off: not checked


def test_the_truncated_forward_equals_the_full_forwards_prefix():
    torch.manual_seed(0)
    var = tiny_var().eval()
    B = 2
    label_B = torch.tensor([1, 3])
    x_BLCv = torch.randn(B, var.L - var.first_l, var.Cvae)
    full = var(label_B, x_BLCv)
    for _, end in var.begin_ends:  # stage 0 feeds only the start token
        prefix = var(label_B, x_BLCv[:, : end - var.first_l])
        assert prefix.shape == (B, end, var.V)
        torch.testing.assert_close(prefix, full[:, :end], rtol=1e-5, atol=1e-5)


def test_the_prefix_loss_is_the_published_weighted_sum_and_skips_untrained_scales():
    torch.manual_seed(0)
    var, vae = tiny_var().eval(), tiny_vae().eval()
    img = torch.rand(3, 3, vae.cfg.image_size, vae.cfg.image_size) * 2 - 1
    label_B = torch.tensor([0, 1, 2])
    gt_BL, x_BLCv = tokenize(vae, img)
    L = gt_BL.shape[1]
    a, b = var.begin_ends[2]
    stage = Stage(scale=2, end=b, ramp=0.3, full=False)
    out = next_scale_losses(var, vae, (img, label_B), stage=stage)
    logits = var(label_B, x_BLCv[:, : b - var.first_l])
    ce_Bb = F.cross_entropy(logits.transpose(1, 2), gt_BL[:, :b], reduction="none")
    expected = (ce_Bb[:, :a].sum(1) / L + 0.3 * ce_Bb[:, a:b].sum(1) / L).mean()  # 1/L of the FULL length
    torch.testing.assert_close(out["loss"], expected)
    assert "loss_last" not in out and "token_err_last" not in out
    assert sorted(k for k in out if k.startswith("scale/loss")) == [
        "scale/loss_s0",
        "scale/loss_s1",
        "scale/loss_s2",
    ]
    full = next_scale_losses(var, vae, (img, label_B), stage=Stage(3, L, 1.0, True))
    plain = next_scale_losses(var, vae, (img, label_B))
    assert full.keys() == plain.keys() and torch.equal(full["loss"], plain["loss"])


def test_lin_T_schedule_follows_the_published_formula():
    # lin0.8 with final ratio 0.1: mid = (1 + 0.1 + 0.9 * 0.2) / 2 = 0.64; linear 1 -> 0.64 over the first 80%
    # of the post-warm-up steps, then 0.64 -> 0.1. Warm-up 10 of 110 steps: progress = (t - 10) / 99.
    f = lambda t: lr_factor(t, 10, 110, "lin0.8", 0.005, 0.1)  # noqa: E731
    assert f(10) == pytest.approx(1.0)
    assert f(10 + 0.4 * 99) == pytest.approx(1 + (0.64 - 1) * 0.5)
    assert f(10 + 0.8 * 99) == pytest.approx(0.64)
    assert f(109) == pytest.approx(0.1)
    for bad in ("lin1.5", "linx", "cosine"):
        with pytest.raises(ValueError, match="model.optim.schedule"):
            check_schedule(bad)


def test_compile_keeps_every_progressive_shape_compiled(monkeypatch):
    """torch.compile with static shapes compiles the blocks once per (prefix length, batch size, train/eval).
    Progressive training over 4 scales with a partial last batch and evaluation needs 10 graphs, past
    dynamo's default recompile limit (8), after which it silently runs the blocks eagerly; ``setup`` reserves
    the budget the run needs, so every one of them is compiled (counted by a counting backend)."""
    from dataclasses import asdict

    import torch._dynamo.config
    from torch._dynamo.testing import CompileCounter

    from tests.helpers import tiny_vae_cfg
    from var_lightning.objectives.progressive import Stage
    from var_lightning.training.var_module import VARModule
    from var_lightning.transformer import var as var_mod

    torch._dynamo.reset()
    counter = CompileCounter()
    torch._dynamo.config.recompile_limit = 8  # torch's default (the conftest restores what was set)
    monkeypatch.setitem(
        var_mod._COMPILED_RUN_BLOCKS, None, torch.compile(var_mod.run_blocks, backend=counter, dynamic=False)
    )
    m = VARModule(
        transformer=dict(depth=2, width=32, num_heads=2, num_classes=4),
        tokenizer=asdict(tiny_vae_cfg()),
        train=dict(compile=True, progressive=dict(until=0.5, start_scale=0)),
    )
    m.setup("fit")
    K, ends = len(m.var.patch_nums), [e for _, e in m.var.begin_ends]
    shapes = 0
    for B in (4, 3):  # a full and a partial last batch
        batch = (torch.rand(B, 3, 8, 8), torch.arange(B) % 4)
        m.train()
        for si in range(K):
            m.compute_losses(batch, drop_labels=True, stage=Stage(si, ends[si], 1.0, si == K - 1))
            shapes += 1
        m.eval()
        with torch.no_grad():
            m.compute_losses(batch)
        shapes += 1
    assert shapes == 10 and counter.frame_count == shapes
    torch._dynamo.reset()
