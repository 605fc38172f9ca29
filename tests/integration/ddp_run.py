"""Both training stages on 2 CPU processes (gloo), for tests/integration/test_ddp.py.

    python tests/integration/ddp_run.py <out_dir> [extra overrides...]

Run as a script, not inside pytest: Lightning's ``ddp`` launcher starts rank 1 by re-running the command
line, which must be this script. Each stage writes its run (checkpoints, metrics.json) below
``<out_dir>/{tokenizer,var}``; each rank writes ``<out_dir>/done_rank<r>.json`` when it finishes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.*`

import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from tests.integration.test_configs import compose_train  # noqa: E402
from var_lightning.cli.train import train  # noqa: E402

torch.set_num_threads(1)

DATA = [
    "data.image_size=8",
    "data.train_size=32",
    "data.val_size=32",
    "data.batch_size=8",
    "data.num_classes=4",
]
COMMON = [
    "trainer=ddp_cpu",
    "trainer.devices=2",
    "trainer.max_epochs=1",
    "logger=none",
    "~callbacks.progress_bar",
    "~callbacks.image_logger",
    "~callbacks.throughput",
]


def stage_cfg(out: Path, overrides: list[str]):
    cfg = compose_train([*overrides, *COMMON, *DATA], out)
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.num_sanity_val_steps = 0
        cfg.trainer.enable_model_summary = False
    return cfg


def main(out_dir: str) -> None:
    out = Path(out_dir)
    tok_dir, var_dir = out / "tokenizer", out / "var"
    train(
        stage_cfg(
            tok_dir,
            [
                "experiment=tokenizer_tiny",
                "schedule=cpu_micro",
                "model.tokenizer.ch=16",
                "model.tokenizer.vocab_size=64",
                "model.tokenizer.z_channels=8",
                "model.tokenizer.norm_groups=8",
                "model.tokenizer.ch_mult=[1,2]",
                "model.loss.disc_start=2",
                "model.loss.disc_ch=8",
                "model.loss.disc_layers=1",
                "model.optim.warmup_steps=0",
            ],
        )
    )
    train(
        stage_cfg(
            var_dir,
            [
                "experiment=var_tiny",
                "schedule=cpu_micro",
                f"model.tokenizer_ckpt={tok_dir / 'checkpoints' / 'last.ckpt'}",
                "++model.transformer.depth=2",
                "++model.transformer.width=32",
                "++model.transformer.num_heads=2",
                "model.transformer.num_classes=4",
                "model.optim.base_lr=1e-3",
            ],
        )
    )
    rank = os.environ.get("LOCAL_RANK", "0")  # Lightning sets it in the processes it starts (rank >= 1)
    (out / f"done_rank{rank}.json").write_text(json.dumps({"pid": os.getpid()}))


if __name__ == "__main__":
    main(sys.argv[1])
