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


# The newest entry stamped while the host's clock ran ahead (a year here), the clock right again.
AHEAD = T + 365 * DAY
NOW = {"w1": T + timedelta(seconds=2), "w2": T - timedelta(seconds=3)}


def test_an_entry_ahead_is_disregarded_when_two_fresh_witnesses_and_the_host_agree(caplog):
    now = decide(T, ledger=AHEAD, witnesses=NOW, fresh=NOW)
    assert (now.time, now.source, now.disregarded) == (T, "host", AHEAD)
    assert now.to_dict()["ledger_disregarded"] == "2027-12-03T12:00:00.000Z"
    now.warn()
    assert "newest entry is stamped 2027-12-03T12:00:00.000Z" in caplog.text
    # Later in the pass the host's clock has moved on: the agreement was when they answered.
    later = decide(T + DAY, ledger=AHEAD, witnesses=NOW, fresh=NOW, asked=T)
    assert later.time == T + DAY and later.disregarded == AHEAD


def test_the_floor_stays_without_fresh_answers_or_when_a_clock_disagrees():
    # Times kept from before (not asked in this pass): the deadline reports' case.
    assert decide(T, ledger=AHEAD, witnesses=NOW).time == AHEAD
    # A witness, even one kept from before, vouches that the entry's time has come.
    kept = {**NOW, "w3": AHEAD}
    assert decide(T, ledger=AHEAD, witnesses=kept, fresh=NOW).time == AHEAD
    # The set-back attack: the host's clock is 20 days behind witnesses whose clocks are right
    # (and so is the entry ahead of them): nothing is disregarded.
    now = decide(T - 20 * DAY, ledger=AHEAD, witnesses=NOW, fresh=NOW)
    assert (now.time, now.source, now.disregarded) == (AHEAD, "ledger", None)
    # One fresh witness agrees with the host's clock, the other does not.
    odd = {"w1": T, "w2": T - DAY}
    assert decide(T, ledger=AHEAD, witnesses=odd, fresh=odd).time == AHEAD


def test_one_fresh_witness_alone_disregards_at_most_a_week_of_the_entry(caplog):
    one = {"w1": T}
    now = decide(T, ledger=AHEAD, witnesses=one, fresh=one)
    assert (now.time, now.source, now.disregarded) == (AHEAD - ALONE_AHEAD, "ledger", AHEAD)
    now.warn()
    assert "a second HTTP witness" in caplog.text
    # An entry less than a week ahead: all of it.
    now = decide(T, ledger=T + 3 * DAY, witnesses=one, fresh=one)
    assert (now.time, now.disregarded) == (T, T + 3 * DAY)
