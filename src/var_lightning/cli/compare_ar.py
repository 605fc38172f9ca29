"""`var-compare-ar` (``make compare-ar``): AR vs VAR at equal size and budget, one table.

    var-compare-ar                        # CPU: train both on the synthetic shapes, evaluate, measure, report
    var-compare-ar +scale=paper           # print the GPU command lines of the paper-sized run

Steps whose outputs exist are reused (re-running continues an interrupted study, or rebuilds the report).
The plan is :mod:`var_lightning.studies.ar_vs_var`, the report :mod:`var_lightning.studies.ar_vs_var_report`.
"""

from __future__ import annotations

import datetime
import logging
import shlex
import sys
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from var_lightning.cli.command_line import checked_main
from var_lightning.studies import ar_vs_var as study
from var_lightning.studies import ar_vs_var_report as report

log = logging.getLogger("var_lightning.compare_ar")


def print_plan(s: study.Settings, steps: list[study.Step]) -> str:
    runs = [st for st in steps if not st.name.endswith("reconstructions")]
    lines = [f"# AR vs VAR, {s.scale} scale: the training and evaluation runs ({len(runs)} commands)"]
    for step in runs:
        lines += [f"# {step.name}", step.command_line()]
    lines += ["# then, on one GPU: the tokenizer's reconstruction floor (written and scored), sampling speed and the "
              "report (finished runs are reused):",
              "var-compare-ar " + " ".join(shlex.quote(a) for a in [*sys.argv[1:], "print_only=false"])]  # fmt: skip
    text = "\n".join(lines)
    print(text)
    return text


def run(cfg: DictConfig) -> dict[str, Any] | None:
    s = study.Settings.from_config(OmegaConf.to_container(cfg, resolve=True))
    steps = study.plan(s)
    if cfg.print_only:
        print_plan(s, steps)
        return None
    recon_evals = [st for st in steps if st.name.endswith("reconstructions")]
    for step in steps:
        if step in recon_evals:
            continue
        if step.output is not None and step.output.exists():
            log.info("[%s] reusing %s", step.name, step.output)
            continue
        study.run_step(step)
    recon = study.reconstruction_sets(s, instantiate(cfg.data), s.num_samples)
    for step in recon_evals:
        if not step.output.exists():
            study.run_step(step)
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "device": s.device,
        "scale": s.scale,
        "tokenizer": s.tokenizer_path(),
        "batch_sizes": s.batch_sizes,
        "reconstruction": {"count": recon["count"], "mse": recon["mse"]},
        "tokens": {},
    }
    for kind in study.RECONSTRUCTIONS:
        results["reconstruction"][kind] = study.eval_metrics(s.run_dir("eval_recon_" + kind) / "report.json")
    speeds = study.sampling_speeds({m: s.ckpt(m) for m in study.MODELS}, s.batch_sizes, s.speed_repeats,
                                   s.device, s.seed)  # fmt: skip
    for model in study.MODELS:
        facts = study.model_facts(s.ckpt(model))
        results[model] = {
            "facts": facts,
            "eval": study.eval_metrics(s.run_dir("eval_" + model) / "report.json"),
            "speed": speeds[model],
        }
        results["tokens"][model] = facts["tokens"]
    command = "make compare-ar" if s.scale == "cpu" else "var-compare-ar +scale=paper print_only=false"
    path = report.write_report(results, s.report_dir, command)
    print(report.table(results, s.batch_sizes))
    print(f"report: {path}")
    return results


@checked_main("compare_ar", "var-compare-ar")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
