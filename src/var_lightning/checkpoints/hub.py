"""The released VAR weights by name (``pretrained=var_d16`` ... ``var_d36``) and their class names.

The authors publish the files on the Hugging Face Hub (repository ``FoundationVision/var``): one
transformer per depth (``var_d16.pth`` ... ``var_d36.pth``) and the tokenizer they all share
(``vae_ch160v4096z32.pth``). :func:`resolve_pretrained` turns a name into local files through
``huggingface_hub`` itself, so its cache (``HF_HOME`` / ``HF_HUB_CACHE``), offline mode
(``HF_HUB_OFFLINE=1``) and revision pinning behave as everywhere else on the user's machine. A local
``.pth`` (with the tokenizer beside it) or a directory holding the files works the same way, with no
network at all.

The schedule and resolution are not looked up here: the transformer file records its schedule
(``lvl_1L``), and the loader (:mod:`var_lightning.checkpoints.load`) reads it from there.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from var_lightning.checkpoints.model_repo import REPO_FILES, WEIGHTS_FILE, is_model_repo, looks_like_repo_id
from var_lightning.transformer.config import PUBLISHED_SAMPLING

log = logging.getLogger(__name__)

HUB_REPO = "FoundationVision/var"
VAE_FILE = "vae_ch160v4096z32.pth"


@dataclass(frozen=True)
class PretrainedSpec:
    """One released model: its file, the resolution it was trained at and the paper's FID (cfg 1.5,
    top-k 900, top-p 0.96, 50k samples)."""

    name: str
    var_file: str
    resolution: int
    fid: float
    params: str


PRETRAINED: dict[str, PretrainedSpec] = {
    s.name: s
    for s in (
        PretrainedSpec("var_d16", "var_d16.pth", 256, 3.55, "310M"),
        PretrainedSpec("var_d20", "var_d20.pth", 256, 2.95, "600M"),
        PretrainedSpec("var_d24", "var_d24.pth", 256, 2.33, "1.0B"),
        PretrainedSpec("var_d30", "var_d30.pth", 256, 1.97, "2.0B"),
        PretrainedSpec("var_d36", "var_d36.pth", 512, 2.63, "2.3B"),
    )
}
# The published FID protocol (README "Sampling & Zero-shot Inference"): the released models' defaults.
RELEASED_SAMPLING = dict(PUBLISHED_SAMPLING)


class PretrainedUnavailable(FileNotFoundError):
    """The released files are neither cached nor downloadable here; the message says how to place them."""


@dataclass(frozen=True)
class PretrainedFiles:
    var_path: Path
    vae_path: Path
    name: str | None  # the registry name when resolved by name
    origin: str  # "hub" or "local"
    revision: str | None = None


def _offline() -> bool:
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    return env or bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where huggingface_hub keeps downloads: ``cache_dir``, else ``$HF_HUB_CACHE`` / ``$HF_HOME/hub``."""
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _unavailable(spec: PretrainedSpec, cache: Path, revision: str | None, why: str) -> PretrainedUnavailable:
    files = f"{spec.var_file} and {VAE_FILE}"
    rev = f" --revision {revision}" if revision else ""
    return PretrainedUnavailable(
        f"pretrained={spec.name}: the released files {files} (Hugging Face Hub repository {HUB_REPO}"
        f"{', revision ' + revision if revision else ''}) are not in the cache {cache} and cannot be downloaded "
        f"here ({why}). Either\n"
        f"  1. on a machine with internet, fill the cache: `hf download {HUB_REPO} {spec.var_file} {VAE_FILE}"
        f"{rev}` (or any var_lightning command with pretrained={spec.name} once), and copy the cache here "
        f"(HF_HOME / HF_HUB_CACHE point at it); or\n"
        f"  2. put {files} in one directory and pass pretrained=<that directory> (or the path of "
        f"{spec.var_file}; the tokenizer is found beside it)"
    )


def _hub_file(spec: PretrainedSpec, filename: str, revision: str | None, cache: Path) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    common = dict(repo_id=HUB_REPO, filename=filename, revision=revision, cache_dir=str(cache))
    try:  # the cache first: no network round trip when the file is there
        return Path(hf_hub_download(**common, local_files_only=True))
    except LocalEntryNotFoundError:
        if _offline():
            raise _unavailable(spec, cache, revision, "HF_HUB_OFFLINE is set") from None
    log.info("downloading %s from the Hugging Face Hub (%s) into %s", filename, HUB_REPO, cache)
    try:
        return Path(hf_hub_download(**common))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise _unavailable(spec, cache, revision, f"{type(e).__name__}: {str(e).splitlines()[0]}") from e


def _local(path: Path, vae_path: str | os.PathLike | None) -> PretrainedFiles:
    """A released transformer file (tokenizer beside it or ``vae_path``), or a directory holding both."""
    if path.is_dir():
        found = sorted(p for p in path.glob("var_d*") if p.suffix in (".pth", ".safetensors"))
        if not found:
            raise FileNotFoundError(
                f"pretrained={path}: the directory holds no released transformer (var_d16.pth ... var_d36.pth)"
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ValueError(
                f"pretrained={path}: the directory holds several transformers ({names}); pass the file, e.g. "
                f"pretrained={found[0]}"
            )
        var_path = found[0]
    else:
        var_path = path
    if vae_path is not None:
        vae = Path(vae_path).expanduser()
    else:
        candidates = [
            var_path.parent / VAE_FILE,
            var_path.parent / Path(VAE_FILE).with_suffix(".safetensors"),
        ]
        vae = next((c for c in candidates if c.is_file()), candidates[0])
    if not vae.is_file():
        raise FileNotFoundError(
            f"pretrained={path}: the tokenizer {vae} is missing; put {VAE_FILE} beside {var_path.name} or pass "
            f"vae_path=/path/to/{VAE_FILE}"
        )
    return PretrainedFiles(var_path, vae, None, "local")


def resolve_transformer(
    name: str, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Local path of a released transformer alone (fine-tuning needs no tokenizer file from the Hub)."""
    spec = PRETRAINED[name]
    return _hub_file(spec, spec.var_file, revision, hub_cache_dir(cache_dir))


def resolve_tokenizer(revision: str | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Local path of the released tokenizer ``vae_ch160v4096z32.pth`` (Hub cache, downloaded when online)."""
    return _hub_file(PRETRAINED["var_d16"], VAE_FILE, revision, hub_cache_dir(cache_dir))


def resolve_pretrained(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    vae_path: str | os.PathLike | None = None,
) -> PretrainedFiles:
    """Local paths of a released transformer and the tokenizer.

    name_or_path: a registry name (``var_d16`` ... ``var_d36``; resolved through the Hub cache, downloaded
    when missing and online), a released transformer file, or a directory holding ``var_d*.pth`` and
    ``vae_ch160v4096z32.pth``. revision: a Hub branch, tag or commit to pin (names only). cache_dir:
    overrides huggingface_hub's cache location. vae_path: an explicit tokenizer file.
    """
    text = str(name_or_path)
    spec = PRETRAINED.get(text) or PRETRAINED.get(f"var_{text}")
    if spec is None:
        p = Path(text).expanduser()
        if p.exists():
            return _local(p, vae_path)
        raise ValueError(
            f"pretrained={text!r} is neither a released model ({', '.join(PRETRAINED)}), a Hub model repository "
            "(<user>/<name>, written by var-convert to-hub), nor an existing file or directory"
        )
    cache = hub_cache_dir(cache_dir)
    var_path = _hub_file(spec, spec.var_file, revision, cache)
    vae = Path(vae_path).expanduser() if vae_path is not None else _hub_file(spec, VAE_FILE, revision, cache)
    return PretrainedFiles(var_path, vae, spec.name, "hub", revision)


# ---------------------------------------------------------------------------------------------- model repositories
def download_repo(
    repo_id: str,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    key: str = "pretrained",
) -> Path:
    """The local snapshot of a Hub repository (huggingface_hub's cache first; downloaded when missing and
    online). Only the loader's files, the card and its images are fetched."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    # the cache as huggingface_hub's environment variables name it now (HF_HUB_CACHE / HF_HOME), or cache_dir
    common = dict(
        repo_id=repo_id, revision=revision, allow_patterns=REPO_FILES, cache_dir=str(hub_cache_dir(cache_dir))
    )
    try:
        local = Path(snapshot_download(**common, local_files_only=True))
        if (local / WEIGHTS_FILE).is_file():
            return local
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, FileNotFoundError, ValueError):
        pass
    log.info("downloading %s from the Hugging Face Hub", repo_id)
    try:
        return Path(snapshot_download(**common))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError, ValueError) as e:
        rev = f" --revision {revision}" if revision else ""
        raise FileNotFoundError(
            f"{key}={repo_id}: no such folder here, and the Hub repository {repo_id} is not in the cache and "
            "cannot be downloaded "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). On a machine with internet run "
            f"`hf download {repo_id}{rev}` and copy the cache here (HF_HOME / HF_HUB_CACHE), or download the "
            f"repository's files into a folder and pass {key}=<that folder>"
        ) from e


def locate(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    key: str = "pretrained",
) -> Path | None:
    """The local directory of a model repository named by path or Hub id; None for anything else (a
    released model's name or files, which :mod:`var_lightning.checkpoints.hub` resolves)."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return path if is_model_repo(path) else None
    if looks_like_repo_id(text):
        return download_repo(text, revision, cache_dir, key)
    return None


# ---------------------------------------------------------------------------------------------- any source
@dataclass(frozen=True)
class Source:
    """What a user's ``ckpt_path`` / ``pretrained`` names, as local paths: ``path`` is read by the one reader;
    ``vae_path`` is a released transformer's tokenizer when one is known before reading (a released name,
    ``vae_path=``); ``name`` / ``revision`` what was asked for by name."""

    path: Path
    key: str
    asked: str  # the path or name as given
    vae_path: Path | None = None
    name: str | None = None
    revision: str | None = None
    need_tokenizer: bool = True


def resolve_source(
    ckpt_path: str | os.PathLike | None,
    pretrained: str | os.PathLike | None,
    vae_path: str | os.PathLike | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    key: str = "ckpt_path",
    need_tokenizer: bool = True,
) -> Source:
    """The local files behind exactly one of ``ckpt_path`` (a file or folder) and ``pretrained`` (a released
    name, a model repository folder or Hub id, a released file or directory)."""
    if (ckpt_path is None) == (pretrained is None):
        raise ValueError(
            f"give exactly one of ckpt_path=<checkpoint file> and pretrained=<{' | '.join(PRETRAINED)}> "
            f"(got ckpt_path={ckpt_path}, pretrained={pretrained})"
        )
    vae = Path(vae_path).expanduser() if vae_path else None
    if ckpt_path is not None:
        path = Path(ckpt_path).expanduser()
        if not path.exists() and (str(ckpt_path) in PRETRAINED or looks_like_repo_id(str(ckpt_path))):
            raise FileNotFoundError(
                f"{key}={ckpt_path}: no such file or folder; a released model or a model repository on the "
                f"Hugging Face Hub loads with pretrained={ckpt_path}"
            )
        return Source(path, key, str(path), vae, need_tokenizer=need_tokenizer)
    name = str(pretrained)
    repo = locate(pretrained, revision, cache_dir)  # a model repository (a folder or user/name)
    if repo is not None:
        return Source(repo, "pretrained", name, None, name, revision)
    if not need_tokenizer and name in PRETRAINED:  # fine-tuning: the transformer alone
        return Source(resolve_transformer(name, revision, cache_dir), key, name, None, name, revision, False)
    files = resolve_pretrained(pretrained, revision=revision, cache_dir=cache_dir, vae_path=vae_path)
    return Source(files.var_path, "pretrained", name, files.vae_path, files.name, revision)


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids (``n01440764`` ...) in the class order of :func:`imagenet_class_names`:
    an ImageNet-layout folder names its classes by them."""
    text = (Path(__file__).with_name("imagenet_wnids.txt")).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard (sorted synset) order the released models use,
    from torchvision's metadata (no download)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES  # torchvision only when the names are asked for

    return list(_IMAGENET_CATEGORIES)


def released_class_names(num_classes: int) -> list[str] | None:
    """The class names of a released model: ImageNet's for the 1000-class models."""
    return imagenet_class_names() if num_classes == 1000 else None
