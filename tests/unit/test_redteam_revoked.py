"""Red team on the pgvector `<table>_revoked` table (eb43d4d): an intruder who can write to the
database but holds none of the project's keys, against a replica that is already running."""

# ruff: noqa: F811 - fixtures imported from the modules that define them

from __future__ import annotations

import psycopg
import pytest
from serving_fakes import THRESHOLD
from test_pg_gallery_tamper import (  # noqa: F401 - fixtures
    _revocations,
    engine,
    enrolled,
    open_pg,
    world,
)


def _plant_quietly(dsn: str, name: str, pid: str, reason: str = "erased") -> None:
    """An `erased` entry written into the table, the change counter left alone (no NOTIFY,
    nothing for a poll to see)."""
    query = psycopg.sql.SQL("INSERT INTO {r} (pid, reason) VALUES (%s, %s)").format(
        r=psycopg.sql.Identifier(f"{name}_revoked")
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query, (pid, reason))


def test_the_first_search_after_a_planted_revocation_still_finds_the_subject(
    world, engine, enrolled, stack_postgres, table
):
    """The intruder moves the counter too. The count that sees the unbacked entry runs in the
    search's own snapshot, and the entry is removed only after the statement: the very search
    that noticed it must not answer without the subject."""
    dsn = stack_postgres.dsn
    gallery, pids = enrolled
    victim = pids[0]
    probe = engine.embed(world.photo(victim))[0][None]
    seen: list[int] = []
    (got,), _, _ = gallery.search(probe, top_k=1, threshold_for=lambda n: THRESHOLD)
    assert [m.pid for m in got] == [victim]
    _plant_quietly(dsn, table, victim)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("UPDATE {s} SET version = version + 1").format(
                s=psycopg.sql.Identifier(f"{table}_state")
            )
        )
    (got,), _, _ = gallery.search(
        probe, top_k=1, threshold_for=lambda n: seen.append(n) or THRESHOLD
    )
    assert seen == [17]  # N was not lowered
    assert [m.pid for m in got] == [victim], "the search that saw the planted entry hid the subject"
    assert _revocations(dsn, table) == {}


@pytest.mark.parametrize("reason", ["erased", "not_allowed"])
def test_gallery_verify_names_a_planted_revocation_beside_a_row(
    world, engine, enrolled, stack_postgres, table, reason
):
    """`check_templates` (what `visage gallery verify` prints) in a process whose gallery is
    already open, the entry planted quietly after it opened: named, not missed."""
    dsn = stack_postgres.dsn
    gallery, pids = enrolled
    _plant_quietly(dsn, table, pids[3], reason)
    report = gallery.check_templates()
    assert report.revocations == {pids[3]: "revoked_unbacked"}
    assert report.wrong
