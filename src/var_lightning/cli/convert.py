"""`var-convert`: released weights <-> var_lightning (Lightning) checkpoints.

    # released VQ-VAE + VAR -> one VAR-stage checkpoint (sample, evaluate, edit, fine-tune with init_from=)
    var-convert to-lightning --vae vae_ch160v4096z32.pth --var var_d16.pth --out var_d16.ckpt
    # the 512 px model: the released VQ-VAE serves the 512 schedule too
    var-convert to-lightning --vae vae_ch160v4096z32.pth --var var_d36.pth --out var_d36.ckpt
    # released VQ-VAE alone -> a tokenizer-stage checkpoint (a VAR stage's model.tokenizer_ckpt)
    var-convert to-lightning --vae vae_ch160v4096z32.pth --out vae.ckpt --patch-nums 1,2,3,4,5,6,8,10,13,16
    # a released model by name (Hugging Face Hub cache), written as safetensors
    var-convert to-lightning --pretrained var_d16 --out var_d16.safetensors
    # back to the published layout (plain state_dicts loadable strictly by the published classes)
    var-convert to-official outputs/.../last.ckpt --out-dir released/ [--format safetensors]
    # a sharded checkpoint directory of a trainer=fsdp* run -> one file (every command also reads the directory)
    var-convert consolidate outputs/d30/checkpoints/last.ckpt --out d30.safetensors
    # share what you trained: a model repository (model.safetensors + config.json + a generated model card),
    # loadable as pretrained=<folder> or, once uploaded, pretrained=<user>/<name>
    var-convert to-hub outputs/demo/var/checkpoints/last.ckpt --out-dir my-var \
        [--repo-id user/my-var] [--license mit] [--report outputs/demo/eval/report.json] [--private]

The VAR file carries its scale schedule (``lvl_1L``), so the tokenizer takes the transformer's schedule.
A written checkpoint holds weights and configs, no optimizer state: fine-tune from it with
``var-train ... init_from=<file>``, not ``resume=`` (which continues a run). ``--format safetensors``
(or an ``.safetensors`` output name) writes tensors plus JSON metadata: nothing in it can execute code.
Every command that takes a checkpoint reads both formats.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from var_lightning import __version__
from var_lightning.checkpoints.hub import RELEASED_SAMPLING, imagenet_class_names
from var_lightning.checkpoints.load import load_models, load_tokenizer
from var_lightning.checkpoints.model_card import run_dir_of
from var_lightning.checkpoints.model_repo import push_to_hub
from var_lightning.checkpoints.published import export_official_vae, export_official_var
from var_lightning.checkpoints.reader import checkpoint_stage, read_checkpoint
from var_lightning.checkpoints.safe_io import CheckpointError, save_checkpoint
from var_lightning.checkpoints.sharded import is_sharded_checkpoint
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.training.settings import TokenizerOptim, VAROptim, VARTrain
from var_lightning.transformer.sampling import resolve_sampling
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
    hparams = {
        "tokenizer": asdict(vae.cfg),
        "loss": {"perceptual_weight": 0.0, "disc_weight": 0.0},
        "optim": asdict(TokenizerOptim()),
    }
    sd = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    ckpt = _lightning_checkpoint("tokenizer", hparams, sd)
    ckpt["var_lightning"]["source"] = source
    return ckpt


def var_checkpoint(var: VAR, vae: MultiScaleVQVAE, source: str, class_names: list[str] | None = None) -> dict:
    hparams = {
        "transformer": asdict(var.cfg),
        "tokenizer": asdict(vae.cfg),
        "tokenizer_source": source,
        "optim": asdict(VAROptim()),
        "train": asdict(VARTrain()),
        # the published protocol; a vocabulary smaller than its top-k gets 900/4096 of its size
        "sampling": {**resolve_sampling(RELEASED_SAMPLING, var.V), "seed": 0},
    }
    sd = {f"var.{k}": v for k, v in var.state_dict().items()}
    sd.update({f"vae.{k}": v for k, v in vae.state_dict().items()})
    ckpt = _lightning_checkpoint("var", hparams, sd)
    ckpt["var_lightning"]["source"] = source
    if class_names:
        ckpt["var_lightning"]["class_names"] = list(class_names)
    return ckpt


def _fmt(out: Path, fmt: str | None) -> str:
    return fmt or ("safetensors" if out.suffix == ".safetensors" else "pth")


def to_lightning(
    vae_path: str | None,
    var_path: str | None,
    out: str,
    patch_nums: list[int] | None,
    pretrained: str | None = None,
    fmt: str | None = None,
    trust_pickle: bool = False,
) -> Path:
    """Released files (or a released model by name) -> one var_lightning checkpoint."""
    out_path = Path(out)
    if pretrained is not None or var_path is not None:
        if patch_nums is not None:
            raise ValueError(
                "--patch-nums applies to a tokenizer-only conversion; the VAR file carries its schedule"
            )
        models = load_models(
            var_path, pretrained=pretrained, vae_path=vae_path, trust_pickle=trust_pickle, key="--var"
        )
        names = models.info.class_names or (
            imagenet_class_names() if models.var.num_classes == 1000 else None
        )
        src = " + ".join(models.info.files.values())
        ckpt = var_checkpoint(models.var, models.vae, src, names)
    else:
        if vae_path is None:
            raise ValueError("give --vae (a tokenizer-only conversion), --var with --vae, or --pretrained")

        vae = load_tokenizer(vae_path, patch_nums=patch_nums, trust_pickle=trust_pickle, key="--vae")
        if (
            checkpoint_stage(read_checkpoint(vae_path, key="--vae", trust_pickle=trust_pickle))
            != "official-vae"
        ):
            raise ValueError(
                f"--vae {vae_path} is not a released tokenizer state_dict (vae_ch160v4096z32.pth's layout)"
            )
        ckpt = tokenizer_checkpoint(vae, str(vae_path))
    save_checkpoint(ckpt, out_path, _fmt(out_path, fmt))
    log.info("wrote %s (%s stage, %s)", out_path, ckpt["var_lightning"]["stage"], _fmt(out_path, fmt))
    return out_path


def to_official(ckpt_path: str, out_dir: str, fmt: str = "pth", trust_pickle: bool = False) -> list[Path]:
    """A var_lightning checkpoint -> released-layout state_dicts (``vae.pth`` and ``var_d<depth>.pth``)."""
    ckpt = read_checkpoint(ckpt_path, key="ckpt", trust_pickle=trust_pickle)
    stage = checkpoint_stage(ckpt)
    if stage == "ar":
        raise ValueError(
            f"{ckpt_path} is an AR-baseline checkpoint; the released layout has no AR model to export to"
        )
    if stage not in ("tokenizer", "var"):
        raise ValueError(
            f"{ckpt_path} is a {stage!r} file, not a var_lightning checkpoint; nothing to convert"
        )
    models = load_models(ckpt_path, trust_pickle=trust_pickle, require_var=False, key="ckpt")
    out = Path(out_dir)
    suffix = ".safetensors" if fmt == "safetensors" else ".pth"
    written = [save_checkpoint(export_official_vae(models.vae), out / f"vae{suffix}", fmt)]
    if models.var is not None:
        written.append(
            save_checkpoint(export_official_var(models.var), out / f"var_d{models.var.depth}{suffix}", fmt)
        )
    for p in written:
        log.info("wrote %s", p)
    return written


def consolidate(ckpt_path: str, out: str, fmt: str | None = None, trust_pickle: bool = False) -> Path:
    """A sharded checkpoint directory (``trainer=fsdp*``) -> one file with the full weights, the run's
    hyper-parameters and our ``var_lightning`` record (no optimizer state: it is for sampling, evaluation,
    ``init_from`` and sharing; resume from the directory itself)."""

    if not is_sharded_checkpoint(ckpt_path):
        raise ValueError(
            f"{ckpt_path} is not a sharded checkpoint directory (one with a .metadata index, as trainer=fsdp* "
            "writes); a checkpoint file needs no consolidation"
        )
    ckpt = read_checkpoint(ckpt_path, key="ckpt", trust_pickle=trust_pickle)
    keep = (
        "state_dict",
        "hyper_parameters",
        "var_lightning",
        "epoch",
        "global_step",
        "pytorch-lightning_version",
    )
    out_path = Path(out)
    save_checkpoint({k: ckpt[k] for k in keep if k in ckpt}, out_path, _fmt(out_path, fmt))
    log.info("wrote %s (%d tensors, %s stage, step %s)", out_path, len(ckpt["state_dict"]),
             checkpoint_stage(ckpt), ckpt.get("global_step"))  # fmt: skip
    return out_path


def to_hub(
    ckpt_path: str,
    out_dir: str,
    repo_id: str | None = None,
    license: str = "other",
    report: str | None = None,
    image: str | None = None,
    private: bool = False,
    trust_pickle: bool = False,
) -> Path:
    """A checkpoint of any stage (the EMA weights when the run kept them) -> a model repository in ``out_dir``
    with a card generated from the run; uploaded to ``repo_id`` when given."""
    import json

    models = load_models(ckpt_path, trust_pickle=trust_pickle, require_var=False, key="ckpt")
    raw = read_checkpoint(ckpt_path, key="ckpt", trust_pickle=trust_pickle)
    sd = raw.get("state_dict") if isinstance(raw.get("state_dict"), dict) else {}
    ema = any(k.startswith("var_ema.") for k in sd)
    eval_report = None
    if report:
        try:
            eval_report = json.loads(Path(report).expanduser().read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"--report {report}: not a readable var-eval report.json ({e})") from e
    out = models.save_pretrained(
        out_dir, repo_id=repo_id, license=license, report=eval_report, image=image, run_dir=run_dir_of(ckpt_path),
        global_step=raw.get("global_step"), epoch=raw.get("epoch"), ema=ema, source=str(ckpt_path),
    )  # fmt: skip
    log.info("wrote the model repository %s (%s stage%s): load it with pretrained=%s", out, models.info.stage,
             ", EMA weights" if ema else "", out)  # fmt: skip
    if repo_id:
        url = push_to_hub(out, repo_id, private=private)
        log.info("uploaded: pretrained=%s loads it anywhere (%s)", repo_id, url)
    return out


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(
        prog="var-convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-lightning", help="released .pth files -> a var_lightning checkpoint")
    a.add_argument("--vae", default=None, help="released VQ-VAE state_dict, e.g. vae_ch160v4096z32.pth")
    a.add_argument(
        "--var",
        default=None,
        help="released VAR state_dict, e.g. var_d16.pth (omit for a tokenizer checkpoint)",
    )
    a.add_argument(
        "--pretrained",
        default=None,
        help="a released model by name (var_d16 ... var_d36) instead of --var/--vae",
    )
    a.add_argument("--out", required=True, help="output path (.ckpt, or .safetensors)")
    a.add_argument(
        "--patch-nums",
        default=None,
        help="scale schedule for a tokenizer-only conversion, e.g. 1,2,3,4,5,6,8,10,13,16",
    )
    b = sub.add_parser("to-official", help="a var_lightning checkpoint -> released-layout .pth files")
    b.add_argument("ckpt")
    b.add_argument("--out-dir", required=True)
    c = sub.add_parser(
        "consolidate", help="a sharded checkpoint directory (trainer=fsdp*) -> one .ckpt / .safetensors file"
    )
    c.add_argument("ckpt", help="e.g. outputs/run/checkpoints/last.ckpt (a directory)")
    c.add_argument("--out", required=True, help="output path (.ckpt, or .safetensors)")
    h = sub.add_parser("to-hub", help="a checkpoint -> a model repository (safetensors + config.json + card)")
    h.add_argument(
        "ckpt", help="a var-train checkpoint of any stage (a .ckpt, .safetensors or sharded directory)"
    )
    h.add_argument("--out-dir", required=True, help="the repository folder to write")
    h.add_argument("--repo-id", default=None, help="also upload it to the Hugging Face Hub as <user>/<name>")
    h.add_argument(
        "--license", default="other", help="the card's licence id (e.g. mit, apache-2.0, cc-by-4.0)"
    )
    h.add_argument("--report", default=None, help="a var-eval report.json whose metrics the card shows")
    h.add_argument("--image", default=None, help="the image the card shows (default: the run's latest grid)")
    h.add_argument("--private", action="store_true", help="create the Hub repository as private")
    h.add_argument("--trust-pickle", action="store_true", help="load a checkpoint that needs full unpickling")
    for p in (a, b, c):
        p.add_argument(
            "--format",
            choices=["pth", "safetensors"],
            default=None,
            help="default: from --out's suffix (pth)",
        )
        p.add_argument(
            "--trust-pickle",
            action="store_true",
            help="load input files that need full unpickling (can execute code; never needed for our files)",
        )
    args = parser.parse_args(argv)
    try:
        if args.cmd == "to-lightning":
            pn = [int(x) for x in args.patch_nums.split(",")] if args.patch_nums else None
            to_lightning(args.vae, args.var, args.out, pn, args.pretrained, args.format, args.trust_pickle)
        elif args.cmd == "to-hub":
            to_hub(args.ckpt, args.out_dir, args.repo_id, args.license, args.report, args.image, args.private,
                   args.trust_pickle)  # fmt: skip
        elif args.cmd == "consolidate":
            consolidate(args.ckpt, args.out, args.format, args.trust_pickle)
        else:
            to_official(args.ckpt, args.out_dir, args.format or "pth", args.trust_pickle)
    except (ValueError, FileNotFoundError, RuntimeError, CheckpointError) as e:
        print(f"var-convert: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
