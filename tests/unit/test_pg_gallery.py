"""The shared pgvector gallery: same answers as the in-memory one, consent honoured by every
replica at query time, and erasure that leaves no template byte in PostgreSQL's data folder."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import socket
import time
import types
import zipfile
from pathlib import Path

import numpy as np
import psycopg
import psycopg.sql
import pytest
from fastapi.testclient import TestClient
from project_helpers import write_overrides
from psycopg.conninfo import make_conninfo
from rights_fakes import make_project
from serving_fakes import DIM, THRESHOLD, fake_engine, make_world, png_b64
from test_pg_gallery_swap import ended_within, held_at_commit
from typer.testing import CliRunner

from visage_ml.app.cli import app as cli
from visage_ml.app.http.app import create_app
from visage_ml.app.http.auth import KeyStore
from visage_ml.config import load_params
from visage_ml.evaluation.calibration import calibrate, calibration_set, fit_calibration
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.erasure import gallery as gallery_store
from visage_ml.rights.erasure import pgvector as pg_store
from visage_ml.rights.erasure.base import Context, label_outcomes
from visage_ml.rights.export import Delivery, export_subject
from visage_ml.rights.sealing import doctor
from visage_ml.serving import pg_gallery, pg_swap
from visage_ml.serving.gallery import (
    AnchorUnrecordedError,
    EnrolmentRefusedError,
    GalleryUnavailableError,
    NotEnrolledError,
    Reference,
    ReferenceChangedError,
)
from visage_ml.serving.index import TemplateIndex, normalize_queries, template_of
from visage_ml.serving.pg_gallery import PgGallery, PgOptions
from visage_ml.stack import stores
from visage_ml.stack.proc import StackError

VERSION = "emb-test-1"
PLAIN = Delivery(plaintext=True)


@pytest.fixture
def world(project):
    # A seed of its own: other tests' tables in the shared cluster must not hold these templates.
    return make_world(project, n_subjects=20, without_identification=2, seed=secrets.randbits(31))


@pytest.fixture
def engine(world):
    return fake_engine(world.paths.root)


def open_pg(world, pg, table, *, core=None, hnsw=False, listen=False, engine=None):
    return PgGallery.open(
        world.paths,
        options=PgOptions(dsn=pg.dsn, table=table, hnsw=hnsw, listen=listen),
        model_version=VERSION,
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=core or world.core,
        embed=engine.embed if engine is not None else None,
    )


@pytest.fixture
def enrolled(world, engine, pg, table):
    gallery = open_pg(world, pg, table)
    pids = list(world.people)[:18]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 3)) for pid in pids})
    yield gallery, pids
    gallery.close()


def test_answers_as_the_memory_gallery_does(world, engine, enrolled):
    gallery, pids = enrolled
    # The in-memory backend's index over the same templates.
    memory = TemplateIndex(DIM)
    for pid in pids:
        memory.put(pid, gallery.template(pid)[0])
    assert gallery.size == len(memory) == 18
    for pid in pids:
        emb = engine.embed(world.photo(pid))[0]
        got = gallery.identify(emb, top_k=3)
        want = memory.search(normalize_queries(emb, DIM), top_k=3, threshold=THRESHOLD)[0]
        assert [m.pid for m in got] == [p for p, _ in want]
        np.testing.assert_allclose([m.score for m in got], [s for _, s in want], atol=1e-5)
        assert got[0].pid == pid
        assert gallery.verify(emb, pid)[0] is True
    refused = list(world.people)[-1]
    with pytest.raises(EnrolmentRefusedError):
        gallery.enroll(refused, engine.embed(world.photo(refused)))


def _asnorm(dim: int):
    """AS-norm fitted on a synthetic cohort (other people than the world's)."""
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(60, dim))
    emb = np.repeat(centres, 3, axis=0) + 0.5 * rng.normal(size=(180, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cal = calibration_set(
        emb, np.repeat(np.arange(60), 3), n_clusters=2, impostor_pairs_max=10**5, seed=0
    )
    return fit_calibration("asnorm", cal, target_fmr=1e-2, cohort_top_k=10)


def test_asnorm_scores_as_the_memory_gallery_and_evaluation_do(world, engine, enrolled):
    """The SQL shortlist (raw cosine) reranked by AS-norm gives the memory index's answer and the
    score evaluation gives the same pair; verify too."""
    gallery, pids = enrolled
    cal = _asnorm(DIM)
    gallery.set_calibration(cal)
    templates = np.stack([gallery.template(pid)[0] for pid in pids])
    memory = TemplateIndex(DIM)
    memory.extend(pids, templates)
    memory.set_calibration(cal)
    moved = []
    for pid in pids[:8]:
        emb = engine.embed(world.photo(pid))[0]
        q = normalize_queries(emb, DIM)
        (got,), _, _ = gallery.search(emb[None], top_k=3, threshold_for=lambda n: -1.0)
        want = memory.search(q, top_k=3, threshold=-1.0)[0]
        assert [m.pid for m in got] == [p for p, _ in want]
        np.testing.assert_allclose([m.score for m in got], [s for _, s in want], atol=1e-5)
        evaluated = calibrate(q @ templates.T, q, templates, calibration=cal)[0]
        np.testing.assert_allclose([m.score for m in got], np.sort(evaluated)[::-1][:3], atol=1e-5)
        _, score = gallery.verify(emb, pid)
        assert score == pytest.approx(evaluated[pids.index(pid)], abs=1e-5)
        moved.append(abs(score - float(q[0] @ gallery.template(pid)[0])))
    # The calibration is not a no-op (one pair may land near its raw cosine by chance: it did,
    # 0.9673 against 0.9671, in one CI run).
    assert np.median(moved) > 1e-3


def test_sealed_column_holds_no_plaintext_and_opens_with_the_key(world, enrolled, pg, table):
    gallery, pids = enrolled
    sealed = _sealed(pg, table, pids[0])
    vector, header = gallery.template(pids[0])
    assert vector.astype("<f4").tobytes() not in sealed
    assert header["pid"] == pids[0]
    (event,) = [
        e for e in world.core.ledger.entries() if e.type == "gallery.enrolled" and e.pid == pids[0]
    ]
    assert event.payload["template_sha256"] == hashlib.sha256(sealed).hexdigest()


def test_a_replica_that_never_read_the_ledger_still_never_returns_a_withdrawn_subject(
    world, engine, enrolled, pg, table
):
    gallery, pids = enrolled
    # Replica B: its own privacy core, no listener, and it never refreshes from the ledger.
    other = open_pg(world, pg, table, core=PrivacyCore(world.paths))
    other.refresh = lambda: None
    withdrawn, erased = pids[0], pids[1]
    emb_w = engine.embed(world.photo(withdrawn))[0]
    emb_e = engine.embed(world.photo(erased))[0]
    assert other.identify(emb_w)[0].pid == withdrawn
    world.core.withdraw_consent(withdrawn, ["identification"])
    gallery.refresh()  # replica A handles the withdrawal (the HTTP route does this)
    gallery.erase(erased)
    rows, n, _ = other.search(np.stack([emb_w, emb_e]), top_k=18, threshold_for=lambda _n: -1.0)
    assert withdrawn not in [m.pid for m in rows[0]]
    assert erased not in [m.pid for m in rows[1]]
    assert n == 16  # the threshold's N is the shared gallery's size in the search's snapshot
    with pytest.raises(NotEnrolledError):
        other.verify(emb_w, withdrawn)
    assert other.status(erased) == {
        "enrolled": False,
        "searchable": False,
        "template_model_version": None,
    }
    # Consent given again: searchable again, for every replica.
    world.core.give_consent(withdrawn, _receipt())
    gallery.refresh()
    assert other.identify(emb_w)[0].pid == withdrawn
    other.close()


def _receipt():
    from serving_fakes import receipt

    return receipt(("training", "evaluation", "identification"))


def test_listening_replica_sees_the_new_size_within_one_second(world, engine, enrolled, pg, table):
    gallery, pids = enrolled
    other = open_pg(world, pg, table, core=PrivacyCore(world.paths), listen=True)
    try:
        assert other.size == 18
        t0 = time.perf_counter()
        gallery.erase(pids[2])
        while other.size != 17 and time.perf_counter() - t0 < 2.0:
            time.sleep(0.005)
        elapsed = time.perf_counter() - t0
        assert other.size == 17, "the listening replica never saw the erasure"
        assert elapsed < 1.0
        assert other.notifications >= 1
    finally:
        other.close()


def test_hnsw_finds_the_same_subjects_and_filters_revoked_ones(world, engine, enrolled, pg, table):
    _gallery, pids = enrolled
    approx = open_pg(world, pg, table, hnsw=True)
    world.core.withdraw_consent(pids[3], ["identification"])
    approx.refresh()
    for pid in pids:
        got = approx.identify(engine.embed(world.photo(pid))[0], top_k=3)
        if pid == pids[3]:
            assert pid not in [m.pid for m in got]
        else:
            assert got[0].pid == pid
    approx.close()


def _sealed(pg, table: str, pid: str) -> bytes:
    query = psycopg.sql.SQL("SELECT sealed FROM {} WHERE pid = %s").format(
        psycopg.sql.Identifier(table)
    )
    with psycopg.connect(pg.dsn) as conn:
        return bytes(conn.execute(query, (pid,)).fetchone()[0])


def _scan(data_dir: Path, needles: dict[str, bytes]) -> list[tuple[str, str]]:
    """(needle name, file) for every file under the data folder holding a needle's bytes."""
    hits = []
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            path = Path(root) / name
            try:
                blob = path.read_bytes()
            except OSError:
                continue
            hits += [(k, str(path.relative_to(data_dir))) for k, v in needles.items() if v in blob]
    return hits


def _needles(gallery, pg, table, pid):
    vector = gallery.template(pid)[0].astype("<f4").tobytes()
    sealed = _sealed(pg, table, pid)
    # Windows of the ciphertext (a long value may be split into TOAST chunks; the head is the
    # clear header, alike for every subject but the pid).
    return {"vector": vector, "sealed_body": sealed[-200:-152], "sealed_tail": sealed[-48:]}


@pytest.mark.parametrize("hnsw", [False, True])
def test_erasure_leaves_no_template_byte_in_the_data_folder(world, engine, pg, table, hnsw):
    gallery = open_pg(world, pg, table, hnsw=hnsw)
    pids = list(world.people)[:18]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 3)) for pid in pids})
    victim = pids[4]
    needles = _needles(gallery, pg, table, victim)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the heap and index pages reach their files
    before = _scan(pg.data_dir, needles)
    # The attack works before the erasure: an operator reading the files finds the template.
    assert {k for k, _ in before} == set(needles), before
    assert any(f.startswith("base/") for _, f in before)

    params = load_params(world.paths.params) if world.paths.params.exists() else None
    params = params or _default_params()
    g = dataclasses.replace(params.serving.gallery, backend="pgvector", dsn=pg.dsn, table=table)
    params = dataclasses.replace(params, serving=dataclasses.replace(params.serving, gallery=g))
    ctx = Context(paths=world.paths, core=world.core, params=params, gallery=gallery)
    plan = pg_store.plan(ctx, victim)
    assert sorted(a["path"] for a in plan.artefacts) == [
        f"pgvector:{table}/{victim}.embedding",
        f"pgvector:{table}/{victim}.tpl",
    ]
    outcome = pg_store.erase(ctx, victim, plan.artefacts, plan)
    assert outcome.info["vacuum_full"] and outcome.info["wal_removed"], outcome.info
    labelled = {a["path"]: a["outcome"] for a in label_outcomes(outcome.artefacts, {})}
    assert labelled[f"pgvector:{table}/{victim}.tpl"] == "crypto-shredded"
    assert labelled[f"pgvector:{table}/{victim}.embedding"] == "physically removed"
    assert pg_store.verify(ctx, victim) == []
    assert not gallery.keys.exists(victim)
    after = _scan(pg.data_dir, needles)
    assert after == [], f"template bytes survive erasure in {after}"
    # Everyone else is still found.
    assert gallery.identify(engine.embed(world.photo(pids[5]))[0])[0].pid == pids[5]
    gallery.close()


def test_wal_that_may_keep_old_pages_is_reported_not_claimed_removed(world, engine, pg, table):
    gallery = open_pg(world, pg, table)
    pid = next(iter(world.people))
    gallery.enroll(pid, engine.embed(world.photo(pid, 2)))
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_recycle = on")
        conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.2)
        try:
            gallery.erase(pid)
            report = gallery.purge_physically().to_dict()
        finally:
            conn.execute("ALTER SYSTEM SET wal_recycle = off")
            conn.execute("SELECT pg_reload_conf()")
            time.sleep(0.2)
    assert report["wal_removed"] is False
    assert any("wal_recycle" in why for why in report["wal_retention"])
    gallery.close()


def _default_params():
    return load_params(Path(__file__).resolve().parents[2] / "params.yaml")


def test_rows_hash_the_stored_vector(enrolled, pg, table):
    gallery, pids = enrolled
    rows = pg_gallery.subject_rows(pg.dsn, pids[0], table=table)
    vector = gallery.template(pids[0])[0].astype("<f4").tobytes()
    assert rows[f"pgvector:{table}/{pids[0]}.embedding"] == hashlib.sha256(vector).hexdigest()


def _with_gallery(params, **kw):
    g = dataclasses.replace(params.serving.gallery, **kw)
    return dataclasses.replace(params, serving=dataclasses.replace(params.serving, gallery=g))


def test_commands_open_the_configured_shared_gallery(world, enrolled, pg, table):
    _gallery, pids = enrolled
    params = _with_gallery(_default_params(), backend="pgvector", dsn="", table=table)
    with pytest.raises(pg_gallery.GalleryError, match="VISAGE_GALLERY_DSN"):
        pg_gallery.open_configured(world.paths, params, environ={})
    opened = pg_gallery.open_configured(
        world.paths, params, environ={pg_gallery.DSN_ENV: pg.dsn}, core=world.core
    )
    assert isinstance(opened, PgGallery)
    assert opened.stats()["searchable"] == 18 and opened.stored() == sorted(pids)
    opened.close()
    params = _with_gallery(params, table=f"{table}_none", dsn=pg.dsn)
    assert pg_gallery.open_configured(world.paths, params, environ={}) is None


def _served_from_pg(proj, project, pg, table) -> PgGallery:
    """Switch ``proj`` to the pgvector gallery (params.yaml) and enrol everyone there."""
    write_overrides(
        project / "params.yaml",
        {
            "serving.gallery.backend": "pgvector",
            "serving.gallery.dsn": pg.dsn,
            "serving.gallery.table": table,
        },
    )
    gallery = open_pg(proj.world, pg, table, core=proj.core)
    gallery.enroll_many({pid: proj.engine.embed(proj.world.photo(pid, 2)) for pid in proj.pids})
    gallery.write_meta()
    return gallery


def test_an_erasure_request_reaches_the_shared_gallery_and_certifies_it(project, pg, table):
    """The whole orchestrator on a project whose served gallery is in PostgreSQL: the row goes
    before the key, the certificate lists both copies with how each went, the access bundle of
    another subject still carries their template, and nothing of the victim is on disk."""
    proj = make_project(project, enrol=False)
    gallery = _served_from_pg(proj, project, pg, table)
    victim, other = proj.pids[0], proj.pids[1]
    needles = _needles(gallery, pg, table, victim)
    gallery.close()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
    assert {k for k, _ in _scan(pg.data_dir, needles)} == set(needles)

    result = Erasure(proj.paths).erase(victim)
    claims = result.certificate["claims"]
    outcome = {a["path"]: a["outcome"] for a in claims["artefacts"] if a["step"] == "gallery"}
    assert outcome[f"pgvector:{table}/{victim}.tpl"] == "crypto-shredded"
    assert outcome[f"pgvector:{table}/{victim}.embedding"] == "physically removed"
    # The anchor template, a file beside the gallery key: gone, and certified.
    anchor = f"gallery/anchors/{victim[1:3]}/{victim}.anc"
    assert outcome[anchor] == "crypto-shredded"
    assert not (proj.paths.root / anchor).exists()
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    assert _scan(pg.data_dir, needles) == []
    reopened = pg_gallery.open_project_gallery(proj.paths, core=PrivacyCore(proj.paths))
    assert victim not in reopened.stored() and other in reopened.stored()
    reopened.close()
    out = project.parent / "bundle.zip"
    export_subject(proj.paths, other, out=out, core=PrivacyCore(proj.paths), delivery=PLAIN)
    with zipfile.ZipFile(out) as zf:
        doc = json.loads(zf.read("templates.json"))
    (template,) = doc["templates"]
    assert template["stored_sha256"] == hashlib.sha256(_sealed(pg, table, other)).hexdigest()
    (anchor,) = doc["anchors"]  # the other's anchor: their first template, decrypted
    assert anchor["vector"] == template["vector"]
    sealed_anchor = (proj.paths.gallery / "anchors" / other[1:3] / f"{other}.anc").read_bytes()
    assert anchor["stored_sha256"] == hashlib.sha256(sealed_anchor).hexdigest()


def _a_pg_victim(project, pg, table):
    """A project served from the table, its first subject the victim: (project, victim, the
    victim's vector as the data folder would hold it, the name the swap puts the old table
    under)."""
    proj = make_project(project, enrol=False)
    gallery = _served_from_pg(proj, project, pg, table)
    victim = proj.pids[0]
    needles = _needles(gallery, pg, table, victim)
    gallery.close()
    return proj, victim, needles, f"{table}{pg_swap.OLD_SUFFIX}"


def _resumed_leaves_nothing(proj, pg, victim, aside, needles) -> None:
    """The resumed erasure certifies, the old table gone and nothing of the victim on disk."""
    (result,) = Erasure(proj.paths).resume()
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    assert Erasure(proj.paths).remaining(victim)["gallery"] == []
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f'"{aside}"',)).fetchone()[0] is None
    assert _scan(pg.data_dir, needles) == []


def test_an_erasure_whose_purge_dies_after_its_swap_certifies_only_once_resumed(
    project, pg, table, monkeypatch
):
    """The purge drops the old table after the swap's commit, in a transaction of its own. A
    process dying in between leaves it (``<table>$purge_old``), its files holding the erased
    vector: the erasure stops uncertified, its verify names the table, and the resumed erasure
    drops it before its WAL switch and checkpoint, then certifies with nothing of the victim
    on disk."""
    proj, victim, needles, aside = _a_pg_victim(project, pg, table)

    def die(conn, phase):
        if phase == "committed":
            with psycopg.connect(pg.dsn, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))

    with monkeypatch.context() as patched, pytest.raises(psycopg.OperationalError):
        patched.setattr(pg_swap, "_phase", die)
        Erasure(proj.paths).erase(victim)
    assert not list(proj.paths.certificates.glob("*.json"))
    left = [x for x in Erasure(proj.paths).remaining(victim)["gallery"] if x.startswith("pgvector")]
    assert len(left) == 1 and aside in left[0], left  # the row is gone, the old table is not
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")  # the old table's pages reach its files
    assert any(f.startswith("base/") for _, f in _scan(pg.data_dir, needles))

    _resumed_leaves_nothing(proj, pg, victim, aside, needles)


def test_an_erasure_whose_old_table_a_session_holds_certifies_only_once_it_ends(
    project, pg, table, monkeypatch
):
    """A client holds the swap's old table (``<table>$purge_old``, read by its name in a
    transaction left open) from the swap's commit on: the erasure waited for it with no
    timeout. Now the erasure stops uncertified after a bounded wait, saying to end that session
    and resume; a resume while it still holds the table stops the same way; once it ends, the
    resumed erasure drops the old table and certifies with nothing of the victim on disk."""
    proj, victim, needles, aside = _a_pg_victim(project, pg, table)
    monkeypatch.setattr(pg_gallery, "PURGE_LOCK_TRIES", 3)
    blocker = held_at_commit(monkeypatch, pg, aside)

    for run in (lambda: Erasure(proj.paths).erase(victim), lambda: Erasure(proj.paths).resume()):
        error = ended_within(run, 60, blocker=blocker)
        assert isinstance(error, pg_swap.OldTableHeldError), error
        assert str(blocker.info.backend_pid) in str(error) and victim not in str(error)
        assert not list(proj.paths.certificates.glob("*.json"))
        left = [
            x for x in Erasure(proj.paths).remaining(victim)["gallery"] if x.startswith("pgvector")
        ]
        assert len(left) == 1 and aside in left[0], left

    blocker.close()
    _resumed_leaves_nothing(proj, pg, victim, aside, needles)


def test_an_erasure_of_a_pgvector_project_reads_no_file_of_a_size_nothing_erased_has(
    project, pg, table
):
    """The shared gallery's rows are recorded with their sizes like files: without them the
    copies step and the verifier read every byte of the project (GBs of unrelated data)."""
    from visage_ml.rights import content_scan

    proj = make_project(project, enrol=False)
    _served_from_pg(proj, project, pg, table).close()
    bulk = proj.paths.root / "data" / "interim" / "bulk.bin"
    bulk.parent.mkdir(parents=True)
    # Random bytes after a NUL: one run in 256 began with "{", which may be a notebook, and
    # was rightly read.
    bulk.write_bytes(b"\x00" + os.urandom(300_000))
    read: list[Path] = []
    real_hash = content_scan._hash

    def hashed(path: Path, *args, **kwargs):
        read.append(Path(path))
        return real_hash(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(content_scan, "_hash", hashed)
        result = Erasure(proj.paths).erase(proj.pids[0])
        rows = [a for a in result.certificate["claims"]["artefacts"] if a["store"] == "pgvector"]
        assert rows and all(isinstance(a.get("size"), int) for a in rows if a.get("sha256"))
        assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    assert read and bulk not in read


def test_an_erasure_after_a_switch_to_pgvector_removes_the_old_memory_template(project, pg, table):
    """deploy.md switches a project that served from memory to PostgreSQL: the memory gallery's
    template file of the subject is left beside the shared key. The erasure removes it too, so
    the certificate verifies and nothing of the subject stays in gallery/."""
    proj = make_project(project, enrol=True)
    victim = proj.pids[0]
    old = proj.paths.gallery / "templates" / victim[1:3] / f"{victim}.tpl"
    assert old.is_file()
    gallery = _served_from_pg(proj, project, pg, table)
    gallery.close()

    result = Erasure(proj.paths).erase(victim)
    claims = result.certificate["claims"]
    outcome = {a["path"]: a["outcome"] for a in claims["artefacts"] if a["step"] == "gallery"}
    assert outcome[f"gallery/templates/{victim[1:3]}/{victim}.tpl"] == "crypto-shredded"
    assert not old.exists()
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


@pytest.mark.parametrize("list_deleted", [False, True], ids=["list-kept", "list-deleted"])
@pytest.mark.parametrize(
    "switch", [{"serving.gallery.backend": "memory"}, {"serving.gallery.table": "g_renamed"}]
)
def test_an_erasure_reaches_a_shared_gallery_the_project_no_longer_points_at(
    project, pg, table, switch, list_deleted
):
    """A project that enrolled into PostgreSQL and then went back to `memory` (or renamed the
    table) leaves the table in the server, each row holding a template in clear (the
    `embedding` column). The erasure planned its pgvector step from params.yaml alone: the key
    went, the row stayed, and the certificate said nothing of it. Deleting the project's list
    of stores (`.visage/stores.json`) does not hide the table: the ledger remembers it."""
    proj = make_project(project, enrol=False)
    gallery = _served_from_pg(proj, project, pg, table)
    victim, other = proj.pids[0], proj.pids[1]
    gallery.close()
    write_overrides(project / "params.yaml", switch)
    if list_deleted:
        (project / stores.STATE_FILE).unlink()

    result = Erasure(proj.paths).erase(victim)
    assert pg_gallery.subject_rows(pg.dsn, victim, table=table) == {}, "template left in clear"
    assert pg_gallery.subject_rows(pg.dsn, other, table=table)
    claims = result.certificate["claims"]
    outcome = {a["path"]: a["outcome"] for a in claims["artefacts"] if a["step"] == "gallery"}
    assert outcome[f"pgvector:{table}/{victim}.embedding"] == "physically removed"
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok
    assert Erasure(proj.paths).remaining(victim)["gallery"] == []


def test_tables_of_one_name_in_two_databases_are_each_on_the_certificate(project, pg, table):
    """The project enrolled into table T of one database, then moved to a table of the same
    name in another: the erasure empties both, and the certificate lists both rows (it merged
    them by their shared name, `pgvector:T/<pid>.embedding`, into one artefact: a regulator
    read of one copy where there were two)."""
    proj = make_project(project, enrol=False)
    _served_from_pg(proj, project, pg, table).close()
    other_db = f"d_{secrets.token_hex(4)}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(other_db)))
    moved = types.SimpleNamespace(dsn=make_conninfo(pg.dsn, dbname=other_db))
    with psycopg.connect(moved.dsn, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    _served_from_pg(proj, project, moved, table).close()
    victim = proj.pids[0]

    result = Erasure(proj.paths).erase(victim)
    for dsn in (pg.dsn, moved.dsn):
        assert pg_gallery.subject_rows(dsn, victim, table=table) == {}
    claims = result.certificate["claims"]
    vectors = [
        a["path"]
        for a in claims["artefacts"]
        if a["step"] == "gallery" and a["path"].endswith(f"{victim}.embedding")
    ]
    assert len(vectors) == 2 and len(set(vectors)) == 2, vectors
    outcomes = {a["path"]: a["outcome"] for a in claims["artefacts"] if a["path"] in vectors}
    assert set(outcomes.values()) == {"physically removed"}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


def test_a_shared_gallery_the_project_cannot_reach_stops_the_erasure_until_reached_or_forgotten(
    project, pg, table, monkeypatch
):
    """Back on `memory` with the DSN (and its password) gone from params.yaml, the table the
    project wrote to cannot be reached: the erasure stops before erasing anything, naming the
    store (never its password) and what to do; given the DSN again it goes through. A store
    decommissioned with its data is forgotten by a command the ledger records."""
    monkeypatch.delenv(pg_gallery.DSN_ENV, raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", str(project / "no-pgpass"))
    proj = make_project(project, enrol=False)
    gallery = _served_from_pg(proj, project, pg, table)
    gallery.close()
    victim, second = proj.pids[0], proj.pids[1]
    write_overrides(
        project / "params.yaml", {"serving.gallery.backend": "memory", "serving.gallery.dsn": ""}
    )
    runner = CliRunner()
    listed = runner.invoke(cli, ["stack", "stores", "--json"])
    assert listed.exit_code == 0, listed.output
    (store,) = [s["store"] for s in json.loads(listed.output) if s["kind"] == "pgvector"]
    assert table in store and str(pg.port) in store and pg.password not in listed.output

    with pytest.raises(StackError) as refused:
        Erasure(proj.paths).erase(victim)
    msg = str(refused.value)
    assert store in msg and "nothing was erased" in msg and "visage stack forget" in msg
    assert pg.password not in msg
    assert pg_gallery.subject_rows(pg.dsn, victim, table=table)
    assert PrivacyCore(proj.paths).data_keys.exists(victim)
    assert not [e for e in PrivacyCore(proj.paths).ledger.entries() if e.type == "erasure.step"]

    monkeypatch.setenv(pg_gallery.DSN_ENV, pg.dsn)
    Erasure(proj.paths).erase(victim)
    assert pg_gallery.subject_rows(pg.dsn, victim, table=table) == {}

    # Decommissioned (its data destroyed with it): forgotten, on the ledger, and erasures run.
    monkeypatch.delenv(pg_gallery.DSN_ENV)
    forgot = runner.invoke(cli, ["stack", "forget", store])
    assert forgot.exit_code == 0, forgot.output
    (event,) = [e for e in PrivacyCore(proj.paths).ledger.entries() if e.type == "store.forgotten"]
    assert event.payload["store"] == store and pg.password not in json.dumps(event.payload)
    Erasure(proj.paths).erase(second)
    assert pg_gallery.subject_rows(pg.dsn, second, table=table)  # forgotten: not reached


def test_a_withdrawal_after_a_switch_to_pgvector_removes_the_old_memory_template(
    project, pg, table
):
    """Only an erasure took the memory gallery's template away: a subject whose consent to
    identification ended had the shared key destroyed and the old template left, a keyless
    file `visage privacy doctor` then listed."""
    proj = make_project(project, enrol=True)
    victim = proj.pids[0]
    old = proj.paths.gallery / "templates" / victim[1:3] / f"{victim}.tpl"
    assert old.is_file()
    gallery = _served_from_pg(proj, project, pg, table)
    try:
        key = gallery.keys.get(victim)
        proj.core.withdraw_consent(victim, ["identification"])
        (removal,) = [r for r in gallery.purge_without_basis() if r.pid == victim]
    finally:
        gallery.close()
    assert not old.exists()
    assert f"gallery/templates/{victim[1:3]}/{victim}.tpl" in removal.removed
    assert not [f for f in doctor(proj.paths).findings if f.pid == victim]
    # The key destroyed is sought by later scans for copies, as an erasure's keys are (a copy
    # printed by an operator opens the template's sealed copy in a backup).
    tag, held = PrivacyCore(proj.paths).tombstones.key_check()
    assert tag(key) in held


def _events(world, kind: str) -> list:
    return [e for e in world.core.ledger.entries() if e.type == kind]


def test_only_a_privileged_enrolment_moves_the_anchor_of_the_shared_gallery(
    world, engine, pg, table
):
    # As in the in-memory gallery: the first template is the anchor; an operator's re-enrolment
    # (keep_anchor) leaves it, any other (a dpo's, the gallery stage's, a rebuild's) moves it.
    gallery = open_pg(world, pg, table)
    assert gallery.keeps_anchors
    pid = next(iter(world.people))
    first = engine.embed(world.photo(pid, 3))
    gallery.enroll(pid, first)
    anchor, header = gallery.anchor(pid)
    np.testing.assert_array_equal(anchor, gallery.template(pid)[0])
    assert header["pid"] == pid and header["model_version"] == VERSION
    sealed = gallery.anchor_path(pid).read_bytes()
    assert anchor.astype("<f4").tobytes() not in sealed  # sealed, like the template
    second = engine.embed(world.photo(pid, 3))
    assert gallery.enroll(pid, second, keep_anchor=True).changed
    assert gallery.anchor_path(pid).read_bytes() == sealed
    np.testing.assert_array_equal(gallery.template(pid)[0], template_of(second, DIM))
    # Another replica of the project reads the same anchor.
    replica = open_pg(world, pg, table, core=PrivacyCore(world.paths))
    np.testing.assert_array_equal(replica.anchor(pid)[0], anchor)
    replica.close()
    assert not gallery.enroll(pid, second).changed  # same template, privileged: anchor moved
    np.testing.assert_array_equal(gallery.anchor(pid)[0], template_of(second, DIM))
    assert len(_events(world, "gallery.enrolled")) == 2
    # A subject without an anchor (enrolled before anchors were kept): an operator's
    # re-enrolment makes none, a rebuild's does.
    gallery.anchor_path(pid).unlink()
    with pytest.raises(NotEnrolledError):
        gallery.anchor(pid)
    gallery.enroll(pid, first, keep_anchor=True)
    assert not gallery.anchor_path(pid).exists()
    gallery.enroll_many({pid: first})
    np.testing.assert_array_equal(gallery.anchor(pid)[0], template_of(first, DIM))
    gallery.close()


def test_the_shared_gallery_records_anchors_and_writes_an_operator_enrolment_only_over_a_reference(
    world, engine, pg, table
):
    # As in the in-memory gallery: the ledger records every anchor move, an anchor put back is
    # refused, and an enrolment with `expect` is written only over what was checked.
    gallery = open_pg(world, pg, table)
    a, b = list(world.people)[:2]
    path = gallery.anchor_path(a)
    first, dpo, operator = (engine.embed(world.photo(a, 3)) for _ in range(3))
    gallery.enroll(a, first)
    assert world.core.registry.get(a).anchor_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    stale = path.read_bytes()
    ref = gallery.reference(a)
    assert ref.template_sha256 == gallery.stored_sha256(a)
    moved = gallery.enroll(a, dpo)
    with pytest.raises(ReferenceChangedError):
        gallery.enroll(a, operator, keep_anchor=True, expect=ref)
    assert gallery.stored_sha256(a) == moved.template_sha256
    np.testing.assert_array_equal(gallery.anchor(a)[0], template_of(dpo, DIM))
    current = path.read_bytes()
    path.write_bytes(stale)
    replica = open_pg(world, pg, table, core=PrivacyCore(world.paths))
    for g in (gallery, replica):
        with pytest.raises(AnchorUnrecordedError):
            g.reference(a)
    replica.close()
    path.write_bytes(current)
    assert gallery.enroll(a, operator, keep_anchor=True, expect=gallery.reference(a)).changed
    assert path.read_bytes() == current
    # The same template enrolled again by a privileged path, its anchor gone: the new anchor is
    # recorded by a gallery.anchored of its own.
    path.unlink()
    assert not gallery.enroll(a, operator).changed
    (event,) = _events(world, "gallery.anchored")
    assert event.payload["anchor_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    # A first enrolment expects no row: another enrolment in between wins.
    taken = gallery.enroll(b, engine.embed(world.photo(b, 3)))
    with pytest.raises(ReferenceChangedError):
        gallery.enroll(b, engine.embed(world.photo(b, 3)), expect=Reference.none_stored(b))
    assert gallery.stored_sha256(b) == taken.template_sha256
    gallery.close()


def test_a_failed_enrolment_leaves_the_anchor_as_it_was(world, engine, pg, table, monkeypatch):
    gallery = open_pg(world, pg, table)
    a, b = list(world.people)[:2]
    gallery.enroll(a, engine.embed(world.photo(a, 3)))
    before = gallery.anchor_path(a).read_bytes()

    def fail(events):
        raise OSError("disk full")

    monkeypatch.setattr(world.core.ledger, "append_many", fail)
    with pytest.raises(OSError):
        gallery.enroll_many({p: engine.embed(world.photo(p, 2)) for p in (a, b)})
    assert gallery.anchor_path(a).read_bytes() == before
    assert not gallery.anchor_path(b).exists()
    assert not gallery.keys.exists(b), "a key for a subject the gallery never enrolled"
    assert gallery.keys.exists(a)
    assert gallery.stored() == [a]
    gallery.close()


def test_erasure_removes_the_anchor_and_names_it(world, engine, enrolled, pg, table):
    gallery, pids = enrolled
    pid = pids[3]
    anchor, key = gallery.anchor_path(pid), gallery.keys.path(pid)
    assert gallery.files_of(pid) == [anchor, key]
    root = world.paths.root
    ctx = Context(paths=world.paths, core=world.core, params=_default_params(), gallery=gallery)
    planned = {a["path"] for a in gallery_store.plan(ctx, pid).artefacts}
    assert planned == {anchor.relative_to(root).as_posix(), key.relative_to(root).as_posix()}
    digest = hashlib.sha256(anchor.read_bytes()).hexdigest()
    removal = gallery.erase(pid)
    assert removal.removed[anchor.relative_to(root).as_posix()] == digest
    assert not anchor.exists() and gallery.files_of(pid) == []
    assert gallery_store.verify(ctx, pid) == []
    artefacts = [{"store": "gallery", "path": k, "sha256": v} for k, v in removal.removed.items()]
    labelled = {a["path"]: a["outcome"] for a in label_outcomes(artefacts, {})}
    assert labelled[anchor.relative_to(root).as_posix()] == "crypto-shredded"
    (event,) = _events(world, "gallery.removed")
    assert event.payload["anchor_sha256"] == digest
    with pytest.raises(NotEnrolledError):
        gallery.anchor(pid)
    # No legal basis left (consent withdrawn): the purge takes the anchor too, and a subject
    # with an anchor but no row (an enrolment killed before its commit) as well.
    gone, orphan = pids[5], pids[6]
    world.core.withdraw_consent(gone, ["identification"])
    world.core.withdraw_consent(orphan, ["identification"])
    pg_gallery.delete_subject(pg.dsn, orphan, table=table)
    assert gallery.anchor_path(orphan).exists()
    purged = {r.pid for r in gallery.purge_without_basis()}
    assert {gone, orphan} <= purged
    assert not gallery.anchor_path(gone).exists() and not gallery.anchor_path(orphan).exists()


def test_an_erasure_interrupted_after_the_key_is_finished_at_start_up(world, enrolled, pg, table):
    gallery, pids = enrolled
    pid = pids[2]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:  # the row went, then the key...
        pg_gallery._revoke_delete(conn, gallery.names, pid)
    gallery.keys.destroy(pid)  # ...then a crash before the anchor was removed
    assert gallery.anchor_path(pid).exists()
    restarted = open_pg(world, pg, table, core=PrivacyCore(world.paths))
    assert not restarted.anchor_path(pid).exists()
    (event,) = _events(world, "gallery.removed")
    assert event.pid == pid and event.payload["reason"] == "interrupted_erasure_completed"
    restarted.close()


def test_a_replica_whose_connection_the_server_dropped_keeps_answering(world, engine, enrolled, pg):
    # PostgreSQL restarted, failed over or killed the session: a serving replica must not answer
    # "internal error" from then on. The search in flight runs again on a new connection, and
    # every later call reconnects too.
    gallery, pids = enrolled
    emb = engine.embed(world.photo(pids[0]))[0]
    before = gallery.identify(emb, top_k=1)
    backend = gallery._db.info.backend_pid
    _drop(pg, gallery)
    assert gallery.identify(emb, top_k=1) == before
    assert gallery._db.info.backend_pid != backend
    _drop(pg, gallery)
    assert gallery.verify(emb, pids[0])[0] is True  # a verify only reads: retried too
    _drop(pg, gallery)
    assert pids[0] in gallery.searchable()
    # A write is not repeated behind the caller's back: it fails once, saying so, with no
    # driver error leaking out...
    _drop(pg, gallery)
    with pytest.raises(GalleryUnavailableError, match="retry"):
        gallery.enroll_many({pids[1]: engine.embed(world.photo(pids[1], 2))})
    # ...and the caller's retry, on a new connection, does it.
    assert gallery.enroll_many({pids[1]: engine.embed(world.photo(pids[1], 2))})[0].replaced


def test_a_withdrawal_read_while_the_connection_drops_is_still_enforced(
    world, engine, enrolled, pg
):
    # The connection dies just as the replica applies a withdrawal it read from the ledger: the
    # withdrawal must not be lost with it (the search runs again on a new connection).
    gallery, pids = enrolled
    emb = engine.embed(world.photo(pids[0]))[0]
    assert gallery.identify(emb, top_k=1)[0].pid == pids[0]
    world.core.withdraw_consent(pids[0], ["identification"])
    _drop(pg, gallery)
    assert pids[0] not in [m.pid for m in gallery.identify(emb, top_k=18)]
    assert pids[0] not in gallery.searchable()


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _drop(pg, gallery) -> None:
    """The server ends the gallery's session, as a restart or a failover would."""
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        backend = gallery._db.info.backend_pid
        assert admin.execute("SELECT pg_terminate_backend(%s)", (backend,)).fetchone()[0]


def _analysed_as_an_older_version(conn, table: str) -> None:
    """A gallery table of an older version, its columns sampled into pg_statistic before the
    erasure (as autovacuum's ANALYZE does), checkpointed to disk."""
    for col in ("pid", "embedding"):
        conn.execute(
            psycopg.sql.SQL("ALTER TABLE {t} ALTER COLUMN {c} SET STATISTICS -1").format(
                t=psycopg.sql.Identifier(table), c=psycopg.sql.Identifier(col)
            )
        )
    conn.execute(psycopg.sql.SQL("ANALYZE {t}").format(t=psycopg.sql.Identifier(table)))
    conn.execute("CHECKPOINT")


def test_a_dropped_connection_is_a_503_to_retry_not_an_internal_error(world, engine, pg, table):
    gallery = open_pg(world, pg, table, engine=engine)
    keys = KeyStore(world.paths.api_keys)
    key = keys.create("operator")[1]
    app = create_app(
        world.paths,
        params=load_params(world.paths.params),
        engine=engine,
        gallery=gallery,
        core=world.core,
    )
    client = TestClient(app, raise_server_exceptions=False)
    pid = next(iter(world.people))
    body = {"pid": pid, "images": [png_b64(t) for t in world.photo(pid, 2)]}
    headers = {"X-API-Key": key}
    try:
        # The server ends the session: the request runs on a new connection.
        _drop(pg, gallery)
        r = client.post("/v1/enroll", json=body, headers=headers)
        assert r.status_code == 200, r.text
        # PostgreSQL is down (its address no longer answers): a 503 to retry, no driver text.
        dsn = gallery.options.dsn
        gallery.options = dataclasses.replace(
            gallery.options, dsn=make_conninfo(dsn, port=_dead_port())
        )
        _drop(pg, gallery)
        for method, path, kw in (
            ("POST", "/v1/enroll", {"json": body}),
            ("POST", "/v1/identify", {"json": {"image": body["images"][0]}}),
        ):
            r = client.request(method, path, headers=headers, **kw)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "gallery_unavailable"
            assert r.headers["Retry-After"]
            assert "psycopg" not in r.text.lower() and "Operational" not in r.text
        # Back up: answered again, without a restart.
        gallery.options = dataclasses.replace(gallery.options, dsn=dsn)
        r = client.post("/v1/identify", json={"image": body["images"][0]}, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["faces"][0]["matches"][0]["pid"] == pid
    finally:
        gallery.close()


def test_erasure_leaves_no_embedding_in_the_planner_statistics(world, engine, pg, table):
    """Autovacuum's ANALYZE copies sample values of each column into pg_statistic: the
    embedding histogram held the subject's plaintext vector (and the pid histogram their pid),
    which the erasure's VACUUM FULL of the gallery tables never touched (deploy walk, session
    37). The gallery's columns keep no statistics, and the erasure clears any a table made
    before kept, down to pg_statistic's files."""
    gallery = open_pg(world, pg, table)
    pids = list(world.people)[:18]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 3)) for pid in pids})
    victim = pids[4]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        _analysed_as_an_older_version(conn, table)
        stats = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename = %s AND attname = 'embedding'",
            (table,),
        ).fetchone()[0]
    assert stats == 1  # the attack's precondition: the vector's column was sampled
    assert any(k == "vector" for k, _ in _scan(pg.data_dir, {"vector": vector}))
    gallery.erase(victim)
    report = pg_gallery.purge_physically(pg.dsn, table=table)
    assert report.to_dict()["statistics_cleared"], report.to_dict()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("ANALYZE {t}").format(t=psycopg.sql.Identifier(table)))
        left = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename = %s", (table,)
        ).fetchone()[0]
        conn.execute("CHECKPOINT")
    assert left == 0  # and ANALYZE no longer samples the gallery
    assert _scan(pg.data_dir, {"vector": vector}) == []
    gallery.close()


def test_a_socket_closed_as_a_transaction_opens_counts_as_a_lost_connection(enrolled):
    """The server's end can arrive while psycopg opens a transaction: it raised "connection
    socket closed" without marking the connection broken, so the read was not retried on a new
    one and a search failed (seen once in CI). libpq's status says the connection is gone."""
    from types import SimpleNamespace

    from psycopg import pq

    gallery, _ = enrolled
    real = gallery._db
    try:
        gallery._db = SimpleNamespace(
            closed=False, broken=False, pgconn=SimpleNamespace(status=pq.ConnStatus.BAD)
        )
        assert gallery._lost()
        gallery._db = SimpleNamespace(
            closed=False, broken=False, pgconn=SimpleNamespace(status=pq.ConnStatus.OK)
        )
        assert not gallery._lost()  # a statement's own failure is not retried
    finally:
        gallery._db = real


@pytest.fixture
def least_privilege(pg, table):
    """The role docs/deploy.md offers for the erasure: pg_checkpoint + pg_maintain + owner of
    the gallery's tables + EXECUTE on pg_switch_wal(), not a superuser. Yields its DSN and
    makes it the owner of the tables ``table`` names (call ``own()`` once they exist)."""
    role, password = f"eraser_{secrets.token_hex(4)}", secrets.token_hex(16)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL(
                "CREATE ROLE {r} LOGIN PASSWORD {p} IN ROLE pg_checkpoint, pg_maintain"
            ).format(r=psycopg.sql.Identifier(role), p=psycopg.sql.Literal(password))
        )
        conn.execute(
            psycopg.sql.SQL("GRANT EXECUTE ON FUNCTION pg_switch_wal() TO {r}").format(
                r=psycopg.sql.Identifier(role)
            )
        )

    def own() -> None:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            for suffix in ("", "_revoked", "_state"):
                conn.execute(
                    psycopg.sql.SQL("ALTER TABLE {t} OWNER TO {r}").format(
                        t=psycopg.sql.Identifier(table + suffix), r=psycopg.sql.Identifier(role)
                    )
                )

    yield make_conninfo(pg.dsn, user=role, password=password), own
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        ident = psycopg.sql.Identifier(role)
        conn.execute(psycopg.sql.SQL("REASSIGN OWNED BY {r} TO CURRENT_USER").format(r=ident))
        conn.execute(psycopg.sql.SQL("DROP OWNED BY {r}").format(r=ident))
        conn.execute(psycopg.sql.SQL("DROP ROLE {r}").format(r=ident))


def test_the_documented_least_privilege_role_completes_the_purge(
    world, engine, pg, table, least_privilege
):
    """docs/deploy.md's role (not a superuser) could not DELETE FROM pg_statistic, so the
    purge raised "permission denied for table pg_statistic" and the erasure never completed.
    With that role the purge now clears the statistics that held the subject's vector (an
    older table's, analysed), compacts pg_statistic and drops the WAL: no byte left on disk."""
    dsn, own = least_privilege
    gallery = open_pg(world, pg, table)
    pids = list(world.people)[:18]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 3)) for pid in pids})
    own()
    victim = pids[4]
    vector = gallery.template(victim)[0].astype("<f4").tobytes()
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        _analysed_as_an_older_version(conn, table)
        rows = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename = %s", (table,)
        ).fetchone()[0]
    assert rows == 2  # the attack's precondition: pid and embedding were sampled
    assert any(k == "vector" for k, _ in _scan(pg.data_dir, {"vector": vector}))
    gallery.erase(victim)
    report = pg_gallery.purge_physically(dsn, table=table).to_dict()
    assert report["statistics_cleared"] and report["wal_removed"], report
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE tablename = %s", (table,)
        ).fetchone()[0]
        conn.execute("CHECKPOINT")
    assert left == 0
    assert _scan(pg.data_dir, {"vector": vector}) == []
    gallery.close()


def test_an_owner_without_pg_maintain_is_noted_not_claimed_cleared(
    world, engine, pg, table, least_privilege
):
    """The table's owner clears its statistics but may not compact pg_statistic, where the old
    rows' bytes stay: the report says so instead of claiming them cleared."""
    dsn, own = least_privilege
    gallery = open_pg(world, pg, table)
    pid = next(iter(world.people))
    gallery.enroll(pid, engine.embed(world.photo(pid, 2)))
    own()
    user = psycopg.conninfo.conninfo_to_dict(dsn)["user"]
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER TABLE {t} ALTER COLUMN pid SET STATISTICS -1").format(
                t=psycopg.sql.Identifier(table)
            )
        )
        conn.execute(psycopg.sql.SQL("ANALYZE {t}").format(t=psycopg.sql.Identifier(table)))
        conn.execute(
            psycopg.sql.SQL("REVOKE pg_maintain FROM {r}").format(r=psycopg.sql.Identifier(user))
        )
    gallery.erase(pid)
    report = pg_gallery.purge_physically(dsn, table=table).to_dict()
    assert report["statistics_cleared"] is False
    assert any("pg_maintain" in why for why in report["statistics"]), report
    gallery.close()


class _Settings:
    """A connection answering wal_retention()'s queries: the stack's settings, no slot, and
    ``senders`` WAL senders streaming to standbys."""

    def __init__(self, senders: int) -> None:
        self.senders = senders

    def execute(self, query: str, params=None):
        settings = {"wal_recycle": "off", "wal_keep_size": "0", "archive_mode": "off"}
        if "current_setting" in query:
            value = settings[params[0]]
        elif "pg_replication_slots" in query:
            value = 0
        elif "pg_stat_replication" in query:
            value = self.senders
        else:
            raise AssertionError(f"unexpected query {query}")
        return types.SimpleNamespace(fetchone=lambda: (value,))


def test_a_standby_streaming_without_a_slot_is_named_not_claimed_removed():
    """A streaming standby without a replication slot holds the table and its own WAL; the
    certificate said the WAL was removed, with no note."""
    assert pg_gallery.wal_retention(_Settings(0)) == []
    why = pg_gallery.wal_retention(_Settings(2))
    assert len(why) == 1 and "2 standby" in why[0], why
