"""`var-convert`: released weights <-> var_lightning (Lightning) checkpoints.

    # released VQ-VAE + VAR -> one VAR-stage checkpoint (sample, evaluate, edit, fine-tune with init_from=)
    var-convert to-lightning --vae vae_ch160v4096z32.pth --var var_d16.pth --out var_d16.ckpt
    # the 512 px model: the released VQ-VAE serves the 512 schedule too
    var-convert to-lightning --vae vae_ch160v4096z32.pth --var var_d36.pth --out var_d36.ckpt
    # released VQ-VAE alone -> a tokenizer-stage checkpoint (a VAR stage's model.tokenizer_ckpt)
    var-convert to-lightning --vae vae_ch160v4096z32.pth --out vae.ckpt --patch-nums 1,2,3,4,5,6,8,10,13,16
    # back to the published layout (plain state_dicts loadable strictly by the published classes)
    var-convert to-official outputs/.../last.ckpt --out-dir released/

The VAR file carries its scale schedule (``lvl_1L``), so the tokenizer takes the transformer's schedule.
A written checkpoint holds weights and configs, no optimizer state: fine-tune from it with
``var-train ... init_from=<file>``, not ``ckpt_path=`` (which resumes a run).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from var_lightning import __version__
from var_lightning.checkpoints import checkpoint_stage, read_checkpoint, sub_state_dict
from var_lightning.interop.official import (
    export_official_vae,
    export_official_var,
    load_official_vae,
    load_official_var,
)
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.transformer.var import VAR

log = logging.getLogger("var_lightning.convert")


def _lightning_checkpoint(stage: str, hparams: dict, state_dict: dict) -> dict:
    import pytorch_lightning as L

    return {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": L.__version__,
        "state_dict": state_dict,
        "hyper_parameters": hparams,
        "var_lightning": {"stage": stage, "converted_by": f"var_lightning {__version__}"},
    }


def tokenizer_checkpoint(vae: MultiScaleVQVAE, source: str) -> dict:
    from var_lightning.training.tokenizer_module import DEFAULT_OPTIM

    hparams = {
        "tokenizer": asdict(vae.cfg),
        "loss": {"perceptual_weight": 0.0, "disc_weight": 0.0},
        "optim": dict(DEFAULT_OPTIM),
    }
    sd = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    ckpt = _lightning_checkpoint("tokenizer", hparams, sd)
    ckpt["var_lightning"]["source"] = source
    return ckpt


def var_checkpoint(var: VAR, vae: MultiScaleVQVAE, source: str) -> dict:
    from var_lightning.training.var_module import DEFAULT_OPTIM, DEFAULT_SAMPLING, DEFAULT_TRAIN

    hparams = {
        "transformer": asdict(var.cfg),
        "tokenizer": asdict(vae.cfg),
        "tokenizer_source": source,
        "optim": dict(DEFAULT_OPTIM),
        "train": dict(DEFAULT_TRAIN),
        "sampling": {**DEFAULT_SAMPLING, "top_k": min(900, var.V), "top_p": 0.96},
    }
    sd = {f"var.{k}": v for k, v in var.state_dict().items()}
    sd.update({f"vae.{k}": v for k, v in vae.state_dict().items()})
    ckpt = _lightning_checkpoint("var", hparams, sd)
    ckpt["var_lightning"]["source"] = source
    return ckpt


def to_lightning(vae_path: str, var_path: str | None, out: str, patch_nums: list[int] | None) -> Path:
    if var_path is not None:
        var = load_official_var(var_path)
        if patch_nums is not None and tuple(patch_nums) != tuple(var.patch_nums):
            raise ValueError(
                f"--patch-nums {patch_nums} disagrees with {var_path}'s schedule {var.patch_nums}"
            )
        vae = load_official_vae(vae_path, patch_nums=var.patch_nums)
        ckpt = var_checkpoint(var, vae, f"{vae_path} + {var_path}")
    else:
        vae = load_official_vae(vae_path, patch_nums=patch_nums)
        ckpt = tokenizer_checkpoint(vae, str(vae_path))
    out_path = Path(out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out_path)
    log.info("wrote %s (%s stage)", out_path, ckpt["var_lightning"]["stage"])
    return out_path


def to_official(ckpt_path: str, out_dir: str) -> list[Path]:
    ckpt = read_checkpoint(ckpt_path, key="ckpt")
    stage = checkpoint_stage(ckpt)
    if stage not in ("tokenizer", "var"):
        raise ValueError(
            f"{ckpt_path} is a {stage!r} file, not a var_lightning checkpoint; nothing to convert"
        )
    from var_lightning.tokenizer.config import VQVAEConfig
    from var_lightning.transformer.config import VARConfig

    hp, sd = ckpt["hyper_parameters"], ckpt["state_dict"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vae = MultiScaleVQVAE(VQVAEConfig(**dict(hp["tokenizer"])))
    vae.load_state_dict(sub_state_dict(sd, "vae."))
    written = [out / "vae.pth"]
    torch.save(export_official_vae(vae), written[0])
    if stage == "var":
        var = VAR(VARConfig(**dict(hp["transformer"])))
        var.load_state_dict(sub_state_dict(sd, "var."))
        written.append(out / f"var_d{var.depth}.pth")
        torch.save(export_official_var(var), written[-1])
    for p in written:
        log.info("wrote %s", p)
    return written


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(
        prog="var-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-lightning", help="released .pth files -> a var_lightning checkpoint")
    a.add_argument("--vae", required=True, help="released VQ-VAE state_dict, e.g. vae_ch160v4096z32.pth")
    a.add_argument(
        "--var",
        default=None,
        help="released VAR state_dict, e.g. var_d16.pth (omit for a tokenizer checkpoint)",
    )
    a.add_argument("--out", required=True, help="output .ckpt path")
    a.add_argument(
        "--patch-nums",
        default=None,
        help="scale schedule for a tokenizer-only conversion, e.g. 1,2,3,4,5,6,8,10,13,16",
    )
    b = sub.add_parser("to-official", help="a var_lightning checkpoint -> released-layout .pth files")
    b.add_argument("ckpt")
    b.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "to-lightning":
            pn = [int(x) for x in args.patch_nums.split(",")] if args.patch_nums else None
            to_lightning(args.vae, args.var, args.out, pn)
        else:
            to_official(args.ckpt, args.out_dir)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"var-convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
