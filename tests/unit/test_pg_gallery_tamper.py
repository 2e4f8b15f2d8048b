"""The shared pgvector gallery against someone who can write to its database but holds none of
the project's keys: a search vector (or calibration cluster) swapped in the table never makes a
face match another subject; the row is set aside, logged by pid and counted in the stats."""

from __future__ import annotations

import json
import logging
import secrets
import time

import numpy as np
import psycopg
import pytest
from pgvector.psycopg import register_vector
from serving_fakes import DIM, THRESHOLD, fake_engine, make_world

from visage_ml.evaluation.calibration import ScoreCalibration
from visage_ml.serving.gallery import NotEnrolledError
from visage_ml.serving.index import template_of
from visage_ml.serving.pg_gallery import PgGallery, PgOptions

VERSION = "emb-test-1"


@pytest.fixture
def world(project):
    # Enrolled: the first 17 people. The 18th is the attacker: a face the gallery does not hold.
    return make_world(project, n_subjects=18, seed=secrets.randbits(31))


@pytest.fixture
def engine(world):
    return fake_engine(world.paths.root)


def open_pg(world, dsn, table):
    return PgGallery.open(
        world.paths,
        options=PgOptions(dsn=dsn, table=table, listen=False),
        model_version=VERSION,
        embedding_dim=DIM,
        threshold=THRESHOLD,
        core=world.core,
    )


@pytest.fixture
def enrolled(world, engine, stack_postgres, table):
    gallery = open_pg(world, stack_postgres.dsn, table)
    pids = list(world.people)[:17]
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 3)) for pid in pids})
    yield gallery, pids
    gallery.close()


def _write(dsn: str, table: str, column: str, value, pid: str) -> None:
    """What an intruder with the database's password does (no key of the project needed)."""
    query = psycopg.sql.SQL("UPDATE {t} SET {c} = %s WHERE pid = %s").format(
        t=psycopg.sql.Identifier(table), c=psycopg.sql.Identifier(column)
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        conn.execute(query, (value, pid))


def test_an_attackers_vector_written_over_a_subjects_row_never_matches_as_that_subject(
    world, engine, enrolled, stack_postgres, table, caplog
):
    gallery, pids = enrolled
    victim = pids[0]
    attacker = list(world.people)[-1]
    probe = engine.embed(world.photo(attacker))[0]
    assert all(m.pid != victim for m in gallery.identify(probe, top_k=3))
    _write(
        stack_postgres.dsn,
        table,
        "embedding",
        template_of(engine.embed(world.photo(attacker, 3)), DIM),
        victim,
    )

    with caplog.at_level(logging.WARNING, logger="visage_ml.serving.pg_gallery"):
        assert victim not in [m.pid for m in gallery.identify(probe, top_k=3)]
        with pytest.raises(NotEnrolledError):
            gallery.verify(probe, victim)
        # Nor with the victim's own face: the row no longer rests on the victim's template.
        with pytest.raises(NotEnrolledError):
            gallery.verify(engine.embed(world.photo(victim))[0], victim)
    assert gallery.stats()["tampered"] == 1
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert victim in logged and table in logged
    # A replica that never saw the row before (nothing cached) refuses it too.
    other = open_pg(world, stack_postgres.dsn, table)
    assert victim not in [m.pid for m in other.identify(probe, top_k=3)]
    other.close()
    # Everyone else is still found.
    for pid in pids[1:4]:
        assert gallery.identify(engine.embed(world.photo(pid))[0], top_k=1)[0].pid == pid
    # Enrolling the subject again (same photos) writes the row anew and the subject is back.
    gallery.enroll(victim, engine.embed(world.photo(victim, 3)))
    assert gallery.identify(engine.embed(world.photo(victim))[0], top_k=1)[0].pid == victim
    assert victim not in [m.pid for m in gallery.identify(probe, top_k=3)]


def test_two_subjects_vectors_swapped_in_the_table_match_neither(
    world, engine, enrolled, stack_postgres, table
):
    gallery, pids = enrolled
    a, b = pids[1], pids[2]
    ta, tb = gallery.template(a)[0], gallery.template(b)[0]
    _write(stack_postgres.dsn, table, "embedding", tb, a)
    _write(stack_postgres.dsn, table, "embedding", ta, b)
    for pid in (a, b):
        got = gallery.identify(engine.embed(world.photo(pid))[0], top_k=3)
        assert not {m.pid for m in got} & {a, b}
    assert gallery.verify(engine.embed(world.photo(pids[3]))[0], pids[3])[0] is True
    assert gallery.stats()["tampered"] == 2


def test_a_cluster_value_written_into_the_table_cannot_lift_a_non_match_over_the_threshold(
    world, engine, enrolled, stack_postgres, table
):
    """FSN shifts scores by cluster: the cluster column must come from the sealed template."""
    gallery, pids = enrolled
    victim = pids[0]
    rng = np.random.default_rng(5)
    centroids = rng.normal(size=(2, DIM))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    template = gallery.template(victim)[0]
    home = int(np.argmax(centroids @ template))
    shift = np.zeros(2)
    shift[1 - home] = -1.2  # a comparison with a template of that cluster gains 0.6
    cal = ScoreCalibration(method="fsn", centroids=centroids, shift=shift)
    gallery.set_calibration(cal)
    probe = engine.embed(world.photo(list(world.people)[-1]))[0]
    probe = probe / np.linalg.norm(probe)
    honest = float(cal.apply(np.array([probe @ template]), cal.clusters(probe[None]), [home])[0])
    bar = honest + 0.3

    def found() -> list[str]:
        (got,), _, _ = gallery.search(probe[None], top_k=17, threshold_for=lambda n: bar)
        return [m.pid for m in got]

    assert victim not in found()
    _write(stack_postgres.dsn, table, "cluster", 1 - home, victim)
    assert victim not in found()
    assert gallery.stats()["tampered"] == 1


def _plant(dsn: str, table: str, vectors: np.ndarray) -> list[str]:
    """Rows an intruder inserts: vectors of their choice under fresh pids, a sealed column of
    random bytes (no key of the project opens it)."""
    pids = [f"p{secrets.randbits(63):016x}" for _ in vectors]
    query = psycopg.sql.SQL(
        "INSERT INTO {t} (pid, model_version, embedding, cluster, sealed, template_sha256,"
        " n_images) VALUES (%s, %s, %s, 0, %s, %s, 1)"
    ).format(t=psycopg.sql.Identifier(table))
    with psycopg.connect(dsn, autocommit=True) as conn:
        register_vector(conn)
        with conn.cursor() as cur:
            cur.executemany(
                query,
                [
                    (pid, VERSION, v.astype(np.float32), secrets.token_bytes(300), "0" * 64)
                    for pid, v in zip(pids, vectors, strict=True)
                ],
            )
    return pids


def _near(probe: np.ndarray, n: int, seed: int = 3) -> np.ndarray:
    """``n`` unit vectors closer to ``probe`` than any honest template (cosine ~0.99)."""
    rng = np.random.default_rng(seed)
    p = probe / np.linalg.norm(probe)
    v = p + 0.02 * rng.normal(size=(n, p.shape[0]))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("top_k", [1, 3])
def test_planted_rows_near_a_probe_do_not_push_the_genuine_mate_out_of_the_answer(
    world, engine, enrolled, stack_postgres, table, top_k
):
    gallery, pids = enrolled
    victim = pids[0]
    probe = engine.embed(world.photo(victim))[0]
    assert gallery.identify(probe, top_k=top_k)[0].pid == victim
    planted = _plant(stack_postgres.dsn, table, _near(probe, top_k + 2))
    # Also written over other subjects' rows: those persist through a reload (their pids are
    # registered and enrolled), fresh pids are revoked by the next one.
    for pid in pids[1:3]:
        _write(stack_postgres.dsn, table, "embedding", _near(probe, 1, seed=7)[0], pid)

    got = gallery.identify(probe, top_k=top_k)
    assert got and got[0].pid == victim
    assert not {m.pid for m in got} & {*planted, *pids[1:3]}
    # The refused rows are remembered: the next search does not have to open them again.
    assert gallery.stats()["tampered"] == len(planted) + 2
    assert gallery.identify(probe, top_k=top_k)[0].pid == victim


def test_a_cohort_shortlist_filled_with_planted_rows_still_holds_the_genuine_mate(
    world, engine, enrolled, stack_postgres, table
):
    """AS-norm reranks a raw-cosine shortlist of 200: 200 planted rows would fill it."""
    from test_pg_gallery import _asnorm

    gallery, pids = enrolled
    victim = pids[0]
    gallery.set_calibration(_asnorm(DIM))
    probe = engine.embed(world.photo(victim))[0]

    def found() -> list[str]:
        (got,), _, _ = gallery.search(probe[None], top_k=1, threshold_for=lambda n: -1.0)
        return [m.pid for m in got]

    assert found() == [victim]
    _plant(stack_postgres.dsn, table, _near(probe, 230))
    assert found() == [victim]


def _configure(world, dsn: str, table: str) -> None:
    """The project's params name this gallery, as `visage gallery ...` reads them."""
    from project_helpers import write_overrides

    write_overrides(
        world.paths.root / "params.yaml",
        {
            "serving.gallery.backend": "pgvector",
            "serving.gallery.dsn": dsn,
            "serving.gallery.table": table,
        },
    )


def test_planted_rows_raise_n_only_until_a_gallery_command_shows_and_revokes_them(
    world, engine, enrolled, stack_postgres, table
):
    """N (the 1:N threshold's gallery size) counts rows; rows the ledger does not vouch for
    are revoked for every replica by the next reload and counted as `unrecorded`."""
    from typer.testing import CliRunner

    from visage_ml.app.cli import app as cli

    gallery, pids = enrolled
    seen: list[int] = []

    def n_now() -> int:
        probe = engine.embed(world.photo(pids[0]))[0][None]
        gallery.search(probe, top_k=1, threshold_for=lambda n: seen.append(n) or THRESHOLD)
        return seen[-1]

    assert n_now() == 17
    _plant(stack_postgres.dsn, table, _near(engine.embed(world.photo(pids[0]))[0], 5))
    # The size is cached by the change counter, which the intruder moves too.
    bump = psycopg.sql.SQL("UPDATE {s} SET version = version + 1").format(
        s=psycopg.sql.Identifier(f"{table}_state")
    )
    with psycopg.connect(stack_postgres.dsn, autocommit=True) as conn:
        conn.execute(bump)
    assert n_now() == 22  # a running replica counts them until a reload
    _configure(world, stack_postgres.dsn, table)
    r = CliRunner().invoke(cli, ["gallery", "stats", "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)
    assert (stats["searchable"], stats["unrecorded"]) == (17, 5)
    assert n_now() == 17


def test_gallery_verify_names_every_wrong_row_and_exits_non_zero(
    world, engine, enrolled, stack_postgres, table, monkeypatch
):
    from typer.testing import CliRunner

    from visage_ml.app.cli import app as cli
    from visage_ml.serving import gallery_check

    gallery, pids = enrolled
    victim, swapped = pids[0], pids[1]
    _configure(world, stack_postgres.dsn, table)
    runner = CliRunner()
    r = runner.invoke(cli, ["gallery", "verify"])
    assert r.exit_code == 0, r.output
    assert "17 templates checked (pgvector): 17 ok, 0 wrong" in r.output

    # The victim's row as it is now, then enrolled again (another template, a new event).
    query = psycopg.sql.SQL("SELECT sealed, embedding FROM {t} WHERE pid = %s").format(
        t=psycopg.sql.Identifier(table)
    )
    with psycopg.connect(stack_postgres.dsn) as conn:
        register_vector(conn)
        old_sealed, old_embedding = conn.execute(query, (victim,)).fetchone()
    gallery.enroll(victim, engine.embed(world.photo(victim, 3)))
    # The intruder puts the old pair back (it passes the row's own check) and writes another
    # subject's vector over a second row, and plants a row.
    _write(stack_postgres.dsn, table, "sealed", bytes(old_sealed), victim)
    _write(stack_postgres.dsn, table, "embedding", old_embedding, victim)
    _write(stack_postgres.dsn, table, "embedding", gallery.template(pids[2])[0], swapped)
    (planted,) = _plant(stack_postgres.dsn, table, _near(gallery.template(pids[3])[0], 1))

    # The search refuses the rolled-back row too (not the template the ledger vouches for).
    probe = engine.embed(world.photo(victim))[0]
    assert victim not in [m.pid for m in gallery.identify(probe, top_k=3)]

    r = runner.invoke(cli, ["gallery", "verify", "--json"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    wrong = {p["pid"]: p["kind"] for p in doc["problems"]}
    assert wrong == {swapped: "embedding", planted: "sealed"}
    # The enrolment was a moment ago: the old row could be one not committed yet.
    assert doc["in_flight"] == [victim]
    monkeypatch.setattr(gallery_check, "IN_FLIGHT_S", 0.0)
    r = runner.invoke(cli, ["gallery", "verify"])
    assert r.exit_code == 1
    assert f"{victim}  rolled_back: an older template of the subject" in r.output
    assert f"{swapped}  embedding:" in r.output and f"{planted}  sealed:" in r.output
    assert "18 templates checked (pgvector): 15 ok, 3 wrong" in r.output

    # Enrolling again repairs a row; the check says so.
    for pid in (victim, swapped):
        gallery.enroll(pid, engine.embed(world.photo(pid, 3)))
    wrong = {
        p["pid"]
        for p in json.loads(runner.invoke(cli, ["gallery", "verify", "--json"]).output)["problems"]
    }
    assert wrong == {planted}


# -- the revoked table: what the intruder may write there ---------------------------------------


def _on_revoked(dsn: str, table: str, statement: str, params: tuple = ()) -> None:
    """An intruder's statement on ``<table>_revoked`` (``{r}``), then the change counter moved
    (``{s}``), as an intruder who wants every replica to recount would."""
    names = {
        "r": psycopg.sql.Identifier(f"{table}_revoked"),
        "s": psycopg.sql.Identifier(f"{table}_state"),
    }
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL(statement).format(**names), params)
        conn.execute(psycopg.sql.SQL("UPDATE {s} SET version = version + 1").format(**names))


def _fake_revocation(dsn: str, table: str, pid: str, reason: str) -> None:
    _on_revoked(
        dsn,
        table,
        "INSERT INTO {r} (pid, reason) VALUES (%s, %s) "
        "ON CONFLICT (pid) DO UPDATE SET reason = EXCLUDED.reason",
        (pid, reason),
    )


def _delete_revocation(dsn: str, table: str, pid: str) -> None:
    _on_revoked(dsn, table, "DELETE FROM {r} WHERE pid = %s", (pid,))


def _revocations(dsn: str, table: str) -> dict[str, str]:
    query = psycopg.sql.SQL("SELECT pid, reason FROM {r}").format(
        r=psycopg.sql.Identifier(f"{table}_revoked")
    )
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute(query).fetchall())


def test_a_revocation_written_into_the_table_does_not_make_a_subject_look_unsearchable(
    world, enrolled, stack_postgres, table
):
    """`GET /v1/subjects/{pid}` (status) read the revoked table as it found it: a planted entry
    showed a consenting subject as not searchable to the dpo until some search repaired it."""
    gallery, pids = enrolled
    victim = pids[0]
    _fake_revocation(stack_postgres.dsn, table, victim, "erased")
    assert gallery.status(victim)["searchable"] is True
    assert _revocations(stack_postgres.dsn, table) == {}
    assert gallery.stats()["revoked_removed"] == 1


def test_a_revocation_written_into_the_table_neither_hides_a_consenting_subject_nor_lowers_n(
    world, engine, enrolled, stack_postgres, table, caplog
):
    """A fake `erased` (or any) entry in `<table>_revoked` would keep a live, consenting subject
    out of every answer and lower N, the gallery size the 1:N threshold is derived from (a
    lower threshold: more false matches). The registry does not back it: it is not counted,
    and it is removed for every replica as soon as a replica recounts or reloads."""
    dsn = stack_postgres.dsn
    gallery, pids = enrolled
    victim, other = pids[0], pids[1]
    listening = open_pg(world, dsn, table)
    listening.start_listener()

    def search(pid: str) -> tuple[list[str], int]:
        probe = engine.embed(world.photo(pid))[0][None]
        seen: list[int] = []
        (got,), _, _ = gallery.search(
            probe, top_k=1, threshold_for=lambda n: seen.append(n) or THRESHOLD
        )
        return [m.pid for m in got], seen[-1]

    assert search(victim) == ([victim], 17)
    _fake_revocation(dsn, table, victim, "erased")
    _fake_revocation(dsn, table, other, "consent_withdrawn")
    time.sleep(1.0)  # the listening replica has seen the counter move
    with caplog.at_level(logging.WARNING, logger="visage_ml.serving.pg_gallery"):
        assert listening.size == 17
        assert search(pids[2]) == ([pids[2]], 17)
    assert search(victim) == ([victim], 17)
    assert search(other) == ([other], 17)
    assert _revocations(dsn, table) == {}  # removed for every replica
    assert listening.size == 17
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert victim in logged and other in logged
    # Whichever replica counted first removed them.
    assert gallery.stats()["revoked_removed"] + listening.stats()["revoked_removed"] == 2
    listening.close()

    # Without moving the counter: a replica that starts (or any gallery command) removes it.
    _fake_revocation(dsn, table, victim, "erased")
    fresh = open_pg(world, dsn, table)
    assert fresh.identify(engine.embed(world.photo(victim))[0], top_k=1)[0].pid == victim
    assert fresh.size == 17
    assert fresh.stats()["revoked_removed"] == 1
    assert _revocations(dsn, table) == {}
    fresh.close()


def test_a_revocation_deleted_from_the_table_never_brings_a_withdrawn_subject_back(
    world, engine, enrolled, stack_postgres, table
):
    dsn = stack_postgres.dsn
    gallery, pids = enrolled
    withdrawn = pids[0]
    probe = engine.embed(world.photo(withdrawn))[0]
    world.core.withdraw_consent(withdrawn, ["identification"])
    assert withdrawn not in [m.pid for m in gallery.identify(probe, top_k=3)]
    assert withdrawn in _revocations(dsn, table)

    _delete_revocation(dsn, table, withdrawn)
    (got,), _, _ = gallery.search(probe[None], top_k=17, threshold_for=lambda _n: -1.0)
    assert withdrawn not in [m.pid for m in got]
    with pytest.raises(NotEnrolledError):
        gallery.verify(probe, withdrawn)
    assert not gallery.is_searchable(withdrawn)
    assert gallery.status(withdrawn)["searchable"] is False
    assert withdrawn in _revocations(dsn, table)  # put back, for every replica
    assert gallery.stats()["revoked_restored"] >= 1

    # A replica that starts puts it back at once.
    _delete_revocation(dsn, table, withdrawn)
    fresh = open_pg(world, dsn, table)
    assert withdrawn in _revocations(dsn, table)
    (got,), n, _ = fresh.search(probe[None], top_k=17, threshold_for=lambda _n: -1.0)
    assert withdrawn not in [m.pid for m in got] and n == 16
    fresh.close()


def test_gallery_verify_names_revocations_the_registry_does_not_back_or_lacks(
    world, engine, enrolled, stack_postgres, table
):
    from typer.testing import CliRunner

    from visage_ml.app.cli import app as cli

    dsn = stack_postgres.dsn
    gallery, pids = enrolled
    victim, withdrawn = pids[0], pids[1]
    world.core.withdraw_consent(withdrawn, ["identification"])
    gallery.refresh()
    _configure(world, dsn, table)
    runner = CliRunner()
    r = runner.invoke(cli, ["gallery", "verify"])
    assert r.exit_code == 0, r.output

    def attack() -> None:
        _fake_revocation(dsn, table, victim, "erased")
        _delete_revocation(dsn, table, withdrawn)

    attack()
    r = runner.invoke(cli, ["gallery", "verify", "--json"])
    assert r.exit_code == 1, r.output
    doc = json.loads(r.output)
    assert {p["pid"]: p["kind"] for p in doc["revocations"]} == {
        victim: "revoked_unbacked",
        withdrawn: "revoked_missing",
    }
    assert doc["problems"] == []
    attack()
    r = runner.invoke(cli, ["gallery", "verify"])
    assert r.exit_code == 1
    assert f"{victim}  revoked_unbacked:" in r.output
    assert f"{withdrawn}  revoked_missing:" in r.output
    # The check's own start repaired both: the next one finds nothing.
    r = runner.invoke(cli, ["gallery", "verify"])
    assert r.exit_code == 0, r.output
    assert _revocations(dsn, table) == {withdrawn: "not_allowed"}


def test_an_erasure_and_its_revocation_survive_every_reload(
    world, engine, enrolled, stack_postgres, table
):
    """The erasure writes `erased` in the transaction that deletes the row and appends its
    ledger entries around it: no reload takes its revocation back, at any point."""
    from typer.testing import CliRunner

    from visage_ml.app.cli import app as cli
    from visage_ml.serving.pg_gallery import delete_subject

    dsn = stack_postgres.dsn
    gallery, pids = enrolled
    done, committed, racing = pids[0], pids[1], pids[2]
    gallery.erase(done)
    # Committed in the database, its ledger entry (gallery.removed) not appended yet.
    delete_subject(dsn, committed, table=table)
    # An erasure requested (the registry says so), its revocation written beside a row an
    # enrolment racing it put back.
    world.core.ledger.append("erasure.requested", racing, {"request_id": "r-test"})
    _fake_revocation(dsn, table, racing, "erased")
    expected = {done: "erased", committed: "erased", racing: "erased"}
    fresh = open_pg(world, dsn, table)
    assert _revocations(dsn, table) == expected
    probe = engine.embed(world.photo(racing))[0]
    assert racing not in [m.pid for m in fresh.identify(probe, top_k=3)]
    assert fresh.stats()["revoked_removed"] == 0
    fresh.close()
    _configure(world, dsn, table)
    doc = json.loads(CliRunner().invoke(cli, ["gallery", "verify", "--json"]).output)
    assert doc["revocations"] == []
    assert _revocations(dsn, table) == expected


def _insert_quietly(dsn: str, table: str, pid: str, reason: str) -> None:
    """An intruder's one statement on ``<table>_revoked``: the change counter is not touched."""
    query = psycopg.sql.SQL("INSERT INTO {r} (pid, reason) VALUES (%s, %s)").format(
        r=psycopg.sql.Identifier(f"{table}_revoked")
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(query, (pid, reason))


def test_a_revocation_written_without_moving_the_counter_hides_nobody_from_running_replicas(
    world, engine, enrolled, stack_postgres, table
):
    """A fake `erased` entry for a consenting, enrolled subject, the change counter left alone:
    replicas that are already running (one listening, one not) keep identifying and verifying
    the subject, with no reload and no gallery command in between."""
    dsn = stack_postgres.dsn
    gallery, pids = enrolled
    victim = pids[0]
    probe = engine.embed(world.photo(victim))[0]
    listening = open_pg(world, dsn, table)
    listening.start_listener()
    checks = {
        "search": lambda g: [m.pid for m in g.identify(probe, top_k=1)] == [victim],
        "verification": lambda g: g.verify(probe, victim)[0],
    }
    try:
        for replica in (gallery, listening):
            for what, check in checks.items():
                assert check(replica), what
                _insert_quietly(dsn, table, victim, "erased")
                time.sleep(4 * listening.options.poll_interval_s)
                # The first call after the planted entry already answers.
                assert check(replica), what
                assert _revocations(dsn, table) == {}, what  # removed, for every replica
        assert gallery.size == listening.size == 17
        assert gallery.stats()["revoked_removed"] + listening.stats()["revoked_removed"] == 4
    finally:
        listening.close()


def _counter(dsn: str, table: str) -> int:
    query = psycopg.sql.SQL("SELECT version FROM {s}").format(
        s=psycopg.sql.Identifier(f"{table}_state")
    )
    with psycopg.connect(dsn) as conn:
        return int(conn.execute(query).fetchone()[0])


def test_each_gallery_write_moves_the_counter_once_and_no_writer_can_set_it_back(
    world, engine, enrolled, stack_postgres, table
):
    """The counter's triggers count honest writes once (an erasure, a withdrawal read from the
    ledger, an enrolment, a reload's repair), and an intruder can neither put the counter back
    after writing an entry nor delete its row."""
    dsn = stack_postgres.dsn
    gallery, pids = enrolled

    def moves(write) -> int:
        before = _counter(dsn, table)
        write()
        return _counter(dsn, table) - before

    assert moves(lambda: gallery.erase(pids[0])) == 1
    world.core.withdraw_consent(pids[1], ["identification"])
    assert moves(gallery.refresh) == 1
    assert moves(lambda: gallery.enroll_many({pids[2]: engine.embed(world.photo(pids[2], 3))})) == 1
    assert moves(lambda: _insert_quietly(dsn, table, pids[3], "erased")) == 1
    assert moves(gallery.reload) == 1  # the entry removed
    assert moves(gallery.reload) == 0  # nothing to repair, nothing written

    names = {
        "r": psycopg.sql.Identifier(f"{table}_revoked"),
        "s": psycopg.sql.Identifier(f"{table}_state"),
    }
    before = _counter(dsn, table)
    with psycopg.connect(dsn) as conn:
        conn.execute("SET CONSTRAINTS ALL IMMEDIATE")
        conn.execute(
            psycopg.sql.SQL("INSERT INTO {r} (pid, reason) VALUES (%s, 'erased')").format(**names),
            (pids[3],),
        )
        conn.execute(psycopg.sql.SQL("UPDATE {s} SET version = %s").format(**names), (before,))
    assert _counter(dsn, table) > before
    with psycopg.connect(dsn) as conn:
        # Touching the counter's row first does not make the entry's own move skipped.
        conn.execute(psycopg.sql.SQL("UPDATE {s} SET version = version - 1").format(**names))
        conn.execute(psycopg.sql.SQL("DELETE FROM {r} WHERE pid = %s").format(**names), (pids[3],))
    assert _counter(dsn, table) > before + 1
    for statement in ("DELETE FROM {s}", "TRUNCATE {s}"):
        with pytest.raises(psycopg.errors.RaiseException), psycopg.connect(dsn) as conn:
            conn.execute(psycopg.sql.SQL(statement).format(**names))


def _as_older_version(dsn: str, table: str) -> None:
    """The tables as a version without the counter's triggers left them."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for fn in ("signal", "counter"):
            conn.execute(
                psycopg.sql.SQL("DROP FUNCTION {f}() CASCADE").format(
                    f=psycopg.sql.Identifier(f"{table}_{fn}")
                )
            )


def test_tables_of_an_older_version_get_the_triggers_and_a_removed_one_is_reported(
    world, engine, enrolled, stack_postgres, table, caplog
):
    from typer.testing import CliRunner

    from visage_ml.app.cli import app as cli

    dsn = stack_postgres.dsn
    gallery, _pids = enrolled
    revoked = psycopg.sql.Identifier(f"{table}_revoked")
    _as_older_version(dsn, table)
    with caplog.at_level(logging.INFO, logger="visage_ml.serving.pg_gallery"):
        upgraded = open_pg(world, dsn, table)
    assert "older version" in caplog.text and "WARNING" not in caplog.text
    assert upgraded.stats()["change_signal"] == "ok"
    assert not upgraded.check_templates().wrong
    upgraded.close()
    before = _counter(dsn, table)
    _insert_quietly(dsn, table, list(world.people)[17], "erased")  # a subject without a row
    assert _counter(dsn, table) == before + 1

    # A role that owns the tables disables the trigger: a running replica reports it missing,
    # and `visage gallery verify` (whose opening creates it again) reports it restored.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER TABLE {r} DISABLE TRIGGER visage_signal").format(r=revoked)
        )
    name = f"{table}_revoked.visage_signal"
    assert gallery.stats()["change_signal"] == "missing"
    assert gallery.check_templates().triggers == {name: "trigger_missing"}
    _configure(world, dsn, table)
    runner = CliRunner()
    r = runner.invoke(cli, ["gallery", "verify", "--json"])
    assert r.exit_code == 1, r.output
    assert [(t["name"], t["kind"]) for t in json.loads(r.output)["triggers"]] == [
        (name, "trigger_restored")
    ]
    assert gallery.stats()["change_signal"] == "ok"
    r = runner.invoke(cli, ["gallery", "verify"])
    assert r.exit_code == 0, r.output


def test_a_trigger_the_gallerys_role_may_not_create_again_is_reported_missing(
    world, stack_postgres, table, caplog
):
    """The gallery's role owns its tables but not the trigger's function (a superuser took it
    over, then dropped the trigger): the gallery opens and serves, and says the trigger is
    missing until the tables' owner can create it."""
    dsn = stack_postgres.dsn
    role, password = f"r_{secrets.token_hex(4)}", secrets.token_hex(12)
    ident = psycopg.sql.Identifier
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            psycopg.sql.SQL("CREATE ROLE {u} LOGIN PASSWORD {p}").format(
                u=ident(role), p=psycopg.sql.Literal(password)
            )
        )
        conn.execute(psycopg.sql.SQL("GRANT CREATE ON SCHEMA public TO {u}").format(u=ident(role)))
    own_dsn = psycopg.conninfo.make_conninfo(dsn, user=role, password=password)
    try:
        open_pg(world, own_dsn, table).close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER FUNCTION {f}() OWNER TO CURRENT_USER").format(
                    f=ident(f"{table}_signal")
                )
            )
            conn.execute(
                psycopg.sql.SQL("DROP TRIGGER visage_signal ON {r}").format(
                    r=ident(f"{table}_revoked")
                )
            )
        with caplog.at_level(logging.WARNING, logger="visage_ml.serving.pg_gallery"):
            gallery = open_pg(world, own_dsn, table)
        assert "may not create it" in caplog.text
        assert gallery.stats()["change_signal"] == "missing"
        assert gallery.check_templates().triggers == {
            f"{table}_revoked.visage_signal": "trigger_missing"
        }
        gallery.close()
    finally:
        from visage_ml.serving.pg_gallery import reset_table

        reset_table(dsn, table=table)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(psycopg.sql.SQL("DROP OWNED BY {u}").format(u=ident(role)))
            conn.execute(psycopg.sql.SQL("DROP ROLE {u}").format(u=ident(role)))
