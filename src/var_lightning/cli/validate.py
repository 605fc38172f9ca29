"""Configs that catch mistakes: every key of a composed config is checked before anything runs.

Hydra itself rejects ``key=value`` for a key that does not exist, but its message suggests ``+key=value``,
which then adds the typo and fails deep inside a constructor; and a misspelled key in an experiment YAML is
not caught at all. :func:`validate_config` walks the composed config and checks

* the root's own keys (and its plain nested blocks, e.g. var-eval's ``generation``) against the shipped
  root YAML, and ``paths`` / ``schedule`` against their group files;
* every node with a ``_target_`` (data module, model, trainer, its strategy, callbacks, loggers) against the
  target's signature, and the models' settings blocks (``transformer``, ``optim``, ``train``, ``sampling``,
  ``tokenizer``, ``loss``) against their dataclasses (:mod:`var_lightning.training.settings`);

and raises :class:`~var_lightning.keys.ConfigKeyError` naming the full key and the closest valid one.
The command line itself (before and around Hydra) is :mod:`var_lightning.cli.command_line`.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import omegaconf
from omegaconf import DictConfig, ListConfig, OmegaConf

from var_lightning.cli.signatures import signature
from var_lightning.distributed import rank_log_suffix
from var_lightning.keys import ConfigKeyError, unknown_key_message
from var_lightning.seeds import check_seed
from var_lightning.tokenizer.config import VQVAEConfig
from var_lightning.training.settings import SamplingDefaults, TokenizerOptim, VAROptim, VARTrain
from var_lightning.transformer.config import VARConfig

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
if not OmegaConf.has_resolver("var_rank_suffix"):  # the per-process log file name (conf/hydra/default.yaml)
    # omegaconf 2.4 deprecates register_new_resolver for register_resolver (before 2.4: the legacy API)
    _new_api = tuple(int(x) for x in omegaconf.__version__.split(".")[:2]) >= (2, 4)
    (OmegaConf.register_resolver if _new_api else OmegaConf.register_new_resolver)(
        "var_rank_suffix", rank_log_suffix
    )
_HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}
# keys var-train reads from a _target_ node and removes before instantiating it:
# keys of the trainer node that var-train applies itself (not Lightning's): the batch-size finder, TF32
OUR_TRAINER_KEYS = ("auto_batch_size", "matmul_precision")
# The Trainer arguments users type most, with the types of Lightning's signature (the signature cache holds
# names only, and reading the annotations would import Lightning before the command line is answered)
TRAINER_TYPES: dict[str, Any] = {
    **dict.fromkeys(("max_epochs", "min_epochs", "check_val_every_n_epoch"), int | None),
    **dict.fromkeys(
        (
            "max_steps",
            "min_steps",
            "num_nodes",
            "accumulate_grad_batches",
            "log_every_n_steps",
            "num_sanity_val_steps",
        ),
        int,
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "limit_train_batches",
            "limit_val_batches",
            "limit_test_batches",
            "val_check_interval",
            "gradient_clip_val",
        ),
        float | None,
    ),  # fmt: skip
    **dict.fromkeys(
        ("deterministic", "benchmark", "enable_progress_bar", "enable_checkpointing"), bool | None
    ),
    "fast_dev_run": int | bool,
}
# what to give for a required value (``???`` in the YAML) that the command line left unset
MISSING_HINTS = {
    "model.tokenizer_ckpt": "the VAR (and AR) stage trains on a frozen tokenizer: give a tokenizer checkpoint, e.g. "
    "model.tokenizer_ckpt=<tokenizer run>/checkpoints/last.ckpt (train one with var-train "
    "experiment=tokenizer_tiny), or model.tokenizer_ckpt=vae_ch160v4096z32.pth for the released one",
    "image": "give the image to edit: image=photo.jpg (any size) or image=synthetic:<class>:<index>",
    "extractor.path": "give the classifier var-classifier wrote: extractor.path=<run>/classifier.pt",
}
_OUR_KEYS = {"pytorch_lightning.Trainer": set(OUR_TRAINER_KEYS)}
# groups whose nodes are free-form (their files set keys of other nodes, or Hydra's own)
_SKIP_GROUPS = {"hydra", "experiment", "sweep", "debug"}


def _settings_schema() -> dict[str, dict[str, Any]]:

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
            "loss": "var_lightning.tokenizer.losses.VQGANLoss",  # a class: its cached signature
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
    sig = target_signature(schema) if isinstance(schema, str) else _signature_of(schema)
    return set(sig["params"] if sig else ()) | extra, {}


def _signature_of(obj: Any) -> dict[str, Any]:
    params = inspect.signature(obj).parameters
    return {"params": [n for n in params if n != "self"],
            "var_kw": any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())}  # fmt: skip


def unknown_key_error(node: Any, key: str, valid: set[str], prefix: str) -> ConfigKeyError:
    """The error for ``<prefix><key>``: the closest valid key among its siblings or, failing that, among the
    keys nested below them (``model.depht`` -> ``model.transformer.depth``)."""
    shown = sorted(k for k in valid if not k.startswith("_"))
    nested = {k: f"{prefix}{k}" for k in shown}
    for path in _all_keys(node, prefix):
        if path != f"{prefix}{key}" and not path.startswith(f"{prefix}{key}."):  # not the typo itself
            nested.setdefault(path.rsplit(".", 1)[-1], path)
    return ConfigKeyError(unknown_key_message(prefix, key, shown, nested))


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
    _check_values(node, hints, prefix)


def _check_values(node: DictConfig, hints: dict[str, Any], prefix: str) -> None:
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


def target_signature(path: str) -> dict[str, Any] | None:
    """``{"params": [...], "var_kw": bool}`` of a ``_target_``: from the shipped cache when it matches the
    installed packages (no import: :mod:`var_lightning.cli.signatures`), else by importing it."""

    return signature(path)


def check_target_node(node: DictConfig, prefix: str) -> None:
    """Keys of a ``_target_`` node (and of nested ``_target_`` nodes and settings blocks) against the
    target's signature and the settings dataclasses."""
    target = str(node.get("_target_"))
    sig = target_signature(
        target
    )  # None: unimportable, or a builtin without a signature (datetime.timedelta)
    if sig is not None and not sig["var_kw"]:
        valid = set(sig["params"]) | _HYDRA_KEYS | _OUR_KEYS.get(target, set())
        _check_keys(node, valid, prefix)
    if target == "pytorch_lightning.Trainer":
        _check_values(node, TRAINER_TYPES, prefix)
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


def _missing(node: Any, prefix: str = "") -> Iterator[str]:
    """The dotted keys of required values (``???``) left unset."""
    if isinstance(node, DictConfig):
        for k in node:
            if k == "hydra":
                continue
            if OmegaConf.is_missing(node, k):
                yield f"{prefix}{k}"
            else:
                yield from _missing(node._get_node(k), f"{prefix}{k}.")


def validate_config(cfg: DictConfig, config_name: str, may_be_unset: tuple[str, ...] = ()) -> None:
    """Raise :class:`ConfigKeyError` for the first unknown key of ``cfg``, or a ``ValueError`` for a
    required value left unset (see the module docstring)."""
    _check_config(cfg, config_name)
    for key in (
        k for k in _missing(cfg) if k not in may_be_unset
    ):  # after the keys: a typo names itself first
        hint = MISSING_HINTS.get(key, f"set {key}=... on the command line")
        raise ValueError(f"{key} is required and not set: {hint}")


def _check_config(cfg: DictConfig, config_name: str) -> None:
    ref, groups = _root_reference(config_name)
    own = {k for k in ref if k != "defaults"}
    _check_keys(cfg, own | groups | {"hydra"}, "")
    if "seed" in cfg and config_name != "train" and cfg.seed is not None:
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


def _all_keys(node: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(node, DictConfig):
        for k in node:
            if k == "hydra":
                continue
            path = f"{prefix}{k}"
            yield path
            yield from _all_keys(node._get_node(k), path + ".")
