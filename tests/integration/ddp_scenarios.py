"""Two-process (gloo) runs that used to hang, for tests/integration/test_ddp_guards.py.

    python tests/integration/ddp_scenarios.py <out_dir> empty_val_rank   # a 1-sample validation set
    python tests/integration/ddp_scenarios.py <out_dir> hang             # both ranks stuck; SIGTERM ends it

Run as a script, not inside pytest: Lightning's ``ddp`` launcher starts rank 1 by re-running this command
line. Each rank writes ``<out_dir>/started_rank<r>`` when training starts.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `tests.*`

import pytorch_lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from tests.integration.test_configs import compose_train  # noqa: E402

torch.set_num_threads(1)
TOKENIZER = [
    "experiment=tokenizer_tiny",
    "schedule=cpu_micro",
    "model.tokenizer.ch=16",
    "model.tokenizer.vocab_size=64",
    "model.tokenizer.z_channels=8",
    "model.tokenizer.norm_groups=8",
    "model.tokenizer.ch_mult=[1,2]",
    "model.loss.disc_start=1000",
    "trainer=ddp_cpu",
    "trainer.devices=2",
    "trainer.max_epochs=1",
    "logger=none",
    "~callbacks.progress_bar",
    "~callbacks.image_logger",
]


class Stuck(L.Callback):
    """Rank 0 waits in a barrier rank 1 never reaches (C code: signals cannot interrupt it); rank 1 loops
    in Python, where Lightning's SIGTERM handler only sets a flag."""

    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_start(self, trainer, pl_module):
        (self.out / f"started_rank{trainer.global_rank}").write_text(str(os.getpid()))
        if trainer.global_rank == 0:
            dist.barrier()
        while True:
            time.sleep(0.1)


def shards(out: Path, val_samples: int) -> tuple[Path, Path]:
    from tests.unit.test_webdataset import write_tree
    from var_lightning.cli.make_shards import make_shards, parse_args

    train_tree = write_tree(out / "tree" / "train", n=32, num_classes=2, size=12)
    val_tree = write_tree(out / "tree" / "val", n=val_samples, num_classes=2, size=12, seed=2)
    for c in ("c0", "c1"):  # the train split's classes, even where the tiny val split has no image
        (val_tree / c).mkdir(exist_ok=True)
    for tree, dst in ((train_tree, out / "wds" / "train"), (val_tree, out / "wds" / "val")):
        extra = ["--classes-from", str(out / "wds" / "train")] if tree.name == "val" else []
        make_shards(
            parse_args([str(tree), str(dst), "--workers", "0", "--no-progress", "--max-count", "8", *extra])
        )
    return out / "wds" / "train", out / "wds" / "val"


def main(out_dir: str, scenario: str) -> None:
    from var_lightning.cli import train as train_mod

    out = Path(out_dir)
    if scenario == "empty_val_rank":
        if os.environ.get("LOCAL_RANK", "0") == "0":
            shards(out, val_samples=1)
        train_dir, val_dir = out / "wds" / "train", out / "wds" / "val"
        while not (val_dir / "manifest.json").is_file():  # rank 1 waits for rank 0's shards
            time.sleep(0.1)
        overrides = ["data=webdataset", f"data.train_shards={train_dir}", f"data.val_shards={val_dir}",
                     "data.batch_size=4", "data.num_workers=0", "data.image_size=8"]  # fmt: skip
    else:
        overrides = ["data.image_size=8", "data.train_size=32", "data.val_size=8", "data.batch_size=4"]
    cfg = compose_train([*TOKENIZER, *overrides], out / "run")
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = False
        cfg.trainer.enable_model_summary = False
    if scenario == "hang":
        original = train_mod.build

        def build(c):
            dm, model, trainer = original(c)
            trainer.callbacks.append(Stuck(out))
            return dm, model, trainer

        train_mod.build = build
    train_mod.train(cfg)
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
