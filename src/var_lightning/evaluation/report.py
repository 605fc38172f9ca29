"""Evaluation reports: what a number is, so that two numbers are only compared when they are comparable.

An FID depends on far more than the model: the feature network and its weights, how images are resized
for it, the reference set (and whether its statistics were precomputed), the number of samples (FID is
biased upwards at small N), the sampling settings, the Frechet implementation. ``report_header`` records
all of it, ``comparability`` extracts the fields that must agree, and ``incomparable_reasons`` lists the
ones that differ between two reports (empty list: the FIDs may be compared).
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from var_lightning import __version__
from var_lightning.evaluation.extractors import FeatureExtractor
from var_lightning.hashing import file_sha256

_PACKAGES = ("var-lightning", "torch", "torch-fidelity", "torchmetrics", "numpy", "scipy", "lpips")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages that can change a metric's value."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    return out


def implementation() -> str:
    """``var_lightning <version>``: the code that computed the numbers."""

    return f"var_lightning {__version__}"


def extractor_info(extractor: FeatureExtractor) -> dict[str, Any]:
    """Name, resize mode, feature dim and identifying details (weights file, classifier checkpoint)."""
    info = {"name": extractor.name, "resize": extractor.input_note, "feature_dim": extractor.feature_dim}
    info.update({k: v for k, v in extractor.config().items() if k not in ("name", "input_note")})
    weights = getattr(extractor, "weights_path", None) or getattr(extractor, "checkpoint_path", None)
    if weights is not None:
        info["weights_path"] = str(weights)
        if Path(weights).is_file():  # what decides comparability: the bytes, not the file's name
            info["weights_sha256"] = file_sha256(weights)
    if extractor.name == "tiny-random":
        info["note"] = "random network: numbers only check the pipeline"
    return info


def report_header(mode: str, extractor: FeatureExtractor | None = None, **fields: Any) -> dict[str, Any]:
    """The common head of every var-eval report: implementation, mode, extractor, versions, extra fields."""
    head: dict[str, Any] = {"implementation": implementation(), "mode": mode}
    if extractor is not None:
        head["extractor"] = extractor_info(extractor)
    head.update(fields)
    head["versions"] = versions()
    return head


COMPARABILITY_FIELDS = (
    ("extractor", "name"),
    ("extractor", "resize"),
    ("extractor", "weights_sha256"),  # the weights themselves: two files of one name can differ
    ("extractor", "seed"),
    ("reference", "source"),
    ("reference", "count"),
    ("reference", "stats_from"),
    ("samples", "count"),
    ("metric_settings", "fid_method"),
    ("metric_settings", "is_splits"),
    ("metric_settings", "pr_k"),
    ("metric_settings", "kid_subsets"),
    ("metric_settings", "kid_subset_size"),
)


def comparability(report: Mapping[str, Any]) -> dict[str, Any]:
    """The fields that must be equal for two reports' FID/IS/precision/recall to be compared."""
    out = {}
    for section, key in COMPARABILITY_FIELDS:
        value = report.get(section, {})
        out[f"{section}.{key}"] = value.get(key) if isinstance(value, Mapping) else None
    return out


def incomparable_reasons(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Human-readable differences that make two reports' numbers incomparable (empty: comparable)."""
    ca, cb = comparability(a), comparability(b)
    return [f"{k}: {ca[k]!r} vs {cb[k]!r}" for k in ca if ca[k] != cb[k]]


def write_report(report: Mapping[str, Any], path: str | Path) -> Path:
    """Write the report as indented JSON, atomically (a crash never leaves half a report)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)
    return path


def metrics_table(columns: Mapping[str, Mapping[str, float]], title: str = "") -> Any:
    """A rich ``Table`` with one row per metric and one column per set (e.g. generated, real baseline)."""
    from rich.table import Table

    table = Table(title=title or None)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    keys: list[str] = []
    for values in columns.values():
        keys += [k for k in values if k not in keys]
    for key in keys:
        cells = []
        for values in columns.values():
            v = values.get(key)
            cells.append("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v))
        table.add_row(key, *cells)
    return table
