"""The HTTP audit log as a hash chain: verified, exported with an anchor in the ledger, read for a
subject's identification events."""

from __future__ import annotations

import json

import orjson
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.app.http.audit import FIELDS, AuditLog
from visage_ml.config import ProjectPaths
from visage_ml.privacy import auditlog
from visage_ml.privacy.core import PrivacyCore
from visage_ml.rights.information import subject_information

PID = "p0123456789abcdef"


def fill(path, n=6):
    log = AuditLog(path, fsync_interval=0)
    for i in range(n):
        log.write(
            {
                "time": f"2026-01-01T00:00:0{i}Z",
                "request_id": f"r{i}",
                "key_id": "a1b2c3d4e5f6",
                "role": "operator",
                "action": "identify" if i % 2 == 0 else "analytics",
                "pids": [PID] if i == 2 else None,
                "status": 200,
                "image": b"never".hex(),  # not an audit field: dropped
            }
        )
    log.close()


def test_the_chain_names_the_first_line_removed_altered_or_inserted(tmp_path):
    path = tmp_path / "audit.jsonl"
    fill(path)
    # Two writers (another process) extend one chain.
    other = AuditLog(path, fsync_interval=0)
    other.write({"action": "verify", "pid": PID, "status": 200})
    other.close()
    fill(path, 1)
    report = auditlog.verify(path)
    assert report.ok and report.lines == 8, report.message()
    lines = path.read_bytes().splitlines(keepends=True)
    assert all(set(orjson.loads(x)) == {*FIELDS, "prev"} for x in lines)
    for broken in (
        lines[:3] + lines[4:],  # removed
        [*lines[:3], lines[3].replace(b"200", b"403"), *lines[4:]],  # altered
        [*lines[:3], lines[1], *lines[3:]],  # inserted (replayed)
    ):
        path.write_bytes(b"".join(broken))
        bad = auditlog.verify(path)
        assert not bad.ok and bad.bad_line in (4, 5), bad.message()


def test_export_is_refused_for_a_broken_chain_and_anchored_in_the_ledger(project):
    paths = ProjectPaths(project)
    path = paths.privacy / auditlog.AUDIT_FILE
    paths.privacy.mkdir(parents=True, exist_ok=True)
    fill(path)
    out = project / "audit-export.jsonl"
    runner = CliRunner()
    r = runner.invoke(app, ["privacy", "audit", "export", "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["lines"] == 6 and out.read_bytes() == path.read_bytes()
    (anchor,) = [e for e in PrivacyCore(paths).ledger.entries() if e.type == "audit.exported"]
    assert anchor.payload["head"] == doc["head"] == auditlog.verify(path).head
    assert runner.invoke(app, ["privacy", "audit", "verify"]).exit_code == 0
    path.write_bytes(path.read_bytes().replace(b'"r3"', b'"r9"'))
    assert runner.invoke(app, ["privacy", "audit", "verify"]).exit_code == 1
    r = runner.invoke(app, ["privacy", "audit", "export", "--out", str(project / "x.jsonl")])
    assert r.exit_code == 2 and "line 5" in r.output and not (project / "x.jsonl").exists()


def test_a_log_cut_short_or_replaced_after_an_export_is_caught_by_its_ledger_anchor(project):
    # An operator with disk access drops the last lines (the chain of what is left is intact),
    # or writes a fresh log of the same length: the export's anchor in the ledger catches both.
    paths = ProjectPaths(project)
    path = paths.privacy / auditlog.AUDIT_FILE
    paths.privacy.mkdir(parents=True, exist_ok=True)
    fill(path)
    runner = CliRunner()
    r = runner.invoke(app, ["privacy", "audit", "export", "--out", str(project / "a.jsonl")])
    assert r.exit_code == 0, r.output
    fill(path, n=2)  # the log goes on after the export
    assert runner.invoke(app, ["privacy", "audit", "verify"]).exit_code == 0
    full = path.read_bytes()
    lines = full.splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:4]))
    assert auditlog.verify(path).ok  # the chain alone cannot tell
    r = runner.invoke(app, ["privacy", "audit", "verify"])
    assert r.exit_code == 1 and "line 5" in r.output and "cut from its end" in r.output
    r = runner.invoke(app, ["privacy", "audit", "export", "--out", str(project / "b.jsonl")])
    assert r.exit_code == 2 and not (project / "b.jsonl").exists()
    path.unlink()
    log = AuditLog(path, fsync_interval=0)  # a fresh chain without the identifications
    for i in range(8):
        log.write({"request_id": f"x{i}", "action": "analytics", "status": 200})
    log.close()
    assert auditlog.verify(path).ok
    r = runner.invoke(app, ["privacy", "audit", "verify"])
    assert r.exit_code == 1 and "line 6" in r.output and "replaced" in r.output
    path.write_bytes(full)  # restored from a backup: verifies again
    assert runner.invoke(app, ["privacy", "audit", "verify"]).exit_code == 0


def test_an_access_export_lists_when_the_subject_was_identified(project):
    paths = ProjectPaths(project)
    paths.privacy.mkdir(parents=True, exist_ok=True)
    fill(paths.privacy / auditlog.AUDIT_FILE)
    log = AuditLog(paths.privacy / auditlog.AUDIT_FILE)
    log.write({"action": "verify", "pid": PID, "key_id": "k2", "role": "operator", "status": 200})
    log.write({"action": "subject_state", "pid": PID, "status": 200})  # not an identification
    log.close()
    events = subject_information(paths, PID, source="test")["identification_events"]
    assert [(e["action"], e["request_id"]) for e in events] == [
        ("identify", "r2"),
        ("verify", None),
    ]
    assert subject_information(paths, "p" + "f" * 16)["identification_events"] == []
