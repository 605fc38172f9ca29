"""FID, IS and precision/recall of a VAR during training, against cached statistics of the validation data.

Every ``every_n_epochs`` epochs (or at the first validation after every ``every_n_steps`` steps) the
module samples ``num_samples`` class-balanced images, sharded over the ranks (batch b with seed
``seed * 100003 + b`` on rank ``b % world``: the same images for any number of GPUs, and the same
images at every evaluation, so the curve shows the model changing, not the noise). Features are
all-reduced / gathered, rank 0 scores them, and every rank logs the same values: ``val/fid``,
``val/fid_best``, ``val/is``, ``val/precision``, ``val/recall`` (``val/kid`` with ``kid``, ``val/class_acc``
with the dataset-classifier extractor).

Why a callback: the feature network (91 MB for Inception) must not end up in the model checkpoint; a
callback attribute is not in the module's ``state_dict``, and this callback's own ``state_dict`` holds only
the best value and the step schedule. Why ``on_validation_epoch_end``: with ``callbacks=ema``
(:class:`~var_lightning.callbacks.ema.TransformerEMA`) the averaged weights are in the transformer from
``on_validation_start`` to ``on_validation_end``, so the metrics describe the weights validation uses. With
Lightning's own ``EMAWeightAveraging`` listed earlier, its epoch-end hook has already swapped the weights
back into its averaged copy: the samples are drawn from that copy. A sharded transformer is sampled from
its gathered full weights (every rank gathers; each samples its share).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Mapping
from typing import Any

import pytorch_lightning as L
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Subset

from var_lightning.evaluation.extra_fd import (
    EXTRA_FD,
    InceptionSpatial,
    TeeEvaluator,
    check_names,
    extra_distances,
)
from var_lightning.evaluation.extractors import FeatureExtractor, InceptionTF, build_extractor
from var_lightning.evaluation.fid import GaussianStats
from var_lightning.evaluation.generation import GenerationEvaluator, MetricSettings, sample_and_measure, score
from var_lightning.evaluation.reference import reference_stats
from var_lightning.evaluation.scores import KID_DEFAULT_SUBSET, resolve_kid_subset
from var_lightning.evaluation.sharding import broadcast_object, class_balanced_labels
from var_lightning.evaluation.splits import datamodule_source_id, dataset_split

log = logging.getLogger(__name__)

try:  # Lightning >= 2.5
    from pytorch_lightning.callbacks import WeightAveraging
except ImportError:  # pragma: no cover - older Lightning has no weight averaging callback
    WeightAveraging = None  # type: ignore[assignment,misc]

SAMPLING_KEYS = ("cfg", "top_k", "top_p", "more_smooth")


class GenerationMetrics(L.Callback):
    """Generation metrics of a ``VARModule`` (anything with ``generate(labels, seed=..., **sampling)``).

    num_samples: images per evaluation (all ranks together). sampling: overrides of the module's
    ``sampling_cfg`` (cfg, top_k, top_p, more_smooth); None/{} keeps the module's. extractor: a
    ``build_extractor`` mapping (``{name: inception-tf, weights_path: ...}``, ``{name: classifier, path:
    ...}``). reference: an ``.npz`` (ADM reference batch) or image folder; None = the datamodule's
    ``reference_split``. num_reference: reference images used (None = all). cache_dir: where reference
    statistics are cached between runs (None: kept in memory for this run only). precision_recall / kid:
    keep features for precision/recall, also compute KID. extra_fd: ``[sfid]``, ``[fd_dinov2]`` or both,
    logged as ``val/sfid`` / ``val/fd_dinov2`` (:mod:`var_lightning.evaluation.extra_fd`). config_key: where this
    callback sits in the config (error messages name its keys).
    """

    def __init__(
        self,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        num_samples: int = 5000,
        batch_size: int = 64,
        seed: int = 0,
        classes: list[int] | None = None,
        sampling: Mapping[str, Any] | None = None,
        extractor: Mapping[str, Any] | str = "inception-tf",
        reference: str | None = None,
        reference_split: str = "val",
        num_reference: int | None = None,
        cache_dir: str | None = None,
        precision_recall: bool = True,
        kid: bool = False,
        kid_subsets: int = 100,
        kid_subset_size: int | None = None,
        fid_method: str = "eigh",
        is_splits: str | int = "adm",
        pr_k: int = 3,
        extra_fd: list[str] | None = None,
        config_key: str = "callbacks.generation_metrics",
    ) -> None:
        super().__init__()
        key = config_key
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"{key}.every_n_steps={every_n_steps} must be >= 1 (or null)")
        if every_n_epochs is not None and every_n_epochs < 1:
            raise ValueError(f"{key}.every_n_epochs={every_n_epochs} must be >= 1 (or null)")
        if every_n_steps is None and every_n_epochs is None:
            raise ValueError(f"set {key}.every_n_epochs or {key}.every_n_steps")
        if num_samples < 2 or batch_size < 1:
            raise ValueError(f"{key}.num_samples ({num_samples}) must be >= 2 and {key}.batch_size >= 1")
        if kid:
            size, note = resolve_kid_subset(
                kid_subset_size, num_samples, num_reference, key=f"{key}.kid_subset_size"
            )
            if note:
                rank_zero_warn(note)
            kid, kid_subset_size = size is not None, size
        unknown = set(sampling or {}) - set(SAMPLING_KEYS)
        if unknown:
            raise ValueError(
                f"{key}.sampling has unknown keys {sorted(unknown)}; valid: {list(SAMPLING_KEYS)}"
            )
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self._told_batch = False
        self.classes = None if classes is None else [int(c) for c in classes]
        self.sampling = {k: v for k, v in dict(sampling or {}).items() if v is not None}
        self.extractor_spec = extractor if isinstance(extractor, str) else dict(extractor)
        self.reference, self.reference_split, self.num_reference = reference, reference_split, num_reference
        self.cache_dir = cache_dir
        self.settings = MetricSettings(
            fid_method=fid_method,
            is_splits=is_splits,
            pr_k=pr_k,
            precision_recall=precision_recall,
            kid=kid,
            kid_subsets=kid_subsets,
            kid_subset_size=kid_subset_size or KID_DEFAULT_SUBSET,
        )
        self.config_key = config_key
        self.extractor: FeatureExtractor | None = None
        self.extra_fd = check_names(
            list(extra_fd or [])
        )  # sfid / fd_dinov2 next to FID (evaluation.extra_fd)
        self.extras: dict[str, FeatureExtractor] = {}
        self._references: dict[str, GaussianStats] = {}  # by extractor name
        self.best_fid, self.best_step, self.best_epoch = math.inf, -1, -1
        self._last_bucket = 0
        self.last_metrics: dict[str, float] = {}

    # ------------------------------------------------------------------ state (small things only)
    def state_dict(self) -> dict[str, Any]:
        return {
            "best_fid": self.best_fid,
            "best_step": self.best_step,
            "best_epoch": self.best_epoch,
            "last_bucket": self._last_bucket,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_fid = float(state_dict.get("best_fid", math.inf))
        self.best_step = int(state_dict.get("best_step", -1))
        self.best_epoch = int(state_dict.get("best_epoch", -1))
        self._last_bucket = int(state_dict.get("last_bucket", 0))

    # ------------------------------------------------------------------ setup
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "generate", None)):
            raise TypeError(
                f"{self.config_key} (GenerationMetrics) needs a VAR-stage module with generate(); "
                f"{type(pl_module).__name__} has none (for a tokenizer use callbacks=[default,recon_metrics])"
            )
        if self.extractor is None:  # built now so that missing weights fail at startup, not after an epoch
            if trainer.world_size > 1 and not trainer.is_global_zero:
                trainer.strategy.barrier("generation_metrics_extractor")  # rank 0 downloads first
            self.extractor = build_extractor(self.extractor_spec, f"{self.config_key}.extractor")
            self.extras = self._build_extras()
            if trainer.world_size > 1 and trainer.is_global_zero:
                trainer.strategy.barrier("generation_metrics_extractor")
            self.settings.class_accuracy = self.extractor.name == "classifier"
            if self.extractor.name == "tiny-random":
                log.warning("%s uses the tiny-random extractor: its numbers mean nothing", self.config_key)
            for metric, why in self.extractor.unavailable.items() if trainer.is_global_zero else ():
                log.warning("%s: no %s: %s", self.config_key, metric, why)

    def _due(self, trainer: L.Trainer) -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.fast_dev_run:
            return True
        if self.every_n_steps is not None:
            return trainer.global_step // self.every_n_steps > self._last_bucket
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    # ------------------------------------------------------------------ reference statistics
    def _build_extras(self) -> dict[str, FeatureExtractor]:
        """sFID reads the FID Inception's own network when that is the main extractor."""
        out: dict[str, FeatureExtractor] = {}
        for name in self.extra_fd:
            if name == "sfid" and type(self.extractor) is InceptionTF:
                out[name] = InceptionSpatial(share=self.extractor)
            else:
                out[name] = build_extractor({"name": EXTRA_FD[name]}, f"{self.config_key}.extra_fd")
        return out

    def _reference_stats(
        self, trainer: L.Trainer, extractor: FeatureExtractor | None = None
    ) -> GaussianStats:
        """Rank 0 only: loaded from ``cache_dir`` or computed once (then kept in memory), per extractor."""
        extractor = extractor or self.extractor
        if extractor.name in self._references:
            return self._references[extractor.name]
        keep = (self.settings.precision_recall or self.settings.kid) and extractor is self.extractor
        dm = getattr(trainer, "datamodule", None)
        workers = int(getattr(dm, "num_workers", 0) or 0)
        common = dict(count=self.num_reference, keep_features=keep, progress=False, num_workers=workers)
        if self.reference is not None:
            stats = reference_stats(self.reference, extractor, self.cache_dir, **common)
        else:
            if dm is None:
                raise ValueError(
                    f"{self.config_key}.reference is not set and the trainer has no datamodule: give "
                    f"{self.config_key}.reference=/path/to/reference.npz (or an image folder)"
                )
            dataset = dataset_split(dm, self.reference_split, f"{self.config_key}.reference_split")
            n = len(dataset) if self.num_reference is None else min(self.num_reference, len(dataset))
            ident = datamodule_source_id(dm, self.reference_split, len(dataset))
            if n < len(
                dataset
            ):  # a seeded random subset, not the first n (an ImageFolder is sorted by class)
                picked = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(self.seed))[:n]
                dataset = Subset(dataset, sorted(picked.tolist()))
                ident += f":subset{n}:seed{self.seed}"
            common["count"] = None
            stats = reference_stats(dataset, extractor, self.cache_dir, source_id=ident, **common)
            stats.meta["source"] = f"{type(dm).__name__} {self.reference_split} split ({n} images)"
        self._references[extractor.name] = stats
        return stats

    # ------------------------------------------------------------------ evaluation
    def _sampler(self, trainer: L.Trainer, pl_module: L.LightningModule) -> L.LightningModule:
        """The module holding the weights validation uses (see the module docstring on EMA)."""
        if WeightAveraging is not None:
            mine = trainer.callbacks.index(self) if self in trainer.callbacks else len(trainer.callbacks)
            for cb in trainer.callbacks[:mine]:
                if isinstance(cb, WeightAveraging) and getattr(cb, "_average_model", None) is not None:
                    return cb._average_model.module  # EMA callback already swapped its weights back
        return pl_module

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._due(trainer):
            return
        if self.every_n_steps is not None:
            self._last_bucket = trainer.global_step // self.every_n_steps
        metrics = self.evaluate(trainer, pl_module)
        self.last_metrics = metrics
        fid = metrics["fid"]
        if fid < self.best_fid:
            self.best_fid, self.best_step, self.best_epoch = fid, trainer.global_step, trainer.current_epoch
        logged = {f"val/{k}": v for k, v in metrics.items() if k != "is_std"}
        logged["val/fid_best"] = self.best_fid
        pl_module.log_dict(logged, on_step=False, on_epoch=True, sync_dist=False)
        if trainer.is_global_zero:
            log.info(
                "generation metrics at step %d: %s",
                trainer.global_step,
                ", ".join(f"{k}={v:.4g}" for k, v in logged.items()),
            )

    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Sample, extract, gather and score; every rank gets rank 0's metrics."""
        device = pl_module.device
        self.extractor.to(device)
        for e in self.extras.values():
            e.to(device)
        ref = self._reference_stats(trainer) if trainer.is_global_zero else None  # only rank 0 scores
        num_classes = getattr(getattr(trainer, "datamodule", None), "num_classes", None)
        num_classes = int(num_classes or pl_module.var.num_classes)
        n, batch_size = self.num_samples, self.batch_size
        if hasattr(pl_module, "sampling_batch"):  # calls within model.train.sample_memory_gib
            batch_size = min(batch_size, pl_module.sampling_batch())
            if batch_size < self.batch_size and not self._told_batch:
                self._told_batch = True
                log.info("generation metrics: %d images per sampling call (model.train.sample_memory_gib=%g; "
                         "batch_size=%d asked)", batch_size, pl_module.train_cfg.sample_memory_gib,
                         self.batch_size)  # fmt: skip
        if trainer.fast_dev_run:  # one batch per rank: checks the pipeline, not the model
            n = min(n, max(2, batch_size * trainer.world_size))
        labels_N = class_balanced_labels(num_classes, num_samples=n, classes=self.classes, seed=self.seed)

        sampler = self._sampler(trainer, pl_module)
        was_training = sampler.training
        sampler.eval()
        full_weights = sampler.gathered() if getattr(sampler, "sharded", False) else contextlib.nullcontext()
        precision_ctx = trainer.precision_plugin.forward_context

        def generate(labels_B: torch.Tensor, seed: int) -> torch.Tensor:
            with precision_ctx():
                return sampler.generate(labels_B.to(device), seed=seed, **self.sampling).float()

        fd_only = MetricSettings(fid_method=self.settings.fid_method, precision_recall=False, kid=False)
        evaluator = TeeEvaluator(GenerationEvaluator(self.extractor, self.settings),
                                 {k: GenerationEvaluator(e, fd_only) for k, e in self.extras.items()})  # fmt: skip
        nb = math.ceil(n / batch_size)
        try:
            with full_weights:  # a sharded transformer: every rank gathers the full weights, then samples
                sample_and_measure(
                    generate,
                    labels_N,
                    batch_size,
                    self.seed,
                    evaluator,
                    rank=trainer.global_rank,
                    world_size=trainer.world_size,
                    progress=False,
                    log_every=max(1, nb // 10) if nb >= 20 else 0,
                )
        finally:
            sampler.train(was_training)
        gathered, gathered_extra = evaluator.gather(), evaluator.gather_extras()
        metrics = score(gathered, ref, self.settings, device=device) if trainer.is_global_zero else None
        if trainer.is_global_zero and self.extras:  # sFID / FD-DINOv2 of the same samples
            refs = {k: self._reference_stats(trainer, e) for k, e in self.extras.items()}
            metrics.update(extra_distances(gathered_extra, refs))
        return broadcast_object(metrics)
