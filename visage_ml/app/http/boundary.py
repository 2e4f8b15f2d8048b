"""The ASGI boundary of the HTTP API: the outermost layer, so nothing escapes it unanswered.

For each request, in this order and before any route or body parser sees it:

1. an id (``X-Request-Id``);
2. the API key (``X-API-Key``, or ``Authorization: Bearer``) of every route, and of the public
   ones (``/healthz``) when one is presented: the client's failed attempts (429), the key (401,
   counted as a failed attempt), its expiry (401 ``key_expired``) and the route's roles (403;
   any role for a public route; 503 ``api_keys_unreadable`` while the key file cannot be
   read). The body has not
   been read: an unauthenticated client cannot make the server read, buffer or parse a byte of
   it, and a malformed body with a bad key is a failed login like any other;
3. a slot among ``serving.max_concurrent`` requests in flight (503 with ``Retry-After`` when
   none is free, so excess requests never queue behind the detector's lock; ``/healthz`` and
   ``/metrics`` take none);
4. the body, read whole within ``serving.body_timeout_s`` (408 otherwise) and refused past
   ``serving.max_request_bytes`` (413).

It answers an unexpected exception with a 500 (the server keeps running), and counts every
request in the metrics and writes it to the audit log (route templates, key ids and the method
as one of a fixed set, never a requested path, a client's own method token or an image), with
its duration except for analytics frames (:data:`UNTIMED_ROUTES`), but for those answered
without looking at a key (``/healthz`` without one, the failed-authentication limit's 429:
:data:`UNAUDITED_ERRORS`), which are counted only. A
refusal sent before the body was read closes the connection.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Match

from visage_ml.app.http.auth import ApiKeyFileError
from visage_ml.app.http.errors import ApiError, error_json, library_error
from visage_ml.app.http.service import Service, authorize
from visage_ml.privacy.ledger import api_key_actor, reset_actor, set_actor

logger = logging.getLogger(__name__)

# Routes answered without an API key (by route name).
PUBLIC_ROUTES: frozenset[str] = frozenset({"health"})
# Routes outside the bound on requests in flight: cheap, and needed most when the server is
# saturated (liveness probes, metric scrapes).
UNBOUNDED_ROUTES: frozenset[str] = frozenset({"health", "metrics"})
# Routes whose duration is neither observed in the metrics nor audited. An analytics frame's
# detection and demographic work grow with its faces, so each request's duration would tell
# the frame's number of faces to whoever reads /metrics or the audit log, while only closed
# windows are released (k-suppressed, optionally noisy). Summed over a window it would still
# give the exact total a window suppresses or noises, so no aggregate of it is kept either.
UNTIMED_ROUTES: frozenset[str] = frozenset({"analytics"})
# Refusals made before any key is looked at (the failed-authentication limit's 429): counted in
# the metrics, not written to the audit log. The log is kept whole, never rotated, and anchored
# in the signed ledger every serving.audit.anchor_every_lines lines, so a line per such request
# let anyone who can reach the port grow both without bound; the failed attempts that set the
# limit off (at most max_failures per client per window) are audited.
UNAUDITED_ERRORS: frozenset[str] = frozenset({"too_many_failed_attempts"})
BODY_METHODS: frozenset[str] = frozenset({"POST", "PUT", "PATCH"})
# Methods recorded by name in the metrics and the audit log. The method is the client's token
# (h11 accepts any), so anything else is recorded as OTHER_METHOD: no label value or audit
# field of a client's choosing, and a bounded number of metric series.
HTTP_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
OTHER_METHOD = "other"
# The endpoint and action recorded for a request no route matched (never the requested path).
UNMATCHED = "unmatched"
RETRY_AFTER_BUSY_S = 1

MSG_TOO_LARGE = "request body over {limit} bytes (serving.max_request_bytes); send a smaller image"
MSG_INTERNAL = "internal error; the request was not completed (see the server log, request {rid})"
MSG_BAD_LENGTH = "Content-Length is not a number"
MSG_DISCONNECTED = "client disconnected before sending the body"
MSG_BUSY = (
    "the server is answering {n} requests (serving.max_concurrent); retry in {s} s, or spread "
    "requests over more replicas"
)
MSG_BODY_TIMEOUT = (
    "the request body did not arrive within {s:g} s (serving.body_timeout_s); send it at once"
)

Roles = tuple[str, ...] | None  # the roles a route allows; None: any valid key
_ANY_KEY: Roles = None


class InFlight:
    """Requests in flight, refused past ``limit``.

    Thread-safe, not an asyncio primitive: a test client may run requests on several event
    loops at once, and a refused request must never wait.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.limit = int(limit)
        self._n = 0
        self._lock = threading.Lock()

    @property
    def current(self) -> int:
        """Requests in flight now."""
        return self._n

    def try_enter(self) -> bool:
        """Take a slot if one is free."""
        with self._lock:
            if self._n >= self.limit:
                return False
            self._n += 1
            return True

    def leave(self) -> None:
        """Give a slot back."""
        with self._lock:
            self._n -= 1


def presented_key(scope: dict[str, Any]) -> str | None:
    """The API key of a request: ``X-API-Key``, else an ``Authorization: Bearer`` credential."""
    headers = scope.get("headers") or []
    for name, value in headers:
        if name == b"x-api-key":
            return bytes(value).decode("latin-1")
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credential = bytes(value).decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credential.strip()
    return None


def method_label(scope: dict[str, Any]) -> str:
    """The request's method as recorded: one of :data:`HTTP_METHODS`, else ``"other"``.

    Methods are case-sensitive (RFC 9110): ``get`` is not ``GET`` and is recorded as other.
    """
    method = scope.get("method")
    return method if method in HTTP_METHODS else OTHER_METHOD


def route_roles(route: BaseRoute) -> Roles:
    """Roles a route's ``require(...)`` dependency allows (None: any valid key)."""
    stack = [getattr(route, "dependant", None)]
    while stack:
        dep = stack.pop()
        if dep is None:
            continue
        call = getattr(dep, "call", None)
        if call is not None and hasattr(call, "roles"):
            return call.roles
        stack.extend(getattr(dep, "dependencies", ()))
    return _ANY_KEY


class Boundary:
    """Outermost layer: nothing escapes it unanswered, and every request is counted and (but
    for those answered without looking at a key) audited.

    Parameters
    ----------
    app
        The wrapped ASGI app.
    service
        Returns the app's :class:`Service` (keys, limiter, metrics, audit).
    routes
        Returns the app's routes (matched here to know which roles a request needs).
    max_bytes
        ``serving.max_request_bytes``.
    in_flight
        The counter of requests in flight (``serving.max_concurrent``; the app's gauge reads it).
    body_timeout_s
        ``serving.body_timeout_s``.
    """

    def __init__(
        self,
        app: Any,
        *,
        service: Callable[[], Service],
        routes: Callable[[], Sequence[BaseRoute]],
        max_bytes: int,
        in_flight: InFlight,
        body_timeout_s: float,
    ) -> None:
        self.app = app
        self.service = service
        self.routes = routes
        self.max_bytes = max_bytes
        self.in_flight = in_flight
        self.body_timeout_s = float(body_timeout_s)
        self._table: list[tuple[BaseRoute, Roles, bool]] | None = None

    def _route(
        self, scope: dict[str, Any]
    ) -> tuple[BaseRoute | None, tuple[str, ...] | None, bool]:
        """The route a request goes to, the roles it needs, and whether it is public."""
        if self._table is None:
            self._table = [
                (r, route_roles(r), getattr(r, "name", None) in PUBLIC_ROUTES)
                for r in self.routes()
            ]
        for route, roles, public in self._table:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route, roles, public
        # Unknown path or method: a valid key of any role first, then the router's 404 / 405,
        # so a client without a key learns nothing of the API's surface.
        return None, _ANY_KEY, False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        # The audit's time is the request's arrival: stamped when the answer left, its second
        # would move with the request's duration (see UNTIMED_ROUTES).
        arrived = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rid = uuid.uuid4().hex[:16]
        info: dict[str, Any] = {"request_id": rid, "time": arrived}
        scope["visage"] = info
        state = {"status": 500, "started": False}
        has_body = scope["method"] in BODY_METHODS

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        async def answer(
            status: int, code: str, message: str, headers: dict[str, str] | None = None
        ) -> None:
            info["error"] = code
            if has_body:  # the body was not read: do not let the client send it on this socket
                headers = {**(headers or {}), "Connection": "close"}
            resp = error_json(status, code, message, headers)
            await resp(scope, receive, send_wrapper)

        slot = False
        actor = None
        try:
            route, roles, public = self._route(scope)
            if route is not None:
                info["route"] = route
            presented = presented_key(scope)
            # A public route answers without a key; a key presented to it is checked as on any
            # other route (it may be told more: /healthz's operating point). Without one, the
            # answer (liveness) is counted in the metrics only, as the limit's refusals are.
            info["unaudited"] = public and presented is None
            if not public or presented is not None:
                svc = self.service()
                try:
                    info["key"] = authorize(
                        svc,
                        client=svc.limiter.client_of(scope),
                        presented=presented,
                        roles=None if public else roles,
                        info=info,
                    )
                except ApiError as exc:
                    await answer(exc.status, exc.code, exc.message, exc.headers)
                    return
                except ApiKeyFileError as exc:
                    # No key can be checked (nor the client's attempt counted as failed): the
                    # operator mends the file, the client retries.
                    error = library_error(exc)
                    await answer(error.status, error.code, error.message, error.headers)
                    return
                if info.get("key_id"):
                    # Ledger entries this request causes name its API key as their actor.
                    actor = set_actor(api_key_actor(str(info["key_id"])))
            if getattr(route, "name", None) not in UNBOUNDED_ROUTES:
                slot = self.in_flight.try_enter()
                if not slot:
                    await answer(
                        503,
                        "busy",
                        MSG_BUSY.format(n=self.in_flight.limit, s=RETRY_AFTER_BUSY_S),
                        {"Retry-After": str(RETRY_AFTER_BUSY_S)},
                    )
                    return
            body_receive = await self._buffer(scope, receive)
            if isinstance(body_receive, tuple):
                await answer(*body_receive)
            else:
                await self.app(scope, body_receive, send_wrapper)
        except Exception:
            logger.exception("unhandled error answering request %s", rid)
            if not state["started"]:
                await answer(500, "internal_error", MSG_INTERNAL.format(rid=rid))
            state["status"] = 500
            info["error"] = info.get("error") or "internal_error"
        finally:
            if actor is not None:
                reset_actor(actor)
            if slot:
                self.in_flight.leave()
            if self._record(scope, info, state["status"], time.perf_counter() - t0):
                with contextlib.suppress(Exception):
                    await run_in_threadpool(self.service().audit.flush)

    async def _buffer(self, scope: dict[str, Any], receive: Any) -> Any:
        """Read the whole body (within the size and time limits) and return a replaying receive.

        Returns ``(status, code, message)`` instead when the body is refused.
        """
        if scope["method"] not in BODY_METHODS:
            return receive
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                return (400, "bad_request", MSG_BAD_LENGTH)
            if n > self.max_bytes:
                return (413, "request_too_large", MSG_TOO_LARGE.format(limit=self.max_bytes))
        chunks: list[bytes] = []
        total = 0
        try:
            with anyio.fail_after(self.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return (400, "bad_request", MSG_DISCONNECTED)
                    chunk = message.get("body", b"")
                    total += len(chunk)
                    if total > self.max_bytes:
                        return (
                            413,
                            "request_too_large",
                            MSG_TOO_LARGE.format(limit=self.max_bytes),
                        )
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            return (408, "body_timeout", MSG_BODY_TIMEOUT.format(s=self.body_timeout_s))
        body = b"".join(chunks)
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    def _record(self, scope: dict[str, Any], info: dict[str, Any], status: int, dt: float) -> bool:
        """Count and audit the request; returns whether the audit log wants an fsync."""
        try:
            svc = self.service()
        except Exception:  # the app failed before its service existed
            return False
        # The route object the app matched (its template and name, set by the app, never the
        # client's path), else one fixed value: an unmatched path creates no new label value.
        route = scope.get("route") or info.get("route")
        endpoint = getattr(route, "path", None) or UNMATCHED
        action = getattr(route, "name", None) or UNMATCHED
        method = method_label(scope)
        seconds = None if action in UNTIMED_ROUTES else dt
        try:
            svc.metrics.observe(
                endpoint=endpoint, method=method, outcome=str(status), seconds=seconds
            )
            if info.get("unaudited") or info.get("error") in UNAUDITED_ERRORS:
                return False
            return svc.audit.write(
                {
                    "time": info.get("time"),
                    "request_id": info.get("request_id"),
                    "key_id": info.get("key_id"),
                    "role": info.get("role"),
                    "action": action,
                    "method": method,
                    "pid": info.get("pid"),
                    "pids": info.get("pids"),
                    "status": status,
                    "error": info.get("error"),
                    "latency_ms": None if seconds is None else round(seconds * 1000.0, 3),
                }
            )
        except Exception:
            logger.exception("could not write the audit log or metrics")
            return False
