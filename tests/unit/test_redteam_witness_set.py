"""Red-team: the ledger's record of its witnesses (``witness.set``, privacy/witnessed.py).

The adversary is an operator with the project's disk (params.yaml, the ledger, the local
checkpoint) who wants a withdrawal forgotten: cut it off the ledger and stop every witness that
holds a checkpoint covering it from being read. Tests marked ``xfail(strict=True)`` are attacks
that still succeed (see their reason); they fail the suite once the hole is closed.
"""

from __future__ import annotations

import json

import pytest
from project_helpers import write_overrides
from test_witnessed import (  # noqa: F401 - fixtures
    cli,
    lines_of,
    receipt,
    second_witness,
    withdrawn,
    witness_dir,
    witness_sets,
)

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.ledger import LedgerError
from visage_ml.privacy.witness import Witness
from visage_ml.privacy.witnessed import WITNESS_SET, forget_checks


@pytest.fixture
def later_withdrawal(project, witness_dir):  # noqa: F811
    """A ledger older than its witnesses (README: it gains its record at its first checkpoint
    with one): three subjects consented, then the default witness configured and a checkpoint
    (the first witness.set), then the third subject withdrew (witnessed). Returns the paths,
    the pids, and where the ledger ends before the first witness.set and before the
    withdrawal."""
    write_overrides(project / "params.yaml", {"privacy.witness.witnesses": []})
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pids = [core.add_subject(source="t") for _ in range(3)]
    for pid in pids:
        core.give_consent(pid, receipt())
    write_overrides(
        project / "params.yaml",
        {"privacy.witness.witnesses": [{"kind": "directory", "path": "default"}]},
    )
    forget_checks()
    assert cli("privacy", "checkpoint").exit_code == 0
    (first,) = witness_sets(paths)
    PrivacyCore(paths).withdraw_consent(pids[2])
    entries = [json.loads(line) for line in lines_of(paths)]
    (withdrawal,) = [e["seq"] for e in entries if e["type"] == "consent.withdrawn"]
    assert first["seq"] < withdrawal
    assert not PrivacyCore(paths).may_process(pids[2], "training").allowed
    return paths, pids, first["seq"], withdrawal


def drop_witnesses(paths: ProjectPaths) -> None:
    """params.yaml without witnesses, and the local checkpoint gone."""
    write_overrides(paths.params, {"privacy.witness.witnesses": []})
    (paths.checkpoints / "latest").unlink()


def recorded_second_witness(paths: ProjectPaths, pid: str) -> Witness:
    """A second directory witness beside the default one, on the record (a restriction of
    ``pid`` witnessed by both)."""
    second = second_witness(paths.root)
    forget_checks()
    PrivacyCore(paths).restrict(pid)
    return second


def only_the_default_witness(paths: ProjectPaths) -> None:
    """params.yaml with the default directory witness alone."""
    write_overrides(
        paths.params, {"privacy.witness.witnesses": [{"kind": "directory", "path": "default"}]}
    )
    forget_checks()


def still_refused(paths: ProjectPaths, victim: str) -> None:
    """Opening and asking about ``victim`` must not answer "allowed"."""
    forget_checks()
    try:
        decision = PrivacyCore(paths).may_process(victim, "training")
    except LedgerError:
        return
    pytest.fail(f"the cut ledger opened; {victim} may be processed: {decision.allowed}")


def test_a_ledger_cut_to_just_before_its_first_witness_set_is_refused(later_withdrawal):
    paths, pids, first_seq, _ = later_withdrawal
    drop_witnesses(paths)
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:first_seq]))
    still_refused(paths, pids[2])


def test_an_unsigned_witness_set_naming_no_witness_is_refused(later_withdrawal):
    # Without the ledger key: cut the later withdrawal off, then append a witness.set line
    # (copied, payload edited, its signature now wrong) that records no witness.
    paths, pids, first_seq, _ = later_withdrawal
    lines = lines_of(paths)
    entry = json.loads(lines[first_seq])
    cut = lines[: first_seq + 1]
    entry["seq"] = len(cut)
    entry["payload"]["witnesses"] = []
    drop_witnesses(paths)
    forged = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
    paths.ledger.write_bytes(b"".join(cut) + forged)
    still_refused(paths, pids[2])
    assert cli("privacy", "verify-ledger").exit_code == 1


def test_a_signed_witness_set_naming_no_witness_does_not_launder_a_cut(later_withdrawal):
    # With the ledger key (readable by whoever runs the project's processes): cut the later
    # withdrawal off and sign a witness.set of no witnesses onto what is left.
    paths, pids, first_seq, _ = later_withdrawal
    drop_witnesses(paths)
    paths.ledger.write_bytes(b"".join(lines_of(paths)[: first_seq + 1]))
    forget_checks()
    ledger = PrivacyCore(paths, check=False).ledger
    ledger.after_append = None
    ledger.append(WITNESS_SET, None, {"witnesses": [], "quorum": 0, "reason": "decommissioned"})
    still_refused(paths, pids[2])


def test_a_signed_witness_set_naming_no_witness_does_not_launder_a_cut_past_a_witness_elsewhere(
    project, tmp_path, monkeypatch
):
    # The same with the only witness on another path (no default witness anywhere): its copy
    # is read because an earlier record names it, not because params.yaml or the default does.
    monkeypatch.setenv("VISAGE_WITNESS_DIR", str(tmp_path / "no-default-witness"))
    elsewhere = Witness.create(tmp_path / "mounted" / "witness")
    write_overrides(
        project / "params.yaml",
        {"privacy.witness.witnesses": [{"kind": "directory", "path": str(elsewhere.root)}]},
    )
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pid = core.add_subject(source="t")
    core.give_consent(pid, receipt())
    core.withdraw_consent(pid)
    (withdrawal,) = [i for i, line in enumerate(lines_of(paths)) if b'"consent.withdrawn"' in line]
    drop_witnesses(paths)
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:withdrawal]))
    forget_checks()
    ledger = PrivacyCore(paths, check=False).ledger
    ledger.after_append = None
    ledger.append(WITNESS_SET, None, {"witnesses": [], "quorum": 0, "reason": "decommissioned"})
    forget_checks()
    with pytest.raises(LedgerError, match=r"ledger (rollback|fork)") as info:
        PrivacyCore(paths)
    assert str(elsewhere.root) in str(info.value)
    assert not (tmp_path / "no-default-witness").exists()


def test_the_default_witness_pointed_elsewhere_does_not_launder_a_cut(
    later_withdrawal, tmp_path, monkeypatch
):
    # params.yaml untouched: the server is started with VISAGE_WITNESS_DIR on an empty folder.
    paths, pids, _, withdrawal = later_withdrawal
    (paths.checkpoints / "latest").unlink()
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:withdrawal]))
    monkeypatch.setenv("VISAGE_WITNESS_DIR", str(tmp_path / "empty-witness"))
    still_refused(paths, pids[2])


def test_removing_the_only_witness_while_unreachable_does_not_launder_a_cut(
    later_withdrawal,
    witness_dir,  # noqa: F811
):
    paths, pids, _, withdrawal = later_withdrawal
    name = Witness(witness_dir).name
    drop_witnesses(paths)
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:withdrawal]))
    witness_dir.rename(witness_dir.with_name("unmounted"))
    forget_checks()
    n = len(lines_of(paths))
    result = cli("privacy", "remove-witness", name, "--reason", "volume_lost")
    assert result.exit_code == 2, result.output
    assert "cannot be read now" in result.output and "--lost-for-good" in result.output
    assert len(lines_of(paths)) == n
    still_refused(paths, pids[2])


def test_a_witness_lost_for_good_is_let_go_only_on_a_record_that_says_so(
    later_withdrawal,
    witness_dir,  # noqa: F811
):
    # The legitimate case the refusal above leaves a way out for: the only witness's volume is
    # gone for good. The record says what it costs, and so does verify-ledger, for good; the
    # witness found again still shows a cut made before.
    paths, pids, _, withdrawal = later_withdrawal
    name = Witness(witness_dir).name
    drop_witnesses(paths)
    cut = lines_of(paths)[:withdrawal]
    paths.ledger.write_bytes(b"".join(cut))
    witness_dir.rename(witness_dir.with_name("unmounted"))
    forget_checks()
    result = cli("privacy", "remove-witness", name, "--reason", "volume_lost", "--lost-for-good")
    assert result.exit_code == 0, result.output
    assert f"LOST: {name}" in result.output
    record = witness_sets(paths)[-1]
    assert record["payload"]["witnesses"] == []
    assert [w["vkey"].split("+")[0] for w in record["payload"]["lost"]] == [name]
    verified = cli("privacy", "verify-ledger")
    assert verified.exit_code == 0, verified.output
    assert f"LOST: {name}" in verified.output
    assert f"before entry {record['seq']} shows only through" in verified.output
    # Mounted again, its checkpoint shows the cut.
    witness_dir.with_name("unmounted").rename(witness_dir)
    still_refused(paths, pids[2])


def test_a_witness_that_cannot_be_read_goes_only_as_lost_even_with_one_left(
    withdrawn,  # noqa: F811
    witness_dir,  # noqa: F811
):
    # Two witnesses, both needed: whether the one left holds everything the lost one cosigned
    # cannot be told (a checkpoint that missed its quorum was cosigned by fewer:
    # test_redteam_session35), so the removal is on the record as lost, or not at all.
    paths, pids = withdrawn
    second = recorded_second_witness(paths, pids[0])
    name = second.name
    second.root.rename(second.root.with_name("lost"))
    only_the_default_witness(paths)
    result = cli("privacy", "remove-witness", name, "--reason", "volume_lost")
    assert result.exit_code == 2 and "--lost-for-good" in result.output
    result = cli("privacy", "remove-witness", name, "--reason", "volume_lost", "--lost-for-good")
    assert result.exit_code == 0, result.output
    # A witness that can be read is not let go as lost.
    third = recorded_second_witness(paths, pids[2]).name
    only_the_default_witness(paths)
    result = cli(
        "privacy", "remove-witness", third, "--reason", "decommissioned", "--lost-for-good"
    )
    assert result.exit_code == 2 and "run this again without it" in result.output


def test_adding_a_witness_does_not_buy_a_lower_quorum(withdrawn, witness_dir):  # noqa: F811
    # Recorded: two witnesses, every one needed. params.yaml: a third (the operator's own) and
    # quorum 1, so that the operator's witness alone would do.
    paths, pids = withdrawn
    second_witness(paths.root)
    forget_checks()
    PrivacyCore(paths).restrict(pids[0])
    third = Witness.create(paths.root.parent / "third-volume" / "witness")
    write_overrides(
        paths.params,
        {
            "privacy.witness.witnesses": [
                {"kind": "directory", "path": "default"},
                {"kind": "directory", "path": str(paths.root.parent / "second-volume/witness")},
                {"kind": "directory", "path": str(third.root)},
            ],
            "privacy.witness.quorum": 1,
        },
    )
    forget_checks()
    n = len(lines_of(paths))
    result = cli("privacy", "restrict", pids[2])
    assert result.exit_code == 2 and "quorum" in result.output
    assert len(lines_of(paths)) == n
