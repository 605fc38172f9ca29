"""Golden training curves (tests/golden/curves.py): each stage's tiny fixed-seed run stays within the stated
band of its stored curve, step by step. A change that alters training fails here on purpose; if the change
is intended, `make golden-update` rewrites the curves (commit them with the change, and say why)."""

from __future__ import annotations

import json

import pytest

from tests.golden.curves import CASES, STEPS, golden_path, run_curve


@pytest.mark.parametrize("name", sorted(CASES))
def test_training_follows_the_golden_curve(name, tmp_path):
    golden = json.loads(golden_path(name).read_text())
    assert golden["steps"] == STEPS and golden["overrides"] == CASES[name], (
        "the case changed: make golden-update"
    )
    got, want = run_curve(name, tmp_path), golden["loss"]
    assert len(got) == len(want) == STEPS
    bad = [
        i
        for i, (g, w) in enumerate(zip(got, want, strict=True))
        if abs(g - w) > golden["atol"] + golden["rtol"] * abs(w)
    ]
    assert not bad, (
        f"{name}: step {bad[0]} loss {got[bad[0]]:.6f}, golden {want[bad[0]]:.6f} (rtol {golden['rtol']}, atol "
        f"{golden['atol']}); {len(bad)} of {STEPS} steps outside the band. If training was meant to change: make "
        "golden-update"
    )


def test_the_band_catches_a_changed_recipe(tmp_path, monkeypatch):
    """The check can fail: the same case with another learning rate leaves the band within a few steps."""
    import tests.golden.curves as curves

    golden = json.loads(golden_path("var").read_text())
    monkeypatch.setitem(curves.CASES, "var", [*curves.CASES["var"], "model.optim.base_lr=0.002"])
    got = curves.run_curve("var", tmp_path)
    assert got[0] == pytest.approx(golden["loss"][0], rel=golden["rtol"])  # same start
    assert any(
        abs(g - w) > golden["atol"] + golden["rtol"] * abs(w)
        for g, w in zip(got, golden["loss"], strict=True)
    )
