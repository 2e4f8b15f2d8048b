"""The ASGI boundary of the HTTP API: the outermost layer, so nothing escapes it unanswered.

It gives each request an id (``X-Request-Id``), reads the body whole and refuses it past
``serving.max_request_bytes`` before any route sees it, answers an unexpected exception with a
500 (the server keeps running), and counts every request in the metrics and writes it to the
audit log (route templates and key ids, never a requested path or an image).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

from visage_ml.app.http.errors import error_json
from visage_ml.app.http.service import Service

logger = logging.getLogger(__name__)

MSG_TOO_LARGE = "request body over {limit} bytes (serving.max_request_bytes); send a smaller image"
MSG_INTERNAL = "internal error; the request was not completed (see the server log, request {rid})"
MSG_BAD_LENGTH = "Content-Length is not a number"
MSG_DISCONNECTED = "client disconnected before sending the body"


class Boundary:
    """Outermost layer: nothing escapes it unanswered, and every request is counted and audited."""

    def __init__(self, app: Any, *, service: Callable[[], Service], max_bytes: int) -> None:
        self.app = app
        self.service = service
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = uuid.uuid4().hex[:16]
        info: dict[str, Any] = {"request_id": rid}
        scope["visage"] = info
        state = {"status": 500, "started": False}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid.encode())]
            await send(message)

        async def answer(status: int, code: str, message: str) -> None:
            info["error"] = code
            resp = error_json(status, code, message)
            await resp(scope, receive, send_wrapper)

        try:
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
            if self._record(scope, info, state["status"], time.perf_counter() - t0):
                with contextlib.suppress(Exception):
                    await run_in_threadpool(self.service().audit.flush)

    async def _buffer(self, scope: dict[str, Any], receive: Any) -> Any:
        """Read the whole body (refusing it past the limit) and return a replaying receive."""
        if scope["method"] not in ("POST", "PUT", "PATCH"):
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
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return (400, "bad_request", MSG_DISCONNECTED)
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return (413, "request_too_large", MSG_TOO_LARGE.format(limit=self.max_bytes))
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
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
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        action = getattr(route, "name", None) or "unmatched"
        try:
            svc.metrics.observe(
                endpoint=endpoint, method=scope["method"], outcome=str(status), seconds=dt
            )
            return svc.audit.write(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "request_id": info.get("request_id"),
                    "key_id": info.get("key_id"),
                    "role": info.get("role"),
                    "action": action,
                    "method": scope["method"],
                    "pid": info.get("pid"),
                    "pids": info.get("pids"),
                    "status": status,
                    "error": info.get("error"),
                    "latency_ms": round(dt * 1000.0, 3),
                }
            )
        except Exception:
            logger.exception("could not write the audit log or metrics")
            return False
