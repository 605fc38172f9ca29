"""Fully sharded training on torch's current FSDP (FSDP2, ``fully_shard``), applied from outside the model.

Why FSDP2 and not Lightning's ``FSDPStrategy`` (FSDP1): FSDP1 flattens parameters, so code that runs after
wrapping sees 1-D shards (weight-decay groups by ``ndim`` went wrong), it refuses norm clipping under its
mixed-precision plugin, and it does not run on CPU processes, so none of it could be tested here. FSDP2 keeps
every parameter a ``DTensor`` with its global shape and name, clips with ``clip_grad_norm_``, takes a
``MixedPrecisionPolicy`` per unit, does HSDP on a 2-D mesh and runs over gloo on CPU, where CI trains it.

:class:`ShardedStrategy` is Lightning's ``ModelParallelStrategy`` (data parallel over every rank, no tensor
parallelism) carrying a :class:`ShardingPlan`; the LightningModule's ``configure_model`` calls
:func:`shard_transformer`, which makes each transformer block one FSDP unit and the transformer's root (the
embeddings and the head) another, and leaves the frozen tokenizer unsharded on every rank. Model code never
sees any of this (STYLE.md): it is plain torch, and the blocks keep their parameter names, so checkpoints
have the keys of an unsharded run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import types
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.checkpoint import checkpoint

from var_lightning.checkpoints.safe_io import weights_only_loads
from var_lightning.checkpoints.sharded import is_sharded_checkpoint, read_metadata

log = logging.getLogger(__name__)

try:  # torch >= 2.6
    from torch.distributed.fsdp import (
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )
except ImportError:  # pragma: no cover - torch 2.4 / 2.5 keep FSDP2 under _composable
    from torch.distributed._composable.fsdp import (
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# param_dtype=auto: the blocks' compute dtype that trainer.precision asks for
AUTO_PARAM_DTYPE = {
    "bf16-mixed": "bfloat16",
    "bf16-true": "bfloat16",
    "16-mixed": "float16",
    "16-true": "float16",
}


def _dtype(name: str | None, key: str) -> torch.dtype | None:
    if name is None or name == "auto":
        return None
    if name not in DTYPES:
        raise ValueError(f"{key}={name!r}: choose one of {sorted(DTYPES)} or null")
    return DTYPES[name]


@dataclass(frozen=True)
class ShardingPlan:
    """How :func:`shard_transformer` shards a transformer.

    reshard_after_forward: free each block's gathered parameters after its forward (FULL_SHARD / ZeRO-3,
    ``trainer=fsdp``) or keep them until its backward (SHARD_GRAD_OP / ZeRO-2, ``trainer=fsdp_grad_op``: more
    memory, one all-gather less per block). replicas: HSDP (``trainer=fsdp_hybrid``): the ranks form a
    (replicas, world / replicas) mesh, sharded within a group and replicated across groups; ``"nodes"`` = one
    group per node; None = plain FSDP over all ranks. param_dtype: the blocks' parameters during forward and
    backward (the fp32 master copy is what the optimizer updates); the root (embeddings, head) keeps fp32, as
    the published code runs them. reduce_dtype: gradient reduction (fp32 keeps small updates exact).
    activation_checkpointing: recompute each block's activations in backward (less memory, ~30% more compute;
    needed for d36 at 512 px). autocast: the forward runs under autocast (``trainer.precision=*-mixed``, set by
    :meth:`resolved`): the blocks' inputs are then left in fp32 (see :func:`block_policy`).
    """

    reshard_after_forward: bool = True
    replicas: int | str | None = None
    param_dtype: str | None = "auto"
    reduce_dtype: str | None = "float32"
    activation_checkpointing: bool = False
    autocast: bool = False

    def resolved(self, precision: str) -> ShardingPlan:
        """``param_dtype=auto`` made concrete for ``trainer.precision`` (bf16-mixed -> bfloat16, 32 -> fp32),
        and whether the forward runs under autocast (``*-mixed``)."""
        autocast = str(precision).endswith("-mixed")
        if self.param_dtype != "auto":
            return replace(self, autocast=autocast)
        return replace(self, param_dtype=AUTO_PARAM_DTYPE.get(str(precision)), autocast=autocast)

    def __post_init__(self) -> None:
        _dtype(self.param_dtype, "trainer.strategy.param_dtype")
        _dtype(self.reduce_dtype, "trainer.strategy.reduce_dtype")
        valid = self.replicas in (None, "nodes") or (isinstance(self.replicas, int) and self.replicas >= 1)
        if not valid:
            raise ValueError(
                f"trainer.strategy.replicas={self.replicas!r}: a positive number of replica groups, 'nodes' "
                "(one per node) or null (plain FSDP)"
            )


class ShardedStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` for pure data parallelism with FSDP2: every rank is a data-parallel rank
    (``data_parallel_size`` = world size, no tensor parallelism), and the module's ``configure_model`` shards
    itself by :attr:`plan`. ``save_distributed_checkpoint=True`` writes DCP directories (``last.ckpt/`` with one
    shard file per rank), which ``resume=auto`` finds; ``var-convert consolidate`` turns one into a single file.
    """

    def __init__(
        self,
        reshard_after_forward: bool = True,
        replicas: int | str | None = None,
        param_dtype: str | None = "auto",
        reduce_dtype: str | None = "float32",
        activation_checkpointing: bool = False,
        save_distributed_checkpoint: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(save_distributed_checkpoint=save_distributed_checkpoint, **kwargs)
        self.plan = ShardingPlan(
            reshard_after_forward, replicas, param_dtype, reduce_dtype, activation_checkpointing
        )

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's sharded load, plus one case it cannot do: a run with ``callbacks=ema`` resuming a DCP
        directory written without it. DCP reads every key the module asks for and would fail on the missing
        ``var_ema.*``; here the average is left out of the read and then starts from the restored weights (as
        a single-file resume does). The opposite case (an average in the checkpoint, none in the run) needs
        nothing: DCP reads only what is asked for."""
        # DCP unpickles the shard files' bytes entries fully; resume=auto checked them
        # (sharded.check_byte_entries), and here nothing beyond tensors and plain values is unpickled unless
        # trust_pickle=true (Lightning's weights_only=False)
        with contextlib.nullcontext() if weights_only is False else weights_only_loads():
            return self._load_checkpoint(Path(self.broadcast(str(checkpoint_path))), weights_only)

    def _load_checkpoint(self, path: Path, weights_only: bool | None) -> dict[str, Any]:
        module = self.lightning_module
        ema = getattr(module, "var_ema", None)
        if ema is None or not is_sharded_checkpoint(path) or _stores(path, "state_dict.var_ema."):
            return super().load_checkpoint(path, weights_only)
        del module.var_ema
        try:
            out = super().load_checkpoint(path, weights_only)
        finally:
            module.var_ema = ema
        with torch.no_grad():
            torch._foreach_copy_(local_tensors(ema), local_tensors(module.var))
        if self.global_rank == 0:
            log.info("callbacks=ema: %s has no EMA yet; the average starts from its weights", path)
        return out

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None
    ) -> None:
        """Every rank writes its shards into a temporary directory beside the target; after a barrier rank 0
        swaps it in and removes the previous one. A job killed while saving leaves the previous checkpoint
        whole (DCP itself writes into the target directory, file by file)."""
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))
        tmp = Path(self.broadcast(str(path.with_name(f".{path.name}.tmp-{os.getpid()}"))))
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("sharded_checkpoint_written")
        if self.global_rank == 0:
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            elif old.exists():
                old.unlink()
        self.barrier("sharded_checkpoint_swapped")


def _stores(path: Path, prefix: str) -> bool:
    """Whether the DCP directory's index (read by the allowlisting reader) holds a key starting with ``prefix``."""
    return any(k.startswith(prefix) for k in read_metadata(path, "resume").state_dict_metadata)


def local_tensors(module: nn.Module) -> list[torch.Tensor]:
    """The module's parameters as this rank stores them: each ``DTensor``'s local shard (sharded), the tensors
    themselves (unsharded). A gathered unit is resharded first, so the list is the master copy. Elementwise
    updates over it (``torch._foreach_*``) are local: one fused call per step, no collective."""
    reshard_all(module)
    return [p.to_local() if hasattr(p, "to_local") else p for p in (q.detach() for q in module.parameters())]


def sharding_plan(trainer: Any) -> ShardingPlan | None:
    """The plan of a trainer running :class:`ShardedStrategy` (None for every other strategy)."""
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    if not isinstance(strategy, ShardedStrategy):
        return None
    return strategy.plan.resolved(strategy.precision_plugin.precision)


def is_sharded(module: nn.Module) -> bool:
    """True when ``module`` or one of its submodules was sharded with ``fully_shard``."""
    return any(isinstance(m, FSDPModule) for m in module.modules())


def reshard_all(module: nn.Module) -> None:
    """Free every gathered FSDP2 unit of ``module`` back to its shards (no-op when unsharded). An evaluation
    forward leaves the root gathered (it reshards after backward only); code that updates or swaps the stored
    parameters must see the shards."""
    for m in module.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def fsdp_mesh(mesh: Any, plan: ShardingPlan, num_nodes: int) -> Any:
    """The mesh to shard over: the data-parallel dimension of Lightning's mesh, or for HSDP a 2-D
    (replicate, shard) mesh over the same ranks."""
    dp = mesh["data_parallel"]
    if plan.replicas is None:
        return dp
    from torch.distributed.device_mesh import init_device_mesh

    world = dp.size()
    replicas = num_nodes if plan.replicas == "nodes" else int(plan.replicas)
    if world % replicas:
        raise ValueError(
            f"trainer.strategy.replicas={plan.replicas} ({replicas} groups) does not divide the {world} ranks; "
            "pick a divisor of trainer.devices x trainer.num_nodes"
        )
    return init_device_mesh(
        dp.device_type, (replicas, world // replicas), mesh_dim_names=("replicate", "shard")
    )


def _checkpointed_forward(block: nn.Module) -> None:
    """Recompute ``block``'s forward in backward (non-reentrant, RNG state preserved so drop-path draws the
    same mask). The forward is replaced on the instance, so parameter names stay those of the plain block."""
    plain = block.forward

    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return plain(*args, **kwargs)
        return checkpoint(plain, *args, use_reentrant=False, **kwargs)

    block.forward = types.MethodType(forward, block)


def block_policy(plan: ShardingPlan) -> MixedPrecisionPolicy:
    """The blocks' mixed-precision policy: parameters in ``param_dtype`` for forward and backward, gradients
    reduced in ``reduce_dtype``.

    Under autocast the blocks' inputs are *not* cast (``cast_forward_inputs=False``): the residual stream
    stays fp32 between blocks, as under DDP's autocast and in the published trainer, and autocast casts each
    matmul's operands instead. Casting them (FSDP2's default) makes the residual stream itself bf16: at the
    published init (AdaLN gamma 1e-5) a block adds ~1e-7 to activations whose bf16 spacing is ~1e-3, and its
    contribution rounds away. Without autocast (``*-true`` precision or a plan used directly) the inputs must
    be cast, or fp32 activations would meet bf16 weights."""
    return MixedPrecisionPolicy(
        param_dtype=_dtype(plan.param_dtype, "param_dtype"),
        reduce_dtype=_dtype(plan.reduce_dtype, "reduce_dtype"),
        cast_forward_inputs=not plan.autocast,
    )


def compile_block(block: nn.Module, compile: bool | str, backend: Any = "inductor") -> None:
    """``torch.compile`` one block in place (``nn.Module.compile``: parameter names unchanged), before it is
    sharded, so FSDP2's per-block hooks stay outside the compiled code.

    Compiling the whole trunk instead (what an unsharded run does) does not survive sharding: the hooks split
    it into one frame per block, and each block's frame specialises on its own drop-path rate (a Python float
    that differs per block), so every block recompiles, dynamo's recompile limit is reached after a few
    blocks and the rest run eagerly. Here drop-path runs outside the compiled code (two graph breaks per
    block, around an elementwise multiply), so all blocks share one graph per shape: the compile count does
    not grow with depth. ``compile``: True or a ``torch.compile`` mode; ``backend`` is for tests."""
    mode = None if compile is True else str(compile)
    drop_path = getattr(block, "drop_path", None)
    if drop_path is not None:
        drop_path.forward = torch.compiler.disable(drop_path.forward, recursive=False)
    block.compile(mode=mode, dynamic=False, backend=backend)


def shard_transformer(
    net: nn.Module, mesh: Any, plan: ShardingPlan, compile: bool | str = False, backend: Any = "inductor"
) -> None:
    """Shard a VAR (or the AR baseline) in place: each of ``net.blocks`` one FSDP unit with the plan's
    mixed-precision policy (:func:`block_policy`), then the root (embeddings, AdaLN head, head) in fp32.
    ``compile`` (``model.train.compile``): each block compiled before it is sharded (:func:`compile_block`);
    the trunk is then called uncompiled (:func:`trunk_compile`). Idempotent."""
    if is_sharded(net):
        return
    block_mp = block_policy(plan)
    root_mp = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=_dtype(plan.reduce_dtype, "reduce_dtype"))
    for block in net.blocks:
        if plan.activation_checkpointing:
            _checkpointed_forward(block)
        if compile:
            compile_block(block, compile, backend)
        fully_shard(block, mesh=mesh, mp_policy=block_mp, reshard_after_forward=plan.reshard_after_forward)
    # The root (embeddings, AdaLN head, head: a few % of the parameters) stays gathered from forward to
    # backward (as torchtitan does): the objective applies the head after forward_hidden returns, chunk by
    # chunk, and in evaluation too, and backward would gather it again at once anyway.
    fully_shard(net, mesh=mesh, mp_policy=root_mp, reshard_after_forward=False)
    # the training objective calls forward_hidden, not forward: gather the root's parameters there too
    register_fsdp_forward_method(net, "forward_hidden")
    n = sum(p.numel() for p in net.parameters())
    log.info(
        "sharded the transformer over %s ranks (%s): %d blocks + root, %.1fM parameters, params %s / reduce %s, "
        "reshard after forward %s, activation checkpointing %s",
        mesh.size(), "x".join(str(s) for s in mesh.shape), len(net.blocks), n / 1e6, plan.param_dtype,
        plan.reduce_dtype, plan.reshard_after_forward, plan.activation_checkpointing,
    )  # fmt: skip


def trunk_compile(net: nn.Module, compile: bool | str) -> bool | str:
    """The ``compile`` argument for ``net.forward_hidden``: the setting itself for a plain transformer (the
    whole trunk compiles into one graph per shape), False for a sharded one (its blocks are compiled one by
    one, :func:`compile_block`)."""
    return False if is_sharded(net) else compile


def plain_class(module: nn.Module) -> type[nn.Module]:
    """The class ``fully_shard`` derived ``type(module)`` from (``FSDPVAR`` -> ``VAR``)."""
    return next(c for c in type(module).__mro__ if not issubclass(c, FSDPModule))


def full_copy(net: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """A plain, unsharded copy of a sharded transformer for sampling, on this rank's device, its floating-point
    weights in ``dtype`` (None: the fp32 master weights). A collective: every rank must call it. The copy is
    built on the meta device (no random initialisation) and filled one tensor at a time, so the peak is the
    copy plus one gathered fp32 tensor: a bf16 copy of d30 is 4 GB per rank, where gathering the full fp32
    state dict first held 8 GB and twice that while the copy was built."""
    reshard_all(net)
    source = dict(net.named_parameters())
    source.update(net.named_buffers())
    device = next(iter(source.values())).device
    with torch.device("meta"):
        copy = plain_class(net)(net.cfg)
        if dtype is not None:  # the weights in dtype (buffers, e.g. the attention mask, keep theirs)
            for p in copy.parameters():
                p.data = p.data.to(dtype)
    copy.to_empty(device=device)
    target = dict(copy.named_parameters())
    target.update(copy.named_buffers())
    if set(target) != set(source):
        raise RuntimeError(
            "the sharded transformer and a fresh one differ in their tensors: "
            f"{sorted(set(target) ^ set(source))[:5]} (was the module changed after sharding?)"
        )
    for name, dest in target.items():
        t = source[name].detach()
        t = t.full_tensor() if hasattr(t, "full_tensor") else t
        dest.data.copy_(t)
        del t
    return copy.requires_grad_(False)
