"""`var-plan`: before a run, what each GPU will hold, the largest batch that fits, and how long an epoch takes.

    var-plan experiment=var_d16_imagenet256 --gpu a100-80             # the published d16 recipe on A100s
    var-plan experiment=var_d30_imagenet256 trainer=fsdp --gpu h100 --gpus 16 --mfu 0.35
    var-plan experiment=var_d16_finetune data.batch_size=64 --gpu 24   # a 24 GiB card

It takes the same overrides as ``var-train`` (experiment, model, data, trainer, schedule) and composes the
same config, checked the same way; the numbers are estimates (:mod:`var_lightning.scaling.planner` says how
each is made). ``--gpu``: h200, h100, a100-80, a100, l40s, a6000, 4090, or the memory in GiB (then
``--tflops`` gives the peak); ``--gpus``: default the config's devices x nodes; ``--mfu``: the model FLOPs
utilisation to assume (0.4); ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from var_lightning.cli.command_line import _compose, accept_target_arguments, precheck
from var_lightning.scaling.flops import model_num_params
from var_lightning.scaling.planner import GIB, GPUS, Setup, largest_batch, plan, throughput, validation_plan
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.transformer.config import build_var_config

IMAGENET_TRAIN = 1_281_167


def _setup(cfg: DictConfig, gpus: int | None) -> Setup:
    t = cfg.trainer
    devices = t.get("devices", 1)
    devices = len(devices) if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices) else devices
    devices = 1 if devices in (None, "auto", -1) else int(devices)
    strategy, ckpt = "ddp", False
    s = t.get("strategy")
    if isinstance(s, DictConfig) and "ShardedStrategy" in str(s.get("_target_", "")):
        strategy = "fsdp_grad_op" if s.get("reshard_after_forward") is False else "fsdp"
        strategy = "fsdp_hybrid" if s.get("replicas") == "nodes" else strategy
        ckpt = bool(s.get("activation_checkpointing", False))
    train = cfg.model.get("train") or {}
    if int(cfg.data.batch_size) < 1:
        raise ValueError(
            f"data.batch_size={cfg.data.batch_size}: plan at least one image per GPU (key data.batch_size)"
        )
    return Setup(batch_per_gpu=int(cfg.data.batch_size), gpus=gpus or devices * int(t.get("num_nodes", 1) or 1),
                 gpus_per_node=devices, precision=str(t.get("precision", "32-true")), strategy=strategy,
                 activation_checkpointing=ckpt, fused_ce=bool(train.get("fused_ce", False)),
                 accumulate=int(t.get("accumulate_grad_batches", 1) or 1))  # fmt: skip


def _models(cfg: DictConfig) -> tuple[Any, Any, str, str]:
    """(transformer config, tokenizer config, kind) of the composed run, without loading weights: the
    tokenizer's config from its checkpoint when the file is here, else the released tokenizer's."""

    target = str(cfg.model.get("_target_", ""))
    if "TokenizerModule" in target:
        raise ValueError(
            "var-plan plans the transformer stages (experiment=var_* or ar_*); the tokenizer stage is small"
        )
    patch_nums = list(cfg.schedule.patch_nums)
    vae_cfg = VQVAEConfig(patch_nums=tuple(patch_nums))
    source = "assumed: the released tokenizer's shape (model.tokenizer_ckpt is not a file here)"
    ckpt = cfg.model.get("tokenizer_ckpt")
    if ckpt and Path(str(ckpt)).expanduser().is_file():
        # lazy: start time; torch loads only when var-plan reads a tokenizer file
        from var_lightning.checkpoints.reader import read_checkpoint

        hp = read_checkpoint(str(ckpt), key="model.tokenizer_ckpt").get("hyper_parameters") or {}
        if hp.get("tokenizer"):
            vae_cfg = VQVAEConfig(**{**dict(hp["tokenizer"]), "patch_nums": tuple(patch_nums)})
            source = f"read from {ckpt}"
    spec = OmegaConf.to_container(cfg.model.transformer, resolve=True) if cfg.model.get("transformer") else {}
    spec.setdefault("num_classes", _num_classes(cfg))
    return build_var_config(spec, vae_cfg), vae_cfg, "ar" if target.endswith(".ARModule") else "var", source


def _imagenet(cfg: DictConfig) -> bool:
    return "imagenet" in str(cfg.get("task_name", "")).lower()


def _num_classes(cfg: DictConfig) -> int:
    """The data's class count: the train folders when they are here, 1000 for ImageNet recipes, else 10."""
    root = cfg.data.get("root")
    if root and (Path(str(root)) / "train").is_dir():
        return sum(1 for p in (Path(str(root)) / "train").iterdir() if p.is_dir()) or 1
    return 1000 if _imagenet(cfg) or "ImageFolder" in str(cfg.data.get("_target_", "")) else 10


def report(
    cfg: DictConfig, gpu: str, gpus: int | None, mfu: float, tflops: float | None, images: int | None
) -> dict:
    var_cfg, vae_cfg, kind, source = _models(cfg)
    setup = _setup(cfg, gpus)
    if gpu.lower() in GPUS:
        peak, mem_gib = GPUS[gpu.lower()]
    else:
        try:
            mem_gib, peak = float(gpu), (tflops or 312) * 1e12
        except ValueError:
            raise ValueError(
                f"--gpu {gpu}: give one of {', '.join(GPUS)} or the memory in GiB (e.g. --gpu 24)"
            ) from None
    if tflops:
        peak = tflops * 1e12
    parts = plan(var_cfg, vae_cfg, setup, kind)
    budget = float((cfg.model.get("train") or {}).get("sample_memory_gib", 8.0))
    val = validation_plan(var_cfg, vae_cfg, setup, budget * GIB, kind)

    if images is None and _imagenet(cfg):
        images = IMAGENET_TRAIN
    return {
        "tokenizer": source,
        "model": {"kind": kind, "depth": var_cfg.depth, "width": var_cfg.width, "params": model_num_params(var_cfg, kind),
                  "image_size": vae_cfg.image_size, "tokens": sum(p * p for p in var_cfg.patch_nums)},
        "setup": {**setup.__dict__, "gpu": gpu, "gpu_memory_gib": mem_gib, "peak_tflops": peak / 1e12, "mfu": mfu},
        "per_gpu_gib": {k: v / GIB for k, v in parts.items()},
        "validation_gib": {k: (v if k == "sampling_batch" else v / GIB) for k, v in val.items()},
        "sample_memory_gib": budget,
        "fits": max(parts["total"], val["total"]) <= mem_gib * GIB,
        "largest_batch_per_gpu": largest_batch(var_cfg, vae_cfg, setup, mem_gib * GIB, kind),
        "step": throughput(var_cfg, setup, peak, mfu, images, kind),
    }  # fmt: skip


def render(r: dict) -> str:
    m, s, g, step = r["model"], r["setup"], r["per_gpu_gib"], r["step"]
    lines = [f"var-plan: {m['kind'].upper()} d{m['depth']} (width {m['width']}, {m['params'] / 1e6:.1f}M parameters), "
             f"{m['image_size']} px ({m['tokens']} tokens), {s['precision']}, {s['strategy']} on {s['gpus']} GPU(s) x "
             f"{s['batch_per_gpu']} images (global batch {step['global_batch']})",
             f"tokenizer: {r['tokenizer']}", f"per GPU ({s['gpu']}, {s['gpu_memory_gib']:g} GiB):"]  # fmt: skip
    lines += [f"  {k:<12} {v:8.2f} GiB" for k, v in g.items() if k != "total"]
    verdict = "fits" if g["total"] <= s["gpu_memory_gib"] else "DOES NOT FIT"
    lines.append(
        f"  {'total':<12} {g['total']:8.2f} GiB  -> {verdict}; largest batch per GPU: {r['largest_batch_per_gpu']}"
    )
    v = r["validation_gib"]
    lines.append(f"validation sampling (image grids, generation metrics; model.train.sample_memory_gib="
                 f"{r['sample_memory_gib']:g}): {int(v['sampling_batch'])} images per call; training states "
                 f"{v['resident']:.2f} + gathered copy {v['gathered_copy']:.2f} + one call {v['sampling_call']:.2f} "
                 f"+ overhead {v['overhead']:.2f} = {v['total']:.2f} GiB")  # fmt: skip
    lines.append(f"step: {step['tokens_per_step']:,} tokens, {step['flops_per_step'] / 1e15:.2f} PFLOP; at "
                 f"{100 * s['mfu']:.0f}% MFU of {s['peak_tflops']:.0f} TFLOP/s: {step['seconds_per_step']:.3f} s/step")  # fmt: skip
    if "hours_per_epoch" in step:
        lines.append(f"epoch: {step['steps_per_epoch']:,} steps, {step['hours_per_epoch']:.2f} h")
    if v["total"] > s["gpu_memory_gib"]:
        lines.append("validation does not fit: lower model.train.sample_memory_gib")
    if g["total"] > s["gpu_memory_gib"]:
        lines.append("to fit: a smaller data.batch_size with trainer.accumulate_grad_batches (same global batch), "
                     "trainer=fsdp (shards the states), model.train.fused_ce=true, or activation checkpointing "
                     "(trainer=fsdp trainer.strategy.activation_checkpointing=true)")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="var-plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--gpu", default="h100", help=f"{', '.join(GPUS)} or the memory in GiB (default h100)"
    )
    parser.add_argument(
        "--gpus", type=int, default=None, help="GPUs in all (default: trainer.devices x num_nodes)"
    )
    parser.add_argument(
        "--mfu", type=float, default=0.4, help="model FLOPs utilisation to assume (default 0.4)"
    )
    parser.add_argument(
        "--tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (with --gpu <GiB>)"
    )
    parser.add_argument(
        "--images", type=int, default=None, help="images per epoch (default: ImageNet's for data=imagenet)"
    )
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args, overrides = parser.parse_known_args(argv)
    try:
        problem = precheck("train", overrides, may_be_unset=("model.tokenizer_ckpt",))  # the released shape
        if problem is not None:
            raise ValueError(problem)
        cfg = _compose(
            "train", [o for o in accept_target_arguments("train", overrides) if not o.startswith("hydra")]
        )
        r = report(cfg, args.gpu, args.gpus, args.mfu, args.tflops, args.images)
    except (ValueError, FileNotFoundError) as e:
        print(f"var-plan: error: {e}", file=sys.stderr)
        return 2
    print(render(r))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
