"""The training recipe's arithmetic: lr = base_lr x global batch / 256 over devices and accumulation,
warm-up + lin0 decay, the cosine weight-decay schedule, the no-decay groups, and schedules that continue
smoothly when a resumed run's length changes."""

from __future__ import annotations

import math
from dataclasses import asdict
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import tiny_vae_cfg
from var_lightning.training.optim import no_decay, param_groups
from var_lightning.training.schedules import SchedulePlan, lr_factor, weight_decay_at
from var_lightning.training.var_module import VARModule


def module(**optim) -> VARModule:
    torch.manual_seed(0)
    return VARModule(
        transformer=dict(depth=2, width=32, num_heads=2, num_classes=4, drop_path_rate=0.0),
        tokenizer=asdict(tiny_vae_cfg()),
        optim=optim,
    )


def attach(m: VARModule, per_device: int, devices: int, accumulate: int, steps: int) -> None:
    """What configure_optimizers reads from the trainer, without running one."""
    fake = SimpleNamespace(
        datamodule=SimpleNamespace(batch_size=per_device),
        accumulate_grad_batches=accumulate,
        world_size=devices,
        estimated_stepping_batches=steps,
    )
    m._trainer = fake  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("per_device", "devices", "accumulate", "global_batch"),
    [(96, 8, 1, 768), (48, 16, 1, 768), (24, 8, 4, 768), (128, 8, 1, 1024), (32, 1, 1, 32)],
)
def test_peak_lr_is_base_lr_times_global_batch_over_256(per_device, devices, accumulate, global_batch):
    m = module(base_lr=1e-4)
    attach(m, per_device, devices, accumulate, steps=1000)
    assert m.global_batch_size() == global_batch
    opt = m.configure_optimizers()["optimizer"]
    assert m.peak_lr == pytest.approx(1e-4 * global_batch / 256)
    # the scheduler starts at warmup_start x peak (the published wp0 = 0.005)
    assert opt.param_groups[0]["lr"] == pytest.approx(m.peak_lr * 0.005)


def test_published_d16_numbers():
    """d16: bs 768, tblr 1e-4 -> 3e-4; d30: bs 1024, tblr 8e-5 -> 3.2e-4 (shared/spec, section c)."""
    m = module(base_lr=1e-4)
    attach(m, 96, 8, 1, 1669 * 200)
    m.configure_optimizers()
    assert m.peak_lr == pytest.approx(3e-4)
    m = module(base_lr=8e-5)
    attach(m, 128, 8, 1, 1252 * 350)
    m.configure_optimizers()
    assert m.peak_lr == pytest.approx(3.2e-4)


def test_warmup_then_lin0_decay_against_a_table_worked_by_hand():
    # 100 steps, 10 warm-up, wp0 0.005, final 0.01: progress p = (s - 10) / 89; flat while p < 0.05
    table = {
        0: 0.005,
        5: 0.005 + 0.995 * 5 / 10,
        10: 1.0,
        14: 1.0,  # p = 4/89 = 0.045 < 0.05
        15: 0.01 + 0.99 * (1 - 5 / 89) / 0.95,  # p = 5/89 = 0.056
        54: 0.01 + 0.99 * (1 - 44 / 89) / 0.95,
        99: 0.01,
    }
    for step, want in table.items():
        assert lr_factor(step, 10, 100, "lin0", 0.005, 0.01) == pytest.approx(want), step
    assert lr_factor(50, 10, 100, "const") == 1.0
    assert lr_factor(99, 0, 100, "cos", final_ratio=0.1) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="model.optim.schedule"):
        lr_factor(0, 0, 10, "linear")


def test_weight_decay_cosine_from_start_to_end():
    assert weight_decay_at(0, 101, 0.05, 0.08) == pytest.approx(0.05)
    assert weight_decay_at(50, 101, 0.05, 0.08) == pytest.approx(0.065)
    assert weight_decay_at(100, 101, 0.05, 0.08) == pytest.approx(0.08)
    assert weight_decay_at(30, 101, 0.05, None) == 0.05


def test_no_decay_groups_follow_the_published_filter():
    m = module(weight_decay=0.05)
    groups = {g["name"]: g for g in param_groups(m.var.named_parameters(), 0.05)}
    names = {id(p): n for n, p in m.var.named_parameters()}
    skipped = {names[id(p)] for p in groups["no_decay"]["params"]}
    decayed = {names[id(p)] for p in groups["decay"]["params"]}
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.05
    assert {
        "pos_start",
        "pos_1LC",
        "lvl_embed.weight",
        "blocks.0.attn.scale_mul_1H11",
        "head.bias",
    } <= skipped
    assert {"class_emb.weight", "word_embed.weight", "blocks.0.attn.mat_qkv.weight", "head.weight",
            "blocks.0.ada_lin.1.weight"} <= decayed  # fmt: skip
    assert all(not no_decay(n, p) for n, p in m.var.named_parameters() if n in decayed)
    assert not skipped & decayed and len(skipped) + len(decayed) == len(list(m.var.parameters()))


def test_decay_groups_are_decided_by_name_before_any_wrapping():
    """A wrapper that hands the optimizer flattened 1-D shards (FSDP1 with use_orig_params) must not move
    every matrix into the no-decay group: the names fixed on the plain network decide."""
    m = module(weight_decay=0.05)
    flat = [(n, torch.nn.Parameter(p.detach().reshape(-1))) for n, p in m.var.named_parameters()]
    names = {id(p): n for n, p in flat}

    def decay_names(groups):
        return {names[id(p)] for g in groups if g["name"] == "decay" for p in g["params"]}

    assert decay_names(param_groups(flat, 0.05)) == set()  # the ndim rule alone: silently no decay at all
    assert decay_names(param_groups(flat, 0.05, m.decayed)) == set(m.decayed)
    assert "blocks.0.attn.mat_qkv.weight" in m.decayed and "head.bias" not in m.decayed


def test_a_resume_that_changes_the_run_length_keeps_the_schedules_continuous():
    first = SchedulePlan()
    total, warmup = first.plan(100, 10)
    at = 60
    state = first.state(at)
    lr_before = lr_factor(first.step(at), warmup, total, "lin0", 0.005, 0.01)
    for new_length in (200, 80, 100):
        plan = SchedulePlan()
        plan.load(state)
        total2, warmup2 = plan.plan(new_length, round(0.02 * new_length))
        assert (total2, warmup2) == (100, 10)  # the original plan's, continued
        f = lambda s, plan=plan, w=warmup2, t=total2: lr_factor(plan.step(s), w, t, "lin0", 0.005, 0.01)  # noqa: E731
        assert f(at) == pytest.approx(lr_before)  # no jump at the resume
        # after it, lin0 decays linearly over the remaining steps: one step moves 1/remaining of the way
        assert f(at + 1) - f(at) == pytest.approx(-(f(at) - 0.01) / (new_length - 1 - at))
        assert f(new_length - 1) == pytest.approx(0.01)  # the final ratio at the new end
        assert weight_decay_at(plan.step(new_length - 1), plan.total, 0.05, 0.08) == pytest.approx(0.08)
        # a second resume of the continued run keeps following the same curve
        again = SchedulePlan()
        again.load(plan.state(at + 7))
        again.plan(new_length, 999)
        g = lambda s, plan=again, w=warmup2, t=total2: lr_factor(plan.step(s), w, t, "lin0", 0.005, 0.01)  # noqa: E731
        assert g(at + 7) == pytest.approx(f(at + 7)) and g(new_length - 2) == pytest.approx(f(new_length - 2))
    # what a naive restart of the schedule would have done: a visible jump
    assert abs(lr_factor(at, 4, 200, "lin0", 0.005, 0.01) - lr_before) > 0.2
    assert math.isclose(SchedulePlan().step(37), 37.0)


def progressive_module(**optim) -> VARModule:
    torch.manual_seed(0)
    return VARModule(
        transformer=dict(depth=2, width=32, num_heads=2, num_classes=4, drop_path_rate=0.0),
        tokenizer=asdict(tiny_vae_cfg(patch_nums=(1, 2, 3, 4, 5, 6))),
        optim=optim,
        train=dict(progressive=dict(until=0.8, start_scale=1)),
    )


def test_progressive_training_follows_the_published_warmup_and_schedule_pairing():
    """50 steps, warm-up 5%: 2.5 steps. The lr rounds it (2), the stages use 2.5 (the published wp_it); the
    lr schedule is lin0.8 unless one is set."""
    from var_lightning.objectives.progressive import stage_at

    m = progressive_module(warmup_fraction=0.05)
    attach(m, 8, 1, 1, steps=50)
    m._trainer.max_epochs, m._trainer.num_training_batches, m._trainer.global_step = 10, 5, 0
    sched = m.configure_optimizers()["lr_scheduler"]["scheduler"]
    plan = m.schedule_plan
    assert (plan.warmup, plan.warmup_exact) == (2, 2.5)
    assert sched.lr_lambdas[0](30) == pytest.approx(lr_factor(30, 2, 50, "lin0.8", 0.005, 0.01))
    assert lr_factor(30, 2, 50, "lin0.8", 0.005, 0.01) != pytest.approx(
        lr_factor(30, 2, 50, "lin0", 0.005, 0.01)
    )
    got, rounded = [], []
    for step in range(50):
        m._trainer.global_step = step
        got.append(m.progressive_stage().scale)
        rounded.append(stage_at(step, 2, 50, 0.8, 1, 6))
    assert got == [stage_at(step, 2.5, 50, 0.8, 1, 6) for step in range(50)]
    assert got != rounded  # the rounded warm-up would change stage one step early somewhere
    explicit = progressive_module(warmup_fraction=0.05, schedule="cos")
    attach(explicit, 8, 1, 1, steps=50)
    explicit._trainer.max_epochs, explicit._trainer.num_training_batches = 10, 5
    fn = explicit.configure_optimizers()["lr_scheduler"]["scheduler"].lr_lambdas[0]
    assert fn(30) == pytest.approx(lr_factor(30, 2, 50, "cos", 0.005, 0.01))


def test_label_dropout_draws_its_random_numbers_at_every_rate():
    """As the published trainer: rate 0 consumes the same draw as 0.1, so the streams after it match."""
    from var_lightning.objectives.losses import drop_labels

    labels = torch.arange(8)
    torch.manual_seed(3)
    assert torch.equal(drop_labels(labels, 0.0, 10), labels)
    after_zero = torch.rand(4)
    torch.manual_seed(3)
    drop_labels(labels, 0.1, 10)
    assert torch.equal(torch.rand(4), after_zero)


def test_image_grids_sample_in_calls_that_fit_the_memory_budget():
    """log_images draws its rows in calls of ``sampling_batch()`` images (call i seeded seed + i), sized from
    model.train.sample_memory_gib; with room for all, one call draws exactly what one generate() call does."""
    from var_lightning.scaling.planner import GIB, sampling_bytes_per_image

    def module(gib: float) -> VARModule:
        torch.manual_seed(0)
        return VARModule(transformer=dict(depth=2, width=64, num_heads=2, num_classes=4, drop_path_rate=0.0,
                                          init_adaln_gamma=0.5),
                         tokenizer=asdict(tiny_vae_cfg()), train={"sample_memory_gib": gib},
                         sampling=dict(cfg=1.5, top_k=0, top_p=0.0, seed=7))  # fmt: skip

    per = sampling_bytes_per_image(module(1.0).var.cfg, module(1.0).vae.cfg, 4.0)
    small = module(3.5 * per / GIB)
    assert small.sampling_batch() == 3
    calls: list[tuple[int, int]] = []
    generate = small.generate
    small.generate = lambda labels, **kw: calls.append((len(labels), kw["seed"])) or generate(labels, **kw)
    images = small.log_images(None, max_images=2)["samples_nrow2"][0]
    assert calls == [(3, 7), (3, 8), (2, 9)] and images.shape[0] == 8
    labels = torch.arange(4).repeat_interleave(2)
    assert torch.equal(images[3:6], generate(labels[3:6], seed=8))

    big = module(100.0)
    assert big.sampling_batch() >= 8
    assert torch.equal(big.log_images(None, max_images=2)["samples_nrow2"][0], big.generate(labels))
    with pytest.raises(ValueError, match="model.train.sample_memory_gib"):
        module(0.0)
