"""What time it is for retention and deadlines: never earlier than the ledger or a witness on
another host says.

An operator who controls the host's clock can set it back and so postpone every expiry (a
consent that lapses, a retention period that ends) and make every request deadline look further
away. "Now", for ``visage privacy enforce``, ``visage serve``'s periodic enforcement and the
deadline reports (``visage privacy requests``, the requests ``enforce`` lists), is therefore the
latest of

- the host's clock (what the ledger stamps its entries with),
- the time of the ledger's newest entry, and
- the time the HTTP witnesses put on their cosignatures (c2sp.org/tlog-cosignature carries the
  witness's own timestamp): enforcement has them cosign the current checkpoint first
  (:meth:`~visage_ml.privacy.witnessed.Witnessing.ask_time`; a witness cosigns a checkpoint of the
  size it saw last, so nothing need have changed), the deadline reports read the cosignatures
  of the latest checkpoint kept (no request). With several witnesses the earliest of their times
  counts: each of them vouches that it has come.

A directory witness stamps its cosignatures with this host's clock and counts for nothing; so
does an HTTP witness served from this host.

A witness's clock can be wrong too, and a time ahead of the real one would erase people early.
The earliest time of two or more witnesses is taken as it is (two independent clocks wrong the
same way is not what a wrong clock looks like). A time one witness alone vouches for is taken at
most :data:`ALONE_AHEAD` past the host's clock plus as much as the ledger shows that clock was
set back (:func:`ledger_times`: each step back of more than :data:`TOLERANCE` between
consecutive entries, and the host's clock behind the newest entry now): a step back is what the
attack leaves, a witness's wrong clock leaves none. The
host's clock behind the time used by more than :data:`TOLERANCE` is logged as a warning naming
the gap and the time used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOLERANCE = timedelta(minutes=5)
ALONE_AHEAD = timedelta(days=7)
HOST, LEDGER, WITNESS, GIVEN = "host", "ledger", "witness", "given"
_TIME = b'"time":"'

MSG_BEHIND = (
    "the host's clock reads {host}, {gap} behind {what} ({used}): retention and deadlines use "
    "{used}. Check the host's clock (NTP); a clock set back would postpone every expiry."
)
MSG_CAPPED = (
    "witness {name} alone puts the time at {witnessed}, more than {bound} past the host's clock "
    "({host}) and the {set_back} the ledger shows that clock was set back by: retention and "
    "deadlines use {used}, so that a witness with a wrong clock erases no one early. Fix "
    "whichever clock is wrong; a second HTTP witness (README, 'Witnesses') settles it."
)


def _parse(text: str) -> datetime:
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (t if t.tzinfo is not None else t.replace(tzinfo=UTC)).astimezone(UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _days(gap: timedelta) -> str:
    seconds = gap.total_seconds()
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} hour(s)"
    return f"{seconds / 86400:.1f} day(s)"


@dataclass(frozen=True)
class Now:
    """The time retention and deadlines use, and where it came from.

    ``source`` is ``host`` (the host's clock), ``ledger`` (the newest entry: the host's clock is
    behind it), ``witness`` (the witnesses' cosignatures) or ``given`` (a time passed in, as by
    ``visage privacy enforce --at``). ``witnesses`` names the HTTP witnesses whose time counted,
    ``witnessed`` their time as taken (after the bound), ``capped`` whether the bound cut it.
    """

    time: datetime
    source: str
    host: datetime
    ledger: datetime | None = None
    witnessed: datetime | None = None
    witnesses: tuple[str, ...] = ()
    capped: bool = False
    said: Mapping[str, datetime] = field(default_factory=dict)
    set_back: timedelta = timedelta(0)

    @property
    def host_behind(self) -> timedelta:
        """How far the host's clock is behind the time used (zero or more)."""
        return max(self.time - self.host, timedelta(0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": _iso(self.time),
            "source": self.source,
            "host": _iso(self.host),
            "ledger": _iso(self.ledger) if self.ledger else None,
            "witnessed": _iso(self.witnessed) if self.witnessed else None,
            "witnesses": list(self.witnesses),
            "capped": self.capped,
            "host_behind_seconds": round(self.host_behind.total_seconds(), 3),
            "set_back_seconds": round(self.set_back.total_seconds(), 3),
        }

    def describe(self) -> str:
        where = {
            HOST: "the host's clock",
            LEDGER: "the ledger's newest entry",
            WITNESS: "cosigned by " + ", ".join(self.witnesses),
            GIVEN: "as given",
        }[self.source]
        behind = f"; the host's clock is {_days(self.host_behind)} behind" if self.warns else ""
        return f"time used: {_iso(self.time)} ({where}{behind})"

    @property
    def warns(self) -> bool:
        return self.source != GIVEN and (self.host_behind > TOLERANCE or self.capped)

    def warn(self) -> None:
        """Log what :data:`TOLERANCE` and :data:`ALONE_AHEAD` call for (nothing when the
        host's clock agrees)."""
        if self.capped:
            name = self.witnesses[0] if self.witnesses else "?"
            log.warning(
                MSG_CAPPED.format(
                    name=name,
                    witnessed=_iso(self.said.get(name, self.time)),
                    bound=_days(ALONE_AHEAD),
                    host=_iso(self.host),
                    set_back=_days(self.set_back),
                    used=_iso(self.time),
                )
            )
        elif self.warns:
            what = (
                "the time witness(es) " + ", ".join(self.witnesses) + " cosigned at"
                if self.source == WITNESS
                else "the ledger's newest entry"
            )
            log.warning(
                MSG_BEHIND.format(
                    host=_iso(self.host),
                    gap=_days(self.host_behind),
                    what=what,
                    used=_iso(self.time),
                )
            )


def decide(
    host: datetime,
    *,
    ledger: datetime | None = None,
    witnesses: Mapping[str, datetime] | None = None,
    steps_back: timedelta = timedelta(0),
) -> Now:
    """The time to use; see the module's text for the rules.

    Parameters
    ----------
    host
        The host's clock.
    ledger
        The time of the ledger's newest entry.
    witnesses
        ``{name: time}`` of the HTTP witnesses' cosignatures.
    steps_back
        How far the host's clock stepped back between consecutive ledger entries, in all
        (:func:`ledger_times`).
    """
    floor = max(host, ledger) if ledger is not None else host
    set_back = steps_back + (floor - host)
    said = dict(witnesses or {})
    witnessed: datetime | None = None
    names: tuple[str, ...] = ()
    capped = False
    if said:
        witnessed = min(said.values())
        names = tuple(sorted(said))
        bound = host + set_back + ALONE_AHEAD
        if len(said) == 1 and witnessed > bound:
            witnessed, capped = bound, True
    if witnessed is not None and witnessed > floor:
        return Now(witnessed, WITNESS, host, ledger, witnessed, names, capped, said, set_back)
    source = LEDGER if ledger is not None and ledger > host else HOST
    return Now(floor, source, host, ledger, witnessed, names, capped, said, set_back)


def given(t: datetime) -> Now:
    """A time passed in (a dry run's ``--at``, a test's clock): taken as it is."""
    return Now(t, GIVEN, t)


# Per ledger file: (inode, bytes read, hash of the line ending there, its time, steps back).
_READ: dict[str, tuple[int, int, str, datetime | None, timedelta]] = {}
_READ_LOCK = threading.Lock()


def ledger_times(path: Path) -> tuple[datetime | None, timedelta]:
    """The time of the last complete entry of the ledger at ``path`` (None when it has none),
    and how far its times stepped back in all: the sum of each step back of more than
    :data:`TOLERANCE` from one entry to the next (what a host clock set back leaves).

    The last entry, not the latest time any entry carries: an entry once stamped by a clock far
    ahead must not keep "now" there after the clock is fixed. A process reads on from where it
    stopped while the line it stopped after is unchanged.
    """
    key = str(Path(path).resolve())
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; read with pread
    except FileNotFoundError:
        return None, timedelta(0)
    with fh:
        fd = fh.fileno()
        st = os.fstat(fd)
        with _READ_LOCK:
            hit = _READ.get(key)
        start, line_hash, last, back = 0, "", None, timedelta(0)
        if hit is not None and hit[0] == st.st_ino and hit[1] <= st.st_size:
            before = os.pread(fd, min(hit[1], 1 << 16), max(0, hit[1] - (1 << 16)))
            if hit[1] == 0 or (
                before.endswith(b"\n")
                and hashlib.sha256(before[:-1].rsplit(b"\n", 1)[-1]).hexdigest() == hit[2]
            ):
                start, line_hash, last, back = hit[1], hit[2], hit[3], hit[4]
        data = os.pread(fd, st.st_size - start, start)
    end = data.rfind(b"\n") + 1  # complete lines only
    for line in data[:end].splitlines():
        t = entry_time(line)
        if t is None:
            continue
        if last is not None and last - t > TOLERANCE:
            back += last - t
        last = t
    if end:
        line_hash = hashlib.sha256(data[: end - 1].rsplit(b"\n", 1)[-1]).hexdigest()
    with _READ_LOCK:
        _READ[key] = (st.st_ino, start + end, line_hash, last, back)
    return last, back


def entry_time(line: bytes) -> datetime | None:
    """The ``time`` of one ledger line (its keys are sorted, so the entry's own ``time`` is the
    last one: a payload's comes before it); None when unreadable."""
    at = line.rfind(_TIME)
    if at == -1:
        return None
    start = at + len(_TIME)
    stop = line.find(b'"', start)
    try:
        return _parse(line[start:stop].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None
