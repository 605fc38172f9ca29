"""``var-app``: a Gradio app for class-conditional sampling and zero-shot editing (optional extra ``[app]``).

Two tabs. **Sample**: pick classes (the checkpoint's class names, or ids), images per class, cfg, top-k,
top-p, smoothing and a seed; the coarse-to-fine progression of the first image is streamed scale by scale
as the sampler produces it, then the labelled grid, with the PNGs and the settings JSON to download.
**Edit**: upload any image (shorter side resized to the model's resolution, centre crop: what ``var-edit``
does), mark the region with the brush or a box, choose in-painting, out-painting or a class edit; the
original, the mask and the results appear side by side.

No sampling logic lives here: :class:`VarApp` calls :func:`var_lightning.inference.sample_per_class` and
:func:`var_lightning.inference.run_edit` with the commands' sampler, so the same settings and seed give the
same images as ``var-sample`` and ``var-edit``. Every bad input raises :class:`AppError` with a message the
page shows (``gr.Error``); the app keeps serving.

Beyond localhost (``host=0.0.0.0``, ``share=true``) the app asks for a login (Gradio's ``auth``): one
``user:password`` from the ``VAR_APP_AUTH`` environment variable, or lines of them in ``auth_file``; never on
the command line, where shell history and ``ps`` would keep it. Without one it refuses to serve unless
``insecure=true``. It serves only the folder its results are written to.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from var_lightning.checkpoints.loading import LoadedModels
from var_lightning.cli.runtime import autocast_context
from var_lightning.edit_io import crop_note, edit_panel, fit_image, fit_mask, mask_to_pixels, save_image
from var_lightning.evaluation.sharding import MAX_SEED
from var_lightning.inference import EditRequest, check_classes, parse_class, run_edit, sample_per_class
from var_lightning.sample_io import labelled_grid, save_pngs, to_uint8_hwc
from var_lightning.transformer.editing import MODES, box_region
from var_lightning.transformer.fast_sampling import build_sampler
from var_lightning.transformer.sampling import check_sampling_args

log = logging.getLogger(__name__)


class AppError(ValueError):
    """A bad input; its message is shown in the page."""


AUTH_ENV = "VAR_APP_AUTH"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def check_serving(host: str, port: Any) -> int:
    """The port as an int, or an :class:`AppError` naming the key and the range."""
    try:
        number = int(port)
    except (TypeError, ValueError):
        raise AppError(f"port={port!r} is not a port number: use 1..65535 (key port)") from None
    if not 1 <= number <= 65535:
        raise AppError(f"port={number} is out of range: use 1..65535, e.g. port=7861 (key port)")
    if not str(host).strip():
        raise AppError("host is empty: use host=127.0.0.1 (this machine) or host=0.0.0.0 (the network)")
    return number


def resolve_auth(
    host: str, share: bool, insecure: bool, auth_file: str | None = None,
    environ: Any = os.environ,
) -> list[tuple[str, str]] | None:  # fmt: skip
    """The logins Gradio checks: ``VAR_APP_AUTH=user:password`` and/or the ``user:password`` lines of
    ``auth_file`` (blank lines and ``#`` comments skipped). Serving beyond this machine (a host other than
    loopback, or a public share link) without one is refused unless ``insecure`` is set."""
    logins: list[tuple[str, str]] = []
    value = environ.get(AUTH_ENV)
    if value:
        logins.append(_login(value, f"the {AUTH_ENV} environment variable"))
    if auth_file:
        path = Path(auth_file).expanduser()
        if not path.is_file():
            raise AppError(
                f"auth_file={auth_file}: no such file (one user:password per line) (key auth_file)"
            )
        if os.name == "posix" and path.stat().st_mode & 0o077:
            log.warning("auth_file=%s is readable by other users: chmod 600 %s", auth_file, auth_file)
        before = len(logins)
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if line.strip() and not line.lstrip().startswith("#"):
                logins.append(_login(line.strip(), f"auth_file={auth_file} line {n}"))
        if len(logins) == before:
            raise AppError(f"auth_file={auth_file} holds no user:password line (key auth_file)")
    public = share or str(host).strip() not in LOOPBACK_HOSTS
    if public and not logins and not insecure:
        where = (
            "share=true makes a public gradio.live link"
            if share
            else f"host={host} serves every machine that can reach this one"
        )
        raise AppError(
            f"{where}, and the app has no login: anyone could run the model and download its results. Set "
            f"{AUTH_ENV}=user:password in the environment (or auth_file=<a file of user:password lines>), or "
            f"pass insecure=true to serve without a login"
        )
    if public and not logins:
        log.warning("serving on %s without a login (insecure=true)", "a public link" if share else host)
    return logins or None


def _login(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise AppError(f"{where} is not user:password (a user name, a colon, a non-empty password)")
    return user.strip(), password


def _gradio() -> Any:
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError(
            "var-app needs gradio: pip install 'var-lightning[app]' (or pip install 'gradio>=5')"
        ) from e
    return gr


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
        commands' parser (:func:`var_lightning.inference.parse_class`)."""
        try:
            return parse_class(value, self.info.class_names, self.var.num_classes, key=None, what=what)
        except ValueError as e:
            raise AppError(str(e)) from None

    def settings(self, cfg: Any, top_k: Any, top_p: Any, more_smooth: Any) -> dict[str, Any]:
        """Checked sampling settings, in the commands' terms (top-p in [0, 1], 0 or 1 = off: one convention,
        :data:`~var_lightning.transformer.sampling.TOP_P_RULE`)."""
        cfg, top_p, top_k = _float(cfg, "cfg"), _float(top_p, "top-p"), _int(top_k, "top-k")
        try:
            check_sampling_args(self.var, cfg, top_k, top_p, prefix="")
        except ValueError as e:
            raise AppError(re.sub(r" \(key (cfg|top_k|top_p)\)", "", str(e))) from e
        return {
            "cfg": cfg,
            "top_k": top_k,
            "top_p": top_p,
            "more_smooth": bool(more_smooth),
        }

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
                       settings: dict[str, Any], seed: int) -> dict[str, Any]:  # fmt: skip
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
        meta = {"model": self.info.as_dict(), "classes": classes, "num_per_class": n, **settings, "seed": seed,
                "seed_rule": "seed * 100003 + batch index", "batch_size": self.batch_size, "sampler": self.sampler_kind,
                "precision": self.precision, "same as": self._command(classes, n, settings, seed)}  # fmt: skip
        (run / "settings.json").write_text(json.dumps(meta, indent=2))
        return {"grid": str(grid), "images": [str(p) for p in pngs], "files": [str(grid), str(run / "settings.json"), *map(str, pngs)],
                "settings": meta}  # fmt: skip

    def _command(self, classes: list[int], n: int, settings: dict[str, Any], seed: int) -> str:
        src = (
            f"pretrained={self.info.pretrained}" if self.info.pretrained else f"ckpt_path={self.info.source}"
        )
        return (f"var-sample {src} classes=[{','.join(map(str, classes))}] num_per_class={n} cfg={settings['cfg']:g} "
                f"top_k={settings['top_k']} top_p={settings['top_p']:g} more_smooth={str(settings['more_smooth']).lower()} "
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
                result = run_edit(self.var, self.vae, EditRequest(image_13HW, region, mode, label), settings, seed, n,
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
                "box": [float(v) for v in box] if region_source != "brush" else None, **settings, "seed": seed,
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
    def build(self) -> Any:
        gr = _gradio()
        d = self.defaults()
        choices = self.class_choices()

        def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
            def run(*args: Any) -> Any:
                try:
                    return fn(*args)
                except AppError as e:
                    raise gr.Error(str(e)) from None
                except Exception as e:  # noqa: BLE001 - the page gets a message, the log the traceback
                    log.exception("var-app: unexpected error")
                    raise gr.Error(
                        f"unexpected error ({type(e).__name__}: {e}); see the server log"
                    ) from None

            return run

        def sample_ui(classes, n, cfg, top_k, top_p, more_smooth, seed):
            try:
                for u in self.sample(classes, n, cfg, top_k, top_p, more_smooth, seed):
                    if not u["done"]:
                        yield u["progression"], None, None, "sampling ..."
                    else:
                        yield (u["progression"], u["grid"], u["files"],
                               f"done: {len(u['images'])} images. The same with the command line:\n\n`{u['settings']['same as']}`")  # fmt: skip
            except AppError as e:
                raise gr.Error(str(e)) from None
            except Exception as e:  # noqa: BLE001
                log.exception("var-app: unexpected error")
                raise gr.Error(f"unexpected error ({type(e).__name__}: {e}); see the server log") from None

        def edit_ui(editor, source, x0, y0, x1, y1, mode, klass, cfg, top_k, top_p, more_smooth, seed, n):
            out = self.edit(
                editor, source, [x0, y0, x1, y1], mode, klass, cfg, top_k, top_p, more_smooth, seed, n
            )
            panel = [(out["original"], "original"), (out["reconstruction"], "tokenizer reconstruction (kept regions match it)"),
                     (out["mask"], "mask: white = generated")]  # fmt: skip
            panel += [(img, f"result {i}") for i, img in enumerate(out["results"])]
            crop = out["settings"]["input_crop"]
            return (
                panel,
                out["files"],
                f"done: {len(out['results'])} {mode} result(s)" + (f"; note: {crop}" if crop else ""),
            )

        title = self.info.pretrained or Path(str(self.info.source)).name
        with gr.Blocks(title="var-app") as demo:
            gr.Markdown(f"## VAR: sampling and zero-shot editing\nmodel `{title}`: {self.var.num_classes} classes, "
                        f"{self.info.image_size} px, {len(self.var.patch_nums)} scales; {self.sampler_kind} sampler on {self.device}")  # fmt: skip
            with gr.Tab("Sample", elem_id="tab-sample"):
                with gr.Row():
                    with gr.Column(scale=1):
                        classes = gr.Dropdown(choices, value=choices[: min(4, len(choices))], multiselect=True,
                                              allow_custom_value=True, label="classes", elem_id="classes")  # fmt: skip
                        n = checked_input(
                            gr, gr.Number(4, precision=0, label="images per class", elem_id="num-per-class")
                        )
                        cfg = checked_input(
                            gr, gr.Number(d["cfg"], label="cfg (guidance, >= 0)", elem_id="cfg")
                        )
                        top_k = checked_input(
                            gr,
                            gr.Number(
                                d["top_k"],
                                precision=0,
                                label=f"top-k (0 = off, at most {self.var.V})",
                                elem_id="top-k",
                            ),
                        )
                        top_p = checked_input(
                            gr, gr.Number(d["top_p"], label="top-p in [0, 1] (0 or 1 = off)", elem_id="top-p")
                        )
                        smooth = gr.Checkbox(
                            d["more_smooth"], label="more smooth (pictures, not FID)", elem_id="more-smooth"
                        )
                        seed = checked_input(gr, gr.Number(0, precision=0, label="seed", elem_id="seed"))
                        go = gr.Button("Sample", variant="primary", elem_id="sample-btn")
                    with gr.Column(scale=2):
                        progression = gr.Gallery(label="coarse to fine (the first image, one per scale)", columns=len(self.var.patch_nums),
                                                 height=180, elem_id="progression")  # fmt: skip
                        grid = gr.Image(label="samples, one row per class", type="filepath", elem_id="grid")
                        status = gr.Markdown(elem_id="sample-status")
                        files = gr.File(
                            label="download: grid, settings.json, PNGs",
                            file_count="multiple",
                            elem_id="sample-files",
                        )
                go.click(
                    sample_ui,
                    [classes, n, cfg, top_k, top_p, smooth, seed],
                    [progression, grid, files, status],
                    api_name="sample",
                )
            with gr.Tab("Edit", elem_id="tab-edit"):
                with gr.Row():
                    with gr.Column(scale=1):
                        editor = checked_editor(gr, type="pil", sources=["upload"], label="image (brush: the region)",
                                                brush=gr.Brush(colors=["#ffffff"], default_size=24), elem_id="editor")  # fmt: skip
                        source = gr.Radio(
                            ["box", "brush"], value="box", label="region", elem_id="region-source"
                        )
                        with gr.Row():
                            x0 = checked_input(gr, gr.Number(0.25, label="box x0", elem_id="box-x0"))
                            y0 = checked_input(gr, gr.Number(0.25, label="box y0", elem_id="box-y0"))
                            x1 = checked_input(gr, gr.Number(0.75, label="box x1", elem_id="box-x1"))
                            y1 = checked_input(gr, gr.Number(0.75, label="box y1", elem_id="box-y1"))
                        mode = gr.Radio(list(MODES), value="inpaint", label="mode", elem_id="edit-mode")
                        klass = gr.Dropdown(choices, value=None, allow_custom_value=True, label="class (class-edit)",
                                            elem_id="edit-class")  # fmt: skip
                        e_cfg = checked_input(
                            gr, gr.Number(max(d["cfg"], 3.0), label="cfg (class-edit)", elem_id="edit-cfg")
                        )
                        e_top_k = checked_input(
                            gr, gr.Number(d["top_k"], precision=0, label="top-k", elem_id="edit-top-k")
                        )
                        e_top_p = checked_input(
                            gr,
                            gr.Number(
                                d["top_p"], label="top-p in [0, 1] (0 or 1 = off)", elem_id="edit-top-p"
                            ),
                        )
                        e_smooth = gr.Checkbox(True, label="more smooth", elem_id="edit-smooth")
                        e_seed = checked_input(
                            gr, gr.Number(0, precision=0, label="seed", elem_id="edit-seed")
                        )
                        e_n = checked_input(
                            gr, gr.Number(4, precision=0, label="variations", elem_id="edit-n")
                        )
                        e_go = gr.Button("Edit", variant="primary", elem_id="edit-btn")
                    with gr.Column(scale=2):
                        e_out = gr.Gallery(
                            label="original | reconstruction | mask | results",
                            columns=6,
                            height=260,
                            elem_id="edit-results",
                        )
                        e_status = gr.Markdown(elem_id="edit-status")
                        e_files = gr.File(
                            label="download: panel, edit.json, results",
                            file_count="multiple",
                            elem_id="edit-files",
                        )
                e_go.click(guard(edit_ui), [editor, source, x0, y0, x1, y1, mode, klass, e_cfg, e_top_k, e_top_p, e_smooth,
                                            e_seed, e_n], [e_out, e_files, e_status], api_name="edit")  # fmt: skip
        return demo

    def launch(
        self, host: str = "127.0.0.1", port: int = 7860, share: bool = False, block: bool = True,
        auth: list[tuple[str, str]] | None = None, blocked_paths: Sequence[str | Path] = (),
    ) -> Any:  # fmt: skip
        """Serve the page. Files: only ``out_dir`` (the results); ``blocked_paths`` are refused even when
        Gradio would otherwise serve them (the run folder's config and log beside the results)."""
        demo = self.build()
        demo.queue(default_concurrency_limit=1)
        try:
            demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=not block,
                        allowed_paths=[str(self.out_dir)], blocked_paths=[str(p) for p in blocked_paths],
                        auth=auth, auth_message="var-app: log in", quiet=not block)  # fmt: skip
        except OSError as e:
            raise AppError(
                f"cannot serve on {host}:{port} ({e}): the port is in use or the host is not this machine's; "
                f"choose another port=, or host=127.0.0.1"
            ) from None
        return demo


def _seed(value: Any) -> int:
    number = _int(value, "seed")
    if not 0 <= number <= MAX_SEED:
        raise AppError(f"seed must be in 0..{MAX_SEED}, got {number}")
    return number


def upload_error(err: Exception) -> str:
    """The page's message for an upload the image decoder cannot read (a text file named .png, a truncated
    file): what it is and what to do, not Gradio's generic error."""
    return (
        f"the uploaded file is not an image that can be read ({type(err).__name__}: {err}); upload a PNG, JPEG "
        f"or WebP image"
    )


def checked_editor(gr: Any, **kwargs: Any) -> Any:
    """A ``gr.ImageEditor`` whose upload decoding errors reach the page as :func:`upload_error`'s message."""
    return checked_input(gr, gr.ImageEditor(**kwargs), upload_error)


def checked_input(gr: Any, component: Any, message: Callable[[Exception], str] | None = None) -> Any:
    """``component`` with its input conversion errors shown as a message. Gradio converts an input in the
    component's ``preprocess`` (decoding an upload, rounding a number) before any callback of ours runs, and
    reports a failure there as ``{"error": null}`` (Infinity for a whole number through the API); so the
    check wraps that method of this one instance (a subclass would make Gradio write a .pyi stub into the
    installed package). Everything else is Gradio's own component."""
    convert = component.preprocess
    label = getattr(component, "label", None) or type(component).__name__

    def preprocess(payload: Any) -> Any:
        try:
            return convert(payload)
        except Exception as err:  # noqa: BLE001 - PIL and Gradio raise several kinds
            text = message(err) if message else f"{label}: {payload!r} is not a finite number"
            raise gr.Error(text) from None

    component.preprocess = preprocess
    return component


def _float(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise AppError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise AppError(f"{what} must be a finite number, got {value!r}")
    return number


def _int(value: Any, what: str, lo: int | None = None) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number: float = value
    else:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise AppError(f"{what} must be a whole number") from None
    try:
        whole = math.isfinite(number) and number == int(number)
    except OverflowError:
        whole = False
    if not whole:
        raise AppError(f"{what} must be a whole number, got {number:g}")
    if lo is not None and number < lo:
        raise AppError(f"{what} must be >= {lo}, got {int(number)}")
    return int(number)


def _pil(image_3HW: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8_hwc(image_3HW.unsqueeze(0).float().cpu())[0])
