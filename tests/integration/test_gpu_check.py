"""benchmarks/gpu_check.sh's CPU rehearsal: the checks a CPU can run pass here, so the first GPU node runs a
script that already works (its lines and JSON record have the documented form)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _check(tmp_path: Path, *only: str) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu", "--out", str(tmp_path)]
    if only:
        cmd += ["--only", *only]
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    return proc, json.loads((tmp_path / "gpu_check.json").read_text())


@pytest.mark.process
def test_gpu_check_cpu_rehearsal_of_the_equality_checks(tmp_path):
    proc, record = _check(tmp_path, "flex-vs-sdpa", "graph-sampler", "sampler-memory")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if ln.split(" ", 1)[0] in ("PASS", "FAIL", "SKIP")]
    assert [ln.split()[:2] for ln in lines] == [["PASS", "flex-vs-sdpa"], ["PASS", "graph-sampler"],
                                                ["SKIP", "sampler-memory"]]  # fmt: skip
    flex = record["checks"]["flex-vs-sdpa"]
    assert len(flex["rows"]) == 4 and all(r["rel_diff"] < 1e-4 for r in flex["rows"])  # every prefix length


@pytest.mark.slow
@pytest.mark.process
def test_gpu_check_cpu_rehearsal_trains_every_stage(tmp_path):
    proc, record = _check(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {n for n, c in record["checks"].items() if c["ok"] is None} == {"gpu-tests", "sampler-memory"}
    assert all(c["ok"] for c in record["checks"].values() if c["ok"] is not None)
