"""LPIPS perceptual distance for the tokenizer loss, frozen and kept out of checkpoints.

The ``lpips`` wheel ships only the small linear heads; its backbone (VGG16, AlexNet or SqueezeNet 1.1
``features``) is torchvision's ImageNet model, which torchvision downloads into
``torch.hub.get_dir()/checkpoints/`` on first use. Three ways to get a backbone:

- default: torchvision's standard file (downloaded when missing; offline, a clear error says which file
  to place where);
- ``weights_path``: an explicit torchvision state_dict file (full model or ``features`` only) loaded into
  a randomly built backbone, no network access;
- ``random_backbone``: random weights, no download. For tests and smoke runs only: not a perceptual loss.

Shapes: B batch, H,W image side.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from var_lightning.distributed import rank

log = logging.getLogger(__name__)

PERCEPTUAL_NETS = ("vgg", "alex", "squeeze")


def _weights_enum(net: str):
    """The torchvision weights lpips asks for (``pretrained=True`` maps to ``IMAGENET1K_V1``)."""
    from torchvision.models import AlexNet_Weights, SqueezeNet1_1_Weights, VGG16_Weights

    return {
        "vgg": VGG16_Weights.IMAGENET1K_V1,
        "alex": AlexNet_Weights.IMAGENET1K_V1,
        "squeeze": SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }[net]


def _check_net(net: str) -> None:
    if net not in PERCEPTUAL_NETS:
        raise ValueError(
            f"unknown perceptual network {net!r} (config key model.loss.perceptual_net); "
            f"valid: {', '.join(PERCEPTUAL_NETS)}"
        )


def backbone_url(net: str) -> str:
    _check_net(net)
    return _weights_enum(net).url


def backbone_path(net: str) -> Path:
    """Where torchvision looks for (and downloads) the backbone file: ``<hub dir>/checkpoints/<file>``."""
    filename = os.path.basename(urlparse(backbone_url(net)).path)
    return Path(torch.hub.get_dir()).expanduser().resolve() / "checkpoints" / filename


class FrozenLPIPS(nn.Module):
    """Per-sample LPIPS distance (B,) between two image batches in [-1, 1], always in fp32 eval mode.

    The LPIPS network is held in a plain list, not as a submodule: its ~58 MB (VGG) of frozen weights
    stay out of ``state_dict`` (every checkpoint would carry them), out of ``parameters()`` (no optimizer
    or DDP bookkeeping) and out of ``train()``. ``_apply`` forwards device moves (``.to``, ``.cuda``) to
    it and keeps it in fp32 under dtype casts.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        net.eval().requires_grad_(False)
        self._held = [net]

    @property
    def lpips(self) -> nn.Module:
        return self._held[0]

    def extra_repr(self) -> str:
        return f"net={self.lpips.pnet_type!r}, random_backbone={self.lpips.pnet_rand}"

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        super()._apply(fn, recurse)
        self.lpips._apply(fn, recurse)
        self.lpips.float()
        return self

    def forward(self, img_B3HW: torch.Tensor, rec_B3HW: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=img_B3HW.device.type, enabled=False):
            d_B111 = self.lpips(img_B3HW.float(), rec_B3HW.float())
        return d_B111.reshape(-1)


def _construct(net: str, random_backbone: bool) -> nn.Module:
    import lpips

    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated ``pretrained=``
        warnings.filterwarnings("ignore", message=".*'pretrained' is deprecated.*")
        warnings.filterwarnings("ignore", message=".*Arguments other than a weight enum.*")
        return lpips.LPIPS(net=net, pnet_rand=random_backbone, verbose=False)


def load_backbone_state_dict(model: nn.Module, state_dict: dict, net: str, source: str | Path) -> None:
    """Copy a torchvision state_dict (``features.<i>.*`` of the full model, or ``<i>.*`` of ``features``)
    into an LPIPS backbone, which keeps torchvision's ``features[i]`` as ``net.slice<k>.<i>``.
    ``classifier.*`` entries are ignored; anything else that does not fit raises ValueError."""
    backbone = model.net
    slice_of = {
        idx: name
        for name, seq in backbone.named_children()
        if name.startswith("slice")
        for idx, _ in seq.named_children()
    }
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(
            f"{source} is not a state_dict of tensors (config key model.loss.perceptual_weights_path)"
        )
    expected = backbone.state_dict()
    mapped, unexpected = {}, []
    for key, tensor in state_dict.items():
        if key.startswith("classifier."):
            continue
        idx, _, rest = key.removeprefix("features.").partition(".")
        target = f"{slice_of.get(idx)}.{idx}.{rest}"
        if idx in slice_of and target in expected:
            mapped[target] = tensor
        else:
            unexpected.append(key)
    missing = sorted(set(expected) - set(mapped))
    bad_shape = [k for k, t in mapped.items() if t.shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise ValueError(
            f"{source} does not hold torchvision '{net}' backbone weights for LPIPS "
            f"(missing {missing[:4]}, unexpected {unexpected[:4]}, wrong shape {bad_shape[:4]}); give a "
            f"torchvision {_weights_enum(net).url.rsplit('/', 1)[-1]}-style state_dict in "
            f"model.loss.perceptual_weights_path or pick the matching model.loss.perceptual_net"
        )
    backbone.load_state_dict(mapped, strict=True)


def build_perceptual(
    net: str = "vgg", weights_path: str | os.PathLike | None = None, random_backbone: bool = False
) -> FrozenLPIPS:
    """A frozen LPIPS distance with the given backbone; see the module docstring for the three sources.

    Never returns None: disable the perceptual term with ``model.loss.perceptual_weight=0`` (the loss
    then builds no network).
    """
    _check_net(net)
    if weights_path is not None and random_backbone:
        raise ValueError(
            "model.loss.perceptual_weights_path and model.loss.perceptual_random_backbone are exclusive"
        )
    if random_backbone:
        if rank() == 0:
            log.warning(
                "LPIPS '%s' uses a random backbone: not a real perceptual loss (tests/smoke runs)", net
            )
        return FrozenLPIPS(_construct(net, random_backbone=True))

    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"LPIPS backbone weights not found at {path} (config key model.loss.perceptual_weights_path)"
            )
        model = _construct(net, random_backbone=True)
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:  # torch's text advises full unpickling: not quoted
            raise ValueError(
                f"refused to read {path} (config key model.loss.perceptual_weights_path): the file holds pickled "
                "Python objects beyond tensors, and unpickling them can execute code; give torchvision's VGG16 "
                f"weights ({backbone_path(net).name}) or a state_dict saved with torch.save(model.state_dict())"
            ) from e
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(
                f"cannot read {path} as a torch state_dict (config key model.loss.perceptual_weights_path): {first}"
            ) from e
        load_backbone_state_dict(model, state_dict, net, source=path)
        return FrozenLPIPS(model)

    expected = backbone_path(net)
    present = expected.is_file()
    if not present and rank() == 0:
        log.info(
            "LPIPS backbone %s not found; torchvision will download it from %s", expected, backbone_url(net)
        )
    try:
        return FrozenLPIPS(_construct(net, random_backbone=False))
    except (OSError, RuntimeError) as e:  # URLError is an OSError; hash mismatches are RuntimeErrors
        if present:
            raise RuntimeError(
                f"could not load the LPIPS backbone {expected} ({e}); the file may be corrupt: delete it or "
                f"give another file with model.loss.perceptual_weights_path"
            ) from e
        raise RuntimeError(
            f"could not download the LPIPS '{net}' backbone {expected.name} ({e}). Place the file at "
            f"{expected} (download it from {backbone_url(net)}), or set "
            f"model.loss.perceptual_weights_path=/path/to/{expected.name}, or disable the perceptual term "
            f"with model.loss.perceptual_weight=0"
        ) from e
