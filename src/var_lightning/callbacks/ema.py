"""An exponential moving average of the transformer's weights, on the training device, sharded like them.

Why not Lightning's ``EMAWeightAveraging``: it deep-copies the whole LightningModule in ``setup``, before the
strategy moves it to the GPU and before sharding, so on a GPU the average lives on the CPU and every step
copies the whole module (the frozen tokenizer included) to the host, and under FSDP it averages full
tensors against sharded ones. Here the average is a frozen copy of the transformer only, registered on the
LightningModule as ``var_ema`` before ``configure_model`` runs: the strategy moves it with the model and
``configure_model`` shards it exactly like ``var``, so each rank averages its own shards in place.

Because ``var_ema`` is part of the module's ``state_dict``, every checkpoint (a file, or a sharded DCP
directory) carries both the raw weights (``var.*``, what training resumes from) and the average
(``var_ema.*``, what ``load_models``, ``var-sample``, ``var-eval`` and ``init_from`` use when present).
Validation, its image grids and generation metrics see the averaged weights: they are swapped into
``var`` from ``on_validation_start`` to ``on_validation_end`` (before the checkpoint callbacks save).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytorch_lightning as L
import torch

from var_lightning.training.sharding import local_tensors

log = logging.getLogger(__name__)


def _swap(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Exchange the parameter values of two modules of the same structure and sharding, in place (each rank
    its own shards; three fused calls)."""
    pa, pb = local_tensors(a), local_tensors(b)
    with torch.no_grad():
        tmp = torch._foreach_add(pa, 0)  # a copy of a's values
        torch._foreach_copy_(pa, pb)
        torch._foreach_copy_(pb, tmp)


class TransformerEMA(L.Callback):
    """EMA of ``pl_module.var``: ``ema = decay * ema + (1 - decay) * weights`` after every optimizer step from
    ``update_starting_at_step`` on (before it the average follows the weights). ``decay`` 0.9999 is a common
    choice for long runs; short runs want less (the average needs ~1 / (1 - decay) steps to forget its start).
    """

    # first of the callbacks (var-train sorts it there): a periodic or pre-emption save at the end of a step
    # must hold that step's average, or the resumed run misses one update
    RUNS_FIRST = True

    def __init__(self, decay: float = 0.9999, update_starting_at_step: int = 0) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"callbacks.ema.decay={decay} must be in [0, 1)")
        self.decay, self.update_starting_at_step = float(decay), int(update_starting_at_step)
        self._swapped = False
        self._updated_at = -1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "STAGE", None) not in ("var", "ar"):
            raise TypeError(
                f"callbacks.ema averages a transformer (VAR or AR stage); {type(pl_module).__name__} has none"
            )
        if getattr(pl_module, "var_ema", None) is None:  # before configure_model: sharded and moved like var
            pl_module.var_ema = copy.deepcopy(pl_module.var).requires_grad_(False).eval()
            log.info("EMA of the transformer (decay %g) on the training device", self.decay)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if step == self._updated_at:  # no optimizer step in this batch (gradient accumulation)
            return
        self._updated_at = step
        weight = 1.0 if step <= self.update_starting_at_step else 1.0 - self.decay
        # one fused call over all parameters, sharded or not (each rank's local shards): this runs every step
        with torch.no_grad():
            torch._foreach_lerp_(local_tensors(pl_module.var_ema), local_tensors(pl_module.var), weight)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and not self._swapped:
            _swap(pl_module.var, pl_module.var_ema)
            self._swapped = True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._swapped:
            _swap(pl_module.var, pl_module.var_ema)
            self._swapped = False
