"""Model repositories: what a user trained, in the form others load in one line.

A repository (a local directory, or the same files on the Hugging Face Hub) holds

* ``model.safetensors``: the weights, keys ``var.*`` (the transformer: the run's EMA when it kept one) and
  ``vae.*`` (its tokenizer; a VAR or AR repository always contains the tokenizer it was trained with);
* ``config.json``: ``format`` (``var_lightning/<n>``), the stage (``var``, ``ar`` or ``tokenizer``), the
  model configs, scale schedule, resolution, vocabulary, class names and sampling defaults, plus the run's
  hyper-parameters, so the loader rebuilds the models from this file alone;
* ``README.md``: the model card (:mod:`var_lightning.checkpoints.model_card`), and the images it shows.

Reading goes through the one reader: :func:`~var_lightning.checkpoints.reader.read_checkpoint` turns a
repository directory into the same checkpoint dict a ``.ckpt`` gives, so ``load_models(pretrained=DIR)``,
``pretrained=user/name``, ``ckpt_path=DIR``, ``init_from=`` and ``model.tokenizer_ckpt=`` all take one, with
the same checks. Only safetensors is read: a repository with pickled weights (``pytorch_model.bin``) is
refused, since unpickling can execute code. The Hub side is huggingface_hub's own API (``snapshot_download``
with its cache, offline mode and revisions; ``HfApi.create_repo`` / ``upload_folder`` to publish): nothing
here speaks HTTP itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from var_lightning import __version__
from var_lightning.checkpoints.model_card import model_card, run_facts
from var_lightning.checkpoints.safe_io import (
    CheckpointError,
    atomic_write,
    read_safetensors,
    write_safetensors,
)
from var_lightning.tokenizer.config import VQVAEConfig

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
FORMAT = "var_lightning/1"
LIBRARY = "var_lightning"
# what a download fetches: the loader's files and the card with its images
REPO_FILES = [CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, "*.png"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_model_repo(path: str | os.PathLike) -> bool:
    """A directory whose ``config.json`` says it is a var_lightning model repository, or one holding
    ``model.safetensors`` beside a ``config.json`` that does not read (the reader then names the damage)."""
    config = Path(path).expanduser() / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return str(json.loads(config.read_text()).get("format", "")).startswith(f"{LIBRARY}/")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return (config.parent / WEIGHTS_FILE).is_file()


def looks_like_repo_id(text: str) -> bool:
    """``owner/name`` (and not a path that exists here, nor a checkpoint file's name)."""
    if text.endswith((".ckpt", ".pth", ".pt", ".safetensors", ".bin")):
        return False
    return bool(_REPO_ID.match(text)) and not Path(text).expanduser().exists()


def repo_config(ckpt: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint dict (``state_dict`` / ``hyper_parameters`` / ``var_lightning``):
    the readable summary first, the full hyper-parameters and our record below it."""
    hp = dict(ckpt.get("hyper_parameters") or {})
    meta = dict(ckpt.get("var_lightning") or {})
    tok = VQVAEConfig(**dict(hp["tokenizer"])) if hp.get("tokenizer") else None
    return {
        "format": FORMAT,
        "library_name": LIBRARY,
        "stage": meta.get("stage"),
        "image_size": tok.image_size if tok else None,
        "patch_nums": list(tok.patch_nums) if tok else None,
        "vocab_size": tok.vocab_size if tok else None,
        "num_classes": (hp.get("transformer") or {}).get("num_classes"),
        "class_names": meta.get("class_names"),
        "sampling": hp.get("sampling"),
        "hyper_parameters": hp,
        "var_lightning": meta,
    }


def write_model_repo(
    ckpt: Mapping[str, Any],
    out_dir: str | os.PathLike,
    card: str | None = None,
    files: Mapping[str, str | os.PathLike] | None = None,
) -> Path:
    """Write a repository: ``model.safetensors`` (atomically), ``config.json``, the card, and ``files``
    (name in the repository -> a file to copy, e.g. ``{"grid.png": ...}``). Returns the directory."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out-dir {out} is a file; give a directory for the repository")
    out.mkdir(parents=True, exist_ok=True)
    config = repo_config(ckpt)
    if config["stage"] not in ("var", "ar", "tokenizer"):
        raise ValueError(f"cannot write a model repository for a {config['stage']!r} checkpoint")
    atomic_write(out / WEIGHTS_FILE, lambda tmp: write_safetensors(dict(ckpt["state_dict"]), tmp))
    atomic_write(out / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=2) + "\n"))
    if card is not None:
        atomic_write(out / CARD_FILE, lambda tmp: tmp.write_text(card))
    for name, src in (files or {}).items():
        shutil.copyfile(src, out / name)
    return out


def read_model_repo(path: str | os.PathLike, key: str = "pretrained", device: str = "cpu") -> dict[str, Any]:
    """A repository directory as a checkpoint dict (what :func:`read_checkpoint` returns for a file)."""
    repo = Path(path).expanduser()
    weights = repo / WEIGHTS_FILE
    if not weights.is_file():
        pickled = [p.name for p in repo.glob("*.bin")] + [p.name for p in repo.glob("*.pt*")]
        extra = (
            f" (it has {', '.join(pickled)}: pickled weights are not read, they can execute code)"
            if pickled
            else ""
        )
        raise CheckpointError(f"{key}={path}: the model repository has no {WEIGHTS_FILE}{extra}")
    try:
        config = json.loads((repo / CONFIG_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{key}={path}: {CONFIG_FILE} is not valid JSON ({e}); the file is damaged: export the model again "
            "with var-convert to-hub"
        ) from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{key}={path}: {CONFIG_FILE} holds a {type(config).__name__}, not a mapping")
    version = str(config.get("format", ""))
    if version != FORMAT:
        raise CheckpointError(
            f"{key}={path}: repository format {version!r}; this var_lightning reads {FORMAT!r}: upgrade "
            "var_lightning (pip install -U var_lightning) or export the model again with this version"
        )
    hp, record = config.get("hyper_parameters") or {}, config.get("var_lightning") or {}
    for name, value in (("hyper_parameters", hp), ("var_lightning", record)):
        if not isinstance(value, dict):
            raise CheckpointError(
                f"{key}={path}: {CONFIG_FILE}'s {name} is a {type(value).__name__}, not a mapping; the file is "
                "damaged: export the model again with var-convert to-hub"
            )
    if "lora" in record:  # a repository holds merged weights and reads nothing outside itself
        raise CheckpointError(
            f"{key}={path}: {CONFIG_FILE} names LoRA adapters over a base ({record['lora'].get('base') if isinstance(record['lora'], dict) else record['lora']!r}), "
            "but a model repository holds merged weights and reads no file outside itself: export the LoRA run "
            "with var-convert to-hub, which merges the adapters"
        )
    return {"state_dict": read_safetensors(weights, key, device=device), "hyper_parameters": dict(hp),
            "var_lightning": dict(record)}  # fmt: skip


def push_to_hub(
    repo_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Upload a repository directory with huggingface_hub (``create_repo`` then ``upload_folder``); returns
    the repository's URL. Without a network or a token the error says what to do."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if not is_model_repo(repo_dir):
        raise ValueError(
            f"{repo_dir} is not a model repository (no var_lightning {CONFIG_FILE}); write one first"
        )
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"--repo-id {repo_id!r} is not a Hub repository id: use <user or org>/<name>")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(repo_dir),
            commit_message=commit_message or "Upload a var_lightning model",
            revision=revision,
        )
    except (HfHubHTTPError, OfflineModeIsEnabled, OSError, ValueError) as e:
        raise RuntimeError(
            f"--repo-id {repo_id}: the upload failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"The repository is written in {repo_dir}; log in with `hf auth login` (or set HF_TOKEN), check the "
            f"network (HF_HUB_OFFLINE must not be set), then upload it with `hf upload {repo_id} {repo_dir}` or "
            "run this command again"
        ) from e
    log.info("uploaded %s to %s", repo_dir, url)
    return str(url)


def checkpoint_from_models(models: Any, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint dict a repository holds for loaded models (a LoadedModels; ``var`` None for a
    tokenizer): their weights as loaded (a run's EMA when it kept one), their configs over the run's
    hyper-parameters, the class names and the sampling defaults."""
    from dataclasses import asdict

    var, vae, info = models
    sd = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    hp = {**dict(info.hyper_parameters or {}), "tokenizer": asdict(vae.cfg)}
    if var is not None:
        sd.update({f"var.{k}": v for k, v in var.state_dict().items()})
        hp.update(transformer=asdict(var.cfg), sampling={**dict(hp.get("sampling") or {}), **info.sampling})
    record = {"stage": info.stage, "class_names": info.class_names, **dict(meta or {})}
    return {"state_dict": sd, "hyper_parameters": hp, "var_lightning": record}


def save_repo(
    models: Any,
    out_dir: str | os.PathLike,
    repo_id: str | None = None,
    license: str = "other",
    report: Mapping[str, Any] | None = None,
    image: str | os.PathLike | None = None,
    run_dir: Path | None = None,
    global_step: int | None = None,
    epoch: int | None = None,
    ema: bool = False,
    source: str | None = None,
) -> Path:
    """Write loaded models as a repository with a generated card (:mod:`~var_lightning.checkpoints.model_card`):
    the facts of ``run_dir``, the ``report`` of a var-eval run, ``image`` (else the run's latest image grid)."""
    grid = Path(image).expanduser() if image else run_facts(run_dir).get("grid")
    if grid is not None and not Path(grid).is_file():
        raise FileNotFoundError(f"--image {grid}: no such file")
    meta = {
        "exported_by": f"var_lightning {__version__}",
        "source": source,
        "global_step": global_step,
        "ema": ema,
    }
    card = model_card(models, repo_id, global_step, epoch, ema, run_dir, report, license,
                      "grid.png" if grid else None, source)  # fmt: skip
    return write_model_repo(
        checkpoint_from_models(models, meta), out_dir, card, {"grid.png": grid} if grid else None
    )
