"""Stage 2: the VAR transformer trained by next-scale prediction on a frozen tokenizer's tokens.

Shapes: B batch, K scales, L tokens of all scales, V vocabulary, Cv tokenizer codebook dim.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import pytorch_lightning as L
import torch

from var_lightning.checkpoints.load import load_tokenizer
from var_lightning.keys import settings_from
from var_lightning.objectives.losses import next_scale_losses, tokenize
from var_lightning.objectives.progressive import ProgressiveSchedule, Stage
from var_lightning.tokenizer.autoencoder import MultiScaleVQVAE
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.training.lora import apply_to_module, strip_frozen_base
from var_lightning.training.optim import adamw, decayed_names, param_groups
from var_lightning.training.schedules import SchedulePlan, lr_factor, weight_decay_at
from var_lightning.training.settings import SamplingDefaults, VAROptim, VARTrain
from var_lightning.training.sharding import (
    fsdp_mesh,
    shard_transformer,
    sharding_plan,
    trunk_compile,
)
from var_lightning.training.var_sampling import ValidationSampling
from var_lightning.transformer.compile_budget import reserve_recompiles
from var_lightning.transformer.config import VARConfig, build_var_config
from var_lightning.transformer.sampling import check_compatible, resolve_sampling, scaled_top_k
from var_lightning.transformer.var import VAR

log = logging.getLogger(__name__)


class VARModule(ValidationSampling, L.LightningModule):
    """LightningModule around :class:`VAR` with a frozen :class:`MultiScaleVQVAE` (its weights are part
    of the checkpoint, so a VAR checkpoint alone can sample).

    transformer: VARConfig fields (+ optional ``preset``). tokenizer_ckpt: tokenizer checkpoint to load at
    the start of training (a ``var-train`` tokenizer checkpoint or the released ``vae_ch160v4096z32.pth``).
    tokenizer: the tokenizer's config; filled in from the checkpoint and stored, so restoring a VAR
    checkpoint never needs the tokenizer file. patch_nums: the scale schedule (from the ``schedule``
    config group); it must equal the tokenizer's. optim: base_lr (per 256 images; lr = base_lr x
    global_batch / 256), betas, weight_decay(_end), warmup_fraction or warmup_steps, warmup_start,
    schedule, final_ratio, fused. train: cond_drop_rate, label_smoothing. sampling: defaults for
    ``log_images``. tokenizer_source: where the tokenizer came from (informational).
    """

    def __init__(
        self,
        transformer: dict | VARConfig,
        tokenizer_ckpt: str | None = None,
        tokenizer: dict | None = None,
        patch_nums: list[int] | None = None,
        optim: dict | None = None,
        train: dict | None = None,
        sampling: dict | None = None,
        tokenizer_source: str | None = None,
        trust_pickle: bool = False,
    ) -> None:
        super().__init__()
        tokenizer_source = tokenizer_ckpt or tokenizer_source
        vae = self._build_tokenizer(tokenizer_ckpt, tokenizer, patch_nums, trust_pickle)
        var_cfg = build_var_config(transformer, vae.cfg)
        if patch_nums is not None and tuple(patch_nums) != tuple(var_cfg.patch_nums):
            raise ValueError(
                f"model.transformer.patch_nums={tuple(var_cfg.patch_nums)} disagrees with the schedule "
                f"{tuple(patch_nums)} (schedule.patch_nums); remove one of them"
            )
        self.optim_cfg = settings_from(VAROptim, optim, "model.optim.")
        self.train_cfg = settings_from(VARTrain, train, "model.train.")
        self.sampling_cfg = self._sampling_defaults(sampling, var_cfg.vocab_size)
        self.save_hyperparameters(
            {
                "transformer": asdict(var_cfg),
                "tokenizer": asdict(vae.cfg),
                "tokenizer_source": tokenizer_source,
                "optim": asdict(self.optim_cfg),
                "train": asdict(self.train_cfg),
                "sampling": self.sampling_cfg,
            },
            logger=False,  # the trackers get the run's whole resolved config once (var-train), not a second copy
        )
        self.var = self.make_network(var_cfg)
        self.vae = vae.eval().requires_grad_(False)
        check_compatible(self.var, self.vae)
        # weight decay by parameter name, decided on the plain network (identical under any wrapping)
        self.decayed = decayed_names(self.var.named_parameters())
        self.peak_lr: float | None = None
        self.schedule_plan = SchedulePlan()  # lr / wd schedules that survive a resume with another run length
        prog = self.train_cfg.progressive
        self.progressive = ProgressiveSchedule(
            prog.until, prog.start_scale, self.var.begin_ends, ramp_steps=1
        )
        self._stage: Stage | None = None  # the current optimizer step's progressive stage
        self._stage_step: int | None = None
        self._lora_on, self.init_from = False, None  # init_from: set by var-train, the base of LoRA adapters

    # the checkpoint stage (var_lightning.checkpoints.safe_io); the transformer is ``self.var`` in every stage
    STAGE = "var"

    def make_network(self, cfg: VARConfig) -> VAR:
        return VAR(cfg)

    @staticmethod
    def objective(*args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The training objective of one batch (:func:`next_scale_losses`; the AR baseline has its own)."""
        return next_scale_losses(*args, **kwargs)

    @staticmethod
    def _sampling_defaults(sampling: dict | None, vocab_size: int) -> dict[str, Any]:
        """The sampling defaults stored in every checkpoint (used by log_images and, unless overridden, by
        var-sample / var-eval / var-edit), complete and checked against the vocabulary."""
        given = settings_from(SamplingDefaults, sampling, "model.sampling.")
        if given.top_k is not None and given.top_k > vocab_size:
            raise ValueError(
                f"model.sampling.top_k={given.top_k} exceeds the tokenizer's vocabulary ({vocab_size}); use null "
                f"for 900/4096 of it ({scaled_top_k(vocab_size)} here) or 0 to disable top-k (key model.sampling.top_k)"
            )
        return {**resolve_sampling(asdict(given), vocab_size), "seed": given.seed}

    @staticmethod
    def _build_tokenizer(
        ckpt: str | None, tokenizer: dict | None, patch_nums: list[int] | None, trust_pickle: bool
    ) -> MultiScaleVQVAE:
        if tokenizer is not None:  # restoring a VAR checkpoint: weights come with its state_dict
            cfg = VQVAEConfig(**dict(tokenizer))
            if patch_nums is not None and tuple(patch_nums) != cfg.patch_nums:
                raise ValueError(
                    f"the tokenizer's scale schedule {cfg.patch_nums} differs from schedule.patch_nums={tuple(patch_nums)}"
                )
            return MultiScaleVQVAE(cfg)
        if ckpt is None:
            raise ValueError(
                "the VAR stage needs a tokenizer: set model.tokenizer_ckpt=/path/to/tokenizer.ckpt "
                "(from `var-train experiment=tokenizer_*`) or the released vae_ch160v4096z32.pth"
            )
        return load_tokenizer(ckpt, patch_nums=patch_nums, trust_pickle=trust_pickle)

    # ------------------------------------------------------------------ sharding
    def configure_model(self) -> None:
        """Under ``trainer=fsdp*`` (:class:`~var_lightning.training.sharding.ShardedStrategy`): each block one
        FSDP2 unit, the root another; the frozen tokenizer stays whole on every rank. No-op otherwise."""
        plan = sharding_plan(self._trainer)
        if self.train_cfg.lora.rank and not self._lora_on:  # adapters on the base init_from loaded
            self._lora_on = apply_to_module(self, self.train_cfg.lora, self.init_from, plan is not None)
        if plan is None or self.device_mesh is None:
            return
        mesh = fsdp_mesh(self.device_mesh, plan, self.trainer.num_nodes)
        shard_transformer(self.var, mesh, plan, compile=self.train_cfg.compile)
        if getattr(self, "var_ema", None) is not None:  # callbacks=ema: sharded like the weights
            shard_transformer(self.var_ema, mesh, plan)

    # ------------------------------------------------------------------ mode and optimisation
    def train(self, mode: bool = True) -> VARModule:
        super().train(mode)
        self.vae.eval()  # the tokenizer stays frozen in eval mode
        return self

    def global_batch_size(self) -> int:
        dm = getattr(self.trainer, "datamodule", None)
        per_device = getattr(dm, "batch_size", None)
        if per_device is None:
            raise ValueError(
                "cannot derive the global batch size: the datamodule has no batch_size attribute"
            )
        return int(per_device) * self.trainer.accumulate_grad_batches * self.trainer.world_size

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim_cfg
        global_batch = self.global_batch_size()
        self.peak_lr = o.base_lr * global_batch / 256
        max_steps = max(int(self.trainer.estimated_stepping_batches), 1)
        exact = o.warmup_steps if o.warmup_steps is not None else o.warmup_fraction * max_steps
        plan = self.schedule_plan
        total, warmup = plan.plan(max_steps, round(exact), exact)  # lr: rounded; progressive stages: exact
        schedule = o.resolved_schedule(self.train_cfg.progressive.until)
        log.info("lr = base_lr %.3g x global batch %d / 256 = %.3g; %d steps, %d warm-up, schedule %s to x%g",
                 o.base_lr, global_batch, self.peak_lr, max_steps, warmup, schedule, o.final_ratio)  # fmt: skip
        if self.progressive.enabled:
            self._plan_progressive(max_steps)
        groups = param_groups(self.var.named_parameters(), o.weight_decay, self.decayed)
        opt = adamw(groups, lr=self.peak_lr, betas=o.betas, fused=o.fused)
        fn = lambda step: lr_factor(plan.step(step), warmup, total, schedule, o.warmup_start, o.final_ratio)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _plan_progressive(self, max_steps: int) -> None:
        p, t = self.train_cfg.progressive, self.trainer
        epochs = t.max_epochs if t.max_epochs and t.max_epochs > 0 else None
        steps_per_epoch = (
            max_steps / epochs if epochs else max(t.num_training_batches // t.accumulate_grad_batches, 1)
        )
        warmup_epochs = (
            p.warmup_epochs if p.warmup_epochs is not None else (max_steps / steps_per_epoch) / 300
        )
        self.progressive.ramp_steps = max(warmup_epochs * steps_per_epoch, 1e-12)
        plan = self.schedule_plan
        K = len(self.var.patch_nums)
        log.info(
            "progressive training: scales %d..%d grow over the first %.0f%% of %d steps (after %d warm-up steps); "
            "each new scale's loss weight ramps 0.01 -> 1 over %.1f steps",
            p.start_scale, K - 1, 100 * p.until, plan.total, plan.warmup, self.progressive.ramp_steps,
        )  # fmt: skip
        if self.optim_cfg.schedule is None:
            log.info("progressive training: lr schedule lin%g, the published trainer's pairing (--pg also sets "
                     "--sche=lin<pg>; model.optim.schedule=... overrides it)", p.until)  # fmt: skip

    def progressive_stage(self) -> Stage | None:
        """This optimizer step's stage (advanced once per optimizer step, also with gradient accumulation),
        or None without progressive training."""
        if not self.progressive.enabled:
            return None
        if self._stage_step != self.global_step:
            plan = self.schedule_plan
            self._stage = self.progressive.advance(plan.step(self.global_step), plan.warmup_exact, plan.total)
            self._stage_step = self.global_step
        return self._stage

    def on_fit_start(self) -> None:
        if self.logger is not None and self.peak_lr is not None:
            self.logger.log_hyperparams({"peak_lr": self.peak_lr, "global_batch": self.global_batch_size()})

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        o = self.optim_cfg
        if o.weight_decay_end is not None:
            plan = self.schedule_plan
            wd = weight_decay_at(plan.step(self.global_step), plan.total, o.weight_decay, o.weight_decay_end)
            for g in self.optimizers().param_groups:
                if g.get("name") == "decay":
                    g["weight_decay"] = wd

    # ------------------------------------------------------------------ steps
    def tokenize(self, img_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground-truth tokens (B, L) and the teacher-forcing input (B, L - l_1, Cv); see :func:`tokenize`."""
        return tokenize(self.vae, img_B3HW)

    def setup(self, stage: str) -> None:
        if self.train_cfg.compile:
            reserve_recompiles(self.compiled_shapes())
            log.info(
                "torch.compile of the transformer blocks (mode=%s): the first steps compile",
                self.train_cfg.compile,
            )

    def compiled_shapes(self) -> int:
        """How many static-shape graphs of the blocks a run compiles: per sequence length (each progressive
        prefix, or the whole sequence) x train/eval x a full and a partial last batch."""
        lengths = (
            len(self.var.patch_nums) - self.train_cfg.progressive.start_scale
            if self.progressive.enabled
            else 1
        )
        return (lengths + 1) * 2 * 2  # + the whole sequence in evaluation

    def compute_losses(
        self, batch: tuple[torch.Tensor, torch.Tensor], drop_labels: bool = False, stage: Stage | None = None
    ) -> dict[str, torch.Tensor]:
        """Loss, last-scale loss, token error rates and per-scale loss/accuracy of one batch (images or
        pre-tokenized token pyramids with labels); label dropout only with ``drop_labels``; ``stage``: the
        progressive-training prefix (training only)."""
        t = self.train_cfg
        return self.objective(
            self.var,
            self.vae,
            batch,
            cond_drop_rate=t.cond_drop_rate if drop_labels else 0.0,
            label_smoothing=t.label_smoothing,
            fused_ce=t.fused_ce,
            ce_chunk_tokens=t.ce_chunk_tokens,
            compile=trunk_compile(self.var, t.compile),
            stage=stage,
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        stage = self.progressive_stage()
        out = self.compute_losses(batch, drop_labels=True, stage=stage)
        B = batch[0].shape[0]
        if stage is not None:  # the published trainer's "AR_iter_schedule" curves
            pn = self.var.patch_nums[stage.scale]
            self.log_dict(
                {"train/prog_stage": float(stage.scale), "train/prog_resolution": float(pn * self.vae.cfg.downsample),
                 "train/prog_ramp": stage.ramp},
                batch_size=B,
            )  # fmt: skip
        self.log("train/loss", out["loss"].detach(), prog_bar=True, batch_size=B)
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in out.items() if k != "loss" and not k.startswith("scale/")},
            batch_size=B,
        )
        self.log_dict(
            {f"train/{k}": v for k, v in out.items() if k.startswith("scale/")},
            on_step=False,
            on_epoch=True,
            batch_size=B,
        )
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], batch_size=B)
        return out["loss"]

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        out = self.compute_losses(batch, drop_labels=False)  # no label dropout outside training
        B = batch[0].shape[0]
        self.log(f"{split}/loss", out.pop("loss"), prog_bar=True, sync_dist=True, batch_size=B)
        self.log_dict({f"{split}/{k}": v for k, v in out.items()}, sync_dist=True, batch_size=B)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta: dict[str, Any] = {"stage": self.STAGE}
        names = self._class_names()
        if names:
            meta["class_names"] = names
        meta["schedule"] = self.schedule_plan.state(self.global_step)
        if self._trainer is not None and getattr(self.trainer, "datamodule", None) is not None:
            meta["global_batch"] = self.global_batch_size()  # images per optimizer step (training compute)
        if self.progressive.enabled:
            meta["progressive"] = self.progressive.state_dict()
        checkpoint["var_lightning"] = meta
        if self._lora_on:  # adapters, train_also and the tokenizer; the frozen base stays with init_from
            strip_frozen_base(self, checkpoint, self.train_cfg.lora, self.init_from)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint.get("state_dict")
        if isinstance(sd, dict) and any(torch.is_tensor(v) for v in sd.values()):  # a file (not DCP shards)
            has_ema = any(k.startswith("var_ema.") for k in sd)
            if has_ema and getattr(self, "var_ema", None) is None:
                log.info(
                    "the checkpoint's EMA weights (var_ema.*) are not continued: this run has no callbacks=ema"
                )
                for k in [k for k in sd if k.startswith("var_ema.")]:
                    del sd[k]
            elif not has_ema and getattr(self, "var_ema", None) is not None:
                log.info("callbacks=ema: the checkpoint has no EMA yet; the average starts from its weights")
                sd.update({"var_ema." + k[4:]: v for k, v in list(sd.items()) if k.startswith("var.")})
        meta = checkpoint.get("var_lightning", {})
        self.schedule_plan.load(meta.get("schedule"))
        self.progressive.load_state_dict(meta.get("progressive"))
