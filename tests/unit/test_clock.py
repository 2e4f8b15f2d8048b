"""The time retention and deadlines use: the host's clock, never before the ledger's newest
entry or the HTTP witnesses' time, and a lone witness's wrong clock erases no one early."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from visage_ml.privacy.clock import ALONE_AHEAD, decide, ledger_times

T = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def test_the_host_clock_is_used_while_nothing_says_it_is_behind(caplog):
    now = decide(T, ledger=T - DAY, witnesses={"w1": T - timedelta(seconds=3)})
    assert (now.time, now.source, now.capped) == (T, "host", False)
    now.warn()
    assert caplog.text == ""


def test_a_host_clock_behind_the_ledger_or_a_witness_is_overruled_with_a_warning(caplog):
    assert decide(T, ledger=T + DAY).source == "ledger"
    now = decide(T, ledger=T + DAY, witnesses={"w1": T + 3 * DAY})
    assert (now.time, now.source, now.witnesses) == (T + 3 * DAY, "witness", ("w1",))
    now.warn()
    assert "3.0 day(s) behind" in caplog.text and "w1" in caplog.text


def test_a_lone_witness_counts_only_a_week_beyond_what_the_ledger_shows_was_set_back():
    # No step back in the ledger: a witness a year ahead is taken a week ahead, no more.
    now = decide(T, ledger=T - DAY, witnesses={"w1": T + 365 * DAY})
    assert now.capped and now.time == T + ALONE_AHEAD
    # The ledger shows the host's clock went back 30 days: that much more is believed.
    now = decide(T, ledger=T, witnesses={"w1": T + 31 * DAY}, steps_back=30 * DAY)
    assert not now.capped and now.time == T + 31 * DAY
    # Two witnesses: the earliest of their times counts, as it is.
    now = decide(T, witnesses={"w1": T + 365 * DAY, "w2": T + 20 * DAY})
    assert not now.capped and now.time == T + 20 * DAY
    assert decide(T, witnesses={"w1": T + 365 * DAY, "w2": T}).source == "host"


def _line(seq: int, t: datetime, payload: dict | None = None) -> bytes:
    stamp = t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    obj = {"seq": seq, "time": stamp, "type": "x", "payload": payload or {}}
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS) + b"\n"


def test_ledger_times_reads_the_last_entry_and_adds_up_the_steps_back(tmp_path):
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(_line(0, T) + _line(1, T + 40 * DAY) + _line(2, T + 20 * DAY))
    # The last entry's own time (not a payload's, not an earlier entry's far ahead).
    assert ledger_times(path) == (T + 20 * DAY, 20 * DAY)
    with open(path, "ab") as fh:  # read on from where it stopped; a step under 5 min is noise
        fh.write(_line(3, T + 20 * DAY - timedelta(minutes=1), {"time": "2099-01-01T00:00:00Z"}))
        fh.write(_line(4, T + 10 * DAY))
    assert ledger_times(path) == (T + 10 * DAY, 30 * DAY - timedelta(minutes=1))
    assert ledger_times(tmp_path / "none.jsonl") == (None, timedelta(0))
