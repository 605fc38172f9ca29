"""Test-only callbacks, added to a real `var-train` command line (``+callbacks.<name>._target_=tests...``) to
observe or interrupt a multi-process run from inside. The subprocess needs the repository root on
PYTHONPATH."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import signal as signal_module
from pathlib import Path

import pytorch_lightning as L
import torch


class DecaySets(L.Callback):
    """Writes ``decay_rank<r>.json``: the parameter names in each optimizer group, as the run built them."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from var_lightning.training.sharding import FSDPModule

        for m in pl_module.var.modules():  # a gathered FSDP2 unit lists its gathered tensors, not the shards
            if isinstance(m, FSDPModule):
                m.reshard()
        names = {id(p): n for n, p in pl_module.var.named_parameters()}
        groups = {
            g.get("name", str(i)): sorted(names[id(p)] for p in g["params"])
            for i, g in enumerate(trainer.optimizers[0].param_groups)
        }
        Path(self.out_dir, f"decay_rank{trainer.global_rank}.json").write_text(json.dumps(groups))


class KillAt(L.Callback):
    """SIGKILLs the whole process group (every rank at once, as a node failure or ``scancel -s KILL`` does)
    once ``step`` optimizer steps are done. Start the run in its own session."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step >= self.step and trainer.is_global_zero:
            os.killpg(os.getpgid(0), signal.SIGKILL)


class RNGTrace(L.Callback):
    """Writes ``rng_rank<r>.json``: a digest of this rank's torch RNG state at the start of every training
    step (what label dropout and drop-path draw from), merged across relaunches of the same run."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        path = Path(self.out_dir, f"rng_rank{trainer.global_rank}.json")
        seen = json.loads(path.read_text()) if path.exists() else {}
        seen[str(trainer.global_step)] = hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()[
            :16
        ]
        path.write_text(json.dumps(seen))


class PreemptOnce(L.Callback):
    """Sends this process SIGUSR2 (what SLURM, and submitit's local executor near a timeout, send before
    pre-empting) once ``step`` optimizer steps are done, on the first attempt only (``marker`` remembers it):
    submitit checkpoints the job and requeues it."""

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step >= self.step and not self.marker.exists():
            self.marker.write_text(str(trainer.global_step))
            os.kill(os.getpid(), signal.SIGUSR2)


class SignalAt(L.Callback):
    """Sends ``signal`` (a name: SIGTERM, SIGINT, SIGUSR1) to rank 0's own process only, as ``kill <pid>`` or a
    scheduler does, when ``step`` optimizer steps are done (exactly then, so a resumed run does not repeat it)."""

    def __init__(self, step: int, signal: str) -> None:
        self.step, self.signum = step, getattr(signal_module, signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step == self.step and trainer.is_global_zero:
            os.kill(os.getpid(), self.signum)


class HoldAt(L.Callback):
    """At ``step``, writes ``<out_dir>/at_step`` and waits (signals are handled meanwhile) until
    ``<out_dir>/go`` exists: a run held still while a test acts on it."""

    def __init__(self, step: int, out_dir: str) -> None:
        self.step, self.out_dir = step, Path(out_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if trainer.global_step != self.step or not trainer.is_global_zero:
            return
        (self.out_dir / "at_step").write_text(str(trainer.global_step))
        import time

        deadline = time.monotonic() + 120
        while not (self.out_dir / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.1)


class EMAAtStart(L.Callback):
    """Writes ``<out_dir>/ema_start.json``: the largest |EMA - weights| over the transformer's parameters when
    training starts (after a resume has restored both)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        from var_lightning.training.sharding import local_tensors

        ema, raw = local_tensors(pl_module.var_ema), local_tensors(pl_module.var)
        diff = max((e - r).abs().max().item() for e, r in zip(ema, raw, strict=True))
        Path(self.out_dir, "ema_start.json").write_text(json.dumps({"max_diff": diff}))
