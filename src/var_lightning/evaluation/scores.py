"""Inception Score, improved precision/recall (Kynkaanniemi et al. 2019) and KID.

All functions take plain tensors so they work on any extractor's outputs. Distances and kernels run on
the device of the inputs (move features to the GPU for 50k-sample runs); memory stays bounded by
``batch_size`` x ``batch_size`` blocks.

Shapes: N generated samples, M reference samples, F feature dimension, K classes.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from var_lightning.evaluation.fid import FeatureStats, GaussianStats, frechet_distance


def inception_score(
    logits_NK: torch.Tensor, splits: int = 10, shuffle_seed: int | None = None
) -> tuple[float, float]:
    """Mean and std over ``splits`` contiguous chunks of exp(E_x KL(p(y|x) || p(y))).

    The standard formula (improved-GAN, ADM evaluator, torch-fidelity), in float64 from logits.
    ``shuffle_seed`` permutes samples first, as torch-fidelity does (seed 2020); None keeps the order,
    as the ADM evaluator does. Uniform logits give 1; confident predictions spread evenly over K classes
    give K.
    """
    if logits_NK.ndim != 2 or logits_NK.shape[0] == 0:
        raise ValueError(f"expected logits of shape (N, K) with N > 0, got {tuple(logits_NK.shape)}")
    n = logits_NK.shape[0]
    if shuffle_seed is not None:
        perm = np.random.RandomState(shuffle_seed).permutation(n)
        logits_NK = logits_NK[torch.from_numpy(perm).to(logits_NK.device)]
    logits_NK = logits_NK.detach().double()
    log_p_NK = logits_NK.log_softmax(dim=1)
    splits = max(1, min(splits, n))
    scores = []
    for i in range(splits):
        log_p = log_p_NK[i * n // splits : (i + 1) * n // splits]
        p = log_p.exp()
        log_q_1K = torch.logsumexp(log_p, dim=0, keepdim=True) - math.log(log_p.shape[0])
        kl = (p * (log_p - log_q_1K)).sum(dim=1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _kth_neighbour_radii(x_NF: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """(N,) distance of each row to its k-th nearest other row (the row itself counts as the 0-th)."""
    radii = []
    for xb in x_NF.split(batch_size):
        best = None  # (b, k+1) smallest distances seen so far
        for yb in x_NF.split(batch_size):
            d = torch.cdist(xb, yb)
            cand = d if best is None else torch.cat([best, d], dim=1)
            best = cand.topk(min(k + 1, cand.shape[1]), dim=1, largest=False).values
        if best.shape[1] < k + 1:
            raise ValueError(f"need more than k={k} samples for k-NN radii, have {x_NF.shape[0]}")
        radii.append(best[:, k])
    return torch.cat(radii)


def _coverage(
    query_QF: torch.Tensor, support_SF: torch.Tensor, radii_S: torch.Tensor, batch_size: int
) -> float:
    """Fraction of query rows that fall inside at least one support row's k-NN ball."""
    inside = []
    for qb in query_QF.split(batch_size):
        hit = torch.zeros(qb.shape[0], dtype=torch.bool, device=qb.device)
        for sb, rb in zip(support_SF.split(batch_size), radii_S.split(batch_size), strict=True):
            hit |= (torch.cdist(qb, sb) <= rb[None, :]).any(dim=1)
        inside.append(hit)
    return torch.cat(inside).float().mean().item()


def precision_recall(
    fake_NF: torch.Tensor, real_MF: torch.Tensor, k: int = 3, batch_size: int = 2048
) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold).

    Each manifold is the union of balls around its samples with radius = distance to the k-th nearest
    neighbour (Kynkaanniemi et al. 2019, k=3). Computed block-wise: 50k x 2048 features fit easily.
    """
    if fake_NF.shape[1] != real_MF.shape[1]:
        raise ValueError(f"feature dims differ: {fake_NF.shape[1]} vs {real_MF.shape[1]}")
    fake_NF, real_MF = fake_NF.float(), real_MF.float().to(fake_NF.device)
    real_radii = _kth_neighbour_radii(real_MF, k, batch_size)
    fake_radii = _kth_neighbour_radii(fake_NF, k, batch_size)
    precision = _coverage(fake_NF, real_MF, real_radii, batch_size)
    recall = _coverage(real_MF, fake_NF, fake_radii, batch_size)
    return precision, recall


def _poly_kernel(x: torch.Tensor, y: torch.Tensor, degree: int, coef0: float) -> torch.Tensor:
    return ((x @ y.T / x.shape[1] + coef0) ** degree).double()


def _mmd2_unbiased(k_xx: torch.Tensor, k_xy: torch.Tensor, k_yy: torch.Tensor) -> float:
    m = k_xx.shape[0]
    sum_xx = k_xx.sum() - k_xx.diagonal().sum()
    sum_yy = k_yy.sum() - k_yy.diagonal().sum()
    return ((sum_xx + sum_yy) / (m * (m - 1)) - 2 * k_xy.sum() / (m * m)).item()


def kernel_inception_distance(
    fake_NF: torch.Tensor,
    real_MF: torch.Tensor,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): mean and std of the unbiased MMD^2 with the polynomial kernel
    (x.y / F + coef0)^degree over ``num_subsets`` random subsets of ``subset_size`` (capped at the
    smaller set), as torch-fidelity computes it: kernels in float32 (fast on any device), sums in float64."""
    m = min(subset_size, fake_NF.shape[0], real_MF.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 samples in each set")
    fake_NF, real_MF = fake_NF.float(), real_MF.float().to(fake_NF.device)
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(num_subsets):
        x = fake_NF[torch.from_numpy(rng.choice(fake_NF.shape[0], m, replace=False)).to(fake_NF.device)]
        y = real_MF[torch.from_numpy(rng.choice(real_MF.shape[0], m, replace=False)).to(fake_NF.device)]
        values.append(
            _mmd2_unbiased(
                _poly_kernel(x, x, degree, coef0),
                _poly_kernel(x, y, degree, coef0),
                _poly_kernel(y, y, degree, coef0),
            )
        )
    return float(np.mean(values)), float(np.std(values))


def compute_generation_metrics(
    fake: FeatureStats | GaussianStats,
    ref: FeatureStats | GaussianStats,
    logits_NK: torch.Tensor | None = None,
    is_splits: int = 10,
    pr_k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    fid_method: Literal["eigh", "sqrtm"] = "eigh",
    device: torch.device | str | None = None,
    kid: bool = True,
) -> dict[str, float]:
    """``fid`` always; ``is_mean``/``is_std`` when ``logits_NK`` (of the fake samples) is given;
    ``precision``/``recall`` (and ``kid``/``kid_std`` unless ``kid=False``) when both sides kept their
    features. Keys carry no split prefix: the caller logs them as ``val/fid`` etc. ``device`` runs
    precision/recall/KID there."""
    fake_g = fake.gaussian() if isinstance(fake, FeatureStats) else fake
    ref_g = ref.gaussian() if isinstance(ref, FeatureStats) else ref
    out = {"fid": frechet_distance(fake_g.mu, fake_g.sigma, ref_g.mu, ref_g.sigma, method=fid_method)}
    if logits_NK is not None:
        out["is_mean"], out["is_std"] = inception_score(logits_NK, splits=is_splits)
    if fake_g.features is not None and ref_g.features is not None:
        fake_NF, ref_MF = fake_g.features.to(device or "cpu"), ref_g.features.to(device or "cpu")
        out["precision"], out["recall"] = precision_recall(fake_NF, ref_MF, k=pr_k)
        if kid:
            out["kid"], out["kid_std"] = kernel_inception_distance(
                fake_NF, ref_MF, kid_subsets, kid_subset_size
            )
    return out
