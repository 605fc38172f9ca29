"""Multi-scale VQ-VAE: the released architecture, API round trips and input checks."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY_PN, tiny_vae
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig


def test_released_tokenizer_shape_and_parameter_counts():
    with torch.device("meta"):
        vae = MultiScaleVQVAE(VQVAEConfig(ch=160, vocab_size=4096, z_channels=32, share_quant_resi=4))
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(vae) == 108_948_355
    assert (count(vae.encoder), count(vae.decoder), count(vae.quantize)) == (44_107_872, 64_653_923, 168_064)
    sd = vae.state_dict()
    assert len(sd) == 324
    assert sd["quantize.ema_vocab_hit_SV"].shape == (10, 4096)
    assert sd["decoder.up.3.block.0.nin_shortcut.weight"].shape == (320, 640, 1, 1)
    assert "decoder.up.4.attn.2.qkv.weight" in sd and "encoder.down.4.attn.1.proj_out.weight" in sd
    assert vae.cfg.image_size == 256 and vae.cfg.downsample == 16


def test_tokens_decode_to_the_reconstruction():
    vae = tiny_vae().eval()
    img = torch.rand(2, 3, 8, 8) * 2 - 1
    idx = vae.img_to_idx(img)
    assert [t.shape for t in idx] == [(2, p * p) for p in TINY_PN] and idx[0].dtype == torch.long
    rec = vae.img_to_reconstruction(img)
    torch.testing.assert_close(vae.idx_to_img(idx), rec, atol=1e-5, rtol=1e-5)
    prog = vae.idx_to_progressive_imgs(idx)
    assert len(prog) == len(TINY_PN)
    torch.testing.assert_close(prog[-1], rec, atol=1e-5, rtol=1e-5)
    prog2 = vae.img_to_reconstruction(img, progressive=True)
    torch.testing.assert_close(prog2[0], prog[0], atol=1e-5, rtol=1e-5)
    assert rec.min() >= -1 and rec.max() <= 1
    idx2, x = vae.img_to_var_input(img)
    assert x.shape == (2, sum(p * p for p in TINY_PN) - 1, 8)
    assert all(torch.equal(a, b) for a, b in zip(idx, idx2, strict=True))


def test_training_forward_backward():
    vae = tiny_vae().train()
    img = torch.rand(2, 3, 8, 8) * 2 - 1
    rec, q = vae(img)
    assert rec.shape == img.shape
    ((rec - img).abs().mean() + q.vq_loss).backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0
    assert vae.decoder.last_layer.grad.abs().sum() > 0


def test_wrong_image_size_names_the_expected_size():
    vae = tiny_vae()
    with pytest.raises(ValueError, match="images must be 8x8"):
        vae.img_to_idx(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):
        vae.img_to_idx(torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize(
    ("kw", "key"),
    [
        (dict(vocab_size=0), "vocab_size"),
        (dict(ch=48), "ch"),
        (dict(patch_nums=(1, 3, 2)), "patch_nums"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_config_values_out_of_range_name_the_key(kw, key):
    with pytest.raises(ValueError, match=f"model.tokenizer.{key}"):
        VQVAEConfig(**kw)


def test_usage_buffer_of_another_schedule_loads():
    vae = tiny_vae()
    sd = vae.state_dict()
    sd["quantize.ema_vocab_hit_SV"] = torch.ones(7, 64)
    vae.load_state_dict(sd)
    assert vae.quantize.ema_vocab_hit_SV.shape == (4, 64)
