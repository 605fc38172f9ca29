"""Stage 1: the multi-scale VQ-VAE trained with reconstruction + VQ + perceptual + GAN losses.

Manual optimisation with one AdamW holding two parameter groups (generator = the autoencoder,
discriminator = the loss module's PatchGAN). The generator loss only produces gradients for the
generator and the discriminator loss (on detached reconstructions) only for the discriminator, so one
backward of their sum and one ``step()`` equal the usual generator-step-then-discriminator-step (and
DDP, which allows one backward per forward, works), while Lightning's ``global_step``
keeps counting batches (two optimizers would count every batch twice). Before ``disc_start`` the
discriminator has no gradients and AdamW leaves it untouched.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

import pytorch_lightning as L
import torch
import torch.nn.functional as F

from var_lightning.keys import check_kwargs, settings_from
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.tokenizer.losses import VQGANLoss
from var_lightning.tokenizer.usage import CodebookUsage, codebook_alarms
from var_lightning.training.optim import adamw, param_groups
from var_lightning.training.schedules import SchedulePlan, lr_factor
from var_lightning.training.settings import TokenizerOptim

log = logging.getLogger(__name__)


def psnr(img: torch.Tensor, rec: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2), averaged over the batch."""
    mse_B = (img.float() - rec.float().clamp(-1, 1)).square().flatten(1).mean(1)
    return (10 * torch.log10(4.0 / mse_B.clamp_min(1e-10))).mean()


class TokenizerModule(L.LightningModule):
    """LightningModule around :class:`MultiScaleVQVAE` and :class:`VQGANLoss`.

    tokenizer: VQVAEConfig fields. loss: VQGANLoss arguments. optim: lr (generator), disc_lr (None =
    lr), betas, weight_decay, warmup_steps, schedule ('const', 'lin0', 'lin', 'cos'), final_ratio and
    grad_clip (per group, <= 0 disables). patch_nums: the scale schedule (the ``schedule`` config group),
    overriding ``tokenizer.patch_nums``.
    """

    STAGE = "tokenizer"  # what its checkpoints say they hold (var_lightning.stage); VARModule: "var"

    def __init__(
        self,
        tokenizer: dict | VQVAEConfig,
        loss: dict | None = None,
        optim: dict | None = None,
        patch_nums: list[int] | None = None,
    ) -> None:
        super().__init__()
        spec = asdict(tokenizer) if isinstance(tokenizer, VQVAEConfig) else dict(tokenizer)
        if patch_nums is not None:
            spec["patch_nums"] = tuple(patch_nums)
        cfg = VQVAEConfig(**spec)
        optim_cfg = settings_from(TokenizerOptim, optim, "model.optim.")
        loss_kwargs = dict(loss or {})
        check_kwargs(VQGANLoss, loss_kwargs, "model.loss.")
        self.save_hyperparameters(
            {"tokenizer": asdict(cfg), "loss": loss_kwargs, "optim": asdict(optim_cfg)}, logger=False
        )  # the trackers get the run's whole resolved config from var-train
        self.automatic_optimization = False
        self.vae = MultiScaleVQVAE(cfg)
        self.loss = VQGANLoss(**loss_kwargs)
        self.optim_cfg = optim_cfg
        self.schedule_plan = SchedulePlan()  # an lr schedule that survives a resume with another run length
        self.train_usage = CodebookUsage(len(cfg.patch_nums), cfg.vocab_size)
        self.val_usage = CodebookUsage(len(cfg.patch_nums), cfg.vocab_size)

    @property
    def cfg(self) -> VQVAEConfig:
        return self.vae.cfg

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_cfg
        groups = param_groups(self.vae.named_parameters(), o.weight_decay)
        for g in groups:
            g.update(lr=o.lr, role="generator")
        if self.loss.discriminator is not None:
            disc_lr = o.disc_lr if o.disc_lr is not None else o.lr
            groups.append(
                {
                    "params": list(self.loss.discriminator.parameters()),
                    "lr": disc_lr,
                    "weight_decay": 0.0,
                    "role": "discriminator",
                    "name": "discriminator",
                }
            )
        opt = adamw(groups, lr=o.lr, betas=o.betas)
        max_steps = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer else 1
        plan = self.schedule_plan
        total, warmup = plan.plan(max_steps, o.warmup_steps)
        fn = lambda step: lr_factor(plan.step(step), warmup, total, o.schedule, final_ratio=o.final_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _clip(self, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
        clip = self.optim_cfg.grad_clip
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:  # fp16: clip unscaled gradients
            scaler.unscale_(opt)
        norms = {}
        for role in ("generator", "discriminator"):
            params = [
                p
                for g in opt.param_groups
                if g.get("role") == role
                for p in g["params"]
                if p.grad is not None
            ]
            if params:
                max_norm = clip if clip and clip > 0 else math.inf
                norms[role] = torch.nn.utils.clip_grad_norm_(params, max_norm)
        return norms

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        img, _ = batch
        opt = self.optimizers()
        sched = self.lr_schedulers()
        step = self.global_step
        rec, q = self.vae(img)
        g_loss, g_logs = self.loss.generator_loss(
            img, rec, q.vq_loss, step, last_layer=self.vae.decoder.last_layer
        )
        logs = {f"train/{k}": v for k, v in g_logs.items()}
        total = g_loss
        if self.loss.disc_active(step):
            d_loss, d_logs = self.loss.discriminator_loss(img, rec.detach(), step)
            total = g_loss + d_loss
            logs.update({f"train/{k}": v for k, v in d_logs.items()})
        # One backward: g_loss has no path to the (frozen-in-its-forward) discriminator and d_loss none to the
        # autoencoder (detached reconstructions), so the gradients equal two separate backwards, and DDP's
        # reducer sees exactly one backward per forward.
        opt.zero_grad(set_to_none=True)
        self.manual_backward(total)
        norms = self._clip(opt)
        opt.step()
        sched.step()
        self.train_usage.update(q.hits_KV)
        logs.update({f"train/grad_norm_{k}": v for k, v in norms.items()})
        logs["train/psnr"] = psnr(img, rec.detach())
        logs["train/lr"] = torch.tensor(opt.param_groups[0]["lr"])
        self.log("train/loss", logs.pop("train/loss"), prog_bar=True, batch_size=img.shape[0])
        self.log_dict(logs, prog_bar=False, batch_size=img.shape[0])
        return g_loss.detach()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        img, _ = batch
        rec, q = self.vae(img)
        _, g_logs = self.loss.generator_loss(img, rec, q.vq_loss, self.global_step, last_layer=None)
        B = img.shape[0]
        self.val_usage.update(q.hits_KV)
        logs = {f"val/{k}": g_logs[k] for k in ("rec_l2", "vq", "perceptual", "loss") if k in g_logs}
        logs["val/psnr"] = psnr(img, rec)
        self.log_dict(logs, prog_bar=False, sync_dist=True, batch_size=B)
        self.log(
            "val/rec_l1", F.l1_loss(rec.float(), img.float()), prog_bar=True, sync_dist=True, batch_size=B
        )

    def _log_usage(self, usage: CodebookUsage, split: str) -> None:
        stats = usage.compute(sync=True, device=self.device)
        if split == "val" and self.trainer.is_global_zero:  # health alarms, once per validation
            for alarm in codebook_alarms(usage.hits_KV, self.cfg.patch_nums):
                log.warning("tokenizer health (step %d): %s", self.global_step, alarm)
        logs = {}
        for si, pn in enumerate(self.cfg.patch_nums):
            logs[f"{split}/usage_s{si}_{pn}x{pn}"] = float(stats["usage"][si]) * 100
            logs[f"{split}/perplexity_s{si}_{pn}x{pn}"] = float(stats["perplexity"][si])
        logs[f"{split}/usage_last"] = float(stats["usage"][-1]) * 100
        logs[f"{split}/perplexity_last"] = float(stats["perplexity"][-1])
        self.log_dict(logs, rank_zero_only=True)  # already summed over ranks
        usage.reset()

    def on_train_epoch_end(self) -> None:
        self._log_usage(self.train_usage, "train")

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._log_usage(self.val_usage, "val")
        else:
            self.val_usage.reset()

    # ------------------------------------------------------------------ images
    @torch.no_grad()
    def log_images(
        self, batch: tuple[torch.Tensor, torch.Tensor], max_images: int = 8
    ) -> dict[str, torch.Tensor]:
        """Inputs, reconstructions and per-scale progressive reconstructions, in [0, 1]. The progressive
        grid has one row per image and one column per scale (``nrow`` = K)."""
        img = batch[0][:max_images].to(self.device)
        was_training = self.vae.training
        self.vae.eval()
        prog = self.vae.img_to_reconstruction(img, progressive=True)
        self.vae.train(was_training)
        to01 = lambda x: (x.float().clamp(-1, 1) + 1) / 2
        prog_NK = torch.stack(prog, dim=1).flatten(0, 1)
        return {
            "inputs": to01(img),
            "reconstructions": to01(prog[-1]),
            f"progressive_nrow{len(prog)}": to01(prog_NK),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # record_hit (a plain attribute) sets the usage EMA's rate; saved so a resumed run continues it exactly
        checkpoint["var_lightning"] = {
            "stage": "tokenizer",
            "record_hit": int(self.vae.quantize.record_hit),
            "schedule": self.schedule_plan.state(self.global_step),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("var_lightning", {})
        self.vae.quantize.record_hit = int(meta.get("record_hit", 0))
        self.schedule_plan.load(meta.get("schedule"))
