"""Tiny models shared by tests (fast on 2 CPU cores)."""

from __future__ import annotations

from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.var import VAR

TINY_PN = (1, 2, 3, 4)


def tiny_vae_cfg(**kw) -> VQVAEConfig:
    base = dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64, z_channels=8, patch_nums=TINY_PN)
    base.update(kw)
    return VQVAEConfig(**base)


def tiny_vae(**kw) -> MultiScaleVQVAE:
    return MultiScaleVQVAE(tiny_vae_cfg(**kw))


def tiny_var_cfg(**kw) -> VARConfig:
    base = dict(
        depth=2,
        width=64,
        num_heads=2,
        num_classes=5,
        vocab_size=64,
        cvae=8,
        patch_nums=TINY_PN,
        drop_path_rate=0.0,
        init_adaln_gamma=0.5,
    )
    base.update(kw)
    return VARConfig(**base)


def tiny_var(**kw) -> VAR:
    return VAR(tiny_var_cfg(**kw))
