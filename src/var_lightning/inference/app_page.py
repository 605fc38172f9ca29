"""The web app's page: a Sample tab and an Edit tab (Gradio Blocks) wired to a :class:`VarApp`'s callbacks.
Layout only; what each button does lives in :mod:`var_lightning.inference.webapp`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from var_lightning.inference.app_inputs import AppError, _gradio, checked_editor, checked_input
from var_lightning.transformer.editing import MODES

if TYPE_CHECKING:
    from var_lightning.inference.webapp import VarApp

log = logging.getLogger("var_lightning.inference.webapp")


def build_page(self: VarApp) -> Any:
    """The page (two tabs) wired to ``self``'s callbacks."""
    gr = _gradio()
    d = self.defaults()
    choices = self.class_choices()

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            try:
                return fn(*args)
            except AppError as e:  # the user's input: a message in the page, no traceback in the server log
                raise gr.Error(str(e), print_exception=False) from None
            except Exception as e:  # noqa: BLE001 - the page gets a message, the log the traceback
                log.exception("var-app: unexpected error")
                raise gr.Error(
                    f"unexpected error ({type(e).__name__}: {e}); see the server log", print_exception=False
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
            raise gr.Error(str(e), print_exception=False) from None
        except Exception as e:  # noqa: BLE001
            log.exception("var-app: unexpected error")
            raise gr.Error(
                f"unexpected error ({type(e).__name__}: {e}); see the server log", print_exception=False
            ) from None

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
                    cfg = checked_input(gr, gr.Number(d["cfg"], label="cfg (guidance, >= 0)", elem_id="cfg"))
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
                    source = gr.Radio(["box", "brush"], value="box", label="region", elem_id="region-source")
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
                        gr.Number(d["top_p"], label="top-p in [0, 1] (0 or 1 = off)", elem_id="edit-top-p"),
                    )
                    e_smooth = gr.Checkbox(True, label="more smooth", elem_id="edit-smooth")
                    e_seed = checked_input(gr, gr.Number(0, precision=0, label="seed", elem_id="edit-seed"))
                    e_n = checked_input(gr, gr.Number(4, precision=0, label="variations", elem_id="edit-n"))
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
