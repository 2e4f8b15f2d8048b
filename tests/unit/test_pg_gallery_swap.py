"""An erasure's purge rewrites the pgvector gallery table by copy and swap: serving searches on
while the copy and the index build run, the swapped table is the old one in every respect but
its files, the erased template is in no file of the data folder, and a table holding what the
swap cannot carry over is rewritten by VACUUM FULL as before."""

from __future__ import annotations

import dataclasses
import re
import secrets
import threading
import time
from pathlib import Path

import psycopg
import pytest
from project_helpers import files_holding
from psycopg import sql
from serving_fakes import DIM, THRESHOLD, fake_engine, make_world

from visage_ml.config import load_params
from visage_ml.rights.erasure import pgvector as pg_store
from visage_ml.rights.erasure.base import Context
from visage_ml.serving import pg_gallery, pg_swap
from visage_ml.serving.gallery import GalleryUnavailableError
from visage_ml.serving.pg_gallery import PgGallery, PgOptions

VERSION = "emb-test-1"
LOCK_TIMEOUT_S = 0.5


@pytest.fixture
def world(project):
    return make_world(project, n_subjects=8, seed=secrets.randbits(31))


@pytest.fixture
def engine(world):
    return fake_engine(world.paths.root)


def open_pg(world, pg, table, engine, *, hnsw=True, listen=False, lock_timeout_s=LOCK_TIMEOUT_S):
    return PgGallery.open(
        world.paths,
        options=PgOptions(
            dsn=pg.dsn, table=table, hnsw=hnsw, listen=listen, lock_timeout_s=lock_timeout_s
        ),
        model_version=VERSION,
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=world.core,
        embed=engine.embed,
    )


@pytest.fixture
def enrolled(world, engine, pg, table):
    gallery = open_pg(world, pg, table, engine)
    pids = list(world.people)[:6]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in pids})
    yield gallery, pids
    gallery.close()


def _describe(dsn: str, table: str) -> tuple[int, dict]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        oid = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]
        return oid, pg_swap.describe(conn, oid)


def _counter(dsn: str, table: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT version FROM {s}").format(s=sql.Identifier(f"{table}_state"))
        return int(conn.execute(query).fetchone()[0])


def _plan(dsn: str, table: str) -> str:
    with psycopg.connect(dsn) as conn:
        conn.execute("SET LOCAL enable_seqscan = off")
        rows = conn.execute(
            sql.SQL(
                "EXPLAIN (COSTS OFF) SELECT pid FROM {t} ORDER BY embedding <#> "
                "(SELECT embedding FROM {t} LIMIT 1) LIMIT 3"
            ).format(t=sql.Identifier(table))
        ).fetchall()
    return "\n".join(r[0] for r in rows)


def _hold_when_built(monkeypatch, at: str = "built") -> tuple[threading.Event, threading.Event]:
    """A purge stops once its copy and the copy's index are built (``held`` set), until ``go``
    (``at="caught_up"``: once it has also caught up with what was written meanwhile)."""
    held, go = threading.Event(), threading.Event()

    def hold(conn, phase):
        if phase == at and not go.is_set():
            held.set()
            go.wait(30)

    monkeypatch.setattr(pg_swap, "_phase", hold)
    return held, go


def _purge_in_thread(gallery) -> tuple[threading.Thread, list]:
    """``gallery``'s purge started in a thread; its report lands in the list."""
    done: list = []
    purge = threading.Thread(target=lambda: done.append(gallery.purge_physically()))
    purge.start()
    return purge, done


def _purge_while_built(gallery, victim, pg, monkeypatch, *statements) -> list:
    """``victim`` erased and the gallery purged in a thread, ``statements`` committed (by
    another client) while the purge holds once its copy and index are built; the purge's
    report in the list returned (empty: it failed)."""
    held, go = _hold_when_built(monkeypatch)
    gallery.erase(victim)
    purge, done = _purge_in_thread(gallery)
    try:
        assert held.wait(30), "the purge never reached the index build"
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)
    finally:
        go.set()
        purge.join(timeout=60)
    return done


def _purge_killed(
    monkeypatch, pg, table: str, *, at: str = "copied", before=lambda: None, purge=None
) -> None:
    """A purge whose connection is terminated at its phase ``at`` (``before`` called then):
    it fails, as a purge whose process or server dies does. ``purge``: what runs it (by
    default :func:`pg_gallery.purge_physically` of the table)."""

    def kill(conn, phase):
        if phase == at:
            before()
            with psycopg.connect(pg.dsn, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))

    with monkeypatch.context() as patched:
        patched.setattr(pg_swap, "_phase", kill)
        with pytest.raises((psycopg.OperationalError, GalleryUnavailableError)):
            (purge or (lambda: pg_gallery.purge_physically(pg.dsn, table=table)))()


def _erasure_context(world, gallery, pg, table: str) -> Context:
    """What the erasure's pgvector step is given for ``gallery`` (params.yaml naming its table)."""
    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    g = dataclasses.replace(params.serving.gallery, backend="pgvector", dsn=pg.dsn, table=table)
    params = dataclasses.replace(params, serving=dataclasses.replace(params.serving, gallery=g))
    return Context(paths=world.paths, core=world.core, params=params, gallery=gallery)


def _exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT to_regclass(%s)", (f'"{name}"',)).fetchone()[0] is not None


def _login_role(conn: psycopg.Connection, prefix: str, options: str = "") -> tuple[str, str]:
    """A new role that may log in (``options`` appended to CREATE ROLE); its name and password."""
    role, password = f"{prefix}_{secrets.token_hex(4)}", secrets.token_hex(8)
    conn.execute(
        sql.SQL("CREATE ROLE {r} LOGIN PASSWORD {p}" + options).format(
            r=sql.Identifier(role), p=sql.Literal(password)
        )
    )
    return role, password


def test_the_purge_swaps_in_the_same_table_without_the_erased_template(
    world, engine, enrolled, pg, table
):
    gallery, pids = enrolled
    role = f"reader_{secrets.token_hex(4)}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {r}").format(r=sql.Identifier(role)))
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT ON {t} TO {r}").format(
                t=sql.Identifier(table), r=sql.Identifier(role)
            )
        )
        conn.execute(
            sql.SQL("ALTER TABLE {t} SET (fillfactor = 90)").format(t=sql.Identifier(table))
        )
    victim = pids[2]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    oid, before = _describe(pg.dsn, table)
    plan_before = _plan(pg.dsn, table)
    assert f"{table}_hnsw" in plan_before
    for _ in range(8):  # psycopg prepares a statement run five times: the replica's are
        assert gallery.identify(engine.embed(world.photo(pids[0]))[0])[0].pid == pids[0]
    version = _counter(pg.dsn, table)
    gallery.erase(victim)
    report = gallery.purge_physically().to_dict()
    assert report["swap_refused"] is None, report["swap_refused"]
    assert report["rewrite"] == "swap"
    assert report["vacuum_full"] and report["wal_removed"], report
    swapped, after = _describe(pg.dsn, table)
    assert swapped != oid  # new files...
    assert after == before  # ...of the same table: columns, statistics targets, grants, indexes
    assert _plan(pg.dsn, table) == plan_before
    assert files_holding(pg.data_dir, vector) == []
    # The replica opened before the swap answers from the new table, its statements re-planned.
    for pid in (pids[0], pids[3]):
        assert gallery.identify(engine.embed(world.photo(pid))[0])[0].pid == pid
    assert victim not in gallery.stored()
    newcomer = list(world.people)[6]
    gallery.enroll(newcomer, engine.embed(world.photo(newcomer, 2)))
    assert _counter(pg.dsn, table) > version
    # Opening the gallery again (ensure_schema) changes nothing of the swapped table.
    with pg_gallery.connect(pg.dsn, autocommit=True) as conn:
        assert pg_gallery.ensure_schema(conn, pg_gallery.Names(table), DIM) == (
            pg_gallery.SIGNAL_OK,
            [],
        )
    again = open_pg(world, pg, table, engine)
    try:
        assert newcomer in again.searchable()
    finally:
        again.close()
    assert _describe(pg.dsn, table) == (swapped, after)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("REVOKE ALL ON {t} FROM {r}").format(
                t=sql.Identifier(table), r=sql.Identifier(role)
            )
        )
        conn.execute(sql.SQL("DROP ROLE {r}").format(r=sql.Identifier(role)))


def test_serving_searches_while_the_purge_copies_and_builds(
    world, engine, enrolled, pg, table, monkeypatch
):
    gallery, pids = enrolled
    listening = open_pg(world, pg, table, engine, listen=True)
    held, go = _hold_when_built(monkeypatch)
    gallery.erase(pids[1])
    purge, done = _purge_in_thread(gallery)
    try:
        assert held.wait(30), "the purge never reached the index build"
        # The copy and its index are built; the old table still serves every search at once.
        for pid in (pids[0], pids[4]):
            start = time.perf_counter()
            assert listening.identify(engine.embed(world.photo(pid))[0])[0].pid == pid
            assert time.perf_counter() - start < LOCK_TIMEOUT_S
        # Writes go on too: an enrolment is not held for the copy.
        newcomer = list(world.people)[6]
        start = time.perf_counter()
        listening.enroll(newcomer, engine.embed(world.photo(newcomer, 2)))
        assert time.perf_counter() - start < LOCK_TIMEOUT_S
    finally:
        go.set()
        purge.join(timeout=60)
    assert done and done[0].to_dict()["rewrite"] == "swap", done
    assert newcomer in listening.searchable()
    # After the swap the listening replica follows changes through the triggers and counter.
    size = listening.size
    gallery.erase(pids[5])
    deadline = time.monotonic() + 5
    while listening.size != size - 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert listening.size == size - 1
    assert listening.identify(engine.embed(world.photo(pids[4]))[0])[0].pid == pids[4]
    listening.close()


def _row(dsn: str, table: str, pid: str) -> tuple | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        query = sql.SQL("SELECT template_sha256, embedding::text FROM {t} WHERE pid = %s")
        return conn.execute(query.format(t=sql.Identifier(table)), (pid,)).fetchone()


@pytest.mark.parametrize("at", ["built", "caught_up"])
def test_what_is_written_during_the_copy_is_in_the_swapped_table(
    world, engine, enrolled, pg, table, monkeypatch, at
):
    """Enrolments, re-enrolments and erasures committed while the purge copies and builds (a
    replica in another process), or after its first catch-up, before it asks for the swap's
    lock: the swapped table holds each as it was last written, and the erased subject's
    template is in no file once its own purge has run."""
    gallery, pids = enrolled
    other = open_pg(world, pg, table, engine)  # another process's replica
    held, go = _hold_when_built(monkeypatch, at)
    gallery.erase(pids[1])
    purge, done = _purge_in_thread(gallery)
    newcomers = list(world.people)[6:8]
    renewed, erased = pids[0], pids[3]
    erased_vector = gallery.template(erased)[0].astype("<f4").tobytes()
    kept = _row(pg.dsn, table, pids[4])
    try:
        assert held.wait(30), "the purge never reached the index build"
        other.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in newcomers})
        before = _row(pg.dsn, table, renewed)
        other.enroll(renewed, engine.embed(world.photo(renewed, 3)))
        written = _row(pg.dsn, table, renewed)
        assert written != before  # a new template in the old table
        other.erase(erased)
    finally:
        go.set()
        purge.join(timeout=60)
    assert done and done[0].to_dict()["rewrite"] == "swap", done
    for pid in newcomers:
        assert _row(pg.dsn, table, pid) is not None
    assert _row(pg.dsn, table, renewed) == written
    assert _row(pg.dsn, table, pids[4]) == kept
    assert _row(pg.dsn, table, erased) is None
    assert _row(pg.dsn, table, pids[1]) is None
    fresh = open_pg(world, pg, table, engine)
    try:
        assert set(fresh.searchable()) == {pids[0], pids[2], pids[4], pids[5], *newcomers}
        for pid in (*newcomers, renewed):
            assert fresh.identify(engine.embed(world.photo(pid))[0])[0].pid == pid
        assert other.purge_physically().to_dict()["rewrite"] == "swap"
        assert files_holding(pg.data_dir, erased_vector) == []
    finally:
        fresh.close()
        other.close()


def test_what_is_written_while_the_swap_waits_for_its_lock_is_copied_before_it(
    world, engine, enrolled, pg, table, monkeypatch
):
    """A long reader holds the table, so the swap's ACCESS EXCLUSIVE is refused try after try
    while enrolments go on: what they write is copied between the tries (their HNSW entries
    too), not all under the lock once the reader is gone, where serving waits for it."""
    gallery, pids = enrolled
    other = open_pg(world, pg, table, engine, lock_timeout_s=0)  # waits out a try's queue
    held, go = _hold_when_built(monkeypatch, "caught_up")
    copied: list[int] = []
    catch_up = pg_swap._catch_up
    monkeypatch.setattr(pg_swap, "_catch_up", lambda *a, **kw: copied.append(catch_up(*a, **kw)))
    gallery.erase(pids[1])
    purge, done = _purge_in_thread(gallery)
    newcomers = list(world.people)[6:8]
    reader = psycopg.connect(pg.dsn)
    try:
        assert held.wait(30)
        reader.execute(
            sql.SQL("LOCK TABLE {t} IN ACCESS SHARE MODE").format(t=sql.Identifier(table))
        )
        go.set()
        other.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in newcomers})
        deadline = time.monotonic() + 20
        while sum(copied[1:]) < len(newcomers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(copied[1:]) == len(newcomers), copied  # between the tries
    finally:
        go.set()
        reader.rollback()  # the reader is done: the swap takes its lock
        reader.close()
        purge.join(timeout=60)
    assert done and done[0].to_dict()["rewrite"] == "swap", done
    assert copied[-1] == 0, copied  # nothing left to copy under the lock
    assert done[0].to_dict()["lock_attempts"] > 1
    fresh = open_pg(world, pg, table, engine)
    try:
        assert set(newcomers) <= set(fresh.searchable())
        for pid in newcomers:
            assert fresh.identify(engine.embed(world.photo(pid))[0])[0].pid == pid
    finally:
        fresh.close()
        other.close()


def test_a_search_whose_snapshot_began_before_the_swap_still_finds_everyone(
    world, engine, enrolled, pg, table, monkeypatch
):
    """A snapshot taken before the swap committed sees the new table's rows as not yet
    written: a search that had read the change counter when the swap committed found nobody."""
    gallery, pids = enrolled
    gallery.erase(pids[1])
    real = PgGallery._size_in
    purged: list = []

    def size_in(self, conn):
        if not purged:
            # The snapshot is taken (the change counter read first does) and the swap commits.
            conn.execute("SELECT 1")
            purge = threading.Thread(
                target=lambda: purged.append(pg_gallery.purge_physically(pg.dsn, table=table))
            )
            purged.append(purge)
            purge.start()
            purge.join(timeout=5)
        return real(self, conn)

    monkeypatch.setattr(PgGallery, "_size_in", size_in)
    found = gallery.identify(engine.embed(world.photo(pids[0]))[0])
    purged[0].join(timeout=60)
    assert found and found[0].pid == pids[0]
    assert purged[-1].to_dict()["rewrite"] == "swap"


def test_a_purge_killed_during_the_copy_leaves_the_gallery_as_it_was(
    world, engine, enrolled, pg, table, monkeypatch
):
    gallery, pids = enrolled
    victim = pids[3]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    gallery.erase(victim)
    _purge_killed(monkeypatch, pg, table)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        left = conn.execute("SELECT to_regclass(%s)", (f'"{table}$purge"',)).fetchone()[0]
    assert left is None
    assert gallery.identify(engine.embed(world.photo(pids[0]))[0])[0].pid == pids[0]
    # A copy left by hand or by an older version (live rows only: copied after the DELETE) is
    # dropped by the next purge.
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {c} AS SELECT * FROM {t}").format(
                c=sql.Identifier(f"{table}$purge"), t=sql.Identifier(table)
            )
        )
    report = pg_gallery.purge_physically(pg.dsn, table=table).to_dict()
    assert report["rewrite"] == "swap" and report["wal_removed"], report
    assert report["server_messages"] == [], report
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f'"{table}$purge"',)).fetchone()[0] is None
    assert files_holding(pg.data_dir, vector) == []


OBSTACLES = {
    "trigger": (
        "CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END'",
        "CREATE TRIGGER audit BEFORE INSERT ON {t} FOR EACH ROW EXECUTE FUNCTION {f}()",
    ),
    "view": ("CREATE VIEW {v} AS SELECT pid FROM {t}",),
    "foreign key": ("CREATE TABLE {v} (pid text REFERENCES {t} (pid))",),
    "policy": ("CREATE POLICY p ON {t} USING (true)",),
    "publication": ("CREATE PUBLICATION {v} FOR TABLE {t}",),
    "unlogged": ("ALTER TABLE {t} SET UNLOGGED",),
    # What a failed CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY leaves: an invalid index,
    # built, holding every vector (VACUUM FULL rebuilds it from the new heap).
    "invalid index": (
        "CREATE INDEX {v} ON {t} (embedding)",
        "UPDATE pg_index SET indisvalid = false WHERE indexrelid = '{v}'::regclass",
    ),
}
DROP = {
    "trigger": ("DROP TRIGGER IF EXISTS audit ON {t}", "DROP FUNCTION IF EXISTS {f}()"),
    "view": ("DROP VIEW IF EXISTS {v}",),
    "foreign key": ("DROP TABLE IF EXISTS {v}",),
    "policy": ("DROP POLICY IF EXISTS p ON {t}",),
    "publication": ("DROP PUBLICATION IF EXISTS {v}",),
    "unlogged": ("ALTER TABLE {t} SET LOGGED",),
    "invalid index": ("DROP INDEX IF EXISTS {v}",),
}


@pytest.mark.parametrize("kind", list(OBSTACLES))
def test_a_table_with_what_the_swap_cannot_carry_over_is_vacuumed_as_before(
    world, engine, enrolled, pg, table, kind
):
    gallery, pids = enrolled
    names = {
        "t": sql.Identifier(table),
        "f": sql.Identifier(f"{table}_audit"),
        "v": sql.Identifier(f"{table}_other"),
    }
    victim = pids[2]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        for statement in OBSTACLES[kind]:
            conn.execute(sql.SQL(statement).format(**names))
        oid = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]
    try:
        gallery.erase(victim)
        report = gallery.purge_physically().to_dict()
        assert report["rewrite"] == "vacuum_full" and report["swap_refused"], report
        assert report["vacuum_full"] and report["wal_removed"], report
        assert files_holding(pg.data_dir, vector) == []
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0] == oid
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            for statement in DROP[kind]:
                conn.execute(sql.SQL(statement).format(**names))


def test_an_enrolment_that_waits_for_the_copy_goes_through_after_the_swap(
    world, engine, enrolled, pg, table, monkeypatch
):
    """An enrolment reads its row FOR UPDATE before it writes: waiting for its write lock
    behind the copy while holding the table, it deadlocked with the swap, and PostgreSQL failed
    the enrolment or the erasure's purge."""
    gallery, pids = enrolled
    waiting = open_pg(world, pg, table, engine, lock_timeout_s=0)  # a command: it waits
    held, go = _hold_when_built(monkeypatch)
    gallery.erase(pids[1])
    purge, done = _purge_in_thread(gallery)
    newcomer = list(world.people)[6]
    errors: list[BaseException] = []

    def enrol() -> None:
        try:
            waiting.enroll(newcomer, engine.embed(world.photo(newcomer, 2)))
        except BaseException as exc:
            errors.append(exc)

    try:
        assert held.wait(30)
        enrolment = threading.Thread(target=enrol)
        enrolment.start()
        time.sleep(0.5)  # the enrolment waits behind the copy
    finally:
        go.set()
        purge.join(timeout=60)
        enrolment.join(timeout=60)
    assert errors == []
    assert done and done[0].to_dict()["rewrite"] == "swap", done
    assert newcomer in waiting.searchable()
    waiting.close()


def test_a_copy_left_from_before_the_erasure_is_dropped_when_the_table_is_vacuumed_instead(
    world, engine, enrolled, pg, table
):
    """A ``<table>$purge`` made before the erasure holds the subject's search vector; when the
    swap could not run (here a trigger on the table) its drop was rolled back with the refused
    swap, and the erasure certified a table whose old copy still held the vector on disk."""
    gallery, pids = enrolled
    victim = pids[2]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    names = {"t": sql.Identifier(table), "f": sql.Identifier(f"{table}_audit")}
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {c} AS SELECT * FROM {t}").format(
                c=sql.Identifier(f"{table}$purge"), t=names["t"]
            )
        )
        for statement in OBSTACLES["trigger"]:
            conn.execute(sql.SQL(statement).format(**names))
    try:
        gallery.erase(victim)
        report = gallery.purge_physically().to_dict()
        assert report["rewrite"] == "vacuum_full" and report["swap_refused"], report
        assert report["wal_removed"], report
        assert files_holding(pg.data_dir, vector) == []
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            left = conn.execute("SELECT to_regclass(%s)", (f'"{table}$purge"',)).fetchone()[0]
        assert left is None
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            for statement in DROP["trigger"]:
                conn.execute(sql.SQL(statement).format(**names))


def test_a_swap_the_server_refuses_halfway_rolls_back_and_the_table_is_vacuumed(
    world, engine, enrolled, pg, table
):
    """The copy is written, then the index build fails (a relation already has the name the
    swap gives the copy's index): nothing of the swap stays, VACUUM FULL rewrites the table
    and the report says so."""
    gallery, pids = enrolled
    victim = pids[4]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    taken = sql.Identifier(f"{table}$purge_0")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SEQUENCE {s}").format(s=taken))
        oid = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]
    try:
        gallery.erase(victim)
        report = gallery.purge_physically().to_dict()
        assert report["rewrite"] == "vacuum_full", report
        assert "DuplicateTable" in report["swap_refused"], report
        assert report["vacuum_full"] and report["wal_removed"], report
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            assert conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0] == oid
            left = conn.execute("SELECT to_regclass(%s)", (f'"{table}$purge"',)).fetchone()[0]
        assert left is None
        assert files_holding(pg.data_dir, vector) == []
        assert gallery.identify(engine.embed(world.photo(pids[0]))[0])[0].pid == pids[0]
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SEQUENCE IF EXISTS {s}").format(s=taken))


def test_an_erasure_and_its_purge_while_another_purge_copies_both_leave_no_trace(
    world, engine, enrolled, pg, table, monkeypatch
):
    """Two erasures at once (two processes): the second's DELETE goes on during the first's copy
    and the swapped table holds it, its purge waits for the first's; both certify, neither
    vector is in the data folder, serving answers throughout."""
    gallery, pids = enrolled
    other = open_pg(world, pg, table, engine)  # the second process's gallery
    first, second = pids[1], pids[3]
    vectors = [gallery.template(p)[0].astype("<f4").tobytes() for p in (first, second)]
    held, go = _hold_when_built(monkeypatch)
    gallery.erase(first)
    reports: list = []
    errors: list[BaseException] = []

    def run(call) -> None:
        try:
            reports.append(call())
        except BaseException as exc:
            errors.append(exc)

    purge = threading.Thread(target=run, args=(gallery.purge_physically,))
    purge.start()
    assert held.wait(30)
    later = threading.Thread(
        target=run, args=(lambda: (other.erase(second), other.purge_physically())[1],)
    )
    later.start()
    time.sleep(0.5)  # the second erasure's purge waits behind the first
    assert later.is_alive()
    assert gallery.identify(engine.embed(world.photo(pids[0]))[0])[0].pid == pids[0]
    go.set()
    purge.join(timeout=60)
    later.join(timeout=60)
    assert errors == [], errors
    assert [r.to_dict()["rewrite"] for r in reports] == ["swap", "swap"], reports
    for vector in vectors:
        assert files_holding(pg.data_dir, vector) == []
    stored = other.stored()
    assert first not in stored and second not in stored
    assert other.identify(engine.embed(world.photo(pids[4]))[0])[0].pid == pids[4]
    other.close()


def test_an_owner_without_create_on_the_schema_erases_by_vacuum_full_and_with_it_by_swap(
    world, engine, enrolled, pg, table
):
    """The documented least-privilege role (the tables' owner with pg_checkpoint, pg_maintain
    and pg_switch_wal) lacks CREATE on the schema: its purge is VACUUM FULL, said so in the
    report, and certifies; given CREATE, its next purge swaps and the table stays its own."""
    gallery, pids = enrolled
    tables = [sql.Identifier(f"{table}{s}") for s in ("", "_revoked", "_state")]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        role, password = _login_role(conn, "owner", " IN ROLE pg_checkpoint, pg_maintain")
        conn.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {r}").format(
                r=sql.Identifier(role)
            )
        )
        for t in tables:
            conn.execute(
                sql.SQL("ALTER TABLE {t} OWNER TO {r}").format(t=t, r=sql.Identifier(role))
            )
    dsn = psycopg.conninfo.make_conninfo(pg.dsn, user=role, password=password)
    try:
        victim = pids[2]
        vector = gallery.template(victim)[0].astype("<f4").tobytes()
        gallery.erase(victim)
        report = pg_gallery.purge_physically(dsn, table=table).to_dict()
        assert report["rewrite"] == "vacuum_full", report
        assert "InsufficientPrivilege" in report["swap_refused"], report
        assert report["vacuum_full"] and report["wal_removed"], report
        assert files_holding(pg.data_dir, vector) == []
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("GRANT CREATE ON SCHEMA public TO {r}").format(r=sql.Identifier(role))
            )
        victim = pids[3]
        vector = gallery.template(victim)[0].astype("<f4").tobytes()
        gallery.erase(victim)
        report = pg_gallery.purge_physically(dsn, table=table).to_dict()
        assert report["rewrite"] == "swap" and report["wal_removed"], report
        assert files_holding(pg.data_dir, vector) == []
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            owner = conn.execute(
                "SELECT relowner::regrole::text FROM pg_class WHERE oid = %s::regclass", (table,)
            ).fetchone()[0]
        assert owner == role
        assert gallery.identify(engine.embed(world.photo(pids[0]))[0])[0].pid == pids[0]
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("REASSIGN OWNED BY {r} TO CURRENT_USER").format(r=sql.Identifier(role))
            )
            conn.execute(sql.SQL("DROP OWNED BY {r}").format(r=sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {r}").format(r=sql.Identifier(role)))


def test_access_revoked_while_the_purge_copies_stays_revoked_after_the_swap(
    world, engine, enrolled, pg, table, monkeypatch
):
    """A role's access to the templates revoked (or granted) while an erasure's purge copies
    the table: GRANT and REVOKE take no lock on the table, so they went on during the copy,
    and the swapped table came back with the grants copied before them (the revoked role read
    every search vector again, the granted one was refused)."""
    gallery, pids = enrolled
    revoked, granted = (f"reader_{secrets.token_hex(4)}" for _ in range(2))
    t = sql.Identifier(table)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        for role in (revoked, granted):
            conn.execute(sql.SQL("CREATE ROLE {r}").format(r=sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON {t} TO {r}").format(t=t, r=sql.Identifier(revoked)))
    done = _purge_while_built(
        gallery,
        pids[1],
        pg,
        monkeypatch,
        sql.SQL("REVOKE SELECT ON {t} FROM {r}").format(t=t, r=sql.Identifier(revoked)),
        sql.SQL("GRANT SELECT ON {t} TO {r}").format(t=t, r=sql.Identifier(granted)),
    )
    try:
        assert done and done[0].to_dict()["rewrite"] == "swap", done
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            may = {
                role: conn.execute(
                    "SELECT has_table_privilege(%s, %s, 'SELECT')", (role, table)
                ).fetchone()[0]
                for role in (revoked, granted)
            }
        assert may == {revoked: False, granted: True}
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            for role in (revoked, granted):
                conn.execute(
                    sql.SQL("REVOKE ALL ON {t} FROM {r}").format(t=t, r=sql.Identifier(role))
                )
                conn.execute(sql.SQL("DROP ROLE {r}").format(r=sql.Identifier(role)))


def test_a_column_grant_made_while_the_purge_copies_is_kept(
    world, engine, enrolled, pg, table, monkeypatch
):
    """A grant on one column (``GRANT SELECT (pid)``: no lock on the table either) made while
    an erasure's purge copies the table: the swapped table lost it; the swap cannot carry
    column grants over, so the table is rewritten by VACUUM FULL instead, the grant kept and
    the erased template in no file."""
    gallery, pids = enrolled
    role = f"reader_{secrets.token_hex(4)}"
    t = sql.Identifier(table)
    victim = pids[1]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {r}").format(r=sql.Identifier(role)))
    done = _purge_while_built(
        gallery,
        victim,
        pg,
        monkeypatch,
        sql.SQL("GRANT SELECT (pid) ON {t} TO {r}").format(t=t, r=sql.Identifier(role)),
    )
    try:
        assert done, "the purge failed"
        report = done[0].to_dict()
        assert report["wal_removed"], report
        assert files_holding(pg.data_dir, vector) == []
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            kept = conn.execute(
                "SELECT has_column_privilege(%s, %s, 'pid', 'SELECT')", (role, table)
            ).fetchone()[0]
        assert kept, report
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("REVOKE ALL ON {t} FROM {r}").format(t=t, r=sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {r}").format(r=sql.Identifier(role)))


def _log_state(dsn: str, table: str) -> dict:
    """The purge's change log as the catalogs show it: the triggers on the table (name,
    enabled), the log table's columns (name, type) and whether its trigger function exists."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        triggers = conn.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = %s::regclass "
            "AND NOT tgisinternal ORDER BY tgname",
            (table,),
        ).fetchall()
        log = f'"{table}{pg_swap.LOG_SUFFIX}"'
        columns = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
            (log,),
        ).fetchall()
        function = conn.execute("SELECT to_regprocedure(%s)", (f"{log}()",)).fetchone()[0]
    return {"triggers": triggers, "log": columns, "function": function is not None}


NO_LOG = {"triggers": [], "log": [], "function": False}


def _xact_reads(conn, table: str) -> dict[str, tuple[int, int, int]]:
    """What this transaction has read of the table and of its copy so far: sequential scans,
    rows they read, rows fetched through an index."""
    rows = conn.execute(
        "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_tup_fetch, 0) "
        "FROM pg_stat_xact_user_tables WHERE relid IN (to_regclass(%s), to_regclass(%s))",
        (f'"{table}"', f'"{table}$purge"'),
    ).fetchall()
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def test_under_the_swaps_lock_only_the_rows_written_since_are_read(
    world, engine, enrolled, pg, table, monkeypatch
):
    """The catch-up under the swap's ACCESS EXCLUSIVE lock read the table's versions in one
    pass over the heap (0.29 s of a 0.65 s hold at 100k HNSW rows; past serving's 2 s lock
    timeout at 1M): it reads only the rows written since the last catch-up, through the key,
    and copies them; the table and its copy are not scanned while serving waits."""
    gallery, pids = enrolled
    other = open_pg(world, pg, table, engine)  # another process's replica
    held, go = _hold_when_built(monkeypatch, "caught_up")
    reads: dict[str, dict] = {}
    lock, describe = pg_swap._lock_briefly, pg_swap.describe

    def locked(conn, *a, **kw):
        tries = lock(conn, *a, **kw)
        reads["locked"] = _xact_reads(conn, table)
        return tries

    def before_drop(conn, oid):
        if "locked" in reads and "dropping" not in reads:
            reads["dropping"] = _xact_reads(conn, table)
        return describe(conn, oid)

    monkeypatch.setattr(pg_swap, "_lock_briefly", locked)
    monkeypatch.setattr(pg_swap, "describe", before_drop)
    gallery.erase(pids[1])
    purge, done = _purge_in_thread(gallery)
    newcomers = list(world.people)[6:8]
    renewed = pids[0]
    try:
        assert held.wait(30), "the purge never caught up"
        other.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in newcomers})
        other.enroll(renewed, engine.embed(world.photo(renewed, 3)))
        written = _row(pg.dsn, table, renewed)
        other.erase(pids[3])
    finally:
        go.set()
        purge.join(timeout=60)
    assert done and done[0].to_dict()["rewrite"] == "swap", done
    assert set(reads) == {"locked", "dropping"}, reads
    changed = len(newcomers) + 2
    for name in (table, f"{table}$purge"):
        at_lock, at_drop = (reads[when].get(name, (0, 0, 0)) for when in ("locked", "dropping"))
        scans, scanned, fetched = (b - a for a, b in zip(at_lock, at_drop, strict=True))
        assert (scans, scanned) == (0, 0), (name, reads)
        assert fetched <= 2 * changed, (name, reads)  # a row deleted, then copied again
    # ...and what was written meanwhile is in the swapped table.
    for pid in newcomers:
        assert _row(pg.dsn, table, pid) is not None
    assert _row(pg.dsn, table, renewed) == written
    assert _row(pg.dsn, table, pids[3]) is None
    # The swapped table has no trigger, and the log and its function are gone with the old one.
    assert _log_state(pg.dsn, table) == NO_LOG
    other.close()


def test_the_change_log_holds_keys_only_and_catches_writes_of_other_clients(
    world, engine, enrolled, pg, table, monkeypatch
):
    """Writes to the gallery table by another client in plain SQL, as a role that owns nothing
    (an insert, an update, a delete), while the purge copies: the swapped table holds them as
    written. The log the purge keeps meanwhile holds the written rows' keys and nothing else
    (no search vector, no sealed template)."""
    gallery, pids = enrolled
    t = sql.Identifier(table)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        role, password = _login_role(conn, "writer")
        conn.execute(
            sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {r}").format(
                t=t, r=sql.Identifier(role)
            )
        )
    held, go = _hold_when_built(monkeypatch)
    gallery.erase(pids[1])
    purge, done = _purge_in_thread(gallery)
    planted = f"p{secrets.token_hex(8)}"
    whole = sql.SQL("SELECT pid, template_sha256, n_images, embedding::text FROM {t} ORDER BY pid")
    try:
        assert held.wait(30), "the purge never reached the index build"
        dsn = psycopg.conninfo.make_conninfo(pg.dsn, user=role, password=password)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    "INSERT INTO {t} (pid, model_version, embedding, cluster, sealed, "
                    "template_sha256, n_images) SELECT %s, model_version, embedding, cluster, "
                    "sealed, template_sha256, n_images FROM {t} WHERE pid = %s"
                ).format(t=t),
                (planted, pids[0]),
            )
            conn.execute(
                sql.SQL("UPDATE {t} SET n_images = n_images + 7 WHERE pid = %s").format(t=t),
                (pids[4],),
            )
            conn.execute(sql.SQL("DELETE FROM {t} WHERE pid = %s").format(t=t), (pids[5],))
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            expected = conn.execute(whole.format(t=t)).fetchall()
            log = sql.Identifier(f"{table}{pg_swap.LOG_SUFFIX}")
            logged = conn.execute(sql.SQL("SELECT * FROM {g}").format(g=log)).fetchall()
        state = _log_state(pg.dsn, table)
    finally:
        go.set()
        purge.join(timeout=60)
    assert done and done[0].to_dict()["rewrite"] == "swap", done
    assert state["triggers"] == [(pg_swap.LOG_TRIGGER, "A")], state
    assert state["log"] == [("pid", "text")], state
    assert sorted(logged) == sorted([(planted,), (pids[4],), (pids[5],)])
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        assert conn.execute(whole.format(t=t)).fetchall() == expected
        conn.execute(sql.SQL("REVOKE ALL ON {t} FROM {r}").format(t=t, r=sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {r}").format(r=sql.Identifier(role)))
    assert _log_state(pg.dsn, table) == NO_LOG


@pytest.mark.parametrize("removed_by", ["opening", "purge"])
def test_a_purge_that_dies_leaves_a_log_that_enrolments_pass_and_the_next_removes(
    world, engine, enrolled, pg, table, monkeypatch, removed_by
):
    """A purge killed during its copy: its change log (committed before the copy, so that
    concurrent writes reach it) stays with its trigger. Enrolments go on through it (the log
    gains their keys only); the next opening of the gallery, or the next purge, removes it,
    and that purge swaps (the log's trigger is the one trigger a swap allows)."""
    gallery, pids = enrolled
    gallery.erase(pids[3])
    during: list[dict] = []
    _purge_killed(monkeypatch, pg, table, before=lambda: during.append(_log_state(pg.dsn, table)))
    left = {"triggers": [(pg_swap.LOG_TRIGGER, "A")], "log": [("pid", "text")], "function": True}
    assert during == [left]
    assert _log_state(pg.dsn, table) == left
    newcomer = list(world.people)[6]
    gallery.enroll(newcomer, engine.embed(world.photo(newcomer, 2)))
    assert gallery.identify(engine.embed(world.photo(newcomer))[0])[0].pid == newcomer
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        log = sql.Identifier(f"{table}{pg_swap.LOG_SUFFIX}")
        assert conn.execute(sql.SQL("SELECT * FROM {g}").format(g=log)).fetchall() == [(newcomer,)]
    if removed_by == "opening":
        open_pg(world, pg, table, engine).close()
        assert _log_state(pg.dsn, table) == NO_LOG
    gallery.erase(pids[4])
    report = gallery.purge_physically().to_dict()
    assert report["rewrite"] == "swap", report
    assert _log_state(pg.dsn, table) == NO_LOG
    assert newcomer in gallery.searchable()
    assert gallery.identify(engine.embed(world.photo(pids[0]))[0])[0].pid == pids[0]


def test_a_refused_swap_removes_its_log_before_the_table_is_vacuumed(
    world, engine, enrolled, pg, table
):
    """The swap fails after its log was made (a relation has the name of the copy's index):
    the log, its trigger and function are removed, and the table is vacuumed as before."""
    gallery, pids = enrolled
    taken = sql.Identifier(f"{table}$purge_0")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SEQUENCE {s}").format(s=taken))
    try:
        gallery.erase(pids[4])
        report = gallery.purge_physically().to_dict()
        assert report["rewrite"] == "vacuum_full", report
        assert _log_state(pg.dsn, table) == NO_LOG
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SEQUENCE IF EXISTS {s}").format(s=taken))


@pytest.mark.parametrize("removed_by", ["opening", "purge"])
def test_an_old_table_left_beside_the_gallery_fails_the_erasure_until_dropped(
    world, engine, enrolled, pg, table, removed_by
):
    """A ``<table>$purge_old`` (the old table a purge that dies between its swap's commit and
    the old table's drop leaves; made here by hand before the erasure) holds the erased
    subject's vector in its files: the erasure's verify names it while it is there, and the
    next opening of the gallery, or the next purge, drops it."""
    gallery, pids = enrolled
    victim = pids[2]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    old = f"{table}{pg_swap.OLD_SUFFIX}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TABLE {o} AS SELECT * FROM {t}").format(
                o=sql.Identifier(old), t=sql.Identifier(table)
            )
        )
    gallery.erase(victim)
    ctx = _erasure_context(world, gallery, pg, table)
    left = pg_store.verify(ctx, victim)
    assert len(left) == 1 and old in left[0], left
    assert pg_gallery.purge_leftovers(pg.dsn, table=table) == [old]
    if removed_by == "opening":
        open_pg(world, pg, table, engine).close()
        assert not _exists(pg.dsn, old)
        assert pg_store.verify(ctx, victim) == []
    report = gallery.purge_physically().to_dict()
    assert report["rewrite"] == "swap" and report["wal_removed"], report
    assert not _exists(pg.dsn, old)
    assert pg_store.verify(ctx, victim) == []
    assert files_holding(pg.data_dir, vector) == []
    assert gallery.identify(engine.embed(world.photo(pids[0]))[0])[0].pid == pids[0]


def _files(conn, oid: int) -> list[str]:
    """The data folder's paths of the first file of the table ``oid``, its TOAST table and
    its indexes."""
    return [
        r[0]
        for r in conn.execute(
            "SELECT pg_relation_filepath(c.oid) FROM pg_class c WHERE c.oid = %(t)s OR c.oid = "
            "(SELECT reltoastrelid FROM pg_class WHERE oid = %(t)s) OR c.oid IN (SELECT "
            "indexrelid FROM pg_index WHERE indrelid = %(t)s)",
            {"t": oid},
        ).fetchall()
    ]


def test_the_old_table_is_dropped_after_the_swaps_commit_not_under_its_lock(
    world, engine, enrolled, pg, table, monkeypatch
):
    """The swap dropped the old table in its own transaction: the commit unlinked the old heap,
    TOAST and index files with the ACCESS EXCLUSIVE lock held (0.21 s of a 0.37-0.79 s hold at
    100k HNSW templates, past serving's 2 s lock timeout towards 1M). Now at the swap's commit
    the old table is still there, renamed aside, its files whole; it is dropped in a
    transaction of its own, during which the purge holds no lock on the gallery table and a
    search answers; it is gone, its files unlinked, before the purge returns."""
    gallery, pids = enrolled
    other = open_pg(world, pg, table, engine)  # another replica, its lock timeout 0.5 s
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        oid = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]
        files = [pg.data_dir / f for f in _files(conn, oid)]
    assert len(files) == 4  # heap, TOAST, primary key, HNSW
    seen: dict = {}

    def relname(conn) -> str | None:
        row = conn.execute("SELECT relname FROM pg_class WHERE oid = %s", (oid,)).fetchone()
        return row[0] if row else None

    def phase(conn, name):
        if name == "swapped":  # in the swap's transaction, just before its commit
            seen[name] = relname(conn)
        elif name in ("committed", "dropping", "dropped"):
            with psycopg.connect(pg.dsn, autocommit=True) as watcher:
                seen[name] = {
                    "old": relname(watcher),
                    "files": [f.stat().st_size if f.exists() else 0 for f in files],
                    "held": watcher.execute(
                        "SELECT relation::regclass::text, mode FROM pg_locks WHERE pid = %s "
                        "AND locktype = 'relation' AND relation IN (%s, to_regclass(%s)) "
                        "ORDER BY 1",
                        (conn.info.backend_pid, oid, table),
                    ).fetchall(),
                }
            if name == "dropping":
                seen["search"] = other.identify(engine.embed(world.photo(pids[0]))[0])[0].pid

    monkeypatch.setattr(pg_swap, "_phase", phase)
    gallery.erase(pids[1])
    report = gallery.purge_physically().to_dict()
    assert report["rewrite"] == "swap", report
    aside = f"{table}{pg_swap.OLD_SUFFIX}"
    assert seen.get("swapped") == aside, seen
    assert seen["committed"]["old"] == aside, seen
    assert sum(seen["committed"]["files"]) > 0, seen  # the old pages, in place
    assert seen["committed"]["held"] == [], seen
    # Dropping: the old table alone is held; the gallery table is not, and a search answers.
    assert seen["dropping"]["held"] == [(f'"{aside}"', "AccessExclusiveLock")], seen
    assert seen["search"] == pids[0]
    assert seen["dropped"]["old"] is None and seen["dropped"]["files"] == [0, 0, 0, 0], seen
    assert not _exists(pg.dsn, aside)
    other.close()


def _a_victim_planned(world, enrolled, pg, table):
    """The pgvector step's plan to erase the fourth enrolled subject: (gallery, pids, victim,
    the victim's vector as a file would hold it, the erasure's context, the plan, the name the
    swap puts the old table under)."""
    gallery, pids = enrolled
    victim = pids[3]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    ctx = _erasure_context(world, gallery, pg, table)
    plan = pg_store.plan(ctx, victim)
    return gallery, pids, victim, vector, ctx, plan, f"{table}{pg_swap.OLD_SUFFIX}"


def _step_run_again(ctx, victim, plan) -> None:
    """The erasure's pgvector step run again (as a resumed erasure runs it): a swap, the WAL
    switched."""
    again = pg_store.plan(ctx, victim)
    outcome = pg_store.erase(ctx, victim, plan.artefacts, again)
    assert outcome.info["rewrite"] == "swap" and outcome.info["wal_removed"], outcome.info


def _nothing_left(pg, ctx, victim, aside, vector) -> None:
    """The old table gone, the step verified, the victim's vector in no file."""
    assert not _exists(pg.dsn, aside)
    assert pg_store.verify(ctx, victim) == []
    assert files_holding(pg.data_dir, vector) == []


@pytest.mark.parametrize("removed_by", ["opening", "purge", "resumed erasure"])
def test_a_purge_that_dies_after_its_swap_leaves_an_old_table_the_erasure_does_not_verify(
    world, engine, enrolled, pg, table, monkeypatch, removed_by
):
    """A purge killed between its swap's commit and the old table's drop: the old table is
    left under ``<table>$purge_old``, its files holding the erased subject's vector. The
    erasure's verify names it while it is there; the next opening of the gallery, the next
    purge, or the erasure's step run again drops it, and the vector is then in no file."""
    gallery, pids, victim, vector, ctx, plan, aside = _a_victim_planned(world, enrolled, pg, table)
    _purge_killed(
        monkeypatch,
        pg,
        table,
        at="committed",
        purge=lambda: pg_store.erase(ctx, victim, plan.artefacts, plan),
    )
    assert _exists(pg.dsn, aside)
    assert victim not in gallery.stored()  # the swap committed: the new table serves
    assert gallery.identify(engine.embed(world.photo(pids[0]))[0])[0].pid == pids[0]
    left = pg_store.verify(ctx, victim)
    assert len(left) == 1 and aside in left[0], left
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the old table's pages reach its files
    assert any(f.startswith("base/") for f in files_holding(pg.data_dir, vector))
    if removed_by == "opening":
        open_pg(world, pg, table, engine).close()
        assert not _exists(pg.dsn, aside)
        assert pg_store.verify(ctx, victim) == []
        gallery.purge_physically()  # the erasure's run again: WAL switched, checkpoint
    elif removed_by == "purge":
        gallery.erase(pids[4])
        assert gallery.purge_physically().to_dict()["rewrite"] == "swap"
    else:
        _step_run_again(ctx, victim, plan)
    _nothing_left(pg, ctx, victim, aside, vector)


def test_a_search_and_an_enrolment_waiting_for_the_swaps_lock_reach_the_new_table(
    world, engine, enrolled, pg, table, monkeypatch
):
    """A search, an enrolment and another client's prepared statement wait for the gallery
    table behind the swap's ACCESS EXCLUSIVE lock, their lock asked for on the old table, which
    the swap renames aside: once the lock is released PostgreSQL looks the name (or the
    prepared statement's plan) up again, and each reads or writes the new table, with no error;
    the enrolment's row is in the table that serves, not in the old one dropped after."""
    gallery, pids = enrolled
    waiting = open_pg(world, pg, table, engine, lock_timeout_s=0)  # a command: it waits
    searcher = open_pg(world, pg, table, engine, lock_timeout_s=0)
    client = psycopg.connect(pg.dsn, autocommit=True)
    read = sql.SQL("SELECT tableoid FROM {t} WHERE pid = %s").format(t=sql.Identifier(table))
    for _ in range(2):
        client.execute(read, (pids[0],), prepare=True)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        oid = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]
    held, go = _hold_when_built(monkeypatch, "swapped")  # renamed, not committed yet
    gallery.erase(pids[1])
    purge, done = _purge_in_thread(gallery)
    newcomer = list(world.people)[6]
    results: dict = {}
    errors: list[BaseException] = []

    def run(name, call) -> None:
        try:
            results[name] = call()
        except BaseException as exc:
            errors.append(exc)

    calls = {
        "enrol": lambda: waiting.enroll(newcomer, engine.embed(world.photo(newcomer, 2))),
        "search": lambda: searcher.identify(engine.embed(world.photo(pids[4]))[0])[0].pid,
        "prepared": lambda: client.execute(read, (pids[0],), prepare=True).fetchone()[0],
    }
    threads = [threading.Thread(target=run, args=item) for item in calls.items()]
    try:
        assert held.wait(30), "the purge never reached its swap"
        for thread in threads:
            thread.start()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            waiters = 0
            while waiters < len(calls) and time.monotonic() < deadline:
                time.sleep(0.05)
                waiters = conn.execute(
                    "SELECT count(DISTINCT pid) FROM pg_locks WHERE relation = %s AND NOT granted",
                    (oid,),
                ).fetchone()[0]
        assert waiters == len(calls), "the calls did not wait for the old table's lock"
    finally:
        go.set()
        purge.join(timeout=60)
        for thread in threads:
            thread.join(timeout=60)
    assert errors == [], errors
    assert done and done[0].to_dict()["rewrite"] == "swap", done
    assert results["search"] == pids[4], results
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        swapped = conn.execute("SELECT %s::regclass::oid", (table,)).fetchone()[0]
    assert swapped != oid and results["prepared"] == swapped, results  # the new table's row
    assert not _exists(pg.dsn, f"{table}{pg_swap.OLD_SUFFIX}")
    assert _row(pg.dsn, table, newcomer) is not None
    assert newcomer in gallery.searchable()
    assert gallery.identify(engine.embed(world.photo(newcomer))[0])[0].pid == newcomer
    client.close()
    waiting.close()
    searcher.close()


def held_at_commit(monkeypatch, pg, name: str, *, toast: bool = False) -> psycopg.Connection:
    """A client that, at a purge's swap's commit, reads the table ``name`` (the old table, by
    its name: a pg_dump, a query typed by hand; with ``toast``, its TOAST table alone) in a
    transaction it leaves open, so holding a lock on it; returned (closing it ends the
    transaction)."""
    blocker = psycopg.connect(pg.dsn)
    read_once: list[str] = []

    def read(conn, phase):
        if phase == "committed" and not read_once:
            read_once.append(phase)
            target = sql.Identifier(name)
            if toast:
                found = blocker.execute(
                    "SELECT n.nspname, c.relname FROM pg_class t JOIN pg_class c ON c.oid = "
                    "t.reltoastrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE t.oid = %s::regclass",
                    (target.as_string(blocker),),
                ).fetchone()
                target = sql.Identifier(*found)
            blocker.execute(sql.SQL("SELECT 1 FROM {o} LIMIT 1").format(o=target))

    monkeypatch.setattr(pg_swap, "_phase", read)
    return blocker


def ended_within(call, seconds: float, *, blocker: psycopg.Connection) -> BaseException | None:
    """What ``call`` raised (None: it returned), run in a thread; it must end within
    ``seconds``. One that waits longer fails the test, ``blocker`` closed so that it ends."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=seconds)
    waited = thread.is_alive()
    if waited:
        blocker.close()
        thread.join(timeout=60)
    assert not waited, f"still waiting after {seconds} s for the session holding the table"
    return raised[0] if raised else None


@pytest.mark.parametrize("toast", [False, True], ids=["table", "its TOAST table"])
def test_a_session_holding_the_old_table_stops_the_erasure_after_a_bounded_wait(
    world, engine, enrolled, pg, table, monkeypatch, toast
):
    """A client reads ``<table>$purge_old`` by its name in a transaction it keeps open (a
    pg_dump, a query typed by hand) just after the swap's commit: the old table's drop waited
    for its lock with no timeout, and the erasure with it, for as long as that session lived.
    Now it asks for the lock as the swap asks for the table's, then stops with a message that
    names the session's backend and says what to do; the old table stays under its name, the
    erasure's verify names it, and once the session ends the erasure's step run again drops it
    and nothing of the vector is left in the data folder. A session holding only the old
    table's TOAST table was named "ended since": it is named too."""
    gallery, _, victim, vector, ctx, plan, aside = _a_victim_planned(world, enrolled, pg, table)
    monkeypatch.setattr(pg_gallery, "PURGE_LOCK_TRIES", 3)  # 3 x 0.5 s, 1 s apart
    blocker = held_at_commit(monkeypatch, pg, aside, toast=toast)
    start = time.monotonic()
    error = ended_within(
        lambda: pg_store.erase(ctx, victim, plan.artefacts, plan), 30, blocker=blocker
    )
    assert isinstance(error, pg_swap.OldTableHeldError), error
    assert time.monotonic() - start < 20
    said = str(error)
    assert aside in said and "visage privacy resume" in said, said
    assert f"{blocker.info.backend_pid} (client backend)" in said, said
    assert victim not in said
    assert _exists(pg.dsn, aside)
    assert victim not in gallery.stored()  # the swap committed: the new table serves
    left = pg_store.verify(ctx, victim)
    assert len(left) == 1 and aside in left[0], left

    blocker.close()
    _step_run_again(ctx, victim, plan)
    _nothing_left(pg, ctx, victim, aside, vector)


@pytest.fixture
def pg_autovacuuming():
    """A PostgreSQL of its own whose autovacuum launcher looks at the database every second
    (the stack's session server is left as it is)."""
    from visage_ml.stack.postgres import temporary_server

    with temporary_server() as srv:
        with psycopg.connect(srv.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET autovacuum_naptime = 1")
            conn.execute("SELECT pg_reload_conf()")
        yield srv


def _autovacuuming(dsn: str, relation: str, *, within: float) -> int:
    """The pid of the autovacuum worker that vacuums ``relation`` (schema-qualified), waited
    for."""
    deadline = time.monotonic() + within
    vacuums = re.compile(rf"VACUUM (ANALYZE )?{re.escape(relation)}\b")
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            for pid, query in conn.execute(
                "SELECT pid, query FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'"
            ).fetchall():
                if vacuums.search(query or ""):
                    return int(pid)
            time.sleep(0.2)
    raise AssertionError(f"no autovacuum of {relation} within {within} s")


def _slowly_autovacuumed(dsn: str, table: str, *, rows: int, sealed: int) -> str:
    """``rows`` rows of other people put in ``table``, each with a sealed value of ``sealed``
    bytes (over about 2,000: in the TOAST table), and the table's autovacuum slowed (its TOAST
    table takes its settings) so that it is still at work when the purge asks for its locks.
    Returns the TOAST table's name."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        t = sql.Identifier(table)
        conn.execute(
            sql.SQL(
                "INSERT INTO {t} (pid, model_version, embedding, cluster, sealed, "
                "template_sha256, n_images) SELECT 'pz' || lpad(g::text, 15, '0'), %s, "
                "array_fill(0.001::real, ARRAY[%s])::vector, 0, (SELECT decode(string_agg("
                "md5(g::text || '.' || i::text), ''), 'hex') FROM generate_series(1, %s) i), "
                "'x', 1 FROM generate_series(1, %s) g"
            ).format(t=t),
            (VERSION, DIM, sealed // 16, rows),
        )
        conn.execute(
            sql.SQL(
                "ALTER TABLE {t} SET (autovacuum_vacuum_cost_delay = 100, "
                "autovacuum_vacuum_cost_limit = 1, autovacuum_vacuum_insert_threshold = 1, "
                "autovacuum_vacuum_insert_scale_factor = 0)"
            ).format(t=t)
        )
        return conn.execute(
            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = %s::regclass",
            (t.as_string(conn),),
        ).fetchone()[0]


def test_an_autovacuum_of_the_old_table_does_not_stop_the_erasure(
    world, engine, pg_autovacuuming, table, monkeypatch
):
    """At a million templates an autovacuum of the gallery's TOAST table (where the sealed
    templates lie) ran for minutes, and was still running when the swap had committed: the old
    table's drop, asked for 0.5 s at a time, never waited the second (deadlock_timeout) after
    which PostgreSQL cancels an autovacuum that blocks a lock, and the erasure stopped with
    OldTableHeldError, its message naming no session ("ended since"). An autovacuum gives way to
    the drop as it gives way to any schema change."""
    pg = pg_autovacuuming
    gallery = open_pg(world, pg, table, engine)
    pids = list(world.people)[:6]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in pids})
    toast = _slowly_autovacuumed(pg.dsn, table, rows=200, sealed=40_000)
    _autovacuuming(pg.dsn, toast, within=90)
    ctx = _erasure_context(world, gallery, pg, table)
    victim = pids[3]
    plan = pg_store.plan(ctx, victim)
    monkeypatch.setattr(pg_gallery, "PURGE_LOCK_TRIES", 3)
    outcome = pg_store.erase(ctx, victim, plan.artefacts, plan)
    assert outcome.info["rewrite"] == "swap", outcome.info
    assert not _exists(pg.dsn, f"{table}{pg_swap.OLD_SUFFIX}")
    assert pg_store.verify(ctx, victim) == []
    gallery.close()


@pytest.mark.parametrize("rewrite", ["swap", "vacuum_full"])
def test_an_autovacuum_of_the_table_gives_way_to_the_purge_at_its_second_try(
    world, engine, pg_autovacuuming, table, rewrite
):
    """An autovacuum of the gallery table (a large one's runs for minutes) holds it in a mode
    the change log's trigger (SHARE ROW EXCLUSIVE) and a VACUUM FULL conflict with. Each was
    asked for 0.5 s at a time, shorter than the second (deadlock_timeout) after which
    PostgreSQL cancels an autovacuum that blocks a lock: the purge went through all its tries,
    about 14 s of refusals, before the last one waited long enough. Once a refused try finds an
    autovacuum worker holding the table, the next waits for PostgreSQL to cancel it."""
    pg = pg_autovacuuming
    gallery = open_pg(world, pg, table, engine)
    pids = list(world.people)[:6]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in pids})
    # Heap pages, not TOAST: values under the TOAST threshold, a few rows to a page.
    _slowly_autovacuumed(pg.dsn, table, rows=3000, sealed=800)
    if rewrite == "vacuum_full":
        names = {"t": sql.Identifier(table), "f": sql.Identifier(f"{table}_audit")}
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            for statement in OBSTACLES["trigger"]:
                conn.execute(sql.SQL(statement).format(**names))
    worker = _autovacuuming(pg.dsn, f"public.{table}", within=90)
    gallery.erase(pids[3])
    report = gallery.purge_physically().to_dict()
    assert report["rewrite"] == rewrite, report
    assert report["lock_attempts"] <= 3 < pg_gallery.PURGE_LOCK_TRIES, report
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = %s AND query LIKE %s",
                (worker, f"%{table}%"),
            ).fetchone()[0]
            == 0
        ), "the autovacuum was not cancelled"
    gallery.close()
