"""Every Hydra command the README and docs/ show composes: it is read the way a shell would pass it (quotes,
line continuations, comments), placeholders (``...``, ``<path>``) are dropped, and the result must pass the
same check the command runs first (unknown keys, groups, values, types). The commands a CPU can run in
seconds are run in the other tests (the demo's, var-sample's, var-edit's)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from var_lightning.cli.command_line import accept_target_arguments, precheck

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = {"var-train": "train", "var-sample": "sample", "var-eval": "eval", "var-edit": "edit", "var-app": "app",
            "var-classifier": "classifier", "var-compare-ar": "compare_ar",
            "var_lightning.cli.train": "train", "var_lightning.cli.evaluate": "eval"}  # fmt: skip
PLACEHOLDER = re.compile(r"<[^<>]*>")
# A command line starts with its program, after optional VAR=value assignments and a launcher.
COMMAND = re.compile(
    r"^\s*(\w+=\S+\s+)*(srun\s+|torchrun\s.*-m\s+|exec\s+)?(" + "|".join(map(re.escape, PROGRAMS)) + r")\b"
)


def shell_blocks(text: str) -> list[str]:
    """The bodies of the fenced code blocks whose language is a shell (or not given)."""
    blocks, body, lang = [], None, None
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            if body is None:
                body, lang = [], line.lstrip()[3:].strip()
            else:
                if lang in ("", "bash", "sh", "shell", "console"):
                    blocks.append("\n".join(body))
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, config name, arguments) of every command in the docs' shell blocks."""
    out = []
    for doc in DOCS:
        for block in shell_blocks(doc.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if not COMMAND.match(line):
                    continue  # a file tree, a Python line, output: not a command
                try:
                    words = shlex.split(PLACEHOLDER.sub("PLACEHOLDER", line), comments=True)
                except ValueError as err:  # an unbalanced quote: a shell would not run it either
                    out.append((f"{doc.name}: {line.strip()}", "unparsable", [str(err)]))
                    continue
                for i, word in enumerate(words):
                    name = word.rsplit("/", 1)[-1]
                    if name in PROGRAMS and (
                        i == 0 or words[i - 1] in ("srun", "-m", "exec") or "=" in words[0]
                    ):
                        args = [w for w in words[i + 1 :] if w not in ("...", "PLACEHOLDER")]
                        out.append((f"{doc.name}: {line.strip()[:120]}", PROGRAMS[name], args))
                        break
    return out


COMMANDS = documented_commands()


def test_the_docs_show_commands_of_every_kind():
    kinds = {config for _, config, _ in COMMANDS}
    assert {"train", "sample", "eval", "edit", "app"} <= kinds and len(COMMANDS) > 40


@pytest.mark.parametrize(("where", "config", "args"), COMMANDS, ids=[c[0][:90] for c in COMMANDS])
def test_a_documented_command_composes(where, config, args):
    assert config != "unparsable", f"{where}: {args}"
    args = [a for a in args if "PLACEHOLDER" not in a.split("=", 1)[0]]
    args = [a.replace("PLACEHOLDER", "x") for a in args]
    problem = precheck(config, accept_target_arguments(config, args))
    assert problem is None, f"{where}\n  -> {problem}"


def documented_imports() -> list[tuple[str, str]]:
    """(where, line) of every ``from var_lightning... import ...`` in the docs' Python blocks."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                if re.match(r"^(from var_lightning[\w.]* import |import var_lightning)", line):
                    out.append((doc.name, line.split("#", 1)[0].strip()))
    return out


IMPORTS = documented_imports()


def test_the_docs_show_imports():
    assert len(IMPORTS) >= 8


@pytest.mark.parametrize(("where", "line"), IMPORTS, ids=[f"{w}: {line[:70]}" for w, line in IMPORTS])
def test_a_documented_import_works(where, line):
    exec(compile(line, where, "exec"), {})  # the module and every name exist where the docs say
