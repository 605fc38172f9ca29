"""Sampling: seeds, guidance, filtering and argument checks."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY_PN, tiny_vae, tiny_var
from var_lightning.transformer.sampling import check_compatible, filter_logits_, sample, sample_tokens


@pytest.fixture
def models():
    return tiny_vae().eval(), tiny_var().eval()


def test_same_seed_same_samples(models):
    vae, var = models
    a = sample(var, vae, 4, cfg=1.5, top_k=20, top_p=0.9, seed=7)
    b = sample(var, vae, 4, cfg=1.5, top_k=20, top_p=0.9, seed=7)
    c = sample(var, vae, 4, cfg=1.5, top_k=20, top_p=0.9, seed=8)
    assert torch.equal(a.labels, b.labels)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
    assert torch.equal(a.images, b.images)
    assert not all(torch.equal(x, y) for x, y in zip(a.tokens, c.tokens, strict=True))
    assert a.images.shape == (4, 3, 8, 8) and a.images.min() >= 0 and a.images.max() <= 1
    assert [t.shape for t in a.tokens] == [(4, p * p) for p in TINY_PN]


def test_more_smooth_is_seeded(models):
    vae, var = models
    a = sample(var, vae, 2, labels=1, cfg=3.0, top_k=30, top_p=0.95, more_smooth=True, seed=0)
    b = sample(var, vae, 2, labels=1, cfg=3.0, top_k=30, top_p=0.95, more_smooth=True, seed=0)
    assert torch.equal(a.images, b.images)


def test_zero_guidance_gives_conditional_logits(models):
    vae, var = models
    logs = {}
    out = sample(
        var, vae, 2, labels=[1, 2], cfg=2.0, seed=0, logits_hook=lambda si, lg: logs.__setitem__(si, lg)
    )
    # at the first scale t = cfg * 0 = 0, so the guided logits are the conditional ones
    x = vae.quantize.idx_to_var_input(out.tokens)
    cond = var(out.labels, x)
    torch.testing.assert_close(logs[0], cond[:, :1], atol=1e-5, rtol=1e-5)
    # and with cfg = 0 every scale's logits are conditional
    logs0 = {}
    out0 = sample(
        var, vae, 2, labels=[1, 2], cfg=0.0, seed=0, logits_hook=lambda si, lg: logs0.__setitem__(si, lg)
    )
    cond0 = var(out0.labels, vae.quantize.idx_to_var_input(out0.tokens))
    torch.testing.assert_close(torch.cat([logs0[i] for i in range(4)], 1), cond0, atol=1e-5, rtol=1e-5)


def test_top_k_one_is_argmax(models):
    vae, var = models
    logs = {}
    out = sample(
        var,
        vae,
        3,
        labels=[0, 1, 2],
        cfg=1.5,
        top_k=1,
        seed=5,
        logits_hook=lambda si, lg: logs.__setitem__(si, lg),
    )
    for si, toks in enumerate(out.tokens):
        assert torch.equal(toks, logs[si].argmax(-1))


def test_filter_keeps_ties_and_top_p_rule():
    logits = torch.tensor([[[3.0, 3.0, 1.0, 0.0]]])
    filter_logits_(logits, top_k=1)
    assert torch.isfinite(logits).tolist() == [[[True, True, False, False]]]
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().view(1, 1, 4).clone()
    filter_logits_(logits, top_p=0.8)
    # ascending cumsum 0.05, 0.2, 0.5, 1.0: remove where <= 0.2 -> the two least likely tokens
    assert torch.isfinite(logits).tolist() == [[[True, True, False, False]]]
    logits = torch.tensor([[[0.0, 0.0]]])
    filter_logits_(logits, top_p=1e-6)
    assert torch.isfinite(logits).any()


def test_sample_tokens_follows_probabilities():
    g = torch.Generator().manual_seed(0)
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1, 1e-9])).view(1, 1, 4).expand(1, 4000, 4).clone()
    idx = sample_tokens(logits, generator=g)
    freq = torch.bincount(idx.view(-1), minlength=4).float() / 4000
    torch.testing.assert_close(freq[:3], torch.tensor([0.7, 0.2, 0.1]), atol=0.03, rtol=0)


def test_bad_arguments_are_clear(models):
    vae, var = models
    with pytest.raises(ValueError, match="class id 9 is out of range"):
        sample(var, vae, 2, labels=[0, 9])
    with pytest.raises(ValueError, match="top_k=65"):
        sample(var, vae, 1, top_k=65)
    with pytest.raises(ValueError, match="cfg=-1"):
        sample(var, vae, 1, cfg=-1)
    with pytest.raises(ValueError, match="top_p"):
        sample(var, vae, 1, top_p=1.5)


def test_mismatched_tokenizer_is_a_clear_error():
    vae = tiny_vae(patch_nums=(1, 2, 4))
    var = tiny_var()
    with pytest.raises(ValueError, match="scale schedules differ"):
        check_compatible(var, vae)


def test_top_p_zero_and_one_are_both_off_and_values_outside_name_the_convention():
    from var_lightning.transformer.sampling import TOP_P_RULE, check_sampling_args, filter_logits_

    logits = torch.randn(2, 3, 50)
    logits[..., :5] = -torch.inf  # top-k's removals: exact zeros of probability stay as they are
    for off in (0.0, 1.0):
        assert torch.equal(filter_logits_(logits.clone(), top_p=off), logits)
    assert (filter_logits_(logits.clone(), top_p=0.5) == -torch.inf).sum() > 5 * 6  # 0.5 does filter

    class V:
        V = 64

    with pytest.raises(
        ValueError, match=r"top_p=1.5 is outside \[0, 1\] \(.*0 or 1 = off\) \(key sampling.top_p\)"
    ):
        check_sampling_args(V(), 1.0, 0, 1.5)
    assert "0 or 1 = off" in TOP_P_RULE
