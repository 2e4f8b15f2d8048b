"""Retention that enforces itself: a month of simulated time, then what the DPO would check.

A small project (raw images, processed crops, gallery templates, identity vault with contacts)
lives through a month of simulated time: consents expire, one subject withdraws consent to
identification, one objects to everything, one is restricted, two renew their consent, an
access bundle is exported. `enforce` runs after each event (dry run first, then --apply as the
scheduler). At the end: every notification reached the real SMTP server or the webhook
receiver on loopback, the ledger verifies and names who did what, and a forensic scan of the
whole project agrees with what the ledger says was purged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import types
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from notify_fakes import SimClock, SmtpServer, WebhookServer
from project_helpers import write_overrides
from rights_fakes import make_project, scan
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.config import load_params
from visage_ml.privacy import checkpoint as checkpoint_mod
from visage_ml.privacy.checkpoint import Signature, Signer
from visage_ml.privacy.consent import ConsentReceipt
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.outbox import Recipients
from visage_ml.privacy.requests import RequestBook, add_months
from visage_ml.privacy.witness import Witness, make_server
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.enforce import Enforcer
from visage_ml.rights.erasure import Erasure
from visage_ml.rights.export import Delivery, export_subject
from visage_ml.rights.runner import object_to


def _params(root, smtp_port: int):
    """Consents last one month; notifications go to the SMTP server on loopback."""
    overrides = {
        "privacy.retention.consent_months": 1,
        "privacy.notify.smtp_port": smtp_port,
        "privacy.notify.backoff_seconds": 60.0,
        "privacy.notify.max_attempts": 5,
    }
    write_overrides(root / "params.yaml", overrides)
    return load_params(root / "params.yaml")


def _receipt(clock: SimClock, purposes) -> ConsentReceipt:
    return ConsentReceipt(
        controller="Example Controller Ltd",
        controller_contact="dpo@example.org",
        purposes=tuple(purposes),
        notice_version="v2",
        notice_hash="ab" * 32,
        collection_method="kiosk",
        given_at=clock.iso(),
    )


def ledger_lines(core: PrivacyCore) -> list[dict]:
    return [orjson.loads(line) for _, line in core.ledger.iter_lines()]


@pytest.fixture
def month(project, monkeypatch):
    clock = SimClock()
    proj = make_project(project, n_subjects=6, n_images=2)
    core = proj.core
    core.ledger.clock = clock.iso
    # The witness's clock moves with the simulated month, as every clock of a deployment does:
    # its cosignatures date the erasures' completions (the certificate's date check).
    monkeypatch.setattr(
        checkpoint_mod, "time", types.SimpleNamespace(time=lambda: clock.t.timestamp())
    )
    return proj, core, clock


def test_a_month_of_retention_is_enforced_notified_and_provable(month, tmp_path):
    proj, core, clock = month
    paths = proj.paths
    a, b, c, d, e, f = proj.pids
    contacts = {pid: f"subject-{i}@example.invalid" for i, pid in enumerate(proj.pids) if pid != a}
    with SmtpServer() as smtp, WebhookServer(fail_first=1) as hook:
        # Subject a asked to be told through their own webhook.
        contacts[a] = hook.url.replace("/hook", "/subject-a")
        for pid, contact in contacts.items():
            core.vault.put(pid, {"external_ref": f"REF-{pid}", "contact": contact})
        params = _params(paths.root, smtp.port)
        Recipients(core).add("processor", name="IT provider", address="privacy@processor.invalid")
        Recipients(core).add("partner", name="Partner", address=hook.url)

        def enforce():
            enforcer = Enforcer(paths, core=core, params=params)
            planned = enforcer.plan()
            result = enforcer.apply()
            assert [x.to_dict() for x in result.actions] == [x.to_dict() for x in planned]
            return result

        # Day 0: nothing is due yet.
        assert Enforcer(paths, core=core, params=params).plan() == []
        export = export_subject(paths, d, core=core, delivery=Delivery(plaintext=True))
        # Day 2: f is restricted; day 3: b withdraws consent to identification.
        clock.advance(days=2)
        core.restrict(f)
        clock.advance(days=1)
        core.withdraw_consent(b, ["identification"])
        out = enforce()
        assert [(x.kind, x.pid, x.reason) for x in out.actions] == [
            ("purge_template", b, "consent_withdrawn")
        ]
        # Day 5: c objects to every purpose (a request, answered at once): no basis is left.
        clock.advance(days=2)
        object_to(paths, c, core=core)
        out = enforce()
        assert [(x.kind, x.pid, x.reason) for x in out.actions] == [
            ("erase_subject", c, "no_legal_basis")
        ]
        assert len(out.certificates) == 1
        # Day 10: d and e renew their consent, b renews hers to training and evaluation.
        clock.advance(days=5)
        renewed = _receipt(clock, ("training", "evaluation", "identification"))
        core.give_consents([d, e], renewed)
        core.give_consent(b, _receipt(clock, ("training", "evaluation")))
        assert enforce().actions == []
        # One month after the start: the first consents lapse. a, whose every consent lapsed,
        # is erased; f is restricted (kept); d and e keep their renewed consent; d's bundle is
        # past its 30 days.
        clock.t = add_months(clock.t - timedelta(days=10), 1)
        clock.advance(minutes=5)
        enforcer = Enforcer(paths, core=core, params=params)
        dry = CliRunner().invoke(
            app, ["privacy", "enforce", "--json", "--at", clock.iso()], env=_env(paths)
        )
        assert dry.exit_code == 0, dry.output
        dry_actions = json.loads(dry.output)["actions"]
        planned = enforcer.plan()
        kinds = sorted((x.kind, x.pid or "", x.reason) for x in planned)
        assert ("erase_subject", a, "no_legal_basis") in kinds
        assert ("remove_export", "", "retention_expired") in kinds
        expired = {x.pid for x in planned if x.kind == "expire_consent"}
        assert expired == {a, f}  # c is erased; b, d and e renewed
        assert not {b, d, e} & {x.pid for x in planned}
        assert len(dry_actions) == len(planned)
        # The dry run changed nothing.
        assert not any(x["type"] == "consent.expired" for x in ledger_lines(core))
        out = enforce()
        assert not export.path.exists()
        # Deliver what is left (the webhook refused its first post: it is retried later).
        clock.advance(hours=2)
        from visage_ml.rights.notify import Notifier

        Notifier(paths, core=core, params=params.privacy.notify).deliver()

        # -- every notification arrived ------------------------------------------------------
        lines = ledger_lines(core)
        queued = {
            x["payload"]["message_id"]: x["payload"]
            for x in lines
            if x["type"] == "notification.queued" and x["payload"]["channel"] != "none"
        }
        sent = {
            x["payload"]["message_id"]: x["payload"]
            for x in lines
            if x["type"] == "notification.sent"
        }
        assert queued and set(queued) == set(sent)
        for mid, q in queued.items():
            assert sent[mid]["sha256"] == q["sha256"]
        arrived = {m.message_id for m in smtp.mails}
        key = (paths.secrets / "notify.key").read_bytes()
        for h in hook.received:
            sig = "sha256=" + hmac.new(key, h.body, hashlib.sha256).hexdigest()
            assert h.headers["x-visage-signature"] == sig
            arrived.add(json.loads(h.body)["message_id"])
        assert arrived == set(queued)
        assert hook.refused == 1 and any(
            x["type"] == "notification.failed" and x["payload"]["error"] == "http_503"
            for x in lines
        )
        kinds_sent = [q["kind"] for q in queued.values()]
        assert {"receipt", "completion", "art19"} <= set(kinds_sent)
        # Art. 19: both registered recipients heard of both erasures (c, then a).
        art19 = [q for q in queued.values() if q["kind"] == "art19"]
        assert sorted(q["recipient_id"] for q in art19) == sorted(["partner", "processor"] * 2)
        # The ledger holds hashes and states, never a body or an address.
        text = core.paths.ledger.read_bytes()
        for contact in contacts.values():
            assert contact.encode() not in text
        # The outbox is empty: delivered messages (and their addresses) are gone.
        assert not [p for p in (paths.privacy / "outbox").rglob("*.json")]

        # -- the ledger verifies and names its actors ------------------------------------------
        result = CliRunner().invoke(app, ["privacy", "verify-ledger"], env=_env(paths))
        assert result.exit_code == 0, result.output
        by_type = {}
        for x in lines:
            by_type.setdefault(x["type"], set()).add(x.get("actor"))
        assert all(x.get("actor") for x in lines)
        assert by_type["consent.expired"] == {"scheduler"}
        assert by_type["retention.applied"] == {"scheduler"}
        # The erasures by policy, from their request to their last step, were the scheduler's.
        erasures = [x for x in lines if x["type"].startswith("erasure.")]
        assert erasures and {x["actor"] for x in erasures} == {"scheduler"}
        assert by_type["consent.withdrawn"] == {next(iter(by_type["consent.withdrawn"]))}
        assert next(iter(by_type["consent.withdrawn"])).startswith("os:")

        # -- the forensic scan agrees with what was purged -------------------------------------
        erased = {x["pid"] for x in lines if x["type"] == "erasure.completed"}
        assert erased == {a, c}
        state = {pid: core.subject(pid) for pid in proj.pids}
        assert state[b].template_sha256 is None and not state[b].erased
        assert state[f].restricted and not state[f].erased
        assert state[f].template_sha256 is not None  # restriction keeps data stored
        er = Erasure(paths, core=core, params=params)
        for pid in erased:
            assert all(not v for v in er.remaining(pid).values()), er.remaining(pid)
        for pid in (b, d, e, f):
            assert er.remaining(pid)["raw"], pid  # kept: their raw images are still there
        needles = {}
        for pid in erased:
            needles.update({f"png:{pid}:{k}": v for k, v in proj.images[pid].items()})
            needles[f"ref:{pid}"] = f"REF-{pid}".encode()
            needles[f"contact:{pid}"] = contacts[pid].encode()
        kept_needle = {"kept": next(iter(proj.images[d].values()))}
        assert scan([paths.root], needles) == {}
        # The scanner works: plaintext of a kept subject is found in an unsealed copy.
        copy = tmp_path / "copy.bin"
        copy.write_bytes(b"".join(kept_needle.values()))
        assert scan([copy], kept_needle)
        for cert in sorted(paths.certificates.glob("*.json")):
            report = verify_certificate(cert, root=paths.root)
            assert report.ok, (report.checks, report.findings)
        # Every erasure by policy is a request recorded with its reason, by the scheduler.
        book = RequestBook(core)
        policy = [s for s in book.all() if s.right == "erasure"]
        assert {s.pid for s in policy} == {a, c}
        assert all(s.details.get("reason_code") == "no_legal_basis" for s in policy)


def test_a_clock_set_back_does_not_postpone_consent_expiry(month):
    # The attack: once the ledger's entries are past a consent's expiry, set the system clock
    # back before the scheduler runs, so that "now" is before the expiry.
    proj, core, clock = month
    params = _params(proj.paths.root, smtp_port=1)
    clock.advance(days=45)
    core.restrict(proj.pids[0])  # any entry stamped after every consent's month
    clock.advance(days=-45)
    planned = Enforcer(proj.paths, core=core, params=params).plan()  # the clock's own time
    expired = {x.pid for x in planned if x.kind == "expire_consent"}
    assert expired == set(proj.pids)


@dataclass(frozen=True)
class _Skewed(Signer):
    """A witness key whose host's clock runs ``ahead`` of the real time."""

    ahead: timedelta = timedelta(0)

    def cosign(self, text: bytes, timestamp: int | None = None) -> Signature:
        return super().cosign(text, int(time.time() + self.ahead.total_seconds()))


@pytest.fixture
def serve_witness(tmp_path):
    """Start witnesses on "other hosts": each its own folder and key behind HTTP, stamping its
    cosignatures with its own clock (the real one, whatever the project's clock says, or one
    running ``ahead``). Returns ``(witness, url, params.yaml entry)``."""
    servers = []

    def start(name: str, ahead: timedelta = timedelta(0)):
        remote = Witness.create(tmp_path / name.replace("/", "_"), name=name)
        if ahead:
            remote._signer = _Skewed(remote.signer.name, remote.signer.private_key, ahead)
        server = make_server(remote, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        url = f"http://127.0.0.1:{server.server_address[1]}"
        return remote, url, {"kind": "http", "url": url, "key": remote.verifier.vkey}

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def remote_witness(serve_witness):
    remote, url, _ = serve_witness("witness.example.org/w1")
    return remote, url


def _set_back_project(project, monkeypatch, remote, url):
    """Two subjects whose consents (one month) lapse at T = about ten days ago; the newest
    ledger entry is from T - 1 day; then the host's clock is set back to T - 20 days. Returns
    the project, T and the simulated host clock."""
    given = datetime.now(UTC) - timedelta(days=41)
    clock = SimClock(given)
    monkeypatch.setattr("visage_ml.privacy.ledger.utc_now", clock.iso)
    proj = make_project(project, n_subjects=2, n_images=1, processed=False, enrol=False)
    due = add_months(clock.t, 1)
    remote.add_log(proj.core.witnessing.log_verifier().vkey)  # `visage witness add-log`
    write_overrides(
        project / "params.yaml",
        {
            "privacy.retention.consent_months": 1,
            "privacy.retention.erase_without_basis": False,
            "privacy.witness.witnesses": [
                {"kind": "directory", "path": "default"},
                {"kind": "http", "url": url, "key": remote.verifier.vkey},
            ],
        },
    )
    clock.t = due - timedelta(days=1)
    PrivacyCore(proj.paths).add_subject(source="test")  # the newest entry: T - 1 day
    clock.t = due - timedelta(days=20)  # the operator sets the host's clock back
    return proj, due, clock


def test_a_clock_set_back_before_anything_newer_is_written_does_not_postpone_expiry(
    project, remote_witness, monkeypatch
):
    # The attack: at real time T + 10 days neither the host's clock (T - 20 days) nor the
    # ledger's newest entry (T - 1 day) says that the consents lapsing at T have lapsed. The
    # HTTP witness, asked to cosign at the start of the pass, stamps the real time.
    remote, url = remote_witness
    proj, due, _ = _set_back_project(project, monkeypatch, remote, url)  # due: T
    res = CliRunner().invoke(
        app, ["privacy", "enforce", "--apply", "--no-notify", "--json"], env=_env(proj.paths)
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    lapsed = {a["pid"] for a in doc["actions"] if a["kind"] == "expire_consent"}
    assert lapsed == set(proj.pids)
    core = PrivacyCore(proj.paths)
    assert not any(core.subject(pid).decision("training").allowed for pid in proj.pids)
    # The report says which time was used and how far behind it the host's clock is.
    clock = doc["clock"]
    assert clock["source"] == "witness" and clock["witnesses"] == ["witness.example.org/w1"]
    assert datetime.fromisoformat(clock["time"].replace("Z", "+00:00")) >= due
    assert clock["host_behind_seconds"] >= 20 * 86400


def test_a_witness_whose_clock_runs_a_year_ahead_erases_no_one_early(
    project, serve_witness, caplog
):
    # The host's clock is right; one witness's clock runs a year ahead (a wrong RTC or time
    # source). Alone, its time is taken at most a week past the host's clock (the ledger shows
    # no step back of that clock to explain more): consents given today, lapsing in a month,
    # stay.
    proj = make_project(project, n_subjects=2, n_images=1, processed=False, enrol=False)
    vkey = proj.core.witnessing.log_verifier().vkey
    ahead, _, ahead_spec = serve_witness("ahead.example.org/w", timedelta(days=365))
    right, _, right_spec = serve_witness("right.example.org/w")
    for remote in (ahead, right):
        remote.add_log(vkey)
    overrides = {"privacy.retention.consent_months": 1}
    overrides["privacy.witness.witnesses"] = [{"kind": "directory", "path": "default"}, ahead_spec]
    write_overrides(project / "params.yaml", overrides)
    params = load_params(project / "params.yaml")
    enforcer = Enforcer(proj.paths, core=PrivacyCore(proj.paths), params=params)
    assert enforcer.plan() == []
    clock = enforcer.clock
    assert clock.source == "witness" and clock.capped
    assert timedelta(days=6) < clock.time - datetime.now(UTC) <= timedelta(days=7)
    assert "ahead.example.org/w alone puts the time at" in caplog.text
    # A second HTTP witness whose clock is right: the earliest time of the two counts.
    caplog.clear()
    overrides["privacy.witness.witnesses"] = [
        {"kind": "directory", "path": "default"},
        ahead_spec,
        right_spec,
    ]
    write_overrides(project / "params.yaml", overrides)
    params = load_params(project / "params.yaml")
    enforcer = Enforcer(proj.paths, core=PrivacyCore(proj.paths), params=params)
    assert enforcer.plan() == []
    assert enforcer.clock.source == "host" and not enforcer.clock.capped
    assert set(enforcer.clock.said) == {"ahead.example.org/w", "right.example.org/w"}
    assert "clock" not in caplog.text


def test_an_objection_to_identification_alone_purges_the_template_and_keeps_the_rest(project):
    clock = SimClock()
    proj = make_project(project, n_subjects=2, n_images=1, processed=False)
    core, paths = proj.core, proj.paths
    core.ledger.clock = clock.iso
    a, b = proj.pids
    assert core.subject(a).template_sha256 is not None
    object_to(paths, a, purposes=["identification"], core=core)
    params = load_params(paths.root / "params.yaml")
    enforcer = Enforcer(paths, core=core, params=params)
    assert [(x.kind, x.pid, x.reason) for x in enforcer.plan()] == [
        ("purge_template", a, "objected")
    ]
    enforcer.apply(deliver=False)
    st = core.subject(a)
    assert st.template_sha256 is None and not st.erased
    assert st.decision("training").allowed  # training still rests on its consent
    assert Erasure(paths, core=core, params=params).remaining(a)["raw"]
    assert core.subject(b).template_sha256 is not None
    assert Enforcer(paths, core=core, params=params).plan() == []


def test_old_exports_and_receipts_expire_and_the_knobs_only_shorten_the_records(project):
    # The records keep export bundles 30 days and receipts 36 months; params.yaml asks for 7
    # days and 2 months. The DPO who shortened them sees the files go then, each removal a
    # ledger event by the scheduler with the hash of what was removed.
    clock = SimClock()
    proj = make_project(project, n_subjects=2, n_images=1, processed=False, enrol=False)
    core, paths = proj.core, proj.paths
    core.ledger.clock = clock.iso
    overrides = {
        "privacy.retention.consent_months": 0,
        "privacy.retention.erase_without_basis": False,
        "privacy.retention.exports_days": 7,
        "privacy.retention.receipts_months": 2,
    }
    write_overrides(paths.root / "params.yaml", overrides)
    params = load_params(paths.root / "params.yaml")
    export = export_subject(paths, proj.pids[0], core=core, delivery=Delivery(plaintext=True))
    (receipt,) = sorted(paths.requests.glob("*.receipt.json"))
    receipt_sha = hashlib.sha256(receipt.read_bytes()).hexdigest()
    export_sha = hashlib.sha256(export.path.read_bytes()).hexdigest()
    clock.advance(days=6, hours=23)
    assert Enforcer(paths, core=core, params=params).plan() == []
    clock.advance(hours=2)
    (action,) = Enforcer(paths, core=core, params=params).plan()
    assert (action.kind, action.reason) == ("remove_export", "retention_expired")
    assert export.path.exists()  # planning is a dry run
    Enforcer(paths, core=core, params=params).apply(deliver=False)
    assert not export.path.exists() and receipt.exists()
    clock.t = add_months(clock.t - timedelta(days=7, hours=1), 2) + timedelta(minutes=1)
    (action,) = Enforcer(paths, core=core, params=params).plan()
    assert (action.kind, action.reason) == ("remove_receipt", "retention_expired")
    Enforcer(paths, core=core, params=params).apply(deliver=False)
    assert not receipt.exists()
    applied = [x for x in ledger_lines(core) if x["type"] == "retention.applied"]
    assert [(x["payload"]["action"], x["payload"]["sha256"], x["actor"]) for x in applied] == [
        ("remove_export", export_sha, "scheduler"),
        ("remove_receipt", receipt_sha, "scheduler"),
    ]
    assert Enforcer(paths, core=core, params=params).plan() == []


def _env(paths) -> dict[str, str]:
    return {"VISAGE_PROJECT": str(paths.root)}


def test_the_serve_background_task_runs_every_interval_and_survives_a_failed_pass():
    import threading

    from visage_ml.rights.enforce import run_periodically

    passes = []

    class Fake:
        def apply(self, **_):
            passes.append(1)
            if len(passes) == 1:
                raise RuntimeError("a witness was unreachable")
            if len(passes) >= 3:
                stop.set()

    stop = threading.Event()
    lock = threading.RLock()
    t = threading.Thread(
        target=run_periodically,
        kwargs={"make": Fake, "interval_seconds": 0.01, "stop": stop, "lock": lock},
    )
    t.start()
    t.join(timeout=10)
    assert not t.is_alive() and len(passes) == 3


def _free(lock) -> bool:
    """Whether another thread (a request) can take ``lock`` now."""
    got = []

    def take():
        if lock.acquire(timeout=2):
            got.append(True)
            lock.release()

    t = threading.Thread(target=take)
    t.start()
    t.join()
    return bool(got)


def test_the_servers_pass_holds_the_request_lock_for_the_policies_only(project):
    # `visage serve` runs each pass under the lock its requests take. It took that lock and
    # then waited for the enforcement file lock (which a `visage privacy enforce --apply` from
    # cron holds through all of its erasures), and it delivered the outbox under it (an SMTP
    # server that does not answer costs privacy.notify.timeout_seconds per message): requests
    # stood still meanwhile. Now it waits for the file lock first and delivers after the lock.
    from visage_ml.io import file_lock
    from visage_ml.rights.enforce import LOCK, run_periodically

    proj = make_project(project, n_subjects=2, n_images=1)
    params = load_params(proj.paths.params)
    lock, stop, made = threading.RLock(), threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def make():
        made.set()
        return Enforcer(proj.paths, core=proj.core, params=params)

    def deliver():
        seen["free_while_delivering"] = _free(lock)
        stop.set()

    t = threading.Thread(
        target=run_periodically,
        kwargs={
            "make": make,
            "interval_seconds": 0.01,
            "stop": stop,
            "lock": lock,
            "deliver": deliver,
        },
    )
    with file_lock(proj.paths.root / LOCK):  # a `visage privacy enforce` is running
        t.start()
        assert made.wait(10)
        time.sleep(0.2)
        seen["free_while_waiting"] = _free(lock)
    t.join(timeout=30)
    assert not t.is_alive()
    assert seen == {"free_while_waiting": True, "free_while_delivering": True}


def test_a_consent_to_analytics_recorded_before_it_was_refused_keeps_no_subject(project):
    # Earlier versions recorded consent to analytics (the CLI's default). Analytics counts
    # faces without identifying anyone: that consent keeps nothing of the subject's, so once
    # every other consent is withdrawn the subject is erased by policy as anyone else.
    proj = make_project(project, n_subjects=2, n_images=1, processed=False)
    core, paths = proj.core, proj.paths
    a, b = proj.pids
    core.ledger.append(
        "consent.given", a, {"receipt": {"purposes": ["analytics"]}, "receipt_hash": "00" * 32}
    )
    assert core.may_process(a, "analytics").allowed
    core.withdraw_consent(a)  # every purpose a consent is given for; analytics refused
    params = load_params(paths.root / "params.yaml")
    plan = Enforcer(paths, core=core, params=params).plan()
    assert ("erase_subject", a, "no_legal_basis") in [(x.kind, x.pid, x.reason) for x in plan]
    assert b not in {x.pid for x in plan}


def test_one_failed_action_does_not_stop_the_rest_of_the_pass(project, monkeypatch):
    # An erasure stopped by a store that cannot be reached (a remembered gallery table, say)
    # raised out of the pass: every later action (other subjects' lapsed consents, expired
    # exports) waited for the store too. Now the others are carried out, and the pass still
    # fails with the first error and a note of what else happened.
    from visage_ml.rights.enforce import Action
    from visage_ml.stack.proc import StackError

    proj = make_project(project, n_subjects=2, n_images=1, processed=False)
    a, b = proj.pids
    params = load_params(proj.paths.root / "params.yaml")
    enforcer = Enforcer(proj.paths, core=proj.core, params=params)
    done: list[str] = []

    def erase(action, result):
        if action.pid == a:
            raise StackError("the gallery table pgvector:db/t cannot be reached; nothing erased")
        done.append(action.pid)

    monkeypatch.setattr(enforcer, "_do_erase_subject", erase)
    actions = [Action("erase_subject", "retention", a), Action("erase_subject", "retention", b)]
    with pytest.raises(StackError, match="cannot be reached") as failed:
        enforcer.apply(actions, deliver=False)
    assert done == [b]
    assert "1 action(s) of this enforcement pass failed and 1 were carried out" in " ".join(
        failed.value.__notes__
    )


def test_a_server_restarted_before_the_interval_still_enforces(tmp_path):
    # The notice says retention runs at least once an hour while the service runs. The first
    # pass waited one interval after each start, so a server restarted every 50 minutes never
    # enforced. The last pass's start is kept: a start an interval after it passes at once.
    from visage_ml.rights.enforce import LAST_PASS, run_periodically

    mark = tmp_path / LAST_PASS
    passes: list[float] = []

    class Fake:
        def apply(self, **_):
            passes.append(time.time())
            stop.set()

    def start(interval: float) -> None:
        t = threading.Thread(
            target=run_periodically,
            kwargs={"make": Fake, "interval_seconds": interval, "stop": stop, "mark": mark},
        )
        t.start()
        t.join(timeout=0.5)
        stop.set()
        t.join()

    # A first start: no pass recorded, so none now (a test app, a short-lived server).
    stop = threading.Event()
    start(3600)
    assert passes == [] and mark.is_file()
    # Restarted 50 minutes later: the next pass is due 10 minutes on, not an hour.
    mark.write_text(f"{time.time() - 3000:.0f}\n")
    stop = threading.Event()
    start(3600)
    assert passes == []
    # Restarted more than an hour after the last pass began: it runs at once and is recorded.
    mark.write_text(f"{time.time() - 3700:.0f}\n")
    stop = threading.Event()
    start(3600)
    assert len(passes) == 1
    assert abs(float(mark.read_text()) - passes[0]) < 2
    # A recorded time ahead of this clock waits one interval, no more.
    mark.write_text(f"{time.time() + 10**6:.0f}\n")
    stop = threading.Event()
    start(3600)
    assert len(passes) == 1
