"""Resuming runs: pick the newest readable checkpoint (``resume=auto``) and continue with the exact data
order and random state of an uninterrupted run.

What makes a resumed run exact (tested in tests/unit/test_resume.py):

* **Data order.** :class:`ResumableLoader` draws each epoch's permutation from ``(seed, epoch)`` only and,
  when Lightning resumes mid-epoch, skips the batches the interrupted run already consumed. It reads both
  numbers from the trainer's own progress counters at the moment the epoch's first batch is fetched, so
  they always agree with the step, batch index and learning-rate schedule Lightning restores.
* **Augmentations.** Each item is loaded under a torch RNG seeded from ``(seed, epoch, index)``, so random
  crops and flips do not depend on which worker loads an item or how many batches a worker has produced.
* **Global RNG.** :class:`RNGStateCallback` gives each rank its own stream and stores every rank's torch
  (CPU and CUDA), numpy and Python RNG states in every checkpoint, restoring each rank its own when training
  restarts (label dropout and drop-path draw from them).

Limits: a checkpoint written in the middle of a gradient-accumulation window loses the accumulated
gradients (Lightning saves none); resuming with another world size or batch size restarts the epoch's
order from a different split (a warning says so).
"""

from __future__ import annotations

import logging
import os
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as L
import torch

from var_lightning import distributed
from var_lightning.checkpoints.reader import checkpoint_stage
from var_lightning.checkpoints.safe_io import (
    CheckpointError,
    UnsafeCheckpointError,
    check_records,
    torch_load,
)
from var_lightning.checkpoints.sharded import (
    LIGHTNING_META,
    is_sharded_checkpoint,
    read_metadata,
    read_sharded_meta,
    stored_keys,
)
from var_lightning.data.resumable import mix_seed

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- RNG state
class RNGStateCallback(L.Callback):
    """Per-rank random streams that survive a resume: what label dropout and drop-path draw from.

    * **Own stream per rank.** ``seed_everything`` gives every rank the same seed, so every rank would drop
      the same labels and paths in the same places (as if the batch were world-size times smaller for the
      regulariser). When a multi-process run starts fresh, rank r > 0 reseeds torch, numpy and Python from
      ``(seed, r)``; rank 0 keeps the seed. The data order does not depend on these streams
      (:mod:`var_lightning.data.resumable`), so it stays exact.
    * **Saved per rank.** Each checkpoint holds every rank's torch (CPU and CUDA), numpy and Python states
      (gathered, so each save is a collective, as Lightning's saving already is), and a resume restores
      each rank its own. A checkpoint from another world size (or from before per-rank states) restores
      rank 0's state everywhere and reseeds ranks > 0 from it, with a warning.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    @staticmethod
    def _local_state() -> dict[str, Any]:
        # Tensors and plain Python values only, so checkpoints still load with torch.load(weights_only=True).
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": kind,
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "pos": int(pos),
                "has_gauss": int(has_gauss),
                "gauss": float(gauss),
            },
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def state_dict(self) -> dict[str, Any]:
        state = self._local_state()  # rank 0's at the top level (what earlier versions wrote)
        if distributed.is_distributed():
            import torch.distributed as dist

            per_rank: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, state)
            state = {**per_rank[0], "per_rank": per_rank}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    @staticmethod
    def _restore(s: dict[str, Any]) -> None:
        torch.set_rng_state(s["torch"])
        n = s["numpy"]
        np.random.set_state(
            (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
        )
        version, internal, gauss = s["python"]
        random.setstate((version, tuple(internal), gauss))
        if "cuda" in s and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(s["cuda"])

    @staticmethod
    def _reseed_for_rank(rank: int) -> None:
        seed = mix_seed(torch.initial_seed(), rank)
        torch.manual_seed(seed)  # CPU and every CUDA device
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Restored here, after the sanity check and loader setup, which may draw random numbers of their own.
        rank, world = trainer.global_rank, trainer.world_size
        if self._pending is None:
            if world > 1 and rank > 0:
                self._reseed_for_rank(rank)
            return
        s, self._pending = self._pending, None
        per_rank = s.get("per_rank")
        if per_rank is not None and len(per_rank) == world:
            self._restore(per_rank[rank])
            return
        self._restore(s)
        if world > 1:
            if rank == 0:
                log.warning(
                    "resume: the checkpoint holds random states for %s rank(s), this run has %d; ranks > 0 "
                    "reseed from rank 0's (data order is unaffected; dropout masks differ from the "
                    "uninterrupted run)",
                    len(per_rank) if per_rank is not None else 1,
                    world,
                )
            if rank > 0:
                self._reseed_for_rank(rank)


# ---------------------------------------------------------------------------------------------- which ckpt
def candidate_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints of a run directory, newest first: ``checkpoints/*.ckpt`` and Lightning's SLURM
    pre-emption checkpoints ``hpc_ckpt_*.ckpt`` (in the run directory, Lightning's ``default_root_dir``);
    files or sharded checkpoint directories (dated by their ``meta.pt``, written last)."""
    run = Path(run_dir)
    found = (
        list((run / "checkpoints").glob("*.ckpt"))
        + list(run.glob("hpc_ckpt_*.ckpt"))
        + list(run.glob("*.ckpt"))
    )
    # files, and the directories sharded runs write (trainer=fsdp*: DCP shards + meta.pt)
    unique = {p.resolve(): p for p in found if p.is_file() or is_sharded_checkpoint(p)}
    return sorted(unique.values(), key=lambda p: (_written_at(p), p.name), reverse=True)


def _written_at(path: Path) -> int:
    stamp = path / LIGHTNING_META if path.is_dir() else path
    return (stamp if stamp.exists() else path).stat().st_mtime_ns


def verify_records(path: str | os.PathLike) -> None:
    """Read every record of a checkpoint and check it against its CRC-32 (``safe_io.check_records``), so a
    file damaged in the middle is caught here rather than inside Lightning's load; the legacy (non-zip)
    format is read fully by ``torch.load`` instead."""
    p = Path(path)
    if not zipfile.is_zipfile(p):
        torch_load(p, key="resume", mmap=False)  # legacy format: a full load is the only full check
        return
    try:
        check_records(p, key="resume")
    except CheckpointError as e:
        raise RuntimeError(str(e).split(": ", 1)[-1]) from e


def inspect_checkpoint(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, Any]:
    """Check every record of a checkpoint (``verify_records``), then open it memory-mapped and return it;
    raises when the file is truncated, damaged or not a checkpoint, which is what a job killed while saving
    or a failing disk leaves behind. Loaded with ``weights_only=True``; a file that needs full unpickling
    raises :class:`~var_lightning.checkpoints.safe_io.UnsafeCheckpointError` unless ``trust_pickle``."""
    try:
        if is_sharded_checkpoint(path):  # the index, the shard files' sizes and meta.pt; no tensors read
            meta, index = read_sharded_meta(path, key="resume", trust_pickle=trust_pickle)
            return {**meta, "state_dict": stored_keys(index, "state_dict"),
                    "optimizer_states": stored_keys(index, "optimizer_0")}  # fmt: skip
        if Path(path).is_file() and not zipfile.is_zipfile(path):
            verify_records(path)  # the legacy format: a full load (torch_load checks a zip's CRCs itself)
        ckpt = torch_load(path, key="resume", trust_pickle=trust_pickle, mmap=True)
    except UnsafeCheckpointError:
        raise
    except (CheckpointError, FileNotFoundError) as e:
        raise RuntimeError(str(e).split(": ", 1)[-1]) from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise RuntimeError("not a Lightning checkpoint (no state_dict)")
    return ckpt


def _stage_of(ckpt: dict[str, Any]) -> str:

    return checkpoint_stage(ckpt)


def check_resumable(ckpt: dict[str, Any], path: Path, stage: str | None, key: str) -> None:
    """A resume checkpoint must hold the training state and belong to the stage being trained."""
    got = _stage_of(ckpt)
    if stage is not None and got != stage:
        other = "model.tokenizer_ckpt" if got == "tokenizer" else "init_from"
        raise ValueError(
            f"{key}: {path} is a {got!r}-stage checkpoint, but this run trains the {stage!r} stage; resume from a "
            f"checkpoint of the same stage (a {got!r} checkpoint belongs in {other})"
        )
    if not ckpt.get("optimizer_states") or "loops" not in ckpt:
        raise ValueError(
            f"{key}: {path} holds weights only (no optimizer/loop state) and cannot resume a run; start a new run "
            f"from its weights with init_from={path}"
        )


def resolve_resume(
    resume: str | None, run_dir: str | os.PathLike, stage: str | None = None, trust_pickle: bool = False
) -> str | None:
    """The checkpoint path to hand to ``trainer.fit(ckpt_path=...)``.

    ``None``: start fresh. ``'auto'``: the newest readable checkpoint of ``run_dir`` (pin the run directory
    with ``hydra.run.dir=...`` so a relaunch finds it); an unreadable newest file (a job killed while
    saving) falls back to the previous one with a warning; none found starts fresh. A directory: the same
    search there. A file: that checkpoint, which must load.
    """
    if resume is None or str(resume).lower() in ("", "null", "none", "false"):
        return None
    if str(resume) == "auto":
        search, explicit = Path(run_dir), False
    else:
        p = Path(str(resume)).expanduser()
        if p.is_file() or is_sharded_checkpoint(p):
            try:
                ckpt = inspect_checkpoint(p, trust_pickle)
            except RuntimeError as e:
                raise ValueError(
                    f"resume={p}: the checkpoint cannot be read ({e}); pick another file or resume=auto"
                ) from e
            check_resumable(ckpt, p, stage, "resume")
            return str(p)
        if not p.is_dir():
            raise FileNotFoundError(
                f"resume={resume}: no such file or directory (expected a .ckpt, a run directory or 'auto')"
            )
        search, explicit = p, True
    candidates = candidate_checkpoints(search)
    unreadable: list[str] = []
    for i, path in enumerate(candidates):
        try:
            ckpt = inspect_checkpoint(path, trust_pickle)
        except RuntimeError as e:
            unreadable.append(f"{path} ({e})")
            log.warning(
                "resume: skipping unreadable checkpoint %s (%s)%s",
                path,
                e,
                "; falling back to the previous one" if i + 1 < len(candidates) else "",
            )
            warnings.warn(
                f"resume: {path} is unreadable ({e}); falling back to an older checkpoint", stacklevel=2
            )
            continue
        check_resumable(ckpt, path, stage, "resume")
        log.info(
            "resume: continuing from %s (epoch %s, step %s)", path, ckpt.get("epoch"), ckpt.get("global_step")
        )
        return str(path)
    if unreadable:
        listing = "\n  ".join(unreadable)
        raise ValueError(
            f"resume={resume}: every checkpoint under {search} is unreadable, so the run cannot continue:\n  {listing}\n"
            "Nothing was started. To train again from scratch on purpose, pass overwrite=true (the files are kept "
            "in checkpoints/replaced-<time>/) or use a new run directory (hydra.run.dir=...); to continue from "
            "another copy, give resume=<that file>"
        )
    if explicit:
        raise FileNotFoundError(f"resume={resume}: no readable checkpoint under {search}")
    log.info(
        "resume=auto: no checkpoint in %s yet; starting a new run (pin hydra.run.dir so that a relaunch "
        "resumes this one)",
        search,
    )
    return None


def stored_shapes(path: str | os.PathLike, trust_pickle: bool = False) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a resume checkpoint's ``state_dict`` (file: memory-mapped; sharded directory: its
    index), without reading the tensors."""
    if is_sharded_checkpoint(path):
        index = read_metadata(Path(path), "resume", trust_pickle)
        prefix = "state_dict."
        return {
            k[len(prefix) :]: tuple(getattr(m, "size", ()))
            for k, m in index.state_dict_metadata.items()
            if k.startswith(prefix) and hasattr(m, "size")
        }
    # names and shapes only (memory-mapped); the records' CRCs were checked when resume chose the file
    ckpt = torch_load(path, key="resume", trust_pickle=trust_pickle, mmap=True, verify=False)
    return {k: tuple(v.shape) for k, v in ckpt.get("state_dict", {}).items() if torch.is_tensor(v)}


def check_resume_fits(model: torch.nn.Module, path: str | os.PathLike, trust_pickle: bool = False) -> None:
    """Before fitting: the resume checkpoint's weights must have this run's names and shapes (otherwise
    Lightning fails late, inside its restore, with a traceback). Checkpoint-only entries (an EMA copy made by
    a callback at set-up) are left to the callbacks."""
    stored = stored_shapes(path, trust_pickle)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    lora = getattr(getattr(model, "train_cfg", None), "lora", None)
    if lora is not None and lora.rank:  # adapters + trained tensors: the frozen base comes from init_from
        stored = {k.replace(".base_layer.", "."): v for k, v in stored.items() if ".lora_" not in k}
        own = {k: v for k, v in own.items() if k in stored or not k.startswith("var.")}
    missing = sorted(k for k in own if k not in stored)
    wrong = sorted(f"{k} {stored[k]} vs {own[k]}" for k in own if k in stored and stored[k] != own[k])
    children = {name for name, _ in model.named_children()}  # a deeper checkpoint's extra var.blocks.N.*
    extra = sorted(k for k in stored if k not in own and k.split(".", 1)[0] in children)
    if not missing and not wrong and not extra:
        return
    parts = [
        f"{len(v)} {label}: {', '.join(v[:6])}{' ...' if len(v) > 6 else ''}"
        for label, v in (
            ("missing", missing),
            ("with other shapes", wrong),
            ("not in this run's model", extra),
        )
        if v
    ]
    raise ValueError(
        f"resume={path}: the checkpoint's model differs from this run's ({'; '.join(parts)}); resume with the "
        f"configuration that wrote it (the same experiment and model.* settings; its .hydra/config.yaml lists "
        f"them), or start from its weights with init_from={path}, which adapts the class count and schedule"
    )
