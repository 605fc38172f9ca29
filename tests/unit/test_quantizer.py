"""Multi-scale residual quantizer: round trips, prefix properties, phi map, usage statistics."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY_PN, tiny_vae
from var_lightning.tokenizer.quantizer import MultiScaleQuantizer, phi_index_map
from var_lightning.tokenizer.usage import CodebookUsage


def test_phi_map_matches_released_tokenizer():
    assert phi_index_map(10, 4) == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert phi_index_map(5, 4) == [0, 1, 2, 2, 3]
    assert phi_index_map(10, 1) == [0] * 10
    assert phi_index_map(1, 4) == [0]
    # one phi per scale: every phi is used, in order
    assert phi_index_map(10, 10) == list(range(10))


@pytest.mark.parametrize("share", [0, 1, 4])
def test_phi_sharing_modes(share):
    q = MultiScaleQuantizer(32, 8, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16), share_quant_resi=share)
    expected = {0: 10, 1: 1, 4: 4}[share]
    assert len(q.quant_resi.qresi_ls) == expected
    assert max(q.quant_resi.index_map) == expected - 1


def test_identity_phi_when_ratio_is_zero():
    q = MultiScaleQuantizer(32, 8, TINY_PN, quant_resi=0.0)
    h = torch.randn(2, 8, 4, 4)
    assert torch.equal(q.quant_resi(h, 0), h)
    assert not any(k.startswith("quant_resi") for k in q.state_dict())


@pytest.mark.parametrize("share", [0, 1, 4])
@pytest.mark.parametrize("znorm", [False, True])
def test_decoding_tokens_reproduces_forward_fhat(share, znorm):
    q = MultiScaleQuantizer(64, 8, TINY_PN, share_quant_resi=share, using_znorm=znorm).eval()
    f = torch.randn(3, 8, 4, 4)
    out = q(f)
    idx = q.f_to_idx(f)
    fhat = q.idx_to_fhat(idx)
    # the forward's straight-through output equals f_hat in value
    torch.testing.assert_close(out.f_hat_BChw, fhat, atol=1e-5, rtol=1e-5)
    # the no-grad encoder's cumulative f_hat agrees too
    torch.testing.assert_close(q.f_to_fhats(f)[-1], fhat, atol=1e-5, rtol=1e-5)
    # hit counts: one token per position per scale
    assert out.hits_KV.sum(1).tolist() == [3 * pn * pn for pn in TINY_PN]


def test_residual_quantization_improves_with_scales():
    torch.manual_seed(1)
    q = MultiScaleQuantizer(256, 4, TINY_PN, quant_resi=0.0).eval()
    f = torch.randn(4, 4, 4, 4)
    errs = [(fh - f).square().mean().item() for fh in q.f_to_fhats(f)]
    assert errs[-1] < errs[0]


def test_straight_through_and_losses_have_gradients():
    q = MultiScaleQuantizer(64, 8, TINY_PN)
    f = torch.randn(2, 8, 4, 4, requires_grad=True)
    out = q(f)
    (out.f_hat_BChw.sum() + out.vq_loss).backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert q.embedding.weight.grad is not None and q.embedding.weight.grad.abs().sum() > 0
    assert q.quant_resi.qresi_ls[0].weight.grad is not None


def test_token_prefix_is_independent_of_later_scales():
    q = MultiScaleQuantizer(64, 8, TINY_PN).eval()
    f = torch.randn(2, 8, 4, 4)
    full = q.f_to_idx(f)
    for k in range(1, len(TINY_PN)):
        prefix = q.f_to_idx(f, TINY_PN[:k])
        assert len(prefix) == k
        for a, b in zip(prefix, full, strict=False):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="prefix"):
        q.f_to_idx(f, (1, 3))


def test_teacher_forcing_input_shape_and_prefix():
    q = MultiScaleQuantizer(64, 8, TINY_PN).eval()
    idx = q.f_to_idx(torch.randn(2, 8, 4, 4))
    x = q.idx_to_var_input(idx)
    L = sum(p * p for p in TINY_PN)
    assert x.shape == (2, L - 1, 8)
    # inputs of scale k depend only on tokens of scales < k
    for k in range(1, len(TINY_PN) + 1):
        xk = q.idx_to_var_input(idx[:k])
        n = sum(p * p for p in TINY_PN[1:k])
        assert torch.equal(xk, x[:, :n])
    # changing the last scale's tokens leaves the input unchanged
    idx2 = [t.clone() for t in idx]
    idx2[-1] = (idx2[-1] + 1) % 64
    assert torch.equal(q.idx_to_var_input(idx2), x)
    # the input for scale 2 is the area-downsampled first-scale f_hat
    f1 = q.idx_to_fhat(idx[:1])
    want = torch.nn.functional.interpolate(f1, size=(2, 2), mode="area").flatten(2).transpose(1, 2)
    torch.testing.assert_close(x[:, :4], want)


def test_autoregressive_step_matches_teacher_forcing():
    q = MultiScaleQuantizer(64, 8, TINY_PN).eval()
    idx = q.f_to_idx(torch.randn(2, 8, 4, 4))
    x = q.idx_to_var_input(idx)
    f_hat = torch.zeros(2, 8, 4, 4)
    inputs = []
    for si, pn in enumerate(TINY_PN):
        h = q.embedding(idx[si]).transpose(1, 2).reshape(2, 8, pn, pn)
        f_hat, nxt = q.next_autoregressive_input(si, f_hat, h)
        if si < len(TINY_PN) - 1:
            inputs.append(nxt.flatten(2).transpose(1, 2))
    torch.testing.assert_close(torch.cat(inputs, 1), x)
    torch.testing.assert_close(f_hat, q.idx_to_fhat(idx), atol=1e-5, rtol=1e-5)


def test_wrong_latent_size_is_a_clear_error():
    q = MultiScaleQuantizer(64, 8, TINY_PN)
    with pytest.raises(ValueError, match="scale schedule ends at 4"):
        q(torch.randn(1, 8, 5, 5))


def test_usage_statistics_without_process_group():
    assert not torch.distributed.is_initialized()
    usage = CodebookUsage(num_scales=2, vocab_size=8)
    hits = torch.zeros(2, 8)
    hits[0] = 5.0  # uniform over all 8 codes
    hits[1, 3] = 40.0  # a single code
    usage.update(hits)
    stats = usage.compute(sync=True)
    torch.testing.assert_close(stats["usage"], torch.tensor([1.0, 1 / 8], dtype=torch.float64))
    torch.testing.assert_close(stats["perplexity"], torch.tensor([8.0, 1.0], dtype=torch.float64))
    usage.reset()
    assert usage.compute()["usage"].sum() == 0


def test_ema_hits_update_in_training_only():
    vae = tiny_vae()
    img = torch.rand(2, 3, 8, 8) * 2 - 1
    vae.eval()
    vae(img)
    assert vae.quantize.ema_vocab_hit_SV.sum() == 0
    vae.train()
    vae(img)
    assert vae.quantize.ema_vocab_hit_SV.sum(1).tolist() == [2.0 * p * p for p in TINY_PN]


def test_codebook_alarms_name_a_collapsed_scale_and_a_dead_codebook():
    from var_lightning.tokenizer.usage import codebook_alarms

    V = 64
    healthy = torch.ones(3, V) * 4  # every code used evenly on every scale
    assert codebook_alarms(healthy, (1, 2, 4)) == []
    collapsed = healthy.clone()
    collapsed[1] = 0
    collapsed[1, 7] = 200  # the 2x2 scale: one code for every position of every image
    (alarm,) = codebook_alarms(collapsed, (1, 2, 4))
    assert alarm.startswith("codebook collapse at scale(s) 2x2 (perplexity 1.00)")
    assert "model.tokenizer.beta" in alarm
    one_global_code = healthy.clone()
    one_global_code[0] = 0
    one_global_code[0, 3] = 200  # 1x1: one mean colour on homogeneous data is not a collapse
    assert codebook_alarms(one_global_code, (1, 2, 4)) == []
    dead = healthy.clone()
    dead[2] = 0
    dead[2, :2] = 500  # the last scale: 2 of 64 codes
    (alarm,) = codebook_alarms(dead, (1, 2, 4))
    assert alarm.startswith("dead codebook: the last scale uses 3.1% of the 64 codes")
    few = torch.zeros(3, V)
    few[:, 0] = 3  # too few tokens to judge: no alarm
    assert codebook_alarms(few, (1, 2, 4)) == []
