"""One face enrolled under two pids at the same instant by replicas on two hosts (their gallery
folders' file locks do not see each other): the de-duplication must let one of the two through,
not both."""

from __future__ import annotations

import contextlib
import secrets
import threading

import pytest
from serving_fakes import DIM, THRESHOLD, fake_engine, make_world

from visage_ml.privacy.core import PrivacyCore
from visage_ml.serving import pg_gallery
from visage_ml.serving.gallery import MatchesEnrolledError
from visage_ml.serving.pg_gallery import PgGallery, PgOptions

VERSION = "emb-test-1"


@pytest.fixture
def world(project):
    return make_world(project, n_subjects=6, seed=secrets.randbits(31))


def _open(world, pg, table, engine, core=None) -> PgGallery:
    return PgGallery.open(
        world.paths,
        options=PgOptions(dsn=pg.dsn, table=table, hnsw=False, lock_timeout_s=5),
        model_version=VERSION,
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=core if core is not None else world.core,
        embed=engine.embed,
    )


def test_one_face_enrolled_under_two_pids_on_two_hosts_at_once_is_refused_once(
    world, pg, table, monkeypatch
):
    engine = fake_engine(world.paths.root)
    # Two hosts: each replica's file lock is its own machine's, so neither waits for the other,
    # and each has its own privacy core (a registry shared by two threads without the one
    # gallery lock a server holds around it was refused its own ledger now and then).
    monkeypatch.setattr(pg_gallery, "file_lock", lambda _path: contextlib.nullcontext())
    first = _open(world, pg, table, engine)
    second = _open(world, pg, table, engine, core=PrivacyCore(world.paths))
    face_of, a, b = list(world.people)[:3]
    face = engine.embed(world.photo(face_of, 2))
    # Both searches run before either row is written, when nothing serialises them.
    both_searched = threading.Barrier(2, timeout=3)
    search = PgGallery._refuse_matches

    def searched_then_wait(self, vectors, threshold_for):
        search(self, vectors, threshold_for)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_searched.wait()

    monkeypatch.setattr(PgGallery, "_refuse_matches", searched_then_wait)
    outcome: dict[str, object] = {}

    def enrol(gallery: PgGallery, pid: str) -> None:
        try:
            gallery.enroll(pid, face, model_version=VERSION, distinct_at=lambda _n: 0.5)
            outcome[pid] = "enrolled"
        except MatchesEnrolledError:
            outcome[pid] = "refused"

    threads = [threading.Thread(target=enrol, args=(g, p)) for g, p in ((first, a), (second, b))]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(outcome.values()) == ["enrolled", "refused"], outcome
        enrolled = [p for p, o in outcome.items() if o == "enrolled"]
        assert set(first.searchable()) == set(enrolled)
    finally:
        first.close()
        second.close()


def test_the_server_lets_go_of_a_replica_gone_silent_within_minutes(world, pg, table):
    """A replica's host frozen or cut off while it holds a lock (a row's, the enrolment's
    advisory lock): the server learns of it from TCP keepalives, after the system's default
    of two hours unless the session asks sooner, and every other replica's enrolment answers
    503 until then."""
    engine = fake_engine(world.paths.root)
    gallery = _open(world, pg, table, engine)
    try:
        conn = gallery._conn
        assert conn.info.host.startswith("127.") or conn.info.host == "localhost"  # TCP
        said = {
            name: int(conn.execute(f"SHOW {name}").fetchone()[0].rstrip("s"))
            for name in ("tcp_keepalives_idle", "tcp_keepalives_interval", "tcp_keepalives_count")
        }
        conn.rollback()
        idle, interval, count = said.values()
        assert 0 < idle + interval * count <= 120, said
    finally:
        gallery.close()
