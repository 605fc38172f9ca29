"""The web app as a server (Gradio, no browser): beyond localhost it needs a login, it serves only its results
(not the run folder's config and log), bad serving options are refused by name, and an unreadable upload gets
our message. Skipped where gradio is not installed (``make test`` installs it)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.helpers import compose_config
from tests.unit.test_webapp import ckpt  # noqa: F401 - the tiny VAR checkpoint fixture
from var_lightning.cli.app import serve
from var_lightning.inference.app_inputs import AppError
from var_lightning.inference.app_serving import AUTH_ENV, resolve_auth

gr = pytest.importorskip("gradio")
httpx = pytest.importorskip("httpx")


def compose_app(overrides: list[str]):
    return compose_config("app", overrides)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_folder(tmp_path: Path) -> Path:
    """What Hydra leaves in a var-app run folder before the app starts."""
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("ckpt_path: /home/alice/secret/project/last.ckpt\n")
    (run / "app.log").write_text("private log\n")
    return run


def test_beyond_localhost_a_login_is_required_and_only_results_are_served(ckpt, tmp_path, monkeypatch):  # noqa: F811
    run = run_folder(tmp_path)
    port = free_port()
    cfg = compose_app([f"ckpt_path={ckpt}", "host=0.0.0.0", f"port={port}", "device=cpu"])
    monkeypatch.delenv(AUTH_ENV, raising=False)
    with pytest.raises(
        AppError, match=r"host=0.0.0.0 serves every machine .* no login.*VAR_APP_AUTH=user:password"
    ):
        serve(cfg, run, block=False)
    assert not (run / "results").exists()  # refused before loading the model
    monkeypatch.setenv(AUTH_ENV, "alice:s3cret")
    demo = serve(cfg, run, block=False)
    try:
        result = run / "results" / "sample-x" / "grid.png"
        result.parent.mkdir(parents=True)
        result.write_bytes(b"\x89PNG fake")
        base = f"http://127.0.0.1:{port}"

        def file_url(path: Path) -> str:
            return f"{base}/gradio_api/file={path}"

        assert httpx.get(file_url(result)).status_code in (401, 403)  # no login
        with httpx.Client() as wrong:
            assert (
                wrong.post(f"{base}/login", data={"username": "alice", "password": "nope"}).status_code >= 400
            )
            assert wrong.get(file_url(result)).status_code in (401, 403)
        with httpx.Client() as client:
            assert (
                client.post(f"{base}/login", data={"username": "alice", "password": "s3cret"}).status_code
                == 200
            )
            assert client.get(file_url(result)).content == b"\x89PNG fake"  # the results are served
            for private in (run / ".hydra" / "config.yaml", run / "app.log"):
                response = client.get(file_url(private))
                assert (
                    response.status_code >= 400
                    and b"secret" not in response.content
                    and b"private" not in response.content
                )
    finally:
        demo.close()


def test_serving_options_are_checked_before_loading(ckpt, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.delenv(AUTH_ENV, raising=False)
    run = run_folder(tmp_path)
    with pytest.raises(AppError, match=r"port=80000 is out of range: use 1..65535"):
        serve(compose_app([f"ckpt_path={ckpt}", "port=80000"]), run, block=False)
    with pytest.raises(AppError, match=r"share=true makes a public gradio.live link"):
        serve(compose_app([f"ckpt_path={ckpt}", "share=true"]), run, block=False)
    # insecure=true is the explicit opt-in; a loopback host never needs a login
    assert resolve_auth("0.0.0.0", False, True) is None and resolve_auth("127.0.0.1", False, False) is None
    logins = tmp_path / "logins"
    logins.write_text("# team\nalice:pw:with:colons\n\nbob:x\n")
    assert resolve_auth("0.0.0.0", False, False, str(logins), environ={}) == [
        ("alice", "pw:with:colons"),
        ("bob", "x"),
    ]
    logins.write_text("alice\n")
    with pytest.raises(AppError, match=r"auth_file=.* line 1 is not user:password"):
        resolve_auth("0.0.0.0", False, False, str(logins), environ={})
    with pytest.raises(AppError, match=r"auth_file=.*missing: no such file"):
        resolve_auth("0.0.0.0", False, False, str(tmp_path / "missing"), environ={})
    # a port already taken is named, not a traceback
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(AppError, match=rf"cannot serve on 127.0.0.1:{port}.*choose another port="):
            serve(compose_app([f"ckpt_path={ckpt}", f"port={port}", "device=cpu"]), run, block=False)


def test_an_upload_that_is_not_an_image_gets_our_message(ckpt, tmp_path):  # noqa: F811
    from var_lightning.inference.app_inputs import checked_editor

    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    editor = checked_editor(gr, type="pil")
    payload = editor.data_model(background={"path": str(text)}, layers=[], composite={"path": str(text)})
    with pytest.raises(gr.Error) as err:
        editor.preprocess(payload)
    message = str(err.value.message)
    assert message.startswith("the uploaded file is not an image that can be read (")
    assert message.endswith("upload a PNG, JPEG or WebP image")


def test_bad_values_through_the_api_get_a_message(ckpt, tmp_path, monkeypatch, capfd):  # noqa: F811
    """The page's own HTTP API (what scripts call, with JSON's NaN / Infinity literals): NaN, Infinity, a cfg
    of 1e308 and a seed of 2**70 come back as our messages (not ``{"error": null}`` or an "unexpected error"),
    the server log gets no traceback for them, and the app keeps serving."""
    import json

    monkeypatch.delenv(AUTH_ENV, raising=False)
    port = free_port()
    demo = serve(compose_app([f"ckpt_path={ckpt}", f"port={port}", "device=cpu"]), run_folder(tmp_path),
                 block=False)  # fmt: skip
    base = f"http://127.0.0.1:{port}/gradio_api/call/sample"

    def call(*data) -> tuple[str, str]:
        body = json.dumps({"data": list(data)})  # Python writes NaN / Infinity as JSON literals
        event = httpx.post(base, content=body, headers={"content-type": "application/json"}).json()[
            "event_id"
        ]
        lines = httpx.get(f"{base}/{event}", timeout=120).text.strip().splitlines()
        kind = [line.split(": ", 1)[1] for line in lines if line.startswith("event:")][
            -1
        ]  # after "generating"
        return kind, lines[-1].split(": ", 1)[1]

    try:
        for data, message in [
            ((["1"], 1, float("nan"), 0, 1.0, False, 0), "cfg must be a finite number, got nan"),
            ((["1"], 1, 1.5, float("inf"), 1.0, False, 0), "is not a finite number"),
            ((["1"], 1, 1.5, 0, float("-inf"), False, 0), "top-p must be a finite number"),
            (
                (["1"], 1, 1.5, 0, 1.0, False, 2**70),
                "seed must be in 0..4294967295, got 1180591620717411303424",
            ),
            ((["1"], 1, 1e308, 0, 1.0, False, 0), "cfg=1e+308 is too large: guidance above 100 overflows"),
        ]:
            kind, payload = call(*data)
            assert kind == "error" and message in (json.loads(payload).get("error") or ""), payload
        kind, payload = call(["1: green"], 1, 1.5, 0, 1.0, False, 0)  # still serving
        assert kind == "complete" and "done: 1 images" in payload
        logged = capfd.readouterr()
        assert "Traceback" not in logged.err + logged.out
    finally:
        demo.close()


def declared_png(path: Path, width: int, height: int) -> Path:
    """A PNG file whose header declares ``width`` x ``height`` pixels (what a decompression bomb shows the
    decoder first); a few dozen bytes on disk."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_an_upload_too_large_to_decode_is_refused_before_decoding(ckpt, tmp_path, monkeypatch):  # noqa: F811
    """A 12000 x 12000 PNG (a small file that decodes to gigabytes) and a 21 MB upload get our message from
    the upload's header and size; nothing is decoded. The server refuses larger uploads itself."""
    from PIL import Image

    from var_lightning.inference.app_inputs import MAX_UPLOAD_MB, checked_editor

    decoded = []
    monkeypatch.setattr(Image.Image, "load", lambda self, *a: decoded.append(self.size))
    editor = checked_editor(gr, type="pil")
    bomb = declared_png(tmp_path / "bomb.png", 12000, 12000)
    payload = editor.data_model(background={"path": str(bomb)}, layers=[], composite={"path": str(bomb)})
    with pytest.raises(gr.Error) as err:
        editor.preprocess(payload)
    assert "12000 x 12000 pixels (144 megapixels); the app takes at most 40 megapixels" in str(
        err.value.message
    )
    assert decoded == []
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate((MAX_UPLOAD_MB + 1) * 1_000_000)  # sparse: no 21 MB written
    payload = editor.data_model(background={"path": str(big)}, layers=[], composite=None)
    with pytest.raises(
        gr.Error, match=f"the upload is 21 MB; the app takes images of at most {MAX_UPLOAD_MB} MB"
    ):
        editor.preprocess(payload)


def test_the_server_refuses_an_upload_over_the_limit(ckpt, tmp_path, monkeypatch):  # noqa: F811
    from var_lightning.inference.app_inputs import MAX_UPLOAD_MB

    monkeypatch.delenv(AUTH_ENV, raising=False)
    port = free_port()
    demo = serve(compose_app([f"ckpt_path={ckpt}", f"port={port}", "device=cpu"]), run_folder(tmp_path),
                 block=False)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/gradio_api/upload"
        small = httpx.post(url, files={"files": ("a.png", b"x" * 1000)}, timeout=60)
        big = httpx.post(url, files={"files": ("b.png", b"x" * (MAX_UPLOAD_MB * 1_000_000 + 1))}, timeout=60)
        assert small.status_code == 200 and big.status_code == 413, (small.status_code, big.status_code)
    finally:
        demo.close()


def test_password_guessing_is_slowed_then_locked():
    """Five wrong passwords for a name within five minutes lock it for five minutes (its right password
    too); each wrong answer waits; the lock ends by itself; another name is not affected."""
    import asyncio
    import inspect
    import time

    from var_lightning.inference.app_serving import LoginGuard

    now = [1000.0]
    guard = LoginGuard([("alice", "s3cret"), ("bob", "pw")], delay_s=0.05, clock=lambda: now[0])
    check = lambda u, p: asyncio.run(guard.check(u, p))  # noqa: E731
    assert inspect.iscoroutinefunction(guard.check)  # what Gradio awaits (anything else reads as a yes)
    assert check("alice", "s3cret")
    t0 = time.perf_counter()
    assert not check("alice", "nope")
    assert time.perf_counter() - t0 >= 0.05  # a wrong password is answered late
    for _ in range(4):
        now[0] += 1
        assert not check("alice", "guess")
    assert guard.locked("alice") and not check("alice", "s3cret")  # locked: even the right one
    assert check("bob", "pw")
    now[0] += 301
    assert check("alice", "s3cret")  # the lock ends
    quick = LoginGuard([("alice", "s3cret")], delay_s=0.0, clock=lambda: now[0])
    for i in range(1200):  # guesses under ever new names do not grow the server's memory without bound
        now[0] += 1
        asyncio.run(quick.check(f"user{i}", "x"))
    assert len(quick._failures) <= 1001


def test_the_served_page_locks_a_guessed_login(ckpt, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv(AUTH_ENV, "alice:s3cret")
    port = free_port()
    demo = serve(compose_app([f"ckpt_path={ckpt}", "host=0.0.0.0", f"port={port}", "device=cpu"]),
                 run_folder(tmp_path), block=False)  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=60) as client:
            for _ in range(5):
                assert (
                    client.post(f"{base}/login", data={"username": "alice", "password": "x"}).status_code
                    >= 400
                )
            assert (
                client.post(f"{base}/login", data={"username": "alice", "password": "s3cret"}).status_code
                >= 400
            )
    finally:
        demo.close()
