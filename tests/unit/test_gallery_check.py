"""`visage gallery verify` on the in-memory (files) backend: every template file opened under
its subject's key and compared with the ledger's last enrolment of the subject."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime, timedelta

from serving_fakes import DIM, THRESHOLD, fake_engine, make_world
from typer.testing import CliRunner

from visage_ml.app.cli import app as cli
from visage_ml.serving import gallery_check
from visage_ml.serving.gallery import Gallery
from visage_ml.serving.gallery_check import ledger_verdict

VERSION = "emb-test-1"


def test_a_template_file_put_back_or_damaged_is_named_and_the_check_exits_non_zero(
    project, monkeypatch
):
    world = make_world(project, n_subjects=6, seed=secrets.randbits(31))
    engine = fake_engine(world.paths.root)
    gallery = Gallery.open(
        world.paths, model_version=VERSION, embedding_dim=DIM, threshold=THRESHOLD, core=world.core
    )
    pids = list(world.people)
    gallery.enroll_many({pid: engine.embed(world.photo(pid, 3)) for pid in pids})
    gallery.write_meta()
    runner = CliRunner()
    r = runner.invoke(cli, ["gallery", "verify"])
    assert r.exit_code == 0, r.output
    assert "6 templates checked (files): 6 ok, 0 wrong" in r.output

    victim, damaged = pids[0], pids[1]
    old = gallery.template_path(victim).read_bytes()
    gallery.enroll(victim, engine.embed(world.photo(victim, 3)))
    gallery.template_path(victim).write_bytes(old)  # an older copy of the subject's own
    blob = bytearray(gallery.template_path(damaged).read_bytes())
    blob[-1] ^= 1
    gallery.template_path(damaged).write_bytes(bytes(blob))

    doc = json.loads(runner.invoke(cli, ["gallery", "verify", "--json"]).output)
    assert doc["in_flight"] == [victim]  # enrolled a moment ago: may not be written yet
    assert [(p["pid"], p["kind"]) for p in doc["problems"]] == [(damaged, "sealed")]
    monkeypatch.setattr(gallery_check, "IN_FLIGHT_S", 0.0)
    r = runner.invoke(cli, ["gallery", "verify"])
    assert r.exit_code == 1
    assert f"{victim}  rolled_back: an older template of the subject" in r.output
    assert f"{damaged}  sealed:" in r.output
    assert "2 wrong (1 rolled_back, 1 sealed)" in r.output


def test_ledger_verdict():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    old = (now - timedelta(hours=1)).isoformat()
    recent = (now - timedelta(seconds=5)).isoformat()
    assert ledger_verdict("a", "a", [("a", old)], now) is None
    assert ledger_verdict("a", "b", [("a", old), ("b", old)], now) == "rolled_back"
    assert ledger_verdict("a", "b", [("a", old), ("b", recent)], now) == "in_flight"
    assert ledger_verdict("c", "b", [("a", old), ("b", old)], now) == "unrecorded"
    assert ledger_verdict("a", None, [("a", old)], now) == "removed"
