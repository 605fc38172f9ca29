"""VAR transformer configuration: the depth rule, named presets and validation.

The paper's rule (Eq. 7): width 64 * depth, heads = depth, drop-path 0.1 * depth / 24. ``width``,
``num_heads`` and ``drop_path_rate`` may be overridden for small CPU models; by default they are derived.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

from var_lightning.tokenizer.config import SCHEDULE_256, SCHEDULE_512, SCHEDULE_1024  # noqa: F401 - the one home

if TYPE_CHECKING:
    from var_lightning.tokenizer.config import VQVAEConfig


@dataclass(frozen=True)
class SamplingArgs:
    """The sampling arguments as one value, taken by every sampler (plain, fast, the AR baseline's), the
    editor, the app, the callbacks and the commands.

    cfg: guidance strength (``w - 1``; ramped over the scales; 0 = none). top_k / top_p: the token filters
    (0 = off; top-p 1 keeps everything too). more_smooth: Gumbel-smoothed scales. seed: a fresh generator
    on the model's device (None = unseeded). The defaults are the published sampler's: cfg 1.5, no filter;
    :data:`PUBLISHED` is the published FID protocol. ``SamplingArgs.of(args, cfg=3)`` overrides fields."""

    cfg: float = 1.5
    top_k: int = 0
    top_p: float = 0.0
    more_smooth: bool = False
    seed: int | None = None

    @classmethod
    def of(cls, args: SamplingArgs | None = None, **settings: object) -> SamplingArgs:
        """``args`` (default: the defaults) with ``settings`` over it; an unknown name is a TypeError."""
        unknown = sorted(set(settings) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(
                f"unknown sampling argument(s) {unknown}: use cfg, top_k, top_p, more_smooth, seed"
            )
        return replace(args if args is not None else cls(), **settings)

    def settings(self) -> dict[str, object]:
        """cfg, top_k, top_p, more_smooth (the seed is per call)."""
        return {"cfg": self.cfg, "top_k": self.top_k, "top_p": self.top_p, "more_smooth": self.more_smooth}


PUBLISHED = SamplingArgs(cfg=1.5, top_k=900, top_p=0.96, more_smooth=False)
"""The published FID protocol (cfg 1.5, top-k 900 of a 4096 vocabulary, top-p 0.96, no smoothing)."""
PUBLISHED_SAMPLING = PUBLISHED.settings()
""":data:`PUBLISHED` as the ``sampling`` block of every checkpoint and of the released weights."""


def _bad(key: str, value: object, why: str) -> ValueError:
    return ValueError(
        f"invalid transformer config: {key}={value!r}: {why} (config key model.transformer.{key})"
    )


@dataclass
class VARConfig:
    """Shape and initialisation of a VAR transformer.

    depth: number of blocks d. width / num_heads / drop_path_rate: None derives 64d / d / 0.1d/24.
    shared_aln: one AdaLN linear shared by all blocks (the paper's "-s" models).
    attn_l2_norm: L2-normalised q, k with a learnable per-head temperature (start 4, cap 100); False uses
        plain attention with scale 0.25 / sqrt(head_dim), as the published code does.
    num_classes: class count; index ``num_classes`` is the null (unconditional) class.
    vocab_size, cvae: the tokenizer's codebook size and dimension. patch_nums: the scale schedule.
    init_*: the published initialisation; init_std < 0 means sqrt(1 / (3 * width)).
    attn_impl: "sdpa" (dense block-causal mask) or "flex" (FlexAttention block mask, CUDA).
    """

    depth: int = 16
    width: int | None = None
    num_heads: int | None = None
    mlp_ratio: float = 4.0
    drop_rate: float = 0.0
    attn_drop: float = 0.0
    drop_path_rate: float | None = None
    norm_eps: float = 1e-6
    shared_aln: bool = False
    attn_l2_norm: bool = True
    num_classes: int = 1000
    vocab_size: int = 4096
    cvae: int = 32
    patch_nums: Sequence[int] = field(default_factory=lambda: SCHEDULE_256)
    init_adaln: float = 0.5
    init_adaln_gamma: float = 1e-5
    init_head: float = 0.02
    init_std: float = -1.0
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.depth < 1:
            raise _bad("depth", self.depth, "must be >= 1")
        if self.width is None:
            self.width = 64 * self.depth
        if self.num_heads is None:
            self.num_heads = self.depth
        if self.drop_path_rate is None:
            self.drop_path_rate = 0.1 * self.depth / 24
        if self.width < 1 or self.num_heads < 1 or self.width % self.num_heads:
            raise _bad("width", self.width, f"must be a positive multiple of num_heads={self.num_heads}")
        if self.num_classes < 1:
            raise _bad("num_classes", self.num_classes, "must be >= 1")
        if self.vocab_size < 2:
            raise _bad("vocab_size", self.vocab_size, "must be >= 2")
        if not self.patch_nums or min(self.patch_nums) < 1:
            raise _bad("patch_nums", self.patch_nums, "needs at least one positive scale")
        if any(b <= a for a, b in zip(self.patch_nums, self.patch_nums[1:], strict=False)):
            raise _bad("patch_nums", self.patch_nums, "scales must increase strictly")
        for key in ("drop_rate", "attn_drop", "drop_path_rate"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise _bad(key, getattr(self, key), "must be in [0, 1)")
        if self.attn_impl not in ("sdpa", "flex"):
            raise _bad("attn_impl", self.attn_impl, "choose 'sdpa' or 'flex'")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @property
    def seq_len(self) -> int:
        """L: tokens over all scales."""
        return sum(p * p for p in self.patch_nums)

    @property
    def first_l(self) -> int:
        return self.patch_nums[0] ** 2

    @property
    def resolved_init_std(self) -> float:
        return self.init_std if self.init_std >= 0 else (1 / self.width / 3) ** 0.5


PRESETS: dict[str, dict] = {
    # the published models (parameter counts in tests/unit/test_transformer_model.py)
    "d16": dict(depth=16),
    "d20": dict(depth=20),
    "d24": dict(depth=24),
    "d30": dict(depth=30),
    "d36-s": dict(depth=36, shared_aln=True, patch_nums=SCHEDULE_512),
    # small models that run on a laptop CPU
    "tiny": dict(depth=4, width=128, num_heads=4, drop_path_rate=0.0),
    "d2": dict(depth=2),
}


def preset(name: str, **overrides) -> VARConfig:
    """A named preset with optional field overrides, e.g. ``preset("d16", num_classes=10)``."""
    if name not in PRESETS:
        raise ValueError(f"unknown VAR preset {name!r}; choose one of {sorted(PRESETS)}")
    return VARConfig(**{**PRESETS[name], **overrides})


def with_overrides(cfg: VARConfig, **overrides) -> VARConfig:
    return replace(cfg, **overrides)


def build_var_config(transformer: dict | VARConfig, tokenizer: VQVAEConfig) -> VARConfig:
    """``transformer``: VARConfig fields, optionally with ``preset`` (d16 ... tiny) whose values the other
    fields override. vocab_size / cvae / patch_nums default to the tokenizer's; explicit values that
    disagree with the tokenizer raise at startup."""
    if isinstance(transformer, VARConfig):
        cfg = transformer
    else:
        spec = {k: v for k, v in dict(transformer).items() if v is not None}
        name = spec.pop("preset", None)
        if name is not None and name not in PRESETS:
            raise ValueError(
                f"unknown VAR preset {name!r} (key model.transformer.preset); choose one of {sorted(PRESETS)}"
            )
        base = dict(PRESETS[name]) if name else {}
        base.update(
            vocab_size=tokenizer.vocab_size, cvae=tokenizer.z_channels, patch_nums=tokenizer.patch_nums
        )
        base.update(spec)
        known = {f.name for f in fields(VARConfig)}
        unknown = set(base) - known
        if unknown:
            raise ValueError(
                f"unknown transformer config keys {sorted(unknown)} (model.transformer); valid: {sorted(known)}"
            )
        cfg = VARConfig(**base)
    return cfg
