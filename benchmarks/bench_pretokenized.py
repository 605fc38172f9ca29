"""Training speed of the VAR stage from images (the tokenizer's encoder runs every step) against
pre-tokenized shards (only the embedding lookup + phi convs of ``idx_to_var_input`` run).

Two measurements, each a median after warm-up:

* **step**: one training step as VARModule runs it (``tokenize`` of the batch, teacher-forced forward,
  cross-entropy, backward, AdamW), from image batches vs from token batches;
* **decode**: per-sample loader work, a PNG/JPEG decode + resize + crop vs a ``tok.npy`` decode.

Random weights: speed does not depend on them. Presets: ``tiny`` (the CPU demo: 32 px tokenizer with ch 32,
schedule 1,2,3,4,6,8, VAR depth 4 width 128) and ``imagenet256`` (the released tokenizer's shape, 256 px,
d16; for a GPU).

    python benchmarks/bench_pretokenized.py --device cpu --preset tiny --threads 2
    python benchmarks/bench_pretokenized.py --device cuda --preset imagenet256 --batch 64
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a checkout without installing

from var_lightning.data.shard_reader import TokenDecoder  # noqa: E402
from var_lightning.data.shards import encode_tokens, tokens_dtype
from var_lightning.data.transforms import build_transform  # noqa: E402
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE  # noqa: E402
from var_lightning.tokenizer.config import VQVAEConfig  # noqa: E402
from var_lightning.transformer.config import preset  # noqa: E402
from var_lightning.transformer.var import VAR  # noqa: E402

PRESETS = {
    "tiny": (
        dict(
            vocab_size=256,
            z_channels=16,
            ch=32,
            ch_mult=(1, 2, 2),
            num_res_blocks=1,
            norm_groups=8,
            patch_nums=(1, 2, 3, 4, 6, 8),
        ),
        "tiny",
    ),
    "imagenet256": (
        dict(vocab_size=4096, z_channels=32, ch=160, ch_mult=(1, 1, 2, 2, 4), share_quant_resi=4),
        "d16",
    ),
}


def build(name: str, device: torch.device) -> tuple[VAR, MultiScaleVQVAE]:
    tok_cfg, var_preset = PRESETS[name]
    vae = MultiScaleVQVAE(VQVAEConfig(**tok_cfg)).to(device).eval().requires_grad_(False)
    var = VAR(
        preset(
            var_preset,
            vocab_size=vae.cfg.vocab_size,
            cvae=vae.cfg.z_channels,
            patch_nums=vae.patch_nums,
            num_classes=10,
        )
    ).to(device)
    return var, vae


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_times(fns: dict[str, object], warmup: int, iters: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved so that load changes on a shared machine
    hit all variants alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            sync(device)
            t = time.perf_counter()
            fn()
            sync(device)
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_step(
    var: VAR, vae: MultiScaleVQVAE, batch: int, device: torch.device, warmup: int, iters: int, amp: bool
) -> dict[str, float]:
    """Seconds per training step from images and from tokens (same model, same optimizer)."""
    opt = torch.optim.AdamW(var.parameters(), lr=1e-4, betas=(0.9, 0.95))
    img = torch.rand(batch, 3, vae.cfg.image_size, vae.cfg.image_size, device=device) * 2 - 1
    with torch.no_grad():
        tokens_BL = torch.cat(vae.img_to_idx(img), 1)
    sizes = [pn * pn for pn in vae.patch_nums]
    label = torch.randint(0, 10, (batch,), device=device)

    def tokenize_images():
        with torch.no_grad():
            idx, x = vae.img_to_var_input(img)
        return torch.cat(idx, 1), x

    def tokenize_tokens():  # what VARModule.tokenize does for a pre-tokenized batch
        with torch.no_grad():
            return tokens_BL, vae.quantize.idx_to_var_input(tokens_BL.split(sizes, dim=1))

    def step(tokenize):
        gt_BL, x = tokenize()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            logits = var(label, x)
            loss = F.cross_entropy(logits.float().view(-1, var.V), gt_BL.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return median_times(
        {
            "images": lambda: step(tokenize_images),
            "tokens": lambda: step(tokenize_tokens),
            "encoder_only": tokenize_images,
        },
        warmup,
        iters,
        device,
    )


def bench_decode(vae: MultiScaleVQVAE, n: int) -> dict[str, float]:
    """Seconds per sample of the loader's decode: a 1.5x-size JPEG -> transform, vs tok.npy -> tensor."""
    from PIL import Image

    size = vae.cfg.image_size
    rgb = (np.random.default_rng(0).random((round(size * 1.5), round(size * 1.7), 3)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    jpeg = buf.getvalue()
    tf = build_transform(size, 1.125, train=True)
    L = sum(p * p for p in vae.patch_nums)
    tok = encode_tokens(np.zeros((2, L), dtype=tokens_dtype(vae.cfg.vocab_size)))
    dec = TokenDecoder(train=True, hflip=True, length=L)

    def image_sample():
        with Image.open(io.BytesIO(jpeg)) as im:
            tf(im.convert("RGB"))

    def token_sample():
        dec({"tok.npy": tok, "cls": b"3"}, 0)

    return median_times({"images": image_sample, "tokens": token_sample}, 3, n, torch.device("cpu"))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--bf16", action="store_true", help="autocast the transformer to bf16 (GPU)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    var, vae = build(args.preset, device)
    step = bench_step(var, vae, args.batch, device, args.warmup, args.iters, args.bf16)
    decode = bench_decode(vae, 50)
    res = {
        "preset": args.preset,
        "device": str(device),
        "batch": args.batch,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "step_s": step,
        "decode_s_per_sample": decode,
        "step_speedup": step["images"] / step["tokens"],
        "decode_speedup": decode["images"] / decode["tokens"],
    }
    print(
        f"preset {args.preset} on {device}, batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(
        f"training step: images {step['images'] * 1e3:.1f} ms, pre-tokenized {step['tokens'] * 1e3:.1f} ms "
        f"-> x{res['step_speedup']:.2f} (the encoder alone: {step['encoder_only'] * 1e3:.1f} ms)"
    )
    print(
        f"loader decode per sample: image {decode['images'] * 1e6:.0f} us, tokens {decode['tokens'] * 1e6:.0f} us "
        f"-> x{res['decode_speedup']:.1f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
