"""Reconstruction metrics for tokenizers: PSNR, SSIM, LPIPS and rFID over (real, reconstruction) pairs.

Images are float (B, 3, H, W) in ``value_range`` ((-1, 1) by default, the range the tokenizer works in;
pass (0, 1) for [0, 1] images). They are clamped to that range and mapped to [0, 1] before PSNR/SSIM
(peak = 1), to [-1, 1] for LPIPS, and quantized to uint8 by the extractor for rFID. PSNR and SSIM are
means of per-image values (not a PSNR of the pooled MSE).

Shapes: B batch, H,W image side.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

from var_lightning.distributed import all_reduce_sum
from var_lightning.evaluation.extractors import FeatureExtractor
from var_lightning.evaluation.fid import FeatureStats, frechet_distance
from var_lightning.tokenizer.perceptual import build_perceptual

_log = logging.getLogger(__name__)

ValueRange = tuple[float, float]
LPIPSFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_lpips(spec: Mapping[str, Any] | None, config_key: str = "lpips") -> LPIPSFn | None:
    """The LPIPS distance for reconstruction metrics from ``{net, weights_path, random_backbone}`` (None
    or ``enabled: false``: no LPIPS). Offline errors name this config's keys, not the training loss's.
    ``random_backbone`` runs without weights and is NOT LPIPS (tests, smoke runs): it is logged."""
    if spec is None or not spec.get("enabled", True):
        return None

    net = spec.get("net", "vgg")
    random_backbone = bool(spec.get("random_backbone", False))
    try:
        fn = build_perceptual(net, spec.get("weights_path"), random_backbone)
    except (OSError, RuntimeError, ValueError) as err:
        msg = str(err)
        for old, new in (
            ("model.loss.perceptual_weights_path", f"{config_key}.weights_path"),
            ("model.loss.perceptual_random_backbone", f"{config_key}.random_backbone"),
            ("model.loss.perceptual_net", f"{config_key}.net"),
            (
                "disable the perceptual term with model.loss.perceptual_weight=0",
                f"skip LPIPS with {config_key}=null",
            ),
        ):
            msg = msg.replace(old, new)
        raise type(err)(msg) from err
    if random_backbone:
        _log.warning(
            "%s: LPIPS with a random %s backbone is NOT LPIPS (pipeline checks only)", config_key, net
        )
    return fn


def to_unit_range(x_B3HW: torch.Tensor, value_range: ValueRange = (-1.0, 1.0)) -> torch.Tensor:
    lo, hi = value_range
    return ((x_B3HW.float() - lo) / (hi - lo)).clamp(0.0, 1.0)


def psnr(
    pred_B3HW: torch.Tensor,
    target_B3HW: torch.Tensor,
    value_range: ValueRange = (-1.0, 1.0),
    reduction: str = "mean",
) -> torch.Tensor:
    """Per-image 10 log10(1 / MSE) on images mapped to [0, 1] (capped at 100 dB for identical images);
    ``reduction`` "mean" or "none" (B,)."""
    mse_B = (
        (to_unit_range(pred_B3HW, value_range) - to_unit_range(target_B3HW, value_range))
        .pow(2)
        .flatten(1)
        .mean(1)
    )
    psnr_B = -10.0 * torch.log10(mse_B.clamp_min(1e-10))
    return psnr_B.mean() if reduction == "mean" else psnr_B


def ssim(
    pred_B3HW: torch.Tensor,
    target_B3HW: torch.Tensor,
    value_range: ValueRange = (-1.0, 1.0),
    reduction: str = "mean",
) -> torch.Tensor:
    """torchmetrics' SSIM (11x11 Gaussian window, sigma 1.5) on images mapped to [0, 1] (data range 1);
    ``reduction`` "mean" or "none" (B,)."""
    ssim_B = structural_similarity_index_measure(
        to_unit_range(pred_B3HW, value_range),
        to_unit_range(target_B3HW, value_range),
        data_range=1.0,
        reduction="none",
    )
    return ssim_B.mean() if reduction == "mean" else ssim_B


class ReconstructionMetrics:
    """Streaming rFID / PSNR / SSIM / LPIPS over (real, reconstruction) batches.

    ``lpips``: any callable (recon, real) in [-1, 1] -> per-image distances (e.g. ``lpips.LPIPS``, which
    returns (B, 1, 1, 1)); skipped when None. ``extractor``: feature space for rFID; skipped when None.
    Per-rank sums live in float64 tensors on ``device`` (default: the extractor's, else CPU; under NCCL
    give the GPU); ``sync_()`` sums them over ranks.
    """

    def __init__(
        self,
        extractor: FeatureExtractor | None = None,
        lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        value_range: ValueRange = (-1.0, 1.0),
        device: torch.device | str | None = None,
    ) -> None:
        self.extractor, self.lpips, self.value_range = extractor, lpips, value_range
        if device is None:
            device = extractor.device if extractor is not None else torch.device("cpu")
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # count, psnr, ssim, lpips
        self.real_stats = self.fake_stats = None
        if extractor is not None:
            self.real_stats = FeatureStats(extractor.feature_dim, device=device)
            self.fake_stats = FeatureStats(extractor.feature_dim, device=device)

    @torch.no_grad()
    def update(self, real_B3HW: torch.Tensor, recon_B3HW: torch.Tensor) -> None:
        if real_B3HW.shape != recon_B3HW.shape:
            raise ValueError(f"real {tuple(real_B3HW.shape)} vs reconstruction {tuple(recon_B3HW.shape)}")
        real01, recon01 = (
            to_unit_range(real_B3HW, self.value_range),
            to_unit_range(recon_B3HW, self.value_range),
        )
        batch = torch.zeros(4, dtype=torch.float64)
        batch[0] = real01.shape[0]
        batch[1] = psnr(recon01, real01, (0.0, 1.0), reduction="none").double().sum().cpu()
        batch[2] = ssim(recon01, real01, (0.0, 1.0), reduction="none").double().sum().cpu()
        if self.lpips is not None:
            batch[3] = self.lpips(recon01 * 2 - 1, real01 * 2 - 1).double().sum().cpu()
        self.sums += batch.to(self.sums.device)
        if self.extractor is not None:
            self.real_stats.update(self.extractor(real01)["features"])
            self.fake_stats.update(self.extractor(recon01)["features"])

    def sync_(self) -> ReconstructionMetrics:
        all_reduce_sum(self.sums)
        if self.extractor is not None:
            self.real_stats.sync_()
            self.fake_stats.sync_()
        return self

    def reset(self) -> None:
        self.sums.zero_()
        if self.extractor is not None:
            self.real_stats.reset()
            self.fake_stats.reset()

    def compute(self) -> dict[str, float]:
        """``psnr``, ``ssim`` (and ``lpips``, ``rfid`` when configured) over everything seen."""
        n, psnr_sum, ssim_sum, lpips_sum = self.sums.tolist()
        if n == 0:
            raise ValueError("no samples: call update() first")
        out = {"psnr": psnr_sum / n, "ssim": ssim_sum / n}
        if self.lpips is not None:
            out["lpips"] = lpips_sum / n
        if self.extractor is not None:
            out["rfid"] = frechet_distance(*self.fake_stats.mean_cov(), *self.real_stats.mean_cov())
        return out


def reconstruction_metrics(
    pairs: Iterable[tuple[torch.Tensor, torch.Tensor]],
    extractor: FeatureExtractor | None = None,
    lpips: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    value_range: ValueRange = (-1.0, 1.0),
) -> dict[str, float]:
    """One pass of ``ReconstructionMetrics`` over (real, reconstruction) batches (single process)."""
    metrics = ReconstructionMetrics(extractor, lpips, value_range)
    for real_B3HW, recon_B3HW in pairs:
        metrics.update(real_B3HW, recon_B3HW)
    return metrics.compute()
