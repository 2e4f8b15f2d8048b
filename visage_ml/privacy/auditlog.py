"""The serving audit log as a hash chain: ``privacy/audit.jsonl``.

Each line is a JSON object (what the HTTP boundary records: time, request id, API key id and
role, action, pid(s) concerned, outcome, latency; never an image, template, score, name or
client address) plus ``prev``, the SHA-256 of the previous line's bytes (:data:`GENESIS` for
the first). Removing, inserting or changing a line breaks the chain at the next one
(:func:`verify`); an exported copy carries its head hash, and the export is anchored in the
signed ledger (``audit.exported``): :func:`verify` given those anchors (:func:`ledger_anchors`)
also detects a log cut short, or replaced, after an export.

Writers append one whole line with one ``write`` on an ``O_APPEND`` descriptor under an
exclusive ``flock`` and read the previous line's hash under the same lock, so concurrent
processes extend one chain. Lines written before the chain existed (no ``prev``) are reported
as an unchained prefix.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from visage_ml.io import atomic_write_bytes, sha256_bytes

GENESIS = "0" * 64
AUDIT_FILE = "audit.jsonl"
# Actions after which the subject (``pid``/``pids``) was recognised: what an access export
# reports as their identification events.
IDENTIFICATION_ACTIONS: frozenset[str] = frozenset({"identify", "verify"})
EXPORT_FORMAT = "visage-audit-export/1"
MSG_SHORTER = (
    "the log holds {lines} chained lines but an export anchored in the ledger had {n}: lines "
    "were cut from its end; restore privacy/audit.jsonl from a backup or the export"
)
MSG_ANCHOR = (
    "line {n} is not the head an export anchored in the ledger recorded: the log was "
    "replaced or rewritten; restore privacy/audit.jsonl from a backup or the export"
)


def _last_line_hash(fd: int, size: int) -> str:
    """SHA-256 of the last complete line of the file behind ``fd`` (GENESIS when empty)."""
    if size == 0:
        return GENESIS
    end = size
    if os.pread(fd, 1, size - 1) == b"\n":
        end = size - 1
    buf, pos = b"", end
    while pos > 0:
        start = max(0, pos - (1 << 14))
        buf = os.pread(fd, pos - start, start) + buf
        pos = start
        nl = buf.rfind(b"\n", 0, len(buf))
        if nl != -1:
            return hashlib.sha256(buf[nl + 1 :]).hexdigest()
    return hashlib.sha256(buf).hexdigest()


class ChainWriter:
    """Appends records to a hash-chained JSONL file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tail: tuple[int, str] | None = None  # (file size, hash of its last line)

    def append(self, fd: int, record: Mapping[str, Any]) -> bytes:
        """Append ``record`` with its ``prev`` to the open ``O_APPEND`` descriptor ``fd``
        (locked here); return the line written."""
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if self._tail is not None and self._tail[0] == size:
                prev = self._tail[1]
            else:  # another process appended since: chain onto its line
                prev = _last_line_hash(fd, size)
            line = orjson.dumps({**record, "prev": prev})
            os.write(fd, line + b"\n")
            self._tail = (size + len(line) + 1, hashlib.sha256(line).hexdigest())
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return line


@dataclass
class ChainReport:
    """Outcome of :func:`verify`."""

    ok: bool
    lines: int
    unchained: int = 0
    head: str = GENESIS
    bad_line: int | None = None
    reason: str = ""
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def message(self) -> str:
        if self.ok:
            extra = f" (+{self.unchained} older lines before the chain)" if self.unchained else ""
            return f"audit log OK: {self.lines} chained lines{extra}; head {self.head}"
        return f"audit log INVALID at line {self.bad_line}: {self.reason}"


def iter_lines(path: Path) -> Iterator[bytes]:
    """Complete lines of the log (without newlines)."""
    if not Path(path).exists():
        return
    with open(path, "rb") as fh:
        for line in fh:
            if line.endswith(b"\n"):
                yield line[:-1]


def verify(
    path: Path, *, keep: bool = False, anchors: Sequence[Mapping[str, Any]] = ()
) -> ChainReport:
    """Check the chain of the log at ``path``; name the first broken line (1-based).

    ``anchors`` are the ``{"lines", "head"}`` of earlier exports (the payloads of the ledger's
    ``audit.exported`` entries): a chain cannot show that lines were cut from its end, so the
    log must still hold each exported prefix, ending in the same head.
    """
    wanted = {int(a["lines"]) for a in anchors}
    heads: dict[int, str] = {}
    report = ChainReport(ok=True, lines=0)
    prev: str | None = None
    chained = False
    for i, line in enumerate(iter_lines(path), start=1):
        try:
            obj = orjson.loads(line)
            if not isinstance(obj, dict):
                raise ValueError
        except ValueError:
            return ChainReport(False, report.lines, report.unchained, bad_line=i, reason="not JSON")
        digest = hashlib.sha256(line).hexdigest()
        if "prev" not in obj:
            if chained:
                return ChainReport(
                    False, report.lines, report.unchained, bad_line=i, reason="line without prev"
                )
            report.unchained += 1
            prev = digest
            continue
        expected = prev if prev is not None else GENESIS
        if obj["prev"] != expected:
            return ChainReport(
                False,
                report.lines,
                report.unchained,
                bad_line=i,
                reason="prev is not the hash of the line before (a line was removed, inserted "
                "or altered)",
            )
        chained = True
        report.lines += 1
        prev = digest
        if report.lines in wanted:
            heads[report.lines] = digest
        if keep:
            report.records.append(obj)
    report.head = prev or GENESIS
    for a in anchors:
        n, head = int(a["lines"]), str(a["head"])
        if n == 0 or heads.get(n) == head:
            continue
        report.ok = False
        if n > report.lines:
            report.bad_line = report.lines + report.unchained + 1
            report.reason = MSG_SHORTER.format(n=n, lines=report.lines)
        else:
            report.bad_line = n + report.unchained
            report.reason = MSG_ANCHOR.format(n=n)
        break
    return report


def identification_events(path: Path, pid: str) -> list[dict[str, Any]]:
    """Audit records in which ``pid`` was identified or verified (time, key id, role, action)."""
    needle = pid.encode()
    out = []
    for line in iter_lines(path):
        if needle not in line:
            continue
        obj = orjson.loads(line)
        if obj.get("action") not in IDENTIFICATION_ACTIONS:
            continue
        if obj.get("pid") == pid or pid in (obj.get("pids") or ()):
            out.append(
                {
                    "time": obj.get("time"),
                    "action": obj.get("action"),
                    "key_id": obj.get("key_id"),
                    "role": obj.get("role"),
                    "status": obj.get("status"),
                    "request_id": obj.get("request_id"),
                }
            )
    return out


def ledger_anchors(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """The ``{"lines", "head"}`` of every ``audit.exported`` entry among ledger ``entries``."""
    return [
        {"lines": e.payload["lines"], "head": e.payload["head"]}
        for e in entries
        if e.type == "audit.exported"
    ]


def export(
    path: Path,
    out: Path,
    *,
    fields: Sequence[str] | None = None,
    anchors: Sequence[Mapping[str, Any]] = (),
) -> tuple[ChainReport, dict[str, Any]]:
    """Copy the verified chain to ``out`` (JSONL, mode 0600) with a manifest
    ``<out>.manifest.json``: lines, head hash, SHA-256 of the copy.

    Raises
    ------
    ValueError
        The chain does not verify, or does not hold an earlier export (``anchors``); nothing
        is written.
    """
    report = verify(path, anchors=anchors)
    if not report.ok:
        raise ValueError(report.message() + "; restore privacy/audit.jsonl from a backup")
    data = b"".join(line + b"\n" for line in iter_lines(path))
    atomic_write_bytes(out, data, mode=0o600)
    manifest = {
        "format": EXPORT_FORMAT,
        "lines": report.lines,
        "unchained_prefix": report.unchained,
        "head": report.head,
        "sha256": sha256_bytes(data),
        "fields": list(fields or ()),
    }
    atomic_write_bytes(
        out.with_name(out.name + ".manifest.json"),
        orjson.dumps(manifest, option=orjson.OPT_INDENT_2),
        mode=0o600,
    )
    return report, manifest
