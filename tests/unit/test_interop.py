"""Released-checkpoint interop: published key tables, strict loading, export round trips, config inference.

The key tables in tests/data/official_keys/ were printed from the published classes (FoundationVision/VAR
@78b9539). State_dicts are built from those tables with seeded random values (real 0/-inf mask and level
index for the buffers), so no released file is needed.
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_PN, tiny_vae, tiny_vae_cfg, tiny_var, tiny_var_cfg
from var_lightning.checkpoints.published import (
    OfficialCheckpointError,
    export_official_vae,
    export_official_var,
    infer_vae_config,
    infer_var_config,
    load_official_vae,
    load_official_var,
    official_key_table,
)
from var_lightning.checkpoints.published_config import patch_nums_from_level_index
from var_lightning.checkpoints.published_shapes import shape_fields
from var_lightning.tokenizer.config import SCHEDULE_256, VQVAEConfig
from var_lightning.transformer.config import SCHEDULE_512, VARConfig, preset
from var_lightning.transformer.sampling import sample

KEYS = Path(__file__).resolve().parents[1] / "data" / "official_keys"
Table = list[tuple[str, tuple[int, ...], str]]


# ---------------------------------------------------------------------------------------------- helpers
def read_table(name: str) -> Table:
    rows = []
    for line in (KEYS / name).read_text().splitlines():
        if line and not line.startswith("#"):
            key, shape, dtype = line.split("\t")
            rows.append((key, tuple(ast.literal_eval(shape)), dtype))
    return rows


def table_of(model_or_cfg) -> Table:
    return [(k, s, str(d).removeprefix("torch.")) for k, s, d in official_key_table(model_or_cfg)]


def levels(patch_nums) -> torch.Tensor:
    return torch.cat([torch.full((p * p,), i, dtype=torch.long) for i, p in enumerate(patch_nums)]).view(
        1, -1
    )


def random_state_dict(table: Table, patch_nums=SCHEDULE_256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Published-layout state_dict: N(0, 1/fan_in) weights, N(0, 0.1^2) vectors, real buffers."""
    g = torch.Generator().manual_seed(seed)
    d_L = levels(patch_nums)
    sd = {}
    for key, shape, _ in table:
        if key == "lvl_1L":
            sd[key] = d_L.clone()
        elif key == "attn_bias_for_masking":
            allowed = d_L[0].view(-1, 1) >= d_L[0].view(1, -1)
            sd[key] = torch.zeros(allowed.shape).masked_fill_(~allowed, -math.inf).view(shape)
        elif key.endswith("zero_k_bias"):
            sd[key] = torch.zeros(shape)
        elif key.endswith("ema_vocab_hit_SV"):
            sd[key] = torch.rand(shape, generator=g) * 10
        elif len(shape) >= 2 and shape[0] > 1:
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            sd[key] = torch.randn(shape, generator=g) * 0.1
    return sd


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def small_vae_sd(patch_nums) -> dict[str, torch.Tensor]:
    """A cheap published-layout tokenizer (ch=32, one downsample) that fits the 256/512 transformer."""
    cfg = VQVAEConfig(ch=32, ch_mult=(1, 1), num_res_blocks=1, patch_nums=patch_nums)
    return random_state_dict(table_of(cfg), seed=1)


@pytest.fixture(scope="module")
def ch160_sd() -> dict[str, torch.Tensor]:
    return random_state_dict(read_table("vqvae_ch160.tsv"))


# ---------------------------------------------------------------------------------------------- key tables
def test_tokenizer_table_equals_published():
    assert table_of(VQVAEConfig(ch=160)) == read_table("vqvae_ch160.tsv")


@pytest.mark.parametrize(
    "cfg, name",
    [
        (preset("d2"), "var_d2.tsv"),
        (preset("d16"), "var_d16.tsv"),
        (VARConfig(depth=2, shared_aln=True, patch_nums=SCHEDULE_512), "var_d2_saln_512.tsv"),
    ],
)
def test_transformer_tables_equal_published(cfg, name):
    assert table_of(cfg) == read_table(name)


def test_d36s_follows_published_pattern():
    """var_d36.pth = the d2 shared-AdaLN 512px pattern with 36 blocks of width 2304 (2.35B parameters)."""
    pattern = [k for k, _, _ in read_table("var_d2_saln_512.tsv")]
    per_block = [k.removeprefix("blocks.0.") for k in pattern if k.startswith("blocks.0.")]
    expected = []
    for k in pattern:
        if not k.startswith("blocks."):
            expected.append(k)
        elif k == f"blocks.0.{per_block[0]}":
            expected += [f"blocks.{i}.{rest}" for i in range(36) for rest in per_block]
    table = table_of(preset("d36-s"))
    assert [k for k, _, _ in table] == expected
    shapes = {k: s for k, s, _ in table}
    assert shapes["pos_1LC"] == (1, 2240, 2304) and shapes["blocks.35.attn.scale_mul_1H11"] == (1, 36, 1, 1)
    is_buffer = lambda k: k in ("lvl_1L", "attn_bias_for_masking") or k.endswith("zero_k_bias")
    assert (
        sum(math.prod(s) for k, s, _ in table if not is_buffer(k)) == 2_353_893_904
    )  # measured, published class


# ---------------------------------------------------------------------------------------------- loading published layouts
def test_default_tokenizer_loads_and_exports_bit_identical(ch160_sd):
    vae = load_official_vae(ch160_sd)
    assert shape_fields(vae.cfg) == shape_fields(VQVAEConfig(ch=160)) and vae.patch_nums == SCHEDULE_256
    assert not vae.training
    assert_same_state(export_official_vae(vae), ch160_sd)


def test_default_tokenizer_tokens_decode_to_reconstruction(ch160_sd):
    # a 48px schedule keeps it fast; the weights do not depend on the schedule, and the (10, V) usage
    # buffer recorded with 10 scales is accepted (reset) as by the published loader
    patch_nums = (1, 2, 3)
    vae = load_official_vae(ch160_sd, patch_nums=patch_nums)
    assert vae.quantize.ema_vocab_hit_SV.shape == (3, 4096) and not vae.quantize.ema_vocab_hit_SV.any()
    img = torch.rand(1, 3, 48, 48) * 2 - 1
    idx = vae.img_to_idx(img)
    assert [t.shape for t in idx] == [(1, p * p) for p in patch_nums]
    torch.testing.assert_close(vae.idx_to_img(idx), vae.img_to_reconstruction(img), atol=1e-5, rtol=0)
    assert vae.quantize.idx_to_var_input(idx).shape == (1, 1 + 4 + 9 - 1, 32)


def guided_teacher_forced_logits(var, vae, out, cfg: float) -> list[torch.Tensor]:
    """Per scale, the guided logits that teacher-forcing the sampled tokens gives (one batched forward)."""
    x_BLCv = vae.quantize.idx_to_var_input(out.tokens)
    assert x_BLCv.shape == (len(out.labels), var.L - 1, var.Cvae)
    B, K = len(out.labels), len(var.patch_nums)
    if cfg == 0:
        with torch.no_grad():
            return [var(out.labels, x_BLCv)[:, b:e] for b, e in var.begin_ends]
    with torch.no_grad():
        logits = var(
            torch.cat((out.labels, torch.full_like(out.labels, var.num_classes))), x_BLCv.repeat(2, 1, 1)
        )
    cond, uncond = logits[:B], logits[B:]
    ts = [cfg * si / (K - 1) for si in range(K)]
    return [(1 + t) * cond[:, b:e] - t * uncond[:, b:e] for t, (b, e) in zip(ts, var.begin_ends, strict=True)]


@pytest.mark.parametrize(
    "name, patch_nums, shared_aln, B, cfg, top_k, top_p",
    [
        ("var_d2.tsv", SCHEDULE_256, False, 2, 1.5, 900, 0.96),  # the paper's FID settings
        ("var_d2_saln_512.tsv", SCHEDULE_512, True, 1, 0.0, 0, 0.0),  # one unguided row keeps 512px fast
    ],
)
def test_transformer_teacher_forcing_matches_kv_cache_sampling(
    name, patch_nums, shared_aln, B, cfg, top_k, top_p
):
    sd = random_state_dict(read_table(name), patch_nums)
    var = load_official_var(sd)
    assert shape_fields(var.cfg) == shape_fields(
        VARConfig(depth=2, shared_aln=shared_aln, patch_nums=patch_nums)
    )
    assert_same_state(export_official_var(var), sd)
    vae = load_official_vae(small_vae_sd(patch_nums), patch_nums=patch_nums)

    logs: dict[int, torch.Tensor] = {}
    hook = lambda si, lg: logs.__setitem__(si, lg)
    labels = [3, 999][:B]
    out = sample(var, vae, B, labels=labels, cfg=cfg, top_k=top_k, top_p=top_p, seed=0, logits_hook=hook)
    assert out.images.shape == (B, 3, 2 * patch_nums[-1], 2 * patch_nums[-1])
    for si, expected in enumerate(guided_teacher_forced_logits(var, vae, out, cfg=cfg)):
        torch.testing.assert_close(logs[si], expected, atol=1e-4, rtol=0)
    if B > 1:  # seeded sampling is reproducible (once is enough: it is the same code path)
        again = sample(var, vae, B, labels=labels, cfg=cfg, top_k=top_k, top_p=top_p, seed=0)
        assert all(torch.equal(a, b) for a, b in zip(out.tokens, again.tokens, strict=True))
        assert torch.equal(out.images, again.images)


# ---------------------------------------------------------------------------------------------- round trips
@pytest.mark.parametrize(
    "kw, phi_keys",
    [
        (dict(share_quant_resi=0), [f"quantize.quant_resi.{i}.weight" for i in range(4)]),
        (
            dict(share_quant_resi=0, default_qresi_counts=3),
            [f"quantize.quant_resi.{i}.weight" for i in range(3)],
        ),
        (dict(share_quant_resi=1), ["quantize.quant_resi.qresi.weight"]),
        (dict(share_quant_resi=4), [f"quantize.quant_resi.qresi_ls.{i}.weight" for i in range(4)]),
        (dict(share_quant_resi=2), [f"quantize.quant_resi.qresi_ls.{i}.weight" for i in range(2)]),
        (dict(quant_resi=0.0), []),
    ],
)
def test_tokenizer_round_trip(kw, phi_keys):
    vae = tiny_vae(**kw).eval()
    vae.quantize.ema_vocab_hit_SV.uniform_()
    exported = export_official_vae(vae)
    assert [k for k in exported if k.startswith("quantize.quant_resi.") and k.endswith("weight")] == phi_keys
    loaded = load_official_vae(exported, patch_nums=TINY_PN)
    assert shape_fields(loaded.cfg) == shape_fields(vae.cfg)
    assert loaded.quantize.quant_resi.index_map == vae.quantize.quant_resi.index_map
    assert_same_state(export_official_vae(loaded), exported)
    idx = [torch.randint(0, 64, (2, p * p)) for p in TINY_PN]  # the phis are what the naming modes change
    with torch.no_grad():
        assert torch.equal(vae.quantize.idx_to_fhat(idx), loaded.quantize.idx_to_fhat(idx))


@pytest.mark.parametrize("kw", [dict(), dict(shared_aln=True), dict(attn_l2_norm=False), dict(mlp_ratio=2.0)])
def test_transformer_round_trip(kw, tmp_path):
    var = tiny_var(**kw).eval()
    exported = export_official_var(var)
    torch.save(exported, tmp_path / "var.pth")
    loaded = load_official_var(tmp_path / "var.pth")
    assert shape_fields(loaded.cfg) == shape_fields(var.cfg)
    assert_same_state(export_official_var(loaded), exported)
    label_B, x = torch.tensor([0, 5]), torch.randn(2, var.L - 1, 8)
    with torch.no_grad():
        assert torch.equal(var(label_B, x), loaded(label_B, x))


def test_heads_without_l2_norm_need_num_heads():
    var = tiny_var(attn_l2_norm=False, num_heads=4)
    exported = export_official_var(var)
    assert load_official_var(exported).cfg.num_heads == 2  # not stored: the published rule heads = depth
    assert load_official_var(exported, num_heads=4).cfg.num_heads == 4
    with pytest.raises(ValueError, match="num_heads"):
        infer_var_config(export_official_var(tiny_var(depth=3, attn_l2_norm=False, num_heads=4)))


# ---------------------------------------------------------------------------------------------- inference
def test_infer_from_shapes_only():
    meta = lambda table: {k: torch.empty(s, device="meta") for k, s, _ in table}
    vae_sd = meta(read_table("vqvae_ch160.tsv"))
    assert shape_fields(infer_vae_config(vae_sd)) == shape_fields(VQVAEConfig(ch=160))
    for name in ("d16", "d36-s"):
        cfg = preset(name)
        sd = meta(table_of(cfg)) | {"lvl_1L": levels(cfg.patch_nums)}
        assert shape_fields(infer_var_config(sd)) == shape_fields(cfg)
        sd.pop("lvl_1L")  # third-party files may lack buffers: the schedule is matched on L and K
        assert infer_var_config(sd).patch_nums == cfg.patch_nums


def test_patch_nums_from_level_index():
    assert patch_nums_from_level_index(levels(SCHEDULE_512)) == SCHEDULE_512
    with pytest.raises(ValueError, match="square"):
        patch_nums_from_level_index(torch.tensor([[0, 1, 1]]))
    with pytest.raises(ValueError, match="ordered"):
        patch_nums_from_level_index(torch.tensor([[1, 1, 1, 1, 0]]))


# ---------------------------------------------------------------------------------------------- errors
def test_wrong_kind_is_named():
    with pytest.raises(OfficialCheckpointError, match="VAR transformer.*use load_official_var"):
        load_official_vae(export_official_var(tiny_var()))
    with pytest.raises(OfficialCheckpointError, match="VQVAE tokenizer.*use load_official_vae"):
        load_official_var(export_official_vae(tiny_vae()))
    prefixed = {f"module.{k}": v for k, v in export_official_var(tiny_var()).items()}
    with pytest.raises(OfficialCheckpointError, match="'module.'"):
        load_official_var(prefixed)
    with pytest.raises(OfficialCheckpointError, match="mixes"):
        load_official_var(export_official_var(tiny_var()) | export_official_vae(tiny_vae()))


def test_lightning_checkpoint_is_refused_with_a_clear_message():
    ckpt = {"epoch": 3, "global_step": 10, "pytorch-lightning_version": "2.4.0", "state_dict": {}}
    ckpt["state_dict"] = {f"var.{k}": v for k, v in export_official_var(tiny_var()).items()}
    with pytest.raises(OfficialCheckpointError, match=r"Lightning checkpoint.*keys under 'var\.'"):
        load_official_var(ckpt)
    with pytest.raises(OfficialCheckpointError, match="non-tensor"):
        load_official_var({"model": export_official_var(tiny_var())})


def test_missing_unexpected_and_misshaped_keys_are_named():
    var = tiny_var()
    sd = export_official_var(var)
    del sd["head.bias"]
    sd["blocks.1.ffn.fc2.weight"] = torch.zeros(64, 7)
    sd["extra.weight"] = torch.zeros(1)
    with pytest.raises(OfficialCheckpointError) as e:
        load_official_var(sd, cfg=var.cfg)
    msg = str(e.value)
    assert "1 missing key: head.bias" in msg and "1 unexpected key: extra.weight" in msg
    assert "blocks.1.ffn.fc2.weight: file (64, 7) vs model (64, 256)" in msg and "Hint:" in msg
    # with the configuration inferred from the file, gaps are named as well
    gappy = export_official_var(var)
    del gappy["blocks.0.attn.scale_mul_1H11"], gappy["blocks.0.attn.mat_qkv.weight"]
    with pytest.raises(
        OfficialCheckpointError, match=r"2 missing keys: blocks\.0\.attn\.scale_mul_1H11, blocks"
    ):
        load_official_var(gappy)
    vae_sd = export_official_vae(tiny_vae())
    del vae_sd["encoder.down.1.block.0.norm2.bias"]
    with pytest.raises(
        OfficialCheckpointError, match=r"1 missing key: encoder\.down\.1\.block\.0\.norm2\.bias"
    ):
        load_official_vae(vae_sd, patch_nums=TINY_PN)
    # a wrong configuration: the hint says what the file looks like
    with pytest.raises(OfficialCheckpointError, match=r"depth=2 \(cfg has 3\)"):
        load_official_var(export_official_var(var), cfg=tiny_var_cfg(depth=3))
    # long lists are cut with a count
    with pytest.raises(OfficialCheckpointError, match=r"missing keys: .*\(\d+ more\)"):
        load_official_var({k: v for k, v in sd.items() if not k.startswith("blocks.")}, cfg=var.cfg)


def test_tokenizer_phi_mode_mismatch_is_explained():
    exported = export_official_vae(tiny_vae(share_quant_resi=1))
    with pytest.raises(OfficialCheckpointError) as e:
        load_official_vae(exported, cfg=tiny_vae_cfg(share_quant_resi=4))
    msg = str(e.value)
    assert "quantize.quant_resi.qresi.weight" in msg and "quantize.quant_resi.qresi_ls.0.weight" in msg
    assert "share_quant_resi=1 (cfg has 4)" in msg
    with pytest.raises(OfficialCheckpointError, match=r"quant_conv\.weight: file"):
        load_official_vae(exported | {"quant_conv.weight": torch.zeros(8, 8, 1, 1)}, patch_nums=TINY_PN)


def test_inconsistent_buffers_are_refused():
    var = tiny_var()
    sd = export_official_var(var)
    bad_levels = sd | {"lvl_1L": levels((1, 2, 5))}  # also 30 tokens
    with pytest.raises(
        OfficialCheckpointError, match=r"lvl_1L encodes patch_nums=\(1, 2, 5\) but the config"
    ):
        load_official_var(bad_levels, cfg=var.cfg)
    with pytest.raises(
        OfficialCheckpointError, match=r"lvl_embed\.weight: file \(4, 64\) vs model \(3, 64\)"
    ):
        load_official_var(bad_levels)  # inferred from lvl_1L: the level embedding then disagrees
    full_mask = sd | {"attn_bias_for_masking": torch.zeros_like(sd["attn_bias_for_masking"])}
    with pytest.raises(OfficialCheckpointError, match="attn_bias_for_masking is not the block-causal"):
        load_official_var(full_mask)
    with pytest.raises(OfficialCheckpointError, match=r"zero_k_bias.*blocks\.1\.attn\.zero_k_bias"):
        load_official_var(sd | {"blocks.1.attn.zero_k_bias": torch.ones(64)})


class _NotWeights:
    pass


def test_files_that_are_not_state_dicts(tmp_path):
    torch.save({"x": _NotWeights()}, tmp_path / "obj.pth")
    with pytest.raises(OfficialCheckpointError, match="weights_only"):
        load_official_var(tmp_path / "obj.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(OfficialCheckpointError, match="found a list"):
        load_official_vae(str(tmp_path / "list.pth"))


def test_published_training_checkpoint_is_accepted(tmp_path):
    vae, var = tiny_vae().eval(), tiny_var().eval()
    opt = torch.optim.AdamW(var.parameters())
    var(torch.tensor([1]), torch.randn(1, var.L - 1, 8)).sum().backward()
    opt.step()
    ckpt = {
        "epoch": 10,
        "iter": 0,
        "trainer": {
            "config": {"patch_nums": TINY_PN, "resos": (8,), "label_smooth": 0.0, "prog_it": 0},
            "var_wo_ddp": export_official_var(var),
            "vae_local": export_official_vae(vae),
            "var_opt": {"optimizer": opt.state_dict()},
        },
        "args": {"depth": 2, "tblr": 1e-4, "pn": "1_2_3_4"},
    }
    torch.save(ckpt, tmp_path / "ar-ckpt-last.pth")
    loaded_var = load_official_var(tmp_path / "ar-ckpt-last.pth")
    loaded_vae = load_official_vae(tmp_path / "ar-ckpt-last.pth")  # schedule from trainer['config']
    assert loaded_vae.patch_nums == TINY_PN
    assert_same_state(export_official_var(loaded_var), ckpt["trainer"]["var_wo_ddp"])
    assert_same_state(export_official_vae(loaded_vae), ckpt["trainer"]["vae_local"])
