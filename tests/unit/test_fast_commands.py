"""Commands answer before torch loads: the ``_target_`` signatures the config check needs come from a cache
(:mod:`var_lightning.cli.signatures`) that must match the installed packages, and the console scripts
(:mod:`var_lightning.cli.entry`) import the heavy command module only when work starts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from var_lightning.cli import signatures
from var_lightning.cli.validate import CONF_DIR


def test_the_signature_cache_holds_every_shipped_target_as_it_is_installed():
    cache = json.loads(signatures.CACHE.read_text())
    for path in signatures.shipped_targets(CONF_DIR):
        live = signatures.live(path)
        if live is None:  # a builtin without a signature: nothing to cache
            assert path not in cache
            continue
        assert path in cache, f"{path} is not in {signatures.CACHE.name}: run `make signatures`"
        entry = cache[path]
        if signatures._version(entry["dist"]) == entry["version"]:
            assert entry["signature"] == live, f"{path} changed: run `make signatures`"
    ours = [e for e in cache.values() if e["dist"] == "var-lightning"]
    assert ours and all(signatures._version("var-lightning") == e["version"] for e in ours)


def test_a_stale_entry_is_not_trusted(monkeypatch):
    """Another installed version of the target's package: the target is imported and inspected instead."""
    fake = {"pytorch_lightning.Trainer": {"dist": "pytorch-lightning", "version": "0.0.1",
                                          "signature": {"params": ["only_this"], "var_kw": False}}}  # fmt: skip
    monkeypatch.setattr(signatures, "_cache", lambda: fake)
    assert "max_epochs" in signatures.signature("pytorch_lightning.Trainer")["params"]
    fake["pytorch_lightning.Trainer"]["version"] = signatures._version("pytorch-lightning")
    assert signatures.signature("pytorch_lightning.Trainer")["params"] == ["only_this"]


PROBE = """
import sys
sys.argv = [{prog!r}, *{args!r}]
from var_lightning.cli import entry
try:
    getattr(entry, {fn!r})()
except SystemExit as e:
    print("exit", e.code, file=sys.stderr)
print("heavy:", sorted(m for m in ("torch", "pytorch_lightning", "lightning_fabric") if m in sys.modules))
"""


@pytest.mark.process
@pytest.mark.parametrize(
    "fn, args, expect",
    [
        ("train", ["--help"], "train is powered by Hydra"),
        ("train", ["--cfg", "job"], "task_name: train"),
        ("train", ["model.optim.lr_base=1"], "unknown config key model.optim.lr_base"),
        (
            "train",
            ["experiment=var_tiny", "model.transformer.depth=abc"],
            "model.transformer.depth='abc' must be",
        ),
        ("train", ["data=imagenett"], "no such option in group 'data'"),
        ("train", ["experiment=var_tiny", "trainer.max_epoch=3"], "did you mean trainer.max_epochs?"),
        ("sample", ["pretrained=var_d16", "--help"], "sample is powered by Hydra"),
        ("evaluate", ["--cfg", "job"], "task_name"),
    ],
)
def test_help_config_and_config_errors_answer_without_torch(fn, args, expect):
    prog = {"evaluate": "var-eval"}.get(fn, f"var-{fn}")
    out = subprocess.run([sys.executable, "-c", PROBE.format(prog=prog, args=args, fn=fn)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    text = out.stdout + out.stderr
    assert expect in text, text[-2000:]
    assert "heavy: []" in out.stdout, text[-2000:]
