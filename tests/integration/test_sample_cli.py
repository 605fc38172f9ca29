"""`var-sample` on the released weights by name (the console script against a Hub cache built by the test),
with the checkpoint's own sampling defaults, and the fast sampler (the default) against the plain one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import compose_config, tiny_vae_cfg
from tests.unit.test_pretrained import COMMIT_A, add_snapshot, released_pair
from var_lightning.checkpoints.hub import VAE_FILE
from var_lightning.checkpoints.load import load_models
from var_lightning.checkpoints.published import export_official_vae, export_official_var
from var_lightning.cli.sample import run
from var_lightning.training.var_module import VARModule
from var_lightning.transformer.fast_sampling import build_sampler


def compose_sample(overrides: list[str]):
    return compose_config("sample", overrides)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


@pytest.mark.process
def test_var_sample_pretrained_name_against_a_local_hub_cache(tmp_path):
    var, vae = released_pair(0)
    cache = tmp_path / "hub"
    add_snapshot(
        cache, COMMIT_A, {"var_d16.pth": export_official_var(var), VAE_FILE: export_official_vae(vae)}
    )
    exe = shutil.which("var-sample") or str(Path(sys.executable).parent / "var-sample")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"}
    out = subprocess.run(
        [
            exe,
            "pretrained=var_d16",
            "classes=[207,360]",
            "num_per_class=4",
            "device=cpu",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    files = sorted(p.name for p in (tmp_path / "run" / "samples").iterdir())
    assert files == [f"{c:04d}_{i:04d}.png" for c in (207, 360) for i in range(4)]
    meta = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert meta["model"]["pretrained"] == "var_d16" and meta["sampler"] == "fast"
    assert meta["class_names"] == ["golden retriever", "otter"]
    assert (meta["cfg"], meta["top_p"]) == (1.5, 0.96)  # the released protocol, no flags given
    # offline without the files: one message, exit code != 0, no traceback noise about the network
    empty = {**env, "HF_HUB_CACHE": str(tmp_path / "nothing")}
    bad = subprocess.run([exe, "pretrained=var_d20", f"hydra.run.dir={tmp_path / 'bad'}"], cwd=tmp_path, env=empty,
                         capture_output=True, text=True, timeout=180)  # fmt: skip
    assert bad.returncode != 0 and "var_d20.pth" in bad.stderr and "pretrained=<that directory>" in bad.stderr


@pytest.fixture(scope="module")
def demo_like_ckpt(tmp_path_factory) -> Path:
    """A VAR checkpoint whose stored sampling settings are the demo recipe's (cfg 2, no top-k / top-p)."""
    torch.manual_seed(0)
    module = VARModule(
        transformer=dict(
            depth=2, width=64, num_heads=2, num_classes=5, drop_path_rate=0.0, init_adaln_gamma=0.5
        ),
        tokenizer=asdict(tiny_vae_cfg()),
        sampling=dict(cfg=2.0, top_k=0, top_p=0.0),
    )
    path = tmp_path_factory.mktemp("sample") / "var.ckpt"
    meta = {"stage": "var", "class_names": ["a", "b", "c", "d", "e"]}
    torch.save(
        {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), "var_lightning": meta},
        path,
    )
    return path


def test_the_checkpoint_sampling_defaults_apply_without_flags(demo_like_ckpt, tmp_path):
    meta = run(compose_sample([f"ckpt_path={demo_like_ckpt}", "device=cpu", "num_per_class=1"]), tmp_path)
    assert (meta["cfg"], meta["top_k"], meta["top_p"]) == (2.0, 0, 0.0)
    assert meta["class_names"] == ["a", "b", "c", "d", "e"]
    over = run(
        compose_sample([f"ckpt_path={demo_like_ckpt}", "device=cpu", "num_per_class=1", "top_k=7"]),
        tmp_path / "o",
    )
    assert (over["cfg"], over["top_k"]) == (2.0, 7)
    with pytest.raises(ValueError, match=r"top_k=65 is outside 0\.\.64.*\(key top_k\)"):
        run(compose_sample([f"ckpt_path={demo_like_ckpt}", "device=cpu", "top_k=65"]), tmp_path / "x")


def test_fast_and_plain_samplers_give_the_same_tokens_and_files(demo_like_ckpt, tmp_path):
    var, vae, info = load_models(demo_like_ckpt)
    fast, plain = build_sampler(var, vae, "fast"), build_sampler(var, vae, "plain")
    for B, settings in ((1, info.sampling), (6, dict(cfg=1.5, top_k=10, top_p=0.9, more_smooth=True))):
        a = fast(B, labels=torch.arange(B) % 5, seed=11, **settings)
        b = plain(B, labels=torch.arange(B) % 5, seed=11, **settings)
        assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
        torch.testing.assert_close(
            a.images, b.images, rtol=0, atol=1e-4
        )  # channels-last decode: fp32 rounding
        torch.testing.assert_close(a.f_hat, b.f_hat, rtol=0, atol=0)
        assert torch.allclose(vae.fhat_to_img(b.f_hat).add(1).mul(0.5), b.images, atol=1e-6)
    common = [f"ckpt_path={demo_like_ckpt}", "device=cpu", "num_per_class=2", "classes=[1,4]"]
    run(compose_sample(common), tmp_path / "fast")
    run(compose_sample([*common, "sampler=plain"]), tmp_path / "plain")
    for name in ("0001_0000.png", "0004_0001.png"):
        assert (
            np.abs(
                png(tmp_path / "fast" / "samples" / name) - png(tmp_path / "plain" / "samples" / name)
            ).max()
            <= 1
        )
    with pytest.raises(ValueError, match="sampler='quick': choose one of fast, plain"):
        run(compose_sample([*common, "sampler=quick"]), tmp_path / "bad")


def test_classes_by_name_on_the_command_line(demo_like_ckpt, tmp_path):
    """`var-sample classes=[c,e]` (names, as var-edit and the app take them) samples the same as ids [2,4];
    a wrong name lists the model's names."""
    by_name = run(compose_sample([f"ckpt_path={demo_like_ckpt}", "device=cpu", "num_per_class=1", "classes=[c,E]"]),
                  tmp_path / "n")  # fmt: skip
    by_id = run(compose_sample([f"ckpt_path={demo_like_ckpt}", "device=cpu", "num_per_class=1", "classes=[2,4]"]),
                tmp_path / "i")  # fmt: skip
    assert by_name["classes"] == by_id["classes"] == [2, 4] and by_name["class_names"] == ["c", "e"]
    with pytest.raises(
        ValueError,
        match=r"classes=\['c', 'zebra'\]: class 'zebra' is neither a class id nor one of this model's class names \('a', 'b'",
    ):
        run(
            compose_sample([f"ckpt_path={demo_like_ckpt}", "device=cpu", "classes=[c,zebra]"]), tmp_path / "x"
        )
