"""Released weights by name: real huggingface_hub resolution against a Hub cache the test builds (the layout
huggingface_hub itself writes: blobs/, snapshots/<commit>/, refs/<branch>), local files and directories,
revision pinning, and the offline message. The files hold seeded tiny models in the published layout."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_PN, tiny_vae, tiny_var
from var_lightning.checkpoints.hub import HUB_REPO, VAE_FILE, PretrainedUnavailable, resolve_pretrained
from var_lightning.checkpoints.load import load_models, load_pretrained, load_tokenizer
from var_lightning.checkpoints.published import export_official_vae, export_official_var
from var_lightning.transformer.sampling import sample

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40


def released_pair(seed: int, num_classes: int = 1000):
    torch.manual_seed(seed)
    return tiny_var(num_classes=num_classes).eval(), tiny_vae().eval()


def add_snapshot(cache: Path, commit: str, files: dict[str, dict], branch: str | None = "main") -> Path:
    """One revision of the Hub repository in huggingface_hub's cache layout; returns the snapshot dir."""
    repo = cache / f"models--{HUB_REPO.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, state in files.items():
        tmp = repo / "blobs" / "incoming"
        torch.save(state, tmp)
        blob = repo / "blobs" / hashlib.sha256(tmp.read_bytes()).hexdigest()
        tmp.replace(blob)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    if branch is not None:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
    return snap


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """A Hub cache holding var_d16.pth + the tokenizer at main (commit A) and other weights at commit B."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # never try the network in tests
    cache = tmp_path / "hub"
    var_a, vae_a = released_pair(0)
    var_b, vae_b = released_pair(1)
    add_snapshot(
        cache, COMMIT_A, {"var_d16.pth": export_official_var(var_a), VAE_FILE: export_official_vae(vae_a)}
    )
    add_snapshot(
        cache,
        COMMIT_B,
        {"var_d16.pth": export_official_var(var_b), VAE_FILE: export_official_vae(vae_b)},
        None,
    )
    return cache, (var_a, vae_a), (var_b, vae_b)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_name_resolves_through_the_hub_cache(hub_cache):
    cache, (var_a, vae_a), _ = hub_cache
    var, vae, info = load_pretrained("var_d16", cache_dir=cache)
    assert same_weights(var, var_a) and same_weights(vae, vae_a)
    assert info.pretrained == "var_d16" and info.kind == "released"
    assert info.patch_nums == TINY_PN and info.image_size == 8  # read off the file (lvl_1L), not assumed
    # the published protocol; top-k 900 exceeds this V = 64, so 900/4096 of it
    assert info.sampling == {"cfg": 1.5, "top_k": 14, "top_p": 0.96, "more_smooth": False}
    assert info.class_names[207] == "golden retriever"  # ImageNet names for the 1000-class models
    assert Path(info.files["var"]).parent.name == COMMIT_A


def test_revision_pinning_picks_that_snapshot(hub_cache):
    cache, (var_a, _), (var_b, vae_b) = hub_cache
    var, vae, info = load_pretrained("var_d16", revision=COMMIT_B, cache_dir=cache)
    assert same_weights(var, var_b) and same_weights(vae, vae_b) and not same_weights(var, var_a)
    assert info.revision == COMMIT_B


def test_the_cache_location_follows_hf_environment_variables(hub_cache, monkeypatch):
    cache, (var_a, _), _ = hub_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    files = resolve_pretrained("var_d16")
    assert files.origin == "hub" and str(files.var_path).startswith(str(cache))
    assert same_weights(load_models(pretrained="var_d16").var, var_a)


def test_offline_without_the_files_says_what_to_place_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailable) as err:
        load_pretrained("var_d30", cache_dir=tmp_path / "empty")
    msg = str(err.value)
    for part in (
        "var_d30.pth",
        VAE_FILE,
        str(tmp_path / "empty"),
        HUB_REPO,
        "hf download",
        "pretrained=<that directory>",
    ):
        assert part in msg, part


def test_a_local_directory_or_file_works_the_same_way(tmp_path):
    var0, vae0 = released_pair(2, num_classes=5)
    torch.save(export_official_var(var0), tmp_path / "var_d16.pth")
    torch.save(export_official_vae(vae0), tmp_path / VAE_FILE)
    for source in (tmp_path, tmp_path / "var_d16.pth"):
        var, vae, info = load_models(pretrained=source)
        assert same_weights(var, var0) and same_weights(vae, vae0) and info.class_names is None
    # a released transformer given as ckpt_path finds the tokenizer beside it too
    assert same_weights(load_models(tmp_path / "var_d16.pth").vae, vae0)
    torch.save(export_official_var(var0), tmp_path / "var_d20.pth")
    with pytest.raises(ValueError, match="several transformers"):
        load_models(pretrained=tmp_path)
    (tmp_path / VAE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"put {VAE_FILE} beside var_d16.pth or pass vae_path="):
        load_models(pretrained=tmp_path / "var_d16.pth")
    with pytest.raises(ValueError, match="neither a released model"):
        load_models(pretrained="var_d99")


def test_the_released_tokenizer_name_resolves_for_model_tokenizer_ckpt(hub_cache, monkeypatch):
    cache, (_, vae_a), _ = hub_cache
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(cache.parent)  # no vae_ch160v4096z32.pth in the working directory
    assert same_weights(load_tokenizer(VAE_FILE, patch_nums=TINY_PN), vae_a)


def test_sampling_the_pretrained_model_is_seeded(hub_cache):
    cache, (var_a, vae_a), _ = hub_cache
    var, vae, info = load_pretrained("var_d16", cache_dir=cache)
    a = sample(var, vae, 2, labels=[207, 360], seed=3, **info.sampling)
    b = sample(var_a, vae_a, 2, labels=[207, 360], seed=3, **info.sampling)
    assert all(torch.equal(x, y) for x, y in zip(a.tokens, b.tokens, strict=True))
