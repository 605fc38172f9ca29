"""Sampling speed, ours against the published implementation, on the same random weights and settings.

The published code (FoundationVision/VAR) is not part of this project: clone it into an ignored folder,

    git clone https://github.com/FoundationVision/VAR benchmarks/third_party/VAR

and this script drives it through its own public functions (``VAR.autoregressive_infer_cfg`` for sampling,
``VQVAE.fhat_to_img`` for the decode) after loading our models' weights into its classes with
``strict=True`` (``export_official_*``). Both sides sample class-conditionally with cfg 1.5, top-k 900,
top-p 0.96, the decode included, in the same process.

Variants are interleaved round by round (A B C, then C B A, ...) and medians are reported, so a machine that
speeds up or slows down during the run (thermal state, other jobs, allocator warm-up) affects all of them
alike. The script also checks that both sides draw the same images for the same seed.

    python benchmarks/bench_vs_published.py --preset cpu --batch 1 16 --rounds 7 --threads 2
    python benchmarks/bench_vs_published.py --device cuda --preset d16 --batch 1 16 64 --amp bf16
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from var_lightning.checkpoints.published import export_official_vae, export_official_var  # noqa: E402
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE  # noqa: E402
from var_lightning.tokenizer.config import VQVAEConfig  # noqa: E402
from var_lightning.transformer.config import SCHEDULE_256, VARConfig  # noqa: E402
from var_lightning.transformer.fast_sampling import FastSampler, build_sampler  # noqa: E402
from var_lightning.transformer.var import VAR  # noqa: E402

# The published tokenizer class fixes ch_mult (1,1,2,2,4) and 2 res blocks (16x downsampling), so both sides
# use that architecture. "cpu": a 128 px schedule, a narrow tokenizer and a 6-block transformer, sized for a
# 2-core machine; "d16"/"d30": the paper's models with the released tokenizer's shape at 256 px.
PRESETS = {
    "cpu": dict(depth=6, ch=64, patch_nums=(1, 2, 3, 4, 6, 8)),
    "d16": dict(depth=16, ch=160, patch_nums=SCHEDULE_256),
    "d30": dict(depth=30, ch=160, patch_nums=SCHEDULE_256),
}


def build_ours(preset: str, device: torch.device, seed: int = 0) -> tuple[VAR, MultiScaleVQVAE]:
    p = PRESETS[preset]
    torch.manual_seed(seed)
    vae = MultiScaleVQVAE(VQVAEConfig(ch=p["ch"], patch_nums=p["patch_nums"])).to(device).eval()
    vae.requires_grad_(False)
    var = (
        VAR(VARConfig(depth=p["depth"], patch_nums=p["patch_nums"], init_adaln_gamma=1e-3)).to(device).eval()
    )
    return var, vae


def build_published(
    var: VAR, vae: MultiScaleVQVAE, published_dir: Path, device: torch.device, drop_path_rate: float = 0.0
):
    if not (published_dir / "models" / "var.py").is_file():
        raise SystemExit(
            f"the published implementation is not at {published_dir}: "
            "git clone https://github.com/FoundationVision/VAR benchmarks/third_party/VAR"
        )
    sys.path.insert(0, str(published_dir))
    from models.var import VAR as PubVAR  # the published classes
    from models.vqvae import VQVAE as PubVQVAE

    c = vae.cfg
    pub_vae = PubVQVAE(
        vocab_size=c.vocab_size, z_channels=c.z_channels, ch=c.ch, share_quant_resi=c.share_quant_resi,
        v_patch_nums=c.patch_nums, test_mode=True,
    ).to(device)  # fmt: skip
    pub_vae.load_state_dict(export_official_vae(vae), strict=True)
    v = var.cfg
    pub_var = PubVAR(
        pub_vae, num_classes=v.num_classes, depth=v.depth, embed_dim=v.width, num_heads=v.num_heads,
        drop_path_rate=drop_path_rate, norm_eps=v.norm_eps, shared_aln=v.shared_aln, attn_l2_norm=v.attn_l2_norm,
        patch_nums=v.patch_nums,
    ).to(device)  # fmt: skip
    pub_var.load_state_dict(export_official_var(var), strict=True)
    pub_var.eval()
    pub_var.rng = torch.Generator(device=device)  # its own generator lives on the construction device
    return pub_var, pub_vae


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    fns: dict[str, Callable[[int], object]], device: torch.device, warmup: int, rounds: int
) -> dict:
    """Median seconds per variant; each round runs every variant once, the order reversed every round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t0 = time.perf_counter()
            fns[name](r)
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
    return {n: {"median_s": statistics.median(t), "min_s": min(t), "max_s": max(t)} for n, t in times.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--batch", nargs="+", type=int, default=[1, 16])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--published-dir", type=Path, default=ROOT / "benchmarks" / "third_party" / "VAR")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    var, vae = build_ours(args.preset, device)
    pub_var, pub_vae = build_published(var, vae, args.published_dir, device)
    ours_fast = build_sampler(var, vae, "fast")  # what var-sample / var-eval / var-edit use
    ours_plain = build_sampler(var, vae, "plain")
    decoder = FastSampler(var, vae, channels_last=True)
    kw = dict(cfg=1.5, top_k=min(900, var.V), top_p=0.96)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16")
    print(f"{args.preset}: VAR {var.num_params() / 1e6:.1f}M, tokenizer ch={vae.cfg.ch}, {vae.cfg.image_size} px, "
          f"L={var.L}, on {device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}")  # fmt: skip
    rows = []
    for B in args.batch:
        labels = torch.arange(B, device=device) % var.num_classes
        with torch.no_grad(), amp:
            # same seed -> same images on both sides (the decode differs by fp32 rounding at most)
            ours = ours_fast(B, labels=labels, seed=123, **kw).images.float()
            theirs = pub_var.autoregressive_infer_cfg(B, labels, g_seed=123, **kw).float()
            diff = (ours - theirs).abs().max().item()
            f_hat = ours_plain(B, labels=labels, seed=1, **kw).f_hat
            sample_fns = {
                "published": lambda i, B=B, y=labels: pub_var.autoregressive_infer_cfg(B, y, g_seed=i, **kw),
                "ours (fast, default)": lambda i, B=B, y=labels: ours_fast(B, labels=y, seed=i, **kw),
                "ours (plain)": lambda i, B=B, y=labels: ours_plain(B, labels=y, seed=i, **kw),
            }
            decode_fns = {
                "published": lambda i, f=f_hat: pub_vae.fhat_to_img(f),
                "ours (fast, default)": lambda i, f=f_hat: decoder.decode(f),
                "ours (plain)": lambda i, f=f_hat: vae.fhat_to_img(f),
            }
            for task, fns in (("sample", sample_fns), ("decode", decode_fns)):
                res = interleaved(fns, device, args.warmup, args.rounds)
                base = res["published"]["median_s"]
                for name, r in res.items():
                    rows.append(dict(task=task, batch=B, variant=name, **r, img_per_s=B / r["median_s"],
                                     speedup_vs_published=base / r["median_s"], max_abs_diff=diff))  # fmt: skip
    print("| task | B | variant | median s | img/s | vs published |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['task']} | {r['batch']} | {r['variant']} | {r['median_s']:.4f} | {r['img_per_s']:.2f} | "
              f"{r['speedup_vs_published']:.2f}x |")  # fmt: skip
    diffs = {r["batch"]: r["max_abs_diff"] for r in rows}
    print(f"max |ours - published| over the images of one seeded call, per batch: {diffs}")
    out = dict(
        date=dt.datetime.now().isoformat(timespec="seconds"),
        machine=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        torch=torch.__version__,
        preset=args.preset,
        amp=args.amp,
        rounds=args.rounds,
        rows=rows,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
