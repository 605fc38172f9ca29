"""One class parser for every front end (``var-sample``, ``var-edit``, ``var-eval``, the web app): a class is
an id, the picker's ``"207: golden retriever"`` or a name (case, ``_`` and ``-`` ignored), checked against the
model's class count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _norm_name(name: Any) -> str:
    return " ".join(str(name).lower().replace("_", " ").replace("-", " ").split())


def parse_class(
    value: Any,
    class_names: Sequence[str] | None,
    num_classes: int,
    key: str | None = "class",
    what: str = "class",
) -> int:
    """The one class parser of every command and the app: an id (an int or digits), the app's picker text
    (``"207: golden retriever"``) or one of the model's class names (case, ``_``, ``-`` and spaces ignored).

    Errors name the value and, for commands, the key (``key``); the app passes ``key=None`` and a ``what``
    ("class to paint") instead."""
    said = f"{key}={value}" if key else f"{what} {str(value).strip()!r}"
    tail = f" (key {key})" if key else ""
    if value is None or isinstance(value, bool) or str(value).strip() == "":
        raise ValueError(f"{key}: no class given{tail}" if key else f"pick a {what}")
    text = str(value).strip()
    head = text.split(":", 1)[0].strip()
    if isinstance(value, int) or head.lstrip("-").isdigit():
        c = int(head)
    else:
        names = [_norm_name(n) for n in (class_names or [])]
        if not names:
            raise ValueError(
                f"{said}: this model stores no class names; give a class id 0..{num_classes - 1}{tail}"
            )
        if _norm_name(text) not in names:
            shown = ", ".join(repr(n) for n in list(class_names or [])[:20]) + (
                ", ..." if len(class_names or []) > 20 else ""
            )
            raise ValueError(
                f"{said} is neither a class id nor one of this model's class names ({shown}); give a name or an id"
                f"{tail}"
            )
        c = names.index(_norm_name(text))
    if not 0 <= c < num_classes:
        said = f"{key}={c}" if key else f"{what} {c}"
        raise ValueError(
            f"{said} is out of range: this model has {num_classes} classes (0..{num_classes - 1}){tail}"
        )
    return c


def check_classes(
    classes: Sequence[Any], num_classes: int, key: str = "classes", class_names: Sequence[str] | None = None
) -> list[int]:
    """A list of classes (ids or names, see :func:`parse_class`), each in range."""
    if isinstance(classes, (str, int)):
        classes = [classes]
    out = []
    for c in classes:
        try:
            out.append(parse_class(c, class_names, num_classes, key=None, what="class"))
        except ValueError as e:
            if "out of range" not in str(e):
                raise ValueError(f"{key}={list(classes)}: {e} (key {key})") from None
            out.append(int(str(c).split(":", 1)[0]))
    if not out:
        raise ValueError(f"{key}: no class given; pick at least one (key {key})")
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"{key}={out}: {bad[0]} is out of range; this model has {num_classes} classes (0..{num_classes - 1}) "
            f"(key {key})"
        )
    return out
