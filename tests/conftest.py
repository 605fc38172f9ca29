"""Shared fixtures: deterministic seeds, restored global state, tiny models."""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
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


# ---------------------------------------------------------------------------------------------- the two tiers
# `make test` runs what stays in this process; tests that start processes (commands, several ranks) are marked
# `process` and run by `make test-process`. An unmarked test (or a fixture it sets up) that starts one fails,
# naming the marker. VAR_TEST_PROCESS_GUARD=record instead appends "<test id>\t<command>" to the file
# VAR_TEST_PROCESS_LOG (how the tiers were first sorted).
PROCESS_MARKER = "process"


class StartsAProcess(RuntimeError):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    if item.get_closest_marker(PROCESS_MARKER) is not None:
        yield
        return
    record = os.environ.get("VAR_TEST_PROCESS_GUARD") == "record"
    popen, start = subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start

    def refuse(what: str) -> None:
        if record:
            with open(os.environ.get("VAR_TEST_PROCESS_LOG", "process_tests.txt"), "a") as f:
                f.write(f"{item.nodeid}\t{what[:200]}\n")
            return
        raise StartsAProcess(
            f"{item.nodeid} starts a process ({what[:120]}): mark it @pytest.mark.{PROCESS_MARKER} so it runs in "
            "`make test-process`, or keep it in this process"
        )

    def guarded_popen(self, args, *a, **k):
        refuse(" ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args))
        return popen(self, args, *a, **k)

    def guarded_start(self):
        refuse(f"multiprocessing {type(self).__name__}")
        return start(self)

    subprocess.Popen._execute_child = guarded_popen
    multiprocessing.process.BaseProcess.start = guarded_start
    try:
        yield
    finally:
        subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start = popen, start
