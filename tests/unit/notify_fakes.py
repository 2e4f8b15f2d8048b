"""Real receivers on loopback for the notification tests: an SMTP server (aiosmtpd) and an HTTP
webhook receiver (http.server). Not a test module."""

from __future__ import annotations

import email
import email.policy
import http.server
import socket
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from aiosmtpd.controller import Controller


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Mail:
    to: list[str]
    subject: str
    body: str
    message_id: str


class _Sink:
    def __init__(self) -> None:
        self.mails: list[Mail] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.mails.append(
            Mail(
                list(envelope.rcpt_tos),
                str(msg["Subject"]),
                msg.get_content(),
                str(msg["X-Visage-Message-Id"]),
            )
        )
        return "250 Message accepted for delivery"


class SmtpServer:
    """aiosmtpd on 127.0.0.1:<free port>; ``mails`` holds what arrived."""

    def __init__(self) -> None:
        self.port = free_port()
        self._sink = _Sink()
        self._controller = Controller(self._sink, hostname="127.0.0.1", port=self.port)

    @property
    def mails(self) -> list[Mail]:
        return self._sink.mails

    def __enter__(self) -> SmtpServer:
        self._controller.start()
        return self

    def __exit__(self, *exc) -> None:
        self._controller.stop()


@dataclass
class Hook:
    body: bytes
    headers: dict[str, str]


@dataclass
class WebhookServer:
    """A local HTTP receiver; answers 503 to the first ``fail_first`` posts."""

    fail_first: int = 0
    received: list[Hook] = field(default_factory=list)
    refused: int = 0

    def __post_init__(self) -> None:
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.refused < outer.fail_first:
                    outer.refused += 1
                    self.send_response(503)
                    self.end_headers()
                    return
                outer.received.append(Hook(body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def __enter__(self) -> WebhookServer:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class SimClock:
    """A simulated UTC clock: ``now()`` for libraries, ``iso()`` for the ledger's stamps."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = (start or datetime.now(UTC)).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.t

    def iso(self) -> str:
        return self.t.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def advance(self, **kw: float) -> None:
        self.t += timedelta(**kw)
