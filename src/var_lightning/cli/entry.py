"""The console scripts of the Hydra commands (``var-train``, ``var-sample``, ...): they answer ``--help``,
``--cfg job`` / ``--info`` and a config error before torch or Lightning is imported, and import the command's
module (:mod:`var_lightning.cli.train`, ...) only when work starts.

The checks are the command's own (:func:`~var_lightning.cli.command_line.precheck`: composition, every key
against the ``_target_`` signatures cached in :mod:`var_lightning.cli.signatures`); the command then skips
repeating them for the same command line. ``python -m var_lightning.cli.<name>`` still works, importing
everything first.
"""

from __future__ import annotations

import importlib
import sys

# config name -> (program, module holding the @checked_main task)
COMMANDS = {
    "train": ("var-train", "var_lightning.cli.train"),
    "sample": ("var-sample", "var_lightning.cli.sample"),
    "eval": ("var-eval", "var_lightning.cli.evaluate"),
    "edit": ("var-edit", "var_lightning.cli.edit"),
    "classifier": ("var-classifier", "var_lightning.cli.classifier"),
    "compare_ar": ("var-compare-ar", "var_lightning.cli.compare_ar"),
    "app": ("var-app", "var_lightning.cli.app"),
}
# flags Hydra answers itself, without running the task: nothing heavy is needed for them
_ANSWERED_BY_HYDRA = {
    "--help",
    "-h",
    "--hydra-help",
    "--cfg",
    "-c",
    "--info",
    "-i",
    "--shell-completion",
    "-sc",
}


def run(config_name: str) -> object:
    prog, module = COMMANDS[config_name]
    # lazy: start time; this table of console scripts imports nothing (Hydra, OmegaConf) until a command runs
    from var_lightning.cli.command_line import prechecked_command_line

    prechecked_command_line(config_name, prog)  # exits 2 with one line on a bad command line
    if any(a in _ANSWERED_BY_HYDRA for a in sys.argv[1:]):
        import hydra

        def never(cfg: object) -> None:  # Hydra prints help / the config / info and returns before a task
            raise SystemExit(f"{prog}: nothing to run")

        never.__module__ = module  # Hydra names the job (help's "train is powered by Hydra") after it
        return hydra.main(version_base="1.3", config_path="../conf", config_name=config_name)(never)()
    return importlib.import_module(module).main()


def _console_script(config_name: str):
    def main() -> object:
        return run(config_name)

    main.__name__ = main.__qualname__ = COMMANDS[config_name][0].replace("-", "_")
    return main


# the console scripts (pyproject.toml: var-train = "var_lightning.cli.entry:train", ...)
train = _console_script("train")
sample = _console_script("sample")
evaluate = _console_script("eval")
edit = _console_script("edit")
classifier = _console_script("classifier")
compare_ar = _console_script("compare_ar")
app = _console_script("app")
