"""The sharded (FSDP2) and multi-process paths, end to end through `var-train` on CPU processes (gloo).

One tiny tokenizer, then the VAR stage under each trainer config: one process, DDP, FSDP (full shard,
grad-op, hybrid) and bf16-mixed. Each run's weights must match the one-process run (the same 16 images
per step: the loader gives rank r every world-th index of the epoch's order), images are written during
training, the weight-decay groups are the unsharded run's, a run SIGKILLed mid-epoch continues with
resume=auto to the uninterrupted run's weights, and the sharded checkpoint consolidates into a file that
samples the same images as the directory itself.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from var_lightning.checkpoints.load import load_models

ROOT = Path(__file__).resolve().parents[2]
DATA = ["data.image_size=8", "data.train_size=32", "data.val_size=32", "data.num_classes=4"]
# nothing random in the objective (no label dropout, no drop-path): runs are comparable step for step;
# a clip value the gradients exceed, so clipping is exercised under every strategy
VAR = [
    "experiment=var_tiny",
    "schedule=cpu_micro",
    "++model.transformer.depth=2",
    "++model.transformer.width=32",
    "++model.transformer.num_heads=2",
    "++model.transformer.drop_path_rate=0",
    "model.train.cond_drop_rate=0",
    "model.optim.base_lr=1e-2",
    "model.optim.warmup_steps=0",
    "trainer.gradient_clip_val=0.05",
    "trainer.max_epochs=2",
    "logger=none",
    *DATA,
]
CPU2 = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
RUNS = {  # name -> overrides; global batch 16 everywhere
    "single": ["trainer=cpu", "data.batch_size=16"],
    "ddp": ["trainer=ddp", *CPU2, "data.batch_size=8"],
    "fsdp": ["trainer=fsdp_cpu", "data.batch_size=8"],
    "fsdp_grad_op": [
        "trainer=fsdp_grad_op",
        *CPU2,
        "data.batch_size=8",
        "callbacks=[default,generation_metrics]",
        "callbacks.generation_metrics.extractor.name=tiny-random",
        "callbacks.generation_metrics.num_samples=12",
        "callbacks.generation_metrics.batch_size=5",
        "callbacks.generation_metrics.kid=false",
    ],
    "fsdp_hybrid": ["trainer=fsdp_hybrid", *CPU2, "trainer.strategy.replicas=2", "data.batch_size=8"],
    "fsdp_bf16": ["trainer=fsdp_cpu", "trainer.precision=bf16-mixed", "data.batch_size=8"],
    "fsdp_ac": ["trainer=fsdp_cpu", "trainer.strategy.activation_checkpointing=true", "data.batch_size=8"],
    "fsdp_unclipped": ["trainer=fsdp_cpu", "data.batch_size=8", "trainer.gradient_clip_val=null"],
    "gpu": [
        "trainer=gpu",
        "trainer.accelerator=cpu",
        "data.batch_size=16",
    ],  # as shipped (bf16-mixed), on CPU
    "single_ema": ["trainer=cpu", "data.batch_size=16", "callbacks=ema", "callbacks.ema.decay=0.5"],
    "fsdp_ema": ["trainer=fsdp_cpu", "data.batch_size=8", "callbacks=ema", "callbacks.ema.decay=0.5"],
}


def var_train(run_dir: Path, overrides: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """`python -m var_lightning.cli.train ...` in its own session (so a probe can kill every rank)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "var_lightning.cli.train", *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=env, cwd=run_dir.parent, start_new_session=True
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
        assert "terminate called" not in proc.stderr, proc.stderr[-3000:]
    return proc


def trace(run: Path) -> list[str]:
    return [
        "+callbacks.rng_trace._target_=tests.integration.probes.RNGTrace",
        f"+callbacks.rng_trace.out_dir={run}",
    ]


@pytest.fixture(scope="module")
def runs(tokenizer, tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in RUNS.items():
        run = base / name
        probe = [*trace(run), "+callbacks.decay_sets._target_=tests.integration.probes.DecaySets",
                 f"+callbacks.decay_sets.out_dir={run}"]  # fmt: skip
        var_train(run, [*VAR, f"model.tokenizer_ckpt={tokenizer}", *extra, *probe])
        out[name] = run
    return out


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_models(ckpt).var.state_dict().items()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize(
    ("name", "tol"),
    [
        ("ddp", 1e-5),
        ("fsdp", 1e-5),
        ("fsdp_grad_op", 1e-5),
        ("fsdp_hybrid", 1e-5),
        ("fsdp_bf16", 3e-2),
        ("gpu", 3e-2),
        ("fsdp_ac", 1e-5),  # activation checkpointing: recomputed blocks, the same weights
    ],
)
@pytest.mark.process
def test_every_strategy_trains_the_weights_of_one_process(runs, name, tol):
    """4 steps at lr 0.01 with clipping: fp32 strategies agree with one process to float rounding (1e-5);
    bf16 blocks to 3e-2 (the fp32 runs themselves move the weights by ~1e-1)."""
    single = weights(runs["single"] / "checkpoints" / "last.ckpt")
    other = weights(runs[name] / "checkpoints" / "last.ckpt")
    assert max_diff(single, other) < tol
    moved = json.loads((runs[name] / "metrics.json").read_text())
    ref = json.loads((runs["single"] / "metrics.json").read_text())
    assert moved["val/loss"] == pytest.approx(ref["val/loss"], abs=1e-4 if tol < 1e-3 else 2e-2)


@pytest.mark.process
def test_the_runs_learn_and_sharded_clipping_is_the_one_process_clipping(runs):
    """The sharded run equals the clipped one-process run (above) and differs from its own unclipped twin, so
    the clip is active and computed over the whole model's gradient norm, not one rank's shards."""
    first = json.loads((runs["single"] / "metrics.json").read_text())
    assert first["val/loss"] < 4.15  # ln(64) = 4.159 at the start: the 4 steps moved the loss
    clipped = weights(runs["fsdp"] / "checkpoints" / "last.ckpt")
    assert max_diff(clipped, weights(runs["fsdp_unclipped"] / "checkpoints" / "last.ckpt")) > 1e-3
    for name in ("fsdp", "fsdp_hybrid"):
        assert (runs[name] / "checkpoints" / "last.ckpt" / ".metadata").is_file()  # a sharded directory


@pytest.mark.process
def test_sharded_runs_write_image_grids_during_training(runs):
    for name in ("fsdp", "fsdp_grad_op", "fsdp_hybrid", "fsdp_bf16"):
        grids = sorted(p.name for p in (runs[name] / "images").glob("val_samples_*.png"))
        assert grids == [
            "val_samples_e000_s000002.png",
            "val_samples_e001_s000004.png",
            "val_samples_final.png",
        ]


@pytest.mark.process
def test_generation_metrics_sample_a_sharded_transformer_on_every_rank(runs):
    """FID during sharded training: every rank gathers the full weights and samples its share."""
    metrics = json.loads((runs["fsdp_grad_op"] / "metrics.json").read_text())
    assert math.isfinite(metrics["val/fid"]) and metrics["val/fid_best"] <= metrics["val/fid"]


@pytest.mark.process
def test_sharded_runs_decay_the_parameters_of_the_unsharded_run(runs):
    single = json.loads((runs["single"] / "decay_rank0.json").read_text())
    assert single["decay"] and single["no_decay"]
    for name in ("fsdp", "fsdp_grad_op", "fsdp_hybrid"):
        for rank in (0, 1):
            assert json.loads((runs[name] / f"decay_rank{rank}.json").read_text()) == single


@pytest.mark.process
def test_sharded_checkpoint_consolidates_and_samples_like_the_directory(runs, tmp_path):
    from var_lightning.cli.convert import main as convert
    from var_lightning.transformer.sampling import sample

    ckpt_dir = runs["fsdp"] / "checkpoints" / "last.ckpt"
    out = tmp_path / "fsdp.safetensors"
    assert convert(["consolidate", str(ckpt_dir), "--out", str(out)]) == 0
    a, b = load_models(ckpt_dir), load_models(out)
    assert max_diff(weights(ckpt_dir), weights(out)) == 0.0
    imgs = [sample(m.var, m.vae, 4, labels=[0, 1, 2, 3], cfg=1.5, top_k=10, seed=3).images for m in (a, b)]
    assert torch.equal(*imgs)
    assert convert(["consolidate", str(out), "--out", str(tmp_path / "x.ckpt")]) == 2  # a file needs none


@pytest.mark.process
def test_a_killed_sharded_run_resumes_to_the_uninterrupted_weights(tokenizer, runs, tmp_path):
    """SIGKILL of every rank after step 3 of 4 (mid-epoch 2); the relaunch with resume=auto finds the
    periodic sharded checkpoint of step 3 and ends where the uninterrupted fsdp run ended."""
    run = tmp_path / "killed"
    common = [
        *VAR,
        f"model.tokenizer_ckpt={tokenizer}",
        *RUNS["fsdp"],
        "callbacks.periodic_checkpoint.every_n_steps=1",
        *trace(run),
    ]
    killed = var_train(run, [*common, "+callbacks.kill._target_=tests.integration.probes.KillAt",
                             "+callbacks.kill.step=3"], check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (run / "checkpoints" / "periodic.ckpt" / ".metadata").is_file()
    resumed = var_train(run, [*common, "resume=auto"])
    assert "periodic.ckpt (epoch 1, step 3)" in resumed.stdout + resumed.stderr
    ref = weights(runs["fsdp"] / "checkpoints" / "last.ckpt")
    assert max_diff(ref, weights(run / "checkpoints" / "last.ckpt")) < 1e-6
    for rank in (0, 1):  # each rank continues its own random stream (restored per rank, not rank 0's)
        seen = json.loads((run / f"rng_rank{rank}.json").read_text())
        assert seen == json.loads((runs["fsdp"] / f"rng_rank{rank}.json").read_text())


@pytest.mark.process
def test_a_killed_run_resumes_its_ema_to_the_uninterrupted_average(tokenizer, runs, tmp_path):
    """callbacks=ema, SIGKILL after the periodic save of step 3: the average in that checkpoint already
    holds step 3's update (the EMA runs before any callback saves at a step), so the resumed run ends on the
    uninterrupted run's average, not 1e-4 off."""
    from var_lightning.checkpoints.build import sub_state_dict
    from var_lightning.checkpoints.reader import read_checkpoint

    run = tmp_path / "killed_ema"
    common = [*VAR, f"model.tokenizer_ckpt={tokenizer}", *RUNS["single_ema"],
              "callbacks.periodic_checkpoint.every_n_steps=1", *trace(run)]  # fmt: skip
    killed = var_train(run, [*common, "+callbacks.kill._target_=tests.integration.probes.KillAt",
                             "+callbacks.kill.step=3"], check=False)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = var_train(run, [*common, "resume=auto"])
    said = resumed.stdout + resumed.stderr  # the image grids and the frozen tokenizer raise no warnings
    assert "is not writable" not in said and "in eval mode at the start of training" not in said, said[-3000:]
    mine = read_checkpoint(run / "checkpoints" / "last.ckpt")["state_dict"]
    ref = read_checkpoint(runs["single_ema"] / "checkpoints" / "last.ckpt")["state_dict"]
    for prefix in ("var.", "var_ema."):
        a, b = sub_state_dict(mine, prefix), sub_state_dict(ref, prefix)
        assert max_diff({k: v.float() for k, v in a.items()}, {k: v.float() for k, v in b.items()}) < 1e-6, (
            prefix
        )


@pytest.mark.process
def test_ranks_draw_their_own_random_numbers(runs):
    """Label dropout and drop-path masks differ between ranks (one seed for all would repeat the same mask
    on every rank)."""
    single = json.loads((runs["single"] / "rng_rank0.json").read_text())
    for name in ("ddp", "fsdp"):
        r0, r1 = (json.loads((runs[name] / f"rng_rank{r}.json").read_text()) for r in (0, 1))
        assert r0.keys() == r1.keys() == single.keys() and len(r0) == 4
        assert all(r0[k] != r1[k] for k in r0)


@pytest.mark.process
def test_ema_is_kept_sharded_over_the_transformer_only_and_loaded_for_sampling(runs):
    """callbacks=ema under FSDP averages the same weights as one process, holds the transformer only, and is
    what load_models (var-sample, var-eval) returns; the raw weights stay in var.* for resuming."""
    from var_lightning.checkpoints.build import sub_state_dict
    from var_lightning.checkpoints.reader import read_checkpoint

    sharded = read_checkpoint(runs["fsdp_ema"] / "checkpoints" / "last.ckpt")["state_dict"]
    single = read_checkpoint(runs["single_ema"] / "checkpoints" / "last.ckpt")["state_dict"]
    ema, raw = sub_state_dict(sharded, "var_ema."), sub_state_dict(sharded, "var.")
    assert ema.keys() == raw.keys() and not any(k.startswith("vae") for k in ema)
    assert max_diff(ema, sub_state_dict(single, "var_ema.")) < 1e-5
    assert max_diff(raw, sub_state_dict(single, "var.")) < 1e-5
    assert max_diff(ema, raw) > 1e-4  # the average lags the weights (decay 0.5 over 4 steps)
    loaded = weights(runs["fsdp_ema"] / "checkpoints" / "last.ckpt")
    assert max_diff(loaded, {k: v.float() for k, v in ema.items()}) == 0.0


@pytest.mark.parametrize(
    ("name", "sig", "code"), [("ddp", "SIGTERM", 143), ("single", "SIGUSR1", 138), ("fsdp", "SIGINT", 130)]
)
@pytest.mark.process
def test_a_signal_saves_a_checkpoint_and_the_relaunch_continues_exactly(
    tokenizer, runs, tmp_path, name, sig, code
):
    """The signal reaches rank 0 only: every rank saves checkpoints/preempted.ckpt at the step boundary where
    the ranks next compare notes (one process: the next step; several: every check_every_n_steps, here 3, so
    a signal after step 2 is acted on at step 3), the run exits 128 + signal (not 0) naming the command that
    continues it, and that command (resume=auto) ends on the uninterrupted run's weights."""
    run = tmp_path / name
    common = [
        *VAR,
        f"model.tokenizer_ckpt={tokenizer}",
        *RUNS[name],
        "callbacks.periodic_checkpoint.minutes=null",
        "run_callbacks.preemption.check_every_n_steps=3",
    ]
    at = 3 if name == "single" else 2
    stopped = var_train(run, [*common, "+callbacks.sig._target_=tests.integration.probes.SignalAt",
                              f"+callbacks.sig.step={at}", f"+callbacks.sig.signal={sig}"], check=False)  # fmt: skip
    err = stopped.stdout + stopped.stderr
    assert stopped.returncode == code, err[-3000:]
    assert f"stopped by {sig} at step 3" in err and "to continue this run: var-train" in err, err[-3000:]
    command = err.split("to continue this run: ", 1)[1].splitlines()[0]
    assert f"hydra.run.dir={run}" in command and command.endswith("resume=auto")
    saved = run / "checkpoints" / "preempted.ckpt"
    assert saved.exists() and read_step(saved) == 3
    assert not (run / ".var-train.lock").exists()  # released
    resumed = var_train(run, [*common, "resume=auto"])
    assert "preempted.ckpt (epoch 1, step 3)" in resumed.stdout + resumed.stderr
    ref = weights(runs[name] / "checkpoints" / "last.ckpt")
    assert max_diff(ref, weights(run / "checkpoints" / "last.ckpt")) < 1e-6


def read_step(ckpt: Path) -> int:
    from var_lightning.checkpoints.reader import read_checkpoint

    return int(read_checkpoint(ckpt)["global_step"])
