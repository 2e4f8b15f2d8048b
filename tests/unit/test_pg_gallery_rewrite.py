"""The pgvector gallery while an erasure rewrites its table (VACUUM FULL): the rebuild of the
HNSW index gets the memory it needs whatever the server's setting, serving answers 503 to retry
instead of hanging for the rewrite, and the erasure itself still waits for its locks."""

from __future__ import annotations

import secrets
import threading
import time

import numpy as np
import psycopg
import pytest
from fastapi.testclient import TestClient
from psycopg import sql
from serving_fakes import DIM, THRESHOLD, fake_engine, make_world, png_b64

from visage_ml.app.http.app import create_app
from visage_ml.app.http.auth import KeyStore
from visage_ml.config import load_params
from visage_ml.evaluation.calibration import calibration_set, fit_calibration
from visage_ml.serving import pg_gallery
from visage_ml.serving.gallery import GalleryUnavailableError
from visage_ml.serving.pg_gallery import PgGallery, PgOptions

VERSION = "emb-test-1"
# Short, so that the tests are: serving's default is 2 s.
LOCK_TIMEOUT_S = 0.5


@pytest.fixture
def world(project):
    return make_world(project, n_subjects=6, seed=secrets.randbits(31))


@pytest.fixture
def engine(world):
    return fake_engine(world.paths.root)


def open_pg(world, dsn, table, *, lock_timeout_s=LOCK_TIMEOUT_S, engine=None):
    return PgGallery.open(
        world.paths,
        options=PgOptions(dsn=dsn, table=table, listen=False, lock_timeout_s=lock_timeout_s),
        model_version=VERSION,
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=world.core,
        embed=engine.embed if engine is not None else None,
    )


@pytest.fixture
def enrolled(world, engine, stack_postgres, table):
    gallery = open_pg(world, stack_postgres.dsn, table, engine=engine)
    pids = list(world.people)[:5]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in pids})
    yield gallery, pids
    gallery.close()


class Holder:
    """Another session holding a lock on the gallery table (``mode``) until released."""

    def __init__(self, dsn: str, table: str, mode: str = "ACCESS EXCLUSIVE") -> None:
        self.conn = psycopg.connect(dsn)
        self.conn.execute(
            sql.SQL("LOCK TABLE {t} IN {m} MODE").format(t=sql.Identifier(table), m=sql.SQL(mode))
        )

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()
            self.conn.close()

    def release_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.release)
        timer.start()
        return timer


def _hnsw_gallery_table(dsn: str, table: str, *, rows: int, dim: int = 64) -> None:
    """A gallery table of ``rows`` random templates with its HNSW index (no project needed:
    only the purge runs on it)."""
    names = pg_gallery.Names(table)
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((rows, dim)).astype("f4")
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with pg_gallery.connect(dsn, autocommit=True) as conn:
        pg_gallery.ensure_schema(conn, names, dim)
        with conn.cursor().copy(
            sql.SQL(
                "COPY {t} (pid, model_version, embedding, sealed, template_sha256, n_images) "
                "FROM STDIN WITH (FORMAT BINARY)"
            ).format(t=names.t)
        ) as copy:
            copy.set_types(["text", "text", "vector", "bytea", "text", "int4"])
            for i, v in enumerate(vecs):
                copy.write_row((f"p{i:016x}", VERSION, v, b"\x00" * 64, "0" * 64, 1))
        pg_gallery.ensure_hnsw(conn, names)


def _server_messages(report) -> list[str]:
    return list(report.to_dict().get("server_messages", ["(not reported)"]))


def _api(world, engine, gallery):
    app = create_app(
        world.paths,
        params=load_params(world.paths.params),
        engine=engine,
        gallery=gallery,
        core=world.core,
    )
    return TestClient(app, raise_server_exceptions=False)


def test_the_purge_rebuilds_the_hnsw_index_in_memory_whatever_the_servers_setting(
    stack_postgres, table
):
    dsn = stack_postgres.dsn
    _hnsw_gallery_table(dsn, table, rows=4000)
    with psycopg.connect(dsn, autocommit=True) as admin:
        size = admin.execute(
            "SELECT pg_relation_size(%s::regclass)", (f"{table}_hnsw",)
        ).fetchone()[0]
        assert size > 2 * 1024 * 1024, size  # larger than the server's setting below
        # A server configured with little maintenance memory (PostgreSQL's least: 1 MB).
        admin.execute("ALTER ROLE CURRENT_USER SET maintenance_work_mem = '1MB'")
        try:
            # Capped below the index, the rebuild spills to disk: pgvector says so, and the
            # purge's report carries what the server said.
            slow = pg_gallery.purge_physically(dsn, table=table, memory_mb=1)
            assert any("no longer fits" in m for m in _server_messages(slow)), slow
            # With the default cap the purge sizes the rebuild's memory from the index.
            report = pg_gallery.purge_physically(dsn, table=table)
        finally:
            admin.execute("ALTER ROLE CURRENT_USER RESET maintenance_work_mem")
    assert _server_messages(report) == [], report
    info = report.to_dict()
    assert info["maintenance_work_mem_mb"] * 1024 * 1024 >= size, info
    assert info["vacuum_full"] and info["wal_removed"], info


def test_the_purge_never_lowers_the_servers_maintenance_memory(stack_postgres, table):
    dsn = stack_postgres.dsn
    _hnsw_gallery_table(dsn, table, rows=200)
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("ALTER ROLE CURRENT_USER SET maintenance_work_mem = '300MB'")
        try:
            report = pg_gallery.purge_physically(dsn, table=table, memory_mb=64)
        finally:
            admin.execute("ALTER ROLE CURRENT_USER RESET maintenance_work_mem")
    assert report.to_dict()["maintenance_work_mem_mb"] == 300


def test_a_search_or_enrolment_blocked_by_a_rewrite_answers_unavailable_not_hangs(
    world, engine, enrolled, stack_postgres, table
):
    gallery, pids = enrolled
    probe = engine.embed(world.photo(pids[0]))[0]
    newcomer = list(world.people)[5]
    holder = Holder(stack_postgres.dsn, table)
    try:
        for call in (
            lambda: gallery.identify(probe, top_k=1),
            lambda: gallery.enroll(newcomer, engine.embed(world.photo(newcomer, 2))),
        ):
            start = time.perf_counter()
            with pytest.raises(GalleryUnavailableError, match="rewritten") as caught:
                call()
            assert time.perf_counter() - start < LOCK_TIMEOUT_S + 2.0
            assert pids[0] not in str(caught.value)
        # Calls queued behind each other in one replica do not wait a lock timeout each.
        errors: list[BaseException] = []

        def search() -> None:
            try:
                gallery.identify(probe, top_k=1)
            except BaseException as exc:
                errors.append(exc)

        start = time.perf_counter()
        threads = [threading.Thread(target=search) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.perf_counter() - start < 2 * LOCK_TIMEOUT_S + 2.0
        assert len(errors) == 6 and all(isinstance(e, GalleryUnavailableError) for e in errors)
    finally:
        holder.release()
    # The rewrite over: answered again, on the same connection.
    assert gallery.identify(probe, top_k=1)[0].pid == pids[0]
    gallery.enroll(newcomer, engine.embed(world.photo(newcomer, 2)))
    assert newcomer in gallery.searchable()


def test_the_api_answers_503_with_retry_after_while_the_gallery_is_rewritten(
    world, engine, enrolled, stack_postgres, table
):
    gallery, pids = enrolled
    client = _api(world, engine, gallery)
    headers = {"X-API-Key": KeyStore(world.paths.api_keys).create("operator")[1]}
    body = {"image": png_b64(world.photo(pids[0], 1)[0])}
    holder = Holder(stack_postgres.dsn, table)
    try:
        r = client.post("/v1/identify", json=body, headers=headers)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "gallery_unavailable"
        assert "rewritten" in r.json()["error"]["message"]
        assert r.headers["Retry-After"]
    finally:
        holder.release()
    r = client.post("/v1/identify", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["faces"][0]["matches"][0]["pid"] == pids[0]


def test_an_erasure_waits_for_the_table_as_long_as_it_takes(enrolled, stack_postgres, table):
    gallery, pids = enrolled
    holder = Holder(stack_postgres.dsn, table)
    timer = holder.release_after(3 * LOCK_TIMEOUT_S)
    try:
        start = time.perf_counter()
        removal = gallery.erase(pids[1])  # the DELETE waits for the lock, then goes through
        assert time.perf_counter() - start >= 2 * LOCK_TIMEOUT_S
    finally:
        timer.join()
    assert removal.removed
    assert pids[1] not in gallery.searchable()
    assert pg_gallery.subject_rows(stack_postgres.dsn, pids[1], table=table) == {}


def test_the_purge_does_not_queue_serving_behind_a_long_reader(
    world, engine, stack_postgres, table, monkeypatch
):
    """A VACUUM FULL waiting for its lock makes every later search wait behind it: a long
    transaction reading the table (a report, `visage gallery verify`) would stall serving for its
    whole length. The purge asks for the lock briefly, again and again, instead."""
    gallery = open_pg(world, stack_postgres.dsn, table, lock_timeout_s=2.0)
    pids = list(world.people)[:3]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 2)) for pid in pids})
    probe = engine.embed(world.photo(pids[0]))[0]
    gallery.erase(pids[2])
    reader = Holder(stack_postgres.dsn, table, mode="ACCESS SHARE")
    done: list = []
    purge = threading.Thread(target=lambda: done.append(gallery.purge_physically()))
    try:
        purge.start()
        time.sleep(0.3)
        # Serving goes on while the reader holds the table and the purge waits its turn.
        for _ in range(3):
            assert gallery.identify(probe, top_k=1)[0].pid == pids[0]
            time.sleep(0.3)
    finally:
        reader.release()
        purge.join(timeout=60)
        gallery.close()
    assert done, "the purge did not finish once the reader was gone"
    info = done[0].to_dict()
    assert info["vacuum_full"] and info["lock_attempts"] > 1, info


def test_the_gallery_size_asked_during_a_rewrite_answers_503_to_retry(
    world, engine, enrolled, stack_postgres, table
):
    """/healthz with a key (and identify when no face was searched) answer with the gallery's
    size: asked while the table is rewritten, the 503 to retry, not a server error."""
    gallery, pids = enrolled
    client = _api(world, engine, gallery)
    headers = {"X-API-Key": KeyStore(world.paths.api_keys).create("operator")[1]}
    holder = Holder(stack_postgres.dsn, table)
    try:
        start = time.perf_counter()
        r = client.get("/healthz", headers=headers)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "gallery_unavailable"
        assert time.perf_counter() - start < LOCK_TIMEOUT_S + 2.0
    finally:
        holder.release()
    r = client.get("/healthz", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["identification"]["gallery_size"] == len(pids)


def test_a_replica_starting_during_a_rewrite_sets_its_calibration_after_it(
    world, engine, enrolled, stack_postgres, table
):
    """visage serve opens the gallery, then sets the released score calibration (the stored
    clusters rewritten when it changed): a replica started during an erasure's rewrite waits for
    it, as opening does, instead of failing to start."""
    gallery, pids = enrolled
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(60, DIM))
    emb = np.repeat(centres, 3, axis=0) + 0.5 * rng.normal(size=(180, DIM))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cal = fit_calibration(
        "fsn",
        calibration_set(
            emb, np.repeat(np.arange(60), 3), n_clusters=2, impostor_pairs_max=10**5, seed=0
        ),
        target_fmr=1e-2,
    )
    holder = Holder(stack_postgres.dsn, table)
    timer = holder.release_after(3 * LOCK_TIMEOUT_S)
    try:
        start = time.perf_counter()
        gallery.set_calibration(cal)
        assert time.perf_counter() - start >= 2 * LOCK_TIMEOUT_S
    finally:
        timer.join()
    probe = engine.embed(world.photo(pids[0]))[0]
    assert gallery.identify(probe, top_k=1)[0].pid == pids[0]


def test_an_api_erasure_done_as_another_rewrite_begins_answers_its_certificate(
    project, stack_postgres, table, monkeypatch
):
    """The erasure endpoint refreshes the gallery after the erasure: another replica's (or
    erasure's) rewrite beginning then must not turn a completed, certified erasure into a 503
    that says it was not completed (its retry answers 409 subject_erased)."""
    from project_helpers import write_overrides
    from rights_fakes import make_project

    from visage_ml.app.http.routers import requests as requests_router
    from visage_ml.rights.certify import verify_certificate
    from visage_ml.rights.erasure import Erasure

    proj = make_project(project, enrol=False)
    dsn = stack_postgres.dsn
    write_overrides(
        project / "params.yaml",
        {
            "serving.gallery.backend": "pgvector",
            "serving.gallery.dsn": dsn,
            "serving.gallery.table": table,
        },
    )
    gallery = open_pg(proj.world, dsn, table, engine=proj.engine)
    gallery.enroll_many({pid: proj.engine.embed(proj.world.photo(pid, 2)) for pid in proj.pids})
    gallery.write_meta()
    holders: list[Holder] = []

    class RewriteBegins(Erasure):
        def erase(self, *args, **kw):
            result = super().erase(*args, **kw)
            holders.append(Holder(dsn, table))  # another erasure's VACUUM FULL, elsewhere
            return result

    monkeypatch.setattr(requests_router, "Erasure", RewriteBegins)
    app = create_app(
        proj.paths,
        params=load_params(proj.paths.params),
        engine=proj.engine,
        gallery=gallery,
        core=proj.core,
        mode="full",
    )
    client = TestClient(app, raise_server_exceptions=False)
    headers = {"X-API-Key": KeyStore(proj.paths.api_keys).create("dpo")[1]}
    victim = proj.pids[0]
    try:
        r = client.post(f"/v1/subjects/{victim}/erasure", headers=headers)
    finally:
        for h in holders:
            h.release()
        gallery.close()
    assert holders, "the erasure did not run"
    assert r.status_code == 200, r.text
    cert = proj.paths.certificates / r.json()["certificate"]
    assert verify_certificate(cert, root=proj.paths.root).ok


def test_a_rights_event_recorded_during_a_rewrite_answers_done_with_the_gallery_pending(
    world, engine, enrolled, stack_postgres, table
):
    """A withdrawal, objection or restriction is recorded in the ledger before the answer reads
    the gallery: a rewrite then must not turn it into a 503 that says to retry (the retry
    answers 409, the event being recorded already). The answer says it was done, its gallery
    part pending."""
    gallery, pids = enrolled
    client = _api(world, engine, gallery)
    headers = {"X-API-Key": KeyStore(world.paths.api_keys).create("dpo")[1]}
    calls = {
        pids[0]: ("consent/withdraw", {"purposes": ["identification"]}, "consent.withdrawn"),
        pids[1]: ("object", {"purposes": ["identification"]}, "objection"),
        pids[2]: ("restrict", None, None),
    }
    answers = {}
    holder = Holder(stack_postgres.dsn, table)
    try:
        for pid, (path, body, _) in calls.items():
            start = time.perf_counter()
            answers[pid] = client.post(f"/v1/subjects/{pid}/{path}", json=body, headers=headers)
            assert time.perf_counter() - start < LOCK_TIMEOUT_S + 2.0
    finally:
        holder.release()
    for pid, (path, _, event) in calls.items():
        r = answers[pid]
        assert r.status_code == 200, (path, r.text)
        out = r.json()
        if event is not None:
            assert out["event"] == event
        gallery_state = out["subject"]["gallery"]
        assert gallery_state["status"] == "pending", gallery_state
        assert gallery_state["enrolled"] is None and gallery_state["searchable"] is None
        # Recorded once: what the answer says, the ledger holds.
        recorded = [
            e.seq
            for e in world.core.ledger.entries(containing=pid.encode())
            if e.type == out["event"] and e.pid == pid
        ]
        assert recorded == [out["seq"]]
    # Which is why the answer may not say to retry: the retry is refused, the event done.
    path, body, _ = calls[pids[0]]
    r = client.post(f"/v1/subjects/{pids[0]}/{path}", json=body, headers=headers)
    assert r.status_code == 409 and r.json()["error"]["code"] == "not_consented", r.text
    # The rewrite over, the gallery's part is read again: no longer searchable, nor found.
    for pid in calls:
        state = client.get(f"/v1/subjects/{pid}", headers=headers).json()["gallery"]
        assert state["status"] == "current" and state["searchable"] is False, state
        probe = engine.embed(world.photo(pid))[0]
        assert all(m.pid != pid for m in gallery.identify(probe, top_k=3))
    # An answer not interrupted says the gallery's part is current.
    r = client.post(f"/v1/subjects/{pids[3]}/restrict", headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["subject"]["gallery"]["status"] == "current"


def test_metrics_during_a_rewrite_answer_without_the_gallery_gauge(
    world, engine, enrolled, stack_postgres, table
):
    """A Prometheus scrape during an erasure's rewrite: answered (a 503 marks the replica down
    for every erasure), the gallery's size left out, ``visage_gallery_available`` 0."""
    from prometheus_client.parser import text_string_to_metric_families

    gallery, pids = enrolled
    client = _api(world, engine, gallery)
    headers = {"X-API-Key": KeyStore(world.paths.api_keys).create("metrics")[1]}

    def scrape() -> dict[str, float]:
        start = time.perf_counter()
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 200, r.text
        assert time.perf_counter() - start < LOCK_TIMEOUT_S + 2.0
        return {s.name: s.value for f in text_string_to_metric_families(r.text) for s in f.samples}

    before = scrape()
    assert before["visage_gallery_templates"] == len(pids)
    assert before["visage_gallery_available"] == 1
    # Another replica's erasure: its DELETE changes the gallery (the size cached by this replica
    # is stale), then its VACUUM FULL holds the table.
    other = open_pg(world, stack_postgres.dsn, table, engine=engine)
    try:
        assert other.erase(pids[4]).removed
    finally:
        other.close()
    holder = Holder(stack_postgres.dsn, table)
    try:
        during = scrape()
    finally:
        holder.release()
    assert "visage_gallery_templates" not in during, during
    assert during["visage_gallery_available"] == 0
    assert "visage_analytics_frames" in during
    after = scrape()
    assert after["visage_gallery_templates"] == len(pids) - 1
    assert after["visage_gallery_available"] == 1
