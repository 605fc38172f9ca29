"""One run per run directory, pre-emption that saves, and no leftovers of killed runs (`var-train` as a user
launches it, in subprocesses)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.integration.test_run_behaviour import TINY, TINY_DATA, cfg_for
from var_lightning.training.run_dir import LOCK_NAME, RunDirLocked, RunLock, remove_stale_temp_files

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = [*TINY, *TINY_DATA, "trainer.max_epochs=2", "trainer.num_sanity_val_steps=0",
             "callbacks.periodic_checkpoint.minutes=null"]  # fmt: skip


def launch(run: Path, *extra: str) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "HYDRA_FULL_ERROR")
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "var_lightning.cli.train", *TOKENIZER, *extra, f"hydra.run.dir={run}"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=run.parent, start_new_session=True)  # fmt: skip


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=10)
        time.sleep(0.2)


def hold_at(step: int, out_dir: Path) -> list[str]:
    """Overrides that hold a run still at ``step`` (``<out_dir>/at_step`` appears) until ``<out_dir>/go``."""
    return ["+callbacks.hold._target_=tests.integration.probes.HoldAt", f"+callbacks.hold.step={step}",
            f"+callbacks.hold.out_dir={out_dir}"]  # fmt: skip


def signal_held(proc: subprocess.Popen, out_dir: Path, signum: int, group: bool = False,
                check: Callable[[], None] | None = None) -> str:  # fmt: skip
    """Once the held run is at its step (``check()`` runs then), send ``signum`` to it (or to its whole
    process group), let it go on, and return its output; it is killed if it outlives this."""
    try:
        wait_for(out_dir / "at_step", proc)
        if check is not None:
            check()
        (os.killpg if group else os.kill)(proc.pid, signum)
        (out_dir / "go").write_text("")
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out + err


@pytest.mark.process
def test_a_second_run_in_the_same_directory_stops_and_sigterm_saves_the_first(tmp_path):
    """Run A holds the directory (held still at step 2 by a probe); run B, launched into it, stops at once
    naming A. Then SIGTERM to A: it saves checkpoints/preempted.ckpt at step 2, exits 143 with the command
    that continues it, leaves no lock; that command ends on the weights of an uninterrupted run."""
    run = tmp_path / "run"
    run.mkdir()
    a = launch(run, *hold_at(2, run))
    try:
        wait_for(run / "at_step", a)
        lock = json.loads((run / LOCK_NAME).read_text())
        assert lock["pid"] == a.pid and lock["host"] == socket.gethostname()
        written = {p: p.read_bytes() for p in [*(run / ".hydra").iterdir(), *run.glob("*.log")]}
        assert len(written) >= 4  # config.yaml, hydra.yaml, overrides.yaml and the log
        b = launch(run, "trainer.max_epochs=3", "seed=7")  # another experiment, same folder
        _, b_err = b.communicate(timeout=180)
        assert b.returncode == 2 and "var-train: error: " in b_err, b_err[-3000:]
        assert f"is in use by another var-train run (pid {a.pid} on host {socket.gethostname()}" in b_err
        assert "hydra.run.dir=" in b_err and not (run / "checkpoints" / "last-v1.ckpt").exists()
        # refused before Hydra wrote anything: A's config, overrides and log are as A left them
        assert {p: p.read_bytes() for p in written} == written
        os.kill(a.pid, signal.SIGTERM)
        (run / "go").write_text("")
        out, err = a.communicate(timeout=180)
    finally:
        if a.poll() is None:
            os.killpg(a.pid, signal.SIGKILL)
    err = out + err
    assert a.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM at step 2" in err and "to continue this run: var-train" in err
    assert (
        "`weights_only` was not set" not in err
    )  # (Lightning's line at our own saves, which read as unsafe)
    assert torch.load(run / "checkpoints" / "preempted.ckpt", weights_only=True)["global_step"] == 2
    assert not (run / LOCK_NAME).exists()
    command = shlex.split(err.split("to continue this run: ", 1)[1].splitlines()[0])
    assert command[0] == "var-train" and command[-1] == "resume=auto" and f"hydra.run.dir={run}" in command
    resumed = subprocess.run([sys.executable, "-m", "var_lightning.cli.train", *command[1:]], capture_output=True,
                             text=True, timeout=300, cwd=tmp_path,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "preempted.ckpt (epoch 0, step 2)" in resumed.stdout + resumed.stderr
    ref = tmp_path / "ref"
    ref.mkdir()
    uninterrupted = launch(ref)
    _, ref_err = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, ref_err[-3000:]
    a_sd = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    r_sd = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert a_sd.keys() == r_sd.keys()
    assert max((a_sd[k].float() - r_sd[k].float()).abs().max().item() for k in a_sd) < 1e-6


def test_ctrl_c_in_process_saves_then_exits_130(tmp_path):
    """The tokenizer stage, in this process: SIGINT after step 3 stops with a checkpoint and SystemExit(130);
    the handlers in place before the run are back afterwards."""
    from var_lightning.cli.train import train

    before = signal.getsignal(signal.SIGINT)
    probe = ["+callbacks.sig._target_=tests.integration.probes.SignalAt", "+callbacks.sig.step=3",
             "+callbacks.sig.signal=SIGINT"]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        train(cfg_for(tmp_path, "trainer.max_epochs=2", "callbacks.periodic_checkpoint.minutes=null", *probe))
    assert stop.value.code == 130
    assert torch.load(tmp_path / "checkpoints" / "preempted.ckpt", weights_only=True)["global_step"] == 3
    assert signal.getsignal(signal.SIGINT) is before and not (tmp_path / LOCK_NAME).exists()


@pytest.mark.process
def test_stale_locks_are_taken_over_and_live_ones_refused(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        here = socket.gethostname()
        lock = tmp_path / LOCK_NAME
        lock.write_text(
            json.dumps({"host": here, "pid": sleeper.pid, "command": "var-train x", "started": "t"})
        )
        with pytest.raises(RunDirLocked, match=f"pid {sleeper.pid} on host {here}, started t: var-train x"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(tmp_path) as mine:  # the same pid, now gone: stale
        assert json.loads(lock.read_text())["pid"] == os.getpid() and mine.held
    assert not lock.exists()
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    with pytest.raises(RunDirLocked, match="host elsewhere"):
        RunLock(tmp_path).acquire()
    old = time.time() - 600
    os.utime(lock, (old, old))  # not refreshed for 10 minutes: its host is gone
    RunLock(tmp_path).acquire()
    lock.write_text(json.dumps({"host": "elsewhere", "pid": 1, "slurm_job": "77"}))
    os.environ["SLURM_JOB_ID"] = "77"  # a requeued attempt of the same job
    try:
        RunLock(tmp_path).acquire()
    finally:
        del os.environ["SLURM_JOB_ID"]


def test_a_live_lock_is_refreshed(tmp_path):
    lock = RunLock(tmp_path, heartbeat_s=0.1)
    lock.acquire()
    try:
        old = time.time() - 600
        os.utime(lock.path, (old, old))
        time.sleep(0.5)
        assert time.time() - lock.path.stat().st_mtime < 5
    finally:
        lock.release()


def test_temporary_files_of_killed_saves_are_removed_at_the_next_start(tmp_path):
    from var_lightning.cli.train import train

    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir(parents=True)
    leftovers = [
        ckpts / ".last.ckpt.tmp-4242",
        ckpts / ".periodic.ckpt.tmp-99",
        tmp_path / ".hpc_ckpt_1.ckpt.tmp-7",
    ]
    for p in leftovers:
        p.write_bytes(b"\0" * 2_000_000)
    (ckpts / ".preempted.ckpt.tmp-5").mkdir()  # a sharded checkpoint's temporary directory
    (ckpts / "notes.tmp-1").write_text("not ours")  # not a temporary checkpoint name: kept
    train(cfg_for(tmp_path, "trainer.max_epochs=1", "callbacks.periodic_checkpoint.minutes=null"))
    assert not any(p.exists() for p in leftovers) and not (ckpts / ".preempted.ckpt.tmp-5").exists()
    assert (ckpts / "notes.tmp-1").exists() and (ckpts / "last.ckpt").exists()
    assert remove_stale_temp_files(tmp_path) == []


def test_the_run_directory_a_command_line_fixes_before_hydra_starts(tmp_path, monkeypatch):
    """What var-train locks before Hydra writes: a given hydra.run.dir (relative to the working directory,
    interpolations resolved); nothing for the default (a new folder named by the time) or a multirun."""
    from var_lightning.cli.command_line import fixed_run_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VAR_ROOT", str(tmp_path / "root"))
    assert (
        fixed_run_dir("train", ["experiment=tokenizer_tiny", "hydra.run.dir=runs/a"])
        == tmp_path / "runs" / "a"
    )
    assert fixed_run_dir("train", ["hydra.run.dir=${paths.log_dir}/b"]) == tmp_path / "root" / "outputs" / "b"
    assert fixed_run_dir("train", ["experiment=tokenizer_tiny"]) is None
    assert fixed_run_dir("train", ["-m", "seed=1,2", "hydra.run.dir=runs/c"]) is None
    assert fixed_run_dir("train", ["hydra.run.dir=runs/${now:%H}"]) is None


@pytest.mark.process
@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130), ("SIGUSR1", 138)])
def test_a_signal_to_the_whole_process_group_saves_like_one_to_the_main_process(tmp_path, signame, code):
    """How clusters, `timeout` and `kill -- -PGID` stop a job: every process of the group is signalled, the
    data-loader workers too. The workers leave it to the main process, which saves preempted.ckpt, prints
    the command that continues the run and exits 128 + signal; no process of the group is left."""
    run = tmp_path / "run"
    run.mkdir()
    a = launch(run, *hold_at(2, run), "data.num_workers=2", "data.train_size=64")

    def two_workers() -> None:
        workers = subprocess.run(["pgrep", "-g", str(a.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) >= 3, workers  # the main process and its two workers

    err = signal_held(a, run, getattr(signal, signame), group=True, check=two_workers)
    assert a.returncode == code, err[-3000:]
    assert "is killed by signal" not in err and f"stopped by {signame} at step 2" in err
    assert err.count(f"received {signame}") == 1, err[-3000:]  # once, not once per worker (Ctrl-C printed 3)
    assert "to continue this run: var-train" in err
    assert torch.load(run / "checkpoints" / "preempted.ckpt", weights_only=True)["global_step"] == 2
    deadline = time.monotonic() + 30
    while subprocess.run(["pgrep", "-g", str(a.pid)], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, "a process of the run's group is still alive"
        time.sleep(0.2)


def _validations(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics_history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("val/") or k in ("epoch", "step")} for r in rows]


def _finish_and_compare(run: Path, ref: Path, *extra: str) -> None:
    """Continue ``run`` with resume=auto, train the reference uninterrupted, and compare what a user sees:
    every validation (both epochs), the checkpoint files, the final weights."""
    resumed = launch(run, *extra, "resume=auto")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    ref.mkdir()
    b = launch(ref, *extra)
    _, err = b.communicate(timeout=300)
    assert b.returncode == 0, err[-3000:]
    assert _validations(run) == _validations(ref) and [v["epoch"] for v in _validations(ref)] == [0, 1]
    names = lambda d: sorted(p.name for p in (d / "checkpoints").glob("*.ckpt") if p.name != "preempted.ckpt")  # noqa: E731
    assert names(run) == names(ref)
    a_sd = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    r_sd = torch.load(ref / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert max((a_sd[k].float() - r_sd[k].float()).abs().max().item() for k in r_sd) < 1e-6


@pytest.mark.process
def test_a_kill_at_the_last_step_of_an_epoch_resumes_to_the_uninterrupted_run(tmp_path):
    """kill -9 at an epoch's last step, where a periodic save is due: that save waits for the epoch's
    validation (a checkpoint between the two would resume into the next epoch and skip the validation, its
    last.ckpt and best-k), so resume=auto continues from the step-2 save and replays the epoch's end."""
    every = ["callbacks.periodic_checkpoint.every_n_steps=2"]  # 32 images, batches of 8: 4 steps an epoch
    run = tmp_path / "run"
    run.mkdir()
    kill = ["+callbacks.kill._target_=tests.integration.probes.KillAt", "+callbacks.kill.step=4"]
    a = launch(run, *every, *kill)
    _, err = a.communicate(timeout=300)
    assert a.returncode == -signal.SIGKILL, err[-3000:]
    assert torch.load(run / "checkpoints" / "periodic.ckpt", weights_only=True)["global_step"] == 2
    assert not (run / "checkpoints" / "last.ckpt").exists()  # killed before the epoch's validation
    _finish_and_compare(run, tmp_path / "ref", *every)


@pytest.mark.process
def test_a_signal_at_the_last_step_of_an_epoch_saves_after_its_validation(tmp_path):
    """SIGTERM landing on an epoch's last step: the epoch validates, then preempted.ckpt is written and the
    run exits 143; resume=auto gives the uninterrupted run's validations, files and weights."""
    run = tmp_path / "run"
    run.mkdir()
    a = launch(run, *hold_at(4, run))
    said = signal_held(a, run, signal.SIGTERM)
    assert a.returncode == 143, said[-3000:]
    assert "saving after this epoch's validation" in said
    assert [v["epoch"] for v in _validations(run)] == [0]
    assert torch.load(run / "checkpoints" / "preempted.ckpt", weights_only=True)["global_step"] == 4
    (run / "at_step").unlink()
    _finish_and_compare(run, tmp_path / "ref")


@pytest.mark.process
def test_sigterm_during_a_multiruns_first_job_prints_the_command_that_finishes_the_sweep(tmp_path):
    """The hint continues the whole sweep (the same -m command, its folder pinned, resume=auto): run, it
    resumes the stopped job and runs the one that never started."""
    sweep = tmp_path / "sweep"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "HYDRA_FULL_ERROR")
    }
    env["PYTHONPATH"] = str(ROOT)
    cmd = [sys.executable, "-m", "var_lightning.cli.train", "-m", *TOKENIZER, *hold_at(2, tmp_path), "seed=1,2",
           f"hydra.sweep.dir={sweep}"]  # fmt: skip
    a = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                         cwd=tmp_path, start_new_session=True)  # fmt: skip
    said = signal_held(a, tmp_path, signal.SIGTERM)
    assert a.returncode == 143, said[-3000:]
    hint = shlex.split(said.split("to continue this run: ", 1)[1].splitlines()[0])
    assert hint[:2] == ["var-train", "-m"] and "seed=1,2" in hint and hint[-1] == "resume=auto"
    assert f"hydra.sweep.dir={sweep}" in hint and not (sweep / "1").exists()
    (tmp_path / "at_step").unlink()
    done = subprocess.run([sys.executable, "-m", "var_lightning.cli.train", *hint[1:]], capture_output=True,
                          text=True, timeout=600, cwd=tmp_path, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for job in ("0", "1"):
        assert torch.load(sweep / job / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8
