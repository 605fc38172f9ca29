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


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory):
    """An untrained tiny tokenizer checkpoint (8 px images, patch_nums (1, 2, 4)), written once per test run."""
    from dataclasses import asdict

    from tests.helpers import tiny_vae

    torch.manual_seed(0)
    vae = tiny_vae(patch_nums=(1, 2, 4), ch=16, norm_groups=8)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.ckpt"
    torch.save({"var_lightning": {"stage": "tokenizer"}, "hyper_parameters": {"tokenizer": asdict(vae.cfg)},
                "state_dict": {f"vae.{k}": v for k, v in vae.state_dict().items()}}, path)  # fmt: skip
    return path


@pytest.fixture()
def compose():
    """``compose(name, overrides, run_dir=None, hydra=False, **paths)``: a shipped config composed as the
    command would (:func:`tests.helpers.compose_config`)."""
    from tests.helpers import compose_config

    return compose_config


_STARTS_PROCESS = ("subprocess.", "sys.executable", "Popen(", "mp.spawn", "multiprocessing.")


def _unmarked_process_tests(items) -> list[str]:
    """Collected tests without the ``process`` marker whose own source starts a process (the runtime guard
    below also catches what they start through helpers and fixtures)."""
    import inspect

    bad = []
    for item in items:
        fn = getattr(item, "function", None)
        if fn is None or item.get_closest_marker(PROCESS_MARKER) is not None:
            continue
        try:
            src = inspect.getsource(fn)
        except (OSError, TypeError):
            continue
        if any(s in src for s in _STARTS_PROCESS):
            bad.append(item.nodeid)
    return bad


def pytest_collection_modifyitems(config, items):
    bad = _unmarked_process_tests(items)
    if bad:
        raise pytest.UsageError(
            f"these tests start a process but are not marked @pytest.mark.{PROCESS_MARKER} (the make test-process "
            "tier): " + ", ".join(bad[:10])
        )
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


# torch.compile's C++ / Triton builds and compile workers are processes the test does not start itself
_COMPILER_FRAMES = ("torch/_inductor/", "torch/utils/cpp_extension", "/triton/", "torch/_dynamo/")


def _started_by_a_compiler() -> bool:
    import traceback

    return any(
        any(m in f.filename.replace("\\", "/") for m in _COMPILER_FRAMES) for f in traceback.extract_stack()
    )


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
        if not _started_by_a_compiler():
            refuse(" ".join(map(str, args)) if isinstance(args, (list, tuple)) else str(args))
        return popen(self, args, *a, **k)

    def guarded_start(self):
        if not _started_by_a_compiler():
            refuse(f"multiprocessing {type(self).__name__}")
        return start(self)

    subprocess.Popen._execute_child = guarded_popen
    multiprocessing.process.BaseProcess.start = guarded_start
    try:
        yield
    finally:
        subprocess.Popen._execute_child, multiprocessing.process.BaseProcess.start = popen, start
