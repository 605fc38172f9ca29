"""`var-compare-ar`: the plan gives AR and VAR the same budget, the paper scale prints GPU commands, and a
tiny study runs end to end through the real commands and writes a report that matches its inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import open_dict

from tests.helpers import compose_config
from var_lightning.cli import compare_ar
from var_lightning.studies import ar_vs_var as study


def _cfg(tmp_path: Path, *overrides: str):
    runs, report = tmp_path / "runs", tmp_path / "report"
    cfg = compose_config("compare_ar", [f"out_dir={runs}", f"report_dir={report}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "log")
    return cfg


def test_the_plan_gives_ar_and_var_the_same_tokenizer_data_and_budget(tmp_path):
    cfg = _cfg(tmp_path, "train_overrides=['trainer.max_epochs=3']")
    s = study.Settings.from_config(cfg)
    steps = {st.name: st for st in study.plan(s)}
    assert list(steps)[:3] == ["tokenizer", "train var", "train ar"]
    var, ar = steps["train var"].args, steps["train ar"].args
    differing = {(a, b) for a, b in zip(var, ar, strict=True) if a != b}
    assert differing == {
        ("experiment=var_tiny", "experiment=ar_tiny"),
        (f"hydra.run.dir={tmp_path / 'runs' / 'var'}", f"hydra.run.dir={tmp_path / 'runs' / 'ar'}"),
    }
    assert "trainer.max_epochs=3" in var and f"model.tokenizer_ckpt={s.tokenizer_path()}" in var
    ev, ea = steps["evaluate var"].args, steps["evaluate ar"].args
    assert "generation.num_samples=500" in ev and len(ev) == len(ea)
    assert steps["train var"].output == tmp_path / "runs" / "var" / "checkpoints" / "last.ckpt"
    given = study.plan(
        study.Settings.from_config(_cfg(tmp_path, "tokenizer_ckpt=/t.ckpt", "classifier_ckpt=/c.pt"))
    )
    assert [
        st.name for st in given if st.name in ("tokenizer", "classifier")
    ] == []  # given files are not retrained


def test_paper_scale_prints_the_gpu_command_lines_and_runs_nothing(tmp_path, capsys):
    cfg = _cfg(tmp_path, "+scale=paper", "data.root=/my/imagenet")
    assert compare_ar.run(cfg) is None
    out = capsys.readouterr().out
    for expected in ("var-train experiment=var_d16_imagenet256", "var-train experiment=ar_d16_imagenet256",
                     "model.tokenizer_ckpt=vae_ch160v4096z32.pth", "data.root=/my/imagenet",
                     "torchrun --nproc_per_node=8 -m var_lightning.cli.evaluate", "generation.num_samples=50000",
                     "reference=VIRTUAL_imagenet256_labeled.npz", "print_only=false"):  # fmt: skip
        assert expected in out, expected
    assert not (tmp_path / "runs").exists() and not (tmp_path / "report").exists()


@pytest.mark.process
def test_a_tiny_study_runs_end_to_end_and_its_report_matches_the_runs(tmp_path, tokenizer_file, monkeypatch):
    tiny = ["schedule=cpu_micro", "data.train_size=64", "data.val_size=32", "data.test_size=32", "data.batch_size=16",
            "trainer.max_epochs=1", "++model.transformer.depth=2", "++model.transformer.width=32",
            "++model.transformer.num_heads=2", "~callbacks.image_logger", "~callbacks.progress_bar"]  # fmt: skip
    cfg = _cfg(
        tmp_path,
        f"tokenizer_ckpt={tokenizer_file}",
        "train_overrides=[" + ",".join(f"'{o}'" for o in tiny) + "]",
        "classifier_overrides=['epochs=1','image_size=8','data.train_size=64','data.val_size=32','data.test_size=32']",
        "eval_overrides=['data=synthetic','data.val_size=32','data.test_size=32','batch_size=10']",
        "num_samples=20",
        "data.test_size=32",
        "speed.batch_sizes=[1,2]",
        "speed.repeats=1",
    )
    results = compare_ar.run(cfg)
    report = tmp_path / "report"
    assert {p.name for p in report.iterdir()} == {"README.md", "results.json", "speed.png"}
    saved = json.loads((report / "results.json").read_text())
    for m in ("ar", "var"):
        f = saved[m]["facts"]
        assert f["params"] == f["params_model"] and f["steps"] == 4 and f["global_batch"] == 16
        assert f["train_flops"] == f["train_flops_per_image"] * 4 * 16
        assert set(saved[m]["speed"]["images_per_s"]) == {"1", "2"} and saved[m]["eval"]["count"] == 20
    assert saved["ar"]["speed"]["steps"] == 16 and saved["var"]["speed"]["steps"] == 3  # 4x4 grid vs 3 scales
    assert saved["tokens"] == {"ar": 16, "var": 21}
    text = (report / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| AR"))
    assert f"{saved['ar']['eval']['fid']:.2f}" in row and "| 16 |" in row
    assert results["var"]["facts"]["train_flops"] > results["ar"]["facts"]["train_flops"]  # 21 vs 16 tokens

    def no_run(step):  # a second call reuses every finished step and only re-measures and re-writes
        raise AssertionError(f"re-ran {step.name}")

    monkeypatch.setattr(study, "run_step", no_run)
    compare_ar.run(cfg)
