"""`var-eval`: generation metrics, test loss / token error, or reconstruction metrics, with a JSON report.

    # the paper's ImageNet 256 protocol (50 per class, cfg 1.5, top-k 900, top-p 0.96, PNG), 8 GPUs
    torchrun --nproc_per_node=8 -m var_lightning.cli.evaluate ckpt_path=var_d16.ckpt \
        reference=VIRTUAL_imagenet256_labeled.npz hydra.run.dir=outputs/eval/d16
    var-eval mode=loss ckpt_path=var.ckpt data=imagenet data.root=/data/imagenet
    var-eval mode=reconstruction ckpt_path=tokenizer.ckpt data=imagenet data.root=/data/imagenet

The jobs themselves are :mod:`var_lightning.evaluation.offline`. The report names everything a number
depends on (extractor and its weights, resize mode, reference, sample count, sampling settings, versions):
compare two numbers only when ``var_lightning.evaluation.report.incomparable_reasons`` finds no
difference. See docs/evaluation.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from var_lightning.cli.command_line import checked_main
from var_lightning.evaluation.jobs import Context, init_distributed
from var_lightning.evaluation.offline import run as run_job
from var_lightning.evaluation.sharding import broadcast_object
from var_lightning.inference.devices import resolve_device

HYDRA_HOOKS = dict(
    make_datamodule=instantiate, to_plain=lambda node: OmegaConf.to_container(node, resolve=True)
)


def run(cfg: DictConfig, out_dir: Path, ctx: Context | None = None) -> dict[str, Any] | None:
    """Validate ``cfg`` and run ``cfg.mode``; on rank 0 write ``out_dir/report.json``, print the table and
    return the report."""
    ctx = ctx or Context(0, 1, resolve_device(cfg.device), **HYDRA_HOOKS)
    return run_job(cfg, out_dir, ctx)


@checked_main("eval", "var-eval")
def main(cfg: DictConfig) -> None:
    ctx = init_distributed(cfg.device, **HYDRA_HOOKS)
    out_dir = Path(broadcast_object(HydraConfig.get().runtime.output_dir))  # rank 0's run directory
    try:
        run(cfg, out_dir, ctx)
    finally:
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
