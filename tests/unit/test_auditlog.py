"""The HTTP audit log as a hash chain: verified, exported with an anchor in the ledger, read for a
subject's identification events."""

from __future__ import annotations

import hashlib
import json
import threading

import orjson
import pytest
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.app.http.audit import FIELDS, AuditLog, anchor_periodically
from visage_ml.config import AuditParams, ProjectPaths
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


def rechain(lines):
    """The attacker's rewrite: every ``prev`` recomputed after the lines removed or changed."""
    out, prev = [], auditlog.GENESIS
    for line in lines:
        obj = orjson.loads(line)
        obj["prev"] = prev
        new = orjson.dumps(obj)
        out.append(new + b"\n")
        prev = hashlib.sha256(new).hexdigest()
    return b"".join(out)


def serving_log(paths, every_lines=3, **kw):
    # What `visage serve` writes (app/http/app.py), anchored every `every_lines` lines.
    params = AuditParams(anchor_every_lines=every_lines, **kw)
    return AuditLog.for_serving(paths, params, core=PrivacyCore(paths), lock=threading.RLock())


def serve(log, records):
    # As the HTTP boundary does: flush (off the event loop) when write says so.
    for record in records:
        if log.write(record):
            log.flush()


def test_identifications_cut_out_and_rechained_are_caught_by_a_ledger_anchor(project):
    # An operator with disk access hides that a subject was identified (before answering their
    # access request): removes, or rewrites, the identify lines that name them and recomputes
    # every prev after them. The chain verifies; no export was made after those lines.
    paths = ProjectPaths(project)
    path = paths.privacy / auditlog.AUDIT_FILE
    paths.privacy.mkdir(parents=True, exist_ok=True)
    log = serving_log(paths)
    serve(
        log,
        (
            {"request_id": f"r{i}", "action": "identify", "pids": [PID] if i in (1, 4) else None}
            for i in range(10)
        ),
    )
    log.close()
    anchors = auditlog.ledger_anchors(PrivacyCore(paths).ledger.entries())
    assert [a["lines"] for a in anchors] == [3, 6, 9, 10]  # every 3 lines, and on close
    assert auditlog.anchors_in(paths.ledger) == anchors  # what the bundle reads
    assert [e["request_id"] for e in subject_information(paths, PID)["identification_events"]] == [
        "r1",
        "r4",
    ]
    full = path.read_bytes()
    lines = full.splitlines()
    runner = CliRunner()
    removed = rechain([x for x in lines if PID.encode() not in x])
    rewritten = rechain([x.replace(f'["{PID}"]'.encode(), b"null") for x in lines])
    for forged in (removed, rewritten):
        path.write_bytes(forged)
        assert auditlog.verify(path).ok  # the chain alone cannot tell
        r = runner.invoke(app, ["privacy", "audit", "verify"])
        assert r.exit_code == 1 and "rewritten" in r.output, r.output
        with pytest.raises(ValueError, match=r"restore privacy/audit\.jsonl"):
            subject_information(paths, PID)
    path.write_bytes(full)  # restored from a backup
    assert runner.invoke(app, ["privacy", "audit", "verify"]).exit_code == 0
    assert len(subject_information(paths, PID)["identification_events"]) == 2


def test_an_anchor_written_after_a_bundle_was_built_holds_the_next_bundle(project):
    # The process remembers the anchors it has read (auditlog.anchors_in): one written later,
    # by the server stopping, must still be held to, or the lines after the first anchor could
    # be cut unseen.
    paths = ProjectPaths(project)
    path = paths.privacy / auditlog.AUDIT_FILE
    paths.privacy.mkdir(parents=True, exist_ok=True)
    log = serving_log(paths)
    serve(log, ({"request_id": f"r{i}", "action": "identify", "pids": [PID]} for i in range(5)))
    assert len(subject_information(paths, PID)["identification_events"]) == 5  # 3 anchored
    log.close()  # anchors line 5
    assert [a["lines"] for a in auditlog.anchors_in(paths.ledger)] == [3, 5]
    path.write_bytes(b"".join(x + b"\n" for x in path.read_bytes().splitlines()[:4]))
    with pytest.raises(ValueError, match="cut from its end"):
        subject_information(paths, PID)


def test_an_anchor_rewritten_in_place_after_a_read_is_seen_and_so_is_its_restore(project):
    # The anchors a process has read are those on disk: an anchor line rewritten in place (the
    # same length) is read again, and so is the good line put back.
    paths = ProjectPaths(project)
    paths.privacy.mkdir(parents=True, exist_ok=True)
    log = serving_log(paths)
    serve(log, ({"request_id": f"r{i}", "action": "identify", "pids": None} for i in range(4)))
    log.close()
    assert [a["lines"] for a in auditlog.anchors_in(paths.ledger)] == [3, 4]
    before = paths.ledger.read_bytes()
    lines = before.split(b"\n")
    (i,) = [k for k, x in enumerate(lines) if b'"audit.anchored"' in x and b'"lines":3' in x]
    lines[i] = lines[i].replace(b'"lines":3', b'"lines":7')
    with open(paths.ledger, "r+b") as fh:
        fh.write(b"\n".join(lines))
    assert [a["lines"] for a in auditlog.anchors_in(paths.ledger)] == [7, 4]
    with open(paths.ledger, "r+b") as fh:
        fh.write(before)
    assert [a["lines"] for a in auditlog.anchors_in(paths.ledger)] == [3, 4]


def test_verify_states_the_window_of_lines_not_anchored_yet(project):
    # Lines after the last anchor can still be rewritten unseen: verify says how many there are.
    paths = ProjectPaths(project)
    path = paths.privacy / auditlog.AUDIT_FILE
    paths.privacy.mkdir(parents=True, exist_ok=True)
    fill(path, n=2)  # written before anchors existed: verifies as before, with a warning
    runner = CliRunner()
    r = runner.invoke(app, ["privacy", "audit", "verify"])
    assert r.exit_code == 0 and "no anchor in the ledger yet" in r.output, r.output
    log = serving_log(paths, every_lines=4)
    serve(log, ({"request_id": f"s{i}", "action": "identify", "pids": [PID]} for i in range(5)))
    # Anchored at 6 lines (the 2 old ones and 4 new); the 7th is not anchored yet.
    r = runner.invoke(app, ["privacy", "audit", "verify", "--json"])
    doc = json.loads(r.output)
    assert r.exit_code == 0 and (doc["anchored"], doc["unanchored"]) == (6, 1), doc
    r = runner.invoke(app, ["privacy", "audit", "verify"])
    assert "1 lines after the last anchor in the ledger (line 6)" in r.output, r.output
    lines = path.read_bytes().splitlines()
    path.write_bytes(rechain(lines[:6]))  # within the window: not detected
    assert runner.invoke(app, ["privacy", "audit", "verify"]).exit_code == 0
    path.write_bytes(b"".join(x + b"\n" for x in lines))
    log.close()  # stopping the server anchors the rest
    r = runner.invoke(app, ["privacy", "audit", "verify"])
    assert r.exit_code == 0 and "every line is anchored" in r.output, r.output
    assert len(auditlog.ledger_anchors(PrivacyCore(paths).ledger.entries())) == 2


def test_anchors_are_cheap_on_time_and_a_failed_one_is_retried_later(tmp_path):
    now = [0.0]
    heads = []

    def anchor(head):
        if len(heads) == 1 and now[0] < 200:
            raise OSError("ledger unavailable")
        heads.append(dict(head))

    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"action": "old"}\n')  # an unchained line from before the chain
    log = AuditLog(
        path,
        fsync_interval=60,
        anchor=anchor,
        anchor_every_lines=1000,
        anchor_every_seconds=100,
        clock=lambda: now[0],
    )
    assert not log.write({"action": "identify"})  # neither fsync nor anchor due: no flush
    now[0] = 100.0
    assert log.write({"action": "identify"})  # the anchor is due on time
    log.flush()
    assert heads == [{"lines": 2, "head": auditlog.verify(path).head}]
    log.flush()  # nothing written since: nothing anchored
    now[0] = 150.0
    assert not log.write({"action": "analytics"})
    now[0] = 199.0
    log.write({"action": "analytics"})
    log.flush()  # fails: retried anchor_every_seconds later, serving goes on
    assert len(heads) == 1 and not log.write({"action": "analytics"})
    now[0] = 300.0
    stop = threading.Event()
    worker = threading.Thread(target=anchor_periodically, args=(log,), kwargs={"stop": stop})
    log.anchor_every_seconds = 0.2  # the background check: no request needed
    worker.start()
    try:
        for _ in range(100):
            if len(heads) == 2:
                break
            threading.Event().wait(0.05)
    finally:
        stop.set()
        worker.join()
    assert heads[-1] == {"lines": 5, "head": auditlog.verify(path).head}
    log.close()
    assert len(heads) == 2  # nothing new to anchor on close
    report = auditlog.verify(path, anchors=heads)
    assert report.ok and report.unchained == 1 and report.unanchored == 0, report.message()
