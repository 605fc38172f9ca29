"""The one seed rule of every sampling front end (``var-sample``, ``var-eval``, ``var-edit``, the web app,
the FID callback): sampling batch ``b`` of a run seeded ``s`` draws with its own generator seeded
``s * 100003 + b``, so the same seed gives the same images for any batch split across GPUs. Seeds are
integers in 0..2^32-1 (every derived seed stays inside torch's 64-bit generator seed)."""

from __future__ import annotations

from typing import Any

SEED_STRIDE = 100003  # batch b of seed s uses s * 100003 + b
SEED_RULE = f"seed * {SEED_STRIDE} + batch index"  # as written into every settings / report file


MAX_SEED = 2**32 - 1  # every seed rule (batch, rank, subset) stays inside torch's 64-bit generator seed


def check_seed(seed: Any, key: str = "seed") -> int:
    """``seed`` as an int in 0..MAX_SEED, or a ValueError naming ``key`` and the range."""
    try:
        number = float(seed) if not isinstance(seed, int) else seed
        whole = isinstance(number, int) or (
            number == number and abs(number) != float("inf") and number == int(number)
        )
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole or isinstance(seed, bool):
        raise ValueError(f"{key}={seed!r} is not a whole number; a seed is an integer in 0..{MAX_SEED}")
    number = int(number)
    if not 0 <= number <= MAX_SEED:
        raise ValueError(f"{key}={number} is out of range: a seed is an integer in 0..{MAX_SEED} (key {key})")
    return number


def batch_seed(seed: int, batch_idx: int) -> int:
    """The generator seed of global batch ``batch_idx`` (distinct for every batch of a run)."""
    return int(seed) * SEED_STRIDE + int(batch_idx)
