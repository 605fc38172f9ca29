"""The web app's inputs, checked: numbers (finite, whole where they must be, seeds in range) and uploads
(decodable images), each failure an :class:`AppError` or a ``gr.Error`` whose message the page shows."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from var_lightning.seeds import MAX_SEED


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
