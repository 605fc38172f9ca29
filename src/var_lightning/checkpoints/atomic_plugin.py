"""Checkpoints written atomically: a temporary file in the same directory, flushed to disk, then renamed.

Lightning's ``TorchCheckpointIO`` writes straight to the final name, so a job killed while saving (or a
disk that fills up) leaves a partial file under ``last.ckpt`` and, worse, has already overwritten the good
one. Here the bytes go to ``.<name>.tmp-<pid>`` beside the target, are ``fsync``-ed, and ``os.replace``
renames them over the target in one step (atomic on POSIX file systems); the directory entry is synced
too. If anything fails, the temporary file is removed and the previous checkpoint is untouched.
"""

from __future__ import annotations

import logging
from typing import Any

from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from var_lightning.checkpoints.safe_io import atomic_torch_save

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """The checkpoint IO of every ``var-train`` run: ``save_checkpoint`` through :func:`atomic_torch_save`;
    loading and removal as Lightning's own."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options (got {storage_options!r})")
        try:
            atomic_torch_save(checkpoint, path)
        except Exception as e:  # torch's writer reports a full disk as a RuntimeError
            msg = (
                f"could not write checkpoint {path} ({type(e).__name__}: {str(e).strip().splitlines()[-1]}; a full "
                f"disk or a file-size limit?); the previous checkpoint there is unchanged and no partial file was left"
            )
            log.error("%s", msg)
            raise OSError(msg) from e
