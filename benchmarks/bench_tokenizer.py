"""Tokenizer throughput: training step (generator + discriminator, AdamW) and encode (image -> tokens).

    python benchmarks/bench_tokenizer.py --device cpu --preset tiny           # the CPU demo tokenizer
    python benchmarks/bench_tokenizer.py --device cuda --preset f16 --batch 32 --precision bf16

Prints a table of medians over timed iterations after warm-up and optionally writes JSON.
Presets: tiny = the demo tokenizer (32 px, 4x, V=256); f16 = the released shape (256 px, ch 160, V=4096).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from contextlib import nullcontext

import torch

from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.tokenizer.losses import VQGANLoss

PRESETS = {
    "tiny": dict(
        cfg=dict(
            vocab_size=256,
            z_channels=16,
            ch=32,
            ch_mult=(1, 2, 2),
            num_res_blocks=1,
            norm_groups=8,
            patch_nums=(1, 2, 3, 4, 6, 8),
        ),
        disc=dict(disc_ch=32, disc_layers=2),
    ),
    "f16": dict(
        cfg=dict(vocab_size=4096, z_channels=32, ch=160, patch_nums=(1, 2, 3, 4, 5, 6, 8, 10, 13, 16)),
        disc=dict(disc_ch=64, disc_layers=3),
    ),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, warmup: int, iters: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    preset = PRESETS[args.preset]
    cfg = VQVAEConfig(**preset["cfg"])
    vae = MultiScaleVQVAE(cfg).to(device)
    loss = VQGANLoss(perceptual_weight=0.0, disc_weight=0.1, disc_start=0, **preset["disc"]).to(device)
    opt = torch.optim.AdamW(list(vae.parameters()) + list(loss.parameters()), lr=1e-4)
    img = torch.rand(args.batch, 3, cfg.image_size, cfg.image_size, device=device) * 2 - 1
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16" else nullcontext()

    def train_step() -> None:
        with amp:
            rec, q = vae(img)
            g, _ = loss.generator_loss(img, rec, q.vq_loss, 10, last_layer=vae.decoder.last_layer)
            d, _ = loss.discriminator_loss(img, rec.detach(), 10)
        opt.zero_grad(set_to_none=True)
        (g + d).backward()
        opt.step()

    def encode() -> None:
        with torch.no_grad(), amp:
            vae.img_to_idx(img)

    vae.train()
    t_train = timed(train_step, args.warmup, args.iters, device)
    vae.eval()
    t_enc = timed(encode, args.warmup, args.iters, device)
    rows = {
        "train_step_images_per_s": args.batch / t_train,
        "encode_images_per_s": args.batch / t_enc,
        "train_step_s": t_train,
        "encode_s": t_enc,
    }
    info = {
        "preset": args.preset,
        "device": str(device),
        "batch": args.batch,
        "precision": args.precision,
        "image_size": cfg.image_size,
        "params": sum(p.numel() for p in vae.parameters()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
    }
    print(
        f"tokenizer {args.preset} ({info['params'] / 1e6:.2f}M params, {cfg.image_size}px, B={args.batch}, "
        f"{args.precision}, {info['machine']}, {info['threads']} threads)"
    )
    print(f"{'measure':<28}{'median':>12}")
    print(f"{'train step (images/s)':<28}{rows['train_step_images_per_s']:>12.1f}")
    print(f"{'encode (images/s)':<28}{rows['encode_images_per_s']:>12.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, **rows}, f, indent=2)


if __name__ == "__main__":
    main()
