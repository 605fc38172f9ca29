"""Collect the results of a Hydra multirun sweep of VAR trainings into runs for scaling-law fits.

The contract a training job follows (``write_results`` below implements it):

``<job_dir>/results.json``, written when training ends (also on failure when the error can be caught;
write it atomically, e.g. with ``write_results``)::

    {
      "status": "completed" | "failed",
      "error": null | "<exception type: message>",
      "params": <int: N, the transformer's parameter count, flops.num_params(cfg)>,
      "flops_per_image": <float: training FLOPs per image, flops.var_flops(cfg)["train"]>,
      "depth": <int: transformer depth d>,
      "seed": <int | null>,
      "history": [                      # one entry per validation, in training order
        {"step": <int: optimizer steps so far>,
         "epoch": <int>,
         "images_seen": <int: training images so far, all ranks together>,
         "compute": <float: FLOPs so far, flops_per_image * images_seen>,
         "val/loss_avg": <float>, "val/loss_last": <float>,
         "val/token_err_avg": <float>, "val/token_err_last": <float>},
        ...
      ],
      "final": {"val/loss_avg": ..., "val/loss_last": ..., "val/token_err_avg": ..., "val/token_err_last": ...}
    }

``loss`` is the token cross-entropy in nats and ``token_err`` the top-1 token error rate in [0, 1]; ``avg``
is over all L tokens of all scales, ``last`` over the last scale's tokens. ``final`` holds the metrics of
the final model (often equal to the last history entry). Other metric prefixes than ``val`` (e.g.
``test/loss_avg``) work with ``prefix=``. Extra keys are kept and ignored.

Next to it Hydra writes ``<job_dir>/.hydra/config.yaml`` (composed config), ``.hydra/overrides.yaml``
(this job's override strings) and ``<job_name>.log``.

A job directory is a directory holding ``results.json`` or ``.hydra/config.yaml``, or a numbered child
of a sweep directory holding ``multirun.yaml``. ``collect`` accepts a sweep directory, a job directory
or any tree above them (``multirun/<date>/<time>/<job_num>/``). A job without ``results.json`` (it
crashed before writing it), with a status other than "completed", or with an unreadable file is
reported in ``Collection.failed`` with the reason and its log tail, and skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
METRIC_NAMES = ("loss_last", "loss_avg", "token_err_last", "token_err_avg")
LOG_TAIL_LINES = 10


def metric_key(name: str, prefix: str = "val") -> str:
    """``loss_avg``, ``val`` -> ``val/loss_avg`` (an empty prefix leaves the name as is)."""
    return f"{prefix}/{name}" if prefix else name


@dataclass
class RunResult:
    """One completed training job."""

    name: str  # job path relative to the collected root, e.g. "2024-05-01/12-00-00/3"
    job_dir: Path
    params: int
    flops_per_image: float
    depth: int
    seed: int | None
    history: list[dict[str, Any]]
    final: dict[str, Any]
    overrides: list[str] = field(default_factory=list)
    config: dict[str, Any] | None = None

    def metric(self, name: str, prefix: str = "val") -> float | None:
        """Final value of a metric, or None when missing or not a finite number."""
        return _finite(self.final.get(metric_key(name, prefix)))

    def curve(self, name: str, prefix: str = "val") -> tuple[np.ndarray, np.ndarray]:
        """(compute, value) over the history, for entries where both are finite."""
        key = metric_key(name, prefix)
        points = [(self.compute_at(h), _finite(h.get(key))) for h in self.history]
        points = [(c, v) for c, v in points if c is not None and v is not None]
        compute = np.asarray([c for c, _ in points], dtype=np.float64)
        return compute, np.asarray([v for _, v in points], dtype=np.float64)

    def compute_at(self, entry: Mapping[str, Any]) -> float | None:
        """An entry's compute, or flops_per_image * images_seen when it has none."""
        c = _finite(entry.get("compute"))
        if c is None and _finite(entry.get("images_seen")) is not None:
            c = self.flops_per_image * float(entry["images_seen"])
        return c

    @property
    def final_compute(self) -> float | None:
        return self.compute_at(self.history[-1]) if self.history else None

    @property
    def images_seen(self) -> int | None:
        last = self.history[-1] if self.history else {}
        return int(last["images_seen"]) if "images_seen" in last else None


@dataclass
class FailedJob:
    """A job that produced no usable results: why, and the end of its log if there is one."""

    name: str
    job_dir: Path
    reason: str
    log_tail: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)


@dataclass
class Collection:
    root: Path
    runs: list[RunResult]
    failed: list[FailedJob]


# ---------------------------------------------------------------------------------------------- writing
def history_entry(
    step: int, epoch: int, images_seen: int, flops_per_image: float, metrics: Mapping[str, float]
) -> dict[str, Any]:
    """One ``history`` item: counters, ``compute = flops_per_image * images_seen`` and the metrics."""
    entry: dict[str, Any] = {
        "step": int(step),
        "epoch": int(epoch),
        "images_seen": int(images_seen),
        "compute": float(flops_per_image) * int(images_seen),
    }
    entry.update({k: float(v) for k, v in metrics.items()})
    return entry


def write_results(
    job_dir: str | os.PathLike,
    *,
    status: str,
    params: int,
    flops_per_image: float,
    depth: int,
    history: Sequence[Mapping[str, Any]] = (),
    final: Mapping[str, float] | None = None,
    seed: int | None = None,
    error: str | None = None,
) -> Path:
    """Write ``<job_dir>/results.json`` atomically (temp file + rename) and return its path.

    ``final`` defaults to the metrics of the last history entry.
    """
    if status not in ("completed", "failed"):
        raise ValueError(f"status={status!r}: choose 'completed' or 'failed'")
    history = [dict(h) for h in history]
    if final is None:
        counters = {"step", "epoch", "images_seen", "compute"}
        final = {k: v for k, v in history[-1].items() if k not in counters} if history else {}
    payload = {
        "status": status,
        "error": error,
        "params": int(params),
        "flops_per_image": float(flops_per_image),
        "depth": int(depth),
        "seed": None if seed is None else int(seed),
        "history": history,
        "final": {k: float(v) for k, v in final.items()},
    }
    path = Path(job_dir) / RESULTS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, allow_nan=True))
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------- reading
def _finite(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _natural_key(text: str) -> list[Any]:
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", text) if t]


def _is_job_dir(path: Path) -> bool:
    return (path / RESULTS_FILE).is_file() or (path / ".hydra" / "config.yaml").is_file()


def find_job_dirs(root: str | os.PathLike) -> list[Path]:
    """Job directories under ``root`` (root itself when it is one), in natural order (2 before 10)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such directory: {root}")
    if _is_job_dir(root) and not (root / "multirun.yaml").is_file():
        return [root]
    is_sweep = (root / "multirun.yaml").is_file()
    jobs: list[Path] = []
    for child in sorted(root.iterdir(), key=lambda p: _natural_key(p.name)):
        if not child.is_dir() or child.is_symlink() or child.name.startswith("."):
            continue
        if _is_job_dir(child) or (is_sweep and child.name.isdigit()):
            jobs.append(child)
        else:
            jobs.extend(find_job_dirs(child))
    return jobs


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        log.warning("could not read %s: %s", path, err)
        return None


def _log_tail(job_dir: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    logs = sorted(job_dir.glob("*.log"), key=lambda p: (p.stat().st_mtime, p.name))
    if not logs:
        return []
    text = logs[-1].read_text(errors="replace").splitlines()
    return [line for line in text if line.strip()][-lines:]


_REQUIRED = {"params": int, "flops_per_image": (int, float), "depth": int, "history": list}


def _parse_job(name: str, job_dir: Path) -> RunResult | FailedJob:
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml") if (job_dir / ".hydra").is_dir() else None
    overrides = [str(o) for o in overrides] if isinstance(overrides, list) else []

    def failed(reason: str) -> FailedJob:
        return FailedJob(
            name=name, job_dir=job_dir, reason=reason, log_tail=_log_tail(job_dir), overrides=overrides
        )

    path = job_dir / RESULTS_FILE
    if not path.is_file():
        return failed(f"no {RESULTS_FILE} (the job crashed or was killed before writing it)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return failed(f"unreadable {RESULTS_FILE}: {err}")
    if not isinstance(data, dict):
        return failed(f"{RESULTS_FILE} holds a {type(data).__name__}, not an object")
    status = data.get("status")
    if status != "completed":
        error = data.get("error") or "no error message"
        return failed(f"status {status!r}: {error}")
    for key, kind in _REQUIRED.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            return failed(f"{RESULTS_FILE} lacks a valid {key!r} (got {data.get(key)!r})")
    history = [h for h in data["history"] if isinstance(h, dict)]
    final = data.get("final")
    if not isinstance(final, dict) or not final:
        final = dict(history[-1]) if history else {}
    config = _read_yaml(job_dir / ".hydra" / "config.yaml") if (job_dir / ".hydra").is_dir() else None
    seed = data.get("seed")
    return RunResult(
        name=name,
        job_dir=job_dir,
        params=int(data["params"]),
        flops_per_image=float(data["flops_per_image"]),
        depth=int(data["depth"]),
        seed=int(seed) if isinstance(seed, int) else None,
        history=history,
        final=final,
        overrides=overrides,
        config=config if isinstance(config, dict) else None,
    )


def collect(root: str | os.PathLike) -> Collection:
    """Read every job under ``root``. Completed runs are sorted by parameter count, then name."""
    root = Path(root)
    runs: list[RunResult] = []
    failed: list[FailedJob] = []
    for job_dir in find_job_dirs(root):
        name = job_dir.relative_to(root).as_posix() if job_dir != root else job_dir.name
        result = _parse_job(name, job_dir)
        if isinstance(result, FailedJob):
            log.warning("skipping job %s: %s", name, result.reason)
            failed.append(result)
        else:
            runs.append(result)
    runs.sort(key=lambda r: (r.params, _natural_key(r.name)))
    return Collection(root=root, runs=runs, failed=failed)
