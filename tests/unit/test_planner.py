"""var-plan (var_lightning.scaling.planner): the static memory is the model's exact bytes, the activation
estimate is within a stated tolerance of what autograd really saves (measured on CPU for tiny models), the
largest batch is the boundary of what fits, sharding divides what it shards, and the command prints the
published d16 recipe's figures."""

from __future__ import annotations

import json

import pytest
import torch

from var_lightning.scaling.flops import model_num_params, var_flops
from var_lightning.scaling.planner import GIB, Setup, activations_per_image, largest_batch, plan
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.transformer.config import VARConfig
from var_lightning.transformer.var import VAR

ACT_TOLERANCE = (
    1.0,
    1.15,
)  # the estimate may exceed the measured saved tensors by up to 15%, never fall short


def tiny(depth=2, width=64, pns=(1, 2, 4, 8)) -> VARConfig:
    return VARConfig(depth=depth, width=width, num_heads=2, num_classes=10, vocab_size=64, cvae=8,
                     patch_nums=pns, drop_path_rate=0.0)  # fmt: skip


def saved_bytes(cfg: VARConfig, batch: int = 2) -> int:
    """Bytes autograd saves for backward in one training forward (parameters excluded)."""
    torch.manual_seed(0)
    var = VAR(cfg).train()
    own = {t.untyped_storage().data_ptr() for t in [*var.parameters(), *var.buffers()]}
    seen: dict[int, int] = {}

    def pack(t):
        seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    x = torch.randn(batch, sum(p * p for p in cfg.patch_nums) - 1, cfg.cvae)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        var(torch.randint(0, 10, (batch,)), x)
    return sum(v for k, v in seen.items() if k not in own)


def test_static_memory_is_the_models_exact_bytes():
    cfg = tiny()
    var = VAR(cfg)
    n = sum(p.numel() for p in var.parameters())
    assert model_num_params(cfg) == n
    parts = plan(cfg, VQVAEConfig(ch=16, ch_mult=(1, 2, 2), vocab_size=64, z_channels=8, norm_groups=8, patch_nums=(1, 2, 4, 8)),
                 Setup(batch_per_gpu=2, precision="32-true"))  # fmt: skip
    assert (parts["parameters"], parts["gradients"], parts["optimizer"]) == (4 * n, 4 * n, 8 * n)
    opt = torch.optim.AdamW(var.parameters())
    var(torch.tensor([1]), torch.randn(1, cfg.seq_len - 1, cfg.cvae)).sum().backward()
    opt.step()
    state = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
    assert state == parts["optimizer"]


@pytest.mark.parametrize(
    ("depth", "width", "pns"), [(1, 32, (1, 2, 4)), (2, 64, (1, 2, 4, 8)), (3, 96, (1, 2, 3, 4, 6, 8))]
)
def test_the_activation_estimate_matches_what_autograd_saves(depth, width, pns):
    cfg = tiny(depth, width, pns)
    measured = saved_bytes(cfg, batch=2)
    estimate = 2 * activations_per_image(cfg, Setup(batch_per_gpu=2, precision="32-true"))
    assert ACT_TOLERANCE[0] <= estimate / measured <= ACT_TOLERANCE[1], (estimate, measured)


def test_the_largest_batch_is_the_boundary_and_sharding_divides_the_states():
    cfg, vae = tiny(8, 512, (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)), VQVAEConfig()
    setup = Setup(batch_per_gpu=1, gpus=8)
    budget = 24 * GIB
    best = largest_batch(cfg, vae, setup, budget)
    assert best > 0
    assert plan(cfg, vae, Setup(batch_per_gpu=best, gpus=8), "var")["total"] <= budget
    assert plan(cfg, vae, Setup(batch_per_gpu=best + 1, gpus=8), "var")["total"] > budget
    ddp, fsdp = plan(cfg, vae, setup), plan(cfg, vae, Setup(batch_per_gpu=1, gpus=8, strategy="fsdp"))
    assert fsdp["optimizer"] == pytest.approx(ddp["optimizer"] / 8) and fsdp["gradients"] == pytest.approx(
        ddp["gradients"] / 8
    )
    assert fsdp["parameters"] < ddp["parameters"] and fsdp["activations"] == ddp["activations"]
    ckpt = plan(cfg, vae, Setup(batch_per_gpu=1, gpus=8, strategy="fsdp", activation_checkpointing=True))
    assert ckpt["activations"] < ddp["activations"] / 3


def test_var_plan_prints_the_published_d16_recipe(tmp_path, capsys):
    from var_lightning.cli.plan import main

    out = tmp_path / "plan.json"
    assert main(["experiment=var_d16_imagenet256", "--gpu", "a100-80", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["model"]["params"] == 310_283_520 and r["model"]["tokens"] == 680
    assert (
        r["setup"]["batch_per_gpu"] * r["setup"]["gpus"] == 768 and r["fits"]
    )  # 96 per A100-80GB, as published
    assert r["largest_batch_per_gpu"] >= 96 and r["step"]["steps_per_epoch"] == 1_281_167 // 768
    from var_lightning.transformer.config import PRESETS

    d16 = VARConfig(**{**PRESETS["d16"], "num_classes": 1000})
    assert r["step"]["flops_per_step"] == var_flops(d16)["train"] * 768  # the scaling package's FLOP model
    text = capsys.readouterr().out
    assert "VAR d16 (width 1024, 310.3M parameters), 256 px (680 tokens)" in text and "-> fits" in text
    assert main(["experiment=var_d16_imagenet256", "data.batch_sise=3"]) == 2
    assert "unknown config key data.batch_sise: did you mean data.batch_size?" in capsys.readouterr().err
    assert main(["experiment=tokenizer_tiny"]) == 2
    assert "plans the transformer stages" in capsys.readouterr().err


def test_one_sampling_call_fits_its_budget_and_counts_the_kv_cache_exactly():
    """``sampling_batch`` images per call stay within the budget; the estimate's KV term is what the plain
    sampler's caches hold at the end of a guided call."""
    from var_lightning.scaling.planner import sampling_batch, sampling_bytes_per_image
    from var_lightning.transformer import layers
    from var_lightning.transformer.sampling import sample

    cfg = tiny()
    vae_cfg = VQVAEConfig(
        ch=32, ch_mult=(1, 2), num_res_blocks=1, vocab_size=64, z_channels=8, patch_nums=(1, 2, 4, 8)
    )
    per = sampling_bytes_per_image(cfg, vae_cfg, 4.0)
    for budget in (0.5 * per, 3.5 * per, 40 * per):
        n = sampling_batch(cfg, vae_cfg, budget, 4.0)
        assert n == max(1, int(budget // per)) and (n == 1 or n * per <= budget)
    assert sampling_batch(cfg, vae_cfg, 8 * GIB, 2.0) > sampling_batch(cfg, vae_cfg, 8 * GIB, 4.0)

    from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE

    torch.manual_seed(0)
    var, vae = VAR(cfg).eval(), MultiScaleVQVAE(vae_cfg).eval()
    caches: list = []
    original = layers.KVCache.update

    def spy(self, k, v):
        out = original(self, k, v)
        caches.append((id(self), out[0].nbytes + out[1].nbytes))
        return out

    layers.KVCache.update = spy
    try:
        sample(var, vae, 3, labels=[0, 1, 2], cfg=1.5, top_k=0, top_p=0.0, more_smooth=False, seed=0)
    finally:
        layers.KVCache.update = original
    final = dict(caches)  # each block's cache after the last scale
    L = sum(p * p for p in cfg.patch_nums)
    assert len(final) == cfg.depth
    assert sum(final.values()) == 3 * 2 * cfg.depth * L * cfg.width * 4 * 2  # images x rows x k,v x ...


# The launches docs/scale_out.md documents for each GPU recipe (one 8-GPU node of 80 GB cards per node): the
# recipe's global batch kept, training and validation's sampling within the card.
LAUNCHES = {
    "var_d16_imagenet256": "experiment=var_d16_imagenet256",
    "ar_d16_imagenet256": "experiment=ar_d16_imagenet256",
    "var_d16_finetune": "experiment=var_d16_finetune",
    "var_d20_imagenet256": "experiment=var_d20_imagenet256 trainer.num_nodes=2 data.batch_size=48",
    "var_d24_imagenet256": "experiment=var_d24_imagenet256 trainer=fsdp trainer.num_nodes=2 data.batch_size=48",
    "var_d30_imagenet256": "experiment=var_d30_imagenet256 trainer=fsdp trainer.num_nodes=4 data.batch_size=32",
    "var_d36s_imagenet512": "experiment=var_d36s_imagenet512 trainer=fsdp trainer.num_nodes=8 data.batch_size=12 "
    "trainer.strategy.activation_checkpointing=true",
}


def test_every_gpu_recipe_fits_an_80gb_card_in_training_and_validation():
    """Each shipped GPU recipe (every experiment but the CPU ``*tiny`` ones and the tokenizer stage, which
    var-plan does not plan), launched as docs/scale_out.md says, fits an H100 80 GB by var-plan's accounting:
    the training step, and validation's sampling (resident states + the gathered copy + one call)."""
    from pathlib import Path

    from var_lightning.cli.command_line import _compose
    from var_lightning.cli.plan import report

    root = Path(__file__).resolve().parents[2]
    shipped = {p.stem for p in (root / "src/var_lightning/conf/experiment").glob("*.yaml")}
    assert set(LAUNCHES) == {e for e in shipped if "tiny" not in e and not e.startswith("tokenizer")}
    docs = " ".join((root / "docs/scale_out.md").read_text().split())
    for name, launch in LAUNCHES.items():
        assert launch in docs, f"docs/scale_out.md does not show the launch {launch!r}"
        cfg = _compose("train", launch.split())
        r = report(cfg, "h100", None, 0.4, None, None)
        assert r["setup"]["batch_per_gpu"] * r["setup"]["gpus"] * r["setup"]["accumulate"] in (32, 768, 1024)
        assert r["per_gpu_gib"]["total"] <= 80 and r["validation_gib"]["total"] <= 80 and r["fits"], (name, r)


def test_var_plan_names_a_batch_size_below_one(capsys):
    from var_lightning.cli.plan import main

    assert main(["experiment=var_d16_imagenet256", "data.batch_size=0"]) == 2
    assert (
        "data.batch_size=0: plan at least one image per GPU (key data.batch_size)" in capsys.readouterr().err
    )
