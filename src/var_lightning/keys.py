"""Configuration keys checked the same way everywhere: an unknown key names itself as written and the
closest valid key (the one did-you-mean rule, :func:`closest`, also for dotted paths), a wrong type or range
names its key. Used by the settings dataclasses, the loss and extractor signatures, and the command-line
validation."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


CUTOFF = 0.6  # difflib ratio below which nothing is suggested


class ConfigKeyError(ValueError):
    """An unknown or misspelled configuration key; the message names it and the closest valid key."""


def closest(key: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``key`` (difflib ratio >= 0.6), or None."""
    found = difflib.get_close_matches(key, list(candidates), n=1, cutoff=CUTOFF)
    return found[0] if found else None


def unknown_key_message(
    prefix: str, key: str, valid: Iterable[str], nested: Mapping[str, str] | None = None
) -> str:
    """The one message for an unknown ``<prefix><key>``: the closest valid sibling, else (``nested``: leaf ->
    dotted path of the keys below the siblings) the closest nested path, else the valid keys."""
    valid = sorted(valid)
    sibling = closest(key, valid)
    guess = f"{prefix}{sibling}" if sibling else closest_path(key, nested or {})
    hint = f"did you mean {guess}?" if guess else f"valid keys: {', '.join(valid)}"
    return f"unknown config key {prefix}{key}: {hint}"


def bad_value(prefix: str, key: str, value: Any, why: str) -> ValueError:
    return ValueError(f"{prefix}{key}={value!r}: {why} (key {prefix}{key})")


def settings_from(cls: type[T], values: Mapping[str, Any] | T | None, prefix: str) -> T:
    """``cls(**values)`` with an error for unknown keys that names ``<prefix><key>`` and the closest valid
    key; ``values`` may already be a ``cls`` (returned as is) or None (all defaults)."""
    if isinstance(values, cls):
        return values
    given = dict(values or {})
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in given:
        if key not in names:
            raise ConfigKeyError(unknown_key_message(prefix, key, names))
    obj = cls(**given)
    obj.check(prefix)  # type: ignore[attr-defined]
    return obj


def check_number(prefix: str, key: str, value: Any, lo: float | None = None, hi: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise bad_value(prefix, key, value, "must be a number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise bad_value(prefix, key, value, f"must be in [{lo}, {hi}]")


def check_kwargs(fn: Any, kwargs: Mapping[str, Any], prefix: str) -> None:
    """Unknown keyword arguments of ``fn`` (a class or function whose signature is the schema, e.g.
    ``VQGANLoss``) raise :class:`ConfigKeyError` naming ``<prefix><key>`` and the closest parameter."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    names = [n for n, p in params.items() if n != "self" and p.kind is not inspect.Parameter.VAR_POSITIONAL]
    for key in kwargs:
        if key not in names:
            raise ConfigKeyError(unknown_key_message(prefix, key, names))


def closest_path(bad: str, paths_by_leaf: Mapping[str, str]) -> str | None:
    """The dotted path (values) whose last part (keys) is most like ``bad`` by :func:`closest`'s measure;
    ties go to the shorter path (``model.depht`` -> ``model.transformer.depth``)."""
    scored = [
        (difflib.SequenceMatcher(None, bad, leaf).ratio(), -len(path), path)
        for leaf, path in paths_by_leaf.items()
    ]
    scored = [s for s in scored if s[0] >= CUTOFF]
    return max(scored)[2] if scored else None
