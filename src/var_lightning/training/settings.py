"""Typed run settings: the ``optim`` / ``train`` / ``sampling`` blocks of both training stages.

Each block is a dataclass whose defaults are the published recipe's values (the YAML in ``conf/model``
repeats them so the file documents every key; ``tests/integration/test_configs.py`` checks that the two
agree). :func:`settings_from` builds one from a config mapping and turns an unknown key into an error that
names the key as written in the config and the closest valid one, and a wrong type or range into an
error naming the key; both happen when the LightningModule is built, before any data is read.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from var_lightning.keys import bad_value, check_number, settings_from
from var_lightning.training.schedules import check_schedule
from var_lightning.transformer.config import PUBLISHED_SAMPLING

LR_SCHEDULES = ("lin0", "lin", "cos", "const")


@dataclass
class VAROptim:
    """The VAR transformer's optimisation (published defaults: ``utils/arg_util.py``).

    base_lr: learning rate per 256 images; lr = base_lr x global batch / 256 (``tblr``). betas: AdamW.
    weight_decay / weight_decay_end: start and end of a cosine-annealed weight decay (end None = constant;
    ``twd``/``twde``). warmup_fraction (of all steps; ep/50 published) or warmup_steps; warmup_start: the lr
    ratio at step 0 (``wp0``). schedule: lin0 (flat 5% after warm-up, then linear), lin, cos, const or lin<T>
    (the published schedule with progressive training until T, e.g. lin0.8); None: lin0, or lin<until> when
    progressive training is on (the published pairing);
    final_ratio: the lr ratio at the end (``wpe``). fused: fused AdamW (None = on CUDA).
    """

    base_lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    warmup_fraction: float = 0.02
    warmup_steps: int | None = None
    warmup_start: float = 0.005
    schedule: str | None = None  # lin0, or lin<until> with progressive training (the published pairing)
    final_ratio: float = 0.01
    fused: bool | None = None

    def check(self, prefix: str = "model.optim.") -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        check_number(prefix, "base_lr", self.base_lr, 0)
        check_number(prefix, "weight_decay", self.weight_decay, 0)
        if self.weight_decay_end is not None:
            check_number(prefix, "weight_decay_end", self.weight_decay_end, 0)
        check_number(prefix, "warmup_fraction", self.warmup_fraction, 0, 1)
        check_number(prefix, "warmup_start", self.warmup_start, 0, 1)
        check_number(prefix, "final_ratio", self.final_ratio, 0, 1)
        if self.warmup_steps is not None and (
            not isinstance(self.warmup_steps, int) or self.warmup_steps < 0
        ):
            raise bad_value(
                prefix, "warmup_steps", self.warmup_steps, "must be a non-negative integer or null"
            )

        if self.schedule is not None:
            check_schedule(str(self.schedule), f"{prefix}schedule")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise bad_value(prefix, "betas", list(self.betas), "must be two numbers in [0, 1)")

    def resolved_schedule(self, progressive_until: float = 0.0) -> str:
        """``schedule``, or when unset the published default: ``lin0``, or ``lin<until>`` with progressive
        training (the published ``--pg`` also sets ``--sche=lin<pg>``)."""
        if self.schedule is not None:
            return str(self.schedule)
        return f"lin{progressive_until:g}" if 0 < progressive_until < 1 else "lin0"


@dataclass
class ProgressiveTraining:
    """Coarse-to-fine training as the published trainer does it (``pg``, ``pg0``, ``pgwp``); see
    :mod:`var_lightning.objectives.progressive`. until: fraction of training during which the trained prefix
    grows (0 = off, the published default). start_scale: index of the first trained scale (``pg0``).
    warmup_epochs: per stage, the newest scale's loss weight ramps from 0.01 to 1 over this many epochs
    (None = epochs / 300, the published default)."""

    until: float = 0.0
    start_scale: int = 4
    warmup_epochs: float | None = None

    def check(self, prefix: str = "model.train.progressive.") -> None:
        check_number(prefix, "until", self.until, 0, 1)
        if not isinstance(self.start_scale, int) or self.start_scale < 0:
            raise bad_value(prefix, "start_scale", self.start_scale, "must be a scale index >= 0")
        if self.warmup_epochs is not None:
            check_number(prefix, "warmup_epochs", self.warmup_epochs, 0)


@dataclass
class LoRATraining:
    """Parameter-efficient fine-tuning with LoRA adapters (peft; :mod:`var_lightning.training.lora`).

    rank: the adapters' rank r (0 = off: full fine-tuning). alpha: their scale (the update is alpha / r * BA).
    dropout: on the adapters' input. targets: the transformer's linear layers that get an adapter (module
    names; the attention's qkv and output projections and the FFN). train_also: parameters trained in full
    beside the adapters (``class_emb`` so new classes can be learned). The rest of the base stays frozen;
    checkpoints hold the adapters, ``train_also`` and the tokenizer, with ``init_from`` as the base."""

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["mat_qkv", "proj", "fc1", "fc2"])
    train_also: list[str] = field(default_factory=lambda: ["class_emb"])

    def check(self, prefix: str = "model.train.lora.") -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 0:
            raise bad_value(prefix, "rank", self.rank, "must be an integer >= 0 (0 = off)")
        check_number(prefix, "alpha", self.alpha, 0)
        check_number(prefix, "dropout", self.dropout, 0, 1)
        for key in ("targets", "train_also"):
            value = getattr(self, key)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise bad_value(prefix, key, value, "must be a list of module names, e.g. [mat_qkv,proj]")
        if self.rank and not self.targets:
            raise bad_value(prefix, "targets", self.targets, "must name at least one layer when rank > 0")


@dataclass
class VARTrain:
    """What the VAR training step does besides optimisation.

    cond_drop_rate: fraction of labels replaced by the null class (classifier-free guidance training).
    label_smoothing: of the cross-entropy. compile: torch.compile the blocks (false, true or a mode).
    fused_ce / ce_chunk_tokens: the head + cross-entropy in chunks (no B x L x V fp32 logits).
    progressive: coarse-to-fine training (off by default, as published). lora: LoRA adapters (off).
    sample_memory_gib: validation's sampling (image grids, generation metrics) draws in calls whose working
    memory (KV cache, logits, decode; ``scaling.planner.sampling_bytes_per_image``) fits this many GiB.
    """

    cond_drop_rate: float = 0.1
    label_smoothing: float = 0.0
    compile: bool | str = False
    fused_ce: bool = False
    ce_chunk_tokens: int = 8192
    progressive: ProgressiveTraining = field(default_factory=ProgressiveTraining)
    lora: LoRATraining = field(default_factory=LoRATraining)
    sample_memory_gib: float = 8.0

    def check(self, prefix: str = "model.train.") -> None:
        if not 0.0 <= self.cond_drop_rate < 1.0:
            raise bad_value(prefix, "cond_drop_rate", self.cond_drop_rate, "must be in [0, 1)")
        check_number(prefix, "label_smoothing", self.label_smoothing, 0, 1)
        if self.compile not in (False, True) and not isinstance(self.compile, str):
            raise bad_value(prefix, "compile", self.compile, "use false, true or a torch.compile mode string")
        if not isinstance(self.ce_chunk_tokens, int) or self.ce_chunk_tokens < 1:
            raise bad_value(prefix, "ce_chunk_tokens", self.ce_chunk_tokens, "must be an integer >= 1")
        check_number(prefix, "sample_memory_gib", self.sample_memory_gib, 0)
        if self.sample_memory_gib <= 0:
            raise bad_value(
                prefix, "sample_memory_gib", self.sample_memory_gib, "must be > 0 (GiB per sampling call)"
            )
        self.progressive = settings_from(ProgressiveTraining, self.progressive, f"{prefix}progressive.")
        self.lora = settings_from(LoRATraining, self.lora, f"{prefix}lora.")


@dataclass
class SamplingDefaults:
    """The sampling settings stored in every VAR checkpoint: image grids during training, and var-sample /
    var-eval / var-edit unless given on their command line. The published FID protocol: cfg 1.5, top-k
    900 of 4096, top-p 0.96. top_k None = 900/4096 of the tokenizer's vocabulary; 0 disables."""

    cfg: float = PUBLISHED_SAMPLING["cfg"]
    top_k: int | None = None  # the published 900 of 4096, scaled to the vocabulary
    top_p: float = PUBLISHED_SAMPLING["top_p"]
    more_smooth: bool = PUBLISHED_SAMPLING["more_smooth"]
    seed: int = 0

    def check(self, prefix: str = "model.sampling.") -> None:
        check_number(prefix, "cfg", self.cfg, 0)
        check_number(prefix, "top_p", self.top_p, 0, 1)
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0
        ):
            raise bad_value(prefix, "top_k", self.top_k, "must be an integer >= 0 or null")


@dataclass
class TokenizerOptim:
    """The tokenizer's optimisation: one AdamW over the autoencoder (lr) and the discriminator (disc_lr,
    None = lr), with betas, weight decay, warm-up steps, an lr schedule (const, lin0, lin, cos) ending at
    final_ratio, and per-group gradient clipping (<= 0 disables)."""

    lr: float = 1e-4
    disc_lr: float | None = None
    betas: tuple[float, float] = (0.5, 0.9)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "const"
    final_ratio: float = 1.0
    grad_clip: float = 2.0

    def check(self, prefix: str = "model.optim.") -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        check_number(prefix, "lr", self.lr, 0)
        if self.disc_lr is not None:
            check_number(prefix, "disc_lr", self.disc_lr, 0)
        check_number(prefix, "weight_decay", self.weight_decay, 0)
        check_number(prefix, "final_ratio", self.final_ratio, 0, 1)
        check_number(prefix, "grad_clip", self.grad_clip)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise bad_value(prefix, "warmup_steps", self.warmup_steps, "must be a non-negative integer")
        if self.schedule not in LR_SCHEDULES:
            raise bad_value(prefix, "schedule", self.schedule, f"choose one of {', '.join(LR_SCHEDULES)}")
