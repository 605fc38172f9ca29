"""Golden training curves: for the tiny config of each stage, the per-step training loss of a fixed-seed run
on the built-in data, stored in ``tests/golden/<name>.json``. ``tests/integration/test_golden_curves.py``
reruns each and requires today's curve to stay within the stated band; a change that alters training breaks
it on purpose. After an intended change, one command rewrites the curves::

    make golden-update          # = python -m tests.golden.curves

The band is tight (CPU, fp32, one thread): ``RTOL`` relative, ``ATOL`` absolute, per step.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
STEPS = 16
RTOL, ATOL = 2e-4, 1e-5
DATA = [
    "data.image_size=16",
    "data.train_size=64",
    "data.val_size=16",
    "data.batch_size=8",
    "data.num_workers=0",
]
COMMON = [f"trainer.max_steps={STEPS}", "++trainer.limit_val_batches=0", "++trainer.num_sanity_val_steps=0",
          "logger=none", "~callbacks.image_logger", "~callbacks.progress_bar", "++trainer.enable_progress_bar=false",
          "seed=1234"]  # fmt: skip
SMALL_VAR = ["schedule=cpu_micro", "++model.transformer.depth=2", "++model.transformer.width=32",
             "++model.transformer.num_heads=2"]  # fmt: skip
CASES: dict[str, list[str]] = {
    "tokenizer": ["experiment=tokenizer_tiny", "schedule=cpu_micro", "model.tokenizer.ch=16",
                  "model.tokenizer.vocab_size=64", "model.tokenizer.z_channels=8", "model.tokenizer.norm_groups=8",
                  "model.loss.disc_start=8", "model.loss.disc_ch=8", "model.loss.perceptual_random_backbone=true"],
    "var": ["experiment=var_tiny", *SMALL_VAR],
    "ar": ["experiment=ar_tiny", *SMALL_VAR],
    "progressive": ["experiment=var_tiny", *SMALL_VAR, "model.train.progressive.until=0.75",
                    "model.train.progressive.start_scale=1", "model.train.progressive.warmup_epochs=0.25"],
}  # fmt: skip


def tokenizer_file(folder: Path) -> Path:
    """The transformer stages' tokenizer: a seeded initialisation (not trained), so their curves do not
    depend on the tokenizer's."""
    from dataclasses import asdict

    from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
    from var_lightning.tokenizer.config import VQVAEConfig

    torch.manual_seed(0)
    cfg = VQVAEConfig(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, vocab_size=64, z_channels=8, norm_groups=8,
                      patch_nums=(1, 2, 4))  # fmt: skip
    vae = MultiScaleVQVAE(cfg)
    path = folder / "tokenizer.ckpt"
    torch.save({"state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()},
                "hyper_parameters": {"tokenizer": asdict(cfg)}, "var_lightning": {"stage": "tokenizer"}}, path)  # fmt: skip
    return path


def run_curve(name: str, folder: Path) -> list[float]:
    """The training loss at each of ``STEPS`` optimizer steps of case ``name`` (a real var-train run)."""
    import pytorch_lightning as L

    from tests.helpers import compose_config
    from var_lightning.cli.train import build

    overrides = [*CASES[name], *DATA, *COMMON]
    if name != "tokenizer":
        overrides.append(f"model.tokenizer_ckpt={tokenizer_file(folder)}")
    cfg = compose_config("train", overrides, run_dir=folder / name)
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            value = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(value))

    L.seed_everything(cfg.seed, workers=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        datamodule, model, trainer = build(cfg)
        trainer.callbacks.append(Record())
        trainer.fit(model, datamodule=datamodule)
    finally:
        torch.set_num_threads(threads)
    return losses


def golden_path(name: str) -> Path:
    return HERE / f"{name}.json"


def write(names: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            losses = run_curve(name, Path(tmp))
            record = {"case": name, "overrides": CASES[name], "steps": STEPS, "rtol": RTOL, "atol": ATOL,
                      "torch": torch.__version__, "loss": losses}  # fmt: skip
            golden_path(name).write_text(json.dumps(record, indent=1) + "\n")
            print(f"{golden_path(name)}: {len(losses)} steps, loss {losses[0]:.4f} -> {losses[-1]:.4f}")


if __name__ == "__main__":
    write(sys.argv[1:] or list(CASES))
