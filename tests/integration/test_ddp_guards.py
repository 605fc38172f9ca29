"""Multi-process runs that end instead of hanging (2 CPU ranks over gloo, in subprocesses): a rank without
validation data stops the run at set-up, SIGTERM ends ranks stuck in a collective, and every rank logs to
its own file."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_scenarios.py")
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "MASTER_PORT")
}


@pytest.mark.process
def test_a_validation_set_smaller_than_the_world_size_stops_with_an_error_not_a_hang(tmp_path):
    start = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "empty_val_rank"], capture_output=True,
                          text=True, timeout=240, env=CLEAN_ENV, cwd=tmp_path)  # fmt: skip
    took = time.monotonic() - start
    assert proc.returncode != 0 and "DONE" not in proc.stdout
    assert (
        "the val split gives [0, 1] samples to the 2 ranks: rank(s) [0] would get less than one sample"
        in proc.stderr
    ), proc.stderr[-3000:]
    assert "trainer.limit_val_batches=0" in proc.stderr and took < 240


@pytest.mark.process
def test_sigterm_ends_a_run_whose_ranks_are_stuck(tmp_path):
    env = {**CLEAN_ENV, "VAR_SIGTERM_GRACE_S": "3"}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(tmp_path), "hang"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not all((tmp_path / f"started_rank{r}").is_file() for r in (0, 1)):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
            time.sleep(0.5)
        time.sleep(2)  # rank 0 is now blocked in a barrier rank 1 never reaches, rank 1 in a Python loop
        pids = [int((tmp_path / f"started_rank{r}").read_text()) for r in (0, 1)]
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)  # grace 3 s, then both exit
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and "still running 3 s after SIGTERM" in err, err[-3000:]
    time.sleep(1)
    for pid in pids:  # rank 1, started by Lightning, is gone too
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
        )


@pytest.mark.process
def test_each_rank_writes_its_own_log_and_only_rank_zero_claims_the_outputs(tmp_path):
    exe = shutil.which("var-train") or str(Path(sys.executable).parent / "var-train")
    run = tmp_path / "run"
    cmd = [exe, "experiment=tokenizer_tiny", "schedule=cpu_micro", "model.tokenizer.ch=16", "model.tokenizer.vocab_size=64",
           "model.tokenizer.z_channels=8", "model.tokenizer.norm_groups=8", "model.tokenizer.ch_mult=[1,2]",
           "trainer=ddp_cpu", "trainer.devices=2", "trainer.max_epochs=1", "logger=none", "~callbacks.image_logger",
           "data.image_size=8", "data.train_size=32", "data.val_size=8", "data.batch_size=4", f"hydra.run.dir={run}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=CLEAN_ENV, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = (run / "tokenizer_tiny.log").read_text(), (run / "tokenizer_tiny.rank1.log").read_text()
    assert "done; outputs in" in rank0 and "metrics written to" in rank0 and "checkpoints: last=" in rank0
    assert "rank 1 done" in rank1
    for claim in ("done; outputs in", "metrics written to", "checkpoints: last=", "wrote image grids"):
        assert claim not in rank1, claim
    assert "rank 1" not in rank0.split("run directory")[1].splitlines()[0]
