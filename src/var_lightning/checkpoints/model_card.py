"""The model card of an exported repository (its ``README.md``), generated from the run that trained it.

What it states, each read from a file rather than assumed: the model (stage, sizes, schedule, classes,
sampling defaults, whether the weights are the EMA), the training (data, steps, the command line from
Hydra's ``.hydra/overrides.yaml``), the results with their protocol (``metrics.json`` of the run; a
``var-eval`` ``report.json``: which feature extractor, which reference, how many samples, which cfg), the
commands to sample and to fine-tune, the licence, and the sample grid. The front matter is
huggingface_hub's :class:`~huggingface_hub.ModelCardData`, so the Hub indexes the licence and tags.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STAGE_TITLES = {
    "var": "VAR (next-scale prediction) with its multi-scale VQ-VAE tokenizer",
    "ar": "raster-order AR baseline with its multi-scale VQ-VAE tokenizer",
    "tokenizer": "multi-scale residual VQ-VAE tokenizer",
}
TRAINING_METRICS = ("val/loss", "val/loss_last", "val/token_err_last", "val/rec_l1", "val/psnr", "train/loss",
                    "val/fid", "val/is")  # fmt: skip
EVAL_METRICS = ("fid", "sfid", "fd_dinov2", "is", "precision", "recall", "kid", "class_acc")


def run_dir_of(ckpt_path: str | Path) -> Path | None:
    """The run directory of ``<run>/checkpoints/<file>`` (None for a file elsewhere)."""
    p = Path(ckpt_path).expanduser().resolve()
    return p.parent.parent if p.parent.name == "checkpoints" else None


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (yaml.YAMLError, OSError):
        return None


def _read_json(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


def public_overrides(overrides: list[str]) -> list[str]:
    """A run's command-line overrides as a card may show them: Hydra's own (run folders) left out, and an
    absolute local path (``/home/alice/data/...``) reduced to its last part, so a shared card names no
    private folder (relative paths and Hub ids stay)."""
    out = []
    for item in overrides:
        key, sep, value = str(item).partition("=")
        if key.lstrip("+~").startswith("hydra."):
            continue
        if sep and (value.startswith(("/", "~")) or re.match(r"^[A-Za-z]:[\\/]", value)):  # absolute
            value = f"<...>/{Path(value.rstrip('/')).name}"
        out.append(f"{key}{sep}{value}")
    return out


def run_facts(run_dir: Path | None) -> dict[str, Any]:
    """What the run directory says: the command's overrides, the data, the final metrics, a sample grid."""
    if run_dir is None:
        return {}
    overrides = _read_yaml(run_dir / ".hydra" / "overrides.yaml") or []
    config = _read_yaml(run_dir / ".hydra" / "config.yaml") or {}
    data = config.get("data") if isinstance(config, dict) else None
    images = (
        sorted((run_dir / "images").rglob("*.png"), key=lambda p: p.stat().st_mtime)
        if (run_dir / "images").is_dir()
        else []
    )
    metrics = _read_json(run_dir / "metrics.json") or {}
    return {
        "overrides": [str(o) for o in overrides if not str(o).startswith("hydra.")],
        "data": data if isinstance(data, dict) else None,
        "metrics": metrics.get("metrics", metrics) if isinstance(metrics, dict) else {},
        "grid": images[-1] if images else None,
    }


def _data_line(data: Mapping[str, Any] | None, class_names: list[str] | None) -> str:
    if not data:
        return "not recorded"
    target = str(data.get("_target_", "")).rsplit(".", 1)[-1] or "data"
    where = data.get("root") or data.get("shards") or data.get("train_shards")
    if where:
        where = public_overrides([f"x={where}"])[0].split("=", 1)[1]  # no private absolute folder
    n = f", {len(class_names)} classes" if class_names else ""
    return f"`{target}`" + (f" from `{where}`" if where else "") + n


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _params(module: Any) -> str:
    n = sum(p.numel() for p in module.parameters())
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def model_card(
    models: Any,
    repo_id: str | None,
    global_step: int | None,
    epoch: int | None,
    ema: bool,
    run_dir: Path | None,
    report: Mapping[str, Any] | None = None,
    license: str = "other",
    grid_name: str | None = None,
    source: str | None = None,
) -> str:
    """The card's markdown (front matter first). ``models``: a LoadedModels; ``repo_id``: how users will name
    it (a placeholder when exported only to a folder); ``report``: a var-eval report.json."""
    from huggingface_hub import ModelCardData

    var, vae, info = models
    facts = run_facts(run_dir)
    name = repo_id or "<user>/<name>"
    names = info.class_names
    tags = ["var_lightning", "image-generation", "class-conditional", f"stage-{info.stage}"]
    if info.stage != "tokenizer":
        tags.insert(1, "visual-autoregressive")
    front = ModelCardData(library_name="var_lightning", license=license, tags=tags, model_name=repo_id)
    lines = ["---", front.to_yaml(), "---", "", f"# {repo_id or 'A var_lightning model'}", ""]
    lines += [f"A {STAGE_TITLES.get(info.stage, info.stage)}, trained with var_lightning (Hydra + PyTorch "
              "Lightning for VAR) and exported with `var-convert to-hub`.", ""]  # fmt: skip
    if grid_name:
        lines += [f"![seeded samples, one row per class]({grid_name})", ""]
    lines += ["## Model", "", "| | |", "|---|---|"]
    if var is not None:
        c = var.cfg
        lines.append(f"| transformer | depth {c.depth}, width {c.width}, {c.num_heads} heads, {_params(var)} parameters"
                     f"{' (EMA weights)' if ema else ''} |")  # fmt: skip
    t = vae.cfg
    lines += [
        f"| tokenizer | vocabulary {t.vocab_size}, {t.z_channels}-d codes, {_params(vae)} parameters |",
        f"| scales | {', '.join(f'{p}x{p}' for p in info.patch_nums)} -> {info.image_size}x{info.image_size} px |",
    ]
    if info.num_classes is not None:
        shown = (
            ", ".join(names[:12]) + (f", ... ({len(names)} in all)" if len(names) > 12 else "")
            if names
            else "-"
        )
        lines.append(f"| classes | {info.num_classes}: {shown} |")
    if info.sampling:
        s = info.sampling
        lines.append(f"| sampling defaults | cfg {s['cfg']}, top-k {s['top_k']}, top-p {s['top_p']} "
                     f"(0 or 1 = off), more_smooth {s['more_smooth']} |")  # fmt: skip
    lines += ["", "## Training", "", f"- data: {_data_line(facts.get('data'), names)}"]
    final = facts.get("metrics") or {}
    if epoch is not None and final.get("step") == global_step and isinstance(final.get("epoch"), int):
        n = final["epoch"]  # metrics.json's count at the end of the fit: epochs completed
        epochs = f" ({n} epoch{'' if n == 1 else 's'} completed)"
    else:
        epochs = f" (in epoch {epoch + 1})" if epoch is not None else ""
    lines.append(f"- steps: {global_step if global_step is not None else 'not recorded'}{epochs}")
    if facts.get("overrides"):
        lines.append(f"- command: `var-train {' '.join(public_overrides(facts['overrides']))}`")
    if source:
        lines.append(f"- exported from: `{Path(source).name}`")
    lines += ["", "## Results", ""]
    train_metrics = {k: facts["metrics"][k] for k in TRAINING_METRICS if k in facts.get("metrics", {})}
    if train_metrics:
        lines += ["Last values of the run's `metrics.json` (the run's own validation split):", "",
                  "| metric | value |", "|---|---|"]  # fmt: skip
        lines += [f"| {k} | {_fmt(v)} |" for k, v in train_metrics.items()]
        lines.append("")
    if report and isinstance(report.get("metrics"), Mapping):
        m = report["metrics"]
        ext = report.get("extractor") or {}
        ref = report.get("reference") or {}
        smp = report.get("samples") or {}
        sampling = report.get("sampling") or {}
        columns = {f"cfg {sampling.get('cfg', '?')}": m}
        if report.get("cfg_sweep"):  # one column per guidance value
            columns = {f"cfg {e['cfg']:g}": e.get("metrics") or {} for e in report["cfg_sweep"]}
        baseline = report.get("real_baseline") or {}
        if isinstance(baseline.get("metrics"), Mapping):
            columns[f"real images ({baseline.get('split', '?')}, n={baseline.get('count', '?')})"] = baseline[
                "metrics"
            ]
        lines += ["`var-eval` (generation):", "", "| metric | " + " | ".join(columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]  # fmt: skip
        for k in EVAL_METRICS:
            if any(c.get(k) is not None for c in columns.values()):
                lines.append(f"| {k} | " + " | ".join(_fmt(c[k]) if c.get(k) is not None else "-"
                                                        for c in columns.values()) + " |")  # fmt: skip
        for k, why in (report.get("skipped_metrics") or {}).items():
            lines += ["", f"Not computed: {k}: {why}"]
        smp_cfg = "each value above" if report.get("cfg_sweep") else sampling.get("cfg", "?")
        lines += ["", f"Protocol: {smp.get('count', '?')} samples (cfg {smp_cfg}, top-k "
                      f"{sampling.get('top_k', '?')}, top-p {sampling.get('top_p', '?')}), features of "
                      f"`{ext.get('name', '?')}`, reference `{Path(str(ref.get('source', '?'))).name}` (n={ref.get('count', '?')}). "
                      "Numbers from another extractor or reference are not comparable (Inception FID on "
                      "ImageNet is what papers report).", ""]  # fmt: skip
    if not train_metrics and not report:
        lines += ["No metrics were recorded with this export (pass `--report <var-eval report.json>`).", ""]
    lines += ["## Use", "", "With var_lightning installed from its source (`pip install -e .` in a clone):", "",
              "```bash"]  # fmt: skip
    if info.stage != "tokenizer":
        lines += [f"var-sample pretrained={name} num_per_class=8",
                  f"var-edit pretrained={name} image=photo.jpg mode=inpaint box=[0.25,0.25,0.75,0.75]",
                  f"var-train experiment=var_tiny data=imagenet data.root=<your folder> init_from={name}"]  # fmt: skip
    else:
        lines.append(f"var-train experiment=var_tiny model.tokenizer_ckpt={name}")
    lines += ["```", "", "```python", "from var_lightning import load_models", "",
              f'var, vae, info = load_models(pretrained="{name}")  # safetensors only, nothing executes', "```", ""]  # fmt: skip
    lines += ["## Licence", "", f"`{license}`" + (": set it with `var-convert to-hub --license <id>`." if license == "other" else "."), ""]  # fmt: skip
    return "\n".join(lines)
