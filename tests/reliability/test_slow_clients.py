"""Slow clients: a connection that sends its request slowly, or never finishes it, is closed.

Without a deadline on reading a request, anyone who can reach the port (no key needed) could
hold connections for good: half a request line and then silence, or one byte every few seconds
(each under any idle timeout), until the server's file descriptors ran out and cameras,
operators and the DPO were refused. Each test runs the server `visage serve` starts (the app and
the uvicorn settings it passes, on a free loopback port) and speaks raw HTTP/1.1 to it.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import io
import json
import logging
import select
import socket
import time

import numpy as np
import pytest
from harness import make_site
from loadgen import run_server
from PIL import Image
from project_helpers import write_overrides
from serving_fakes import TILE
from typer.testing import CliRunner

DEADLINE = 1.5  # serving.request_read_timeout_s in these tests
BODY_TIMEOUT = 1.0  # serving.body_timeout_s: below the deadline, as params require
TRICKLE = 0.3  # seconds between two bytes: far under any idle timeout (keep-alive is 5 s)
LIMITS = {"serving.request_read_timeout_s": DEADLINE, "serving.body_timeout_s": BODY_TIMEOUT}


def serve_options(monkeypatch, app) -> dict:
    """The uvicorn arguments `visage serve` passes, for ``app``."""
    from visage_ml.app.cli import app as cli
    from visage_ml.app.http import app as app_mod

    runs = []
    monkeypatch.setattr(app_mod, "create_app", lambda *a, **kw: app)
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: runs.append(kw))
    r = CliRunner().invoke(cli, ["serve"])
    assert r.exit_code == 0, r.output
    return runs[-1]


@pytest.fixture
def served(project, monkeypatch):
    """A served project (two subjects enrolled) under `visage serve`'s uvicorn settings."""
    write_overrides(project / "params.yaml", LIMITS)
    site = make_site(project, enrol=2)
    options = serve_options(monkeypatch, site.build_app())
    with run_server(site.app, options) as port:
        yield site, port


def held(
    port: int, chunks: list[bytes], *, every: float, watch: float
) -> tuple[float | None, bytes]:
    """Send ``chunks`` one every ``every`` seconds and watch for ``watch`` seconds.

    Returns the seconds after connecting at which the server closed the connection (None: still
    open at the end) and everything it answered.
    """
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        t0 = time.monotonic()
        due = t0
        pending = list(chunks)
        while (now := time.monotonic()) - t0 < watch:
            try:
                if pending and now >= due:
                    sock.sendall(pending.pop(0))
                    due = now + every
                readable, _, _ = select.select([sock], [], [], 0.02)
                if readable:
                    data = sock.recv(65536)
                    if not data:
                        return time.monotonic() - t0, answer
                    answer += data
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - t0, answer
    return None, answer


def bytewise(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: visage\r\n"
HEALTH_WITH_BODY = HEALTH + b"Content-Length: 1000\r\n\r\n"


def identify_head(key: str, length: int) -> bytes:
    return (
        b"POST /v1/identify HTTP/1.1\r\nHost: visage\r\nContent-Type: application/json\r\n"
        b"X-API-Key: " + key.encode() + b"\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("chunks", "answer"),
    [
        pytest.param([], b"", id="connects-and-sends-nothing"),
        pytest.param([HEALTH[:20]], b"HTTP/1.1 408 ", id="half-a-request-line"),
        pytest.param([HEALTH + b"X-Pad: a"], b"HTTP/1.1 408 ", id="headers-never-end"),
        pytest.param([HEALTH_WITH_BODY, b"x" * 500], b"HTTP/1.1 200 ", id="body-stops-halfway"),
    ],
)
def test_a_request_that_stops_halfway_is_closed_at_the_deadline(served, chunks, answer, caplog):
    _, port = served
    caplog.set_level(logging.INFO)
    closed, reply = held(port, chunks, every=0.0, watch=2 * DEADLINE + 1)
    assert closed is not None, f"still open {2 * DEADLINE + 1} s later: {reply[:100]!r}"
    assert DEADLINE - 0.3 < closed < 2 * DEADLINE, closed
    assert reply.startswith(answer), reply[:200]
    if answer.startswith(b"HTTP/1.1 408"):
        assert b"serving.request_read_timeout_s" in reply, reply
    # Logged once, at INFO, without the client's address or port or the requested path.
    logged = [r for r in caplog.records if r.name.startswith("visage_ml")]
    assert [r.levelno for r in logged] == [logging.INFO], [r.getMessage() for r in logged]
    message = logged[0].getMessage()
    assert message.startswith("closed a connection") and "request_read_timeout_s" in message
    assert "127.0.0.1" not in message and "healthz" not in message


def test_an_authenticated_body_that_stops_gets_the_body_s_own_408_first(served):
    site, port = served
    head = identify_head(site.keys["operator"], 1000)
    closed, reply = held(port, [head, b'{"image": "'], every=0.0, watch=2 * DEADLINE + 1)
    assert closed is not None and closed < DEADLINE, closed
    assert reply.startswith(b"HTTP/1.1 408 ") and b"serving.body_timeout_s" in reply, reply


@pytest.mark.parametrize(
    ("head", "trickled"),
    [
        pytest.param(b"", HEALTH + b"X-Pad: " + b"a" * 100, id="headers-trickle"),
        pytest.param(HEALTH_WITH_BODY, b"x" * 100, id="body-trickles-after-the-answer"),
    ],
)
def test_a_request_that_trickles_in_is_closed_at_the_deadline_however_steady(
    served, head, trickled
):
    """One byte every TRICKLE seconds keeps any idle timer quiet: the deadline is on the whole
    request."""
    _, port = served
    chunks = ([head] if head else []) + bytewise(trickled)
    closed, reply = held(port, chunks, every=TRICKLE, watch=2 * DEADLINE + 1)
    assert closed is not None, f"still open {2 * DEADLINE + 1} s later: {reply[:100]!r}"
    assert DEADLINE - 0.3 < closed < 2 * DEADLINE, closed
    assert reply.startswith(b"HTTP/1.1 408 " if not head else b"HTTP/1.1 200 "), reply[:200]


def large_photo(site) -> bytes:
    """A JSON identify body of several MB: a subject's face in a corner of a 1280 px frame of
    faint noise (too dark to be a face), stored uncompressed."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 8, size=(1280, 1280, 3), dtype=np.uint8)
    frame[:TILE, :TILE] = site.world.photo(site.pids[0])[0]
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG", compress_level=0)
    return json.dumps({"image": base64.b64encode(buf.getvalue()).decode()}).encode()


def test_normal_requests_large_uploads_and_kept_alive_connections_still_succeed(served):
    site, port = served
    body = large_photo(site)
    assert len(body) > 5_000_000
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"X-API-Key": site.keys["operator"], "Content-Type": "application/json"}
    conn.request("GET", "/healthz")
    first = conn.sock
    r = conn.getresponse()
    assert r.status == 200 and json.loads(r.read())["status"]
    # A large upload at loopback speed, on the same connection.
    conn.request("POST", "/v1/identify", body=body, headers=headers)
    r = conn.getresponse()
    doc = json.loads(r.read())
    assert r.status == 200, doc
    assert site.pids[0] in json.dumps(doc)
    # Idle between requests (under keep-alive) for longer than the deadline in all: the deadline
    # is each request's, not the connection's.
    for _ in range(3):
        time.sleep(DEADLINE * 0.6)
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert r.status == 200
        r.read()
    assert conn.sock is first
    conn.close()


def test_an_answer_that_takes_longer_than_the_deadline_is_not_cut(project, monkeypatch):
    """The deadline is on the client's sending: a slow answer (a long identification) is the
    server's time, and a body sent at a steady pace within the deadline is read whole."""

    async def slow_app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await asyncio.sleep(2 * DEADLINE)
        answer = b"%d" % len(body)
        length = [(b"content-length", b"%d" % len(answer))]
        await send({"type": "http.response.start", "status": 200, "headers": length})
        await send({"type": "http.response.body", "body": answer})

    write_overrides(project / "params.yaml", LIMITS)
    options = serve_options(monkeypatch, slow_app)
    with run_server(slow_app, options) as port:
        head = b"POST /x HTTP/1.1\r\nHost: visage\r\nContent-Length: 4000\r\n\r\n"
        closed, reply = held(
            port, [head] + [b"y" * 1000] * 4, every=DEADLINE / 8, watch=3 * DEADLINE
        )
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"4000"), reply
        assert closed is None  # kept alive for the next request


def test_a_request_after_a_body_sent_past_its_answer_gets_its_own_deadline(served):
    """A request answered before its body was in (``/healthz`` reads none), the body then sent
    whole, and a next request on the same connection: that one is given the full deadline from
    its own first byte, not what was left of the first request's (it was answered 408 a moment
    after it began), and the connection idles under the keep-alive timeout meanwhile."""
    _, port = served
    every = 0.4 * DEADLINE
    line = b"GET /healthz HTTP/1.1\r\n"
    chunks = [HEALTH_WITH_BODY, b"x" * 1000, line, b"Host: visage\r\n\r\n"]
    closed, reply = held(port, chunks, every=every, watch=len(chunks) * every + 0.5)
    assert b"HTTP/1.1 408" not in reply, reply
    assert reply.count(b"HTTP/1.1 200 ") == 2, reply
    assert closed is None
