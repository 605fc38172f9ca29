"""``var-app``: a Gradio app for class-conditional sampling and zero-shot editing (optional extra ``[app]``).

Two tabs. **Sample**: pick classes (the checkpoint's class names, or ids), images per class, cfg, top-k,
top-p, smoothing and a seed; the coarse-to-fine progression of the first image is streamed scale by scale
as the sampler produces it, then the labelled grid, with the PNGs and the settings JSON to download.
**Edit**: upload any image (shorter side resized to the model's resolution, centre crop: what ``var-edit``
does), mark the region with the brush or a box, choose in-painting, out-painting or a class edit; the
original, the mask and the results appear side by side.

No sampling logic lives here: :class:`VarApp` calls :func:`var_lightning.inference.generate.sample_per_class` and
:func:`var_lightning.transformer.editing.edit_region` with the commands' sampler, so the same settings and seed give the
same images as ``var-sample`` and ``var-edit``. Every bad input raises :class:`AppError` with a message the
page shows (``gr.Error``); the app keeps serving.

Beyond localhost (``host=0.0.0.0``, ``share=true``) the app asks for a login (Gradio's ``auth``): one
``user:password`` from the ``VAR_APP_AUTH`` environment variable, or lines of them in ``auth_file``; never on
the command line, where shell history and ``ps`` would keep it. Without one it refuses to serve unless
``insecure=true``. It serves only the folder its results are written to.
"""

import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from var_lightning.checkpoints.load import LoadedModels
from var_lightning.inference.app_inputs import MAX_UPLOAD_MB, AppError, _float, _int, _seed, check_image_size
from var_lightning.inference.app_page import build_page
from var_lightning.inference.app_serving import LoginGuard
from var_lightning.inference.classes import check_classes, parse_class
from var_lightning.inference.devices import autocast_context
from var_lightning.inference.edit_images import (
    crop_note,
    edit_panel,
    fit_image,
    fit_mask,
    mask_to_pixels,
    save_image,
)
from var_lightning.inference.generate import sample_per_class
from var_lightning.inference.grids import labelled_grid, save_pngs, to_uint8_hwc
from var_lightning.seeds import SEED_RULE
from var_lightning.transformer.config import SamplingArgs
from var_lightning.transformer.editing import MODES, EditRequest, box_region, edit_region
from var_lightning.transformer.fast_sampling import build_sampler
from var_lightning.transformer.sampling import check_sampling_args

log = logging.getLogger(__name__)


class VarApp:
    """The app's state (models, sampler, output folder) and its callbacks, usable without a browser."""

    def __init__(
        self,
        models: LoadedModels,
        out_dir: str | Path,
        sampler: str = "fast",
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        batch_size: int = 32,
        max_images: int = 64,
    ) -> None:
        if models.var is None:
            raise AppError("var-app needs a transformer checkpoint (a VAR, not a tokenizer alone)")
        self.models, self.var, self.vae, self.info = models, models.var, models.vae, models.info
        self.draw = build_sampler(self.var, self.vae, sampler)
        self.sampler_kind, self.device, self.precision = sampler, torch.device(device), precision
        self.batch_size, self.max_images = int(batch_size), int(max_images)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one generation at a time: the models are shared

    # ------------------------------------------------------------------ inputs
    def class_choices(self) -> list[str]:
        names = self.info.class_names
        return [
            f"{i}: {names[i]}" if names and i < len(names) else str(i) for i in range(self.var.num_classes)
        ]

    def parse_class(self, value: Any, what: str = "class") -> int:
        """A class from the picker (``"207: golden retriever"``), a typed id or a typed class name: the
        commands' parser (:func:`var_lightning.inference.generate.parse_class`)."""
        try:
            return parse_class(value, self.info.class_names, self.var.num_classes, key=None, what=what)
        except ValueError as e:
            raise AppError(str(e)) from None

    def settings(self, cfg: Any, top_k: Any, top_p: Any, more_smooth: Any) -> SamplingArgs:
        """Checked sampling settings, in the commands' terms (top-p in [0, 1], 0 or 1 = off: one convention,
        :data:`~var_lightning.transformer.sampling.TOP_P_RULE`)."""
        cfg, top_p, top_k = _float(cfg, "cfg"), _float(top_p, "top-p"), _int(top_k, "top-k")
        try:
            check_sampling_args(self.var, cfg, top_k, top_p, prefix="")
        except ValueError as e:
            raise AppError(re.sub(r" \(key (cfg|top_k|top_p)\)", "", str(e))) from e
        return SamplingArgs(cfg, top_k, top_p, bool(more_smooth))

    def defaults(self) -> dict[str, Any]:
        """The checkpoint's own sampling settings."""
        s = self.info.sampling
        return {
            "cfg": s["cfg"],
            "top_k": s["top_k"],
            "top_p": s["top_p"],
            "more_smooth": s["more_smooth"],
        }

    # ------------------------------------------------------------------ sampling
    def sample(
        self, classes: Sequence[Any], num_per_class: Any, cfg: Any, top_k: Any, top_p: Any, more_smooth: Any,
        seed: Any,
    ) -> Iterator[dict[str, Any]]:  # fmt: skip
        """Updates while sampling: ``{"progression": [(image, caption)], "done": False}`` after each scale of
        the first image, then ``{"grid", "images", "files", "settings", "done": True}``."""
        picked = [
            self.parse_class(c, "class")
            for c in (classes if isinstance(classes, (list, tuple)) else [classes])
        ]
        picked = check_classes(picked, self.var.num_classes) if picked else []
        if not picked:
            raise AppError("pick at least one class")
        n = _int(num_per_class, "images per class", lo=1)
        if n * len(picked) > self.max_images:
            raise AppError(
                f"{n} x {len(picked)} classes = {n * len(picked)} images; at most {self.max_images} per request"
            )
        settings = self.settings(cfg, top_k, top_p, more_smooth)
        seed = _seed(seed)
        updates: queue.Queue = queue.Queue()
        pn = self.var.patch_nums

        def on_scale(b: int, si: int, f_hat: torch.Tensor) -> None:
            if b == 0:  # the first image, decoded after every scale
                img = self.vae.fhat_to_img(f_hat[:1].float()).add(1).mul(0.5)
                updates.put(("scale", si, _pil(img[0])))

        result: dict[str, Any] = {}

        def work() -> None:
            try:
                with self._lock, torch.no_grad(), autocast_context(self.device, self.precision):
                    result["images"], result["labels"] = sample_per_class(
                        self.draw,
                        picked,
                        n,
                        settings,
                        seed,
                        self.batch_size,
                        self.device,
                        scale_hook=on_scale,
                    )
            except Exception as e:  # noqa: BLE001 - reported to the page below
                result["error"] = e
            updates.put(("done", None, None))

        threading.Thread(target=work, daemon=True).start()
        progression: list[tuple[Image.Image, str]] = []
        while True:
            kind, si, img = updates.get()
            if kind == "done":
                break
            progression.append((img, f"scale {si + 1}/{len(pn)}: {pn[si]}x{pn[si]} tokens"))
            yield {"progression": list(progression), "done": False}
        if "error" in result:
            raise result["error"]
        yield {"progression": progression, **self._write_samples(result["images"], result["labels"], picked, n,
                                                                 settings, seed), "done": True}  # fmt: skip

    def _write_samples(self, images: torch.Tensor, labels: torch.Tensor, classes: list[int], n: int,
                       settings: SamplingArgs, seed: int) -> dict[str, Any]:  # fmt: skip
        run = self.out_dir / f"sample-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        counters = dict.fromkeys(classes, 0)
        names = []
        for lab in labels.tolist():
            names.append(f"{lab:04d}_{counters[lab]:04d}.png")
            counters[lab] += 1
        pngs = save_pngs(images, run / "samples", names)
        grid = labelled_grid(
            images, labels.tolist(), run / "grid.png", per_row=n, class_names=self.info.class_names
        )
        meta = {"model": self.info.as_dict(), "classes": classes, "num_per_class": n, **settings.settings(), "seed": seed,
                "seed_rule": SEED_RULE, "batch_size": self.batch_size, "sampler": self.sampler_kind,
                "precision": self.precision, "same as": self._command(classes, n, settings, seed)}  # fmt: skip
        (run / "settings.json").write_text(json.dumps(meta, indent=2))
        return {"grid": str(grid), "images": [str(p) for p in pngs], "files": [str(grid), str(run / "settings.json"), *map(str, pngs)],
                "settings": meta}  # fmt: skip

    def _command(self, classes: list[int], n: int, settings: SamplingArgs, seed: int) -> str:
        src = (
            f"pretrained={self.info.pretrained}" if self.info.pretrained else f"ckpt_path={self.info.source}"
        )
        return (f"var-sample {src} classes=[{','.join(map(str, classes))}] num_per_class={n} cfg={settings.cfg:g} "
                f"top_k={settings.top_k} top_p={settings.top_p:g} more_smooth={str(settings.more_smooth).lower()} "
                f"seed={seed} batch_size={self.batch_size} sampler={self.sampler_kind} precision={self.precision}")  # fmt: skip

    # ------------------------------------------------------------------ editing
    def region_from_editor(self, value: Any) -> tuple[Image.Image | None, np.ndarray | None]:
        """(the uploaded image, the brushed region as a bool array of its size) from an ImageEditor value."""
        if value is None:
            return None, None
        if isinstance(value, Image.Image):
            return value, None
        background = value.get("background") if isinstance(value, dict) else None
        if background is None:
            return None, None
        background = (
            background if isinstance(background, Image.Image) else Image.fromarray(np.asarray(background))
        )
        marked = None
        for layer in value.get("layers") or []:
            arr = np.asarray(layer if not isinstance(layer, Image.Image) else layer.convert("RGBA"))
            alpha = (
                arr[..., 3] > 0
                if arr.ndim == 3 and arr.shape[-1] == 4
                else arr.reshape(arr.shape[0], arr.shape[1], -1).max(-1) > 0
            )
            marked = alpha if marked is None else marked | alpha
        return background, marked

    def edit(
        self, editor: Any, region_source: str, box: Sequence[Any], mode: str, klass: Any, cfg: Any, top_k: Any,
        top_p: Any, more_smooth: Any, seed: Any, num_variations: Any,
    ) -> dict[str, Any]:  # fmt: skip
        """Original, mask and results (PIL images), the files and the settings of one edit."""
        image, brushed = self.region_from_editor(editor)
        if image is None:
            raise AppError("upload an image first (the Edit tab's left panel)")
        check_image_size(*image.size)  # the page checks before decoding; this covers Python callers
        if mode not in MODES:
            raise AppError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
        size, grid = self.vae.cfg.image_size, self.var.patch_nums[-1]
        image_13HW = fit_image(image, size)
        if region_source == "brush":
            if brushed is None or not brushed.any():
                raise AppError("the brushed region is empty: paint over the part to edit, or use a box")
            region = fit_mask(Image.fromarray(brushed.astype(np.uint8) * 255), size, image_wh=image.size)
        else:
            try:
                coords = [float(v) for v in box]
                region = box_region(coords, grid, size)
            except (TypeError, ValueError) as e:
                raise AppError(str(e).replace(" (key box)", "")) from e
        label = self.parse_class(klass, "class to paint") if mode == "class-edit" else None
        settings = self.settings(cfg, top_k, top_p, more_smooth)
        seed, n = _seed(seed), _int(num_variations, "variations", lo=1)
        if n > self.max_images:
            raise AppError(f"at most {self.max_images} variations per request")
        try:
            with self._lock, torch.no_grad(), autocast_context(self.device, self.precision):
                request = EditRequest.of(self.var, self.vae, image_13HW, region, mode, label)
                result = edit_region(self.var, self.vae, request, settings, seed=seed, num_variations=n,
                                     sampler=self.draw)  # fmt: skip
        except ValueError as e:  # an empty region, a class the mode does not take, ...
            raise AppError(str(e)) from e
        run = self.out_dir / f"edit-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        original = image_13HW[0].add(1).mul(0.5)
        generated_HW = 1 - mask_to_pixels(result.keep_mask[0].cpu(), size)
        images = result.images.float().cpu()
        recon = result.reconstruction[0].float().cpu()
        paths = [save_image(img, run / f"result_{i}.png") for i, img in enumerate(images)]
        panel = edit_panel(original, recon, generated_HW, images, run / "panel.png")
        crop = crop_note(image.size, size)
        if crop:
            log.info("edit: %s", crop)
        meta = {"model": self.info.as_dict(), "mode": mode, "class": label, "region": region_source,
                "box": [float(v) for v in box] if region_source != "brush" else None, **settings.settings(), "seed": seed,
                "num_variations": n, "sampler": self.sampler_kind, "kept_token_fraction": result.kept_fraction(),
                "input_crop": crop}  # fmt: skip
        (run / "edit.json").write_text(json.dumps(meta, indent=2))
        return {
            "original": _pil(original),
            "reconstruction": _pil(recon),
            "mask": _pil(generated_HW.unsqueeze(0).expand(3, -1, -1)),
            "results": [_pil(img) for img in images],
            "files": [str(panel), str(run / "edit.json"), *map(str, paths)],
            "settings": meta,
            "tokens": result.tokens,
        }

    # ------------------------------------------------------------------ the page

    def launch(
        self, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
        auth: list[tuple[str, str]] | None = None, blocked_paths: Sequence[str | Path] = (),
    ) -> Any:  # fmt: skip
        """Serve the page. Files: only ``out_dir`` (the results); ``blocked_paths`` are refused even when
        Gradio would otherwise serve them (the run folder's config and log beside the results)."""

        demo = build_page(self)
        demo.queue(default_concurrency_limit=1)
        try:
            demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                        allowed_paths=[str(self.out_dir)], blocked_paths=[str(p) for p in blocked_paths],
                        auth=LoginGuard(auth).check if auth else None, auth_message="var-app: log in", quiet=not block,
                        max_file_size=MAX_UPLOAD_MB * 1_000_000)  # fmt: skip
        except OSError as e:
            raise AppError(
                f"cannot serve on {host}:{port} ({e}): the port is in use or the host is not this machine's; "
                f"choose another port=, or host=127.0.0.1"
            ) from None
        return demo


def _pil(image_3HW: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8_hwc(image_3HW.unsqueeze(0).float().cpu())[0])
