"""VAR transformer: presets, the depth rule, the mask, initialisation, KV-cache parity."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import TINY_PN, tiny_vae, tiny_var
from var_lightning.transformer.config import PRESETS, VARConfig, preset
from var_lightning.transformer.masks import block_causal_bias
from var_lightning.transformer.sampling import sample
from var_lightning.transformer.var import VAR

PUBLISHED = {
    "d16": 310_283_520,
    "d20": 600_917_136,
    "d24": 1_033_399_360,
    "d30": 2_010_020_356,
    "d36-s": 2_353_893_904,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_equal_published(name):
    with torch.device("meta"):
        model = VAR(preset(name))
    assert model.num_params() == PUBLISHED[name]


def test_depth_rule():
    cfg = VARConfig(depth=20)
    assert (cfg.width, cfg.num_heads, cfg.head_dim) == (1280, 20, 64)
    assert math.isclose(cfg.drop_path_rate, 0.1 * 20 / 24)
    assert math.isclose(cfg.resolved_init_std, math.sqrt(1 / (3 * 1280)))
    assert preset("d36-s").seq_len == 2240 and preset("d16").seq_len == 680
    with pytest.raises(ValueError, match="model.transformer.width"):
        VARConfig(depth=2, width=100, num_heads=3)
    with pytest.raises(ValueError, match="unknown VAR preset"):
        preset("d17")
    assert set(PUBLISHED) <= set(PRESETS)


def test_block_causal_mask():
    bias = block_causal_bias((1, 2))[0, 0]
    allowed = bias == 0
    assert allowed.tolist() == [
        [True, False, False, False, False],
        [True, True, True, True, True],
        [True, True, True, True, True],
        [True, True, True, True, True],
        [True, True, True, True, True],
    ]


def test_later_scales_do_not_change_earlier_logits():
    model = tiny_var().eval()
    L = sum(p * p for p in TINY_PN)
    x = torch.randn(2, L - 1, 8)
    label = torch.tensor([0, 3])
    logits = model(label, x)
    assert logits.shape == (2, L, 64) and logits.dtype == torch.float32
    # perturb the inputs of the last scale: logits of all earlier scales are unchanged
    x2 = x.clone()
    x2[:, -16:] += torch.randn(2, 16, 8)
    logits2 = model(label, x2)
    torch.testing.assert_close(logits2[:, : L - 16], logits[:, : L - 16], atol=1e-6, rtol=0)
    assert (logits2[:, L - 16 :] - logits[:, L - 16 :]).abs().max() > 1e-4
    # a prefix of the input gives the prefix of the logits
    torch.testing.assert_close(model(label, x[:, :4]), logits[:, :5], atol=1e-6, rtol=1e-5)


def test_initialisation_rules():
    torch.manual_seed(0)
    model = VAR(VARConfig(depth=4, num_classes=10, vocab_size=128, init_adaln=0.5, init_adaln_gamma=1e-3))
    C, std = model.C, model.cfg.resolved_init_std
    w = model.blocks[0].ada_lin[-1].weight
    assert w[: 2 * C].std() < 2e-3 * std  # gamma rows x 1e-3
    assert 0.4 * std < w[2 * C :].std() < 0.6 * std  # scale/shift rows x 0.5
    assert model.head.weight.std() < 0.03 * std and model.head.bias.abs().sum() == 0
    fc2 = model.blocks[1].ffn.fc2.weight.std()
    assert abs(fc2 / (std / math.sqrt(8)) - 1) < 0.1
    scale_mul = model.blocks[0].attn.scale_mul_1H11
    torch.testing.assert_close(scale_mul.exp(), torch.full_like(scale_mul, 4.0))
    shared = VAR(VARConfig(depth=2, num_classes=10, vocab_size=64, shared_aln=True, init_adaln_gamma=1e-3))
    # unlike the published code, the shared AdaLN linear's gamma rows start near zero too
    assert shared.shared_ada_lin[-1].weight[: 2 * shared.C].std() < 2e-3 * shared.cfg.resolved_init_std


def test_plain_attention_scale():
    model = tiny_var(attn_l2_norm=False)
    attn = model.blocks[0].attn
    assert not hasattr(attn, "scale_mul_1H11")
    assert math.isclose(attn.scale, 0.25 / math.sqrt(32))


@pytest.mark.parametrize("shared_aln", [False, True])
@pytest.mark.parametrize("l2", [True, False])
def test_kv_cache_sampling_matches_teacher_forcing(shared_aln, l2):
    vae, model = tiny_vae().eval(), tiny_var(shared_aln=shared_aln, attn_l2_norm=l2).eval()
    logs = {}
    out = sample(
        model,
        vae,
        3,
        labels=[0, 2, 4],
        cfg=1.0,
        top_k=10,
        seed=3,
        logits_hook=lambda si, lg: logs.__setitem__(si, lg),
    )
    ar = torch.cat([logs[i] for i in range(len(TINY_PN))], dim=1)
    # teacher-force the sampled tokens through the masked forward: conditional and unconditional halves
    x = vae.quantize.idx_to_var_input(out.tokens)
    cond = model(out.labels, x)
    uncond = model(torch.full_like(out.labels, model.num_classes), x)
    K = len(TINY_PN)
    pieces = []
    for si, (a, b) in enumerate(model.begin_ends):
        t = 1.0 * si / (K - 1)
        pieces.append((1 + t) * cond[:, a:b] - t * uncond[:, a:b])
    torch.testing.assert_close(ar, torch.cat(pieces, 1), atol=1e-5, rtol=1e-5)


def test_drop_path_only_in_training():
    model = tiny_var(drop_path_rate=0.5)
    x, label = torch.randn(2, 29, 8), torch.tensor([0, 1])
    model.eval()
    torch.testing.assert_close(model(label, x), model(label, x))
    assert model.blocks[-1].drop_path.p == pytest.approx(0.5)
    assert model.blocks[0].drop_path.p == 0.0


def test_embeddings_take_the_input_in_the_weights_dtype():
    """A bf16 parameter policy (FSDP mixed precision) holds word_embed in bf16 while the tokenizer's
    teacher-forcing input is fp32: the forward must cast, not fail with 'mat1 and mat2 must have the same
    dtype'."""
    var = tiny_var().eval()
    label_B = torch.tensor([0, 1])
    x_BLCv = torch.randn(2, var.L - var.first_l, var.Cvae)
    ref_BLV = var(label_B, x_BLCv)
    var.word_embed.to(torch.bfloat16)
    out_BLV = var(label_B, x_BLCv)
    assert out_BLV.dtype == torch.float32
    torch.testing.assert_close(out_BLV, ref_BLV, atol=5e-2, rtol=0)
