"""Serving the web app beyond this machine safely: the port, and the login Gradio checks. A login comes from
the ``VAR_APP_AUTH`` environment variable or an ``auth_file`` (never the command line, where shell history and
``ps`` keep it); a host other than loopback, or a public share link, without one is refused unless
``insecure=true``. Gradio checks a login through :class:`LoginGuard`, which slows and then locks password
guessing."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from var_lightning.inference.app_inputs import AppError

log = logging.getLogger("var_lightning.inference.webapp")


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


class LoginGuard:
    """Gradio's login check (``auth=LoginGuard(logins).check``) with a brake on guessing: each wrong password is
    answered after ``delay_s`` seconds (without blocking the server), and ``max_failures`` wrong passwords
    for one user name within ``window_s`` seconds lock that name for ``lock_s`` seconds, its right password
    included; both are logged. Passwords are compared in constant time."""

    def __init__(
        self, logins: Sequence[tuple[str, str]], max_failures: int = 5, window_s: float = 300.0,
        lock_s: float = 300.0, delay_s: float = 1.0, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.logins = {user: password for user, password in logins}
        self.max_failures, self.window_s, self.lock_s, self.delay_s = max_failures, window_s, lock_s, delay_s
        self.clock = clock
        self._failures: dict[str, list[float]] = {}
        self._locked_until: dict[str, float] = {}

    def locked(self, username: str) -> bool:
        return self.clock() < self._locked_until.get(username, float("-inf"))

    async def check(self, username: str, password: str) -> bool:
        """The ``auth`` Gradio awaits (a coroutine function: Gradio awaits only what
        ``inspect.iscoroutinefunction`` recognises, and would take an un-awaited coroutine for a yes)."""
        now = self.clock()
        if self.locked(username):
            log.warning("login as %r refused: locked after %d wrong passwords", username, self.max_failures)
            return False
        expected = self.logins.get(username)
        if expected is not None and hmac.compare_digest(password.encode(), expected.encode()):
            self._failures.pop(username, None)
            return True
        recent = [t for t in self._failures.get(username, []) if now - t < self.window_s] + [now]
        self._failures[username] = recent
        if len(self._failures) > 1000:  # many names tried: forget those with no failure in the window
            self._failures = {u: ts for u, ts in self._failures.items() if now - ts[-1] < self.window_s}
            self._locked_until = {u: t for u, t in self._locked_until.items() if t > now}
        if len(recent) >= self.max_failures:
            self._locked_until[username] = now + self.lock_s
            self._failures.pop(username, None)
            log.warning("%d wrong passwords for %r within %.0f s: logins as %r are locked for %.0f s",
                        len(recent), username, self.window_s, username, self.lock_s)  # fmt: skip
        await asyncio.sleep(self.delay_s)
        return False


def _login(text: str, where: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise AppError(f"{where} is not user:password (a user name, a colon, a non-empty password)")
    return user.strip(), password
