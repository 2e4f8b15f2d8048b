"""The shared pgvector gallery against someone who can write to its database but holds none of
the project's keys: a search vector (or calibration cluster) swapped in the table never makes a
face match another subject; the row is set aside, logged by pid and counted in the stats."""

from __future__ import annotations

import logging
import secrets

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
def table():
    return f"g_{secrets.token_hex(6)}"


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
