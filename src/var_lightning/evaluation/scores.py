"""Inception Score, improved precision/recall and KID on extracted features, the conventions recorded.

KID and precision/recall are torch-fidelity's own feature-level functions (``kid_features_to_metric``,
``prc_features_to_metric``) with its defaults (KID: 100 subsets of 1000, seed 2020; precision/recall:
k = 3). The Inception Score follows one of two split rules, recorded in the report because they give
different numbers away from 50k samples:

* ``"adm"`` (default): OpenAI's ADM evaluator (``evaluator.py``, what the paper reports): consecutive
  chunks of 5,000 samples in sample order, the last one possibly shorter (10 chunks at 50k, 2 at 10k).
  torch-fidelity has no fixed-chunk mode, so this rule is computed here (float64, from logits).
* an integer n: torch-fidelity's ``isc_features_to_metric`` (n equal splits after a seeded shuffle).

At 50k samples the two agree exactly (ADM's chunks are torch-fidelity's 10 splits of an unshuffled set).

Shapes: N generated samples, M reference samples, F feature dimension, K classes.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
import torch

from var_lightning.evaluation.fid import FeatureStats, GaussianStats, frechet_distance

ADM_IS_CHUNK = 5000
KID_SEED = 2020  # torch-fidelity's rng_seed default
IsSplits = Literal["adm"] | int


def is_split_rule(splits: IsSplits, n: int) -> str:
    """The Inception Score's split rule in words, for reports."""
    if splits == "adm":
        k = max(1, math.ceil(n / ADM_IS_CHUNK))
        return f"adm: consecutive chunks of {ADM_IS_CHUNK} samples, unshuffled ({k} at N={n})"
    return f"torch-fidelity: {splits} equal splits after a shuffle with seed 2020"


def inception_score(logits_NK: torch.Tensor, splits: IsSplits = "adm") -> tuple[float, float]:
    """Mean and std over splits of exp(E_x KL(p(y|x) || p(y))), from logits (see the module docstring)."""
    if logits_NK.ndim != 2 or logits_NK.shape[0] == 0:
        raise ValueError(f"expected logits of shape (N, K) with N > 0, got {tuple(logits_NK.shape)}")
    if splits != "adm":
        from torch_fidelity.metric_isc import isc_features_to_metric

        if isinstance(splits, bool) or not isinstance(splits, int) or splits < 1:
            raise ValueError(f"is_splits={splits!r}: 'adm' or a positive integer (key metrics.is_splits)")
        out = isc_features_to_metric(logits_NK.detach().cpu(), splits=min(splits, logits_NK.shape[0]))
        return float(out["inception_score_mean"]), float(out["inception_score_std"])
    log_p_NK = logits_NK.detach().double().cpu().log_softmax(dim=1)
    scores = []
    for start in range(0, log_p_NK.shape[0], ADM_IS_CHUNK):
        log_p = log_p_NK[start : start + ADM_IS_CHUNK]
        log_q_1K = torch.logsumexp(log_p, dim=0, keepdim=True) - math.log(log_p.shape[0])
        scores.append((log_p.exp() * (log_p - log_q_1K)).sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def precision_recall(
    fake_NF: torch.Tensor, real_MF: torch.Tensor, k: int = 3, batch_size: int = 10000
) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold),
    Kynkaanniemi et al. 2019, through torch-fidelity (block-wise distances on the features' device)."""
    from torch_fidelity.metric_prc import prc_features_to_metric

    if fake_NF.shape[1] != real_MF.shape[1]:
        raise ValueError(f"feature dims differ: {fake_NF.shape[1]} vs {real_MF.shape[1]}")
    if min(fake_NF.shape[0], real_MF.shape[0]) <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} samples on each side")
    out = prc_features_to_metric(
        fake_NF.float(),
        real_MF.float().to(fake_NF.device),
        prc_neighborhood=k,
        prc_batch_size=batch_size,
        save_cpu_ram=True,
        verbose=False,
    )
    return float(out["precision"]), float(out["recall"])


def check_kid_subset(
    subset_size: int, n_fake: int, n_real: int | None, key: str = "metrics.kid_subset_size"
) -> None:
    """KID draws subsets of ``subset_size`` from both sets: refuse sizes larger than either set (a capped
    size would report an incomparable number and a std of 0)."""
    smallest = min(n_fake, n_real) if n_real is not None else n_fake
    if subset_size > smallest:
        raise ValueError(
            f"{key}={subset_size} exceeds the {n_fake} generated"
            f"{f' / {n_real} reference' if n_real is not None else ''} samples: KID needs subsets of that many "
            f"from both sets (torch-fidelity's default is 1000 of 50k). Lower {key} (at most {smallest}), or turn KID "
            f"off ({key.rsplit('.', 1)[0]}.kid=false)"
        )


KID_DEFAULT_SUBSET = 1000
"""torch-fidelity's KID subset size; ``kid_subset_size: null`` uses it, or fewer on a smaller set."""


PUBLISHED_FID_SAMPLES = 50_000


def sample_count_note(n_fake: int, feature_dim: int) -> str | None:
    """What a Frechet distance from ``n_fake`` samples can say, when it is less than the published protocol's
    (50,000 samples): below the feature dimension the samples' covariance is rank-deficient and the
    distance is dominated by that, above it still biased upward (it shrinks as 1/N)."""
    if n_fake <= 0 or n_fake >= PUBLISHED_FID_SAMPLES:  # 0: a source that does not say its length
        return None
    if n_fake < feature_dim:
        return (
            f"FID from {n_fake} samples: fewer images than the {feature_dim} features, so their covariance is "
            f"rank-deficient and the distance is inflated far beyond the model's quality; compare it only with "
            f"runs of the same count. Published FIDs use {PUBLISHED_FID_SAMPLES:,} samples (at least 10,000 "
            f"for a rough figure: generation.num_samples=10000)"
        )
    return (
        f"FID from {n_fake} samples: biased upward against the published protocol's {PUBLISHED_FID_SAMPLES:,} "
        f"(the bias shrinks as 1/N); compare it with runs of the same count"
    )


def resolve_kid_subset(
    configured: int | None, n_fake: int, n_real: int | None, key: str = "metrics.kid_subset_size"
) -> tuple[int | None, str | None]:
    """The KID subset size to use and a note when it differs from the default. ``configured`` None (the
    configs' default): 1000, capped to the smaller set (a small folder, a short callback run) with a note
    saying the number is not comparable with KID at 1000; None (KID skipped) below 2. A value the user set
    is never changed: one larger than either set is refused (:func:`check_kid_subset`)."""
    if configured is not None:
        check_kid_subset(configured, n_fake, n_real, key)
        return configured, None
    smallest = min(n_fake, n_real) if n_real is not None else n_fake
    if smallest >= KID_DEFAULT_SUBSET:
        return KID_DEFAULT_SUBSET, None
    sets = f"{n_fake} generated" + (f" / {n_real} reference" if n_real is not None else "")
    if smallest < 2:
        return (
            None,
            f"KID skipped: it needs subsets of at least 2 from both sets, and there are {sets} samples",
        )
    return smallest, (
        f"{key}=null: KID uses subsets of {smallest} (the {sets} samples are fewer than torch-fidelity's "
        f"{KID_DEFAULT_SUBSET}); not comparable with KID at {KID_DEFAULT_SUBSET}. Set {key} to fix the size"
    )


def kernel_inception_distance(
    fake_NF: torch.Tensor,
    real_MF: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = KID_SEED,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018) through torch-fidelity: mean and std of the unbiased MMD^2 with the
    polynomial kernel (x.y / F + 1)^3 over ``num_subsets`` random subsets of ``subset_size``."""
    from torch_fidelity.metric_kid import kid_features_to_metric

    check_kid_subset(subset_size, fake_NF.shape[0], real_MF.shape[0])
    out = kid_features_to_metric(
        fake_NF.float().cpu(),
        real_MF.float().cpu(),
        kid_subsets=num_subsets,
        kid_subset_size=subset_size,
        rng_seed=seed,
        verbose=False,
    )
    return float(out["kernel_inception_distance_mean"]), float(out["kernel_inception_distance_std"])


def compute_generation_metrics(
    fake: FeatureStats | GaussianStats,
    ref: FeatureStats | GaussianStats,
    logits_NK: torch.Tensor | None = None,
    is_splits: IsSplits = "adm",
    pr_k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    fid_method: Literal["eigh", "sqrtm"] = "eigh",
    device: torch.device | str | None = None,
    kid: bool = True,
    precision_recall_on: bool = True,
    skipped: dict[str, Any] | None = None,
) -> dict[str, float]:
    """``fid`` always; ``is_mean``/``is_std`` when ``logits_NK`` (of the fake samples) is given;
    ``precision``/``recall`` and ``kid``/``kid_std`` when enabled and both sides kept their features. A
    metric that cannot be computed is left out and, when ``skipped`` is given, recorded there with the
    reason. ``device`` runs precision/recall there."""
    fake_g = fake.gaussian() if isinstance(fake, FeatureStats) else fake
    ref_g = ref.gaussian() if isinstance(ref, FeatureStats) else ref
    out = {"fid": frechet_distance(fake_g.mu, fake_g.sigma, ref_g.mu, ref_g.sigma, method=fid_method)}
    if logits_NK is not None:
        out["is_mean"], out["is_std"] = inception_score(logits_NK, splits=is_splits)
    wanted = [
        m
        for m, on in (("precision", precision_recall_on), ("recall", precision_recall_on), ("kid", kid))
        if on
    ]
    if not wanted:
        return out
    if fake_g.features is None or ref_g.features is None:
        side = "the reference holds statistics only (mu, sigma), no features" if ref_g.features is None else (
            "the generated set's features were not kept")  # fmt: skip
        if skipped is not None:
            skipped.update(dict.fromkeys(wanted, side))
        return out
    fake_NF, ref_MF = fake_g.features.to(device or "cpu"), ref_g.features.to(device or "cpu")
    if precision_recall_on:
        out["precision"], out["recall"] = precision_recall(fake_NF, ref_MF, k=pr_k)
    if kid:
        out["kid"], out["kid_std"] = kernel_inception_distance(fake_NF, ref_MF, kid_subsets, kid_subset_size)
    return out
