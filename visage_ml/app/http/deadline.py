"""A deadline on reading each request: uvicorn's HTTP/1.1 protocol (h11), closing slow clients.

uvicorn bounds the pause between two requests of a connection (its keep-alive timeout, 5 s) and
nothing else: a connection that sent half a request line and then nothing, or one byte every
few seconds, stayed open for good (each byte cancels the keep-alive timer, even one trickling
into a body the server had already answered). Whoever could reach the port, without a key,
could so hold connections until the server's file descriptors ran out and every camera,
operator and DPO was refused.

:class:`RequestDeadlineProtocol` starts a timer when a connection opens, and when the first byte
of a later request arrives after a keep-alive pause, and stops it once the request's line,
headers and body are all in (``serving.request_read_timeout_s``). It is a total deadline, not
an idle one: a steady trickle is closed as surely as silence. On expiry the connection is closed,
after a 408 when bytes of the request came but no answer was begun (a connection that sent
nothing is closed without one, as its client may be an idle pool), and the close is logged at
INFO without the client's address or the requested path. Answering is the server's time, not
the client's: the deadline is off from the moment the request is in until the next one begins.
The app's own ``serving.body_timeout_s`` answers a slow body first, with its message.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from visage_ml.config import ServingParams

logger = logging.getLogger(__name__)

MSG_REQUEST_TIMEOUT = (
    "the request was not received whole within {s:g} s (serving.request_read_timeout_s); "
    "send it at once"
)
LOG_CLOSED = (
    "closed a connection whose request was not received whole within %g s "
    "(serving.request_read_timeout_s)%s"
)
# A closed connection whose 408 has not left (a client that does not read, a TLS peer that
# does not answer the close) is aborted this many seconds later, not held for it.
CLOSE_GRACE_S = 1.0


def timeout_answer(seconds: float) -> bytes:
    """The 408 written on the socket: the API's error shape, and the connection closes."""
    body = json.dumps(
        {"error": {"code": "request_timeout", "message": MSG_REQUEST_TIMEOUT.format(s=seconds)}}
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class RequestDeadlineProtocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline on each request's line, headers and body."""

    # Set for a server by request_deadline_protocol (uvicorn builds one instance a connection).
    request_read_timeout_s: float = ServingParams.request_read_timeout_s

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: Any = None  # asyncio.TimerHandle while a request is being read
        self._abort: Any = None
        self._upgraded = False

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._track()

    def data_received(self, data: bytes) -> None:
        cycle, state = self.cycle, self.conn.their_state
        super().data_received(data)
        if state is h11.SEND_BODY and (
            self.conn.their_state is not h11.SEND_BODY or self.cycle is not cycle
        ):
            self._request_ended()
        self._track()

    def _request_ended(self) -> None:
        """A body still coming after its answer ended in these bytes: its timer is stopped, and
        the connection, idle now, gets uvicorn's keep-alive timeout (which uvicorn sets only as
        an answer completes). Kept running, the timer would have cut a next request short by
        the time the first had taken, and held the idle connection until then."""
        self._cancel()
        idle = self.conn.their_state is h11.IDLE and not self.conn.trailing_data[0]
        if idle and self.timeout_keep_alive_task is None and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The websocket protocol takes the connection over, with its own ping timeouts.
        self._upgraded = True
        self._cancel()
        super().handle_websocket_upgrade(event)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        if self._abort is not None:
            self._abort.cancel()
            self._abort = None
        super().connection_lost(exc)

    def _cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _track(self) -> None:
        """Run the timer while the server waits on the client for (the rest of) a request."""
        if self._upgraded or self.transport.is_closing():
            self._cancel()
            return
        state = self.conn.their_state
        # IDLE with the keep-alive timer set: a pause between requests, uvicorn's to end. IDLE
        # without it: a new connection, or bytes of a next request came (they cancel it).
        # SEND_BODY: the body is still coming, answered already or not.
        reading = state is h11.SEND_BODY or (
            state is h11.IDLE and self.timeout_keep_alive_task is None
        )
        if not reading:
            self._cancel()
        elif self._deadline is None:
            self._deadline = self.loop.call_later(self.request_read_timeout_s, self._expire)

    def _expire(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        begun = self.conn.their_state is h11.SEND_BODY or bool(self.conn.trailing_data[0])
        unanswered = self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)
        answered = begun and unanswered
        if answered:
            self.transport.write(timeout_answer(self.request_read_timeout_s))
        logger.info(LOG_CLOSED, self.request_read_timeout_s, " (answered 408)" if answered else "")
        self.transport.close()
        # close() waits for the 408 to be written (and over TLS for the client's close_notify).
        self._abort = self.loop.call_later(CLOSE_GRACE_S, self.transport.abort)


def request_deadline_protocol(timeout_s: float) -> type[RequestDeadlineProtocol]:
    """:class:`RequestDeadlineProtocol` with ``timeout_s`` as its deadline (uvicorn's ``http=``)."""
    return type(
        "RequestDeadlineProtocol",
        (RequestDeadlineProtocol,),
        {"request_read_timeout_s": float(timeout_s)},
    )


def connection_options(serving: ServingParams) -> dict[str, Any]:
    """uvicorn's arguments that bound what one connection may hold (``visage serve``'s).

    No ``limit_concurrency``: uvicorn counts every open connection against it, a slow one
    that never finished its request included, and answers the requests of everyone else with
    503 once it is reached (``/healthz`` too), so a few hundred slow connections would have
    refused every camera well before the file descriptors ran out. ``serving.max_concurrent``
    bounds the requests in flight instead, without the probes.
    """
    return {"http": request_deadline_protocol(serving.request_read_timeout_s)}
