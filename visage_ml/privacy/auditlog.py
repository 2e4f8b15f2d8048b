"""The serving audit log as a hash chain: ``privacy/audit.jsonl``.

Each line is a JSON object (what the HTTP boundary records: time, request id, API key id and
role, action, pid(s) concerned, outcome, latency; never an image, template, score, name or
client address) plus ``prev``, the SHA-256 of the previous line's bytes (:data:`GENESIS` for
the first). Removing, inserting or changing a line breaks the chain at the next one
(:func:`verify`). A chain alone cannot show that it was rewritten as a whole: whoever can write
the file can drop or change lines and recompute every ``prev`` after them. So its head (the
number of chained lines and the hash of the last one) is anchored in the signed, witnessed
ledger: by ``visage serve`` once it has written ``serving.audit.anchor_every_lines`` lines
since its last anchor, or ``anchor_every_seconds`` seconds after it if it wrote any, and when it
stops (``audit.anchored``); and by each export (``audit.exported``, its copy has the same
head). :func:`verify` given those anchors (:func:`ledger_anchors`) detects a log rewritten, cut
short or replaced anywhere before its last anchor, and says how many lines follow that anchor:
the window in which a rewrite goes unseen. An access export refuses a log that fails
(:func:`identification_events` given the anchors). A log without any anchor (written before
anchors existed, or never served or exported since) verifies as a chain only, as it always did.

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
from visage_ml.privacy.ledger import LedgerFold, held_lines, line_spans

GENESIS = "0" * 64
AUDIT_FILE = "audit.jsonl"
# Actions after which the subject (``pid``/``pids``) was recognised: what an access export
# reports as their identification events.
IDENTIFICATION_ACTIONS: frozenset[str] = frozenset({"identify", "verify"})
EXPORT_FORMAT = "visage-audit-export/1"
# Ledger events that anchor the chain's head ``{"lines", "head"}``: an export, and the serving
# process's periodic anchor.
EXPORTED_EVENT = "audit.exported"
ANCHOR_EVENT = "audit.anchored"
ANCHOR_EVENTS: frozenset[str] = frozenset({EXPORTED_EVENT, ANCHOR_EVENT})
# What the ledger lines of those events hold (Ledger.entries(containing=...) parses no other).
ANCHOR_NEEDLES: tuple[bytes, ...] = tuple(f'"{t}"'.encode() for t in sorted(ANCHOR_EVENTS))
MSG_SHORTER = (
    "the log holds {lines} chained lines but the ledger anchored its head at {n}: lines were "
    "cut from its end; restore privacy/audit.jsonl from a backup or an export"
)
MSG_ANCHOR = (
    "line {n} is not the head the ledger anchored there: the log was replaced or rewritten "
    "(lines removed or changed before it, and chained again); restore privacy/audit.jsonl "
    "from a backup or an export"
)
MSG_UNANCHORED = (
    "{n} lines after the last anchor in the ledger (line {at}) are not anchored yet: a rewrite "
    "of those is not detected until `visage serve` anchors them (serving.audit) or "
    "`visage privacy audit export` runs"
)
MSG_NO_ANCHOR = (
    "no anchor in the ledger yet: the chain alone does not show a rewrite of the whole log; "
    "serve (it anchors the log, serving.audit) or run `visage privacy audit export`"
)
MSG_ACCESS_REFUSED = (
    "the subject's identification events cannot be exported: {why}. Nothing was exported; "
    "restore privacy/audit.jsonl from a backup (check it with `visage privacy audit verify`) "
    "and export again"
)


class AuditLogError(ValueError):
    """The audit log fails verification: what is read from it cannot be trusted."""


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


def _has_prev(line: bytes) -> bool:
    try:
        obj = orjson.loads(line)
    except ValueError:
        return False
    return isinstance(obj, dict) and "prev" in obj


# What a writer has counted of the file: (offset after the last complete line counted, chained
# lines up to there, whether the chain has started).
_Count = tuple[int, int, bool]


def _count_chained(fd: int, count: _Count, end: int) -> _Count:
    """Extend ``count`` over the complete lines of the file behind ``fd`` up to offset ``end``."""
    offset, lines, chained = count
    pos, rest = offset, b""
    while pos < end:
        chunk = os.pread(fd, min(1 << 20, end - pos), pos)
        if not chunk:
            break
        pos += len(chunk)
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        complete, rest = data[:cut], data[cut:]
        if chained:
            lines += complete.count(b"\n")
        else:  # the unchained prefix of an old log: only lines with ``prev`` count
            for line in complete.splitlines():
                chained = chained or _has_prev(line)
                if chained:
                    lines += 1
        offset += len(complete)
    return offset, lines, chained


class ChainWriter:
    """Appends records to a hash-chained JSONL file (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._tail: tuple[int, str] | None = None  # (file size, hash of its last line)
        self._count: _Count | None = None

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

    def head(self, fd: int) -> dict[str, Any]:
        """``{"lines", "head"}`` of the log behind ``fd`` now: what an anchor records.

        The first call counts the whole file; later ones only what was appended since. No lock
        is taken (a ``flock`` from a second thread on the same descriptor would release the
        writer's): every writer appends a whole line with one ``write`` on ``O_APPEND``, so the
        file's size read once ends on a line, and the bytes before it never change.
        """
        size = os.fstat(fd).st_size
        count = self._count
        if count is None or count[0] > size:  # first call, or the file was cut: count it all
            count = (0, 0, False)
        count = _count_chained(fd, count, size)
        self._count = count
        return {"lines": count[1], "head": _last_line_hash(fd, count[0])}


@dataclass
class ChainReport:
    """Outcome of :func:`verify`."""

    ok: bool
    lines: int
    unchained: int = 0
    head: str = GENESIS
    bad_line: int | None = None
    reason: str = ""
    # Chained lines covered by the latest anchor given to :func:`verify` (None: no anchors
    # were given) and how many follow it: the window in which a rewrite goes unseen.
    anchored: int | None = None
    unanchored: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)

    def message(self) -> str:
        if self.ok:
            extra = f" (+{self.unchained} older lines before the chain)" if self.unchained else ""
            text = f"audit log OK: {self.lines} chained lines{extra}; head {self.head}"
            if self.anchored is None:
                return text
            if not self.anchored:
                return f"{text}; {MSG_NO_ANCHOR}"
            if self.unanchored:
                at = self.anchored + self.unchained
                return f"{text}; " + MSG_UNANCHORED.format(n=self.unanchored, at=at)
            return f"{text}; every line is anchored in the ledger"
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
    path: Path, *, keep: bool = False, anchors: Sequence[Mapping[str, Any]] | None = None
) -> ChainReport:
    """Check the chain of the log at ``path``; name the first broken line (1-based).

    ``anchors`` are the ``{"lines", "head"}`` of the ledger's ``audit.anchored`` and
    ``audit.exported`` entries (:func:`ledger_anchors`): a chain cannot show that lines were
    cut from its end, or that it was rewritten and chained again, so the log must still hold
    each anchored prefix, ending in the same head. Given anchors (even none), the report also
    says how many lines follow the last one (``unanchored``).
    """
    wanted = {int(a["lines"]) for a in anchors or ()}
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
    if anchors is not None:
        report.anchored = min(max(wanted, default=0), report.lines)
        report.unanchored = report.lines - report.anchored
    for a in anchors or ():
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


def identification_events(
    path: Path, pid: str, *, anchors: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Audit records in which ``pid`` was identified or verified (time, key id, role, action).

    Parameters
    ----------
    path
        The audit log.
    pid
        The subject.
    anchors
        The ledger's anchors of the log (:func:`ledger_anchors`): the log is verified against
        them first. None reads it unverified.

    Raises
    ------
    AuditLogError
        The log fails verification (lines removed or rewritten, before an anchor or in its
        chain): its events could be incomplete, so none are returned.
    """
    if anchors is not None:
        report = verify(path, anchors=anchors)
        if not report.ok:
            raise AuditLogError(MSG_ACCESS_REFUSED.format(why=report.message()))
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
    """The ``{"lines", "head"}`` of every ``audit.anchored`` and ``audit.exported`` entry among
    ledger ``entries``."""
    return [
        {"lines": e.payload["lines"], "head": e.payload["head"]}
        for e in entries
        if e.type in ANCHOR_EVENTS
    ]


_Anchor = tuple[int, bytes, Any, Any]  # offset, line with its newline, lines, head


def _anchors_fold(found: tuple[_Anchor, ...], chunk: bytes, offset: int) -> tuple[_Anchor, ...]:
    more = []
    for a, b in line_spans(chunk, ANCHOR_NEEDLES):
        try:
            obj = orjson.loads(chunk[a:b])
            if obj["type"] in ANCHOR_EVENTS:
                lines, head = obj["payload"]["lines"], obj["payload"]["head"]
                more.append((offset + a, chunk[a : b + 1], lines, head))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditLogError(
                f"the ledger line at byte {offset + a} naming an audit anchor is unreadable "
                f"({type(exc).__name__}); run `visage privacy verify-ledger` to locate the "
                "damage and restore the ledger from a backup"
            ) from None
    return found + tuple(more) if more else found


_ANCHORS: LedgerFold[tuple[_Anchor, ...]] = LedgerFold(_anchors_fold, (), held=held_lines)


def anchors_in(ledger_path: Path) -> list[dict[str, Any]]:
    """:func:`ledger_anchors` of the ledger file at ``ledger_path``, read on from where this
    process last stopped (:class:`~visage_ml.privacy.ledger.LedgerFold`): an access request's
    bundle checks the audit log against them, and searching a 150 MB ledger took 0.2 s."""
    return [{"lines": lines, "head": head} for _, _, lines, head in _ANCHORS(ledger_path)]


def export(
    path: Path,
    out: Path,
    *,
    fields: Sequence[str] | None = None,
    anchors: Sequence[Mapping[str, Any]] | None = None,
) -> tuple[ChainReport, dict[str, Any]]:
    """Copy the verified chain to ``out`` (JSONL, mode 0600) with a manifest
    ``<out>.manifest.json``: lines, head hash, SHA-256 of the copy.

    Raises
    ------
    ValueError
        The chain does not verify, or does not hold a prefix anchored in the ledger
        (``anchors``); nothing is written.
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
