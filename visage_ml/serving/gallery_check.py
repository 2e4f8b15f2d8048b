"""The full check of a gallery's stored templates against the keys and the ledger
(``visage gallery verify``).

A search checks only the rows it is about to return, in one process; this opens every stored
template under its subject's key and compares it, for either backend:

- with what the search uses: the pgvector row's ``embedding`` (and ``cluster`` under a
  calibration by clusters) must be, bit for bit, the template its ``sealed`` column opens to;
- with the ledger: the SHA-256 of the sealed template must be the one the subject's last
  ``gallery.enrolled`` event records. This catches a subject's own older sealed template (with
  its embedding) put back from an old copy, which passes the first comparison.

A template behind the ledger (an older template of the subject) whose newer ``gallery.enrolled``
event is less than :data:`IN_FLIGHT_S` old is reported as an enrolment in flight, not as wrong:
the event is appended before the template commits.

pgvector also: the ``<table>_revoked`` entries beside rows must agree with the registry (the
ledger's fold). An entry the registry does not back hides a consenting subject from every search
and lowers the gallery size ``N`` the 1:N threshold is derived from; a missing entry of a subject
the registry forbids leaves only the searches' own consent check between the row and an answer.
Both are repaired when a gallery is opened (the check's own start included) and reported here.
So are the triggers that move the change counter on every write to ``<table>_revoked``: one
missing, disabled or altered (re-created by the opening, or beyond this role's privileges) is
reported as wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

# An enrolment's ledger event younger than this may still be waiting for its template's commit.
IN_FLIGHT_S = 120.0

NO_KEY = "no_key"
SEALED = "sealed"
EMBEDDING = "embedding"
CLUSTER = "cluster"
ROLLED_BACK = "rolled_back"
UNRECORDED = "unrecorded"
REMOVED = "removed"
IN_FLIGHT = "in_flight"
REVOKED_UNBACKED = "revoked_unbacked"
REVOKED_MISSING = "revoked_missing"
TRIGGER_MISSING = "trigger_missing"
TRIGGER_RESTORED = "trigger_restored"

# What is wrong, as the user reads it (pids only, never a template).
PROBLEMS: Mapping[str, str] = {
    NO_KEY: "no gallery key opens it (a template of no registered subject, or of an erased "
    "subject put back): remove it (`visage gallery rebuild`) and find out who wrote it",
    SEALED: "the sealed template does not open under the subject's key, or names another "
    "subject or embedder: enrol the subject again",
    EMBEDDING: "the search vector is not the template its sealed column opens to (written "
    "without the project's keys): enrol the subject again and find out who wrote to the table",
    CLUSTER: "the calibration cluster is not the template's: enrol the subject again",
    ROLLED_BACK: "an older template of the subject than the ledger's last enrolment (put back "
    "from an old copy, or an enrolment that failed after its ledger entry): enrol the subject "
    "again",
    UNRECORDED: "a template the ledger never recorded for the subject: enrol the subject again",
    REMOVED: "the ledger records the subject's template as removed (or never enrolled): erase "
    "it (`visage privacy enforce --apply`) or enrol the subject again",
}
# What is wrong with the revoked table (pgvector), as the user reads it.
REVOCATION_PROBLEMS: Mapping[str, str] = {
    REVOKED_UNBACKED: "a `_revoked` entry the registry does not back kept this consenting "
    "subject out of every search and out of the gallery size N (a lower 1:N threshold); it was "
    "removed when the gallery was opened. Unless the subject's consent was restored after the "
    "entry was written and no gallery process had read it, find out who wrote to the table",
    REVOKED_MISSING: "the registry forbids processing this subject but its row had no "
    "`_revoked` entry (deleted from the table, or a withdrawal no gallery process had read "
    "yet); it was put back when the gallery was opened. Purge the row (`visage privacy "
    "enforce --apply`) and, unless the withdrawal was just recorded, find out who wrote to the "
    "table",
}
# What is wrong with the triggers that move the change counter (pgvector), as the user reads it.
TRIGGER_PROBLEMS: Mapping[str, str] = {
    TRIGGER_MISSING: "missing, disabled or altered, and this role may not create it: an entry "
    "written into `_revoked` without moving the change counter hides a subject from running "
    "replicas until the next change. Open the gallery once as the tables' owner (any `visage "
    "gallery` command creates it) and find out who removed it",
    TRIGGER_RESTORED: "was missing, disabled or altered (only a role that owns the tables can "
    "do that) and was created again when the gallery was opened; until then an entry written "
    "into `_revoked` could hide a subject from running replicas. Find out who changed it",
}
MSG_IN_FLIGHT = (
    "an enrolment recorded in the ledger less than {s:.0f} s ago has not reached the stored "
    "template yet; run the check again"
)


@dataclass
class TemplateCheck:
    """What :meth:`~visage_ml.serving.gallery.Gallery.check_templates` found (pids only).

    Attributes
    ----------
    backend
        ``files`` or ``pgvector``.
    checked
        Stored templates of the current embedder that were opened.
    stale
        Templates of another embedder (not opened: ``visage gallery rebuild`` replaces them).
    problems
        ``pid -> kind`` (a key of :data:`PROBLEMS`) for every template that is wrong.
    in_flight
        Pids whose template is behind a ledger event younger than :data:`IN_FLIGHT_S`.
    clusters_checked
        Whether calibration clusters were compared (pgvector under FSN/FairCal, with the
        calibration the table's clusters were computed for).
    revocations
        ``pid -> kind`` (a key of :data:`REVOCATION_PROBLEMS`): revoked-table entries that
        disagreed with the registry (pgvector).
    triggers
        ``<relation>.<trigger> -> kind`` (a key of :data:`TRIGGER_PROBLEMS`): change-counter
        triggers found wrong (pgvector).
    """

    backend: str
    checked: int = 0
    stale: int = 0
    problems: dict[str, str] = field(default_factory=dict)
    in_flight: list[str] = field(default_factory=list)
    clusters_checked: bool = False
    revocations: dict[str, str] = field(default_factory=dict)
    triggers: dict[str, str] = field(default_factory=dict)

    @property
    def wrong(self) -> bool:
        """Whether anything is wrong (what makes ``visage gallery verify`` exit non-zero)."""
        return bool(self.problems or self.revocations or self.triggers)

    @property
    def ok(self) -> int:
        """Templates that passed every comparison."""
        return self.checked - len(self.problems) - len(self.in_flight)

    def counts(self) -> dict[str, int]:
        """Problems by kind."""
        out: dict[str, int] = {}
        for kind in self.problems.values():
            out[kind] = out.get(kind, 0) + 1
        return dict(sorted(out.items()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "checked": self.checked,
            "ok": self.ok,
            "stale": self.stale,
            "wrong": len(self.problems),
            "by_kind": self.counts(),
            "problems": [
                {"pid": pid, "kind": kind, "what": PROBLEMS[kind]}
                for pid, kind in sorted(self.problems.items())
            ],
            "in_flight": sorted(self.in_flight),
            "clusters_checked": self.clusters_checked,
            "revocations": [
                {"pid": pid, "kind": kind, "what": REVOCATION_PROBLEMS[kind]}
                for pid, kind in sorted(self.revocations.items())
            ],
            "triggers": [
                {"name": name, "kind": kind, "what": TRIGGER_PROBLEMS[kind]}
                for name, kind in sorted(self.triggers.items())
            ],
        }

    def record(self, pid: str, verdict: str | None) -> None:
        """File ``pid`` under ``verdict`` (None: fine), replacing an earlier verdict."""
        self.problems.pop(pid, None)
        if pid in self.in_flight:
            self.in_flight.remove(pid)
        if verdict == IN_FLIGHT:
            self.in_flight.append(pid)
        elif verdict is not None:
            self.problems[pid] = verdict


def ledger_time(text: str) -> datetime:
    """A ledger entry's ``time`` (ISO 8601, UTC) as an aware datetime."""
    t = datetime.fromisoformat(text)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


ENROLLED_NEEDLE = b'"gallery.enrolled"'


def enrolment_history(lines: Iterable[bytes]) -> dict[str, list[tuple[str, str]]]:
    """``pid -> [(template_sha256, ledger time), ...]`` of every ``gallery.enrolled`` event, in
    ledger order (``lines``: a ledger's ``lines_containing((ENROLLED_NEEDLE,))``, or all)."""
    out: dict[str, list[tuple[str, str]]] = {}
    for line in lines:
        if ENROLLED_NEEDLE not in line:
            continue
        obj = orjson.loads(line)
        if obj.get("type") != "gallery.enrolled" or not obj.get("pid"):
            continue
        sha = (obj.get("payload") or {}).get("template_sha256")
        if sha:
            out.setdefault(obj["pid"], []).append((sha, obj["time"]))
    return out


def ledger_verdict(
    sha: str,
    latest: str | None,
    history: list[tuple[str, str]],
    now: datetime,
) -> str | None:
    """Whether a stored template with SHA-256 ``sha`` is the one the ledger vouches for.

    ``latest`` is the registry's current template hash of the subject (None: removed or never
    enrolled), ``history`` its :func:`enrolment_history`. None when ``sha`` is ``latest``.
    """
    if latest is not None and sha == latest:
        return None
    if latest is None:
        return REMOVED
    if not any(s == sha for s, _ in history):
        return UNRECORDED
    age = (now - ledger_time(history[-1][1])).total_seconds() if history else IN_FLIGHT_S
    return IN_FLIGHT if age < IN_FLIGHT_S else ROLLED_BACK
