"""Tokenizer losses: PatchGAN discriminator, LPIPS construction (never downloading), VQGANLoss."""

from __future__ import annotations

import math
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from var_lightning.tokenizer.discriminator import (
    PatchDiscriminator,
    hinge_d_loss,
    hinge_g_loss,
    vanilla_d_loss,
    vanilla_g_loss,
)
from var_lightning.tokenizer.losses import VQGANLoss
from var_lightning.tokenizer.perceptual import FrozenLPIPS, backbone_path, build_perceptual

# squeeze is the cheapest LPIPS backbone; a random one never touches the network.
FAST = dict(perceptual_net="squeeze", perceptual_random_backbone=True, disc_ch=8, disc_norm="group")


def _images(batch: int = 2, size: int = 32) -> torch.Tensor:
    return torch.rand(batch, 3, size, size) * 2 - 1


def _tiny_decoder() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.SiLU(), nn.Conv2d(8, 3, 3, padding=1))


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """An empty hub dir and every torchvision/torch.hub download failing as it does without internet."""

    def fail(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fail)
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fail)
    return tmp_path / "hub"


# ---------------------------------------------------------------------- discriminator
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_discriminator_shape_and_init(norm):
    disc = PatchDiscriminator(ch=16, n_layers=3, norm=norm)
    assert disc(_images(2, 32)).shape == (2, 1, 32 // 8 - 2, 32 // 8 - 2)
    assert PatchDiscriminator(ch=8, n_layers=2, norm=norm)(_images(3, 16)).shape == (3, 1, 2, 2)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert all(abs(c.weight.std().item() - 0.02) < 0.005 for c in convs[1:])
    norms = [m for m in disc.modules() if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))]
    assert len(norms) == (0 if norm == "none" else 3)
    assert all((n.weight - 1).abs().max() < 0.2 for n in norms)
    assert (len(list(disc.buffers())) > 0) == (norm == "batch")  # group/none: no cross-rank state


def test_discriminator_rejects_small_images():
    with pytest.raises(ValueError, match="model.loss.disc_layers"):
        PatchDiscriminator(ch=8, n_layers=3)(_images(1, 16))


def test_gan_losses_on_hand_made_logits():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.0])
    # relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 2]
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (2.5 / 3 + 3 / 3))
    assert hinge_d_loss(torch.full((4,), 1.0), torch.full((4,), -3.0)).item() == 0.0
    assert hinge_g_loss(fake).item() == pytest.approx(1 / 3)
    zeros = torch.zeros(5)
    assert vanilla_d_loss(zeros, zeros).item() == pytest.approx(math.log(2))
    assert vanilla_g_loss(zeros).item() == pytest.approx(math.log(2))


# ---------------------------------------------------------------------- generator / discriminator steps
def test_generator_loss_before_and_after_disc_start():
    loss_fn = VQGANLoss(disc_start=5, **FAST)
    img, dec, z = _images(), _tiny_decoder(), torch.randn(2, 4, 32, 32)
    rec, vq = dec(z), torch.tensor(0.3)
    expected_keys = {
        "loss",
        "rec_l1",
        "rec_l2",
        "perceptual",
        "vq",
        "nll",
        "g_loss",
        "d_weight",
        "disc_factor",
    }

    before, logs = loss_fn.generator_loss(img, rec, vq, global_step=4, last_layer=dec[2].weight)
    assert set(logs) == expected_keys and all(not v.requires_grad for v in logs.values())
    assert logs["disc_factor"].item() == 0 and logs["g_loss"].item() == 0 and logs["d_weight"].item() == 0
    assert logs["perceptual"].item() > 0
    assert before.item() == pytest.approx(logs["rec_l1"].item() + logs["perceptual"].item() + 0.3, rel=1e-5)
    assert not loss_fn.disc_active(4) and loss_fn.disc_active(5)

    after, logs = loss_fn.generator_loss(img, rec, vq, global_step=5, last_layer=dec[2].weight)
    assert logs["disc_factor"].item() == 1 and logs["g_loss"].item() != 0 and logs["d_weight"].item() > 0
    gan = logs["d_weight"] * logs["g_loss"]
    assert after.item() == pytest.approx((before.detach() + gan).item(), rel=1e-5)


def test_adaptive_weight_matches_manual_computation():
    loss_fn = VQGANLoss(perceptual_weight=0, disc_weight=0.7, vq_weight=0.5, **FAST)
    img, dec, z = _images(), _tiny_decoder(), torch.randn(2, 4, 32, 32)
    rec, last = dec(z), dec[2].weight
    loss, logs = loss_fn.generator_loss(img, rec, torch.tensor(0.2), global_step=0, last_layer=last)

    nll = (rec - img).abs().mean()
    g_loss = -loss_fn.discriminator(rec).mean()
    nll_grad = torch.autograd.grad(nll, last, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last, retain_graph=True)[0]
    d_weight = (nll_grad.norm() / (g_grad.norm() + 1e-4)).clamp(0, 1e4) * 0.7
    torch.testing.assert_close(logs["d_weight"], d_weight)
    torch.testing.assert_close(logs["g_loss"], g_loss.detach())
    torch.testing.assert_close(loss.detach(), (nll + 0.5 * 0.2 + d_weight * g_loss).detach())

    clamped = VQGANLoss(perceptual_weight=0, disc_weight=0.7, adaptive_weight_max=1e-3, **FAST)
    _, logs = clamped.generator_loss(img, rec, torch.tensor(0.2), global_step=0, last_layer=last)
    assert logs["d_weight"].item() == pytest.approx(0.7e-3)
    # validation-style calls fall back to disc_weight
    with torch.no_grad():
        _, logs = loss_fn.generator_loss(img, dec(z), torch.tensor(0.2), global_step=0, last_layer=last)
    assert logs["d_weight"].item() == pytest.approx(0.7)
    _, logs = loss_fn.generator_loss(img, rec, torch.tensor(0.2), global_step=0, last_layer=None)
    assert logs["d_weight"].item() == pytest.approx(0.7)
    with pytest.raises(ValueError, match="last_layer"):
        loss_fn.generator_loss(
            img, rec, torch.tensor(0.2), global_step=0, last_layer=nn.Parameter(last.clone())
        )


@pytest.mark.parametrize("disc_norm", ["batch", "group"])
def test_generator_step_leaves_discriminator_without_grads(disc_norm):
    loss_fn = VQGANLoss(**{**FAST, "disc_norm": disc_norm})
    img, dec = _images(), _tiny_decoder()
    rec = dec(torch.randn(2, 4, 32, 32))
    loss, _ = loss_fn.generator_loss(img, rec, torch.tensor(0.0), global_step=0, last_layer=dec[2].weight)
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())
    loss.backward()
    assert all(p.grad is None for p in loss_fn.discriminator.parameters())
    assert all(p.requires_grad for p in loss_fn.discriminator.parameters())  # flags restored
    assert all(p.grad is not None for p in dec.parameters())

    dec.zero_grad(set_to_none=True)
    d_loss, logs = loss_fn.discriminator_loss(img, rec, global_step=0)
    assert set(logs) == {"d_loss", "logits_real", "logits_fake"}
    d_loss.backward()
    assert all(p.grad is not None for p in loss_fn.discriminator.parameters())
    assert all(p.grad is None for p in dec.parameters())


def test_discriminator_loss_before_disc_start_is_zero():
    loss_fn = VQGANLoss(perceptual_weight=0, disc_start=10, **FAST)
    d_loss, logs = loss_fn.discriminator_loss(_images(), _images(), global_step=3)
    assert d_loss.item() == 0 and logs["d_loss"].item() == 0 and d_loss.requires_grad


# ---------------------------------------------------------------------- what gets built and saved
def test_perceptual_net_is_not_in_state_dict():
    loss_fn = VQGANLoss(**FAST)
    assert isinstance(loss_fn.perceptual, FrozenLPIPS)
    keys = list(loss_fn.state_dict())
    assert keys and all(k.startswith("discriminator.") for k in keys)
    params = set(map(id, loss_fn.parameters()))
    assert params == set(map(id, loss_fn.discriminator.parameters()))
    VQGANLoss(**FAST).load_state_dict(loss_fn.state_dict(), strict=True)

    loss_fn.train()
    lp = loss_fn.perceptual.lpips
    assert not lp.training and not any(p.requires_grad for p in lp.parameters())
    loss_fn.double()  # dtype casts reach the discriminator; LPIPS stays fp32
    assert next(loss_fn.discriminator.parameters()).dtype == torch.float64
    assert next(lp.parameters()).dtype == torch.float32


def test_zero_weights_build_nothing():
    loss_fn = VQGANLoss(perceptual_weight=0, disc_weight=0)
    assert loss_fn.perceptual is None and loss_fn.discriminator is None
    assert not list(loss_fn.parameters()) and not loss_fn.state_dict()
    img = _images()
    loss, logs = loss_fn.generator_loss(img, img + 0.1, torch.tensor(0.0), global_step=10**6)
    assert loss.item() == pytest.approx(0.1, rel=1e-5) and logs["disc_factor"].item() == 0
    with pytest.raises(RuntimeError, match="model.loss.disc_weight"):
        loss_fn.discriminator_loss(img, img, global_step=0)


@pytest.mark.parametrize(
    "key, value",
    [
        ("recon_loss", "l3"),
        ("recon_weight", -1.0),
        ("vq_weight", float("nan")),
        ("perceptual_weight", "1"),
        ("perceptual_net", "resnet"),
        ("disc_weight", -0.5),
        ("disc_start", -1),
        ("disc_start", 1.5),
        ("disc_loss", "wgan"),
        ("disc_ch", 0),
        ("disc_layers", 0),
        ("disc_norm", "layer"),
        ("adaptive_weight_max", 0.0),
    ],
)
def test_invalid_config_names_the_key(key, value):
    with pytest.raises(ValueError, match=f"model.loss.{key}"):
        VQGANLoss(**{"perceptual_weight": 0, "disc_weight": 0, key: value})


def test_build_perceptual_rejects_unknown_net():
    with pytest.raises(ValueError, match="model.loss.perceptual_net.*vgg, alex, squeeze"):
        build_perceptual("resnet")


# ---------------------------------------------------------------------- LPIPS weights (no downloads)
@pytest.mark.parametrize(
    "net, file", [("vgg", "vgg16-397923af.pth"), ("squeeze", "squeezenet1_1-b8a52dc0.pth")]
)
def test_offline_lpips_error_names_file_path_and_keys(offline_hub, net, file):
    expected = offline_hub.resolve() / "checkpoints" / file
    assert backbone_path(net) == expected
    with pytest.raises(RuntimeError) as info:
        build_perceptual(net)
    msg = str(info.value)
    for part in (file, str(expected), "https://download.pytorch.org/models/" + file):
        assert part in msg
    assert "model.loss.perceptual_weights_path" in msg and "model.loss.perceptual_weight=0" in msg


def test_weights_path_loads_torchvision_state_dict(offline_hub, tmp_path):
    # squeezenet: the same slice mapping as vgg/alexnet at a fiftieth of the construction cost
    features = torchvision.models.squeezenet1_1(weights=None).features
    file_a, file_b = tmp_path / "features.pth", tmp_path / "full.pth"
    torch.save(features.state_dict(), file_a)  # ``features`` layout: <i>.*
    torch.save(
        torchvision.models.squeezenet1_1(weights=None).state_dict(), file_b
    )  # features.<i>.*, classifier.*

    img, rec = _images(2, 32), _images(2, 32)
    d_a1 = build_perceptual("squeeze", weights_path=file_a)(img, rec)
    d_a2 = build_perceptual("squeeze", weights_path=file_a)(img, rec)
    d_b = build_perceptual("squeeze", weights_path=file_b)(img, rec)
    assert d_a1.shape == (2,)
    torch.testing.assert_close(d_a1, d_a2)
    assert not torch.allclose(d_a1, d_b)
    loaded = build_perceptual("squeeze", weights_path=file_a).lpips.net
    torch.testing.assert_close(loaded.slice3.get_submodule("6").squeeze.weight, features[6].squeeze.weight)

    with pytest.raises(FileNotFoundError, match="model.loss.perceptual_weights_path"):
        build_perceptual("squeeze", weights_path=tmp_path / "missing.pth")
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": __import__("argparse").Namespace(lr=1.0)}, pickled)  # needs a class unpickled
    with pytest.raises(
        ValueError, match=r"refused to read .*pickled objects|refused to read .*pickled Python"
    ) as err:
        build_perceptual("squeeze", weights_path=pickled)
    assert "model.loss.perceptual_weights_path" in str(err.value) and "weights_only" not in str(err.value)
    with pytest.raises(ValueError, match="'alex' backbone"):
        build_perceptual("alex", weights_path=file_a)


# ---------------------------------------------------------------------- mixed precision
def test_losses_run_under_bf16_autocast():
    loss_fn = VQGANLoss(**{**FAST, "disc_norm": "batch"})
    img, dec = _images(), _tiny_decoder()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rec = dec(torch.randn(2, 4, 32, 32))
        loss, logs = loss_fn.generator_loss(
            img, rec, torch.tensor(0.1), global_step=0, last_layer=dec[2].weight
        )
        d_loss, _ = loss_fn.discriminator_loss(img, rec, global_step=0)
    assert rec.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert all(torch.isfinite(v) for v in logs.values()) and torch.isfinite(d_loss)
    (loss + d_loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in dec.parameters())
