"""The HTTP API: roles, identification round trips, rights, bad inputs, audit, metrics, OpenAPI."""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

import anyio
import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from notify_fakes import SmtpServer, free_port
from PIL import Image
from project_helpers import run_server
from prometheus_client.parser import text_string_to_metric_families
from serving_fakes import (
    DIM,
    THRESHOLD,
    TileDetector,
    face_tile,
    fake_engine,
    make_person,
    make_world,
    png_b64,
    scene,
)
from typer.testing import CliRunner

from visage_ml.app.cli import app as cli
from visage_ml.app.http.app import create_app
from visage_ml.app.http.auth import ROLES, KeyStore, parse_time
from visage_ml.app.http.schemas import SubjectMessage
from visage_ml.config import NotifyParams, ProjectPaths, load_params
from visage_ml.data.rawstore import RawStore
from visage_ml.privacy import auditlog
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.outbox import SUBJECT_MESSAGE_STATES, Outbox, Recipients
from visage_ml.rights.information import subject_information
from visage_ml.rights.notify import Notifier
from visage_ml.serving.engine import Engine
from visage_ml.serving.gallery import Gallery

VERSION = "emb-test-1"
PID_RE = re.compile(r"p[0-9a-f]{16}")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Served:
    """A TestClient on an app built from the fake world, with one key per role."""

    def __init__(self, root: Path, *, overrides=None, engine=None, mode="full", wall=None) -> None:
        self.world = make_world(root, n_subjects=20, without_identification=2)
        self.pids = list(self.world.people)
        self.params = load_params(root / "params.yaml", overrides=overrides or {})
        self.engine = engine or fake_engine(root, max_faces=self.params.serving.max_faces)
        self.clock = Clock()
        self.wall = wall
        self.keys = {role: KeyStore(self.world.paths.api_keys).create(role)[1] for role in ROLES}
        self.mode = mode
        self.client = self.build()

    def gallery(self, core=None):
        return Gallery.open(
            self.world.paths,
            model_version=VERSION,
            embedding_dim=DIM,
            threshold=THRESHOLD,
            core=core or self.world.core,
            embed=self.engine.embed,
        )

    def build(self, *, core=None) -> TestClient:
        core = core or self.world.core
        app = create_app(
            self.world.paths,
            params=self.params,
            engine=self.engine,
            gallery=self.gallery(core) if self.mode == "full" else None,
            core=core,
            mode=self.mode,
            clock=self.clock,
            **({"wall_clock": self.wall} if self.wall is not None else {}),
        )
        return TestClient(app, raise_server_exceptions=False)

    def call(self, method, path, role=None, **kw):
        headers = kw.pop("headers", {})
        if role is not None:
            headers["X-API-Key"] = self.keys[role]
        r = self.client.request(method, path, headers=headers, **kw)
        assert_documented(self.client.app, method, path, r)
        return r

    def photo_b64(self, pid, n=1):
        return [png_b64(t) for t in self.world.photo(pid, n)]

    def enroll(self, pid, n=3):
        return self.call(
            "POST", "/v1/enroll", "operator", json={"pid": pid, "images": self.photo_b64(pid, n)}
        )

    def identify(self, image_b64, top_k=3):
        return self.call(
            "POST", "/v1/identify", "operator", json={"image": image_b64, "top_k": top_k}
        )

    def top1(self, pid):
        r = self.identify(self.photo_b64(pid)[0])
        assert r.status_code == 200, r.text
        matches = r.json()["faces"][0]["matches"]
        return matches[0]["pid"] if matches else None


def assert_documented(app, method, path, r):
    """An error that a route answers is one its OpenAPI description names under that status:
    a client author handles the codes each route documents (a 500, and a path or method the
    app lacks, are the API description's)."""
    if r.status_code < 400 or r.status_code == 500 or "json" not in r.headers["content-type"]:
        return
    code = r.json()["error"]["code"]
    for template, ops in app.openapi()["paths"].items():
        pattern = "[^/]+".join(re.escape(part) for part in re.split(r"\{[^}]+\}", template))
        if re.fullmatch(pattern, path.partition("?")[0]) and method.lower() in ops:
            documented = ops[method.lower()]["responses"].get(str(r.status_code))
            assert documented and code in documented_codes(documented), (
                f"{method} {template} answered {r.status_code} {code}, which it does not document"
            )
            return


@pytest.fixture
def served(project):
    return Served(project)


@pytest.fixture
def enrolled(served):
    for pid in served.pids[:18]:
        assert served.enroll(pid).status_code == 200
    return served


def error_of(r):
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


def audit_lines(served):
    path = served.world.paths.privacy / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- identification round trip ----------------------------------------------------------------


def test_enrolled_subjects_are_identified_from_held_out_photos(enrolled):
    s = enrolled
    for pid in s.pids[:18]:
        assert s.top1(pid) == pid
    # Several faces in one frame: one result per face, in the order of detection.
    group = s.pids[:4]
    frame = png_b64(scene([s.world.photo(p)[0] for p in group]))
    r = s.identify(frame)
    assert [f["matches"][0]["pid"] for f in r.json()["faces"]] == group
    body = r.json()
    assert body["threshold"] == THRESHOLD and body["model_version"] == VERSION
    # A stranger matches nobody.
    stranger = make_person("p" + "0" * 16, s.world.rng, "g2", "male")
    r = s.identify(png_b64(face_tile(stranger, s.world.rng)))
    assert r.json()["faces"][0]["matches"] == []


def test_verify_answers_match_or_not_and_unknown_pid_is_404(enrolled):
    s = enrolled
    a, b = s.pids[0], s.pids[1]
    img = s.photo_b64(a)[0]
    r = s.call("POST", "/v1/verify", "operator", json={"image": img, "pid": a})
    assert r.status_code == 200 and r.json()["match"] is True
    r = s.call("POST", "/v1/verify", "operator", json={"image": img, "pid": b})
    assert r.status_code == 200 and r.json()["match"] is False
    r = s.call("POST", "/v1/verify", "operator", json={"image": img, "pid": "p" + "e" * 16})
    assert r.status_code == 404 and error_of(r) == "not_enrolled"
    two = png_b64(scene([s.world.photo(a)[0], s.world.photo(b)[0]]))
    r = s.call("POST", "/v1/verify", "operator", json={"image": two, "pid": a})
    assert r.status_code == 422 and error_of(r) == "multiple_faces"


def test_enrolment_without_identification_consent_is_refused_before_embedding(served, monkeypatch):
    s = served
    detector = s.engine.detector
    embedded = []
    embed = s.engine.embed
    monkeypatch.setattr(s.engine, "embed", lambda crops: embedded.append(crops) or embed(crops))
    images = s.photo_b64(s.pids[-1], 3)
    r = s.call("POST", "/v1/enroll", "operator", json={"pid": s.pids[-1], "images": images})
    # An operator is not told why (no oracle for consent state) ...
    assert r.status_code == 409 and error_of(r) == "not_available"
    assert "no_consent" not in r.json()["error"]["message"]
    # The images were checked (one face, quality), never embedded: the refusal's embedding, which
    # keeps its time that of any other refusal, is of a decoy.
    crops = [
        f.crop for im in images for f in s.engine.detect_one(s.client.app.state.visage.decode(im))
    ]
    assert len(embedded) == 1 and len(embedded[0]) == len(crops) == 3
    assert not any(np.array_equal(row, c) for row in embedded[0] for c in crops)
    embedded.clear()
    # ... a DPO is, before the images are looked at.
    calls = detector.calls
    r = s.call(
        "POST", "/v1/enroll", "dpo", json={"pid": s.pids[-1], "images": s.photo_b64(s.pids[-1])}
    )
    assert r.status_code == 409 and error_of(r) == "processing_not_allowed"
    assert "no_consent" in r.json()["error"]["message"]
    assert detector.calls == calls and embedded == []
    assert not (s.world.paths.gallery / "templates").exists() or not any(
        (s.world.paths.gallery / "templates").rglob("*.tpl")
    )


def test_restricted_subject_is_not_returned_until_lifted(enrolled):
    s = enrolled
    pid = s.pids[2]
    r = s.call("POST", f"/v1/subjects/{pid}/restrict", "dpo", json={"reason_code": "dispute"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["event"] == "restriction.set" and body["subject"]["restricted"] is True
    assert body["subject"]["gallery"] == {
        "status": "current",
        "enrolled": True,
        "searchable": False,
        "template_model_version": VERSION,
    }
    assert s.top1(pid) != pid
    r = s.call("GET", f"/v1/subjects/{pid}", "auditor")
    assert r.json()["purposes"]["identification"]["reason"] == "restricted"
    assert s.call("POST", f"/v1/subjects/{pid}/lift", "dpo").status_code == 200
    assert s.top1(pid) == pid
    r = s.call("POST", f"/v1/subjects/{pid}/lift", "dpo")
    assert r.status_code == 409 and error_of(r) == "not_restricted"


def test_objection_and_withdrawal_stop_identification(enrolled):
    s = enrolled
    a, b = s.pids[3], s.pids[4]
    r = s.call("POST", f"/v1/subjects/{a}/object", "dpo", json={"purposes": ["identification"]})
    assert r.status_code == 200 and r.json()["subject"]["objected"] == ["identification"]
    r = s.call("POST", f"/v1/subjects/{b}/consent/withdraw", "dpo")
    assert r.status_code == 200
    assert r.json()["subject"]["purposes"]["training"]["reason"] == "consent_withdrawn"
    assert s.top1(a) != a and s.top1(b) != b
    assert s.top1(s.pids[5]) == s.pids[5]
    # The ledger names who did it: the dpo's API key, not the server's OS user.
    dpo_id = s.keys["dpo"].split("_")[1]
    done = [
        e for e in s.world.core.ledger.entries() if e.type in ("objection", "consent.withdrawn")
    ]
    assert [e.actor for e in done] == [f"api-key:{dpo_id}"] * 2


def test_a_consent_withdrawal_for_analytics_is_refused_saying_why(enrolled):
    # Analytics identifies no one and never asks the consent registry: a withdrawal for it was
    # refused with a bare schema error, and a withdrawal of "all purposes" recorded one for
    # analytics too, which changed nothing.
    s = enrolled
    pid = s.pids[6]
    r = s.call(
        "POST", f"/v1/subjects/{pid}/consent/withdraw", "dpo", json={"purposes": ["analytics"]}
    )
    assert r.status_code == 422 and error_of(r) == "not_by_consent", r.text
    assert "identifies no one" in r.json()["error"]["message"]
    assert "object" in r.json()["error"]["message"]
    r = s.call("POST", f"/v1/subjects/{pid}/consent/withdraw", "dpo")
    assert r.status_code == 200, r.text
    purposes = r.json()["subject"]["purposes"]
    assert purposes["training"]["reason"] == "consent_withdrawn"
    assert purposes["analytics"]["reason"] == "no_consent"
    (withdrawn,) = [e for e in s.world.core.ledger.entries() if e.type == "consent.withdrawn"]
    assert "analytics" not in withdrawn.payload["purposes"]
    # An objection to analytics can be recorded (the DPO weighs and answers it).
    r = s.call("POST", f"/v1/subjects/{pid}/object", "dpo", json={"purposes": ["analytics"]})
    assert r.status_code == 200 and r.json()["subject"]["objected"] == ["analytics"], r.text


def test_an_empty_purpose_list_is_refused_not_taken_for_every_purpose(served):
    # "purposes": [] names no purpose; it is not an omitted list. A withdrawal with it recorded
    # consent.withdrawn for every purpose (the subject was no longer searched, and retention then
    # erased the template), an objection (or an objection request) one to all four.
    s = served
    pid = s.pids[9]
    ledger = s.world.paths.ledger.read_bytes()
    for path, body in (
        ("consent/withdraw", {"purposes": []}),
        ("object", {"purposes": []}),
        ("requests", {"right": "objection", "purposes": []}),
    ):
        r = s.call("POST", f"/v1/subjects/{pid}/{path}", "dpo", json=body)
        assert r.status_code == 422 and error_of(r) == "invalid_request", (path, r.text)
        assert "purposes" in r.json()["error"]["message"]
    assert s.world.paths.ledger.read_bytes() == ledger
    state = s.call("GET", f"/v1/subjects/{pid}", "dpo").json()
    assert state["purposes"]["identification"]["allowed"] and state["objected"] == []
    # The privacy core (which the CLI and every other caller use) refuses it too.
    for record in (s.world.core.withdraw_consent, s.world.core.object):
        with pytest.raises(ValueError, match="name at least one purpose"):
            record(pid, [])
    assert s.world.paths.ledger.read_bytes() == ledger


def test_a_request_received_before_its_subject_was_registered_is_taken_and_says_so(served):
    # A request that reached the controller before the subject was added (a letter answered
    # after an import) was refused 409: the DPO could only record a later date and a later
    # deadline. Taken as received, it says it predates the registration, in the answer and in
    # GET /v1/requests/{id}; a time before the GDPR applied (1970) is still refused, with
    # nothing appended.
    s = served
    pid = s.pids[10]
    added = s.world.core.added_at(pid)
    received = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    r = s.call(
        "POST",
        f"/v1/subjects/{pid}/requests",
        "dpo",
        json={"right": "access", "received_at": received},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["received_before_registration"] is True and body["subject_added_at"] == added
    got = s.call("GET", f"/v1/requests/{body['request_id']}", "dpo").json()
    assert got["received_before_registration"] is True and got["subject_added_at"] == added
    assert got["days_left"] in (27, 28, 29)  # a month from receipt, not from now
    ledger = s.world.paths.ledger.read_bytes()
    old = {"received_at": "1970-01-01T00:00:00Z"}
    for path, body in (("requests", {"right": "access", **old}), ("erasure", old)):
        r = s.call("POST", f"/v1/subjects/{pid}/{path}", "dpo", json=body)
        assert r.status_code == 409 and error_of(r) == "not_allowed", (path, r.text)
        assert "before 25 May 2018, when the GDPR began to apply" in r.text
    assert s.world.paths.ledger.read_bytes() == ledger


def test_a_withdrawal_or_objection_that_changes_nothing_is_refused_and_not_recorded(served):
    # Withdrawing a consent never given appended a signed consent.withdrawn, and repeating an
    # objection appended another objection, each answered 200: ledger lines that changed
    # nothing, read as the subject's acts. Refused like the lift of a subject who is not
    # restricted: 409 saying how things stand, nothing appended.
    s = served
    never, pid = s.pids[-1], s.pids[11]  # never consented to identification; consented to all
    ledger = s.world.paths.ledger
    ident = {"purposes": ["identification"]}

    def post(who, action, body):
        n = len(ledger.read_bytes().splitlines())
        r = s.call("POST", f"/v1/subjects/{who}/{action}", "dpo", json=body)
        return r, len(ledger.read_bytes().splitlines()) - n

    r, appended = post(never, "consent/withdraw", ident)
    assert (r.status_code, error_of(r), appended) == (409, "not_consented", 0), r.text
    assert "no consent given for identification" in r.json()["error"]["message"]
    for action in ("consent/withdraw", "object"):
        r, appended = post(pid, action, ident)
        assert (r.status_code, appended) == (200, 1), r.text
        r, appended = post(pid, action, ident)
        assert (r.status_code, appended) == (409, 0), r.text
    assert error_of(r) == "already_objected" and "already objects" in r.text
    # A withdrawal with a consent still given among its purposes, an objection naming a purpose
    # not yet objected to: recorded.
    r, appended = post(pid, "consent/withdraw", {"purposes": ["identification", "training"]})
    assert (r.status_code, appended) == (200, 1), r.text
    r, appended = post(pid, "object", {})
    assert (r.status_code, appended) == (200, 1), r.text
    assert r.json()["subject"]["objected"] == [
        "analytics",
        "evaluation",
        "identification",
        "training",
    ]
    r, appended = post(pid, "consent/withdraw", None)  # every consent: evaluation is still given
    assert (r.status_code, appended) == (200, 1), r.text
    r, appended = post(pid, "consent/withdraw", None)
    assert (r.status_code, error_of(r), appended) == (409, "not_consented", 0), r.text


def test_a_restriction_already_set_is_refused_and_not_recorded(served):
    # A second POST /restrict appended a second restriction.set, recorded a completed request
    # and told every recipient (Art. 19) of a restriction that changed nothing. Refused like
    # the lift of a subject who is not restricted: 409, nothing appended.
    s = served
    pid = s.pids[3]
    ledger = s.world.paths.ledger
    r = s.call("POST", f"/v1/subjects/{pid}/restrict", "dpo")
    assert r.status_code == 200 and r.json()["event"] == "restriction.set", r.text
    before = ledger.read_bytes()
    r = s.call("POST", f"/v1/subjects/{pid}/restrict", "dpo", json={"reason_code": "dispute"})
    assert (r.status_code, error_of(r)) == (409, "already_restricted"), r.text
    assert f"subject {pid} is already restricted" in r.json()["error"]["message"]
    assert ledger.read_bytes() == before


def test_an_identification_reaches_the_access_page_and_a_restriction_its_recipients(enrolled):
    # What a DPO must be able to show: when the subject was identified (Art. 15), and that the
    # recipients of their data heard of the restriction set over HTTP (Art. 19), by whom.
    s = enrolled
    pid = s.pids[7]
    assert s.top1(pid) == pid
    op_id, dpo_id = (s.keys[r].split("_")[1] for r in ("operator", "dpo"))
    events = subject_information(s.world.paths, pid)["identification_events"]
    assert [(e["action"], e["key_id"], e["status"]) for e in events] == [("identify", op_id, 200)]
    Recipients(s.world.core).add("partner", name="Partner", address="privacy@partner.invalid")
    # Art. 15(1)(c): the subject's information names the recipients registered as receiving
    # their data (it listed the records' categories only); no address.
    info = subject_information(s.world.paths, pid)
    assert info["registered_recipients"] == [{"id": "partner", "name": "Partner"}]
    assert "partner.invalid" not in str(info)
    r = s.call("POST", f"/v1/subjects/{pid}/restrict", "dpo")
    assert r.status_code == 200 and r.json()["event"] == "restriction.set", r.text
    queued = [e for e in s.world.core.ledger.entries() if e.type == "notification.queued"]
    (art19,) = [e for e in queued if e.payload["kind"] == "art19"]
    assert art19.pid == pid and art19.payload["recipient_id"] == "partner"
    assert art19.actor == f"api-key:{dpo_id}"
    # Lifting it: the subject is told before (Art. 18(3)), recipients after (Art. 19). It went
    # straight to restriction.lifted, telling no one.
    r = s.call("POST", f"/v1/subjects/{pid}/lift", "dpo")
    assert r.status_code == 200 and r.json()["event"] == "restriction.lifted", r.text
    entries = list(s.world.core.ledger.entries())
    (lifted,) = [e for e in entries if e.type == "restriction.lifted"]
    (told,) = [
        e for e in entries if e.type == "notification.queued" and e.payload["kind"] == "lift_notice"
    ]
    assert told.pid == pid and told.seq < lifted.seq
    art19s = [
        e for e in entries if e.type == "notification.queued" and e.payload["kind"] == "art19"
    ]
    assert len(art19s) == 2 and art19s[-1].seq > lifted.seq
    again = s.call("POST", f"/v1/subjects/{pid}/lift", "dpo")
    assert again.status_code == 409


def test_serve_enforces_retention_in_the_background_as_the_scheduler(project):
    # privacy.retention.serve_interval_seconds: the server purges the template of a subject
    # who withdrew consent to identification, without anyone running `visage privacy enforce`.
    s = Served(project, overrides={"privacy.retention.serve_interval_seconds": 0.2})
    pid = s.pids[0]
    assert s.enroll(pid).status_code == 200
    with s.client:  # runs the app's lifespan, which starts the background task
        r = s.call(
            "POST",
            f"/v1/subjects/{pid}/consent/withdraw",
            "dpo",
            json={"purposes": ["identification"]},
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            done = [
                e
                for e in s.world.core.ledger.entries()
                if e.type == "retention.applied" and e.pid == pid
            ]
            if done:
                break
            time.sleep(0.1)
    (entry,) = done
    assert entry.payload["action"] == "purge_template" and entry.actor == "scheduler"
    assert entry.payload["reason"] == "consent_withdrawn"
    assert s.world.core.subject(pid).template_sha256 is None


def test_the_default_server_enforces_retention_and_waits_an_interval_first(project):
    # The notice says retention is enforced automatically; with the shipped
    # serve_interval_seconds (0) `visage serve` started no enforcer at all. Now it does, hourly,
    # and the first pass waits that long: an app used for a few requests (a test) runs none, and
    # its enforcer ends with it.
    s = Served(project)
    assert s.params.privacy.retention.serve_interval_seconds == 3600
    before = set(threading.enumerate())
    with s.client:
        assert s.call("GET", "/healthz").status_code == 200
        (enforcer,) = [
            t for t in threading.enumerate() if t.name == "visage-enforce" and t not in before
        ]
        assert enforcer.is_alive()
    enforcer.join(timeout=10)
    assert not enforcer.is_alive()
    assert not [e for e in s.world.core.ledger.entries() if e.actor == "scheduler"]


def test_erased_subject_is_gone_key_destroyed_and_stays_gone_after_restart(enrolled):
    s = enrolled
    pid = s.pids[6]
    gallery = s.client.app.state.visage.gallery
    removal = gallery.erase(pid)
    assert len(removal.removed) == 3  # template, anchor template, key
    assert not gallery.keys.exists(pid)
    assert s.top1(pid) != pid
    r = s.call("GET", f"/v1/subjects/{pid}", "dpo")
    assert r.json()["gallery"] == {
        "status": "current",
        "enrolled": False,
        "searchable": False,
        "template_model_version": None,
    }
    s.client = s.build(core=PrivacyCore(s.world.paths))  # a restart
    assert s.top1(pid) != pid
    assert s.top1(s.pids[7]) == s.pids[7]
    assert s.client.app.state.visage.gallery.size == 17


def test_rights_on_an_erased_subject_are_refused(enrolled):
    s = enrolled
    pid = s.pids[8]
    s.world.core.ledger.append("erasure.requested", pid, {})
    s.world.core.ledger.append("erasure.completed", pid, {})
    r = s.call("POST", f"/v1/subjects/{pid}/restrict", "dpo")
    assert r.status_code == 409 and error_of(r) == "subject_erased"
    assert s.top1(pid) != pid


# -- authentication and roles ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("POST", "/v1/identify", {"operator"}),
        ("POST", "/v1/analytics", {"operator"}),
        ("GET", "/v1/analytics/windows", {"dpo", "auditor"}),
        ("POST", "/v1/subjects/{pid}/restrict", {"dpo"}),
        ("POST", "/v1/subjects/{pid}/consent/withdraw", {"dpo"}),
        ("GET", "/v1/subjects/{pid}", {"dpo", "auditor"}),
        ("GET", "/v1/ledger", {"auditor"}),
        ("GET", "/v1/certificates", {"auditor"}),
    ],
)
def test_each_role_reaches_only_its_endpoints(served, method, path, allowed):
    s = served
    path = path.format(pid=s.pids[0])
    body = {"image": s.photo_b64(s.pids[0])[0]} if method == "POST" else None
    if path.endswith(("/restrict", "/withdraw")):
        body = None
    r = s.call(method, path, json=body)
    assert r.status_code == 401 and error_of(r) == "unauthenticated"
    r = s.call(method, path, json=body, headers={"X-API-Key": s.keys["operator"] + "x"})
    assert r.status_code == 401
    for role in ROLES:
        r = s.call(method, path, role, json=body)
        if role in allowed:
            assert r.status_code == 200, (role, r.text)
        else:
            assert r.status_code == 403 and error_of(r) == "forbidden", (role, r.text)


# Every route and the roles that may call it (app.py's table); a route missing here fails.
ROUTE_ROLES = {
    ("GET", "/healthz"): None,  # public
    ("GET", "/metrics"): {"auditor", "metrics"},
    ("POST", "/v1/identify"): {"operator"},
    ("POST", "/v1/verify"): {"operator", "dpo", "auditor"},
    ("POST", "/v1/enroll"): {"operator", "dpo"},
    ("POST", "/v1/analytics"): {"operator"},
    ("GET", "/v1/analytics/windows"): {"dpo", "auditor"},
    ("GET", "/v1/subjects/{pid}"): {"dpo", "auditor"},
    **{
        ("POST", f"/v1/subjects/{{pid}}/{action}"): {"dpo"}
        for action in ("consent/withdraw", "restrict", "lift", "object", "requests", "erasure")
    },
    ("GET", "/v1/subjects/{pid}/export"): {"dpo"},
    ("GET", "/v1/requests"): {"dpo"},
    ("GET", "/v1/requests/{request_id}"): {"dpo"},
    **{
        ("POST", f"/v1/requests/{{request_id}}/{action}"): {"dpo"}
        for action in ("verify", "extend", "deny")
    },
    ("GET", "/v1/ledger"): {"auditor"},
    ("GET", "/v1/certificates"): {"auditor"},
    ("GET", "/v1/certificates/{name}"): {"auditor"},
}


def _routes() -> list:
    """Every route of the API's routers."""
    from visage_ml.app.http.routers import (
        analytics,
        health,
        ledger,
        recognition,
        requests,
        subjects,
    )

    modules = (health, recognition, analytics, subjects, requests, ledger)
    return [route for module in modules for route in module.router.routes]


def test_no_route_lets_in_a_role_it_should_not():
    from visage_ml.app.http.boundary import PUBLIC_ROUTES, route_roles

    seen = {}
    for route in _routes():
        roles = None if route.name in PUBLIC_ROUTES else set(route_roles(route) or ROLES)
        seen.update({(method, route.path): roles for method in route.methods})
    assert seen == ROUTE_ROLES


def test_the_role_table_of_the_api_says_what_the_routes_allow():
    # app.py's table listed GET /v1/analytics/windows under operator, a key the route refuses
    # (it feeds the frames: reading the windows would tell it whether a person was seen).
    from visage_ml.app.http import app as http_app

    doc = http_app.__doc__ or ""
    table = doc.split("========  ")[2].split("\n========")[0]  # between the header and the end
    rows: dict[str, str] = {}
    role = ""
    for line in table.splitlines()[1:]:
        head, text = line[:8].strip(), line[10:]
        role = head or role
        rows[role] = rows.get(role, "") + " " + text
    listed: dict[tuple[str, str], set[str]] = {}
    for role, text in rows.items():
        method, base = "", ""
        for ref in re.findall(r"``((?:GET |POST )?/[^`]*)``", text):
            if " " in ref:
                method, ref = ref.split(" ")
            if ref.startswith(("/v1/", "/metrics")):
                # A short ``/lift`` after /v1/subjects/{pid}/restrict: a sibling under {pid}.
                base = re.sub(r"(\{[^}]*\}).*", r"\1", ref)
            else:
                ref = base + ref
            short = re.sub(r"\[(.*)\]", "", ref)
            for path in {short, ref.replace("[", "").replace("]", "")}:
                path = re.sub(r"\{[^}]*\}", "{}", path)
                listed.setdefault((method, path), set()).add(role)
    declared = {
        (method, re.sub(r"\{[^}]*\}", "{}", path)): roles
        for (method, path), roles in ROUTE_ROLES.items()
        if roles is not None  # /healthz, public, is not in the table
    }
    assert listed == declared


def test_revoked_key_is_refused_by_a_running_server(served):
    s = served
    store = KeyStore(s.world.paths.api_keys)
    key_id = s.keys["auditor"].split("_")[1]
    assert s.call("GET", "/v1/ledger", "auditor").status_code == 200
    store.revoke(key_id)
    assert s.call("GET", "/v1/ledger", "auditor").status_code == 401


def test_a_damaged_or_unreadable_key_file_is_a_503_that_says_what_to_do(served, caplog):
    # The boundary caught only its own refusals while it checked a key: a key file that could
    # not be read was an unexpected error (500 internal_error, on /healthz too), though the API
    # documents 503 api_keys_unreadable for it. The client is told what to do; the file's path
    # and what is wrong with it are the operator's (the server's log).
    s = served
    path = s.world.paths.api_keys
    stored = path.read_bytes()
    key = s.keys["operator"]
    image = s.photo_b64(s.pids[0])[0]

    def damaged(how):
        if how == "a folder":
            path.unlink()
            path.mkdir()
        else:
            path.write_bytes(how)

    def restore():
        if path.is_dir():
            path.rmdir()
        path.write_bytes(stored)

    limit = s.params.serving.auth.max_failures
    for how in (
        b"",
        stored[: len(stored) // 2],
        b"\x00\xffgarbage",
        b'{"keys": ["x"]}',
        "a folder",
    ):
        damaged(how)
        for _ in range(limit + 1):  # not a failed attempt of the client's: never a 429
            for method, path_, kw in (
                ("POST", "/v1/identify", {"json": {"image": image}}),
                ("GET", "/healthz", {}),
            ):
                r = s.call(method, path_, "operator", **kw)
                assert (r.status_code, error_of(r)) == (503, "api_keys_unreadable"), (how, r.text)
                message = r.json()["error"]["message"]
                assert "visage apikey create" in message and "backup" in message, message
                assert key not in message and key.split("_")[2] not in message
                assert str(path.parent) not in message
        assert s.call("GET", "/healthz").status_code == 200  # no key: liveness as before
        lines = audit_lines(s)
        assert (lines[-1]["action"], lines[-1]["status"], lines[-1]["error"]) == (
            "health",
            503,
            "api_keys_unreadable",
        )
        assert lines[-1]["key_id"] is None
        assert f"api_keys_unreadable: {path}" in caplog.text
        caplog.clear()
        restore()
        assert s.call("POST", "/v1/identify", "operator", json={"image": image}).status_code == 200


def test_failed_authentications_are_rate_limited_per_client(served):
    s = served
    limit = s.params.serving.auth.max_failures
    for _ in range(limit):
        assert s.call("GET", "/v1/ledger", headers={"X-API-Key": "vk_nope"}).status_code == 401
    r = s.call("GET", "/v1/ledger", "auditor")  # even a good key waits
    assert r.status_code == 429 and error_of(r) == "too_many_failed_attempts"
    assert int(r.headers["Retry-After"]) >= 1
    s.clock.t += s.params.serving.auth.window_seconds + 1
    assert s.call("GET", "/v1/ledger", "auditor").status_code == 200


def test_a_client_without_a_key_cannot_grow_the_audit_log_or_the_ledger_without_bound(project):
    # The attack: anyone who can reach the port floods it, with wrong keys past the failed-
    # authentication limit and with keyless /healthz calls. Each was a line of the audit log
    # (kept whole, never rotated) and every serving.audit.anchor_every_lines of them a signed
    # ledger entry kept for good: 3,000 such requests wrote 860 kB and 3 ledger entries.
    s = Served(project, overrides={"serving.audit.anchor_every_lines": 10})
    limit = s.params.serving.auth.max_failures
    flood = 200
    with s.client:
        for _ in range(flood):
            s.call("GET", "/v1/ledger", headers={"X-API-Key": "vk_nope"})
            assert s.call("GET", "/healthz").status_code == 200
        r = s.call("GET", "/v1/ledger", "auditor")
        assert r.status_code == 429  # the limit holds, for the client's valid key too
    lines = audit_lines(s)
    # The failed attempts the limit counts are audited; what it refuses unread, and a liveness
    # probe without a key, are counted in /metrics only.
    assert [(x["status"], x["error"]) for x in lines] == [(401, "unauthenticated")] * limit
    anchored = [e for e in s.world.core.ledger.entries() if e.type == "audit.anchored"]
    assert [e.payload["lines"] for e in anchored] == [limit]
    metrics = s.client.app.state.visage.metrics
    assert metrics.count(endpoint="/healthz", method="GET", outcome="200") == flood
    assert metrics.count(endpoint="/v1/ledger", method="GET", outcome="429") == flood - limit + 1


def test_behind_a_trusted_proxy_a_key_guesser_does_not_lock_everyone_out(project):
    # The layout docs/deploy.md recommends: replicas behind a reverse proxy, so every request
    # comes from the proxy's address. A stranger on the internet guesses keys (or a monitor
    # probes /healthz with a stale key): without knowing the proxy, the limit counts all clients
    # together and the guesser locks every good client out.
    s = Served(project, overrides={"serving.auth.trusted_proxies": ["10.0.0.0/8"]})
    s.client = TestClient(s.client.app, raise_server_exceptions=False, client=("10.0.0.5", 4711))
    limit = s.params.serving.auth.max_failures

    def via_proxy(path, client_ip, *, key, spoofed=None):
        forwarded = f"{spoofed}, {client_ip}" if spoofed else client_ip
        headers = {"X-API-Key": key, "X-Forwarded-For": forwarded}
        return s.client.get(path, headers=headers)

    for i in range(limit):
        if i % 2:
            r = via_proxy("/healthz", "198.51.100.7", key="vk_stale")
        else:
            # A guesser writing its own X-Forwarded-For poses as nobody new: the proxy
            # appends the address it saw, and that one is counted.
            r = via_proxy("/v1/ledger", "198.51.100.7", key="vk_guess", spoofed=f"192.0.2.{i}")
        assert r.status_code == 401
    r = via_proxy("/v1/ledger", "198.51.100.7", key=s.keys["auditor"], spoofed="192.0.2.99")
    assert (r.status_code, error_of(r)) == (429, "too_many_failed_attempts")
    assert via_proxy("/v1/ledger", "203.0.113.9", key=s.keys["auditor"]).status_code == 200
    # A client that reaches the server directly (not a trusted proxy) is its own address,
    # whatever X-Forwarded-For it writes.
    direct = TestClient(s.client.app, raise_server_exceptions=False, client=("192.0.2.50", 1))
    for _ in range(limit):
        headers = {"X-API-Key": "vk_nope", "X-Forwarded-For": "203.0.113.9"}
        assert direct.get("/v1/ledger", headers=headers).status_code == 401
    assert via_proxy("/v1/ledger", "203.0.113.9", key=s.keys["auditor"]).status_code == 200
    r = direct.get("/v1/ledger", headers={"X-API-Key": s.keys["auditor"]})
    assert r.status_code == 429


def test_the_client_behind_a_proxy_is_the_address_the_proxy_appended():
    from visage_ml.app.http.auth import FailureLimiter

    limiter = FailureLimiter(max_failures=1, window_seconds=1, trusted_proxies=["10.0.0.0/8"])

    def client(peer, forwarded=None):
        headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
        return limiter.client_of({"client": (peer, 1), "headers": headers})

    assert client("10.0.0.5", "192.0.2.1, 198.51.100.7") == "198.51.100.7"
    assert client("::ffff:10.0.0.5", "198.51.100.7") == "198.51.100.7"  # dual-stack socket
    assert client("10.0.0.5", "198.51.100.7, 10.0.0.9") == "198.51.100.7"  # two proxies
    assert client("10.0.0.5", "2001:db8::7") == "2001:db8::7"
    assert client("10.0.0.5") == "10.0.0.5"  # no header: the proxy itself
    assert client("10.0.0.5", "unknown") == "10.0.0.5"  # not an address: counted with it
    assert client("192.0.2.50", "198.51.100.7") == "192.0.2.50"  # not a proxy: its own


def test_a_trusted_proxy_that_is_not_an_address_is_a_clear_error(project):
    with pytest.raises(ValueError, match=r"trusted_proxies.*an IP address or network"):
        load_params(project / "params.yaml", overrides={"serving.auth.trusted_proxies": ["nginx"]})


# -- the boundary: the key before the body, bounded concurrency, body timeout, image size -----


def asgi_call(app, method, path, headers, receive, *, client=("10.1.2.3", 5555)):
    """Call the ASGI app directly with our own ``receive``; returns (status, headers, JSON)."""
    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": client,
        "server": ("testserver", 80),
    }
    anyio.run(app, scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), json.loads(body)


def _other_last_char(key: str) -> str:
    return key[:-1] + ("B" if key.endswith("A") else "A")


def test_the_key_is_checked_before_a_byte_of_the_body_is_read(served):
    s = served
    app = s.client.app
    reads = []

    async def never_read():
        reads.append(1)
        raise AssertionError("the boundary read the body of a request it should have refused")

    body = {"content-type": "application/json", "content-length": "10000000"}
    for headers in (
        {},
        {"x-api-key": "vk_nope"},
        {"x-api-key": s.keys["operator"] + "x"},
        # The last character changed (to one it is not: a fixed "A" is the real key 1 time in 64).
        {"authorization": "Bearer " + _other_last_char(s.keys["operator"])},
    ):
        status, h, err = asgi_call(app, "POST", "/v1/identify", {**body, **headers}, never_read)
        assert (status, err["error"]["code"]) == (401, "unauthenticated"), headers
        assert h[b"connection"] == b"close"  # the unread body is not taken off the socket
    # A valid key of the wrong role, an unknown path: refused, body unread.
    hdrs = {**body, "x-api-key": s.keys["dpo"]}
    status, _, err = asgi_call(app, "POST", "/v1/identify", hdrs, never_read)
    assert (status, err["error"]["code"]) == (403, "forbidden")
    status, _, _ = asgi_call(app, "POST", "/v1/no-such-thing", body, never_read)
    assert status == 401
    assert reads == []
    # A malformed body with a bad key is a failed login (401), never a parse error (400) ...
    limit = s.params.serving.auth.max_failures
    malformed = {"Content-Type": "application/json", "X-API-Key": "vk_guess"}
    for _ in range(limit):
        r = s.client.post("/v1/identify", content=b'{"image": ', headers=malformed)
        assert (r.status_code, error_of(r)) == (401, "unauthenticated")
    # ... so guessing through malformed bodies hits the limit like any other guessing.
    r = s.identify(s.photo_b64(s.pids[0])[0])
    assert (r.status_code, error_of(r)) == (429, "too_many_failed_attempts")


def test_a_body_sent_too_slowly_is_cut_off_with_408(project):
    s = Served(project, overrides={"serving.body_timeout_s": 0.3})
    calls = 0

    async def trickle():
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b'{"image": "', "more_body": True}
        await anyio.sleep(3600)  # the rest never comes

    headers = {"content-type": "application/json", "x-api-key": s.keys["operator"]}
    t0 = time.monotonic()
    status, h, err = asgi_call(s.client.app, "POST", "/v1/identify", headers, trickle)
    assert (status, err["error"]["code"]) == (408, "body_timeout")
    assert "serving.body_timeout_s" in err["error"]["message"]
    assert time.monotonic() - t0 < 10 and h[b"connection"] == b"close"
    assert audit_lines(s)[-1]["status"] == 408


def test_a_chunked_or_understated_body_is_cut_off_at_the_size_limit(project):
    # The attack: no Content-Length (chunked), or a small one, then megabytes of body.
    s = Served(project, overrides={"serving.max_request_bytes": 100_000})
    for declared in ({}, {"content-length": "10"}):
        reads = 0

        async def flood():
            nonlocal reads
            reads += 1
            return {"type": "http.request", "body": b"x" * 40_000, "more_body": True}

        headers = {"content-type": "application/json", "x-api-key": s.keys["operator"]}
        status, h, err = asgi_call(s.client.app, "POST", "/v1/identify", headers | declared, flood)
        assert (status, err["error"]["code"]) == (413, "request_too_large"), declared
        assert reads == 3 and h[b"connection"] == b"close"  # stops at the limit, unparsed


@dataclass
class GateDetector(TileDetector):
    """The tile detector, holding every call until ``gate`` is set."""

    gate: threading.Event = field(default_factory=threading.Event)

    def detect(self, images):
        assert self.gate.wait(60)
        return super().detect(images)


def in_flight(s):
    text = s.call("GET", "/metrics", "metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "visage_http_in_flight":
            return family.samples[0].value
    raise AssertionError("no visage_http_in_flight gauge")


def test_requests_past_max_concurrent_get_503_instead_of_queueing(project):
    detector = GateDetector()
    s = Served(
        project,
        overrides={"serving.max_concurrent": 2},
        engine=fake_engine(project, detector=detector),
    )
    image = s.photo_b64(s.pids[0])[0]
    answers = []
    threads = [
        threading.Thread(target=lambda: answers.append(s.identify(image).status_code))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 30
        while in_flight(s) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert in_flight(s) == 2  # one in the detector, one waiting for its lock
        t0 = time.monotonic()
        r = s.identify(image)
        # Refused at once, not queued behind the detector's lock.
        assert (r.status_code, error_of(r)) == (503, "busy") and time.monotonic() - t0 < 5
        assert r.headers["Retry-After"] == "1" and "serving.max_concurrent" in r.text
        assert s.call("GET", "/healthz").status_code == 200  # liveness is never bounded
    finally:
        detector.gate.set()
        for t in threads:
            t.join(60)
    assert answers == [200, 200] and in_flight(s) == 0
    assert s.identify(image).status_code == 200


def test_a_small_png_of_40_megapixels_is_downscaled_before_detection(project):
    sizes = []

    class Recorder(TileDetector):
        def detect(self, images):
            sizes.extend(im.size for im in images)
            return super().detect(images)

    s = Served(project, engine=fake_engine(project, detector=Recorder()))
    side = 6320  # 39.9 MP: under serving.max_image_pixels (40 MP), so it is decoded
    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, format="PNG", compress_level=9)
    body = base64.b64encode(buf.getvalue()).decode()
    assert len(body) < 200_000 and side * side <= s.params.serving.max_image_pixels
    t0 = time.monotonic()
    r = s.identify(body)
    elapsed = time.monotonic() - t0
    assert (r.status_code, error_of(r)) == (422, "no_face")
    limit = s.params.serving.max_detect_side
    assert sizes == [(limit, limit)]  # detection never saw the 6,320 px image
    assert elapsed < 15, elapsed  # decode + downscale, about a second; not MTCNN on 40 MP


def test_an_upscaled_photo_is_identified_with_boxes_in_its_own_coordinates(enrolled):
    s = enrolled
    s.engine.max_detect_side = 64
    pid = s.pids[3]
    tile = s.world.photo(pid)[0]
    big = np.repeat(np.repeat(scene([tile, None], cols=2), 4, axis=0), 4, axis=1)  # 128 x 256
    r = s.identify(png_b64(big))
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    assert face["box"] == [0.0, 0.0, 128.0, 128.0] and face["matches"][0]["pid"] == pid


def test_metrics_docs_and_the_schema_need_a_key_and_load_nothing_from_a_cdn(project):
    s = Served(project)
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        r = s.call("GET", path)
        assert (r.status_code, error_of(r)) == (401, "unauthenticated"), path
    for role in ("operator", "dpo"):
        assert s.call("GET", "/metrics", role).status_code == 403
    for role in ("auditor", "metrics"):
        assert s.call("GET", "/metrics", role).status_code == 200
    # A Prometheus scraper sends the key as a bearer token.
    bearer = {"Authorization": f"Bearer {s.keys['metrics']}"}
    assert s.client.get("/metrics", headers=bearer).status_code == 200
    # The metrics key reads metrics and nothing else.
    for method, path in (("GET", "/v1/ledger"), ("GET", f"/v1/subjects/{s.pids[0]}")):
        assert s.call(method, path, "metrics").status_code == 403
    # No docs pages at all; the schema only when asked for in params, and then for a key.
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert s.call("GET", path, "auditor").status_code == 404, path


def test_the_schema_is_served_only_when_enabled_and_only_to_a_key(project):
    s = Served(project, overrides={"serving.openapi": True})
    assert s.call("GET", "/openapi.json").status_code == 401
    r = s.call("GET", "/openapi.json", "metrics")
    assert r.status_code == 200 and "/v1/identify" in r.json()["paths"]
    assert s.call("GET", "/docs", "auditor").status_code == 404
    assert "cdn" not in r.text.lower()


# -- API key expiry and rotation ------------------------------------------------------------


def test_expired_keys_are_refused_and_a_rotated_key_works_only_for_its_grace_period(project):
    wall = Clock()
    wall.t = 1_800_000_000.0
    s = Served(project, wall=wall)
    store = KeyStore(s.world.paths.api_keys, clock=wall)
    record, key = store.create("auditor", expires_in_s=3600)
    ledger = {"X-API-Key": key}
    assert s.client.get("/v1/ledger", headers=ledger).status_code == 200
    wall.t += 3601
    r = s.client.get("/v1/ledger", headers=ledger)
    assert (r.status_code, error_of(r)) == (401, "key_expired")
    message = r.json()["error"]["message"]
    assert record.key_id in message and f"visage apikey rotate {record.key_id}" in message
    assert audit_lines(s)[-1]["key_id"] == record.key_id
    # Rotation: a new key at once; the old one until the grace period ends, then never.
    old_record, old_key = store.create("auditor", expires_in_s=86400)
    new_record, new_key, retired = store.rotate(old_record.key_id, grace_s=600)
    assert new_record.key_id != old_record.key_id and new_record.role == "auditor"
    assert retired.replaced_by == new_record.key_id and new_record.replaces == old_record.key_id
    for k in (old_key, new_key):
        assert s.client.get("/v1/ledger", headers={"X-API-Key": k}).status_code == 200
    wall.t += 601
    r = s.client.get("/v1/ledger", headers={"X-API-Key": old_key})
    assert (r.status_code, error_of(r)) == (401, "key_expired")
    assert s.client.get("/v1/ledger", headers={"X-API-Key": new_key}).status_code == 200
    with pytest.raises(ValueError, match="already rotated"):
        store.rotate(old_record.key_id, grace_s=600)
    # A wrong secret for a known, expired key id learns nothing about the key.
    r = s.client.get(
        "/v1/ledger", headers={"X-API-Key": key[:-1] + ("A" if key[-1] != "A" else "B")}
    )
    assert error_of(r) == "unauthenticated"


def test_a_key_stored_before_keys_expired_expires_after_the_default_lifetime(project):
    s = Served(project)
    doc = json.loads(s.world.paths.api_keys.read_text())
    old = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 91 * 86400))
    for k in doc["keys"]:
        k.pop("expires")
        if k["role"] == "auditor":
            k["created"] = old
    s.world.paths.api_keys.write_text(json.dumps(doc))
    assert s.call("GET", "/v1/ledger", "auditor").status_code == 401
    assert s.call("GET", f"/v1/subjects/{s.pids[0]}", "dpo").status_code == 200


# -- bad inputs ----------------------------------------------------------------------------


def _png(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (0, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_inputs_get_4xx_with_a_machine_readable_error(project):
    s = Served(
        project,
        overrides={
            "serving.max_request_bytes": 60_000,
            "serving.max_image_pixels": 200_000,
            "serving.max_faces": 4,
        },
    )
    pid = s.pids[0]
    png = _png()
    cases = [
        ({"image": "not base64 !!"}, 422, "invalid_base64"),
        ({"image": base64.b64encode(b"hello, not an image").decode()}, 422, "invalid_image"),
        ({"image": base64.b64encode(png[: len(png) // 2]).decode()}, 422, "invalid_image"),
        ({"image": base64.b64encode(_png((500, 500))).decode()}, 413, "image_too_large"),
        ({"image": base64.b64encode(png).decode()}, 422, "no_face"),
        ({"image": png_b64(scene([s.world.photo(pid)[0]] * 5, cols=5))}, 422, "too_many_faces"),
        ({"image": "A" * 100_000}, 413, "request_too_large"),
        ({"image": base64.b64encode(png).decode(), "extra": 1}, 422, "invalid_request"),
        ({"picture": "x"}, 422, "invalid_request"),
    ]
    for body, status, code in cases:
        r = s.call("POST", "/v1/identify", "operator", json=body)
        assert (r.status_code, error_of(r)) == (status, code), body.keys()
    r = s.call(
        "POST",
        "/v1/identify",
        "operator",
        content=b'{"image": ',
        headers={"Content-Type": "application/json"},
    )
    assert (r.status_code, error_of(r)) == (400, "malformed_json")
    r = s.call("GET", "/v1/subjects/not-a-pid", "dpo")
    assert (r.status_code, error_of(r)) == (422, "invalid_request")
    r = s.call("GET", f"/v1/subjects/p{'f' * 16}", "dpo")
    assert (r.status_code, error_of(r)) == (404, "unknown_subject")
    r = s.call("GET", "/v1/nothing-here", "dpo")
    assert (r.status_code, error_of(r)) == (404, "not_found")
    r = s.call("POST", f"/v1/subjects/{pid}/object", "dpo", json={"purposes": ["x"]})
    assert r.status_code == 422
    # No error message echoes the request's content.
    for line in audit_lines(s):
        assert "hello" not in json.dumps(line)


def test_a_bad_image_in_an_enrolment_writes_nothing(served):
    s = served
    pid = s.pids[0]
    images = [*s.photo_b64(pid, 2), base64.b64encode(b"garbage").decode()]
    r = s.call("POST", "/v1/enroll", "operator", json={"pid": pid, "images": images})
    assert r.status_code == 422 and "images[2]" in r.json()["error"]["message"]
    gallery = s.client.app.state.visage.gallery
    assert gallery.status(pid)["enrolled"] is False
    assert not [e for e in s.world.core.ledger.entries() if e.type == "gallery.enrolled"]


class FlakyDetector(TileDetector):
    """The tile detector, failing with an unexpected error while ``broken`` is set."""

    broken: bool = False

    def detect(self, images):
        if self.broken:
            raise RuntimeError("detector exploded")
        return super().detect(images)


def test_an_unexpected_error_is_a_500_and_the_server_keeps_serving(project):
    detector = FlakyDetector()
    s = Served(project, engine=fake_engine(project, detector=detector))
    assert s.enroll(s.pids[0]).status_code == 200
    detector.broken = True
    r = s.identify(s.photo_b64(s.pids[0])[0])
    assert r.status_code == 500 and error_of(r) == "internal_error"
    assert "exploded" not in r.text
    detector.broken = False
    assert s.call("GET", "/healthz").status_code == 200
    assert s.top1(s.pids[0]) == s.pids[0]
    # (The keyless /healthz is counted in the metrics only.)
    assert [x["status"] for x in audit_lines(s)[-2:]] == [500, 200]


# -- analytics ------------------------------------------------------------------------------


def test_analytics_counts_a_frame_into_its_window_and_returns_no_identity(enrolled):
    s = enrolled
    now = [1_800_000_000.0]
    s.wall = lambda: now[0]
    s.client = s.build()
    people = [s.world.people[p] for p in s.pids[:12]]
    frame = png_b64(scene([s.world.photo(p.pid)[0] for p in people], cols=4))
    r = s.call("POST", "/v1/analytics", "operator", json={"image": frame})
    assert r.status_code == 200, r.text
    assert r.json()["counts"] is None  # a frame's answer releases nothing
    now[0] += s.params.serving.analytics.window_seconds
    w = s.call("GET", "/v1/analytics/windows", "auditor")
    assert w.status_code == 200, w.text
    counts = w.json()["windows"][-1]["counts"]
    k = s.params.serving.analytics.k_min
    assert counts["faces"] == 12
    women = sum(p.gender == "female" for p in people)
    assert counts["gender"] == {"female": women, "male": 12 - women}
    # 3 faces per group: under k_min = 5, so every group cell is suppressed.
    assert k > 3 and counts["group"] == dict.fromkeys(("g1", "g2", "g3", "g4"), "suppressed")
    assert not PID_RE.search(r.text)


def test_analytics_mode_never_loads_the_embedder_and_offers_no_identification(project):
    def no_embedder():
        raise AssertionError("analytics mode must not load the embedder")

    s = Served(
        project,
        engine=fake_engine(project, embedder=no_embedder),
        mode="analytics",
        overrides={"serving.openapi": True},
    )
    frame = png_b64(scene([s.world.photo(p)[0] for p in s.pids[:6]]))
    assert s.call("POST", "/v1/analytics", "operator", json={"image": frame}).status_code == 200
    r = s.identify(frame)
    assert r.status_code == 404 and error_of(r) == "not_found"
    assert "embedder" not in s.engine.loaded
    health = s.call("GET", "/healthz").json()
    assert health["mode"] == "analytics" and health["models"]["embedder"] is None
    assert "/v1/identify" not in s.call("GET", "/openapi.json", "auditor").json()["paths"]


# -- audit, metrics, ledger, certificates ----------------------------------------------------


def test_every_request_is_audited_without_images_or_templates(enrolled):
    s = enrolled
    pid = s.pids[0]
    s.top1(pid)
    s.call("GET", f"/v1/subjects/{pid}", "dpo")
    s.call("GET", "/v1/ledger")
    lines = audit_lines(s)
    assert len(lines) == 18 + 3
    enrol = lines[0]
    assert enrol["action"] == "enroll" and enrol["pid"] == s.pids[0]
    assert enrol["role"] == "operator" and enrol["status"] == 200
    assert enrol["key_id"] == s.keys["operator"].split("_")[1]
    assert lines[-3]["action"] == "identify" and lines[-3]["pids"] == [pid]
    assert lines[-2]["action"] == "subject_state" and lines[-2]["pid"] == pid
    assert lines[-1]["status"] == 401 and lines[-1]["error"] == "unauthenticated"
    assert all(line["latency_ms"] >= 0 for line in lines)
    text = (s.world.paths.privacy / "audit.jsonl").read_text()
    assert s.photo_b64(pid)[0][:40] not in text
    assert all(k not in text for k in s.keys.values())


def test_the_server_anchors_the_audit_log_in_the_ledger_every_n_lines_and_when_it_stops(project):
    # One ledger entry per serving.audit.anchor_every_lines lines, never one per request; the
    # rest when the server stops. A rewrite before the last anchor is then detected.
    s = Served(project, overrides={"serving.audit.anchor_every_lines": 2})
    with s.client:  # the lifespan: stopping the server anchors what follows the last anchor
        for pid in s.pids[:3]:
            assert s.enroll(pid).status_code == 200
        assert s.call("GET", f"/v1/subjects/{s.pids[0]}", "dpo").status_code == 200
        s.call("GET", "/v1/ledger")  # 401: audited too
    anchored = [e for e in s.world.core.ledger.entries() if e.type == "audit.anchored"]
    assert [(e.pid, e.payload["lines"]) for e in anchored] == [(None, 2), (None, 4), (None, 5)]
    path = s.world.paths.privacy / "audit.jsonl"
    report = auditlog.verify(path, anchors=auditlog.ledger_anchors(anchored))
    assert report.ok and report.lines == 5 and report.unanchored == 0, report.message()


def test_audit_log_stays_whole_under_concurrent_requests(enrolled):
    s = enrolled
    frame = s.photo_b64(s.pids[0])[0]
    errors = []

    def work():
        for _ in range(5):
            r = s.identify(frame)
            if r.status_code != 200:
                errors.append(r.status_code)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    lines = audit_lines(s)
    assert sum(line["action"] == "identify" for line in lines) == 30


def test_metrics_count_requests_per_endpoint_and_outcome_without_pids(enrolled):
    s = enrolled
    pid = s.pids[0]
    s.top1(pid)
    s.call("GET", f"/v1/subjects/{pid}", "dpo")
    s.call("GET", f"/v1/subjects/{pid}")
    r = s.call("GET", "/metrics", "metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(r.text)
        for sample in family.samples
    }

    def value(name, **labels):
        return samples.get((name, frozenset(labels.items())))

    requests = "visage_http_requests_total"
    assert value(requests, endpoint="/v1/enroll", method="POST", outcome="200") == 18
    assert value(requests, endpoint="/v1/subjects/{pid}", method="GET", outcome="401") == 1
    bucket = "visage_http_request_duration_seconds_bucket"
    assert value(bucket, endpoint="/v1/identify", outcome="200", le="+Inf") == 1
    assert value("visage_gallery_templates") == 18
    assert value("visage_gallery_available") == 1
    assert "_created" not in r.text  # only the series /metrics has always served
    assert not PID_RE.search(r.text)


def test_ledger_is_paged_for_auditors(enrolled):
    s = enrolled
    r = s.call("GET", "/v1/ledger", "auditor", params={"type": "gallery.enrolled", "limit": 10})
    page = r.json()
    assert [e["type"] for e in page["entries"]] == ["gallery.enrolled"] * 10
    assert page["next_after_seq"] == page["entries"][-1]["seq"]
    r = s.call(
        "GET",
        "/v1/ledger",
        "auditor",
        params={"type": "gallery.enrolled", "after_seq": page["next_after_seq"]},
    )
    rest = r.json()
    assert len(rest["entries"]) == 8 and rest["next_after_seq"] is None
    r = s.call("GET", "/v1/ledger", "auditor", params={"pid": s.pids[0]})
    assert {e["pid"] for e in r.json()["entries"]} == {s.pids[0]}


def test_certificates_are_listed_and_served_byte_for_byte(served):
    s = served
    folder = s.world.paths.certificates
    folder.mkdir(parents=True, exist_ok=True)
    cert = b'{"certificate": "erasure", "pid": "p0000000000000001"}\n'
    (folder / "erasure-0001.json").write_bytes(cert)
    r = s.call("GET", "/v1/certificates", "auditor")
    (item,) = r.json()["certificates"]
    assert item["name"] == "erasure-0001.json" and item["bytes"] == len(cert)
    r = s.call("GET", "/v1/certificates/erasure-0001.json", "auditor")
    assert r.content == cert
    for bad in ("missing.json", "..%2Fsecrets%2Fapi_keys.json", ".hidden.json"):
        r = s.call("GET", f"/v1/certificates/{bad}", "auditor")
        assert r.status_code == 404


def test_openapi_schema_documents_every_endpoint_response_and_error(project):
    served = Served(project, overrides={"serving.openapi": True})
    schema = served.call("GET", "/openapi.json", "operator").json()
    paths = schema["paths"]
    expected = {
        "/v1/identify",
        "/v1/verify",
        "/v1/enroll",
        "/v1/analytics",
        "/v1/analytics/windows",
        "/v1/subjects/{pid}",
        "/v1/subjects/{pid}/consent/withdraw",
        "/v1/subjects/{pid}/restrict",
        "/v1/subjects/{pid}/lift",
        "/v1/subjects/{pid}/object",
        "/v1/ledger",
        "/v1/certificates",
        "/v1/certificates/{name}",
        "/healthz",
        "/metrics",
    }
    assert expected <= set(paths)
    assert schema["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    for path, ops in paths.items():
        for op in ops.values():
            assert "200" in op["responses"], path
            if path.startswith("/v1/"):
                assert op["responses"]["401"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorResponse"
                }
                ref = op["responses"]["200"]["content"]["application/json"]["schema"]
                assert ref, path
    image = schema["components"]["schemas"]["IdentifyRequest"]["properties"]["image"]
    assert "base64" in image["description"]


def documented_codes(response: dict) -> list[str]:
    """The codes an operation's error response names (``... Codes: `a`, `b`.``)."""
    found = re.search(r"Codes: ((?:`[a-z0-9_]+`(?:, )?)+)\.$", response["description"])
    return re.findall(r"`([a-z0-9_]+)`", found.group(1)) if found else []


def test_each_route_documents_the_error_codes_it_can_answer_and_no_others(project):
    # Every route's description of a status named the codes of that status across the API:
    # /v1/identify's 503 explained an erasure's stopped content scan (scan_incomplete) and the
    # shared gallery's held table (gallery_table_held), neither of which identify can answer,
    # and a client author could not tell which codes to handle.
    served = Served(project, overrides={"serving.openapi": True})
    paths = served.call("GET", "/openapi.json", "dpo").json()["paths"]

    def said(path, method, status):
        response = paths[path][method]["responses"][str(status)]
        assert "across the API" not in response["description"], (path, status)
        return set(documented_codes(response)), " ".join(response["description"].split())

    codes, text = said("/v1/identify", "post", 503)
    assert {"busy", "gallery_unavailable", "gallery_version_mismatch", "model_error"} <= codes
    for code in ("scan_incomplete", "gallery_table_held", "audit_log_unverified", "not_witnessed"):
        assert code not in codes and code not in text, code

    erasure = paths["/v1/subjects/{pid}/erasure"]["post"]["responses"]["503"]
    assert erasure["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    codes, text = said("/v1/subjects/{pid}/erasure", "post", 503)
    assert {"busy", "scan_incomplete", "gallery_table_held", "not_witnessed"} <= codes
    # ... each with what to do: the erasure is sent again with its request_id.
    assert "`scan_incomplete`: an erasure's content scan stopped" in text, text
    assert "`gallery_table_held`: " in text and "request_id" in text, text
    assert "audit_log_unverified" not in text  # an erasure reads no audit log

    codes, text = said("/v1/subjects/{pid}/export", "get", 503)
    assert "audit_log_unverified" in codes and "privacy/audit.jsonl" in text, text
    assert not {"scan_incomplete", "gallery_table_held"} & codes and "scan" not in text

    # /healthz takes no slot among serving.max_concurrent, and checks a key for no role; with
    # a key it reads the gallery (the operating point), which may be out of reach.
    codes, _ = said("/healthz", "get", 503)
    assert "gallery_unavailable" in codes and "busy" not in codes
    assert "403" not in paths["/healthz"]["get"]["responses"]
    assert said("/v1/ledger", "get", 503)[0] == {"busy", "api_keys_unreadable"}
    assert said("/v1/verify", "post", 404)[0] == {"not_enrolled"}
    assert said("/v1/enroll", "post", 409)[0] == {"not_available", "processing_not_allowed"}
    assert said("/v1/subjects/{pid}/object", "post", 409)[0] == {
        "subject_erased",
        "already_objected",
    }
    # A GET has no body to refuse.
    assert not {"400", "408", "413"} & set(paths["/v1/subjects/{pid}/export"]["get"]["responses"])


def test_the_boundary_refusals_are_documented_on_every_route_they_reach(project):
    """What the boundary answers before a route runs, derived from its own tables: a key
    presented (every route), its role (every route but the public one), a slot among
    serving.max_concurrent (every route it bounds), a body read whole (every POST), JSON parsed
    (every route with a body model), and a query parameter the route does not define."""
    from visage_ml.app.http.boundary import BODY_METHODS, PUBLIC_ROUTES, UNBOUNDED_ROUTES

    paths = Served(project).client.app.openapi()["paths"]
    key = {(401, "unauthenticated"), (401, "key_expired"), (429, "too_many_failed_attempts")}
    body = {(400, "bad_request"), (408, "body_timeout"), (413, "request_too_large")}
    checked = 0
    for route in _routes():
        for method in route.methods:
            responses = paths[route.path][method.lower()]["responses"]
            documented = {
                (int(status), code)
                for status, response in responses.items()
                if status.isdigit() and int(status) >= 400
                for code in documented_codes(response)
            }
            where = (route.path, method)
            assert key | {(422, "invalid_request")} <= documented, where
            assert ((403, "forbidden") in documented) is (route.name not in PUBLIC_ROUTES), where
            assert ((503, "busy") in documented) is (route.name not in UNBOUNDED_ROUTES), where
            if method in BODY_METHODS:
                assert body <= documented, where
            else:
                assert not body & documented, where
            json_body = route.body_field is not None
            assert ((400, "malformed_json") in documented) is json_body, where
            checked += 1
    assert checked >= 20


# -- a real server ------------------------------------------------------------------------


def test_uvicorn_serves_on_loopback_and_stops(enrolled):
    import httpx

    s = enrolled
    with run_server(s.client.app, {"host": "127.0.0.1", "log_level": "warning"}) as port:
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/healthz", timeout=10).json()["status"] == "ok"
        pid = s.pids[1]
        r = httpx.post(
            f"{base}/v1/identify",
            json={"image": s.photo_b64(pid)[0]},
            headers={"X-API-Key": s.keys["operator"]},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["faces"][0]["matches"][0]["pid"] == pid
        assert r.headers["x-request-id"]


# -- CLI ------------------------------------------------------------------------------------


def test_apikey_create_prints_the_key_once_and_stores_only_its_hash(project):
    runner = CliRunner()
    r = runner.invoke(cli, ["apikey", "create", "--role", "dpo", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    key = out["key"]
    stored = (project / "secrets" / "api_keys.json").read_text()
    assert key not in stored and out["key_id"] in stored
    assert (project / "secrets" / "api_keys.json").stat().st_mode & 0o077 == 0
    listed = runner.invoke(cli, ["apikey", "list", "--json"])
    (item,) = json.loads(listed.output)
    assert item["role"] == "dpo" and "sha256" not in item
    assert KeyStore(project / "secrets" / "api_keys.json").authenticate(key).role == "dpo"
    bad = runner.invoke(cli, ["apikey", "create", "--role", "admin"])
    assert bad.exit_code == 2 and "operator, dpo, auditor" in bad.output
    assert runner.invoke(cli, ["apikey", "revoke", out["key_id"]]).exit_code == 0
    assert KeyStore(project / "secrets" / "api_keys.json").authenticate(key) is None


def test_apikey_expiry_rotation_and_listing_on_the_command_line(project):
    runner = CliRunner()
    store = KeyStore(project / "secrets" / "api_keys.json")
    r = runner.invoke(cli, ["apikey", "create", "--role", "auditor", "--json"])
    made = json.loads(r.output)
    ttl = load_params(project / "params.yaml").serving.auth.key_ttl_days
    lifetime = parse_time(made["expires"]) - time.time()
    assert abs(lifetime - ttl * 86400) < 120
    r = runner.invoke(
        cli, ["apikey", "create", "--role", "metrics", "--expires-in", "12h", "--json"]
    )
    assert abs(parse_time(json.loads(r.output)["expires"]) - time.time() - 12 * 3600) < 120
    for bad in ("0d", "forever", "-5d", "99999d"):
        r = runner.invoke(cli, ["apikey", "create", "--role", "dpo", "--expires-in", bad])
        assert r.exit_code == 2 and ("duration" in r.output or "expire" in r.output), bad
    assert len(store.list()) == 2  # nothing was created by the refused commands
    r = runner.invoke(cli, ["apikey", "rotate", made["key_id"], "--grace", "1h", "--json"])
    assert r.exit_code == 0, r.output
    rotated = json.loads(r.output)
    assert store.authenticate(rotated["key"]).role == "auditor"
    assert store.authenticate(made["key"]) is not None  # still, for the grace hour
    assert abs(parse_time(rotated["old"]["expires"]) - time.time() - 3600) < 120
    listed = {
        k["key_id"]: k for k in json.loads(runner.invoke(cli, ["apikey", "list", "--json"]).output)
    }
    assert listed[made["key_id"]]["state"].startswith("retiring")
    assert listed[rotated["key_id"]]["state"] == "active" and listed[rotated["key_id"]]["expires"]
    text = runner.invoke(cli, ["apikey", "list"]).output
    assert f"expires {listed[made['key_id']]['expires']}" in text
    r = runner.invoke(cli, ["apikey", "rotate", made["key_id"]])
    assert r.exit_code == 2 and rotated["key_id"] in r.output
    r = runner.invoke(cli, ["apikey", "rotate", "0" * 12])
    assert r.exit_code == 2 and "visage apikey list" in r.output


def test_serve_refuses_an_unknown_mode(project):
    r = CliRunner().invoke(cli, ["serve", "--mode", "turbo"])
    assert r.exit_code == 2 and "full" in r.output


def test_serve_names_records_that_do_not_validate_before_it_starts(project, monkeypatch):
    """Records of an earlier version that rest analytics on consent (refused now): the server
    started and answered every rights call and notice with a 500; it now stops at start,
    naming the key and what to use."""
    import uvicorn

    from visage_ml.privacy.records import default_records, records_path

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: started.append(True))
    doc = default_records(controller="C", contact="dpo@example.org")
    doc["purposes"]["analytics"]["subjects"]["enrolled"] = {
        "legal_bases": ["art6(1)(a)", "art9(2)(a)"]
    }
    path = records_path(ProjectPaths(project))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    r = CliRunner().invoke(cli, ["serve"])
    assert r.exit_code == 2, r.output
    assert "purposes.analytics.subjects.enrolled" in r.output and "records.yaml" in r.output
    assert started == []


def test_gallery_cli_lists_and_counts(enrolled):
    s = enrolled
    s.world.core.restrict(s.pids[0])
    runner = CliRunner()
    r = runner.invoke(cli, ["gallery", "stats", "--json"])
    assert r.exit_code == 0, r.output
    stats = json.loads(r.output)
    assert (stats["stored"], stats["searchable"], stats["model_version"]) == (18, 17, VERSION)
    r = runner.invoke(cli, ["gallery", "list", "--json"])
    rows = {row["pid"]: row for row in json.loads(r.output)}
    assert set(rows) == set(s.pids[:18]) and rows[s.pids[0]]["searchable"] is False


# -- with the real trained pipeline -----------------------------------------------------------


@pytest.fixture
def pipeline_paths(tiny_pipeline):
    """The trained tiny SynthFaces project (``tiny_pipeline`` in tests/conftest.py)."""
    return tiny_pipeline


@pytest.mark.pipeline
def test_trained_embedder_identifies_held_out_synthfaces_images(pipeline_paths, tmp_path):
    """Enrol 20 subjects through the API from raw photos, identify other photos of theirs.

    With the evaluation threshold a wrong top-1 must be about as rare as the target FMR
    implies. The tiny pipeline's
    embedder is weak, so accuracy is checked on a gallery without a threshold (every probe gets
    its best match): top-1 must beat chance three times over. Restricted and erased subjects
    are then never returned, even though every probe returns its best candidates.
    """
    import shutil

    import pandas as pd

    from visage_ml.config import ProjectPaths

    root = tmp_path / "copy"
    shutil.copytree(pipeline_paths.root, root, symlinks=True)
    paths = ProjectPaths(root)
    params = load_params(paths.params)
    shutil.rmtree(paths.gallery, ignore_errors=True)
    core = PrivacyCore(paths)
    raw = pd.read_parquet(paths.raw / "images.parquet")
    raw = raw[raw["pid"].isin(core.registry.allowed("identification"))]
    counts = raw.groupby("pid").size()
    pids = sorted(counts[counts >= 4].index)[:20]
    assert len(pids) >= 10, "the tiny project needs subjects allowed for identification"
    keys = {r: KeyStore(paths.api_keys).create(r)[1] for r in ROLES}
    op, dpo = {"X-API-Key": keys["operator"]}, {"X-API-Key": keys["dpo"]}
    engine = Engine.from_project(paths, params, mode="full")
    client = TestClient(create_app(paths, params=params, engine=engine, core=core))

    store = RawStore(paths, core=core, track=False)

    def b64(pid, image_id):
        return base64.b64encode(store.read_image(pid, image_id)).decode()  # decrypted in memory

    held_out = {}
    # The ledger records the gallery stage's templates, whose files are gone with the gallery:
    # re-enrolling those subjects is a dpo's (an operator's needs a template to match).
    for pid in pids:
        ids = sorted(raw.loc[raw["pid"] == pid, "image_id"])
        r = client.post(
            "/v1/enroll", headers=dpo, json={"pid": pid, "images": [b64(pid, i) for i in ids[:3]]}
        )
        if r.status_code == 200:
            held_out[pid] = ids[3:]
    assert len(held_out) >= 0.8 * len(pids)

    def top1s(app_client):
        out = []
        for pid, ids in held_out.items():
            for image_id in ids[:2]:
                r = app_client.post("/v1/identify", headers=op, json={"image": b64(pid, image_id)})
                if r.status_code == 200:
                    matches = r.json()["faces"][0]["matches"]
                    out.append((pid, matches[0]["pid"] if matches else None))
        return out

    calibrated = top1s(client)
    assert calibrated
    # A probe meets len(held_out) templates, each a false match with probability target_fmr
    # (FPIR ~ N * FMR); 10x slack for the tiny evaluation's unstable threshold estimate.
    fpir = 10 * len(held_out) * params.evaluate.target_fmr
    assert sum(got not in (None, pid) for pid, got in calibrated) <= fpir * len(calibrated)

    def open_ranking_app():
        # The same stored templates, searched without a threshold.
        gallery = Gallery.open(
            paths,
            model_version=engine.embedder.model_version,
            embedding_dim=int(engine.embedder.embedding_dim),
            threshold=-1.0,
            core=PrivacyCore(paths),
            embed=engine.embed,
        )
        return TestClient(create_app(paths, params=params, engine=engine, gallery=gallery))

    ranking = open_ranking_app()
    ranked = top1s(ranking)
    accuracy = sum(pid == got for pid, got in ranked) / len(ranked)
    assert accuracy >= 3.0 / len(held_out)
    a, b = list(held_out)[:2]
    assert ranking.post(f"/v1/subjects/{a}/restrict", headers=dpo).status_code == 200
    ranking.app.state.visage.gallery.erase(b)
    assert not ranking.app.state.visage.gallery.keys.exists(b)
    for app_client in (ranking, open_ranking_app()):  # and after a restart
        assert {got for _, got in top1s(app_client)}.isdisjoint({a, b})


def test_a_dpo_key_is_told_when_the_subject_has_no_address(enrolled):
    # The CLI warns when a request's message to the subject has no address; the API said
    # nothing, so a DPO working through it never learnt that the subject was not told.
    s = enrolled
    pid = s.pids[2]  # SynthFaces people have no contact in the vault
    r = s.call("POST", f"/v1/subjects/{pid}/restrict", "dpo")
    assert r.status_code == 200 and r.json()["subject_message"] == "no_address", r.text
    r = s.call("POST", f"/v1/subjects/{pid}/requests", "dpo", json={"right": "access"})
    assert r.status_code == 200 and r.json()["subject_message"] == "no_address", r.text
    r = s.call("POST", f"/v1/subjects/{pid}/erasure", "dpo")
    assert r.status_code == 200 and r.json()["subject_message"] == "no_address", r.text
    r = s.call("POST", f"/v1/subjects/{s.pids[3]}/consent/withdraw", "dpo")
    assert r.status_code == 200 and r.json()["subject_message"] is None, r.text  # no request


def test_a_request_says_where_its_message_to_the_subject_stands(project):
    # `subject_told` read true as soon as a message with an address was queued, though nothing
    # is sent before a delivery pass, and stayed true when that delivery failed for good.
    # `subject_message` is the message's state, and a GET of the request follows it.
    with SmtpServer() as smtp:
        s = Served(
            project,
            overrides={
                "privacy.retention.serve_interval_seconds": 0.2,
                "privacy.notify.smtp_port": smtp.port,
            },
        )
        core = PrivacyCore(s.world.paths)
        zelda = core.add_subject(source="test", contact="zelda@example.invalid")
        r = s.call("POST", f"/v1/subjects/{zelda}/requests", "dpo", json={"right": "access"})
        assert r.status_code == 200 and r.json()["subject_message"] == "queued", r.text
        rid = r.json()["request_id"]
        queued = len([e for e in core.ledger.entries() if e.type == "notification.queued"])
        # Verifying tells the subject nothing: no message, the receipt's state as it was.
        r = s.call("POST", f"/v1/requests/{rid}/verify", "dpo")
        assert r.status_code == 200 and r.json()["subject_message"] == "queued", r.text
        assert queued == len([e for e in core.ledger.entries() if e.type == "notification.queued"])
        r = s.call("GET", f"/v1/requests/{rid}", "dpo")
        assert r.status_code == 200 and r.json()["subject_message"] == "queued", r.text
        assert not smtp.mails
        with s.client:  # the server's own pass delivers it
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                r = s.call("GET", f"/v1/requests/{rid}", "dpo")
                if r.json()["subject_message"] != "queued":
                    break
                time.sleep(0.1)
        assert r.status_code == 200 and r.json()["subject_message"] == "delivered", r.text
        assert [m.to for m in smtp.mails if rid in m.subject] == [["zelda@example.invalid"]]
        (listed,) = [
            x
            for x in s.call("GET", "/v1/requests", "dpo").json()["requests"]
            if x["request_id"] == rid
        ]
        assert listed["subject_message"] == "delivered"
    # A message that cannot be delivered reads so: retried, then given up.
    yann = core.add_subject(source="test", contact="yann@example.invalid")
    r = s.call("POST", f"/v1/subjects/{yann}/requests", "dpo", json={"right": "erasure"})
    rid = r.json()["request_id"]
    nowhere = NotifyParams(smtp_port=free_port(), max_attempts=2, backoff_seconds=0.0)
    for state in ("retrying", "failed"):
        Notifier(s.world.paths, core=core, params=nowhere).deliver()
        r = s.call("GET", f"/v1/requests/{rid}", "dpo")
        assert r.status_code == 200 and r.json()["subject_message"] == state, r.text
    # `visage privacy notify --retry-dead` gives it another round: queued again.
    Outbox(core).revive()
    assert s.call("GET", f"/v1/requests/{rid}", "dpo").json()["subject_message"] == "queued"
    r = s.call("GET", "/v1/requests/r20260101-00000000", "dpo")
    assert r.status_code == 404 and error_of(r) == "unknown_request"
    assert s.call("GET", f"/v1/requests/{rid}", "operator").status_code == 403
    assert get_args(SubjectMessage) == SUBJECT_MESSAGE_STATES  # the schema names every state


def test_the_ledger_pages_hold_every_entry_once_and_the_filters_miss_none(enrolled, monkeypatch):
    # The route starts near after_seq and parses only lines holding the pid or type asked for.
    import visage_ml.privacy.ledger as ledger_mod

    s = enrolled
    monkeypatch.setattr(ledger_mod, "LINE_STRIDE", 7)  # many strides in a small ledger
    ledger_mod._LINE_STARTS.forget()
    full = [json.loads(line) for _, line in PrivacyCore(s.world.paths).ledger.iter_lines()]
    assert len(full) > 40

    def pages(**query) -> list[dict]:
        out, after = [], -1
        while after is not None:
            r = s.call("GET", "/v1/ledger", "auditor", params={**query, "after_seq": after})
            assert r.status_code == 200, r.text
            out += r.json()["entries"]
            after = r.json()["next_after_seq"]
        return out

    def seqs(entries) -> list[int]:
        return [e["seq"] for e in entries]

    assert seqs(pages(limit=5)) == seqs(full)
    pid = s.pids[3]
    assert seqs(pages(limit=3, pid=pid)) == seqs(e for e in full if e.get("pid") == pid)
    enrolled_seqs = seqs(e for e in full if e["type"] == "gallery.enrolled")
    assert enrolled_seqs and seqs(pages(type="gallery.enrolled", limit=4)) == enrolled_seqs
    both = seqs(pages(pid=pid, type="gallery.enrolled"))
    assert both and both == seqs(
        e for e in full if e.get("pid") == pid and e["type"] == ("gallery.enrolled")
    )
    ledger_mod._LINE_STARTS.forget()  # kept at stride 7 otherwise


def test_the_server_reads_the_ledger_folds_as_it_starts_not_on_the_first_requests(served):
    import visage_ml.privacy.ledger as ledger_module

    path = served.world.paths.ledger
    for fold in ledger_module._FOLDS:
        fold.forget()
    with served.build() as client:
        size = path.stat().st_size
        key = str(path.resolve())
        # every fold (requests, notices, the clock, the ledger's pages...) is at the ledger's end
        assert len(ledger_module._FOLDS) >= 5
        assert all(fold._memo[key][1] == size for fold in ledger_module._FOLDS)
        r = client.get("/v1/requests", headers={"X-API-Key": served.keys["dpo"]})
        assert r.status_code == 200


def _answered_codes() -> set[tuple[int | None, str]]:
    """Every ``(status, code)`` the HTTP package writes out as such: a call's first two
    arguments (``ApiError(409, "...")``, ``error_json``, the boundary's ``answer``), a table's
    row (``(Exception, 503, "...")``, ``(413, "...", message)``), a status-to-code map, a
    ``{"code": "..."}`` written by hand (its status None); and the codes of the core's refusals
    of an event that changes nothing (answered 409)."""
    import ast
    import itertools

    from visage_ml.app import http

    def const(node, kind):
        if not (isinstance(node, ast.Constant) and type(node.value) is kind):
            return False
        return kind is not str or re.fullmatch("[a-z][a-z_]+", node.value) is not None

    found: set[tuple[int | None, str]] = set()
    for path in Path(http.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            items = node.args if isinstance(node, ast.Call) else getattr(node, "elts", [])
            for a, b in itertools.pairwise(items):
                if const(a, int) and const(b, str) and 400 <= a.value < 600:
                    found.add((a.value, b.value))
            if isinstance(node, ast.Dict):
                for k, v in zip(node.keys, node.values, strict=True):
                    if const(k, int) and const(v, str):
                        found.add((k.value, v.value))
                    if const(k, str) and k.value == "code" and const(v, str):
                        found.add((None, v.value))
    core = (Path(http.__file__).parents[2] / "privacy" / "core.py").read_text(encoding="utf-8")
    found |= {(409, code) for code in re.findall(r'_unchanged\(\s*"([a-z_]+)"', core)}
    return found


def test_openapi_names_every_error_code_the_api_answers_under_its_status(project):
    """A client switches on ``error.code``: every code the package answers is listed under its
    status (``ERROR_CODES``); each route's description of a status names the codes it answers
    with it, all listed there, and every listed code is documented somewhere."""
    from visage_ml.app.http.errors import ERROR_CODES

    answered = _answered_codes()
    assert len(answered) > 30 and (503, "gallery_table_held") in answered
    listed = {(status, code) for status, codes in ERROR_CODES.items() for code in codes}
    any_status = {code for _, code in listed}  # for a code written by hand, its status unread
    missing = {
        (status, code)
        for status, code in answered
        if (status, code) not in listed and not (status is None and code in any_status)
    }
    assert missing == set(), "codes the API answers that ERROR_CODES does not list"

    served = Served(project, overrides={"serving.openapi": True})
    schema = served.call("GET", "/openapi.json", "dpo").json()
    declared = set()
    for path, ops in schema["paths"].items():
        for op in ops.values():
            for status, documented in op["responses"].items():
                if not status.isdigit() or int(status) < 400:
                    continue
                codes = documented_codes(documented)
                assert codes, (path, status)
                for code in codes:
                    assert code in ERROR_CODES[int(status)], (path, status, code)
                    declared.add((int(status), code))
    # Nothing is dropped from the docs: each code is documented by a route that answers it, or,
    # answered outside any route (an unknown path or method, an unexpected error), by the API's
    # description.
    described = schema["info"]["description"]
    undocumented = {
        (status, code)
        for status, codes in ERROR_CODES.items()
        for code in codes
        if (status, code) not in declared and f"`{code}`" not in described
    }
    # Answered by no route of the app as built: the 404 of a server without a gallery or a
    # model (analytics mode, which does not mount the routes that need them) and the core's
    # refusal of an objection's withdrawal (no route withdraws one).
    assert undocumented == {(404, "not_available"), (409, "not_objected")}
