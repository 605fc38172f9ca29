"""The raster-scan AR baseline: causal teacher forcing, the KV-cache sampler against it, its tokens, its
parameter and FLOP model against the module and torch's counter, and loading its checkpoints."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from tests.helpers import tiny_vae, tiny_var_cfg
from tests.unit.test_scaling import TINY_CONFIGS
from var_lightning.checkpoints.load import load_models
from var_lightning.objectives.losses import raster_losses
from var_lightning.scaling.flops import ar_flops, ar_num_params, num_params, var_flops
from var_lightning.training.ar_module import ARModule
from var_lightning.transformer.ar import ARTransformer, raster_tokens, raster_tokens_to_img
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.fast_sampling import build_sampler


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return ARTransformer(tiny_var_cfg(init_head=1.0)).eval(), tiny_vae().eval()


def _images(vae, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, vae.cfg.image_size, vae.cfg.image_size, generator=g) * 2 - 1


def test_tokens_are_the_nearest_code_of_every_latent_position_and_decode(models):
    _, vae = models
    img = _images(vae)
    idx_BN = raster_tokens(vae, img)
    f = vae.encode(img).detach()
    B, C, h, w = f.shape
    codebook = vae.quantize.embedding.weight
    expected = torch.cdist(f.permute(0, 2, 3, 1).reshape(-1, C), codebook).argmin(1).view(B, h * w)
    assert idx_BN.shape == (B, h * w) and torch.equal(idx_BN, expected)
    assert raster_tokens_to_img(vae, idx_BN).shape == img.shape


def test_teacher_forcing_is_causal(models):
    model, vae = models
    idx_BN = raster_tokens(vae, _images(vae))
    label_B = torch.tensor([0, 1, 2])
    full = model(label_B, idx_BN)
    assert full.shape == (3, model.L, model.V)
    changed = idx_BN.clone()
    changed[:, 9] = (changed[:, 9] + 1) % model.V
    other = model(label_B, changed)
    torch.testing.assert_close(other[:, :10], full[:, :10])  # position 9 predicts token 9 from tokens < 9
    assert not torch.allclose(other[:, 10:], full[:, 10:])
    torch.testing.assert_close(model(label_B, idx_BN[:, :5]), full[:, :5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_kv_cache_sampler_logits_equal_the_teacher_forced_ones(models, cfg):
    model, vae = models
    label_B = torch.tensor([0, 4])
    seen = []
    out = build_sampler(model, vae)(2, labels=label_B, cfg=cfg, top_k=20, top_p=0.9, seed=3,
                    logits_hook=lambda i, logits: seen.append(logits))  # fmt: skip
    tokens = out.tokens[0]
    cond = model(label_B, tokens)
    if cfg:
        uncond = model(torch.full_like(label_B, model.num_classes), tokens)
        cond = (1 + cfg) * cond - cfg * uncond
    torch.testing.assert_close(torch.cat(seen, dim=1), cond, rtol=1e-4, atol=1e-4)
    assert out.images.shape == (2, 3, vae.cfg.image_size, vae.cfg.image_size)
    assert float(out.images.min()) >= 0 and float(out.images.max()) <= 1
    assert model.blocks[0].attn.kv_cache is None  # caches removed after sampling


def test_sampling_is_seeded_and_checks_its_arguments(models):
    model, vae = models
    a = build_sampler(model, vae)(4, cfg=1.0, top_k=10, seed=7)
    b = build_sampler(model, vae)(4, cfg=1.0, top_k=10, seed=7)
    c = build_sampler(model, vae)(4, cfg=1.0, top_k=10, seed=8)
    assert torch.equal(a.tokens[0], b.tokens[0]) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.tokens[0], c.tokens[0])
    with pytest.raises(ValueError, match="class id 9 is out of range"):
        build_sampler(model, vae)(1, labels=[9])
    with pytest.raises(ValueError, match="top_k"):
        build_sampler(model, vae)(1, top_k=10_000)
    with pytest.raises(ValueError, match="editing needs a VAR model"):
        build_sampler(model, vae)(1, edit=object())
    with pytest.raises(ValueError, match="more_smooth"):
        build_sampler(model, vae)(1, more_smooth=True)


def test_raster_losses_and_token_pyramids_are_refused(models):
    model, vae = models
    img, label_B = _images(vae), torch.tensor([0, 1, 2])
    out = raster_losses(model, vae, (img, label_B))
    assert out["loss"].requires_grad and torch.equal(out["loss"].detach(), out["loss_last"])
    with pytest.raises(ValueError, match="the AR baseline needs images"):
        raster_losses(model, vae, (torch.zeros(3, 30, dtype=torch.long), label_B))


@pytest.mark.parametrize("overrides", TINY_CONFIGS)
def test_param_and_flop_model_match_the_module_and_torchs_counter(overrides):
    cfg = VARConfig(**overrides)
    model = ARTransformer(cfg)
    assert ar_num_params(cfg) == sum(p.numel() for p in model.parameters())
    B = 2
    label_B = torch.randint(0, cfg.num_classes, (B,))
    idx_BN = torch.randint(0, cfg.vocab_size, (B, model.L))
    with sdpa_kernel(SDPBackend.MATH):  # dense matmuls the counter sees (see test_scaling)
        with FlopCounterMode(display=False) as fwd:
            logits = model(label_B, idx_BN)
        with FlopCounterMode(display=False) as bwd:
            logits.logsumexp(-1).mean().backward()
    dense = ar_flops(cfg, attention="dense")
    assert dense["forward"] * B == fwd.get_total_flops()  # every matmul counted exactly
    assert dense["train"] * B == pytest.approx(fwd.get_total_flops() + bwd.get_total_flops(), rel=0.05)
    causal = ar_flops(cfg)
    assert causal["attn_pairs"] == int(torch.isfinite(model.attn_bias_for_masking).sum())
    # next to VAR of the same shape: AR has fewer tokens (h * w < L), VAR's word_embed vs AR's token table
    assert causal["seq_len"] == cfg.patch_nums[-1] ** 2 < var_flops(cfg)["seq_len"]
    assert ar_num_params(cfg) - num_params(cfg) != 0


def test_an_ar_checkpoint_loads_as_the_ar_stage_and_gets_the_ar_sampler(models, tmp_path):
    _, vae = models
    module = ARModule(transformer=asdict(tiny_var_cfg()), tokenizer=asdict(vae.cfg))
    path = tmp_path / "ar.ckpt"
    torch.save({"var_lightning": {"stage": "ar"}, "hyper_parameters": dict(module.hparams),
                "state_dict": module.state_dict()}, path)  # fmt: skip
    var, vae2, info = load_models(path)
    assert isinstance(var, ARTransformer) and info.stage == "ar" and info.as_dict()["stage"] == "ar"
    draw = build_sampler(var, vae2, "fast")
    out = draw(2, labels=[0, 1], cfg=1.0, top_k=0, top_p=0.0, seed=0)
    ref = build_sampler(module.var.eval(), module.vae)(2, labels=[0, 1], cfg=1.0, top_k=0, top_p=0.0, seed=0)
    assert torch.equal(out.tokens[0], ref.tokens[0])


def test_progressive_training_is_refused_for_the_ar_baseline(models):
    _, vae = models
    with pytest.raises(ValueError, match="model.train.progressive.until"):
        ARModule(
            transformer=asdict(tiny_var_cfg()),
            tokenizer=asdict(vae.cfg),
            train={"progressive": {"until": 0.5}},
        )
