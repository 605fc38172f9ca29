"""Generation metrics of a conditional image generator: sample a fixed, sharded set, extract features,
gather them and score them against reference statistics. Shared by the training callback and var-eval.

``GenerationEvaluator`` accumulates one rank's samples (images in [0, 1] or uint8, their labels and
their global indices); ``gather()`` combines all ranks in global-index order, so every number
(including the order-dependent Inception Score splits and the KID subsets) is the same for any world
size; ``compute(ref)`` returns the metrics. ``sample_and_measure`` drives a ``generate(labels, seed)``
function over the rank's batches (see ``sharding``); ``measure_dataset`` scores real images the same
way (the real-vs-real baseline).

Shapes: N samples, B batch, F features, K extractor classes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from rich.progress import Progress
from torch.utils.data import DataLoader, Dataset, Subset

from var_lightning.distributed import rank as current_rank
from var_lightning.evaluation.classifier import class_accuracy
from var_lightning.evaluation.extractors import FeatureExtractor, to_uint8
from var_lightning.evaluation.fid import FeatureStats, GaussianStats
from var_lightning.evaluation.scores import compute_generation_metrics
from var_lightning.evaluation.sharding import gather_rows, rank_batches
from var_lightning.seeds import batch_seed

_log = logging.getLogger(__name__)

# (labels (B,), seed) -> images (B, 3, H, W) in [0, 1]
GenerateFn = Callable[[torch.Tensor, int], torch.Tensor]


@dataclass
class MetricSettings:
    """How the scores are computed (goes into reports: numbers computed differently are not comparable).

    is_splits: "adm" (chunks of 5000, the ADM evaluator's rule) or n equal splits (torch-fidelity's).
    precision_recall: keep features for precision/recall (and KID); kid: also compute KID (torch-fidelity's
    defaults: 100 subsets of 1000). class_accuracy: with an extractor whose classes are the generator's
    (the dataset classifier)."""

    fid_method: Literal["eigh", "sqrtm"] = "eigh"
    is_splits: str | int = "adm"
    pr_k: int = 3
    precision_recall: bool = True
    kid: bool = False
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    class_accuracy: bool = False

    def __post_init__(self) -> None:
        if self.fid_method not in ("eigh", "sqrtm"):
            raise ValueError(f"fid_method={self.fid_method!r}: choose 'eigh' or 'sqrtm'")
        if self.is_splits != "adm" and (isinstance(self.is_splits, bool) or not isinstance(self.is_splits, int)
                                        or self.is_splits < 1):  # fmt: skip
            raise ValueError(f"is_splits={self.is_splits!r}: 'adm' (chunks of 5000) or a positive integer")
        if self.pr_k < 1 or self.kid_subsets < 1 or self.kid_subset_size < 2:
            raise ValueError(
                f"pr_k ({self.pr_k}) and kid_subsets ({self.kid_subsets}) must be >= 1, kid_subset_size "
                f"({self.kid_subset_size}) >= 2"
            )


@dataclass
class Gathered:
    """All ranks' samples in global-index order (features/logits only when kept)."""

    stats: FeatureStats
    index_N: torch.Tensor
    labels_N: torch.Tensor
    features_NF: torch.Tensor | None
    logits_NK: torch.Tensor | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.stats.num_samples


class GenerationEvaluator:
    """One rank's running statistics of generated (or real) images in ``extractor``'s feature space."""

    def __init__(self, extractor: FeatureExtractor, settings: MetricSettings | None = None) -> None:
        self.extractor, self.settings = extractor, settings or MetricSettings()
        keep = self.settings.precision_recall or self.settings.kid
        self.stats = FeatureStats(extractor.feature_dim, keep_features=keep, device=extractor.device)
        self._index: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self._logits: list[torch.Tensor] = []

    @property
    def keeps_logits(self) -> bool:
        return self.extractor.num_classes is not None

    def update(self, images_B3HW: torch.Tensor, labels_B: torch.Tensor, index_B: torch.Tensor) -> None:
        """Images in [0, 1] (quantized to uint8 like the saved PNGs) or uint8; their labels and global
        indices (the indices only order the gathered set)."""
        out = self.extractor(to_uint8(images_B3HW))
        self.stats.update(out["features"])
        self._index.append(torch.as_tensor(index_B).long().cpu())
        self._labels.append(torch.as_tensor(labels_B).long().cpu())
        if self.keeps_logits and out["logits"] is not None:
            self._logits.append(out["logits"].float().cpu())

    def gather(self) -> Gathered:
        """Combine all ranks (a collective: every rank must call it). FID statistics are all-reduced;
        indices, labels, kept features and logits are gathered and sorted by global index."""
        stats = FeatureStats(self.stats.dim, device=self.stats.device).merge(self.stats).sync_()
        dev = self.stats.device
        index_N = gather_rows(_cat(self._index, (), torch.long).to(dev)).cpu()
        order_N = torch.argsort(index_N)
        labels_N = gather_rows(_cat(self._labels, (), torch.long).to(dev)).cpu()[order_N]
        features_NF = None
        if self.stats.keep_features:
            features_NF = gather_rows(self.stats.features().to(dev)).cpu()[order_N]
        logits_NK = None
        if self.keeps_logits:
            logits_NK = gather_rows(
                _cat(self._logits, (self.extractor.num_classes,), torch.float32).to(dev)
            ).cpu()[order_N]
        return Gathered(stats, index_N[order_N], labels_N, features_NF, logits_NK)

    def compute(self, ref: GaussianStats, gathered: Gathered | None = None) -> dict[str, float]:
        """``fid`` (+ ``is``/``is_std`` with logits, ``precision``/``recall`` and ``kid``/``kid_std`` when
        both sides kept features, ``class_acc`` when configured). Call ``gather()`` on every rank first
        (pass its result) or let this call gather (then every rank must call it)."""
        g = gathered or self.gather()
        return score(g, ref, self.settings, device=self.extractor.device)


def _cat(parts: list[torch.Tensor], tail: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros((0, *tail), dtype=dtype)


def score(
    g: Gathered,
    ref: GaussianStats,
    s: MetricSettings,
    device: torch.device | str | None = None,
    skipped: dict[str, str] | None = None,
) -> dict[str, float]:
    """The metrics of a gathered sample set against reference statistics (precision/recall run on
    ``device``: block-wise distances of 50k x 50k features take minutes on a CPU, seconds on a GPU).
    Metrics that cannot be computed (a statistics-only reference has no features for precision/recall/KID)
    are left out and recorded in ``skipped`` with the reason."""
    if g.count < 2:
        raise ValueError(f"need at least 2 samples for FID, have {g.count}")
    fake = g.stats.gaussian()
    fake.features = g.features_NF
    ref_view = GaussianStats(
        ref.mu, ref.sigma, ref.count, ref.features if g.features_NF is not None else None
    )
    if g.features_NF is not None and ref.features is None:
        _log.warning(
            "the reference statistics hold no features (mu/sigma only): precision/recall/KID are skipped"
        )
    skipped = {} if skipped is None else skipped
    out = compute_generation_metrics(
        fake,
        ref_view,
        g.logits_NK,
        is_splits=s.is_splits,
        pr_k=s.pr_k,
        kid_subsets=s.kid_subsets,
        kid_subset_size=s.kid_subset_size,
        fid_method=s.fid_method,
        device=device,
        kid=s.kid,
        precision_recall_on=s.precision_recall,
        skipped=skipped,
    )
    if "is_mean" in out:
        out["is"] = out.pop("is_mean")
    if s.class_accuracy and g.logits_NK is not None:
        out["class_acc"] = class_accuracy(g.logits_NK, g.labels_N)
    order = ("fid", "is", "is_std", "precision", "recall", "kid", "kid_std", "class_acc")
    return {k: out[k] for k in order if k in out}


def sample_and_measure(
    generate: GenerateFn,
    labels_N: torch.Tensor,
    batch_size: int,
    seed: int,
    evaluator: GenerationEvaluator,
    rank: int = 0,
    world_size: int = 1,
    on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
    progress: bool = True,
    log_every: int = 0,
) -> int:
    """Draw this rank's batches of the global set ``labels_N`` and feed them to ``evaluator``.

    ``generate(labels_B, seed)`` returns images in [0, 1]; batch b uses ``batch_seed(seed, b)``.
    ``on_batch(images, labels, index)`` sees every batch (e.g. to write PNGs). ``progress`` shows a rich
    bar on rank 0 (turn it off inside a Lightning run, whose own bar owns the terminal); ``log_every``
    logs a line every that many batches instead. Returns the number of samples drawn on this rank.
    """
    batches = rank_batches(labels_N.numel(), batch_size, rank, world_size)
    drawn = 0
    with Progress(transient=True, disable=not progress or rank != 0) as bar:
        task = bar.add_task("sampling", total=len(batches))
        for i, (b, sl) in enumerate(batches):
            label_B = labels_N[sl]
            index_B = torch.arange(sl.start, sl.stop)
            images_B3HW = generate(label_B, batch_seed(seed, b))
            evaluator.update(images_B3HW, label_B, index_B)
            if on_batch is not None:
                on_batch(images_B3HW, label_B, index_B)
            drawn += label_B.numel()
            bar.advance(task)
            if log_every and rank == 0 and ((i + 1) % log_every == 0 or i + 1 == len(batches)):
                _log.info("sampled %d/%d batches on rank 0", i + 1, len(batches))
    return drawn


def dataset_labels(dataset: Dataset) -> torch.Tensor | None:
    """The (N,) labels of a dataset when it exposes them cheaply (``labels_N``, ``targets``), else None."""
    for name in ("labels_N", "targets"):
        labels = getattr(dataset, name, None)
        if labels is not None:
            return torch.as_tensor(labels).long()
    return None


def measure_dataset(
    dataset: Dataset,
    evaluator: GenerationEvaluator,
    count: int | None = None,
    indices: Sequence[int] | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
) -> int:
    """Feed real images ``(img in [-1, 1], label)`` of ``dataset`` to ``evaluator``: the first ``count``
    items, or exactly ``indices`` (a rank's shard). Returns the number of images seen."""
    if indices is None:
        n = len(dataset) if count is None else min(count, len(dataset))
        indices = range(n)
    indices = list(indices)
    loader = DataLoader(
        Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
    seen = 0
    for x_B3HW, y_B in loader:
        index_B = torch.as_tensor(indices[seen : seen + x_B3HW.shape[0]])
        evaluator.update(((x_B3HW.float() + 1) / 2).clamp(0, 1), torch.as_tensor(y_B), index_B)
        seen += x_B3HW.shape[0]
    if current_rank() == 0:
        _log.info("extracted features of %d real images", seen)
    return seen
