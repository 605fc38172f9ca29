"""Resuming: which checkpoint ``resume`` picks (newest, fallback on corrupt files, wrong stage, weights only),
the resumable sampler/loader, and the end-to-end claim: a run killed mid-epoch and resumed with
``resume=auto`` ends with the same weights and metrics as an uninterrupted run."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as L
import torch
from omegaconf import open_dict

from tests.integration.test_configs import compose_train
from var_lightning.data.resumable import ResumableLoader, ResumableSampler, SeededItems, mix_seed
from var_lightning.data.synthetic import SyntheticShapes
from var_lightning.training.resume import candidate_checkpoints, resolve_resume


# ---------------------------------------------------------------------------------------------- sampler
def test_mix_seed_separates_what_addition_confuses():
    assert mix_seed(1, 2) != mix_seed(2, 1) and mix_seed(0, 1) != mix_seed(1, 0)
    assert len({mix_seed(s, e) for s in range(20) for e in range(20)}) == 400
    assert 0 <= mix_seed(2**70, -5) < 2**63


def test_sampler_permutes_per_epoch_splits_ranks_and_skips():
    ds = list(range(10))
    a = ResumableSampler(ds, seed=3, num_replicas=1, rank=0)
    e0 = [i for _, i in a]
    a.set_epoch(1)
    e1 = [i for _, i in a]
    assert sorted(e0) == sorted(e1) == ds and e0 != e1
    a.set_epoch(0)
    assert [i for _, i in a] == e0  # a function of (seed, epoch) only
    ranks = [ResumableSampler(ds, seed=3, num_replicas=3, rank=r) for r in range(3)]
    shares = [[i for _, i in r] for r in ranks]
    assert all(len(s) == 4 for s in shares) and set(sum(shares, [])) == set(ds)  # padded to 12
    a.start = 4
    assert [i for _, i in a] == e0[4:] and [i for _, i in a] == e0  # the skip applies once
    assert all(epoch == 0 for epoch, _ in a)


def test_seeded_items_make_random_transforms_a_function_of_the_item():
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(3) + i

    ds = SeededItems(Noisy(), seed=7)
    before = torch.get_rng_state()
    x = ds[(2, 1)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    assert torch.equal(x, ds[(2, 1)]) and not torch.equal(x, ds[(3, 1)])
    assert len(ds) == 4


def test_loader_without_trainer_iterates_like_a_dataloader():
    ds = SyntheticShapes(20, image_size=8, num_classes=3)
    loader = ResumableLoader(ds, batch_size=4, seed=1, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and batches[0][0].shape == (4, 3, 8, 8)
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(ds.labels_N.tolist())


# ---------------------------------------------------------------------------------------------- which ckpt
def _save(path: Path, stage: str = "var", full: bool = True, mtime: float | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {
        "var_lightning": {"stage": stage},
        "state_dict": {"w": torch.zeros(2)},
        "epoch": 0,
        "global_step": 1,
    }
    if full:
        ckpt.update(optimizer_states=[{}], loops={})
    torch.save(ckpt, path)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_resume_auto_picks_the_newest_and_falls_back_past_a_corrupt_one(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # nothing yet: a fresh run
    now = time.time()
    old = _save(tmp_path / "checkpoints" / "best-e000.ckpt", mtime=now - 30)
    mid = _save(tmp_path / "checkpoints" / "last.ckpt", mtime=now - 20)
    assert resolve_resume("auto", tmp_path, "var") == str(mid)
    hpc = _save(tmp_path / "hpc_ckpt_1.ckpt", mtime=now - 10)  # Lightning's SLURM pre-emption checkpoint
    assert resolve_resume("auto", tmp_path, "var") == str(hpc)
    assert candidate_checkpoints(tmp_path) == [hpc, mid, old]
    data = hpc.read_bytes()
    hpc.write_bytes(data[: len(data) // 2])  # killed while saving
    with pytest.warns(UserWarning, match="unreadable.*falling back"):
        assert resolve_resume("auto", tmp_path, "var") == str(mid)
    assert resolve_resume(str(tmp_path / "checkpoints"), tmp_path, "var") == str(mid)  # a directory to search
    with pytest.raises(ValueError, match="cannot be read"):
        resolve_resume(str(hpc), tmp_path, "var")  # an explicit file gets no fallback


def test_resume_refuses_the_other_stage_and_weights_only_files(tmp_path):
    tok = _save(tmp_path / "tok.ckpt", stage="tokenizer")
    with pytest.raises(ValueError, match=r"'tokenizer'-stage checkpoint.*trains the 'var' stage"):
        resolve_resume(str(tok), tmp_path, "var")
    weights = _save(tmp_path / "weights.ckpt", full=False)
    with pytest.raises(ValueError, match=r"weights only.*init_from="):
        resolve_resume(str(weights), tmp_path, "var")
    with pytest.raises(FileNotFoundError, match="resume=/nope"):
        resolve_resume("/nope", tmp_path)


# ---------------------------------------------------------------------------------------------- end to end
class Preempted(Exception):
    pass


class KillAt(L.Callback):
    """Saves a checkpoint at ``step`` (as a periodic or pre-emption checkpoint would) and dies."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            raise Preempted(f"killed at step {self.step}")


STAGES = {
    "var": [
        "experiment=var_tiny",
        "++model.transformer.depth=2",
        "++model.transformer.width=32",
        "++model.transformer.num_heads=2",
        "++model.transformer.drop_path_rate=0.1",  # drop-path and label dropout both draw from the global RNG
        "model.transformer.num_classes=10",
    ],
    # progressive training over the 3 scales of cpu_micro: 8 steps, 1 warm-up step, until 1.0 -> stage
    # 1 + round(2 (t - 1) / 7): scale 1 on steps 3..6 with its loss-weight ramp (1.5 epochs = 6 steps) running
    # across the kill at step 6, so a resume that lost the counters would train step 6 with another weight
    "var_progressive": [
        "experiment=var_tiny",
        "++model.transformer.depth=2",
        "++model.transformer.width=32",
        "++model.transformer.num_heads=2",
        "model.transformer.num_classes=10",
        "model.optim.warmup_steps=1",
        "model.optim.schedule=lin0.8",
        "model.train.progressive.until=1.0",
        "model.train.progressive.start_scale=0",
        "model.train.progressive.warmup_epochs=1.5",
    ],
    "tokenizer": [  # manual optimisation; the GAN starts (step 3) before the kill (step 6)
        "experiment=tokenizer_tiny",
        "model.tokenizer.ch=16",
        "model.tokenizer.vocab_size=64",
        "model.tokenizer.z_channels=8",
        "model.tokenizer.norm_groups=8",
        "model.tokenizer.ch_mult=[1,2]",
        "model.loss.disc_start=3",
        "model.loss.disc_ch=8",
        "model.loss.disc_layers=1",
    ],
}
METRICS = {
    "var": ("val/loss", "val/token_err_avg", "train/loss"),
    "tokenizer": ("val/rec_l1", "val/perplexity_last"),
    "var_progressive": ("val/loss", "train/loss", "train/prog_stage", "train/prog_ramp"),
}


def _run_cfg(stage: str, run_dir: Path, tokenizer: Path, *extra: str):
    cfg = compose_train(
        [
            *STAGES[stage],
            "schedule=cpu_micro",
            *([f"model.tokenizer_ckpt={tokenizer}"] if stage.startswith("var") else []),
            "data.image_size=8",
            "data.train_size=32",
            "data.val_size=8",
            "data.batch_size=8",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=1",
            "~callbacks.progress_bar",
            "~callbacks.image_logger",
            "~callbacks.throughput",
            "logger=none",
            *extra,
        ],
        run_dir,
    )
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.num_sanity_val_steps = 1
    return cfg


def _final(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return ckpt["state_dict"], metrics


@pytest.mark.parametrize("stage", ["var", "tokenizer", "var_progressive"])
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights_and_metrics(stage, tmp_path, tokenizer_file):
    from var_lightning.cli import train as train_mod

    ref = tmp_path / "uninterrupted"
    train_mod.train(_run_cfg(stage, ref, tokenizer_file))
    run = tmp_path / "preempted"
    original_build = train_mod.build

    def build_with_kill(c):
        dm, model, trainer = original_build(c)
        kill = KillAt(step=6, path=run / "checkpoints" / "preempt.ckpt")  # epoch 1, batch 2 of 4
        trainer.callbacks.append(kill)
        return dm, model, trainer

    train_mod.build = build_with_kill
    try:
        with pytest.raises(Preempted):
            train_mod.train(_run_cfg(stage, run, tokenizer_file))
    finally:
        train_mod.build = original_build
    (run / "metrics.json").unlink(missing_ok=True)
    train_mod.train(_run_cfg(stage, run, tokenizer_file, "resume=auto"))  # relaunch of the same command

    (w_ref, m_ref), (w_run, m_run) = _final(ref), _final(run)
    assert w_ref.keys() == w_run.keys()
    worst = max((w_ref[k].float() - w_run[k].float()).abs().max().item() for k in w_ref)
    assert worst <= 1e-6, worst  # measured: 0.0 (bitwise) for both stages
    for key in METRICS[stage]:
        assert m_run[key] == pytest.approx(m_ref[key], abs=1e-6), key


def test_rng_states_round_trip_through_a_checkpoint_dict():
    import random

    import numpy as np

    from var_lightning.training.resume import RNGStateCallback

    cb = RNGStateCallback()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    saved = cb.state_dict()
    expect = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    restored = RNGStateCallback()
    restored.load_state_dict(
        torch.load(_roundtrip(saved), weights_only=True)
    )  # plain tensors: weights_only loads
    restored.on_train_start(ONE_PROCESS, None)
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1]) and got[2] == expect[2]


ONE_PROCESS = SimpleNamespace(global_rank=0, world_size=1)


def test_each_rank_restores_its_own_rng_state_and_a_new_world_size_reseeds():
    from var_lightning.training.resume import RNGStateCallback

    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(RNGStateCallback._local_state())
    expect = torch.rand(3)  # rank 1's next draws
    saved = torch.load(_roundtrip({**states[0], "per_rank": states}), weights_only=True)
    torch.manual_seed(99)
    cb = RNGStateCallback()
    cb.load_state_dict(saved)
    cb.on_train_start(SimpleNamespace(global_rank=1, world_size=2), None)
    assert torch.equal(torch.rand(3), expect)  # rank 1 continues rank 1's stream, not rank 0's
    # resumed on 3 ranks: rank 0 takes rank 0's state, rank 2 a stream of its own derived from it
    draws = []
    for rank in (0, 2):
        cb = RNGStateCallback()
        cb.load_state_dict(saved)
        cb.on_train_start(SimpleNamespace(global_rank=rank, world_size=3), None)
        draws.append(torch.rand(3))
    torch.set_rng_state(states[0]["torch"])
    assert torch.equal(draws[0], torch.rand(3)) and not torch.equal(draws[0], draws[1])


def _roundtrip(obj):
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_loader_warns_when_resumed_with_other_data_settings():
    ds = SyntheticShapes(16, image_size=8, num_classes=3)
    state = ResumableLoader(ds, batch_size=4, seed=1).state_dict()
    ResumableLoader(ds, batch_size=4, seed=1).load_state_dict(state)  # same settings: silent
    with pytest.warns(UserWarning, match=r"batch_size.*differs from an uninterrupted run"):
        ResumableLoader(ds, batch_size=8, seed=1).load_state_dict(state)


def test_resuming_a_deeper_checkpoint_is_refused_before_fitting(tmp_path):
    """resume=auto after changing the depth: the checkpoint's extra blocks are named (Lightning's restore
    failed later with "Unexpected key(s)"); a callback's own entries (an EMA copy) are left alone."""
    from dataclasses import asdict

    from tests.helpers import tiny_vae_cfg
    from var_lightning.training.resume import check_resume_fits
    from var_lightning.training.var_module import VARModule

    def module(depth: int) -> VARModule:
        torch.manual_seed(0)
        return VARModule(transformer=dict(depth=depth, width=32, num_heads=1, num_classes=3),
                         tokenizer=asdict(tiny_vae_cfg()))  # fmt: skip

    deep = module(2)
    path = tmp_path / "last.ckpt"
    state = {**deep.state_dict(), **{f"var_ema.{k}": v for k, v in deep.var.state_dict().items()}}
    torch.save({"state_dict": state, "var_lightning": {"stage": "var"}}, path)
    check_resume_fits(module(2), path)  # the same model: the EMA entries are the callback's business
    with pytest.raises(ValueError, match=r"not in this run's model: var\.blocks\.1\..*init_from="):
        check_resume_fits(module(1), path)
