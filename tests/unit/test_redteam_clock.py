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
from visage_ml.rights.enforce import Enforcer


@pytest.mark.xfail(
    strict=True,
    reason="the ledger's last entry is a floor no witness bounds: one entry stamped while the "
    "host's clock ran ahead expires everything up to that time (design decision needed)",
)
def test_an_entry_stamped_while_the_hosts_clock_ran_ahead_erases_no_one_early(
    project,
    serve_witness,
    monkeypatch,
):
    """The host's clock jumped ten years ahead for a moment (an RTC fault, a mistyped `date`);
    one ledger entry was stamped then; the clock is right again. Two HTTP witnesses, whose
    clocks are right, cosign at the start of the pass. A single witness ahead of the host is
    bounded (`ALONE_AHEAD`) "so that a wrong clock erases no one early"; a single entry ahead,
    contradicted by both witnesses, must not expire every consent given today either."""
    proj = make_project(project, n_subjects=2, n_images=1, processed=False, enrol=False)
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
    PrivacyCore(proj.paths).witnessing.checkpoint_and_witness()  # the witness set recorded
    ahead = SimClock(datetime.now(UTC) + timedelta(days=3650))
    monkeypatch.setattr("visage_ml.privacy.ledger.utc_now", ahead.iso)
    PrivacyCore(proj.paths).add_subject(source="test")  # the one entry from the future
    monkeypatch.undo()  # the host's clock is right again
    params = load_params(project / "params.yaml")
    enforcer = Enforcer(proj.paths, core=PrivacyCore(proj.paths), params=params)
    planned = enforcer.plan()
    assert len(enforcer.clock.said) == 2  # both witnesses answered with the real time
    assert enforcer.clock.time - datetime.now(UTC) > timedelta(days=3000)  # the entry's time
    assert [a.pid for a in planned if a.kind == "expire_consent"] == []


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
