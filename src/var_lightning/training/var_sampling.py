"""Sampling while a VAR trains: the image grids (``log_images``) and the generation metrics draw from the
module with its stored sampling defaults, in calls sized from a memory budget.

* **Calls that fit.** ``model.train.sample_memory_gib`` (8 GiB) bounds one call's working memory: the KV cache
  of every block, doubled by classifier-free guidance, the last scale's scores and logits, and the decode
  (:func:`var_lightning.scaling.planner.sampling_bytes_per_image`). :meth:`ValidationSampling.sampling_batch`
  is the number of images that fits, computed from the model's shape, the budget and the run's precision
  only, so the same config draws the same images on any card. The image grid of d30 (80 images x 2 rows of
  guidance) was one call holding a ~50 GB fp32 cache; it is now calls of ``sampling_batch`` images, call ``i``
  seeded ``seed + i``.
* **A sharded transformer** samples from a plain copy gathered one tensor at a time
  (:func:`var_lightning.training.sharding.full_copy`), in bf16 under a bf16 precision: 4 GB per rank at d30,
  where the full fp32 state dict was 8 GB and twice that while the copy was built.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from var_lightning.scaling.planner import GIB, sampling_batch
from var_lightning.training.sharding import full_copy, is_sharded
from var_lightning.transformer.config import SamplingArgs
from var_lightning.transformer.fast_sampling import build_sampler


class ValidationSampling:
    """Mixed into :class:`~var_lightning.training.var_module.VARModule` (it provides ``var``, ``vae``,
    ``sampling_cfg``, ``train_cfg``, ``device`` and the trainer)."""

    _gathered: Any = None  # the full-weight copy while a sharded transformer samples

    @property
    def sharded(self) -> bool:
        """True when the transformer is sharded: sampling then needs every rank (see :meth:`gathered`)."""
        return is_sharded(self.var)

    def _precision(self) -> str:
        trainer = getattr(self, "_trainer", None)
        return str(getattr(trainer, "precision", "32-true")) if trainer is not None else "32-true"

    def sampling_dtype(self) -> torch.dtype | None:
        """The dtype of a sharded transformer's gathered copy: bf16 under a bf16 precision, else None (fp32)."""
        return torch.bfloat16 if self._precision().startswith("bf16") else None

    def sampling_batch(self) -> int:
        """Images per sampling call within ``model.train.sample_memory_gib`` (see the module docstring)."""
        low = self._precision().startswith(("bf16", "16"))
        kind = getattr(self.var, "kind", "var")
        budget = float(self.train_cfg.sample_memory_gib) * GIB
        return sampling_batch(self.var.cfg, self.vae.cfg, budget, 2.0 if low else 4.0, kind)

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """Inside, :meth:`generate` samples from a full-weight copy of a sharded transformer (gathered from all
        ranks: every rank must enter, which is a collective; bf16 under a bf16 precision). Unsharded: no-op."""
        if self._gathered is not None or not self.sharded:
            yield
            return
        # object.__setattr__: a module attribute would register the copy as a submodule (and checkpoint it)
        object.__setattr__(self, "_gathered", full_copy(self.var, self.sampling_dtype()).eval())
        try:
            yield
        finally:
            object.__setattr__(self, "_gathered", None)

    @torch.no_grad()
    def generate(self, labels: torch.Tensor | list[int], **overrides: Any) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] for the given classes with the module's sampling defaults, in one call.
        A sharded transformer samples only inside :meth:`gathered`."""
        s = {**self.sampling_cfg, **overrides}
        labels = torch.as_tensor(labels, device=self.device)
        net = self._gathered if self._gathered is not None else self.var
        if net is self.var and self.sharded:
            raise RuntimeError(
                "the transformer is sharded over the ranks: sample inside `with module.gathered():`, entered on "
                "every rank (it gathers the full weights)"
            )
        # the one sampler chooser (the commands and the app use it too); "plain": no CUDA graphs to capture
        # while the weights change between calls; an AR baseline gets its raster sampler there
        draw = build_sampler(net, self.vae, "plain")
        args = SamplingArgs.of(**{k: s[k] for k in ("cfg", "top_k", "top_p", "more_smooth", "seed")})
        return draw(labels.numel(), labels=labels, args=args).images

    @torch.no_grad()
    def log_images(
        self, batch: tuple[torch.Tensor, torch.Tensor], max_images: int = 8
    ) -> dict[str, tuple[torch.Tensor, list[str]]]:
        """Seeded samples: one labelled row of ``max_images`` per class for up to 10 classes spread evenly
        over all of them (the data's class names label the rows), drawn in calls of :meth:`sampling_batch`
        images (call ``i`` seeded ``seed + i``)."""
        n = self.var.num_classes
        classes = sorted({round(i * (n - 1) / 9) for i in range(10)}) if n > 10 else list(range(n))
        labels = torch.tensor(classes, device=self.device).repeat_interleave(max_images)
        was_training = self.var.training
        self.var.eval()
        seed = int(self.sampling_cfg["seed"])
        with self.gathered():
            parts = [
                self.generate(chunk, seed=seed + i)
                for i, chunk in enumerate(labels.split(self.sampling_batch()))
            ]
        self.var.train(was_training)
        names = self._class_names()
        rows = [names[c] if names and c < len(names) else f"class {c}" for c in classes]
        return {f"samples_nrow{max_images}": (torch.cat(parts), rows)}

    def _class_names(self) -> list[str] | None:
        dm = getattr(self._trainer, "datamodule", None) if self._trainer else None
        names = getattr(dm, "class_names", None)
        return list(names) if names else None
