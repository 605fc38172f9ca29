"""``save_top_k`` that stays true across kills.

``ModelCheckpoint`` writes a new best file, then deletes the one it replaces; a job killed in between (or
after writing a best file of an epoch that the resumed run will replay) leaves a file that the restored
callback state no longer tracks. Lightning never deletes untracked files, and when the replay reaches the
same name it writes ``...-v1.ckpt`` beside it: after a few pre-emptions ``best-*`` files pile up beyond
``save_top_k``.

When a run resumes, for every ``ModelCheckpoint`` whose state came back from the checkpoint (same
``state_key`` and ``dirpath``, so the restored top-k list is authoritative), files in its directory that
match its ``filename`` pattern (and Lightning's ``-v<n>`` variants) but are neither in its top-k list nor its
last/best path are removed, with a log line naming them. Nothing is touched on a fresh run, for callbacks
that keep every file (``save_top_k=-1``), or when the state did not come back.

A run folder copied or moved elsewhere and resumed there: Lightning restores a ``ModelCheckpoint``'s top-k
list only when its ``dirpath`` is the one recorded, so the copy's best files went untracked (a new best was
added beside them and ``last.ckpt`` became ``last-v1.ckpt``). When every file the recorded state names is
present under the same name in the callback's current folder, the state is moved there first (logged).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytorch_lightning as L
from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)


def _pattern(cb: ModelCheckpoint) -> re.Pattern[str]:
    """A regex for the file names ``cb`` writes: its ``filename`` template with every ``{...}`` a wildcard."""
    template = cb.filename or "{epoch}-{step}"
    parts = re.split(r"\{[^}]*\}", template)
    body = ".+".join(re.escape(p) for p in parts)
    return re.compile(rf"^{body}(-v\d+)?{re.escape(cb.FILE_EXTENSION)}$")


def _moved_state(state: dict[str, Any], new_dir: str) -> dict[str, Any] | None:
    """``state`` with its paths moved from its recorded ``dirpath`` to ``new_dir``; None unless every file it
    names is there under the same name (a copy of the run folder, not another run's checkpoints)."""

    def move(p: Any) -> Any:
        return str(Path(new_dir) / Path(p).name) if isinstance(p, str) and p else p

    named = [*state.get("best_k_models", {}), state.get("last_model_path"), state.get("best_model_path"),
             state.get("kth_best_model_path")]  # fmt: skip
    if not all(Path(move(p)).is_file() for p in named if p):
        return None
    return {**state, "dirpath": new_dir,
            **{k: move(state.get(k)) for k in ("best_model_path", "kth_best_model_path", "last_model_path")},
            "best_k_models": {move(p): v for p, v in (state.get("best_k_models") or {}).items()}}  # fmt: skip


class TopKHousekeeping(L.Callback):
    """See the module docstring."""

    def __init__(self) -> None:
        self._restored: dict[str, Any] = {}
        self.removed: list[Path] = []

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        states = checkpoint.get("callbacks") or {}
        for (
            cb
        ) in trainer.checkpoint_callbacks:  # before the callbacks' own load_state_dict (Lightning's order)
            state = states.get(cb.state_key) if isinstance(cb, ModelCheckpoint) else None
            if isinstance(state, dict) and cb.dirpath and state.get("dirpath") not in (None, cb.dirpath):
                moved = _moved_state(state, cb.dirpath)
                if moved is not None:
                    if trainer.is_global_zero:
                        log.info("the run folder moved: checkpoints recorded in %s are tracked in %s",
                                 state["dirpath"], cb.dirpath)  # fmt: skip
                    states[cb.state_key] = moved
        self._restored = dict(states)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        restored, self._restored = self._restored, {}
        if not restored or not trainer.is_global_zero:
            return
        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or cb.save_top_k < 0 or not cb.dirpath:
                continue
            state = restored.get(cb.state_key)
            if not isinstance(state, dict) or state.get("dirpath", cb.dirpath) != cb.dirpath:
                continue
            keep = {
                Path(p).resolve() for p in (*cb.best_k_models, cb.last_model_path, cb.best_model_path) if p
            }
            if trainer.ckpt_path:
                keep.add(Path(trainer.ckpt_path).resolve())
            pattern, folder = _pattern(cb), Path(cb.dirpath)
            if not folder.is_dir():
                continue
            stale = [
                p
                for p in folder.iterdir()
                if p.is_file() and pattern.match(p.name) and p.resolve() not in keep
            ]
            for p in stale:
                p.unlink(missing_ok=True)
            if stale:
                self.removed += stale
                log.info(
                    "removed %d checkpoint(s) beyond save_top_k=%d that an interrupted run left in %s: %s",
                    len(stale), cb.save_top_k, folder, ", ".join(p.name for p in stale),
                )  # fmt: skip
