"""Shared fixtures: deterministic seeds, restored global state, tiny models."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

os.environ.setdefault("HYDRA_FULL_ERROR", "1")
# caches the code writes by default (reference statistics) go to a fresh directory, not the user's ~/.cache
os.environ["VAR_CACHE_DIR"] = tempfile.mkdtemp(prefix="var_lightning_test_cache_")
torch.set_num_threads(1)  # tiny models: one thread is as fast and immune to a busy machine


@pytest.fixture(autouse=True)
def _hygiene():
    """Each test starts from the same RNG state and leaves the default dtype, the float32 matmul precision,
    dynamo's recompile limit and the process group as found. (Set the limit by assignment: pytest's
    monkeypatch cannot undo an attribute of torch's config module, it removes it.)"""
    torch.manual_seed(0)
    dtype, matmul = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    recompiles = torch._dynamo.config.recompile_limit  # raised by runs that compile (reserve_recompiles)
    yield
    torch.set_default_dtype(dtype)
    torch.set_float32_matmul_precision(matmul)
    torch._dynamo.config.recompile_limit = recompiles
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.fixture()
def compose():
    """``compose(name, overrides, run_dir=None, hydra=False, **paths)``: a shipped config composed as the
    command would (:func:`tests.helpers.compose_config`)."""
    from tests.helpers import compose_config

    return compose_config


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
