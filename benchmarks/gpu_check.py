"""The first-node check: one PASS/FAIL (or SKIP) line per check and a JSON record, within one 9-minute call.

    python benchmarks/gpu_check.py [--cpu] [--out DIR] [--only NAME ...]      (benchmarks/gpu_check.sh wraps it)

Checks, most informative first (each in its own process with its own time limit; 530 s in all; with
--budget-s a check that would end past the budget is skipped and named for the next call):
  flex-vs-sdpa     FlexAttention = dense-mask SDPA at every prefix length of the schedule, and the speed of each
  graph-sampler    the fast sampler (CUDA graphs on a GPU) draws the plain sampler's tokens and images
  train-tokenizer  20 bf16 steps of `var-train experiment=tokenizer_tiny` (the tokenizer for the runs below)
  train-var-fsdp   ... of the VAR stage with trainer=fsdp on one device (FSDP2, bf16, sharded checkpoint, read back)
  gpu-tests        tests/gpu (CUDA graphs, compiled flex backward, fused CE memory, bf16 decode); SKIP on CPU
  train-var        20 bf16 steps of the VAR stage
  train-var-compile ... with model.train.compile=true
  train-var-ema    ... with callbacks=ema
  sampler-memory   peak memory and time of the fast sampler at B = 1, 64, 256 (d16 on a GPU); SKIP on CPU

--cpu runs the CPU-possible checks with CPU trainer twins (tiny models); what it prints is a rehearsal, not a
GPU result. Needs torch >= 2.4 (FSDP2, FlexAttention: 2.5), numpy, pytorch-lightning >= 2.4, and for the
training checks hydra-core, omegaconf, antlr4-python3-runtime, webdataset, braceexpand, lpips, torch-fidelity,
scipy, pillow, rich (carry them as wheels: see gpu_check.sh). var_lightning itself runs from src/ (PYTHONPATH).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMITS = {  # seconds per check, most informative first; the first four fit the ~180 s the speed table leaves
    "flex-vs-sdpa": 60,
    "graph-sampler": 30,
    "train-tokenizer": 45,
    "train-var-fsdp": 45,
    "gpu-tests": 150,
    "train-var": 40,
    "train-var-compile": 80,
    "train-var-ema": 40,
    "sampler-memory": 40,
}
NEEDS = {n: "train-tokenizer" for n in LIMITS if n.startswith("train-var")}  # the VAR runs use its checkpoint
TINY_DATA = ["data.image_size=32", "data.train_size=640", "data.val_size=64", "data.batch_size=32"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.setdefault("VAR_CACHE_DIR", str(ROOT / "benchmarks" / "out" / "cache"))
    return env


# the limits are the GPU node's; the --cpu rehearsal multiplies them (a 2-core machine, maybe busy): see main()
LIMIT_SCALE = 1.0


def cpu_limit_scale() -> float:
    """The --cpu rehearsal's factor on the limits: x3 for a CPU doing a GPU's work on tiny models, times the
    machine's load per core when another job shares it (2 cores at load 4 -> x6)."""
    try:
        load = os.getloadavg()[0] / (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        load = 1.0
    return 3.0 * max(1.0, load)


def run(cmd: list[str], limit: float) -> tuple[bool, str]:
    limit = limit * LIMIT_SCALE
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, env=_env(), cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return False, f"timed out after {limit:.0f} s\n{out[-1500:]}"
    return p.returncode == 0, (p.stdout + p.stderr)[-3000:]


# ---------------------------------------------------------------------------------------------- in-process checks
def _model(device: str):
    import torch

    from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
    from var_lightning.transformer.config import preset
    from var_lightning.transformer.var import VAR

    if device == "cuda":
        from var_lightning.tokenizer.config import VQVAEConfig

        vae_cfg = VQVAEConfig()  # the released tokenizer's shape (weights random: speed and equality only)
        var_cfg = preset(
            "d16", vocab_size=vae_cfg.vocab_size, cvae=vae_cfg.z_channels, patch_nums=vae_cfg.patch_nums
        )
    else:
        from tests.helpers import tiny_vae_cfg, tiny_var_cfg

        vae_cfg, var_cfg = tiny_vae_cfg(), tiny_var_cfg()
    torch.manual_seed(0)
    return VAR(var_cfg).to(device).eval(), MultiScaleVQVAE(vae_cfg).to(device).eval()


def _timed(fn, device: str, iters: int = 5) -> float:
    import torch

    fn()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def check_flex(device: str) -> dict:
    import torch

    from var_lightning.transformer.flex import get_block_mask
    from var_lightning.transformer.var import run_blocks

    var, _ = _model(device)
    amp = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
    rows, worst = [], 0.0
    for si, (_, end) in enumerate(var.begin_ends):
        x_BLCv = torch.randn(8, end - var.first_l, var.Cvae, device=device)
        label_B = torch.arange(8, device=device) % var.num_classes
        with torch.no_grad(), amp:
            x_BLC, cond_BD = var.embed_inputs(label_B, x_BLCv, end)
            cond = var.cond(cond_BD)
            bias = var.attn_bias_for_masking[:, :, :end, :end]
            mask = get_block_mask(var, end, device)
            dense = run_blocks(var.blocks, x_BLC, cond, bias, None).float()
            flex = run_blocks(var.blocks, x_BLC, cond, None, mask).float()
            diff = (dense - flex).abs().max().item() / max(dense.abs().max().item(), 1e-6)
            t_dense = _timed(functools.partial(run_blocks, var.blocks, x_BLC, cond, bias, None), device)
            t_flex = _timed(functools.partial(run_blocks, var.blocks, x_BLC, cond, None, mask), device)
        worst = max(worst, diff)
        rows.append(
            {"scale": si, "tokens": end, "rel_diff": diff, "sdpa_ms": 1e3 * t_dense, "flex_ms": 1e3 * t_flex}
        )
    tol = 2e-2 if device == "cuda" else 1e-4
    return {"ok": worst < tol, "detail": f"max rel diff {worst:.2e} (tol {tol:g}); last scale sdpa "
            f"{rows[-1]['sdpa_ms']:.1f} ms vs flex {rows[-1]['flex_ms']:.1f} ms", "rows": rows}  # fmt: skip


def check_graph_sampler(device: str) -> dict:
    import torch

    from var_lightning.transformer.fast_sampling import FastSampler
    from var_lightning.transformer.sampling import sample

    var, vae = _model(device)
    kw = dict(labels=[1, 2, 3, 4], cfg=1.5, top_k=900 if device == "cuda" else 20, top_p=0.96, seed=7)
    with torch.no_grad():
        fast = FastSampler(var, vae, cuda_graphs=True).sample(4, **kw)
        plain = sample(var, vae, 4, **kw)
    same_tokens = all(torch.equal(a, b) for a, b in zip(fast.tokens, plain.tokens, strict=True))
    diff = (fast.images - plain.images).abs().max().item()
    return {"ok": same_tokens and diff < 1e-4, "detail": f"tokens equal: {same_tokens}, image max diff {diff:.1e} "
            f"(graphs {'on' if device == 'cuda' else 'off: CPU'})"}  # fmt: skip


def check_sampler_memory(device: str) -> dict:
    import torch

    from var_lightning.transformer.fast_sampling import FastSampler

    var, vae = _model(device)
    sampler = FastSampler(var, vae, cuda_graphs=True, channels_last=True)
    rows = []
    for B in (1, 64, 256):
        sampler.release()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            sec = _timed(lambda B=B: sampler.sample(B, labels=list(range(B)), cfg=1.5, top_k=900, top_p=0.96, seed=0),
                         "cuda", iters=2)  # fmt: skip
        peak = (torch.cuda.max_memory_allocated() - base) / 2**30
        rows.append({"batch": B, "peak_gib": peak, "sec_per_call": sec, "img_per_s": B / sec})
    detail = ", ".join(f"B={r['batch']}: {r['peak_gib']:.1f} GiB, {r['img_per_s']:.0f} img/s" for r in rows)
    return {"ok": True, "detail": detail, "rows": rows}


IN_PROCESS = {
    "flex-vs-sdpa": check_flex,
    "graph-sampler": check_graph_sampler,
    "sampler-memory": check_sampler_memory,
}


# ---------------------------------------------------------------------------------------------- var-train checks
def train_cmd(name: str, out: Path, cpu: bool) -> list[str]:
    train = [sys.executable, "-m", "var_lightning.cli.train"]
    # one epoch of 640 images at batch 32 = 20 steps, then a validation with image grids
    common = ["trainer.max_epochs=1", "logger=csv", "callbacks.progress_bar.terminal=false", *TINY_DATA]
    one = ["trainer=cpu", "trainer.precision=bf16-mixed"] if cpu else ["trainer=gpu"]
    tok = out / "train-tokenizer" / "checkpoints" / "last.ckpt"
    var = ["experiment=var_tiny", f"model.tokenizer_ckpt={tok}"]
    cmds = {
        "train-tokenizer": ["experiment=tokenizer_tiny", *one],
        "train-var": [*var, *one],
        "train-var-ema": [*var, *one, "callbacks=ema", "callbacks.ema.decay=0.9"],
        "train-var-compile": [*var, *one, "model.train.compile=true"],
        "train-var-fsdp": [
            *var,
            *(["trainer=fsdp_cpu", "trainer.precision=bf16-mixed"] if cpu else ["trainer=fsdp"]),
            "trainer.devices=1",
        ],  # fmt: skip
    }
    return [*train, *cmds[name], *common, f"hydra.run.dir={out / name}"]


def check_training(name: str, out: Path, cpu: bool) -> dict:
    ok, log = run(train_cmd(name, out, cpu), LIMITS[name])
    metrics = out / name / "metrics.json"
    m = json.loads(metrics.read_text()) if metrics.is_file() else {}
    step = m.get("step", m.get("global_step"))
    ckpt = out / name / "checkpoints" / "last.ckpt"
    if ok and name == "train-var-fsdp":  # the sharded checkpoint reads back as one model
        ok2, log2 = run(
            [
                sys.executable,
                "-c",
                f"from var_lightning.checkpoints.load import load_models; load_models({str(ckpt)!r})",
            ],
            60,
        )
        ok, log = ok and ok2, log + log2
    loss = m.get("val/loss", m.get("val/rec_l1"))
    return {"ok": ok and ckpt.exists(), "detail": f"val metric {loss}, step {step}" if ok else log}


# ---------------------------------------------------------------------------------------------- driver
def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cpu", action="store_true", help="the CPU-possible checks on CPU (a rehearsal)")
    p.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT", ROOT / "benchmarks" / "out")) / "gpu_check"
    )
    p.add_argument("--only", nargs="+", default=None, choices=sorted(LIMITS))
    p.add_argument("--budget-s", type=float, default=None,
                   help="checks whose limit would end past this many seconds are skipped (named for a next call)")  # fmt: skip
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # run one in-process check, print its JSON
    p.add_argument("--limit-scale", type=float, default=None,
                   help="multiply every check's time limit (default: 1 on a GPU, 3 x load per core with --cpu)")  # fmt: skip
    args = p.parse_args()
    global LIMIT_SCALE
    LIMIT_SCALE = args.limit_scale or (cpu_limit_scale() if args.cpu else 1.0)
    device = "cpu" if args.cpu else "cuda"
    if args.one:
        print("RESULT " + json.dumps(IN_PROCESS[args.one](device)))
        return 0
    import torch

    if not args.cpu and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu for the CPU rehearsal", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "torch": torch.__version__, "device":
              torch.cuda.get_device_name() if not args.cpu else "cpu", "checks": {}}  # fmt: skip
    failed = 0
    if LIMIT_SCALE != 1.0:
        print(f"time limits x{LIMIT_SCALE:.1f}", flush=True)
    start, later = time.perf_counter(), []
    names = args.only or list(LIMITS)
    tok = args.out / "train-tokenizer" / "checkpoints" / "last.ckpt"
    if any(n in NEEDS for n in names) and "train-tokenizer" not in names and not tok.exists():
        names = ["train-tokenizer", *names]  # a fresh machine: the VAR runs need this run's tokenizer first
    for name in names:
        t = time.perf_counter()
        if args.budget_s is not None and t - start + LIMITS[name] * LIMIT_SCALE > args.budget_s:
            later.append(name)
            print(f"SKIP {name}: its {LIMITS[name] * LIMIT_SCALE:.0f} s limit would end past --budget-s {args.budget_s:g}",
                  flush=True)  # fmt: skip
            continue
        if name in NEEDS and not tok.exists():
            res = {"ok": False, "detail": f"no tokenizer checkpoint from {NEEDS[name]} at {tok}"}
        elif name in ("gpu-tests", "sampler-memory") and args.cpu:
            res = {"ok": None, "detail": "needs a CUDA device"}
        elif name == "gpu-tests":
            ok, log = run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/gpu"], LIMITS[name]
            )
            res = {"ok": ok, "detail": log.strip().splitlines()[-1] if ok else log}
        elif name in IN_PROCESS:
            ok, log = run(
                [sys.executable, __file__, "--one", name, *(["--cpu"] if args.cpu else [])], LIMITS[name]
            )
            line = next((ln for ln in log.splitlines() if ln.startswith("RESULT ")), None)
            res = json.loads(line[7:]) if ok and line else {"ok": False, "detail": log}
        else:
            res = check_training(name, args.out, args.cpu)
        res["seconds"] = round(time.perf_counter() - t, 1)
        record["checks"][name] = res
        status = "SKIP" if res["ok"] is None else ("PASS" if res["ok"] else "FAIL")
        failed += status == "FAIL"
        first = str(res["detail"]).strip().splitlines()
        print(f"{status} {name} ({res['seconds']} s): {first[-1] if status != 'FAIL' else ' | '.join(first[-6:])}",
              flush=True)  # fmt: skip
        (args.out / "gpu_check.json").write_text(json.dumps(record, indent=1))
    if later:
        record["not_run"] = later
        (args.out / "gpu_check.json").write_text(json.dumps(record, indent=1))
        print(
            f"not run (time): next call: bash benchmarks/gpu_check.sh --only {' '.join(later)}"
            + (" (train-tokenizer's checkpoint is kept in --out)" if any(n in NEEDS for n in later) else "")
        )
    print(f"{failed} failed; record: {args.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
