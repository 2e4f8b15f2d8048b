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

The ledger's newest entry can be wrong the other way: stamped while the host's clock ran ahead
(an RTC fault, a mistyped ``date``) and the clock corrected since. Taken as a floor it would lapse
every consent up to that time. It is disregarded only on fresh evidence from clocks the host does
not set: HTTP witnesses that cosigned in this very pass (:class:`WitnessTimes`, from
:meth:`~visage_ml.privacy.witnessed.Witnessing.ask_time`; a cosignature kept from before says
nothing about now, so the deadline reports, which ask no one, keep the floor). Every witness's
time must be more than :data:`TOLERANCE` before the entry (none vouches that its time has come)
and every fresh one within :data:`TOLERANCE` of the host's clock when asked: the host's clock is
then right, which is what the floor guards; a clock set back disagrees with witnesses whose
clocks are right and the floor stays. With two or more fresh witnesses the time used is the
latest of the host's clock and the witnesses' time, as without the entry. One fresh witness
alone lowers the floor by at most :data:`ALONE_AHEAD` (as a witness alone moves the time forward
by at most that much): one wrong clock the operator sets the host to match postpones no expiry by
more. Either is logged as a warning naming the entry's time, and ``enforce --json``'s ``clock``
says so (``ledger_disregarded``, ``fresh``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from visage_ml.privacy.ledger import LedgerFold

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
MSG_DISREGARDED = (
    "the ledger's newest entry is stamped {entry}, {gap} ahead of the time the host's clock "
    "({host}) and the HTTP witness(es) {names}, cosigning in this pass, agree on: it was written "
    "while the host's clock ran ahead. Retention and deadlines use {used}{partly}. Find what set "
    "the clock ahead (RTC, NTP, a manual `date`)."
)
MSG_PARTLY = (
    ", the entry's time less {bound}: one witness alone disregards no more of it; a second "
    "HTTP witness (README, 'Witnesses') settles it"
)


class WitnessTimes(Mapping[str, datetime]):
    """When each HTTP witness says it cosigned: ``{name: time}`` as a mapping, and in ``fresh``
    the time of each that cosigned in the request that returned this (not kept from before).

    Parameters
    ----------
    said
        Each witness's latest time (a fresh one or the one kept from before).
    fresh
        ``{name: time}`` of the cosignatures made in this request.
    """

    def __init__(
        self,
        said: Mapping[str, datetime] | None = None,
        fresh: Mapping[str, datetime] | None = None,
    ) -> None:
        self._said = dict(said or {})
        self.fresh: dict[str, datetime] = dict(fresh or {})

    def __getitem__(self, name: str) -> datetime:
        return self._said[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._said)

    def __len__(self) -> int:
        return len(self._said)

    def __repr__(self) -> str:
        return f"WitnessTimes({self._said!r}, fresh={self.fresh!r})"


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
    ``fresh`` names the witnesses that cosigned in this pass; ``disregarded`` is the newest
    entry's time when they and the host's clock contradicted it, else None.
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
    fresh: tuple[str, ...] = ()
    disregarded: datetime | None = None

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
            "fresh": list(self.fresh),
            "ledger_disregarded": _iso(self.disregarded) if self.disregarded else None,
        }

    def describe(self) -> str:
        where = {
            HOST: "the host's clock",
            LEDGER: "the ledger's newest entry",
            WITNESS: "cosigned by " + ", ".join(self.witnesses),
            GIVEN: "as given",
        }[self.source]
        behind = (
            f"; the host's clock is {_days(self.host_behind)} behind"
            if self.warns and self.host_behind > TOLERANCE
            else ""
        )
        ahead = (
            f"; the ledger's newest entry, {_iso(self.disregarded)}, disregarded"
            if self.disregarded is not None
            else ""
        )
        return f"time used: {_iso(self.time)} ({where}{behind}{ahead})"

    @property
    def warns(self) -> bool:
        return self.source != GIVEN and (
            self.host_behind > TOLERANCE or self.capped or self.disregarded is not None
        )

    def warn(self) -> None:
        """Log what :data:`TOLERANCE` and :data:`ALONE_AHEAD` call for (nothing when the
        host's clock agrees)."""
        if self.disregarded is not None:
            # One witness alone disregards at most ALONE_AHEAD of the entry's time.
            partly = len(self.fresh) < 2 and self.disregarded - ALONE_AHEAD > self.host
            log.warning(
                MSG_DISREGARDED.format(
                    entry=_iso(self.disregarded),
                    gap=_days(self.disregarded - self.host),
                    host=_iso(self.host),
                    names=", ".join(self.fresh),
                    used=_iso(self.time),
                    partly=MSG_PARTLY.format(bound=_days(ALONE_AHEAD)) if partly else "",
                )
            )
        elif self.capped:
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
    fresh: Mapping[str, datetime] | None = None,
    asked: datetime | None = None,
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
    fresh
        ``{name: time}`` of the HTTP witnesses that cosigned in this pass
        (:attr:`WitnessTimes.fresh`): only they can have the ledger's newest entry disregarded.
    asked
        The host's clock when they answered (default ``host``).
    """
    said = dict(witnesses or {})
    floor = max(host, ledger) if ledger is not None else host
    lowest = _contradicted(host, ledger, said, dict(fresh or {}), asked or host)
    if lowest is not None:
        floor = max(host, lowest)
    disregarded = ledger if lowest is not None else None
    names_fresh = tuple(sorted(fresh or {}))
    set_back = steps_back + (floor - host)
    witnessed: datetime | None = None
    names: tuple[str, ...] = ()
    capped = False
    if said:
        witnessed = min(said.values())
        names = tuple(sorted(said))
        bound = host + set_back + ALONE_AHEAD
        if len(said) == 1 and witnessed > bound:
            witnessed, capped = bound, True
    rest = (said, set_back, names_fresh, disregarded)
    if witnessed is not None and witnessed > floor:
        return Now(witnessed, WITNESS, host, ledger, witnessed, names, capped, *rest)
    source = LEDGER if floor > host else HOST
    return Now(floor, source, host, ledger, witnessed, names, capped, *rest)


def _contradicted(
    host: datetime,
    ledger: datetime | None,
    said: Mapping[str, datetime],
    fresh: Mapping[str, datetime],
    asked: datetime,
) -> datetime | None:
    """How low the floor may go below the ledger's newest entry (the module's text), or None
    while nothing fresh contradicts it."""
    if ledger is None or not fresh or ledger - host <= TOLERANCE:
        return None
    # No witness, fresh or kept, vouches that the entry's time has come ...
    if any(t >= ledger - TOLERANCE for t in [*said.values(), *fresh.values()]):
        return None
    # ... and the host's clock agreed with every fresh one when they answered: it is right now.
    if any(abs(t - asked) > TOLERANCE for t in fresh.values()):
        return None
    return host if len(fresh) >= 2 else ledger - ALONE_AHEAD


def given(t: datetime) -> Now:
    """A time passed in (a dry run's ``--at``, a test's clock): taken as it is."""
    return Now(t, GIVEN, t)


def _times_of(
    state: tuple[datetime | None, timedelta], data: bytes, _offset: int
) -> tuple[datetime | None, timedelta]:
    """``(last entry's time, steps back so far)`` carried over the complete lines ``data``."""
    last, back = state
    for line in data.splitlines():
        t = entry_time(line)
        if t is None:
            continue
        if last is not None and last - t > TOLERANCE:
            back += last - t
        last = t
    return last, back


_LEDGER_TIMES: LedgerFold[tuple[datetime | None, timedelta]] = LedgerFold(
    _times_of, (None, timedelta(0))
)


def ledger_times(path: Path) -> tuple[datetime | None, timedelta]:
    """The time of the last complete entry of the ledger at ``path`` (None when it has none),
    and how far its times stepped back in all: the sum of each step back of more than
    :data:`TOLERANCE` from one entry to the next (what a host clock set back leaves).

    The last entry, not the latest time any entry carries: an entry once stamped by a clock far
    ahead must not keep "now" there after the clock is fixed. A process reads on from where it
    stopped while the line it stopped after is unchanged (:class:`LedgerFold`).
    """
    return _LEDGER_TIMES(path)


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
