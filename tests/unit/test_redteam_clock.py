"""Red team on enforcement's "now" (178859a: the latest of the host's clock, the ledger's last
entry and the HTTP witnesses' cosignature time)."""

# ruff: noqa: F811 - fixtures imported from the modules that define them

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from notify_fakes import SimClock
from project_helpers import write_overrides
from rights_fakes import make_project
from test_enforce import serve_witness  # noqa: F401 - fixture

from visage_ml.config import load_params
from visage_ml.privacy import clock as clock_mod
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.requests import RequestBook, add_months
from visage_ml.privacy.witness import HttpWitness, WitnessError
from visage_ml.rights.enforce import Enforcer


def _two_http_witnesses(proj, project, serve_witness) -> None:
    """Two HTTP witnesses (clocks right) beside the default one, consents of one month that
    erase no one."""
    vkey = proj.core.witnessing.log_verifier().vkey
    specs = []
    for name in ("w1.example.org/w", "w2.example.org/w"):
        remote, _, spec = serve_witness(name)
        remote.add_log(vkey)
        specs.append(spec)
    write_overrides(
        project / "params.yaml",
        {
            "privacy.retention.consent_months": 1,
            "privacy.retention.erase_without_basis": False,
            "privacy.witness.witnesses": [{"kind": "directory", "path": "default"}, *specs],
        },
    )


def _entry_from_the_future(project, serve_witness, monkeypatch):
    """Two subjects whose consents (one month) were given today, two HTTP witnesses whose
    clocks are right, and a newest ledger entry stamped while the host's clock ran ten years
    ahead (the clock right again since). Returns the project and the entry's time."""
    proj = make_project(project, n_subjects=2, n_images=1, processed=False, enrol=False)
    _two_http_witnesses(proj, project, serve_witness)
    PrivacyCore(proj.paths).witnessing.checkpoint_and_witness()  # the witness set recorded
    ahead = SimClock(datetime.now(UTC) + timedelta(days=3650))
    # Undone on leaving (the host's clock is right again); the test's other patches stay (its
    # witness folder: the ledger records that witness's key).
    with monkeypatch.context() as m:
        m.setattr("visage_ml.privacy.ledger.utc_now", ahead.iso)
        PrivacyCore(proj.paths).add_subject(source="test")  # the one entry from the future
    return proj, ahead.t


def test_an_entry_stamped_while_the_hosts_clock_ran_ahead_erases_no_one_early(
    project, serve_witness, monkeypatch, caplog
):
    """The host's clock jumped ten years ahead for a moment (an RTC fault, a mistyped `date`);
    one ledger entry was stamped then; the clock is right again. Two HTTP witnesses, whose
    clocks are right, cosign at the start of the pass. A single witness ahead of the host is
    bounded (`ALONE_AHEAD`) "so that a wrong clock erases no one early"; a single entry ahead,
    contradicted by both witnesses, must not expire every consent given today either."""
    proj, entry = _entry_from_the_future(project, serve_witness, monkeypatch)
    params = load_params(project / "params.yaml")
    enforcer = Enforcer(proj.paths, core=PrivacyCore(proj.paths), params=params)
    planned = enforcer.plan()
    assert len(enforcer.clock.said) == 2  # both witnesses answered with the real time
    assert [a.pid for a in planned if a.kind == "expire_consent"] == []
    # The time used is today's, and the report and the warning name the entry disregarded.
    assert abs(enforcer.clock.time - datetime.now(UTC)) < timedelta(minutes=1)
    doc = enforcer.clock.to_dict()
    assert doc["ledger_disregarded"] == clock_mod._iso(entry)
    assert doc["fresh"] == ["w1.example.org/w", "w2.example.org/w"]
    assert f"newest entry is stamped {clock_mod._iso(entry)}" in caplog.text


def test_without_fresh_witness_answers_the_entry_from_the_future_stays_a_floor(
    project, serve_witness, monkeypatch
):
    """The same ledger, but the witnesses cannot be reached in this pass: what they cosigned
    before is all there is, and a kept cosignature says nothing about now. The floor stays (as
    it does for the deadline reports, which ask no one)."""
    proj, entry = _entry_from_the_future(project, serve_witness, monkeypatch)

    def unreachable(*args, **kwargs):
        raise WitnessError(503, "not reachable")

    monkeypatch.setattr(HttpWitness, "add_checkpoint", unreachable)
    params = load_params(project / "params.yaml")
    core = PrivacyCore(proj.paths)
    enforcer = Enforcer(proj.paths, core=core, params=params)
    planned = enforcer.plan()
    assert enforcer.clock.fresh == () and enforcer.clock.disregarded is None
    assert enforcer.clock.time == entry and enforcer.clock.source == clock_mod.LEDGER
    assert {a.pid for a in planned if a.kind == "expire_consent"} == set(proj.pids)
    book = RequestBook(core, params=params.privacy).clock()
    assert book.time == entry and book.disregarded is None


def test_a_clock_set_back_is_still_caught_when_the_witnesses_answer_fresh(
    project, serve_witness, monkeypatch
):
    """The attack the floor exists for, with two HTTP witnesses answering in the pass: the
    consents lapsed ten days ago, the newest entry is from eleven days ago, the host's clock
    was set back thirty days. The witnesses' fresh times disagree with the host's clock, so
    nothing is disregarded and the consents lapse."""
    real = datetime.now(UTC).replace(microsecond=0)
    clock = SimClock(add_months(real - timedelta(days=10), -1))
    monkeypatch.setattr("visage_ml.privacy.ledger.utc_now", clock.iso)
    proj = make_project(project, n_subjects=2, n_images=1, processed=False, enrol=False)
    _two_http_witnesses(proj, project, serve_witness)
    clock.t = real - timedelta(days=11)
    PrivacyCore(proj.paths).add_subject(source="test")  # the newest entry
    clock.t = real - timedelta(days=30)  # the operator sets the host's clock back
    params = load_params(project / "params.yaml")
    enforcer = Enforcer(proj.paths, core=PrivacyCore(proj.paths), params=params)
    planned = enforcer.plan()
    assert set(enforcer.clock.fresh) == {"w1.example.org/w", "w2.example.org/w"}
    assert enforcer.clock.disregarded is None and enforcer.clock.source == clock_mod.WITNESS
    assert abs(enforcer.clock.time - real) < timedelta(minutes=1)
    assert {a.pid for a in planned if a.kind == "expire_consent"} == set(proj.pids)


@pytest.mark.parametrize("seconds", [0, 1, -1])
def test_a_witness_time_at_or_before_the_epoch_changes_nothing(seconds):
    host = datetime(2026, 12, 3, tzinfo=UTC)
    said = {"w": datetime.fromtimestamp(0, UTC) + timedelta(seconds=seconds)}
    now = clock_mod.decide(host, ledger=host - timedelta(hours=1), witnesses=said)
    assert now.time == host and now.source == clock_mod.HOST and not now.warns


def test_a_witness_in_the_far_future_beside_a_right_one_moves_nothing():
    host = datetime(2026, 12, 3, tzinfo=UTC)
    far = datetime(9999, 12, 31, tzinfo=UTC)
    now = clock_mod.decide(host, witnesses={"far": far, "right": host + timedelta(seconds=2)})
    assert now.time == host + timedelta(seconds=2) and not now.capped
    alone = clock_mod.decide(host, witnesses={"far": far})
    assert alone.capped and alone.time == host + clock_mod.ALONE_AHEAD and alone.warns


def test_a_project_with_only_directory_witnesses_uses_the_hosts_clock_and_asks_no_one(project):
    """As before the commit: no HTTP witness, nothing cosigned for the pass (no checkpoint
    written by a dry run), the host's clock used and reported as such."""
    clock = SimClock()
    proj = make_project(project, n_subjects=2, n_images=1, processed=False, enrol=False)
    proj.core.ledger.clock = clock.iso
    latest = proj.paths.checkpoints / "latest"
    before = latest.read_bytes() if latest.exists() else None
    size = len(proj.core.ledger)
    params = load_params(project / "params.yaml")
    enforcer = Enforcer(proj.paths, core=proj.core, params=params)
    enforcer.plan()
    assert enforcer.clock.source in (clock_mod.HOST, clock_mod.LEDGER)
    assert enforcer.clock.witnesses == () and enforcer.clock.said == {}
    assert (latest.read_bytes() if latest.exists() else None) == before
    assert len(proj.core.ledger) == size
