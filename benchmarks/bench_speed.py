"""Sampling and training speed of VAR, plain path against the fast paths, as one table.

Sampling = class-conditional generation with cfg 1.5, top-k 900 (capped at V), top-p 0.96, the tokenizer
decode included. Training = one teacher-forced step on random tokens: forward, cross-entropy, backward,
grad-norm clip 2.0, fused AdamW (as the published implementation's anchors in
``shared/notes/performance-anchors.md``). Random weights: speed does not depend on them.

Variants run interleaved, round by round with the order reversed every round, and the table reports
medians (running one variant's calls and then the next's lets drift on the machine masquerade as a
speed-up). Variants name the levers they use: ``plain`` (none), ``fast`` (all), and ``+lever`` / ``-lever`` edits,
e.g. ``fast-compile`` or ``plain+flex``. Levers: flex (FlexAttention block mask, CUDA), compile
(torch.compile of the blocks), fused_ce (chunked head + cross-entropy), static_kv (the FastSampler:
static KV cache, AdaLN once per image), cuda_graphs (one graph per scale), bf16_decode (bf16 weights,
channels-last decode). Levers that cannot act on the device are dropped and the table says so.

Only torch, numpy and var_lightning's model code are imported, so this runs where Hydra, Lightning,
lpips or webdataset are missing (the H200). Examples:

    python benchmarks/bench_speed.py --device cpu --preset tiny                      # < 1 min anywhere
    python benchmarks/bench_speed.py --device cuda --preset d16 --sample-batch 1 64 256 --train-batch 64 \\
        --json d16.json
    python benchmarks/bench_speed.py --device cuda --preset d30 --what train --train-batch 64 --variants fast
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from var_lightning.objectives.chunked_ce import chunked_head_cross_entropy  # noqa: E402
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE  # noqa: E402
from var_lightning.tokenizer.config import VQVAEConfig  # noqa: E402
from var_lightning.training.optim import adamw, param_groups  # noqa: E402
from var_lightning.transformer.config import SCHEDULE_256, VARConfig, preset  # noqa: E402
from var_lightning.transformer.fast_sampling import FastSampler  # noqa: E402
from var_lightning.transformer.sampling import sample  # noqa: E402
from var_lightning.transformer.var import VAR  # noqa: E402

log = logging.getLogger("bench_speed")

LEVERS = ("flex", "compile", "fused_ce", "static_kv", "cuda_graphs", "bf16_decode")
CUDA_ONLY = {"flex", "cuda_graphs", "bf16_decode"}  # bf16 convolutions are slower than fp32 on most CPUs

# The published implementation on one H200, bf16 (shared/notes/performance-anchors.md), and the targets.
ANCHORS = {
    "d16": {
        "sample_ms_b1": 207.0,
        "sample_ips_b64": 142.0,
        "sample_ips_b256": 156.0,
        "train_ips_b64": 374.0,
        "target": "sample >= 430 img/s at B=64, <= 25 ms/img at B=1; train >= 560 img/s at B=64",
    },
    "d30": {
        "sample_ms_b1": 258.0,
        "sample_ips_b64": 58.0,
        "train_ips_b64": 74.2,
        "target": "train >= 93 img/s at B=64",
    },
}


# ---------------------------------------------------------------------- models
def build_models(name: str, device: torch.device) -> tuple[VAR, MultiScaleVQVAE]:
    """``tiny``: a CPU-sized model (L = 130 tokens, 32 px); ``d16``... : the paper's models with the released
    tokenizer's shape (V 4096, 256 px schedule, 1000 classes)."""
    if name == "tiny":
        pn = (1, 2, 3, 4, 6, 8)
        vae_cfg = VQVAEConfig(
            vocab_size=512, z_channels=16, ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, patch_nums=pn
        )
        var_cfg = VARConfig(
            depth=4,
            width=128,
            num_heads=4,
            num_classes=10,
            vocab_size=512,
            cvae=16,
            patch_nums=pn,
            drop_path_rate=0.0,
        )
    else:
        vae_cfg = VQVAEConfig(ch=160, patch_nums=SCHEDULE_256)
        var_cfg = preset(name, num_classes=1000, vocab_size=4096, cvae=32, patch_nums=SCHEDULE_256)
    with torch.device(device):
        vae = MultiScaleVQVAE(vae_cfg).eval().requires_grad_(False)
        var = VAR(var_cfg)
    return var, vae


def parse_variant(spec: str) -> set[str]:
    m = re.fullmatch(r"(plain|fast)((?:[+-][a-z0-9_]+)*)", spec)
    if not m:
        raise SystemExit(f"bad variant {spec!r}: plain|fast followed by +lever/-lever, levers {LEVERS}")
    levers = set() if m.group(1) == "plain" else set(LEVERS)
    for sign, lever in re.findall(r"([+-])([a-z0-9_]+)", m.group(2)):
        if lever not in LEVERS:
            raise SystemExit(f"unknown lever {lever!r} in {spec!r}; levers: {LEVERS}")
        (levers.add if sign == "+" else levers.discard)(lever)
    return levers


def effective(levers: set[str], device: torch.device, compile_on_cpu: bool) -> set[str]:
    if device.type != "cuda":
        levers = levers - CUDA_ONLY - (set() if compile_on_cpu else {"compile"})
    return levers


# ---------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[int], None]], device: torch.device, warmup: int, iters: int
) -> dict[str, tuple[float, list[float]]]:
    """Per variant: (seconds of its first call, which includes compilation or graph capture; its timed calls
    after warm-up). Variants run round by round (A B C, then C B A, ...), so drift on the machine during the
    run (clocks, other jobs, allocator warm-up) touches every variant alike; report medians."""
    names = list(fns)
    first: dict[str, float] = {}
    times: dict[str, list[float]] = {n: [] for n in names}
    peaks: dict[str, float | None] = dict.fromkeys(names)
    for i in range(warmup + iters):
        for name in names if i % 2 == 0 else names[::-1]:
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            fns[name](i)
            sync(device)
            dt_s = time.perf_counter() - t0
            first.setdefault(name, dt_s)
            peak = peak_gib(device)
            if peak is not None:
                peaks[name] = max(peaks[name] or 0.0, peak)
            if i >= warmup:
                times[name].append(dt_s)
    return {n: (first[n], times[n], peaks[n]) for n in names}


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def result_row(task: str, B: int, first: float, times: list[float], peak: float | None) -> dict:
    """One table row: median time, images/s, ms/image and peak memory of a timed loop."""
    med = statistics.median(times)
    return dict(
        task=task,
        batch=B,
        first_s=first,
        median_s=med,
        img_per_s=B / med,
        ms_per_img=1e3 * med / B,
        peak_gib=peak,
    )


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


# ---------------------------------------------------------------------- the two workloads
def sampling_step(
    var: VAR, vae: MultiScaleVQVAE, B: int, levers: set[str], args: argparse.Namespace, device: torch.device
) -> Callable[[int], None]:
    """One sampling call (seed = call index) with the levers' sampler."""
    var.eval()
    top_k = min(900, var.V)
    labels = torch.arange(B, device=device) % var.num_classes
    kw = dict(labels=labels, cfg=1.5, top_k=top_k, top_p=0.96)
    fast = bool(levers & {"static_kv", "cuda_graphs", "bf16_decode"})
    sampler = None
    if fast:
        bf16 = "bf16_decode" in levers
        sampler = FastSampler(
            var,
            vae,
            cuda_graphs="cuda_graphs" in levers,
            decode_dtype=torch.bfloat16 if bf16 else None,
            channels_last=True,  # what the commands use (build_sampler); exact up to fp32 rounding
        )
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def step(i: int) -> None:
        with amp:
            if sampler is not None:
                sampler.sample(B, seed=i, **kw)
            else:
                sample(var, vae, B, seed=i, **kw)

    return step


def training_step(
    var: VAR, B: int, levers: set[str], args: argparse.Namespace, device: torch.device
) -> Callable[[int], None]:
    """One optimizer step per call, like ``VARModule.training_step`` without the tokenizer. Each variant has
    its own optimizer; all update the same weights (speed does not depend on their values)."""
    opt = adamw(
        param_groups(var.named_parameters(), 0.05), lr=1e-4, betas=(0.9, 0.95), fused=device.type == "cuda"
    )
    L = var.L
    gen = torch.Generator(device=device).manual_seed(0)
    x_BLCv = torch.randn(B, L - var.first_l, var.Cvae, device=device, generator=gen)
    gt_BL = torch.randint(0, var.V, (B, L), device=device, generator=gen)
    label_B = torch.randint(0, var.num_classes, (B,), device=device, generator=gen)
    compile_flag = "compile" in levers
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def step(i: int) -> None:
        var.train()
        var.cfg.attn_impl = "flex" if "flex" in levers else "sdpa"
        drop_B = torch.rand(B, device=device) < 0.1
        labels = torch.where(drop_B, var.num_classes, label_B)
        with amp:
            h_BLC, cond_BD = var.forward_hidden(labels, x_BLCv, compile=compile_flag)
            if "fused_ce" in levers:
                loss_BL, _ = chunked_head_cross_entropy(h_BLC, cond_BD, var.head_nm, var.head, gt_BL)
            else:
                logits_BLV = var.get_logits(h_BLC, cond_BD)
                loss_BL = F.cross_entropy(logits_BLV.view(-1, var.V), gt_BL.view(-1), reduction="none").view(
                    B, L
                )
                _ = (logits_BLV.argmax(-1) != gt_BL).float().mean()  # the token error the module logs
            loss = loss_BL.mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(var.parameters(), 2.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        var.cfg.attn_impl = "sdpa"
        var.eval()

    return step


# ---------------------------------------------------------------------- report
def table(rows: list[dict]) -> str:
    head = "| task | variant | levers | B | img/s | ms/img | median s | first call s | peak GiB |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        mem = "" if r["peak_gib"] is None else f"{r['peak_gib']:.1f}"
        levers = ",".join(r["levers"]) or "-"
        lines.append(
            f"| {r['task']} | {r['variant']} | {levers} | {r['batch']} | {r['img_per_s']:.1f} | "
            f"{r['ms_per_img']:.2f} | {r['median_s']:.4f} | {r['first_s']:.2f} | {mem} |"
        )
    return "\n".join(lines)


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--preset", default="tiny", help="tiny, d16, d20, d24, d30")
    p.add_argument("--what", nargs="+", default=["sample", "train"], choices=["sample", "train"])
    p.add_argument("--variants", nargs="+", default=["plain", "fast"])
    p.add_argument(
        "--sample-batch",
        "--batch",
        nargs="+",
        type=int,
        default=None,
        help="default 1 64 256 (CUDA), 1 8 (CPU)",
    )
    p.add_argument("--train-batch", type=int, default=None, help="default 64 (CUDA), 8 (CPU)")
    p.add_argument("--amp", choices=["bf16", "none"], default=None, help="default bf16 on CUDA, none on CPU")
    p.add_argument("--warmup", type=int, default=None, help="untimed sampling calls (default 2 CUDA, 1 CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed sampling calls (default 5 CUDA, 3 CPU)")
    p.add_argument(
        "--train-warmup", type=int, default=None, help="untimed steps, incl. compilation (default 3 / 1)"
    )
    p.add_argument("--train-iters", type=int, default=None, help="timed steps (default 10 CUDA, 3 CPU)")
    p.add_argument(
        "--compile-on-cpu", action="store_true", help="keep the compile lever on CPU (slow to compile)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None, help="write the rows and the machine description here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    args.amp = args.amp or ("bf16" if cuda else "none")
    args.sample_batch = args.sample_batch or ([1, 64, 256] if cuda else [1, 8])
    args.train_batch = args.train_batch or (64 if cuda else 8)
    for key, on_cuda, on_cpu in (
        ("warmup", 2, 1),
        ("iters", 5, 3),
        ("train_warmup", 3, 1),
        ("train_iters", 10, 3),
    ):
        if getattr(args, key) is None:
            setattr(args, key, on_cuda if cuda else on_cpu)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    variants = {v: effective(parse_variant(v), device, args.compile_on_cpu) for v in args.variants}
    t0 = time.perf_counter()
    var, vae = build_models(args.preset, device)
    log.info(
        "%s: %.1fM parameters, L=%d, V=%d on %s (built in %.1fs)",
        args.preset,
        var.num_params() / 1e6,
        var.L,
        var.V,
        machine(device),
        time.perf_counter() - t0,
    )

    rows: list[dict] = []
    workloads: list[tuple[str, int, dict[str, Callable[[int], None]]]] = []
    if "sample" in args.what:
        for B in args.sample_batch:
            fns = {n: sampling_step(var, vae, B, lv, args, device) for n, lv in variants.items()}
            workloads.append(("sample", B, fns))
    if "train" in args.what:
        fns = {n: training_step(var, args.train_batch, lv, args, device) for n, lv in variants.items()}
        workloads.append(("train", args.train_batch, fns))
    for task, B, fns in workloads:
        warmup, iters = (
            (args.warmup, args.iters) if task == "sample" else (args.train_warmup, args.train_iters)
        )
        for name, (first, times, peak) in interleaved(fns, device, warmup, iters).items():
            kind = (
                {"static_kv", "cuda_graphs", "bf16_decode"}
                if task == "sample"
                else {"flex", "compile", "fused_ce"}
            )
            r = result_row(task, B, first, times, peak)
            rows.append(dict(variant=name, levers=sorted(variants[name] & kind), **r))
            log.info(
                "%s %-12s B=%-4d %8.1f img/s %8.2f ms/img", task, name, B, r["img_per_s"], r["ms_per_img"]
            )
    speedups = {}
    for r in rows:
        base = next(x for x in rows if x["task"] == r["task"] and x["batch"] == r["batch"])
        speedups.setdefault((r["task"], r["batch"]), {})[r["variant"]] = base["median_s"] / r["median_s"]
    for (task, B), sp in speedups.items():
        log.info(
            "%s B=%d, relative to %s: %s",
            task,
            B,
            next(iter(sp)),
            ", ".join(f"{k} {v:.2f}x" for k, v in sp.items()),
        )

    text = table(rows)
    print(text)
    anchor = ANCHORS.get(args.preset)
    if anchor:
        print(f"\npublished implementation on one H200 (bf16): {anchor}")
    if args.json:
        meta = dict(
            date=dt.datetime.now().isoformat(timespec="seconds"),
            machine=machine(device),
            torch=torch.__version__,
            cuda=torch.version.cuda,
            preset=args.preset,
            amp=args.amp,
            params=var.num_params(),
            args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            anchors=anchor,
        )
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
        log.info("wrote %s", args.json)
    return rows


if __name__ == "__main__":
    main()
