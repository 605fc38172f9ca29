"""The web app's inputs, checked: numbers (finite, whole where they must be, seeds in range) and uploads
(decodable images, at most :data:`MAX_UPLOAD_MB` megabytes and :data:`MAX_MEGAPIXELS` megapixels, read from
the header before anything is decoded), each failure an :class:`AppError` or a ``gr.Error`` whose message
the page shows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from var_lightning.seeds import MAX_SEED

MAX_UPLOAD_MB = 20
"""The largest upload the server accepts (Gradio's ``max_file_size``): a photo, not an archive."""
MAX_MEGAPIXELS = 40
"""The largest image the app decodes (about 6300 x 6300). The model works at 256 or 512 pixels; a small PNG
can declare 12000 x 12000 pixels and take gigabytes once decoded, so the size is read from the header first."""


class AppError(ValueError):
    """A bad input; its message is shown in the page."""


def _gradio() -> Any:
    try:
        import gradio as gr
    except ImportError as e:
        raise ImportError(
            "var-app needs gradio: pip install 'var-lightning[app]' (or pip install 'gradio>=5')"
        ) from e
    return gr


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


def check_image_size(width: int, height: int) -> None:
    """Refuse an image of more than :data:`MAX_MEGAPIXELS` megapixels, by its size."""
    if width * height > MAX_MEGAPIXELS * 1_000_000:
        raise AppError(
            f"the image is {width} x {height} pixels ({width * height / 1e6:.0f} megapixels); the app takes at most "
            f"{MAX_MEGAPIXELS} megapixels. The model works at a few hundred pixels: downscale it first (e.g. to "
            f"2048 pixels on the longer side)"
        )


def _upload_files(payload: Any, blobs: Any = None) -> list[Any]:
    """The uploaded images of an ImageEditor payload: file paths, or bytes held in the component's store."""
    if payload is None:
        return []
    source = payload
    if getattr(payload, "id", None) is not None and blobs is not None:
        source = blobs.get(payload.id) or payload
    items = [getattr(source, "background", None), *(getattr(source, "layers", None) or []),
             getattr(source, "composite", None)]  # fmt: skip
    out = []
    for item in items:
        path = item.get("path") if isinstance(item, dict) else getattr(item, "path", None)
        if isinstance(item, bytes | bytearray):
            out.append(item)
        elif path:
            out.append(str(path))
    return out


def check_upload(payload: Any, blobs: Any = None) -> None:
    """Each uploaded image's bytes and pixel count, before it is decoded (PIL reads only the header)."""
    import io
    import os

    from PIL import Image

    for item in _upload_files(payload, blobs):
        size = len(item) if isinstance(item, bytes | bytearray) else os.path.getsize(item)
        if size > MAX_UPLOAD_MB * 1_000_000:
            raise AppError(
                f"the upload is {size / 1e6:.0f} MB; the app takes images of at most {MAX_UPLOAD_MB} MB"
            )
        try:
            with Image.open(io.BytesIO(item) if isinstance(item, bytes | bytearray) else item) as im:
                width, height = im.size
        except Exception:  # noqa: BLE001 - not an image: the decoder's own message follows (upload_error)
            continue
        check_image_size(width, height)


def checked_editor(gr: Any, **kwargs: Any) -> Any:
    """A ``gr.ImageEditor`` whose uploads are checked for size first (:func:`check_upload`) and whose decoding
    errors reach the page as :func:`upload_error`'s message."""
    editor = gr.ImageEditor(**kwargs)
    return checked_input(
        gr, editor, upload_error, guard=lambda p: check_upload(p, getattr(editor, "blob_storage", None))
    )


def checked_input(
    gr: Any,
    component: Any,
    message: Callable[[Exception], str] | None = None,
    guard: Callable[[Any], None] | None = None,
) -> Any:
    """``component`` with its input conversion errors shown as a message. Gradio converts an input in the
    component's ``preprocess`` (decoding an upload, rounding a number) before any callback of ours runs, and
    reports a failure there as ``{"error": null}`` (Infinity for a whole number through the API); so the
    check wraps that method of this one instance (a subclass would make Gradio write a .pyi stub into the
    installed package). ``guard(payload)`` runs first; an :class:`AppError` it raises is the message.
    Everything else is Gradio's own component."""
    convert = component.preprocess
    label = getattr(component, "label", None) or type(component).__name__

    def preprocess(payload: Any) -> Any:
        if guard is not None:
            try:
                guard(payload)
            except AppError as err:
                raise gr.Error(str(err), print_exception=False) from None
        try:
            return convert(payload)
        except Exception as err:  # noqa: BLE001 - PIL and Gradio raise several kinds
            text = message(err) if message else f"{label}: {payload!r} is not a finite number"
            raise gr.Error(text, print_exception=False) from None

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
