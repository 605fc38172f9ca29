"""`var-train`: train either stage from a composed Hydra config.

    var-train experiment=tokenizer_tiny
    var-train experiment=var_tiny model.tokenizer_ckpt=outputs/.../checkpoints/last.ckpt
    var-train experiment=var_d16_imagenet256 model.tokenizer_ckpt=vae_ch160v4096z32.pth trainer.devices=8

Everything a run writes (checkpoints, images, metrics, logs, the resolved config) goes below the Hydra run
directory, which is printed at the start and the end.

Resuming and fine-tuning (docs/scale_out.md):

    var-train experiment=... hydra.run.dir=outputs/d16 resume=auto   # relaunch = continue (pre-emption)
    var-train experiment=... resume=outputs/d16/checkpoints/last.ckpt
    var-train experiment=... init_from=var_d16.pth model.transformer.num_classes=10   # weights only
"""

from __future__ import annotations

import inspect
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning_fabric.plugins.io.checkpoint_io import CheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict

from var_lightning.callbacks.batch_size import GlobalBatchFinder
from var_lightning.callbacks.preemption import Preempted
from var_lightning.callbacks.teardown import ProcessGroupTeardown
from var_lightning.checkpoints.atomic_plugin import AtomicCheckpointIO
from var_lightning.cli.command_line import checked_main, fixed_run_dir
from var_lightning.cli.instantiate import instantiate_callbacks, instantiate_loggers, set_matmul_precision
from var_lightning.cli.validate import OUR_TRAINER_KEYS
from var_lightning.data.fit_to_model import fit_data_to_model, transformer_with_data_classes
from var_lightning.data.shard_reader import tokenizer_fingerprint
from var_lightning.distributed import launch_rank
from var_lightning.training.finetune import init_from_checkpoint
from var_lightning.training.resume import (
    candidate_checkpoints,
    check_resume_fits,
    resolve_resume,
)
from var_lightning.training.run_dir import RunDirLocked, lock_run_dir, remove_stale_temp_files

log = logging.getLogger("var_lightning.train")


def stage_of(model: L.LightningModule) -> str:
    """``tokenizer``, ``var`` or ``ar`` (the raster-order baseline): the checkpoint stage the model writes."""
    return str(model.STAGE)


def check_pretokenized(model: L.LightningModule, datamodule: L.LightningDataModule) -> None:
    """Token shards are only valid for the tokenizer that wrote them (same schedule, vocabulary, weights)."""
    if not getattr(datamodule, "pretokenized", False):
        return
    if stage_of(model) != "var":
        raise ValueError(
            f"pre-tokenized shards (data.pretokenized=true) hold VAR's token pyramid and can only train the VAR "
            f"stage; the {stage_of(model)} stage needs images (data=webdataset)"
        )
    meta = datamodule.tokenizer_meta
    if meta is None:
        return

    vae = model.vae
    theirs = (tuple(meta["patch_nums"]), int(meta["vocab_size"]))
    mine = (tuple(vae.patch_nums), vae.cfg.vocab_size)
    if theirs != mine or meta.get("fingerprint") != tokenizer_fingerprint(vae):
        raise ValueError(
            f"data.train_shards were tokenized by {meta.get('source')} (schedule {theirs[0]}, V={theirs[1]}, "
            f"fingerprint {meta.get('fingerprint')}), not by model.tokenizer_ckpt (schedule {tuple(vae.patch_nums)}, "
            f"V={vae.cfg.vocab_size}, fingerprint {tokenizer_fingerprint(vae)}); set model.tokenizer_ckpt to the "
            f"tokenizer that wrote the shards or re-tokenize them with var-make-shards --tokenizer"
        )


def strategy_for(cfg_trainer: DictConfig, model: L.LightningModule) -> tuple[Any, list[L.Callback]]:
    """The trainer's strategy adjusted to the model (None = as configured), plus callbacks it needs.

    * DDP: ``broadcast_buffers=False``, as the published trainer: the frozen tokenizer's buffers and the
      L x L mask never change, so broadcasting them every step is wasted bandwidth.
    * DDP + tokenizer stage: the discriminator gets no gradient before ``disc_start`` (and schedules with
      fewer scales than phis leave phis unused), which DDP's reducer rejects unless it looks for unused
      parameters.
    * Sharded (``trainer=fsdp*``): the VAR stage only; the module shards itself in ``configure_model``.
    """
    strategy = cfg_trainer.get("strategy")
    stage = stage_of(model)
    if isinstance(strategy, DictConfig) and "ShardedStrategy" in str(strategy.get("_target_", "")):
        if stage == "tokenizer":
            raise ValueError(
                "trainer.strategy=ShardedStrategy (trainer=fsdp*) shards the VAR transformer; the tokenizer stage "
                "(~100M parameters, fits every GPU) trains data-parallel: use trainer=ddp (or ddp_cpu)"
            )
        return None, []
    if isinstance(strategy, str) and strategy in ("ddp", "ddp_spawn"):
        from pytorch_lightning.strategies import DDPStrategy

        unused = stage == "tokenizer"
        if unused:
            log.info("trainer.strategy=%s looks for unused parameters (the discriminator is idle before "
                     "disc_start)", strategy)  # fmt: skip
        start = "spawn" if strategy == "ddp_spawn" else "popen"
        return DDPStrategy(start_method=start, broadcast_buffers=False, find_unused_parameters=unused), []
    return None, []


PUBLISHED_GRAD_CLIP = 2.0  # the published trainer's --tclip default, used for every VAR run


def build(cfg: DictConfig) -> tuple[L.LightningDataModule, L.LightningModule, L.Trainer]:
    """Instantiate data, model and trainer; the scale schedule is handed to the model from ``schedule``."""
    datamodule = instantiate(cfg.data)
    patch_nums = list(cfg.schedule.patch_nums) if cfg.get("schedule") else None
    extra_model: dict[str, Any] = {}
    transformer = transformer_with_data_classes(
        {
            "_target_": cfg.model.get("_target_"),
            "transformer": OmegaConf.to_container(cfg.model.transformer, resolve=True)
            if cfg.model.get("transformer")
            else {},
        },
        datamodule,
    )
    if transformer is not None:  # the VAR stage: class count from the data; loads model.tokenizer_ckpt
        extra_model.update(transformer=transformer, trust_pickle=bool(cfg.get("trust_pickle", False)))
    try:
        model = instantiate(cfg.model, patch_nums=patch_nums, _convert_="all", **extra_model)
    except InstantiationException as e:  # show our own message (it names the key and the fix)
        if isinstance(e.__cause__, (ValueError, FileNotFoundError)):
            raise e.__cause__ from None
        raise
    fit_data_to_model(model, datamodule)
    check_pretokenized(model, datamodule)
    callbacks = instantiate_callbacks(cfg.get("callbacks"))
    strategy, extra = strategy_for(cfg.trainer, model)
    # run_callbacks (conf/train.yaml): exact resume, rank guards, pre-emption, housekeeping, data health;
    # the strategy's own, and the process group destroyed after the last stage (it depends on `test`)
    callbacks += [
        *extra,
        *instantiate_callbacks(cfg.get("run_callbacks")),
        ProcessGroupTeardown("test" if cfg.get("test") else "fit"),
    ]
    # what updates the weights' state at a step (the EMA) runs before anything that saves at that step
    callbacks.sort(key=lambda cb: not getattr(cb, "RUNS_FIRST", False))
    loggers = instantiate_loggers(cfg.get("logger"))
    overrides: dict[str, Any] = {"strategy": strategy} if strategy is not None else {}
    if getattr(model, "STAGE", None) in ("var", "ar") and cfg.trainer.get("gradient_clip_val") is None:
        overrides["gradient_clip_val"] = PUBLISHED_GRAD_CLIP  # the published trainer clips every run (tclip)
        log.info("gradient clipping at %g (the published default; trainer.gradient_clip_val=0 turns it off)",
                 PUBLISHED_GRAD_CLIP)  # fmt: skip
    # checkpoints are written atomically (temporary file, fsync, rename): never a partial last.ckpt
    plugins = [instantiate(p) for p in (cfg.trainer.get("plugins") or [])]
    if not any(isinstance(p, CheckpointIO) for p in plugins):
        plugins.append(AtomicCheckpointIO())
    if cfg.trainer.get("auto_batch_size", False):  # the largest per-device batch that fits, global batch kept
        callbacks.append(GlobalBatchFinder())
    set_matmul_precision(cfg.trainer.get("matmul_precision"))
    ours = {k: cfg.trainer[k] for k in OUR_TRAINER_KEYS if k in cfg.trainer}
    with open_dict(cfg.trainer):  # our keys, not the Trainer's: out while it is built, back for the logs
        for k in ours:
            cfg.trainer.pop(k)
    try:
        trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=plugins, **overrides
        )
    finally:
        with open_dict(cfg.trainer):
            cfg.trainer.update(ours)
    return datamodule, model, trainer


def refuse_to_start_over(cfg: DictConfig) -> None:
    """A run directory that already holds checkpoints is not silently trained into again from scratch."""
    if cfg.get("resume") is not None:
        return
    found = candidate_checkpoints(cfg.paths.output_dir)
    if found and cfg.get("overwrite"):  # on purpose: keep the old files aside, never delete them
        aside = Path(cfg.paths.output_dir) / "checkpoints" / f"replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        aside.mkdir(parents=True, exist_ok=True)
        for p in found:
            p.rename(aside / p.name)
        log.warning(
            "overwrite=true: training from scratch; the earlier run's %d checkpoints moved to %s",
            len(found),
            aside,
        )
        return
    if found:
        names = ", ".join(p.name for p in found[:4]) + (" ..." if len(found) > 4 else "")
        raise ValueError(
            f"{cfg.paths.output_dir} already holds checkpoints of an earlier run ({names}) and resume=null would "
            f"start training from scratch beside them. Continue that run with resume=auto, start a new one in "
            f"another directory (hydra.run.dir=...), or pass overwrite=true to train from scratch here "
            f"(its checkpoints get replaced)"
        )


def resume_checkpoint(cfg: DictConfig, stage: str) -> str | None:
    """``resume`` (null | auto | path) resolved against the run directory."""
    return resolve_resume(cfg.get("resume"), cfg.paths.output_dir, stage, bool(cfg.get("trust_pickle")))


def _weights_only(method: Any, cfg: DictConfig) -> dict[str, bool]:
    """``weights_only=True`` for Lightning's own checkpoint reads (``trust_pickle`` turns it off), on the
    Lightning versions whose fit/test take the argument (older ones load with torch's default)."""
    if "weights_only" not in inspect.signature(method).parameters:
        return {}
    return {"weights_only": not bool(cfg.get("trust_pickle", False))}


def resume_command(cfg: DictConfig) -> str:
    """The command line that continues this run: its own overrides, the run directory pinned, resume=auto.
    A job of a multirun launched from this process continues the whole sweep: the same ``-m`` command line
    with its sweep folder pinned (finished jobs end at once, the stopped one resumes, the rest start)."""
    import shlex

    try:
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
    except ValueError:  # composed without @hydra.main (tests, notebooks)
        hydra_cfg, overrides = None, ["..."]
    pinned = ("resume", "hydra.run.dir", "hydra.sweep.dir", "overwrite")
    argv = sys.argv[1:]
    if hydra_cfg is not None and hydra_cfg.mode == RunMode.MULTIRUN and {"-m", "--multirun"} & set(argv):
        keep = [
            a for a in argv if a not in ("-m", "--multirun") and a.lstrip("+~").split("=", 1)[0] not in pinned
        ]
        sweep_dir = Path(hydra_cfg.runtime.output_dir).parent  # <sweep dir>/<job number>
        return shlex.join(["var-train", "-m", *keep, f"hydra.sweep.dir={sweep_dir}", "resume=auto"])
    keep = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in pinned]
    return shlex.join(["var-train", *keep, f"hydra.run.dir={cfg.paths.output_dir}", "resume=auto"])


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit (and optionally test) and return the final metrics; ``optimized_metric`` picks one for sweeps.
    ``cfg`` is a validated config (``var-train`` validates it before Hydra runs; a caller composing its own
    runs :func:`~var_lightning.cli.validate.validate_config` first).

    The run directory is locked for the whole run (:class:`~var_lightning.training.run_dir.RunLock`, rank 0 of
    the launch; ``var-train`` takes it before Hydra writes there). A run stopped by
    SIGTERM / SIGINT / SIGUSR1 saves a checkpoint, logs the command that continues it and exits with
    ``128 + signal`` (``SystemExit``)."""
    lock = (
        lock_run_dir(cfg.paths.output_dir) if launch_rank() == 0 else None
    )  # held already from the command line
    if lock is not None:
        remove_stale_temp_files(cfg.paths.output_dir)
    try:
        return _train(cfg)
    except Preempted as stop:
        if launch_rank() == 0:
            log.warning("%s\nto continue this run: %s", stop, resume_command(cfg))
        raise SystemExit(stop.exit_code) from None
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: DictConfig) -> dict[str, Any]:
    if cfg.get("train", True):
        refuse_to_start_over(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    datamodule, model, trainer = build(cfg)
    run_cfg = {k: v for k, v in OmegaConf.to_container(cfg, resolve=False).items() if k != "hydra"}
    run_cfg = OmegaConf.to_container(OmegaConf.merge(run_cfg, {"paths": cfg.paths}), resolve=True)
    for lg in trainer.loggers:
        lg.log_hyperparams(run_cfg)
    if cfg.get("train", True):
        ckpt_path = resume_checkpoint(cfg, stage_of(model))
        if ckpt_path is not None:
            check_resume_fits(model, ckpt_path, bool(cfg.get("trust_pickle", False)))
        if cfg.get("init_from"):
            model.init_from = str(cfg.init_from)  # LoRA adapters record it as their base
            lora = bool(
                getattr(getattr(model, "train_cfg", None), "lora", None) and model.train_cfg.lora.rank
            )
            if ckpt_path is None or lora:  # a LoRA checkpoint holds no frozen base: resuming reloads it
                names = getattr(datamodule, "class_names", None)
                init_from_checkpoint(model, cfg.init_from, bool(cfg.get("trust_pickle", False)), names)
            else:
                log.info(
                    "init_from=%s ignored: resuming %s, which already continues from it",
                    cfg.init_from,
                    ckpt_path,
                )
        # weights_only=True: Lightning's own read of the resume checkpoint cannot execute code either
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, **_weights_only(trainer.fit, cfg))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if cfg.get("test"):
        ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
        trainer.test(model, datamodule=datamodule, ckpt_path=ckpt or None, **_weights_only(trainer.test, cfg))
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1})
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None and trainer.is_global_zero:
        log.info(
            "checkpoints: last=%s best=%s", ckpt_cb.last_model_path or "-", ckpt_cb.best_model_path or "-"
        )
    return metrics


def lock_before_hydra(argv: list[str]) -> str | None:
    """Take the run directory's lock from the command line, before Hydra writes ``.hydra/`` and its log into
    the folder: a second run launched into a busy directory is refused having written nothing there. (A
    directory named by the time, the default, is locked when the run starts.)"""
    run_dir = fixed_run_dir("train", argv) if launch_rank() == 0 else None
    if run_dir is None:
        return None
    try:
        lock_run_dir(run_dir)
    except RunDirLocked as err:
        return str(err)
    return None


@checked_main("train", "var-train", before_run=lock_before_hydra)
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    rank = launch_rank()
    log.info("run directory: %s%s", out_dir, f" (rank {rank}; rank 0 writes the outputs)" if rank else "")
    metrics = train(cfg)
    if rank == 0:
        log.info("done; outputs in %s", out_dir)
    else:
        log.info("rank %d done", rank)
    name = cfg.get("optimized_metric")
    if name:
        if name not in metrics:
            raise KeyError(f"optimized_metric={name!r} was not logged; available: {sorted(metrics)}")
        return metrics[name]
    return None


if __name__ == "__main__":
    main()
