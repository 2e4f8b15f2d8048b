"""Per-call cost of every rights and serving HTTP route on a long ledger; prints one JSON object.

A temporary project (or ``--keep DIR``) is built from the test suite's fakes
(``tests/unit/serving_fakes.py``: tile "faces", the tile detector, the tiny ONNX models of
``evaluate_fakes``; the released score model of ``tests/unit/test_operating_point.py``):
``--subjects`` subjects registered with consent (1 in 10 with a contact in the vault, 1 in 50
without identification consent), every allowed subject but the last 20 enrolled in bulk (their
templates written without per-file fsync, one sync at the end, as ``bench_gallery`` does), then
the ledger activity of that population: 1 in 100 subjects with an access request received and
verified, 1 in 200 with one denied, 1 in 200 restricted, 1 in 100 withdrawing identification
consent and 1 in 500 fully erased (with certificate). The ledger is then lengthened as years of
operation would: ``--renewals`` rounds of consent renewals (a fresh ``consent.given`` receipt
for every subject still registered), about 150k entries at the defaults.

A fresh privacy core, gallery and app (``visage_ml.app.http.app.create_app``) are opened on the
project as a server opens them, and each route is called twice in-process through FastAPI's
``TestClient`` (the two passes go through the whole list in turn, each mutating call on a
subject untouched so far): healthz (without and with a key), identify, verify, enrol (a new
subject and one already enrolled), subject state, the request listing (open and all), a request
received, verified, extended, denied, export (with a request, and plaintext without one),
restrict, lift, object, consent withdrawal, erasure, the ledger's first page, its entries for a
pid, the page after the last 50 entries, the certificate list and one certificate. Reported per
route: the first and second time in seconds and both status codes (a non-2xx is reported with
the start of its body, never hidden); the ledger's entries and bytes; build, renewal, app
creation and start-up seconds (the start-up reads the ledger's folds, ``warm_folds``, which the
first calls did before); the host.

Goal (the long-ledger work on the rights routes): at the defaults every route's second call is
under 1.0 s (``meets_goal``; a route that answers non-2xx does not meet it). Measured on 2
cores at 151k entries: the slowest, erasure and export, about 0.5 s (export took 2.2 s before
the ledger's lines were found by searching).

    python benchmarks/bench_rights_scale.py [--subjects 10000] [--renewals 12] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "unit"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VERSION = "emb-test-1"
GOAL_SECOND_CALL_S = 1.0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(root: Path, n: int) -> dict[str, Any]:
    """The project: subjects, consents, enrolment, requests, restrictions, withdrawals,
    erasures. Returns the people (for their photos), the pids left for the routes and the
    seconds of each step."""
    from bench_gallery import unsynced_writes
    from evaluate_fakes import write_models
    from project_helpers import copy_repo_params
    from serving_fakes import (
        DIM,
        GENDERS,
        GROUPS,
        MODEL_SIZE,
        face_tile,
        fake_engine,
        make_person,
        open_gallery,
        receipt,
    )
    from test_operating_point import model_doc

    from visage_ml.config import ProjectPaths, load_params
    from visage_ml.privacy.core import NewSubject, PrivacyCore
    from visage_ml.privacy.requests import RequestBook
    from visage_ml.rights.erasure import Erasure
    from visage_ml.rights.runner import restrict as restrict_request
    from visage_ml.serving.release import SCORE_MODEL_JSON, record_release

    steps: dict[str, float] = {}
    t = time.perf_counter()
    root.mkdir(parents=True)
    copy_repo_params(root / "params.yaml")
    write_models(root, size=MODEL_SIZE, dim=DIM)
    paths = ProjectPaths(root)
    core = PrivacyCore(paths)
    rng = np.random.default_rng(0)
    pids = [f"p{rng.integers(0, 2**63):016x}" for _ in range(n)]
    without = max(2, n // 50)
    subjects = [
        NewSubject(pid=p, contact=f"s{i}@example.org" if i % 10 == 0 else None)
        for i, p in enumerate(pids)
    ]
    for s in range(0, n, 5000):
        core.add_subjects(subjects[s : s + 5000], source="bench", snapshot=False)
    events, people = [], {}
    for i, pid in enumerate(pids):
        purposes: tuple[str, ...] = ("training", "evaluation")
        if i < n - without:
            purposes = (*purposes, "identification")
        r = receipt(purposes)
        events.append(("consent.given", pid, {"receipt": r.to_dict(), "receipt_hash": r.digest()}))
        people[pid] = make_person(pid, rng, GROUPS[i % len(GROUPS)], GENDERS[i % 2])
    core.ledger.append_many(events)
    core.snapshot()

    # The released score model, as evaluate releases it.
    paths.reports.mkdir(exist_ok=True)
    (paths.reports / "score_model.json").write_text(json.dumps(model_doc()))
    record_release(core.ledger, paths.root, [SCORE_MODEL_JSON], stage="evaluate")
    steps["register_s"] = round(time.perf_counter() - t, 1)

    # Every allowed subject enrolled but the last 20 (kept for the enrol calls).
    params = load_params(paths.params)
    engine = fake_engine(root, max_faces=params.serving.max_faces)
    gallery = open_gallery(paths, core, engine, version=VERSION)
    allowed = pids[: n - without]
    t = time.perf_counter()
    prng = np.random.default_rng(1)
    to_enrol = allowed[:-20]
    with unsynced_writes():  # bulk construction: one sync at the end, not one per template
        for s in range(0, len(to_enrol), 2000):
            chunk = to_enrol[s : s + 2000]
            crops = np.stack([face_tile(people[p], prng) for p in chunk for _ in range(2)])
            emb = np.asarray(engine.embed(crops), dtype=np.float32).reshape(len(chunk), 2, -1)
            gallery.enroll_many({p: emb[k] for k, p in enumerate(chunk)}, model_version=VERSION)
    steps["enrol_s"] = round(time.perf_counter() - t, 1)

    # The population's ledger activity.
    t = time.perf_counter()
    book = RequestBook(core, params=params.privacy)
    act = to_enrol
    k = 0

    def take(m: int) -> list[str]:
        nonlocal k
        out = act[k : k + m]
        k += m
        return out

    for pid in take(n // 100):
        st = book.receive(pid, "access", channel="email")
        book.verify(st.request_id)
    for pid in take(n // 200):
        st = book.receive(pid, "access", channel="email")
        book.deny(st.request_id, reason_code="manifestly_unfounded")
    for pid in take(n // 200):
        restrict_request(paths, pid, core=core, reason_code="subject_request")
    for pid in take(n // 100):
        core.withdraw_consent(pid, ["identification"])
    steps["requests_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    erasure = Erasure(paths, core=core, gallery=gallery, params=params)
    for pid in take(max(2, n // 500)):
        erasure.erase(pid, channel="api")
    core.snapshot()
    steps["erasures_s"] = round(time.perf_counter() - t, 1)
    return {
        "steps": steps,
        "pids": pids,
        "people": people,
        "free": act[k:],  # enrolled, untouched
        "unenrolled": allowed[-20:],
    }


def grow(root: Path, pids: list[str], rounds: int) -> None:
    """``rounds`` consent renewals for every subject still registered, in batches."""
    from serving_fakes import receipt

    from visage_ml.config import ProjectPaths
    from visage_ml.privacy.core import PrivacyCore

    core = PrivacyCore(ProjectPaths(root))
    r = receipt(("training", "evaluation", "identification"))
    ev = {"receipt": r.to_dict(), "receipt_hash": r.digest()}
    for _ in range(rounds):
        reg = core.registry.refresh()
        live = [p for p in pids if (s := reg.peek(p)) is not None and not s.erased]
        for s in range(0, len(live), 5000):
            core.ledger.append_many([("consent.given", p, ev) for p in live[s : s + 5000]])
    core.snapshot()


def time_routes(root: Path, built: dict[str, Any], out: dict[str, Any]) -> dict[str, Any]:
    """Each route twice through a fresh app; per route the times and status codes."""
    from fastapi.testclient import TestClient
    from serving_fakes import face_tile, fake_engine, open_gallery, png_b64, scene

    from visage_ml.app.http.app import create_app
    from visage_ml.app.http.auth import ROLES, KeyStore
    from visage_ml.config import ProjectPaths, load_params
    from visage_ml.privacy.core import PrivacyCore
    from visage_ml.serving.operating_point import load_score_model

    paths = ProjectPaths(root)
    params = load_params(paths.params)
    t = time.perf_counter()
    core = PrivacyCore(paths)
    engine = fake_engine(root, max_faces=params.serving.max_faces)
    gallery = open_gallery(paths, core, engine, version=VERSION)
    model, _ = load_score_model(paths, model_version=VERSION, confidence=0.8)
    app = create_app(
        paths, params=params, engine=engine, gallery=gallery, core=core, score_model=model
    )
    out["app_startup_s"] = round(time.perf_counter() - t, 3)
    out["ledger_entries"] = len(core.ledger)
    out["ledger_bytes"] = paths.ledger.stat().st_size
    keys = {role: KeyStore(paths.api_keys).create(role)[1] for role in ROLES}
    client = TestClient(app, raise_server_exceptions=False)
    t = time.perf_counter()
    client.__enter__()  # the app's start-up (lifespan), as `visage serve` runs it
    out["serve_startup_s"] = round(time.perf_counter() - t, 3)
    people = built["people"]
    free = list(built["free"])
    unenrolled = list(built["unenrolled"])
    prng = np.random.default_rng(99)
    routes: dict[str, dict[str, Any]] = {}

    def photo(pid: str) -> str:
        return png_b64(face_tile(people[pid], prng))

    def call(name: str, method: str, path: str, role: str | None, **kw: Any) -> dict:
        headers = {"X-API-Key": keys[role]} if role else {}
        t = time.perf_counter()
        r = client.request(method, path, headers=headers, **kw)
        dt = time.perf_counter() - t
        rec = routes.setdefault(name, {"s": [], "status": []})
        rec["s"].append(round(dt, 4))
        rec["status"].append(r.status_code)
        if not 200 <= r.status_code < 300:
            rec.setdefault("error", r.text[:300])
        is_json = r.headers.get("content-type", "").startswith("application/json")
        return r.json() if is_json else {}

    certs: list[str] = []
    for _ in range(2):
        p = free.pop()  # a fresh, enrolled subject per pass
        call("healthz_nokey", "GET", "/healthz", None)
        call("healthz_key", "GET", "/healthz", "operator")
        probe = png_b64(scene([face_tile(people[p], prng)]))
        call("identify", "POST", "/v1/identify", "operator", json={"image": probe, "top_k": 3})
        call("verify", "POST", "/v1/verify", "operator", json={"pid": p, "image": photo(p)})
        u = unenrolled.pop()
        body = {"pid": u, "images": [photo(u) for _ in range(2)]}
        call("enroll_new", "POST", "/v1/enroll", "operator", json=body)
        body = {"pid": p, "images": [photo(p) for _ in range(2)]}
        call("enroll_again", "POST", "/v1/enroll", "operator", json=body)
        call("subject_state", "GET", f"/v1/subjects/{p}", "dpo")
        call("requests_open", "GET", "/v1/requests", "dpo")
        call("requests_all", "GET", "/v1/requests?all=true", "dpo")
        q = free.pop()
        right = {"right": "access"}
        st = call("request_new", "POST", f"/v1/subjects/{q}/requests", "dpo", json=right)
        rid = st.get("request_id", "x")
        call("request_verify", "POST", f"/v1/requests/{rid}/verify", "dpo")
        ext = {"months": 1, "reason_code": "complexity"}
        call("request_extend", "POST", f"/v1/requests/{rid}/extend", "dpo", json=ext)
        query = f"plaintext=true&request_id={rid}"
        call("export_with_request", "GET", f"/v1/subjects/{q}/export?{query}", "dpo")
        q2 = free.pop()
        st = call("request_new_2", "POST", f"/v1/subjects/{q2}/requests", "dpo", json=right)
        deny = {"reason_code": "manifestly_unfounded"}
        rid2 = st.get("request_id", "x")
        call("request_deny", "POST", f"/v1/requests/{rid2}/deny", "dpo", json=deny)
        call("export_plain", "GET", f"/v1/subjects/{free.pop()}/export?plaintext=true", "dpo")
        r = free.pop()
        call("restrict", "POST", f"/v1/subjects/{r}/restrict", "dpo", json={})
        call("lift", "POST", f"/v1/subjects/{r}/lift", "dpo")
        training = {"purposes": ["training"]}
        call("object", "POST", f"/v1/subjects/{free.pop()}/object", "dpo", json=training)
        path = f"/v1/subjects/{free.pop()}/consent/withdraw"
        call("consent_withdraw", "POST", path, "dpo", json=training)
        er = call("erasure", "POST", f"/v1/subjects/{free.pop()}/erasure", "dpo")
        if er.get("certificate"):
            certs.append(er["certificate"])
        call("ledger_first_page", "GET", "/v1/ledger?limit=100", "auditor")
        call("ledger_by_pid", "GET", f"/v1/ledger?pid={p}&limit=100", "auditor")
        after = len(core.ledger) - 50
        call("ledger_tail_page", "GET", f"/v1/ledger?after_seq={after}&limit=100", "auditor")
        call("certificates", "GET", "/v1/certificates", "auditor")
        call("certificate_one", "GET", f"/v1/certificates/{certs[-1] if certs else 'x'}", "auditor")
    out["ledger_entries_after_routes"] = len(core.ledger)
    client.__exit__(None, None, None)  # the server stops (it anchors the audit log's rest)
    return {
        name: {
            "first_s": rec["s"][0],
            "second_s": rec["s"][1],
            "status": rec["status"],
            **({"error": rec["error"]} if "error" in rec else {}),
        }
        for name, rec in routes.items()
    }


def run(base: Path, args: argparse.Namespace) -> dict[str, Any]:
    root = base / "project"
    os.environ["VISAGE_PROJECT"] = str(root)
    os.environ["VISAGE_WITNESS_DIR"] = str(base / "witness")  # "another volume"
    os.environ.pop("VISAGE_MASTER_KEY", None)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    os.environ["DVC_NO_ANALYTICS"] = "1"
    out: dict[str, Any] = {
        "machine": platform.machine(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "subjects": args.subjects,
        "renewals": args.renewals,
    }
    t = time.perf_counter()
    built = build(root, args.subjects)
    out["build_s"] = round(time.perf_counter() - t, 1)
    out["build_steps_s"] = built["steps"]
    _log(f"built {args.subjects} subjects in {out['build_s']} s")
    t = time.perf_counter()
    grow(root, built["pids"], args.renewals)
    out["grow_s"] = round(time.perf_counter() - t, 1)
    _log(f"{args.renewals} rounds of renewals in {out['grow_s']} s")
    routes = time_routes(root, built, out)
    slow = sorted(n for n, r in routes.items() if r["second_s"] >= GOAL_SECOND_CALL_S)
    failed = sorted(n for n, r in routes.items() if any(not 200 <= s < 300 for s in r["status"]))
    out["routes"] = routes
    out["slowest_second_call"] = max(routes, key=lambda n: routes[n]["second_s"])
    out["non_2xx"] = failed
    out["over_goal"] = slow
    out["goal"] = {
        "second_call_max_s": GOAL_SECOND_CALL_S,
        "at": {"subjects": 10_000, "renewals": 12},
    }
    out["meets_goal"] = not slow and not failed
    out["note"] = "in-process TestClient; tile detector + tiny ONNX models; fake engine world"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--renewals", type=int, default=12, help="rounds of consent renewals")
    ap.add_argument("--keep", default=None, metavar="DIR", help="build in DIR and keep it")
    args = ap.parse_args()
    if args.subjects < 100:
        ap.error("--subjects must be at least 100")
    # Whatever the library prints goes to stderr: stdout holds the one JSON object.
    with contextlib.redirect_stdout(sys.stderr):
        if args.keep:
            base = Path(args.keep).resolve()
            base.mkdir(parents=True, exist_ok=True)
            out = run(base, args)
            out["kept"] = str(base)
        else:
            with tempfile.TemporaryDirectory(prefix="bench-rights-scale-") as tmp:
                out = run(Path(tmp), args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
