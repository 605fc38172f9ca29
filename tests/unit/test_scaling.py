"""Scaling-law library: power-law fits, Pareto frontier, FLOP and parameter model, multirun collection,
reports and the ``var-scaling`` command."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from var_lightning.cli.scaling import main as scaling_main
from var_lightning.scaling import (
    analyze,
    collect,
    fit_power_law,
    frontier_of_runs,
    history_entry,
    num_params,
    paper_num_params,
    pareto_frontier,
    var_flops,
    write_results,
)
from var_lightning.scaling.fit import PowerLawFit
from var_lightning.scaling.flops import attention_pairs
from var_lightning.scaling.plots import plot_vs_params
from var_lightning.transformer.config import VARConfig, preset
from var_lightning.transformer.masks import block_causal_bias
from var_lightning.transformer.var import VAR

# ---------------------------------------------------------------------------------------------- fits


# beta = exp(intercept / alpha): the smaller |alpha|, the more noise moves beta, hence less noise there
@pytest.mark.parametrize(
    ("alpha", "beta", "noise"), [(-0.23, 2.0e-5, 1e-3), (-0.016, 4.9e-2, 1e-5), (0.5, 3.0, 1e-3)]
)
def test_fit_recovers_power_law(alpha, beta, noise):
    rng = np.random.default_rng(0)
    x = np.geomspace(1e7, 2e9, 12)  # the paper's 18M-2B parameter range
    y = (beta * x) ** alpha * np.exp(rng.normal(0, noise, x.size))  # small multiplicative noise
    fit = fit_power_law(x, y)
    assert fit.alpha == pytest.approx(alpha, rel=0.01)
    assert fit.beta == pytest.approx(beta, rel=0.01)
    assert fit.r == pytest.approx(math.copysign(1.0, alpha), abs=1e-3)
    assert fit.n == 12
    np.testing.assert_allclose(fit.predict(x), (beta * x) ** alpha, rtol=1e-3)
    assert isinstance(fit.predict(1e8), float)


def test_fit_string_form_matches_paper():
    fit = PowerLawFit(alpha=-0.23, beta=2.0e-5, r=-0.9981, n=12)
    assert fit.describe("L", "N") == "L = (2.0e-5 N)^-0.23, r = -0.998"
    assert PowerLawFit(-0.0067, 8.1e-2, -0.99, 5).equation("Err", "C") == "Err = (8.1e-2 C)^-0.0067"


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1.0], [2.0], "at least 2 points"),
        ([1.0, 2.0], [1.0], "differ in length"),
        ([1.0, -2.0], [1.0, 2.0], "strictly positive"),
        ([1.0, 2.0], [0.0, 2.0], "strictly positive"),
        ([1.0, float("nan")], [1.0, 2.0], "non-finite"),
        ([3.0, 3.0], [1.0, 2.0], "distinct x"),
        ([1.0, 2.0], [5.0, 5.0], "alpha = 0"),
        ([[1.0, 2.0]], [[1.0, 2.0]], "one-dimensional"),
    ],
)
def test_fit_validates_inputs(x, y, match):
    with pytest.raises(ValueError, match=match):
        fit_power_law(x, y)


# ---------------------------------------------------------------------------------------------- Pareto


def test_pareto_frontier_on_hand_built_points():
    compute = [1, 2, 2, 3, 4, 5, 6, 0, 7]
    loss = [5.0, 4.0, 3.5, 3.8, 3.0, 3.0, 2.0, 1.0, float("nan")]  # the zero-compute point is dropped
    c, v = pareto_frontier(compute, loss)
    np.testing.assert_array_equal(c, [1, 2, 4, 6])
    np.testing.assert_array_equal(v, [5.0, 3.5, 3.0, 2.0])


def test_frontier_pools_runs():
    small = ([1.0, 2.0, 4.0, 8.0], [4.0, 3.0, 2.6, 2.5])  # fast start, early plateau
    large = ([2.0, 4.0, 8.0, 16.0], [3.5, 2.8, 2.2, 1.8])  # slower start, lower end
    c, v = frontier_of_runs([small, large])
    np.testing.assert_array_equal(c, [1.0, 2.0, 4.0, 8.0, 16.0])
    np.testing.assert_array_equal(v, [4.0, 3.0, 2.6, 2.2, 1.8])


# ---------------------------------------------------------------------------------------------- FLOPs

TINY_CONFIGS = [
    dict(depth=2, width=64, num_heads=2, num_classes=10, vocab_size=32, cvae=8, patch_nums=(1, 2, 3)),
    dict(depth=3, width=96, num_heads=3, num_classes=7, vocab_size=64, cvae=16, patch_nums=(1, 2, 4, 6)),
    dict(
        depth=2,
        width=64,
        num_heads=4,
        num_classes=5,
        vocab_size=48,
        cvae=8,
        patch_nums=(1, 3, 5),
        shared_aln=True,
        attn_l2_norm=False,
    ),
]


@pytest.mark.parametrize("overrides", TINY_CONFIGS)
def test_flops_match_torch_flop_counter(overrides):
    """Forward and forward+backward FLOPs within 5% of torch's counter.

    On CPU, torch's counter has no formula for the fused SDPA kernel and would count attention as 0;
    the math backend runs SDPA as two dense batched matmuls over the full additive mask, which the
    counter sees, so the apples-to-apples analytic count is the dense one (P = L^2).
    """
    cfg = VARConfig(**overrides)
    model = VAR(cfg)
    B = 3
    label_B = torch.randint(0, cfg.num_classes, (B,))
    x_BLCv = torch.randn(B, cfg.seq_len - cfg.first_l, cfg.cvae)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as fwd_counter:
            logits_BLV = model(label_B, x_BLCv)
        with FlopCounterMode(display=False) as bwd_counter:
            logits_BLV.logsumexp(-1).mean().backward()
    measured_fwd, measured_bwd = fwd_counter.get_total_flops(), bwd_counter.get_total_flops()
    flops = var_flops(cfg, attention="dense")
    assert flops["forward"] * B == pytest.approx(measured_fwd, rel=0.05)
    assert flops["train"] * B == pytest.approx(measured_fwd + measured_bwd, rel=0.05)
    # per kind of op the forward count is exact: attention as bmm, every linear as addmm/mm
    by_op = fwd_counter.get_flop_counts()["Global"]
    attn = flops["attn_scores"] + flops["attn_values"]
    assert by_op[torch.ops.aten.bmm] == attn * B
    assert measured_fwd - by_op[torch.ops.aten.bmm] == (flops["forward"] - attn) * B
    assert var_flops(cfg)["forward"] < flops["forward"]


def test_block_causal_attention_pairs():
    assert attention_pairs((1, 2, 3)) == 1 * 1 + 4 * 5 + 9 * 14
    assert attention_pairs((1, 2, 3), dense=True) == 14**2
    d = preset("d16")
    flops = var_flops(d)
    allowed = torch.isfinite(block_causal_bias(d.patch_nums)).sum().item()  # the model's own mask
    assert flops["attn_pairs"] == allowed and flops["attn_pairs_dense"] == d.seq_len**2
    assert flops["train"] == 3 * flops["forward"]
    with pytest.raises(ValueError, match="attention"):
        var_flops(d, attention="sparse")


@pytest.mark.parametrize(
    "cfg",
    [
        preset("d16"),
        preset("d36-s"),
        preset("tiny", num_classes=10),
        VARConfig(**TINY_CONFIGS[2]),
        VARConfig(depth=2, mlp_ratio=2.5),
    ],
    ids=["d16", "d36-s", "tiny", "shared-no-l2", "mlp2.5"],
)
def test_num_params_matches_model(cfg):
    with torch.device("meta"):
        model = VAR(cfg)
    assert num_params(cfg) == sum(p.numel() for p in model.parameters())


def test_paper_param_formula():
    assert paper_num_params(16) == 73728 * 16**3
    # the main count leaves out embeddings, biases and the head
    assert 0.95 < paper_num_params(16) / num_params(preset("d16")) < 1.0


# ---------------------------------------------------------------------------------------------- collection

DEPTHS = (2, 3, 4)


def _fake_job(
    job_dir: Path, depth: int, seed: int = 0, status: str = "completed", write: bool = True
) -> None:
    """A job dir as a VAR training writes it: Hydra files, a log and results.json following a power law."""
    hydra = job_dir / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "config.yaml").write_text(f"model:\n  transformer:\n    depth: {depth}\nseed: {seed}\n")
    (hydra / "overrides.yaml").write_text(f"- model.transformer.depth={depth}\n- seed={seed}\n")
    (job_dir / "train.log").write_text("[INFO] starting\n[INFO] epoch 0\nRuntimeError: CUDA out of memory\n")
    if not write:
        return
    cfg = VARConfig(depth=depth, num_classes=10, vocab_size=64, cvae=8, patch_nums=(1, 2, 3, 4))
    n, fpi = num_params(cfg), var_flops(cfg)["train"]
    history = []
    for step, images in enumerate((0, 1000, 2000, 4000, 8000)):
        scale = (1e-6 * n) ** -0.2 * (1 + 4000 / (images + 500)) ** 0.1
        metrics = {
            "val/loss_avg": 3.0 * scale,
            "val/loss_last": 3.5 * scale,
            "val/token_err_avg": 0.8 * scale**0.1,
            "val/token_err_last": 0.9 * scale**0.1,
        }
        history.append(history_entry(step * 10, step, images, fpi, metrics))
    write_results(
        job_dir,
        status=status,
        params=n,
        flops_per_image=fpi,
        depth=depth,
        history=history,
        seed=seed,
        error="RuntimeError: CUDA out of memory" if status == "failed" else None,
    )


@pytest.fixture
def multirun_tree(tmp_path: Path) -> Path:
    """multirun/<date>/<time>/ with multirun.yaml, jobs 0-2 completed, 3 failed, 4 crashed without results."""
    sweep = tmp_path / "multirun" / "2024-05-01" / "12-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for num, depth in enumerate(DEPTHS):
        _fake_job(sweep / str(num), depth)
    _fake_job(sweep / "3", 5, status="failed")
    _fake_job(sweep / "4", 6, write=False)
    return tmp_path / "multirun"


def test_collect_reports_failed_and_crashed_jobs(multirun_tree: Path):
    for root in (multirun_tree, multirun_tree / "2024-05-01" / "12-00-00"):
        c = collect(root)
        assert [r.depth for r in c.runs] == list(DEPTHS)
        assert [Path(f.name).name for f in c.failed] == ["3", "4"]
        failed, crashed = c.failed
        assert "status 'failed'" in failed.reason and "out of memory" in failed.reason
        assert "no results.json" in crashed.reason
        assert crashed.log_tail[-1] == "RuntimeError: CUDA out of memory"
        assert crashed.overrides == ["model.transformer.depth=6", "seed=0"]
    run = c.runs[0]
    assert run.overrides == ["model.transformer.depth=2", "seed=0"]
    assert run.config["model"]["transformer"]["depth"] == 2
    assert run.metric("loss_avg") == run.history[-1]["val/loss_avg"]
    compute, loss = run.curve("loss_avg")
    assert compute.size == 5 and compute[-1] == run.flops_per_image * 8000
    assert run.metric("loss_avg", prefix="test") is None


def test_collect_single_job_and_unreadable(tmp_path: Path):
    _fake_job(tmp_path / "job", 2)
    assert len(collect(tmp_path / "job").runs) == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{not json")
    c = collect(tmp_path)
    assert len(c.runs) == 1 and "unreadable" in c.failed[0].reason
    with pytest.raises(FileNotFoundError):
        collect(tmp_path / "missing")


def test_analysis_fits_and_plots_are_deterministic(multirun_tree: Path, tmp_path: Path):
    analysis = analyze(collect(multirun_tree))
    for metric in ("loss_avg", "loss_last"):
        fit = analysis.vs_params[metric].fit
        assert fit.alpha < 0 and fit.r < -0.99 and fit.n == 3
        assert analysis.vs_compute[metric].fit.alpha < 0
    digests = []
    for name in ("a.png", "b.png"):
        plot_vs_params(analysis, tmp_path / name)
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert digests[0] == digests[1]


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_end_to_end(multirun_tree: Path, tmp_path: Path, capsys):
    out = tmp_path / "report"
    assert scaling_main([str(multirun_tree), "--out", str(out)]) == 0
    for name in (
        "scaling_fits.csv",
        "scaling_runs.csv",
        "scaling.md",
        "scaling_vs_params.png",
        "scaling_vs_compute.png",
    ):
        assert (out / name).stat().st_size > 0, name
    printed = capsys.readouterr().out
    assert "3 completed run(s), 2 failed" in printed and "no results.json" in printed
    assert "L_avg = (" in printed
    fits = (out / "scaling_fits.csv").read_text().splitlines()
    assert fits[0].startswith("metric,symbol,x,alpha,beta,r") and len(fits) == 1 + 8
    assert len((out / "scaling_runs.csv").read_text().splitlines()) == 1 + 3
    assert "## Failed jobs" in (out / "scaling.md").read_text()


def test_cli_needs_two_completed_runs(tmp_path: Path, capsys):
    _fake_job(tmp_path / "sweep" / "0", 2)
    _fake_job(tmp_path / "sweep" / "1", 3, status="failed")
    assert scaling_main([str(tmp_path / "sweep")]) == 1
    assert "at least 2" in capsys.readouterr().err
    assert scaling_main([str(tmp_path / "nowhere")]) == 1


def test_results_json_contract(tmp_path: Path):
    path = write_results(
        tmp_path,
        status="completed",
        params=10,
        flops_per_image=2.0,
        depth=2,
        history=[history_entry(1, 0, 4, 2.0, {"val/loss_avg": 1.5})],
    )
    data = json.loads(path.read_text())
    assert set(data) == {"status", "error", "params", "flops_per_image", "depth", "seed", "history", "final"}
    assert data["history"][0] == {
        "step": 1,
        "epoch": 0,
        "images_seen": 4,
        "compute": 8.0,
        "val/loss_avg": 1.5,
    }
    assert data["final"] == {"val/loss_avg": 1.5}
    with pytest.raises(ValueError, match="status"):
        write_results(tmp_path, status="done", params=1, flops_per_image=1.0, depth=1)
