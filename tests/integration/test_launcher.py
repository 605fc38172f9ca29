"""The SLURM launcher's code path for real: a 2-job `var-train -m` multirun through hydra-submitit-launcher's
`submitit_local` executor (the same submitit job/requeue machinery as `hydra/launcher=slurm`, minus sbatch).

One job is pre-empted (SIGUSR2, what SLURM sends) after step 3: submitit checkpoints the callable and
requeues it, the job runs again in its own sweep directory, and `resume=auto` continues from its periodic
checkpoint. The sweep varies only a logging interval, so both jobs train the same weights: the requeued
job must end exactly where its uninterrupted sibling did.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.integration.test_sharded import ROOT, VAR
from var_lightning.checkpoints.reader import read_checkpoint

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install hydra-submitit-launcher")


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.process
def test_trainer_slurm_trains_inside_an_allocation(tokenizer, tmp_path):
    """trainer=slurm as shipped (nodes and tasks from the allocation, SLURMEnvironment with requeue on USR1)
    inside a one-task allocation as srun presents it (the variables srun sets), on CPU."""
    slurm = dict(SLURM_NTASKS="1", SLURM_NTASKS_PER_NODE="1", SLURM_JOB_NUM_NODES="1", SLURM_PROCID="0",
                 SLURM_LOCALID="0", SLURM_NODEID="0", SLURM_JOB_ID="4242", SLURM_JOB_NAME="var",
                 SLURM_NODELIST="localhost")  # fmt: skip
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "var_lightning.cli.train", *VAR, f"model.tokenizer_ckpt={tokenizer}",
           "trainer=slurm", "trainer.accelerator=cpu", "trainer.precision=32-true", "data.batch_size=16",
           f"hydra.run.dir={run}"]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env={**_env(), **slurm}, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SLURM auto-requeueing enabled" in proc.stdout + proc.stderr
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["global_step"] == 4


@pytest.mark.process
def test_submitit_multirun_requeues_a_preempted_job_which_resumes(tokenizer, tmp_path):
    sweep, marker = tmp_path / "sweep", tmp_path / "preempted_at"
    env = {
        k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable, "-m", "var_lightning.cli.train", "-m", "hydra/launcher=submitit_local",
        *VAR, f"model.tokenizer_ckpt={tokenizer}", "trainer=cpu", "data.batch_size=16", "trainer.max_epochs=3",
        "trainer.log_every_n_steps=20,21", "resume=auto", "callbacks.periodic_checkpoint.every_n_steps=1",
        "+callbacks.preempt._target_=tests.integration.probes.PreemptOnce", "+callbacks.preempt.step=3",
        f"+callbacks.preempt.marker={marker}", f"hydra.sweep.dir={sweep}",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert marker.read_text() == "3"
    logs = {job: (sweep / job / "var_tiny.log").read_text() for job in ("0", "1")}
    requeued = [job for job, text in logs.items() if "continuing from" in text]
    assert len(requeued) == 1, logs
    assert "periodic.ckpt (epoch 1, step 3)" in logs[requeued[0]]
    submitit_logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.err"))
    assert "this job is preempted" in submitit_logs
    final = [read_checkpoint(sweep / job / "checkpoints" / "last.ckpt") for job in ("0", "1")]
    assert final[0]["global_step"] == final[1]["global_step"] == 6
    a, b = (f["state_dict"] for f in final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["train", "evaluate", "sample", "edit", "classifier", "compare_ar", "app"])
def test_each_command_pickles_by_value_as_a_launcher_does(name):
    """``python -m var_lightning.cli.<name> -m hydra/launcher=submitit_slurm`` runs the module as ``__main__``,
    so submitit's cloudpickle copies its functions by value together with every module and submodule they
    reach; a submodule that is not a plain module (``torch.backends.cudnn``) cannot be pickled and the sweep
    failed before any job was submitted."""
    import importlib

    cloudpickle = pytest.importorskip("cloudpickle")
    module = importlib.import_module(f"var_lightning.cli.{name}")
    cloudpickle.register_pickle_by_value(module)
    try:
        assert cloudpickle.loads(cloudpickle.dumps(module.main)) is not None
    finally:
        cloudpickle.unregister_pickle_by_value(module)
