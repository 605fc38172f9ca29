"""The command line of every entry point, checked before Hydra runs: :func:`checked_main` wraps a
``@hydra.main`` task. It reads Lightning Trainer and ``_target_`` arguments without ``+``
(:func:`accept_target_arguments`), composes the command line once (:func:`precheck`: Hydra's own "Could not
override" becomes a message naming the closest valid key or group option, an unparsable override names the
quoting that works, an unwritable run directory is named) and validates the composed config
(:func:`~var_lightning.cli.validate.validate_config`) before Hydra creates a run directory or a launcher
submits a job; the validation is not repeated for that run (a multirun's jobs validate their own sweep
values). User errors print as one line instead of a traceback (``HYDRA_FULL_ERROR=1`` shows it). The tasks
(``train(cfg)``, ``sample.run(cfg, ...)``) take a validated config; Python callers composing their own call
:func:`~var_lightning.cli.validate.validate_config` first.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from var_lightning.cli.validate import (
    CONF_DIR,
    target_signature,
    unknown_key_error,
    validate_config,
)
from var_lightning.keys import ConfigKeyError, closest

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


def _group_owners(group: str) -> list[str]:
    """The commands whose root config composes config group ``group`` (``trainer`` -> ``var-train``)."""
    owners = []
    for root in sorted(CONF_DIR.glob("*.yaml")):
        defaults = OmegaConf.load(root).get("defaults") or []
        names = {str(k).split("@")[0].lstrip("/").removeprefix("override ") for d in defaults
                 if not isinstance(d, str) for k in d}  # fmt: skip
        if group in names:
            owners.append("var-" + root.stem.replace("_", "-"))
    return owners


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
        while node is None and parent:  # model.optimm.lr: the typo is model.optimm, a level up
            parent, _, leaf = parent.rpartition(".")
            node = OmegaConf.select(base, parent) if parent else base
        if not isinstance(node, DictConfig):
            return None
        other = _other_group_options(parent, leaf, overrides)
        if other:
            return other
        owners = _group_owners(leaf) if not parent and leaf not in node else []
        if owners:  # trainer.* given to var-eval
            return (
                f"unknown config key {bad}: this command has no {leaf} settings ({leaf}.* configures "
                f"{' and '.join(owners)}); its keys: {', '.join(sorted(str(k) for k in node if not str(k).startswith('_')))}"
            )
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


def _compose(config_name: str, overrides: list[str]) -> DictConfig:
    """The composed config (a copy: callers may change it); the command line's checks share one composition
    per distinct override list, so a valid command is composed once here (and once by Hydra for the run)."""
    return copy.deepcopy(_compose_cached(config_name, tuple(overrides)))


@functools.lru_cache(maxsize=16)
def _compose_cached(config_name: str, overrides: tuple[str, ...]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config_name, overrides=list(overrides))
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
    sig = target_signature(str(node.get("_target_")))
    return sig is not None and leaf in sig["params"]


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


def precheck(config_name: str, argv: list[str], may_be_unset: tuple[str, ...] = ()) -> str | None:
    """The error message for a command line whose config does not compose or does not validate
    (:func:`~var_lightning.cli.validate.validate_config`; ``may_be_unset``: required values a caller does not
    need, e.g. var-plan's tokenizer), else None. A multirun is checked with the first value of each sweep
    (before any job is launched); its jobs check their own config when they start."""
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
        validate_config(cfg, config_name, may_be_unset)
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
# set by checked_main's entry point once precheck has validated this process's command line
_PRECHECKED_ARGV: list[list[str]] = []


def _prechecked(cfg: DictConfig) -> bool:
    """Whether ``cfg`` is the config precheck already validated: a single run started from this process's
    command line. A multirun job (other sweep values) or a job a launcher runs elsewhere checks its own."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return False
    return hydra_cfg.mode == RunMode.RUN and _PRECHECKED_ARGV[-1:] == [sys.argv[1:]]


def prechecked_command_line(config_name: str, prog: str) -> None:
    """Rewrite ``sys.argv`` as :func:`accept_target_arguments` does and :func:`precheck` it: one line on
    stderr and exit status 2 for a bad command line; else it is recorded as checked for this process."""
    sys.argv[1:] = accept_target_arguments(config_name, sys.argv[1:])
    problem = precheck(config_name, sys.argv[1:])
    if problem is not None:
        print(f"{prog}: error: {problem}", file=sys.stderr)
        sys.exit(2)
    _PRECHECKED_ARGV.append(list(sys.argv[1:]))


def fixed_run_dir(config_name: str, argv: list[str]) -> Path | None:
    """The run directory a single run's command line fixes before Hydra starts (``hydra.run.dir=...``,
    interpolations resolved); None for a multirun or a directory named by the time (``${now:...}``: each
    launch gets its own), or one that resolves only inside Hydra."""
    parsed = _overrides(argv)
    if parsed is None or parsed[1]:
        return None
    given = [o.lstrip("+~").partition("=")[2].strip("'\"") for o in parsed[0]
             if o.lstrip("+~").partition("=")[0] == "hydra.run.dir"]  # fmt: skip
    if not given or "now:" in given[-1]:
        return None
    value = given[-1]
    if "${" in value:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name, list(parsed[0]), return_hydra_config=True)
            value = str(OmegaConf.select(cfg, "hydra.run.dir"))
        except Exception:  # noqa: BLE001 - resolvable only inside Hydra (its runtime values): the run locks later
            return None
        finally:
            GlobalHydra.instance().clear()
    return Path(value).expanduser().absolute()


def checked_main(
    config_name: str, prog: str, before_run: Callable[[list[str]], str | None] | None = None
) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """``@checked_main("train", "var-train")`` instead of ``@hydra.main(...)`` (see the module docstring).
    ``before_run(argv)`` runs after the check and before Hydra creates or writes anything; a message it
    returns ends the command (exit status 2)."""
    import hydra

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def guarded(cfg: DictConfig) -> Any:
            try:
                if not _prechecked(cfg):
                    validate_config(cfg, config_name)
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
            if _PRECHECKED_ARGV[-1:] != [sys.argv[1:]]:  # not yet checked by the console script (cli.entry)
                prechecked_command_line(config_name, prog)
            problem = before_run(sys.argv[1:]) if before_run is not None else None
            if problem is not None:
                print(f"{prog}: error: {problem}", file=sys.stderr)
                sys.exit(2)
            return hydra_main()

        return main

    return decorate
