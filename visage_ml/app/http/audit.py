"""The serving audit log: one JSON line per HTTP request in ``privacy/audit.jsonl`` (but for
those answered without looking at a key: ``/healthz`` without one, and the 429 of the
failed-authentication limit, counted in the metrics only).

A line holds the time, a request id, the API key id and role, the action (route name), the
subject pid(s) concerned if any, the outcome (status and error code) and the latency (none for
``/v1/analytics``, whose duration tells a frame's number of faces); never an image, a template,
a score or a client address. The time is the request's arrival. Each line also carries ``prev``,
the SHA-256 of the line before (:mod:`visage_ml.privacy.auditlog`): the log is a hash chain,
checked and exported by ``visage privacy audit verify|export``. Lines are written whole with one
``write`` on an ``O_APPEND`` descriptor under a thread lock and an advisory file lock, so
concurrent requests and processes never interleave them and extend one chain. The file is
fsync'd about once per ``fsync_interval`` seconds (by the caller, off the event loop, when
:meth:`AuditLog.write` says so) and on close, so no request waits for a disk flush and at most
that much of the log is exposed to a power loss (a process crash loses nothing: the lines are in
the kernel's page cache).

A chain can be rewritten whole (lines dropped, every ``prev`` after them recomputed), so the
serving process anchors the log's head (chained lines, hash of the last one) in the signed,
witnessed ledger (``audit.anchored``): once it has written ``serving.audit.anchor_every_lines``
lines since its last anchor, or ``anchor_every_seconds`` seconds after it if it wrote any
(checked by :func:`anchor_periodically` when no request comes), and when it stops. The anchor
is written off the event loop, by :meth:`AuditLog.flush`, after an fsync of the lines it
covers; it costs one ledger entry, never one per request. A rewrite before the last anchor is
then detected by ``visage privacy audit verify`` and refused by an access export.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from visage_ml.config import AuditParams, ProjectPaths
from visage_ml.privacy.auditlog import ANCHOR_EVENT, AUDIT_FILE, ChainWriter
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import LedgerError

logger = logging.getLogger(__name__)

# Only these keys reach the log: a caller cannot add personal data by accident.
FIELDS: tuple[str, ...] = (
    "time",
    "request_id",
    "key_id",
    "role",
    "action",
    "method",
    "pid",
    "pids",
    "status",
    "error",
    "latency_ms",
)


class AuditLog:
    """Append-only JSONL audit log (thread- and process-safe appends).

    Parameters
    ----------
    path
        ``privacy/audit.jsonl``.
    fsync_interval
        Longest time a written line may stay unflushed to disk (0 = fsync every line).
    anchor
        Records ``{"lines", "head"}`` in the signed ledger (:meth:`for_serving`); None: the log
        is not anchored by this writer.
    anchor_every_lines, anchor_every_seconds
        When an anchor is due: after this many lines written since the last one, or this many
        seconds after it if any line was written (``serving.audit``).
    clock
        Monotonic clock of the cadence.
    """

    def __init__(
        self,
        path: Path,
        *,
        fsync_interval: float = 1.0,
        anchor: Callable[[Mapping[str, Any]], Any] | None = None,
        anchor_every_lines: int = 1000,
        anchor_every_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.fsync_interval = float(fsync_interval)
        self.anchor = anchor
        self.anchor_every_lines = int(anchor_every_lines)
        self.anchor_every_seconds = float(anchor_every_seconds)
        self._clock = clock
        self._lock = threading.Lock()
        # Held while an anchor is taken and recorded (the fd stays open meanwhile).
        self._anchoring = threading.Lock()
        self._fd: int | None = None
        self._last_sync = time.monotonic()
        self._dirty = False
        self._chain = ChainWriter(self.path)
        self._pending = 0  # lines written since the last anchor
        self._next_anchor = clock() + self.anchor_every_seconds
        self._retry_at = 0.0  # after a failed anchor, not before this

    @classmethod
    def for_serving(
        cls,
        paths: ProjectPaths,
        params: AuditParams,
        *,
        core: PrivacyCore,
        lock: Any,
    ) -> AuditLog:
        """The log ``visage serve`` writes, anchored in ``core``'s ledger under ``lock`` (the
        lock that guards the shared privacy core)."""

        def anchor(head: Mapping[str, Any]) -> None:
            with lock:
                core.ledger.append(ANCHOR_EVENT, None, head)

        return cls(
            paths.privacy / AUDIT_FILE,
            anchor=anchor,
            anchor_every_lines=params.anchor_every_lines,
            anchor_every_seconds=params.anchor_every_seconds,
        )

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Read as well: each append chains onto the last line (privacy/auditlog.py).
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    def _anchor_due(self) -> bool:
        if self.anchor is None or not self._pending:
            return False
        now = self._clock()
        if now < self._retry_at:
            return False
        return self._pending >= self.anchor_every_lines or now >= self._next_anchor

    def write(self, record: Mapping[str, Any]) -> bool:
        """Append one entry (keys outside :data:`FIELDS` are dropped).

        Returns
        -------
        bool
            Whether unsynced lines are older than ``fsync_interval``, or an anchor is due: the
            caller should run :meth:`flush` (off the event loop, it blocks on the disk).
        """
        with self._lock:
            self._chain.append(self._open(), {k: record.get(k) for k in FIELDS})
            self._dirty = True
            self._pending += 1
            return time.monotonic() - self._last_sync >= self.fsync_interval or self._anchor_due()

    def _sync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False
            self._last_sync = time.monotonic()

    def flush(self) -> None:
        """fsync pending lines, and anchor the log's head in the ledger when it is due."""
        with self._lock:
            self._sync()
        if self._anchor_due():
            self.anchor_now()

    def anchor_now(self) -> bool:
        """Anchor the head of the log in the ledger now, if lines were written since the last
        anchor; returns whether an anchor was recorded. A failure is logged and retried after
        ``anchor_every_seconds``; the log is written on regardless."""
        if self.anchor is None or not self._anchoring.acquire(blocking=False):
            return False  # not anchored here, or another thread is anchoring
        try:
            with self._lock:
                pending = self._pending
                if not pending or self._fd is None:
                    return False
                # The lines an anchor covers are on disk before the ledger says they exist.
                self._sync()
                fd = self._fd
            head = self._chain.head(fd)
            if not head["lines"]:
                return False
            try:
                self.anchor(head)
            except Exception as exc:  # serving goes on; the next anchor covers these lines
                self._retry_at = self._clock() + self.anchor_every_seconds
                # A ledger error says what to do (witness set changed: restart, checkpoint) and
                # names no person; anything else is named by its type only.
                why = (
                    f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, LedgerError)
                    else (type(exc).__name__)
                )
                logger.warning(
                    "could not anchor the audit log in the ledger (%s); retrying in %.0f s",
                    why,
                    self.anchor_every_seconds,
                )
                return False
            with self._lock:
                self._pending -= pending
            self._next_anchor = self._clock() + self.anchor_every_seconds
            return True
        finally:
            self._anchoring.release()

    def close(self) -> None:
        """fsync, anchor what was written since the last anchor, and close."""
        self.flush()
        self.anchor_now()
        with self._anchoring, self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def anchor_periodically(log: AuditLog, *, stop: threading.Event) -> None:
    """Until ``stop`` is set, anchor ``log`` when its time is due although no request came to
    trigger it (``visage serve``'s background thread); checks four times per period."""
    while not stop.wait(max(0.05, log.anchor_every_seconds / 4)):
        try:
            log.flush()
        except Exception:  # a background loop must not die of one bad pass
            logger.exception("audit log flush failed")
