"""How many graphs ``torch.compile`` may keep per function before it gives up and runs the code eagerly.

The trunk and FlexAttention are compiled with static shapes (the best kernels for each sequence length), so a
run compiles one graph per length it meets: every progressive prefix, the full schedule, training and
evaluation, a full and a partial last batch. Past dynamo's per-function limit (8 by default) dynamo silently
runs that function eagerly from then on, which for FlexAttention means the unfused B x H x L x L path. The
limit is ``recompile_limit`` (``cache_size_limit`` before torch 2.6) and is process-wide.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def recompile_limit() -> int:
    """Dynamo's current per-function recompile limit."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    return int(getattr(dynamo_config, name))


def reserve_recompiles(graphs: int) -> None:
    """Raise dynamo's per-function recompile limit to ``graphs`` (+ a margin) when it is lower; never lowers it."""
    import torch._dynamo.config as dynamo_config

    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    need = graphs + 2
    if getattr(dynamo_config, name) < need:
        log.info("torch.compile: up to %d graph shapes in this run; dynamo's %s %d -> %d",
                 graphs, name, getattr(dynamo_config, name), need)  # fmt: skip
        setattr(dynamo_config, name, need)
