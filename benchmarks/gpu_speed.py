"""The speed table of a first GPU window: ours against the published implementation, same weights and shapes.

    python3 benchmarks/gpu_speed.py --json speed.json           # on the GPU node (~6 min on an H100 / H200)
    python3 benchmarks/gpu_speed.py --cpu --json speed.json     # the same table at a small shape on CPU

Rows (each: the published code's own functions, then ours, interleaved round by round with the order
reversed every round; medians with min / max):

* ``sample B=1`` and ``sample B=64``: class-conditional sampling with cfg 1.5, top-k 900, top-p 0.96 and the
  decode to pixels. Published: ``VAR.autoregressive_infer_cfg`` (its KV cache, its ``fhat_to_img``). Ours:
  the sampler ``var-sample`` / ``var-eval`` use (``build_sampler(..., "fast")``: static KV cache, CUDA graphs
  on a GPU), under bf16 autocast on both sides as the published demo runs.
* ``train B=64 eager`` and ``train B=64 compiled``: one optimizer step from images (tokenize with the frozen
  tokenizer, forward, cross-entropy, backward, clip at 2.0, fused AdamW) under bf16 autocast. Published: its
  ``trainer.VARTrainer.train_step`` with its ``AmpOptimizer`` (compiled: ``torch.compile`` of the model, its
  ``tfast=3``). Ours: the objective ``VARModule.training_step`` computes (``next_scale_losses``, default
  settings) with the optimizer ``VARModule`` builds (compiled: ``model.train.compile=true``).

The models are the paper's d16 with the released tokenizer's shape (``--cpu``: a 6-block model at 128 px), with
random weights; ours are copied into the published classes with ``strict=True`` (``export_official_*``). Every
row also records a check: the largest pixel difference of one seeded sampling call, and the relative
difference of the first step's gradient norm on the same batch (no label dropout).

Needs only torch (and numpy) on the card: no Hydra, no Lightning. The published code
(https://github.com/FoundationVision/VAR) is read from ``benchmarks/third_party/VAR`` (git-ignored; ``make
gpu-bundle`` exports it there). Packages it imports only for its Hub upload class, argument parser and
logging (``huggingface_hub``, ``tap``, ``pytz``) are replaced by empty stand-ins when absent (listed in the
JSON); none of the timed functions touches them. ``--budget-s`` (360) bounds the whole table: rows that would
start after it are reported as skipped.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "benchmarks")]

from bench_vs_published import build_ours, build_published, interleaved  # noqa: E402

from var_lightning.objectives.losses import next_scale_losses  # noqa: E402
from var_lightning.training.optim import adamw, param_groups  # noqa: E402
from var_lightning.transformer.fast_sampling import build_sampler  # noqa: E402

GRAD_CLIP = 2.0
SAMPLING = dict(cfg=1.5, top_k=900, top_p=0.96)
IMPORT_ONLY = {  # module: names the published code imports from it but no timed function uses
    "huggingface_hub": ["PyTorchModelHubMixin"],
    "tap": ["Tap"],
    "pytz": ["timezone"],
}


def stand_ins() -> list[str]:
    """Empty modules for the published code's import-only dependencies that are not installed."""
    added = []
    for name, attrs in IMPORT_ONLY.items():
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            for a in attrs:
                setattr(mod, a, type(a, (), {}))
            sys.modules[name] = mod
            added.append(name)
    return added


def amp_ctx(device: torch.device, on: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=on)


def batch(device: torch.device, B: int, side: int, num_classes: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand(B, 3, side, side, generator=g).mul_(2).sub_(1).to(device)  # [-1, 1], as both pipelines
    label = torch.randint(0, num_classes, (B,), generator=g).to(device)
    return img, label


def our_step(var, vae, device: torch.device, amp: bool, compiled: bool) -> tuple[Callable, Callable]:
    """(step(img, label, drop) -> grad norm, optimizer) the way VARModule trains: next_scale_losses and its AdamW."""
    opt = adamw(param_groups(var.named_parameters(), 0.05), lr=1e-4, betas=(0.9, 0.95))

    def step(img, label, drop: float = 0.1):
        with amp_ctx(device, amp):
            loss = next_scale_losses(var, vae, (img, label), cond_drop_rate=drop, compile=compiled)["loss"]
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(var.parameters(), GRAD_CLIP)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return norm

    return step


def published_step(pub_var, pub_vae, device: torch.device, amp: bool, compiled: bool) -> Callable:
    """step(img, label, drop) -> grad norm through the published trainer's own train_step and AmpOptimizer."""
    from trainer import VARTrainer  # the published trainer (benchmarks/third_party/VAR on sys.path)
    from utils.amp_sc import AmpOptimizer

    names, paras = zip(*[(n, p) for n, p in pub_var.named_parameters() if p.requires_grad], strict=True)
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(
        [{"params": list(paras), "weight_decay": 0.05}], lr=1e-4, betas=(0.9, 0.95), fused=fused or None
    )
    var_opt = AmpOptimizer(2 if amp else 0, opt, list(names), list(paras), grad_clip=GRAD_CLIP)
    net = torch.compile(pub_var) if compiled else pub_var
    pn = pub_var.patch_nums
    trainer = VARTrainer(device, pn, tuple(p * 16 for p in pn), pub_vae, pub_var, net, var_opt, 0.0)
    metric_lg = types.SimpleNamespace(log_iters=[], update=lambda **kw: None)  # it > 0: nothing is logged
    tb_lg = types.SimpleNamespace(update=lambda **kw: None, flush=lambda: None)
    calls = [0]

    def step(img, label, drop: float = 0.1):
        calls[0] += 1
        pub_var.cond_drop_rate = drop
        it = calls[0]  # never 0 or 499 mod 500: the published step logs (and syncs) only there
        norm, _ = trainer.train_step(it, it, True, metric_lg, tb_lg, img, label, -1, 1.0)
        return norm

    return step


def timed_rows(task: str, B: int, fns: dict[str, Callable], device, warmup: int, rounds: int, check: dict):
    res = interleaved(fns, device, warmup, rounds)
    base = res["published"]["median_s"]
    return [
        dict(task=task, batch=B, side=name, **r, per_s=B / r["median_s"], speedup_vs_published=base / r["median_s"],
             **check)
        for name, r in res.items()
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="a small shape on CPU (fp32), every row")
    p.add_argument("--json", type=Path, default=None, help="also write the table and checks here")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per row (GPU 7, CPU 3)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--budget-s", type=float, default=360.0, help="rows starting after this are skipped")
    p.add_argument("--published-dir", type=Path, default=ROOT / "benchmarks" / "third_party" / "VAR")
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    gpu = not args.cpu
    if gpu and not torch.cuda.is_available():
        raise SystemExit("gpu_speed.py: no CUDA device here; run with --cpu for the small CPU table")
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # as both trainers run
    rounds = args.rounds or (7 if gpu else 3)
    preset, sample_batches, train_batch = ("d16", (1, 64), 64) if gpu else ("cpu", (1, 8), 4)
    amp = gpu
    stubs = stand_ins()
    var, vae = build_ours(preset, device)
    pub_var, pub_vae = build_published(var, vae, args.published_dir, device)
    side = vae.cfg.image_size
    head = (f"{preset}: VAR {var.num_params() / 1e6:.1f}M, {side} px, L={var.L}, on "
            f"{torch.cuda.get_device_name() if gpu else platform.processor() or platform.machine()}, "
            f"torch {torch.__version__}, {'bf16 autocast' if amp else 'fp32'}")  # fmt: skip
    print(head, flush=True)
    rows: list[dict] = []
    skipped: list[str] = []

    def over_budget(name: str) -> bool:
        if time.perf_counter() - t_start > args.budget_s:
            skipped.append(name)
            print(f"skipped (past --budget-s {args.budget_s:g}): {name}", flush=True)
            return True
        return False

    # -------------------------------------------------------------------------------------------- sampling
    ours_fast = build_sampler(var, vae, "fast")
    kw = {**SAMPLING, "top_k": min(SAMPLING["top_k"], var.V)}
    for B in sample_batches:
        if over_budget(f"sample B={B}"):
            continue
        labels = torch.arange(B, device=device) % var.num_classes
        with torch.no_grad(), amp_ctx(device, amp):
            mine = ours_fast(B, labels=labels, seed=123, **kw).images.float()
            theirs = pub_var.autoregressive_infer_cfg(B, labels, g_seed=123, **kw).float()
            check = {
                "check": "max |pixel difference|, one seeded call",
                "check_value": (mine - theirs).abs().max().item(),
            }
            fns = {
                "published": lambda i, B=B, y=labels: pub_var.autoregressive_infer_cfg(B, y, g_seed=i, **kw),
                "ours": lambda i, B=B, y=labels, draw=ours_fast: draw(B, labels=y, seed=i, **kw),
            }
            rows += timed_rows("sample", B, fns, device, args.warmup, rounds, check)
        print(f"sample B={B}: done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    del ours_fast
    if gpu:
        torch.cuda.empty_cache()

    # -------------------------------------------------------------------------------------------- training
    img, label = batch(device, train_batch, side, var.num_classes)
    for compiled in (False, True):
        mode = "compiled" if compiled else "eager"
        if over_budget(f"train B={train_batch} {mode}"):
            continue
        var_copy = copy.deepcopy(var)
        pub_copy, pub_vae_copy = build_published(
            var_copy, vae, args.published_dir, device, var.cfg.drop_path_rate
        )
        steps = {
            "published": published_step(pub_copy, pub_vae_copy, device, amp, compiled),
            "ours": our_step(var_copy, vae, device, amp, compiled),
        }
        # the check: same weights and batch, no label dropout, no drop-path (eval mode; backward still runs)
        var_copy.eval(), pub_copy.eval()
        norms = {k: float(s(img, label, 0.0)) for k, s in steps.items()}
        var_copy.train(), pub_copy.train()
        check = {"check": "first step's grad norm, |ours / published - 1|",
                 "check_value": abs(norms["ours"] / norms["published"] - 1)}  # fmt: skip
        fns = {k: (lambda i, s=s: s(img, label)) for k, s in steps.items()}
        rows += timed_rows(f"train {mode}", train_batch, fns, device, args.warmup, rounds, check)
        print(f"train B={train_batch} {mode}: done ({time.perf_counter() - t_start:.0f} s)", flush=True)
        del steps, var_copy, pub_copy, pub_vae_copy
        if gpu:
            torch.cuda.empty_cache()

    lines = [
        "| row | side | median s | min s | max s | images/s | vs published | check |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['task']} B={r['batch']} | {r['side']} | {r['median_s']:.4f} | {r['min_s']:.4f} | "
                     f"{r['max_s']:.4f} | {r['per_s']:.1f} | {r['speedup_vs_published']:.2f}x | {r['check_value']:.2e} |")  # fmt: skip
    print("\n".join(lines))
    if skipped:
        print("skipped:", ", ".join(skipped))
    out = dict(
        date=dt.datetime.now().isoformat(timespec="seconds"), header=head, device=str(device),
        torch=torch.__version__, preset=preset, amp="bf16" if amp else "none", rounds=rounds, warmup=args.warmup,
        sides={"published": f"FoundationVision/VAR at {args.published_dir}", "ours": "var_lightning (src/)"},
        published_stand_ins=stubs, rows=rows, skipped=skipped, seconds=time.perf_counter() - t_start,
    )  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
