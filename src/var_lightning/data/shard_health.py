"""What a WebDataset stream lost, per shard: samples, not read errors.

A truncated shard raises one read error per pass however many samples it lost, and one pass can lose 13
samples; counting errors reports neither number. :class:`ShardLedger` counts, for every shard, the passes
made over it and the samples each pass lost: with a manifest, the shard's count minus the samples read
(truncation, a damaged member), plus the samples that failed to decode. The counters live in shared memory
with one row per DataLoader worker (no two processes write one cell) and are summed, and then summed over
ranks, when reported: :meth:`report` names every shard that lost samples, per epoch and for the whole run.

``count_readable(path)`` lists a local tar's members without reading their data, for the validation
set-up: it gives each rank a slice it can actually read, and the names of damaged shards, before the
first validation (a rank left without samples would hang the others in their first collective).
"""

from __future__ import annotations

import logging
import os
import tarfile
from typing import Any

import torch
from torch.utils.data import get_worker_info

log = logging.getLogger(__name__)

FIELDS = ("passes", "lost")  # per shard: passes over it, samples lost in them


class ShardLedger:
    """Per-shard counters of one stream (``what``: "training" / "validation"), for ``num_workers`` workers."""

    def __init__(self, urls: list[str], expected: list[int] | None, what: str, num_workers: int) -> None:
        self.urls, self.what = list(urls), what
        self.index = {u: i for i, u in enumerate(self.urls)}
        self.expected = list(expected) if expected is not None else None
        rows = max(num_workers, 0) + 1  # row 0: the main process
        n = len(self.urls)
        self.epoch = {f: torch.zeros(rows, n, dtype=torch.int64).share_memory_() for f in FIELDS}
        self.run = {f: torch.zeros(rows, n, dtype=torch.int64).share_memory_() for f in FIELDS}
        self.read_errors = torch.zeros(
            rows, n, dtype=torch.int64
        ).share_memory_()  # shards without a manifest
        self._warned: set[str] = set()

    def _row(self) -> int:
        info = get_worker_info()
        return 0 if info is None else min(info.id + 1, self.epoch["passes"].shape[0] - 1)

    def _add(self, field: str, shard: int, n: int) -> None:
        r = self._row()
        self.epoch[field][r, shard] += n
        self.run[field][r, shard] += n

    def end_pass(self, url: str, read: int, expected: int | None = None) -> None:
        """A pass over ``url`` ended after ``read`` raw samples (of ``expected``: the manifest's count, or
        the size of the slice this pass was meant to read)."""
        s = self.index[url]
        self._add("passes", s, 1)
        want = expected if expected is not None else (self.expected[s] if self.expected is not None else None)
        if want is not None and read < want:
            self._add("lost", s, want - read)

    def read_error(self, url: str, err: BaseException) -> None:
        """A tar-level error (truncation, damaged member); the samples it cost are counted at the pass end."""
        s = self.index.get(url)
        if s is not None:
            self.read_errors[self._row(), s] += 1
        if url not in self._warned:  # once per shard and process
            self._warned.add(url)
            log.warning("%s shard %s: read error (%s: %s); its remaining samples are skipped this pass",
                        self.what, url, type(err).__name__, err)  # fmt: skip

    def decode_error(self, url: str, key: str, err: BaseException) -> None:
        s = self.index.get(url)
        if s is not None:
            self._add("lost", s, 1)
        if key not in self._warned and len(self._warned) < 50:
            self._warned.add(key)
            log.warning("%s sample %s in %s cannot be decoded (%s: %s); skipped", self.what, key, url,
                        type(err).__name__, err)  # fmt: skip

    def lost_total(self, scope: str = "run") -> int:
        """Samples lost (where the shard's count is known), else read errors, summed over shards."""
        c = self.counters(scope)
        return int(c["lost"].sum()) + (int(c["read_errors"].sum()) if self.expected is None else 0)

    def reset_epoch(self) -> None:
        for t in self.epoch.values():
            t.zero_()

    def counters(self, scope: str = "epoch") -> dict[str, torch.Tensor]:
        """(n_shards,) sums over workers of ``passes`` / ``lost`` (+ ``read_errors``) for ``scope``."""
        src = self.epoch if scope == "epoch" else self.run
        out = {f: t.sum(0) for f, t in src.items()}
        out["read_errors"] = self.read_errors.sum(0)
        return out

    def report(self, counters: dict[str, torch.Tensor], scope: str) -> tuple[list[str], dict[str, Any]]:
        """Log lines and ``metrics.json`` entries naming every shard that lost samples."""
        lines, bad = [], {}
        lost, passes, errors = (
            counters["lost"].tolist(),
            counters["passes"].tolist(),
            counters["read_errors"].tolist(),
        )
        for s, url in enumerate(self.urls):
            if lost[s] == 0 and errors[s] == 0:
                continue
            name = os.path.basename(url)
            n_pass = max(passes[s], 1)
            per_pass = lost[s] / n_pass
            of = f" of {self.expected[s]}" if self.expected is not None else ""
            if lost[s]:
                lines.append(f"{name}: {per_pass:.4g}{of} samples lost per pass, {passes[s]} passes, "
                             f"{lost[s]} sample reads lost")  # fmt: skip
            else:  # no manifest: the number of samples behind the errors is unknown
                lines.append(
                    f"{name}: {errors[s]} read errors in {passes[s]} passes (no manifest: samples lost unknown)"
                )
            bad[name] = {
                "lost_per_pass": per_pass,
                "passes": passes[s],
                "lost_reads": lost[s],
                "read_errors": errors[s],
            }
        total = sum(lost)
        head = f"{self.what} shards, {scope}: {total} sample reads lost in {len(bad)} shard(s)" if bad else ""
        metrics = (
            {f"data/{self.what}/{scope}/lost_samples": total, f"data/{self.what}/{scope}/shards": bad}
            if bad
            else {}
        )
        return ([head, *lines] if bad else []), metrics


def count_readable(path: str) -> tuple[int, str | None]:
    """(complete samples, problem or None) of a local tar shard, from its member headers alone: a sample
    is complete when every member's data lies inside the file (webdataset keys: the name up to its first
    dot)."""
    size = os.path.getsize(path)
    keys: dict[str, bool] = {}
    problem = None
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = os.path.basename(member.name)
                key = os.path.join(os.path.dirname(member.name), base.split(".", 1)[0])
                inside = member.offset_data + member.size <= size
                keys[key] = keys.get(key, True) and inside
                if not inside:
                    problem = f"truncated: member {member.name} ends past the end of the file"
                    break
    except (tarfile.TarError, OSError, EOFError) as e:
        problem = f"{type(e).__name__}: {e}"
    return sum(keys.values()), problem
