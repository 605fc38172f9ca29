"""The issue's path from a fresh clone: train the demo's VAR stage (a real `var-train` with EMA), export its
last.ckpt with `var-convert to-hub`, and `var-sample pretrained=<folder>` draws the same images as
`var-sample ckpt_path=<last.ckpt>`; the card carries the run's own facts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def script(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).parent / name)


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | {"HF_HUB_OFFLINE": "1"}
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.process
def test_a_trained_run_exported_to_a_repository_samples_the_same_images(tmp_path, tokenizer_ckpt):
    run_dir = tmp_path / "var"
    run([script("var-train"), "experiment=var_tiny", "schedule=cpu_micro", f"model.tokenizer_ckpt={tokenizer_ckpt}",
         "model.transformer.depth=2", "model.transformer.width=32", "model.transformer.num_heads=2",
         "data.image_size=16", "data.train_size=64", "data.val_size=32", "data.batch_size=16",
         "trainer.max_epochs=1", "callbacks=[default,ema]", "~callbacks.progress_bar",
         f"hydra.run.dir={run_dir}"], tmp_path)  # fmt: skip
    last = run_dir / "checkpoints" / "last.ckpt"
    repo = tmp_path / "my-var"
    run([script("var-convert"), "to-hub", str(last), "--out-dir", str(repo), "--license", "mit"], tmp_path)
    common = ["num_per_class=2", "classes=[0,3]", "seed=5", "device=cpu"]
    run([script("var-sample"), f"ckpt_path={last}", *common, f"hydra.run.dir={tmp_path / 'a'}"], tmp_path)
    run([script("var-sample"), f"pretrained={repo}", *common, f"hydra.run.dir={tmp_path / 'b'}"], tmp_path)
    a = sorted((tmp_path / "a").rglob("*.png"))
    b = sorted((tmp_path / "b").rglob("*.png"))
    assert len(a) >= 4 and [p.relative_to(tmp_path / "a") for p in a] == [
        p.relative_to(tmp_path / "b") for p in b
    ]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(a, b, strict=True))
    card = (repo / "README.md").read_text()
    assert "(EMA weights)" in card and "`var-train experiment=var_tiny schedule=cpu_micro" in card
    assert "| val/loss |" in card and "steps: 4 (1 epoch completed)" in card and (repo / "grid.png").is_file()
