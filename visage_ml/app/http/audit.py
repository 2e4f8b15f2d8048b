"""The serving audit log: one JSON line per HTTP request in ``privacy/audit.jsonl``.

A line holds the time, a request id, the API key id and role, the action (route name), the
subject pid(s) concerned if any, the outcome (status and error code) and the latency; never an
image, a template, a score or a client address. Each line also carries ``prev``, the SHA-256 of
the line before (:mod:`visage_ml.privacy.auditlog`): the log is a hash chain, checked and
exported by ``visage privacy audit verify|export``. Lines are written whole with one ``write``
on an ``O_APPEND`` descriptor under a thread lock and an advisory file lock, so concurrent
requests and processes never interleave them and extend one chain. The file is fsync'd about
once per ``fsync_interval`` seconds (by the caller, off the event loop, when
:meth:`AuditLog.write` says so) and on close, so no request waits for a disk flush and at most
that much of the log is exposed to a power loss (a process crash loses nothing: the lines are
in the kernel's page cache).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from visage_ml.privacy.auditlog import ChainWriter

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
    """

    def __init__(self, path: Path, *, fsync_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.fsync_interval = float(fsync_interval)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._last_sync = time.monotonic()
        self._dirty = False
        self._chain = ChainWriter(self.path)

    def _open(self) -> int:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Read as well: each append chains onto the last line (privacy/auditlog.py).
            self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fd

    def write(self, record: Mapping[str, Any]) -> bool:
        """Append one entry (keys outside :data:`FIELDS` are dropped).

        Returns
        -------
        bool
            Whether unsynced lines are older than ``fsync_interval``: the caller should run
            :meth:`flush` (off the event loop, it blocks on the disk).
        """
        with self._lock:
            self._chain.append(self._open(), {k: record.get(k) for k in FIELDS})
            self._dirty = True
            return time.monotonic() - self._last_sync >= self.fsync_interval

    def flush(self) -> None:
        """fsync pending lines."""
        with self._lock:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False
                self._last_sync = time.monotonic()

    def close(self) -> None:
        """fsync and close."""
        self.flush()
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
