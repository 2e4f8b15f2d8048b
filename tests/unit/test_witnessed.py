"""Witnessed checkpoints of a project's ledger, and the attacks they stop.

Each attack is what an operator with disk access (and, for a fork, the stolen ledger key) could
try after a subject withdrew consent: make the ledger forget it. Each must be detected or
refused, with a message naming the checkpoint and what to do.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pandas as pd
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from project_helpers import write_overrides
from typer.testing import CliRunner

from visage_ml.app.cli import app
from visage_ml.app.stages import prepare as prepare_stage
from visage_ml.config import ConfigError, ProjectPaths, load_params
from visage_ml.privacy.consent import ConsentReceipt, sha256_text
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.keys import LedgerKeyError, public_pem
from visage_ml.privacy.ledger import Ledger, LedgerError
from visage_ml.privacy.registry import LedgerRefusedError
from visage_ml.privacy.witness import Witness, make_server
from visage_ml.privacy.witnessed import (
    WITNESS_SET,
    LedgerRollbackError,
    Witnessing,
    WitnessSetError,
    WitnessUnavailableError,
    forget_checks,
)


def receipt() -> ConsentReceipt:
    return ConsentReceipt(
        controller="Example Controller Ltd",
        controller_contact="dpo@example.org",
        purposes=("training", "evaluation", "identification"),
        notice_version="v1",
        notice_hash=sha256_text("notice"),
        collection_method="web-form",
        given_at="2026-11-26T07:00:00.000Z",
    )


@pytest.fixture
def witness_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own default directory witness (outside the project folder)."""
    folder = tmp_path / "other-volume" / "witness"
    monkeypatch.setenv("VISAGE_WITNESS_DIR", str(folder))
    forget_checks()
    return folder


@pytest.fixture
def withdrawn(project: Path, witness_dir: Path):
    """Three subjects with consent; the second withdrew it (a witnessed narrowing event)."""
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pids = [core.add_subject(source="t") for _ in range(3)]
    for pid in pids:
        core.give_consent(pid, receipt())
    core.withdraw_consent(pids[1])
    return paths, pids


def lines_of(paths: ProjectPaths) -> list[bytes]:
    return paths.ledger.read_bytes().splitlines(keepends=True)


def witness_size(paths: ProjectPaths, folder: Path) -> int:
    origin = PrivacyCore(paths, check=False).witnessing.origin
    return Witness(folder).log(origin).size


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


# ---------------------------------------------------------------------------------------------
# Witnessing
# ---------------------------------------------------------------------------------------------


def test_every_narrowing_event_is_witnessed_before_the_call_returns(project, witness_dir):
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pid = core.add_subject(source="t")
    core.give_consent(pid, receipt())
    for act in (
        lambda: core.withdraw_consent(pid, ["training"]),
        lambda: core.restrict(pid),
        lambda: core.object(pid, ["identification"]),
    ):
        act()
        n = len(lines_of(paths))
        # The directory witness (another folder) already cosigned the whole ledger.
        assert witness_size(paths, witness_dir) == n
        latest = (paths.checkpoints / "latest").read_text()
        assert latest.splitlines()[1] == str(n)
        assert latest.count("\u2014 ") == 2  # the ledger's signature and the cosignature
    assert not str(witness_dir).startswith(str(project))


def test_other_events_are_witnessed_every_n_entries(project, witness_dir):
    write_overrides(
        project / "params.yaml",
        {"privacy.witness.every_entries": 5, "privacy.witness.every_seconds": 3600.0},
    )
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    sizes = []
    for _ in range(12):
        core.add_subject(source="t")
        sizes.append(witness_size(paths, witness_dir))
    # The first append is witnessed at once, with the witness.set entry recording the witness
    # (seq 1), then every fifth entry.
    assert sizes == [2, 2, 2, 2, 2, 7, 7, 7, 7, 7, 12, 12]


def test_a_narrowing_event_that_cannot_be_witnessed_fails_the_command_but_stays_in_force(
    project, witness_dir
):
    core = PrivacyCore(ProjectPaths(project))
    pid = core.add_subject(source="t")
    core.give_consent(pid, receipt())
    write_overrides(
        project / "params.yaml",
        {
            "privacy.witness.witnesses": [
                {"kind": "directory", "path": "default"},
                {
                    "kind": "http",
                    "url": "http://127.0.0.1:9",
                    "key": Witness.create(project.parent / "w2").verifier.vkey,
                },
            ],
            "privacy.witness.timeout_seconds": 2.0,
        },
    )
    result = cli("privacy", "consent", "withdraw", pid)
    assert result.exit_code == 2
    assert "not witnessed: 1 of 2 cosignatures" in result.output
    assert "unreachable" in result.output and "visage privacy checkpoint" in result.output
    assert not PrivacyCore(ProjectPaths(project)).may_process(pid, "training").allowed
    # The pipeline's consent snapshot says so too.
    snap = pd.read_parquet(project / "data" / "registry" / "consents.parquet")
    row = snap[(snap.pid == pid) & (snap.purpose == "training")].iloc[0]
    assert (bool(row.allowed), row.reason) == (False, "consent_withdrawn")
    # With a quorum of one, the directory witness alone suffices, once that is on the record
    # (the ledger recorded the second witness when params.yaml gained it).
    write_overrides(project / "params.yaml", {"privacy.witness.quorum": 1})
    result = cli("privacy", "restrict", pid)
    assert result.exit_code == 2 and "remove-witness --quorum 1" in result.output
    result = cli("privacy", "remove-witness", "--quorum", "1", "--reason", "w2_unreachable")
    assert result.exit_code == 0, result.output
    assert "1 cosignature(s) needed" in result.output
    assert cli("privacy", "restrict", pid).exit_code == 0


# ---------------------------------------------------------------------------------------------
# Attacks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 5])
@pytest.mark.parametrize("local_copy", ["kept", "deleted too"])
def test_truncating_the_last_entries_is_detected(withdrawn, witness_dir, k, local_copy):
    paths, pids = withdrawn
    victim = pids[1]
    # A long-lived process (a server) that folded the ledger before the attack.
    running = PrivacyCore(paths)
    assert not running.may_process(victim, "training").allowed
    n = len(lines_of(paths))
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:-k]))
    if local_copy == "deleted too":
        (paths.checkpoints / "latest").unlink()
    forget_checks()
    with pytest.raises(LedgerRollbackError) as info:
        PrivacyCore(paths)
    msg = str(info.value)
    assert f"holds {n - k} entries" in msg and f"covers {n}" in msg
    assert "root " in msg and "restore privacy/ledger.jsonl" in msg
    if local_copy == "deleted too":
        assert "directory witness" in msg and str(witness_dir) in msg
    # The running process never answers "allowed" either: it refuses.
    with pytest.raises(LedgerRollbackError):
        running.may_process(victim, "training")
    result = cli("privacy", "verify-ledger")
    assert result.exit_code == 1 and "rollback" in result.output
    assert cli("privacy", "subject", "show", victim).exit_code == 2


def test_a_backup_restored_into_another_folder_is_still_a_rollback(withdrawn, witness_dir):
    """The operator keeps a copy of the project from before a withdrawal and restores it on
    another path (a new server, another volume): the witnesses know it is the same ledger."""
    paths, pids = withdrawn
    backup = paths.root.parent / "backup"
    shutil.copytree(paths.root, backup / "proj", symlinks=True)
    core = PrivacyCore(paths)
    core.withdraw_consent(pids[0])  # witnessed before it returns
    n = len(lines_of(paths))
    restored = shutil.move(backup / "proj", paths.root.parent / "restored-elsewhere")
    forget_checks()
    with pytest.raises(LedgerRollbackError) as info:
        PrivacyCore(ProjectPaths(Path(restored)))
    assert f"covers {n}" in str(info.value) and str(witness_dir) in str(info.value)
    # Same ledger, same log, wherever it lies; the project itself goes on as before.
    same = PrivacyCore(ProjectPaths(Path(restored)), check=False).witnessing.origin
    assert same == core.witnessing.origin
    assert not PrivacyCore(paths).may_process(pids[0], "training").allowed


def test_dropping_a_middle_entry_is_detected(withdrawn):
    paths, _ = withdrawn
    lines = lines_of(paths)
    paths.ledger.write_bytes(b"".join(lines[:2] + lines[3:]))
    forget_checks()
    with pytest.raises(LedgerRollbackError, match=r"fork|rollback"):
        PrivacyCore(paths)
    result = cli("privacy", "verify-ledger")
    assert result.exit_code == 1 and "sequence gap" in result.output


def _fork(paths: ProjectPaths, keep: int, extra: int) -> None:
    """Rewrite history after entry ``keep`` with valid signatures of the stolen ledger key."""
    lines = lines_of(paths)
    paths.ledger.write_bytes(b"".join(lines[:keep]))
    thief = Ledger(
        paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key
    )
    for i in range(extra):
        thief.append("rectification", None, {"forged": i})


@pytest.mark.parametrize("local_copy", ["kept", "deleted too"])
def test_a_fork_signed_with_the_stolen_key_is_refused_by_the_witness_and_the_open_check(
    withdrawn, witness_dir, local_copy
):
    paths, _ = withdrawn
    n = len(lines_of(paths))
    witnessed_before = witness_size(paths, witness_dir)
    # The withdrawal (the last entry) disappears; the forged ledger is even longer.
    _fork(paths, n - 1, extra=4)
    assert (
        Ledger(paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key)
        .verify()
        .ok
    )  # chain and signatures alone cannot tell
    if local_copy == "deleted too":
        (paths.checkpoints / "latest").unlink()
    forget_checks()
    with pytest.raises(LedgerRollbackError) as info:
        PrivacyCore(paths)
    assert "ledger fork" in str(info.value) and f"first {n} entries" in str(info.value)
    result = cli("privacy", "verify-ledger")
    assert result.exit_code == 1 and "checkpoint check FAILED" in result.output
    # The thief asks the witness to cosign the forged ledger: refused, state unchanged.
    core = PrivacyCore(paths, check=False)
    thief = Witnessing(paths, load_params(paths.params).privacy.witness, core.ledger)
    if local_copy == "kept":
        # Our own code never signs a checkpoint that does not extend the last one it signed.
        with pytest.raises(LedgerRollbackError, match="ledger fork"):
            thief.checkpoint_and_witness()
        (paths.checkpoints / "latest").unlink()
    with pytest.raises(WitnessUnavailableError, match="fork or a rollback"):
        thief.checkpoint_and_witness()
    assert witness_size(paths, witness_dir) == witnessed_before


def test_a_whole_history_re_signed_with_the_stolen_key_is_still_the_same_log(
    withdrawn, witness_dir
):
    """Even the first line is forged (another genesis) and the local checkpoint deleted: the
    log is named after its key, so the witness's checkpoint still applies."""
    paths, _ = withdrawn
    n = len(lines_of(paths))
    _fork(paths, 0, extra=n + 3)
    (paths.checkpoints / "latest").unlink()
    forget_checks()
    with pytest.raises(LedgerRollbackError) as info:
        PrivacyCore(paths)
    assert "ledger fork" in str(info.value) and str(witness_dir) in str(info.value)


def test_a_ledger_rebuilt_in_place_under_a_new_key_is_refused(withdrawn, witness_dir):
    """The operator deletes the ledger, its keys and checkpoints and re-signs the history
    without the withdrawal under a brand-new key: a new log, which the witness will not bind
    to this folder."""
    paths, _ = withdrawn
    kept = [json.loads(line) for line in lines_of(paths)]
    kept = [e for e in kept if e["type"] != "consent.withdrawn"]
    for path in (paths.ledger, paths.ledger_public_key, paths.signing_key):
        path.unlink()
    shutil.rmtree(paths.checkpoints)
    forger = Ledger(
        paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key
    )
    for e in kept:
        forger.append(e["type"], e.get("pid"), e.get("payload") or {})
    assert forger.verify().ok  # chain and signatures alone cannot tell
    forget_checks()
    with pytest.raises(LedgerRollbackError) as info:
        PrivacyCore(paths)
    message = str(info.value)
    assert "ledger replaced" in message and str(witness_dir) in message
    assert "visage witness release" in message
    # The forger cannot get the new log witnessed for this folder either.
    with pytest.raises(LedgerRollbackError, match="ledger replaced"):
        PrivacyCore(paths, check=False).witnessing.checkpoint_and_witness()
    assert cli("privacy", "verify-ledger").exit_code == 1
    # Only the witness's operator releases the binding, and the release is recorded.
    result = cli("witness", "release", str(paths.root), "--dir", str(witness_dir))
    assert result.exit_code == 0 and "released" in result.output
    assert (witness_dir / "projects" / "released.jsonl").read_text().count("\n") == 1
    forget_checks()
    PrivacyCore(paths).witnessing.checkpoint_and_witness()  # now a new log of this folder


def test_a_copy_of_the_project_in_another_folder_is_bound_on_its_own(withdrawn, witness_dir):
    """Bindings are per folder: a copy is the same log (same origin), so it binds too."""
    paths, pids = withdrawn
    copy = paths.root.parent / "copy"
    shutil.copytree(paths.root, copy)
    forget_checks()
    core = PrivacyCore(ProjectPaths(copy))
    core.give_consent(pids[0], receipt())
    core.witnessing.checkpoint_and_witness()
    assert len(list((witness_dir / "projects").glob("*.json"))) == 2


def test_an_unsigned_line_appended_to_the_ledger_is_refused(withdrawn):
    paths, pids = withdrawn
    running = PrivacyCore(paths)
    assert running.may_process(pids[0], "training").allowed
    lines = lines_of(paths)
    forged = lines[-1].replace(b'"consent.withdrawn"', b'"consent.given"')
    paths.ledger.write_bytes(b"".join(lines) + forged)
    forget_checks()
    for core in (running, PrivacyCore(paths)):
        with pytest.raises(LedgerRefusedError, match="refuses the ledger"):
            core.may_process(pids[1], "training")


def test_replacing_ledger_pub_is_detected(withdrawn):
    paths, pids = withdrawn
    paths.ledger_public_key.write_bytes(public_pem(Ed25519PrivateKey.generate().public_key()))
    forget_checks()
    with pytest.raises(LedgerError, match=r"not signed by any key .* privacy/ledger\.pub"):
        PrivacyCore(paths)
    with pytest.raises(LedgerError, match=r"ledger\.pub"):
        PrivacyCore(paths, check=False).may_process(pids[0], "training")
    assert cli("privacy", "verify-ledger").exit_code == 1
    # And nothing is signed with a key ledger.pub does not publish.
    with pytest.raises(LedgerKeyError, match="was replaced"):
        PrivacyCore(paths, check=False).ledger.append("dataset.acquired", None, {"n": 1})


def test_a_deleted_ledger_key_is_never_regenerated(withdrawn):
    paths, pids = withdrawn
    pub_before = paths.ledger_public_key.read_bytes()
    paths.signing_key.unlink()
    with pytest.raises(LedgerKeyError, match=r"Restore .*ledger\.key from your key backup"):
        PrivacyCore(paths).withdraw_consent(pids[0])
    result = cli("privacy", "restrict", pids[0])
    assert result.exit_code == 2 and "never creates a new ledger key" in result.output
    assert not paths.signing_key.exists()
    assert paths.ledger_public_key.read_bytes() == pub_before


def test_an_http_witness_witnesses_and_its_checkpoint_is_checked_on_open(project, tmp_path):
    remote = Witness.create(tmp_path / "remote-host", name="witness.example.org/w1")
    server = make_server(remote, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        paths = ProjectPaths(project)
        write_overrides(
            project / "params.yaml",
            {
                "privacy.witness.witnesses": [
                    {
                        "kind": "http",
                        "url": f"http://127.0.0.1:{server.server_address[1]}",
                        "key": remote.verifier.vkey,
                    }
                ]
            },
        )
        core = PrivacyCore(paths)
        # Its operator trusts this project's log key (`visage witness add-log`).
        remote.add_log(core.witnessing.log_verifier().vkey)
        pid = core.add_subject(source="t")
        core.give_consent(pid, receipt())
        core.withdraw_consent(pid)
        n = len(lines_of(paths))
        assert remote.log(core.witnessing.origin).size == n
        paths.ledger.write_bytes(b"".join(lines_of(paths)[:-1]))
        (paths.checkpoints / "latest").unlink()
        forget_checks()
        with pytest.raises(LedgerRollbackError, match="http witness"):
            PrivacyCore(paths)
    finally:
        server.shutdown()
        server.server_close()


def test_rotating_the_ledger_key_is_followed_by_verification_and_witnesses(withdrawn, witness_dir):
    paths, pids = withdrawn
    old_pub = paths.ledger_public_key.read_bytes()
    result = cli("privacy", "rotate-ledger-key")
    assert result.exit_code == 0, result.output
    assert paths.ledger_public_key.read_bytes() != old_pub
    assert not (paths.secrets / "ledger.key.previous").exists()  # every witness accepted it
    core = PrivacyCore(paths)
    core.restrict(pids[0])  # signed by the new key, witnessed against the new pinned key
    origin = core.witnessing.origin
    state = Witness(witness_dir).log(origin)
    assert state.keys == [core.witnessing.log_verifier().vkey] and state.retired
    verify = cli("privacy", "verify-ledger")
    assert verify.exit_code == 0 and "1 key rotation(s)" in verify.output
    # The old published key still verifies the ledger (it is in the key history) ...
    old = paths.root / "old.pub"
    old.write_bytes(old_pub)
    assert cli("privacy", "verify-ledger", "--public-key", str(old)).exit_code == 0
    # ... and a cold registry follows the rotation.
    forget_checks()
    for p in paths.privacy.glob("ledger.jsonl.fold"):
        p.unlink()
    assert PrivacyCore(paths).may_process(pids[0], "training").reason == "restricted"
    assert PrivacyCore(paths).may_process(pids[2], "training").allowed


def test_a_rotation_in_a_process_of_its_own_is_witnessed(withdrawn):
    # As from a shell: the process that rotates has not bound the project at the witness yet,
    # and binds it under the key the witness does not know until it sees the rotation.
    paths, pids = withdrawn
    forget_checks()
    result = cli("privacy", "rotate-ledger-key")
    assert result.exit_code == 0, result.output
    assert not (paths.secrets / "ledger.key.previous").exists()
    forget_checks()
    PrivacyCore(paths).restrict(pids[0])  # witnessed, in a process of its own too
    assert cli("privacy", "verify-ledger").exit_code == 0


def test_an_interrupted_rotation_is_finished_by_the_next_process(withdrawn):
    paths, _ = withdrawn
    core = PrivacyCore(paths)
    new = Ed25519PrivateKey.generate()
    pem = new.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # What `rotate_key` leaves when killed after the entry and before the key swap.
    nxt = paths.secrets / "ledger.key.next"
    nxt.write_bytes(pem)
    nxt.chmod(0o600)
    ledger = core.ledger
    ledger._install_next_key = lambda key: None  # the crash: no swap
    ledger.rotate_key(new)
    nxt.write_bytes(pem)
    fresh = Ledger(
        paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key
    )
    fresh.append("dataset.acquired", None, {"n": 1})
    assert fresh.verify().ok
    assert paths.ledger_public_key.read_bytes() == public_pem(new.public_key())


@pytest.mark.parametrize(
    ("witness", "error"),
    [
        ({"kind": "http", "url": "ftp://x", "key": "w+00000000+AA"}, "http:// or https://"),
        ({"kind": "http", "url": "https://w.example"}, "verifier key"),
        ({"kind": "directory"}, "directory witness"),
        ({"kind": "carrier-pigeon", "path": "x"}, "one of 'directory', 'http'"),
    ],
)
def test_witness_params_are_validated(project, witness, error):
    write_overrides(project / "params.yaml", {"privacy.witness.witnesses": [witness]})
    with pytest.raises(ConfigError, match=error):
        load_params(project / "params.yaml")


def test_quorum_and_origin_are_validated(project):
    write_overrides(project / "params.yaml", {"privacy.witness.quorum": 2})
    with pytest.raises(ConfigError, match="at most the 1 witnesses"):
        load_params(project / "params.yaml")
    write_overrides(
        project / "params.yaml", {"privacy.witness.quorum": 0, "privacy.witness.origin": "a b"}
    )
    with pytest.raises(ConfigError, match="without spaces"):
        load_params(project / "params.yaml")


def test_cli_checkpoint_witness_status_and_log_key(withdrawn, witness_dir):
    paths, _ = withdrawn
    result = cli("privacy", "checkpoint", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["cosigned_by"] and out["checkpoint"]["size"] == len(lines_of(paths))
    status = json.loads(cli("witness", "status", "--json").output)
    origin = PrivacyCore(paths).witnessing.origin
    assert status["dir"] == str(witness_dir)
    assert {"origin": origin, "size": out["checkpoint"]["size"]}.items() <= next(
        log for log in status["logs"] if log["origin"] == origin
    ).items()
    vkey = cli("witness", "log-key").output.strip()
    assert vkey.startswith(origin + "+") and vkey in status["logs"][0]["keys"]


def test_serve_and_the_prepare_stage_refuse_a_rolled_back_ledger(withdrawn, witness_dir):
    paths, _ = withdrawn
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:-1]))
    forget_checks()
    result = cli("serve", "--mode", "analytics")
    assert result.exit_code == 2
    assert "ledger rollback" in result.output and "directory witness" in result.output
    with pytest.raises(LedgerRollbackError):
        prepare_stage.run(paths)


# ---------------------------------------------------------------------------------------------
# The recorded witness set: a witness leaves only on the record
# ---------------------------------------------------------------------------------------------


def witness_sets(paths: ProjectPaths) -> list[dict]:
    return [e for e in (json.loads(line) for line in lines_of(paths)) if e["type"] == "witness.set"]


def second_witness(project: Path, *, quorum: int = 0) -> Witness:
    """A second directory witness in params.yaml (beside the default one)."""
    second = Witness.create(project.parent / "second-volume" / "witness")
    write_overrides(
        project / "params.yaml",
        {
            "privacy.witness.witnesses": [
                {"kind": "directory", "path": "default"},
                {"kind": "directory", "path": str(second.root)},
            ],
            "privacy.witness.quorum": quorum,
        },
    )
    return second


@pytest.mark.parametrize("k", [1, 3])
def test_truncating_the_ledger_after_dropping_its_witness_from_params_is_refused(
    withdrawn, witness_dir, k
):
    """The operator removes the witness from params.yaml, deletes the local checkpoint and cuts
    the withdrawal off the ledger: the ledger itself names the witness, whose copy is read."""
    paths, pids = withdrawn
    n = len(lines_of(paths))
    write_overrides(paths.params, {"privacy.witness.witnesses": []})
    (paths.checkpoints / "latest").unlink()
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:-k]))
    forget_checks()
    with pytest.raises(LedgerRollbackError) as info:
        PrivacyCore(paths)
    msg = str(info.value)
    assert "ledger rollback" in msg and f"covers {n}" in msg and str(witness_dir) in msg
    assert cli("privacy", "subject", "show", pids[1]).exit_code == 2


def test_every_non_empty_prefix_of_a_new_projects_ledger_names_its_witnesses(
    withdrawn, witness_dir
):
    """A project with witnesses from the start: its ledger begins with their record, so no
    cut (however far back) leaves a prefix that names none. Before, the record was written at
    the first checkpoint, after the first event: a cut to that one event, with the witnesses
    out of params.yaml and the local checkpoint deleted, opened as if nothing had happened."""
    paths, _ = withdrawn
    lines = lines_of(paths)
    assert json.loads(lines[0])["type"] == WITNESS_SET
    assert len(witness_sets(paths)) == 1  # the first checkpoint found it recorded
    write_overrides(paths.params, {"privacy.witness.witnesses": []})
    (paths.checkpoints / "latest").unlink()
    for k in range(1, len(lines)):
        paths.ledger.write_bytes(b"".join(lines[:k]))
        forget_checks()
        with pytest.raises(LedgerRollbackError):
            PrivacyCore(paths)


def test_truncating_the_ledger_after_dropping_an_unreachable_witness_is_refused(
    withdrawn, witness_dir
):
    """The same with the witness's volume unmounted: its copy cannot be read, but the ledger
    still says it is a witness, so nothing opens until it is back in params.yaml."""
    paths, _ = withdrawn
    name = Witness(witness_dir).name
    write_overrides(paths.params, {"privacy.witness.witnesses": []})
    (paths.checkpoints / "latest").unlink()
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:-1]))
    witness_dir.rename(witness_dir.with_name("unmounted"))
    forget_checks()
    with pytest.raises(LedgerRollbackError) as info:
        PrivacyCore(paths)
    msg = str(info.value)
    (recorded,) = witness_sets(paths)  # the first checkpoint's, early in the ledger
    assert f"witness {name}" in msg and f"entry {recorded['seq']}" in msg
    assert "privacy.witness.witnesses" in msg and "put it back" in msg
    assert f"visage privacy remove-witness {name} --reason" in msg
    result = cli("privacy", "verify-ledger")
    assert result.exit_code == 1 and "not in params.yaml" in result.output
    # Put back (volume and params): the witness's copy shows the ledger is shorter.
    witness_dir.with_name("unmounted").rename(witness_dir)
    write_overrides(
        paths.params, {"privacy.witness.witnesses": [{"kind": "directory", "path": "default"}]}
    )
    forget_checks()
    with pytest.raises(LedgerRollbackError, match="ledger rollback"):
        PrivacyCore(paths)


def test_appending_after_dropping_the_witnesses_from_params_is_refused(withdrawn, witness_dir):
    """The other way to go unwitnessed: drop the witnesses and carry on appending."""
    paths, pids = withdrawn
    n = len(lines_of(paths))
    write_overrides(paths.params, {"privacy.witness.witnesses": []})
    forget_checks()
    result = cli("privacy", "restrict", pids[0])
    assert result.exit_code == 2 and "not in params.yaml" in result.output
    assert len(lines_of(paths)) == n
    # Nor does a process that read params.yaml before (or our code driven by hand) sign one.
    core = PrivacyCore(paths, check=False)
    stale = Witnessing(paths, load_params(paths.params).privacy.witness, core.ledger)
    with pytest.raises(LedgerRollbackError, match=r"not in params\.yaml"):
        stale.checkpoint_and_witness()


def test_lowering_the_quorum_or_dropping_a_second_witness_is_refused(project, witness_dir):
    second = second_witness(project)
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pid = core.add_subject(source="t")
    core.give_consent(pid, receipt())
    core.withdraw_consent(pid)
    write_overrides(project / "params.yaml", {"privacy.witness.quorum": 1})
    forget_checks()
    with pytest.raises(LedgerRollbackError, match=r"quorum .* 1 .* 2 .*remove-witness --quorum"):
        PrivacyCore(paths)
    (recorded,) = witness_sets(paths)
    assert recorded["payload"]["quorum"] == 0 and len(recorded["payload"]["witnesses"]) == 2
    write_overrides(
        project / "params.yaml",
        {"privacy.witness.witnesses": [{"kind": "directory", "path": "default"}]},
    )
    forget_checks()
    with pytest.raises(LedgerRollbackError, match=f"witness {second.name} "):
        PrivacyCore(paths)


def test_a_witness_added_to_params_is_recorded_and_removed_only_on_the_record(
    withdrawn, witness_dir
):
    paths, pids = withdrawn
    second = second_witness(paths.root)
    forget_checks()
    assert cli("privacy", "checkpoint").exit_code == 0  # the addition is recorded, witnessed
    _, added = witness_sets(paths)
    assert [w["vkey"] for w in added["payload"]["witnesses"]] == [
        Witness(witness_dir).verifier.vkey,
        second.verifier.vkey,
    ]
    # Still in params.yaml: nothing to remove yet.
    result = cli("privacy", "remove-witness", second.name, "--reason", "decommissioned")
    assert result.exit_code == 2 and "still in params.yaml" in result.output
    write_overrides(
        paths.params, {"privacy.witness.witnesses": [{"kind": "directory", "path": "default"}]}
    )
    forget_checks()
    assert cli("privacy", "restrict", pids[0]).exit_code == 2  # refused until on the record
    result = cli("privacy", "remove-witness", second.name, "--reason", "decommissioned")
    assert result.exit_code == 0, result.output
    assert f"{second.name} was told" in result.output
    *_, removal = witness_sets(paths)
    assert removal["payload"]["reason"] == "decommissioned"
    assert [w["vkey"] for w in removal["payload"]["witnesses"]] == [
        Witness(witness_dir).verifier.vkey
    ]
    # The witness let go cosigned the record of its removal.
    n = len(lines_of(paths))
    origin = PrivacyCore(paths, check=False).witnessing.origin
    assert second.log(origin).size == n
    assert cli("privacy", "restrict", pids[0]).exit_code == 0
    # The auditor sees the history of the witness set.
    verify = cli("privacy", "verify-ledger")
    assert verify.exit_code == 0, verify.output
    assert f"entry {added['seq']}" in verify.output and f"added {second.name}" in verify.output
    assert f"entry {removal['seq']}" in verify.output
    assert f"removed {second.name} (reason decommissioned" in verify.output


def test_a_project_without_witnesses_records_none_until_one_is_configured(project, witness_dir):
    write_overrides(project / "params.yaml", {"privacy.witness.witnesses": []})
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pid = core.add_subject(source="t")
    core.give_consent(pid, receipt())
    core.withdraw_consent(pid)
    assert witness_sets(paths) == []
    # An existing ledger gains its record at its first checkpoint with a witness.
    write_overrides(
        project / "params.yaml",
        {"privacy.witness.witnesses": [{"kind": "directory", "path": "default"}]},
    )
    forget_checks()
    PrivacyCore(paths).restrict(pid)
    (recorded,) = witness_sets(paths)
    assert witness_size(paths, witness_dir) == len(lines_of(paths)) > recorded["seq"]


def test_a_copy_run_with_a_witness_of_its_own_takes_a_copy_of_the_witness(
    withdrawn, witness_dir, tmp_path, monkeypatch
):
    """README: experiments run on a copy with `VISAGE_WITNESS_DIR=/tmp/w`. The ledger records
    its witness's key, so an empty folder there is refused (it is how a cut would be laundered,
    test_redteam_witness_set.py); a copy of the witness folder goes with the copy."""
    paths, pids = withdrawn
    copy = paths.root.parent / "experiment"
    shutil.copytree(paths.root, copy)
    own = tmp_path / "experiment-witness"
    monkeypatch.setenv("VISAGE_WITNESS_DIR", str(own))
    forget_checks()
    with pytest.raises(WitnessSetError, match="VISAGE_WITNESS_DIR"):
        PrivacyCore(ProjectPaths(copy))
    assert not own.exists()  # the check made no witness there
    shutil.copytree(witness_dir, own)
    forget_checks()
    PrivacyCore(ProjectPaths(copy)).restrict(pids[0])
    assert len(witness_sets(ProjectPaths(copy))) == 1
    # The original's witness never saw the copy's entries: the original goes on.
    monkeypatch.setenv("VISAGE_WITNESS_DIR", str(witness_dir))
    forget_checks()
    assert PrivacyCore(paths).may_process(pids[0], "training").allowed


def test_the_removal_command_does_not_launder_a_truncated_ledger(withdrawn, witness_dir):
    """Cut back first, then remove the witness "on the record": its copy is read before the
    record is written, and it would refuse to cosign a shorter tree anyway."""
    paths, _ = withdrawn
    name = Witness(witness_dir).name
    write_overrides(paths.params, {"privacy.witness.witnesses": []})
    (paths.checkpoints / "latest").unlink()
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:-1]))
    n = len(lines_of(paths))
    forget_checks()
    result = cli("privacy", "remove-witness", name, "--reason", "decommissioned")
    assert result.exit_code == 2 and "ledger rollback" in result.output
    assert len(lines_of(paths)) == n


def test_a_witness_that_cannot_be_reached_is_removed_on_the_record_untold(withdrawn, witness_dir):
    paths, pids = withdrawn
    second = second_witness(paths.root)
    forget_checks()
    PrivacyCore(paths).restrict(pids[0])  # witnessed by both; the second is now recorded
    witnessed = second.log(PrivacyCore(paths).witnessing.origin).size
    name = second.name
    second.root.rename(second.root.with_name("lost"))
    write_overrides(
        paths.params, {"privacy.witness.witnesses": [{"kind": "directory", "path": "default"}]}
    )
    forget_checks()
    result = cli(
        "privacy", "remove-witness", name, "--reason", "volume_lost", "--lost-for-good", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["told"] == {name: False}
    assert json.loads(result.output)["lost"] == [name]
    assert not second.root.exists()  # no new witness made where the old one was
    assert (
        Witness(second.root.with_name("lost")).log(PrivacyCore(paths).witnessing.origin).size
        == witnessed
    )
    assert PrivacyCore(paths).may_process(pids[1], "training").reason == "consent_withdrawn"


# ---------------------------------------------------------------------------------------------
# A recorded witness is its key; every witness ever recorded is read
# ---------------------------------------------------------------------------------------------


def test_a_witness_folder_moved_and_pointed_at_again_is_the_same_witness(
    withdrawn, witness_dir, monkeypatch
):
    paths, pids = withdrawn
    moved = witness_dir.parent.parent / "new-volume" / "witness"
    moved.parent.mkdir()
    witness_dir.rename(moved)
    monkeypatch.setenv("VISAGE_WITNESS_DIR", str(moved))
    forget_checks()
    core = PrivacyCore(paths)
    assert core.may_process(pids[1], "training").reason == "consent_withdrawn"
    core.restrict(pids[0])  # cosigned by the witness in its new folder
    assert witness_size(paths, moved) == len(lines_of(paths))
    assert len(witness_sets(paths)) == 1  # the same witness: nothing to record
    assert not witness_dir.exists()


@pytest.mark.parametrize("remade", ["empty", "another witness"])
def test_a_default_witness_folder_deleted_and_made_again_is_refused(withdrawn, witness_dir, remade):
    paths, pids = withdrawn
    name = Witness(witness_dir).name
    n = len(lines_of(paths))
    shutil.rmtree(witness_dir)
    if remade == "empty":
        witness_dir.mkdir()
    else:
        Witness.create(witness_dir)
    forget_checks()
    with pytest.raises(WitnessSetError) as info:
        PrivacyCore(paths)
    msg = str(info.value)
    assert f"witness {name} (the default directory witness" in msg and str(witness_dir) in msg
    assert ("holds no witness" if remade == "empty" else "holds another witness") in msg
    assert "point VISAGE_WITNESS_DIR" in msg and f"holding key {name}" in msg
    assert f"visage privacy remove-witness {name} --reason" in msg
    if remade == "empty":
        assert list(witness_dir.iterdir()) == []  # compared as found: no key was made
    result = cli("privacy", "restrict", pids[0])
    assert result.exit_code == 2 and "point VISAGE_WITNESS_DIR" in result.output
    assert len(lines_of(paths)) == n
    # What the message offers: the new witness in that folder, on the record; the old one, the
    # only one, cannot be read, so only as lost for good.
    result = cli("privacy", "remove-witness", name, "--reason", "volume_lost")
    assert result.exit_code == 2 and "--lost-for-good" in result.output
    result = cli("privacy", "remove-witness", name, "--reason", "volume_lost", "--lost-for-good")
    assert result.exit_code == 0, result.output
    *_, record = witness_sets(paths)
    assert [w["vkey"] for w in record["payload"]["witnesses"]] == [
        Witness(witness_dir).verifier.vkey
    ]
    forget_checks()
    assert PrivacyCore(paths).may_process(pids[1], "training").reason == "consent_withdrawn"


def test_a_witness_removed_on_the_record_is_still_read_and_later_opens_pass(withdrawn, witness_dir):
    paths, pids = withdrawn
    second = second_witness(paths.root)
    forget_checks()
    PrivacyCore(paths).restrict(pids[0])  # the second witness is recorded and cosigns
    write_overrides(
        paths.params, {"privacy.witness.witnesses": [{"kind": "directory", "path": "default"}]}
    )
    forget_checks()
    result = cli("privacy", "remove-witness", second.name, "--reason", "decommissioned")
    assert result.exit_code == 0, result.output
    origin = PrivacyCore(paths, check=False).witnessing.origin
    let_go = second.log(origin).size
    core = PrivacyCore(paths)
    core.withdraw_consent(pids[2])
    core.object(pids[0], ["identification"])
    assert len(lines_of(paths)) > let_go
    forget_checks()
    assert not PrivacyCore(paths).may_process(pids[2], "training").allowed
    # Its copy, a prefix of the ledger, is still read by the open check.
    verify = cli("privacy", "verify-ledger", "--json")
    assert verify.exit_code == 0, verify.output
    checked = {c["source"]: c["size"] for c in json.loads(verify.output)["checkpoints"]}
    assert checked[f"directory witness {second.root}"] == let_go


def test_the_default_witness_is_read_but_never_made_by_the_open_check(
    project, tmp_path, monkeypatch
):
    """A project without witnesses: the open check looks for the default directory witness
    (a ledger cut back to before its first record names none), and makes nothing."""
    write_overrides(project / "params.yaml", {"privacy.witness.witnesses": []})
    nowhere = tmp_path / "no-witness-here"
    monkeypatch.setenv("VISAGE_WITNESS_DIR", str(nowhere))
    forget_checks()
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    pid = core.add_subject(source="t")
    core.give_consent(pid, receipt())
    core.withdraw_consent(pid)
    forget_checks()
    assert not PrivacyCore(paths).may_process(pid, "training").allowed
    assert not nowhere.exists()


def test_a_note_says_when_every_witness_is_a_folder():
    from visage_ml.config import WitnessParams, WitnessSpec
    from visage_ml.privacy.witnessed import independence_note

    assert "someone else runs" in independence_note(WitnessParams())
    remote = WitnessSpec(kind="http", url="https://w.example.org", key="w.example.org/w1+00+AA")
    both = WitnessParams(witnesses=(WitnessSpec(kind="directory", path="default"), remote))
    assert independence_note(both) is None


def test_a_witness_set_rewritten_in_place_after_a_read_is_read_again(tmp_path):
    # The sets a process has read are those on disk: a quorum rewritten in place (the same
    # length, the last line unchanged) is seen at once, and so is the good line put back.
    from visage_ml.privacy.witnessed import witness_sets as sets_in

    def line(seq: int, quorum: int) -> bytes:
        payload = {"witnesses": [], "quorum": quorum}
        obj = {"seq": seq, "time": "t", "type": "witness.set", "payload": payload}
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"

    path = tmp_path / "ledger.jsonl"
    other = b'{"seq":1,"type":"subject.added"}\n'
    path.write_bytes(line(0, 2) + other)
    assert [s.quorum for s in sets_in(path)] == [2]
    with open(path, "r+b") as fh:
        fh.write(line(0, 1))
    assert [s.quorum for s in sets_in(path)] == [1]
    with open(path, "r+b") as fh:
        fh.write(line(0, 2))
    assert [s.quorum for s in sets_in(path)] == [2]
