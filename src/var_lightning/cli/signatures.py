"""The parameter names of every ``_target_`` the shipped configs name, cached so that a command checks a
config's keys (:mod:`var_lightning.cli.validate`) before torch and Lightning are imported: importing Lightning
alone takes 6-7 s on a 2-core machine, and ``var-train --help`` or a typo'd key should answer at once.

Each entry records the distribution that provides the target and its version when the cache was written; an
entry is used only while that version is the one installed (``importlib.metadata``, no import), otherwise the
target is imported and inspected as before, so another Lightning release is checked correctly, only slower.
A target that is not in the cache (a user's own class) is always imported. ``make signatures`` (``python -m
var_lightning.cli.signatures``) rewrites the file; a test fails when an entry whose version is installed
differs from the live signature.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import json
import sys
from pathlib import Path
from typing import Any

CACHE = Path(__file__).with_name("signatures.json")
# callables the validation reads besides the configs' _target_s (a settings block whose schema is a class)
EXTRA = ("var_lightning.tokenizer.losses.VQGANLoss",)


def _version(dist: str) -> str:
    if dist == "python":
        return ".".join(map(str, sys.version_info[:2]))
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


@functools.lru_cache(maxsize=1)
def _cache() -> dict[str, Any]:
    try:
        return json.loads(CACHE.read_text())
    except (OSError, ValueError):
        return {}


def live(path: str) -> dict[str, Any] | None:
    """``{"params": [...], "var_kw": bool}`` of the importable ``path``; None when it does not import or has no
    signature (a builtin)."""
    from hydra.utils import get_object

    try:
        obj = get_object(path)
        params = inspect.signature(obj).parameters
    except Exception:  # noqa: BLE001 - an unimportable target fails at instantiation with Hydra's message
        return None
    return {
        "params": sorted(n for n in params if n != "self"),
        "var_kw": any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()),
    }


def signature(path: str) -> dict[str, Any] | None:
    """The cached entry of ``path`` when its distribution's installed version is the cached one, else
    :func:`live` (which imports the target)."""
    entry = _cache().get(path)
    if entry is not None and _version(entry["dist"]) == entry["version"]:
        return entry["signature"]
    return live(path)


def shipped_targets(conf_dir: Path) -> list[str]:
    """Every ``_target_`` value in the shipped YAML files, and :data:`EXTRA`."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    found: set[str] = set(EXTRA)

    def walk(node: Any) -> None:
        if isinstance(node, DictConfig):
            for key in node:
                value = node._get_node(key)
                if key == "_target_" and not OmegaConf.is_interpolation(node, key):
                    found.add(str(node[key]))
                else:
                    walk(value)
        elif isinstance(node, ListConfig):
            for item in node:
                walk(item)

    for path in sorted(conf_dir.rglob("*.yaml")):
        walk(OmegaConf.load(path))
    return sorted(found)


def _distribution(path: str) -> str:
    top = path.split(".")[0]
    if top in sys.stdlib_module_names:
        return "python"
    dists = importlib.metadata.packages_distributions().get(top) or [top]
    return dists[0]


def build(conf_dir: Path) -> dict[str, Any]:
    out = {}
    for path in shipped_targets(conf_dir):
        sig = live(path)
        if sig is not None:
            dist = _distribution(path)
            out[path] = {"dist": dist, "version": _version(dist), "signature": sig}
    return out


def main() -> int:
    data = build(Path(__file__).resolve().parents[1] / "conf")  # the shipped configs (validate.CONF_DIR)
    CACHE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"{CACHE}: {len(data)} signatures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
