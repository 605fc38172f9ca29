"""Configs that catch mistakes: every key of a composed config is checked before anything runs.

Hydra itself rejects ``key=value`` for a key that does not exist, but its message suggests ``+key=value``,
which then adds the typo and fails deep inside a constructor; and a misspelled key in an experiment YAML is
not caught at all. :func:`validate_config` walks the composed config and checks

* the root's own keys (and its plain nested blocks, e.g. var-eval's ``generation``) against the shipped
  root YAML, and ``paths`` / ``schedule`` against their group files;
* every node with a ``_target_`` (data module, model, trainer, its strategy, callbacks, loggers) against the
  target's signature, and the models' settings blocks (``transformer``, ``optim``, ``train``, ``sampling``,
  ``tokenizer``, ``loss``) against their dataclasses (:mod:`var_lightning.settings`);

and raises :class:`~var_lightning.settings.ConfigKeyError` naming the full key and the closest valid one.
:func:`checked_main` wraps a ``@hydra.main`` task: it composes the command line first (so Hydra's own
"Could not override" becomes the same message, before any run directory is created), validates, and prints
user errors as one line instead of a traceback (``HYDRA_FULL_ERROR=1`` shows it).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import functools
import inspect
import os
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from var_lightning.distributed import rank_log_suffix
from var_lightning.settings import (
    ConfigKeyError,
    SamplingDefaults,
    TokenizerOptim,
    VAROptim,
    VARTrain,
    closest,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
if not OmegaConf.has_resolver("var_rank_suffix"):  # the per-process log file name (conf/hydra/default.yaml)
    OmegaConf.register_new_resolver("var_rank_suffix", rank_log_suffix)
_HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
# groups whose nodes are free-form (their files set keys of other nodes, or Hydra's own)
_SKIP_GROUPS = {"hydra", "experiment", "sweep", "debug"}


def _settings_schema() -> dict[str, dict[str, Any]]:
    from var_lightning.tokenizer.config import VQVAEConfig
    from var_lightning.tokenizer.losses import VQGANLoss
    from var_lightning.transformer.config import VARConfig

    transformer_stage = {
        "transformer": (VARConfig, {"preset"}),
        "optim": VAROptim,
        "train": VARTrain,
        "sampling": SamplingDefaults,
    }
    return {
        "var_lightning.training.var_module.VARModule": transformer_stage,
        "var_lightning.training.ar_module.ARModule": transformer_stage,
        "var_lightning.training.tokenizer_module.TokenizerModule": {
            "tokenizer": (VQVAEConfig, set()),
            "loss": VQGANLoss,
            "optim": TokenizerOptim,
        },
    }


def _names(schema: Any) -> tuple[set[str], dict[str, Any]]:
    """(valid keys, nested schemas by key) of a dataclass, a (dataclass, extra keys) pair or a callable."""
    extra: set[str] = set()
    if isinstance(schema, tuple):
        schema, extra = schema
    if dataclasses.is_dataclass(schema):
        nested = {f.name: f.default_factory for f in dataclasses.fields(schema)
                  if dataclasses.is_dataclass(f.default_factory)}  # fmt: skip
        return {f.name for f in dataclasses.fields(schema)} | extra, nested
    params = inspect.signature(schema).parameters
    return {n for n, p in params.items() if n != "self"} | extra, {}


def _best_match(bad: str, candidates: dict[str, str]) -> str | None:
    """The dotted path (values) whose last part (keys) is most like ``bad``; ties go to the shorter path."""
    scored = [
        (difflib.SequenceMatcher(None, bad, leaf).ratio(), -len(path), path)
        for leaf, path in candidates.items()
    ]
    scored = [s for s in scored if s[0] >= 0.6]
    return max(scored)[2] if scored else None


def unknown_key_error(node: Any, key: str, valid: set[str], prefix: str) -> ConfigKeyError:
    """The error for ``<prefix><key>``: the closest valid key among its siblings or, failing that, among the
    keys nested below them (``model.depht`` -> ``model.transformer.depth``)."""
    shown = sorted(k for k in valid if not k.startswith("_"))
    candidates = {k: f"{prefix}{k}" for k in shown}
    for path in _all_keys(node, prefix):
        if path != f"{prefix}{key}" and not path.startswith(f"{prefix}{key}."):  # not the typo itself
            candidates.setdefault(path.rsplit(".", 1)[-1], path)
    sibling = closest(key, shown)
    guess = f"{prefix}{sibling}" if sibling else _best_match(key, candidates)  # a sibling, or a full path
    hint = f"did you mean {guess}?" if guess else f"valid keys: {', '.join(shown)}"
    return ConfigKeyError(f"unknown config key {prefix}{key}: {hint}")


def _check_keys(node: Any, valid: set[str], prefix: str) -> None:
    for key in node:
        if key not in valid:
            raise unknown_key_error(node, str(key), valid, prefix)


def _type_ok(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits the annotation ``hint`` (None: a type this check does not know)."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        results = [_type_ok(value, a) for a in args if a is not type(None)]
        return True if any(r is True for r in results) else (None if None in results else False)
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence) and args:
        if not isinstance(value, (list, tuple, ListConfig)):
            return False
        inner = args[0]
        return all(_type_ok(v, inner) is not False for v in value)
    return None


def _type_name(hint: Any) -> str:
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence) and args:
        return f"a list of {_type_name(args[0])}s"
    if args and typing.get_origin(hint) is not typing.Literal:
        return " or ".join(_type_name(a) for a in args)
    if typing.get_origin(hint) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _check_types(node: DictConfig, schema: Any, prefix: str) -> None:
    """Values of a settings block against its dataclass's annotations: ``model.transformer.depth=abc``
    names its key here instead of failing inside the constructor as ``TypeError ... full_key: model``."""
    import typing

    if isinstance(schema, tuple):
        schema = schema[0]
    if not dataclasses.is_dataclass(schema):
        return
    try:
        hints = typing.get_type_hints(schema)
    except Exception:  # noqa: BLE001 - an annotation this Python cannot evaluate: skip the check
        return
    for key in node:
        if key not in hints or OmegaConf.is_missing(node, key):
            continue
        try:
            value = node[key]
        except Exception:  # noqa: BLE001 - an interpolation that resolves later
            continue
        if value is None or isinstance(value, DictConfig):
            continue
        if _type_ok(value, hints[key]) is False:
            raise ConfigKeyError(
                f"{prefix}{key}={value!r} must be {_type_name(hints[key])} (key {prefix}{key})"
            )


def _check_block(node: Any, schema: Any, prefix: str) -> None:
    if not isinstance(node, DictConfig):
        return
    valid, nested = _names(schema)
    _check_keys(node, valid, prefix)
    _check_types(node, schema, prefix)
    for key, sub in nested.items():
        if key in node:
            _check_block(node[key], sub, f"{prefix}{key}.")


def _locate(path: str) -> Any | None:
    from hydra.utils import get_object

    try:
        return get_object(path)
    except Exception:  # noqa: BLE001 - an unimportable target fails at instantiation with Hydra's message
        return None


def check_target_node(node: DictConfig, prefix: str) -> None:
    """Keys of a ``_target_`` node (and of nested ``_target_`` nodes and settings blocks) against the
    target's signature and the settings dataclasses."""
    target = str(node.get("_target_"))
    obj = _locate(target)
    if obj is not None:
        try:
            params = inspect.signature(obj).parameters
        except (TypeError, ValueError):  # builtins without a signature (datetime.timedelta, set)
            params = None
        if params is not None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            valid = {n for n in params if n != "self"} | _HYDRA_KEYS
            _check_keys(node, valid, prefix)
    blocks = _settings_schema().get(target, {})
    for key in node:
        value = node._get_node(key)  # no interpolation resolution
        if key in blocks:
            _check_block(node[key], blocks[key], f"{prefix}{key}.")
        elif isinstance(value, DictConfig) and "_target_" in value:
            check_target_node(value, f"{prefix}{key}.")
        elif isinstance(value, ListConfig):
            for i, item in enumerate(value):
                if isinstance(item, DictConfig) and "_target_" in item:
                    check_target_node(item, f"{prefix}{key}[{i}].")


def _root_reference(config_name: str) -> tuple[DictConfig, set[str]]:
    """The root YAML's own keys (no defaults applied) and the names of its groups."""
    ref = OmegaConf.load(CONF_DIR / f"{config_name}.yaml")
    groups = set()
    for entry in ref.get("defaults", []):
        if isinstance(entry, str):
            continue
        for k in entry:
            groups.add(str(k).split("@")[0].lstrip("/").removeprefix("override "))
    return ref, groups


def _check_plain(node: DictConfig, ref: DictConfig, prefix: str) -> None:
    """A plain (target-free) block against its shipped reference, recursively."""
    _check_keys(node, set(ref.keys()), prefix)
    for key in node:
        sub_ref = ref._get_node(key)
        value = node._get_node(key)
        plain = isinstance(sub_ref, DictConfig) and isinstance(value, DictConfig) and "_target_" not in value
        if plain and len(sub_ref):  # an empty reference dict ({}) is free-form
            _check_plain(value, sub_ref, f"{prefix}{key}.")


def validate_config(cfg: DictConfig, config_name: str) -> None:
    """Raise :class:`ConfigKeyError` for the first unknown key of ``cfg`` (see the module docstring)."""
    ref, groups = _root_reference(config_name)
    own = {k for k in ref if k != "defaults"}
    _check_keys(cfg, own | groups | {"hydra"}, "")
    if "seed" in cfg and config_name != "train" and cfg.seed is not None:
        from var_lightning.evaluation.sharding import check_seed

        check_seed(cfg.seed, "seed")
    for key in cfg:
        value = cfg._get_node(key)
        if key in _SKIP_GROUPS or not isinstance(value, DictConfig):
            continue
        if key in own and isinstance(ref._get_node(key), DictConfig):
            _check_plain(value, ref[key], f"{key}.")
        elif "_target_" in value:
            check_target_node(value, f"{key}.")
        elif key in ("callbacks", "logger"):
            for name in value:
                entry = value._get_node(name)
                if isinstance(entry, DictConfig) and "_target_" in entry:
                    check_target_node(entry, f"{key}.{name}.")
        elif key in ("paths", "schedule"):
            option = CONF_DIR / key / "default.yaml"
            if key == "paths" and option.is_file():
                _check_plain(value, OmegaConf.load(option), "paths.")
            elif key == "schedule":
                _check_keys(value, {"patch_nums"}, "schedule.")


# ---------------------------------------------------------------------------------------------- main
_VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-path", "-cp",
                "--config-dir", "-cd", "--info", "-i", "--experimental-rerun"}  # fmt: skip
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--shell-completion", "-sc"}


def _overrides(argv: list[str]) -> tuple[list[str], bool] | None:
    """The command line's overrides (first value of sweeps) and whether it is a multirun; None when Hydra
    should handle the command line itself (help, shell completion, an unparsable override)."""
    out, multirun, skip = [], False, False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _INFO_FLAGS:
            return None
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in _VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            out.append(arg)
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = OverridesParser.create().parse_overrides(out)
    except Exception:  # noqa: BLE001 - Hydra reports its own syntax errors
        return None
    first = []
    for o in parsed:
        if o.is_sweep_override():
            value = next(iter(o.sweep_string_iterator()), None)
            if value is None:
                continue
            first.append(f"{o.get_key_element()}={value}")
        else:
            first.append(o.input_line)
    return first, multirun


def _composition_hint(err: Exception, config_name: str, overrides: list[str]) -> str | None:
    """Hydra's composition errors rewritten with the closest valid key or group option."""
    text = str(err)
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if m:
        bad = m.group(1)
        rest = [o for o in overrides if o.lstrip("+~").split("=")[0] != bad]
        try:
            base = _compose(config_name, rest)
        except Exception:  # noqa: BLE001
            return None
        parent, _, leaf = bad.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if not isinstance(node, DictConfig):
            return None
        other = _other_group_options(parent, leaf, overrides)
        if other:
            return other
        return str(unknown_key_error(node, leaf, {str(k) for k in node}, f"{parent}." if parent else ""))
    if "Config group override must be a string" in text:
        for o in overrides:
            key, _, value = o.lstrip("+~").partition("=")
            if (CONF_DIR / key).is_dir() and re.fullmatch(r"[\d.]+", value):
                options = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
                extra = (
                    "; another resolution takes its own scales: schedule.patch_nums=[1,2,3,...] (README: 'Your own folder, at another resolution')"
                    if key == "schedule"
                    else ""
                )
                return f"{key}={value}: no such option in group '{key}'; options: {', '.join(options)}{extra}"
    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if m:
        group, option = m.group(1), m.group(2)
        options = [p.stem for p in (CONF_DIR / group).glob("*.yaml")]
        guess = closest(option, options)
        return (f"{group}={option}: no such option in group '{group}'"
                f"{f' (did you mean {group}={guess}?)' if guess else ''}; options: {', '.join(sorted(options))}")  # fmt: skip
    return None


def _other_group_options(group: str, leaf: str, overrides: list[str]) -> str | None:
    """``data.root=...`` with the default ``data=synthetic``: the key belongs to other options of the group
    (``data=imagenet``); say which to pick instead of listing the selected option's keys."""
    folder = CONF_DIR / group
    if not group or "." in group or not folder.is_dir():
        return None
    have = [p.stem for p in sorted(folder.glob("*.yaml")) if leaf in (OmegaConf.load(p) or {})]
    if not have:
        return None
    chosen = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == group), None)
    picked = f"the selected {group}={chosen}" if chosen else f"the default {group} option"
    return (f"{group}.{leaf} is not a key of {picked}; it is a key of {' and '.join(f'{group}={h}' for h in have)}: "
            f"add {group}={have[0]} to the command line (e.g. {group}={have[0]} {group}.{leaf}=...)")  # fmt: skip


def _all_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, DictConfig):
        for k in node:
            if k == "hydra":
                continue
            path = f"{prefix}{k}"
            yield path
            yield from _all_keys(node._get_node(k), path + ".")


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def _target_accepts(config_name: str, overrides: list[str], key: str) -> bool:
    """Whether ``key`` (``trainer.limit_val_batches``) is an argument of its parent node's ``_target_``
    (``pytorch_lightning.Trainer``) that the shipped YAML just does not list."""
    parent, _, leaf = key.rpartition(".")
    if not parent:
        return False
    groups = [o for o in overrides if "." not in o.lstrip("+~").split("=")[0]]  # what picks the _target_s
    try:
        node = OmegaConf.select(_compose(config_name, groups), parent)
    except Exception:  # noqa: BLE001
        return False
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return False
    obj = _locate(str(node.get("_target_")))
    try:
        params = inspect.signature(obj).parameters if obj is not None else {}
    except (TypeError, ValueError):
        return False
    return leaf in params and leaf != "self"


def _numeric_option(arg: str) -> str:
    """``schedule=256`` -> ``schedule=s256``: Hydra parses a bare number as an int, which a config group
    cannot take ("Config group override must be a string"); the resolution-named schedules are ``s<N>``."""
    m = re.fullmatch(r"(\+{0,2}schedule)=(\d+)", arg)
    if m and (CONF_DIR / "schedule" / f"s{m.group(2)}.yaml").is_file():
        return f"{m.group(1)}=s{m.group(2)}"
    return arg


def accept_target_arguments(config_name: str, argv: list[str]) -> list[str]:
    """``argv`` with ``key=value`` rewritten to ``++key=value`` where ``key`` is an argument of its node's
    ``_target_`` that the YAML leaves at the default (any Lightning Trainer argument under ``trainer.``,
    any ModelCheckpoint argument under ``callbacks.model_checkpoint.``): Hydra would reject it as "not in
    struct", although the object takes it. Also ``schedule=256`` -> ``schedule=s256``."""
    argv = [_numeric_option(a) for a in argv]
    parsed = _overrides(argv)
    if parsed is None:
        return argv
    overrides = [o for o in parsed[0] if not o.lstrip("+~").startswith("hydra")]
    out = list(argv)
    for _ in range(len(overrides)):
        try:
            _compose(config_name, overrides)
            return out
        except Exception as err:  # noqa: BLE001
            m = re.search(r"Could not override '([^']+)'", str(err)) or re.search(
                r"Key '([^']+)' is not in struct", str(err)
            )
            if not m or not _target_accepts(config_name, overrides, m.group(1)):
                return out
            key = m.group(1)
        overrides = [f"++{o}" if o.split("=")[0] == key else o for o in overrides]
        out = [f"++{a}" if not a.startswith(("-", "+", "~")) and a.split("=")[0] == key else a for a in out]
    return out


def precheck(config_name: str, argv: list[str]) -> str | None:
    """The error message for a command line whose config has an unknown key, else None."""
    parsed = _overrides(accept_target_arguments(config_name, argv))
    if parsed is None:
        return _syntax_problem(argv)
    overrides, multirun = parsed
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key == ("hydra.sweep.dir" if multirun else "hydra.run.dir"):
            problem = _run_dir_problem(key, value.strip("'\""))
            if problem:
                return problem
    overrides = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        cfg = _compose(config_name, overrides)
    except Exception as err:  # noqa: BLE001 - Hydra's ConfigCompositionException and OmegaConf's errors
        return _composition_hint(err, config_name, overrides)
    try:
        validate_config(cfg, config_name)
    except (ConfigKeyError, ValueError) as err:
        return str(err)
    return None


def _syntax_problem(argv: list[str]) -> str | None:
    """The first override Hydra's grammar rejects, with the quoting that fixes it (a shard pattern's
    ``{000000..001281}`` reads as a dict); None when every override parses (help, flags)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            parser.parse_overrides([arg])
        except Exception as err:  # noqa: BLE001 - Hydra's OverrideParseException
            key, _, value = arg.partition("=")
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return (
                f"{arg}: Hydra cannot parse this override ({reason}). A value with {{ }} [ ] , = or spaces in it must "
                f"be quoted for Hydra inside the shell's quotes: \"{key}='{value}'\""
            )
    return None


def _run_dir_problem(key: str, value: str) -> str | None:
    """Why the run directory a command line names cannot be created (Hydra's next step, which would fail
    with a raw traceback), with the fix; None when it can. Nothing is left behind: a probe folder is made
    and removed in the deepest existing ancestor."""
    import tempfile

    if not value or "${" in value:
        return None  # interpolated: Hydra resolves it
    path = Path(value).expanduser().absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = "Choose a folder you can write to"
    if not existing.is_dir():
        return f"{key}={value}: cannot create the run directory ({existing} is a file). {fix}"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".var-probe-", dir=existing))
    except OSError as err:
        reason = f"{err.strerror or type(err).__name__}: {existing}"
        return f"{key}={value}: cannot create the run directory ({reason}). {fix}"
    return None


USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def checked_main(config_name: str, prog: str) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``@checked_main("train", "var-train")`` instead of ``@hydra.main(...)`` (see the module docstring)."""
    import hydra

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def guarded(cfg: DictConfig) -> Any:
            try:
                return task(cfg)
            except USER_ERRORS as err:
                if os.environ.get("HYDRA_FULL_ERROR") == "1":
                    raise
                msg = err.args[0] if isinstance(err, KeyError) and err.args else err
                print(f"{prog}: error: {msg}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
                sys.exit(2)

        hydra_main = hydra.main(version_base="1.3", config_path="../conf", config_name=config_name)(guarded)

        @functools.wraps(task)
        def main() -> Any:
            sys.argv[1:] = accept_target_arguments(config_name, sys.argv[1:])
            problem = precheck(config_name, sys.argv[1:])
            if problem is not None:
                print(f"{prog}: error: {problem}", file=sys.stderr)
                sys.exit(2)
            return hydra_main()

        return main

    return decorate
