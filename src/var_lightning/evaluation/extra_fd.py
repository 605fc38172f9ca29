"""Fréchet distances in other feature spaces, next to FID in the same ``var-eval`` run (``metrics.extra_fd``):

* ``sfid``: sFID as the ADM evaluator defines it: the spatial features ``mixed_6/conv`` of the same TF
  Inception (torch-fidelity's port: ``Mixed_6d.branch1x1``, after its ReLU, 17 x 17 x 192), first 7 channels,
  flattened to 2023 dimensions; the same weights file as FID;
* ``fd_dinov2``: FD-DINOv2 (the EDM2 protocol): the 1024-d features of DINOv2 ViT-L/14 at 224 px, through
  torch-fidelity's ``dinov2-vit-l-14`` extractor (which loads ``facebookresearch/dinov2`` with torch hub).

Each extra distance has its own extractor, fed the very images FID sees (:class:`TeeEvaluator`), and its own
reference statistics, computed once and cached like Inception's. The real-images baseline and precision /
recall stay Inception's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from var_lightning.evaluation.extractors import FeatureExtractor, InceptionTF, register_extractor
from var_lightning.evaluation.fid import frechet_distance

EXTRA_FD = {"sfid": "inception-tf-spatial", "fd_dinov2": "dinov2-vit-l-14"}
SFID_CHANNELS = 7


@register_extractor("inception-tf-spatial")
class InceptionSpatial(InceptionTF):
    """sFID's features: ``mixed_6/conv`` (17 x 17 x 192) of the FID Inception, first 7 channels, 2023-d."""

    name = "inception-tf-spatial"
    feature_dim = 17 * 17 * SFID_CHANNELS
    num_classes = None
    input_note = "tf1-bilinear-299, mixed_6/conv[..., :7]"

    def __init__(
        self,
        weights_path: str | Path | None = None,
        download: bool = True,
        config_key: str = "extractor.weights_path",
        share: InceptionTF | None = None,
    ) -> None:
        """``share``: the FID extractor with the same weights: its network is reused, and a batch it has just
        seen is not run again (sFID then costs nothing on top of FID)."""
        if share is None:
            super().__init__(weights_path, download, config_key)
        else:
            FeatureExtractor.__init__(self)
            self.weights_path, self.has_head, self.net = share.weights_path, share.has_head, share.net
        self._last: list[torch.Tensor | None] = [None, None]  # the network's last input and its mixed_6/conv
        self.net.register_forward_pre_hook(lambda _m, args: self._last.__setitem__(0, args[0]))
        self.net.Mixed_6d.branch1x1.register_forward_hook(
            lambda _m, _i, out: self._last.__setitem__(1, out[:, :SFID_CHANNELS].detach())
        )

    def extract(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        seen, spatial_BC17 = self._last
        if seen is None or seen.shape != images_B3HW.shape or not torch.equal(seen, images_B3HW):
            self.net(images_B3HW)  # not the batch the shared FID network has just seen
            spatial_BC17 = self._last[1]
        self._last[:] = [None, None]
        return spatial_BC17.permute(0, 2, 3, 1).reshape(spatial_BC17.shape[0], -1).float(), None


@register_extractor("dinov2-vit-l-14")
class DinoV2(FeatureExtractor):
    """FD-DINOv2's features: DINOv2 ViT-L/14 (1024-d class token) via torch-fidelity (TF1-style bilinear resize
    to 224 px, ImageNet normalisation). The network comes from torch hub's cache ($TORCH_HOME/hub)."""

    name = "dinov2-vit-l-14"
    feature_dim = 1024
    num_classes = None
    input_note = "tf1-bilinear-224, imagenet-normalised"

    def __init__(self) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_dinov2 import FeatureExtractorDinoV2

        try:
            self.net = FeatureExtractorDinoV2("dinov2-vit-l-14", ["dinov2"])
        except Exception as err:  # noqa: BLE001 - URLError, HTTPError, hub errors: all mean "not here"
            hub = Path(torch.hub.get_dir())
            raise FileNotFoundError(
                f"FD-DINOv2 needs DINOv2 ViT-L/14 from torch hub (facebookresearch/dinov2), which is neither in "
                f"{hub} nor downloadable here ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
                f"On a machine with internet run: python -c \"import torch; torch.hub.load('facebookresearch/dinov2', "
                f"'dinov2_vitl14')\" and copy {hub}/facebookresearch_dinov2_main and {hub}/checkpoints/"
                f"dinov2_vitl14_pretrain.pth to the same places here (TORCH_HOME={os.environ.get('TORCH_HOME', 'unset')}), "
                "or drop fd_dinov2 from metrics.extra_fd"
            ) from err

    def extract(self, images_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        (features_BF,) = self.net(images_B3HW)
        return features_BF.float(), None


class TeeEvaluator:
    """Feeds every batch to the main evaluator (FID, IS, precision / recall) and to one evaluator per extra
    distance; behaves as the main one otherwise."""

    def __init__(self, main: Any, extras: dict[str, Any]) -> None:
        self.main, self.extras = main, extras

    @property
    def settings(self) -> Any:
        return self.main.settings

    @settings.setter
    def settings(self, value: Any) -> None:
        self.main.settings = value

    def update(self, images_B3HW: torch.Tensor, labels_B: torch.Tensor, index_B: torch.Tensor) -> None:
        self.main.update(images_B3HW, labels_B, index_B)
        for ev in self.extras.values():
            ev.update(images_B3HW, labels_B, index_B)

    def gather(self) -> Any:
        return self.main.gather()

    def gather_extras(self) -> dict[str, Any]:
        """Every rank must call it (collectives), in the same order."""
        return {name: ev.gather() for name, ev in self.extras.items()}


def extra_distances(gathered: dict[str, Any], refs: dict[str, Any]) -> dict[str, float]:
    """{name: Fréchet distance} of each extra feature space against its reference statistics."""

    out = {}
    for name, g in gathered.items():
        fake, ref = g.stats.gaussian(), refs[name]
        out[name] = float(frechet_distance(fake.mu, fake.sigma, ref.mu, ref.sigma))
    return out


def check_names(names: list[str]) -> list[str]:
    bad = [n for n in names if n not in EXTRA_FD]
    if bad:
        raise ValueError(
            f"metrics.extra_fd: {bad} unknown; choose from {sorted(EXTRA_FD)} (key metrics.extra_fd)"
        )
    return list(names)
