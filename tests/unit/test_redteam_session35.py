"""Red-team (session 35): removing a witness that cannot be read (``--lost-for-good``) and a
directory witness that cannot show what it cosigned (privacy/witnessed.py).

The adversary is an operator with the project's disk and the ledger key who wants a withdrawal
forgotten; the other side is a legitimate user whose witness volume is lost or damaged.
"""

from __future__ import annotations

import threading

import pytest
from project_helpers import write_overrides
from test_redteam_witness_set import still_refused
from test_witnessed import (  # noqa: F401 - fixtures
    cli,
    lines_of,
    receipt,
    withdrawn,
    witness_dir,
    witness_sets,
)

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.witness import Witness, make_server
from visage_ml.privacy.witnessed import WITNESS_SET, WitnessUnavailableError, forget_checks

DEFAULT = {"kind": "directory", "path": "default"}


def _default_and_remote(project, tmp_path, port: int = 0):
    """The default directory witness and one on another host (a ``visage witness serve``
    here), both needed: ``(remote, server, http spec, paths, core)``."""
    remote = Witness.create(tmp_path / "remote-host", name="witness.example.org/w1")
    server = make_server(remote, "127.0.0.1", port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    http = {"kind": "http", "url": url, "key": remote.verifier.vkey}
    write_overrides(
        project / "params.yaml",
        {
            "privacy.witness.witnesses": [DEFAULT, http],
            "privacy.witness.quorum": 0,
            "privacy.witness.timeout_seconds": 2.0,
        },
    )
    paths = ProjectPaths(project)
    core = PrivacyCore(paths)
    remote.add_log(core.witnessing.log_verifier().vkey)
    return remote, server, http, paths, core


def _lose_default_witness_for_good(paths: ProjectPaths, witness_dir) -> str:  # noqa: F811
    """The default witness's volume is lost: let it go with --lost-for-good (as the refusal
    says), then configure a new default witness in the same place. Returns the new one's name."""
    old = Witness(witness_dir).name
    witness_dir.rename(witness_dir.with_name("lost-volume"))
    write_overrides(paths.params, {"privacy.witness.witnesses": []})
    forget_checks()
    result = cli("privacy", "remove-witness", old, "--reason", "volume_lost", "--lost-for-good")
    assert result.exit_code == 0, result.output
    assert f"LOST: {old}" in result.output
    return old


@pytest.mark.parametrize("where", ["same_folder", "default_pointed_at_it"])
def test_a_new_witness_is_not_excused_by_an_old_one_lost_in_the_same_place(
    withdrawn,  # noqa: F811
    witness_dir,  # noqa: F811
    tmp_path,
    monkeypatch,
    where,
):
    # Once, the default witness was lost for good and recorded so. A new witness now guards
    # the ledger (in the default folder again, or on another volume). The operator cuts a later
    # withdrawal off and deletes the new witness's state for this ledger, keeping the folder's
    # binding: README says such a folder "stops every process until it is restored or let go
    # [with --lost-for-good]". The lost record of the *old* witness must not excuse it (when the
    # new one is elsewhere, VISAGE_WITNESS_DIR points "default" at it for the attack).
    paths, pids = withdrawn
    old = _lose_default_witness_for_good(paths, witness_dir)
    if where == "same_folder":
        folder = witness_dir
        spec = DEFAULT
    else:
        folder = tmp_path / "third-volume" / "witness"
        spec = {"kind": "directory", "path": str(folder)}
    new = Witness.create(folder)
    write_overrides(paths.params, {"privacy.witness.witnesses": [spec]})
    forget_checks()
    core = PrivacyCore(paths)
    core.withdraw_consent(pids[0])  # cosigned by the new witness
    assert new.name != old and new.log(core.witnessing.origin).size == len(lines_of(paths))
    # The attack: cut the withdrawal off; delete the new witness's state (binding kept).
    lines = lines_of(paths)
    (cut,) = [
        i for i, line in enumerate(lines) if pids[0].encode() in line and b"withdrawn" in line
    ]
    paths.ledger.write_bytes(b"".join(lines[:cut]))
    (paths.checkpoints / "latest").unlink()
    new.state_path(core.witnessing.origin).unlink()
    if where == "default_pointed_at_it":
        monkeypatch.setenv("VISAGE_WITNESS_DIR", str(folder))
    still_refused(paths, pids[0])


def test_removing_a_witness_that_alone_holds_the_last_checkpoint_is_recorded_as_lost(
    project,
    witness_dir,  # noqa: F811
    tmp_path,
):
    # Two witnesses, both needed: the default folder (this disk) and one on another host. The
    # other host is down when a subject withdraws (the command fails; the withdrawal stays in
    # force, cosigned by the default witness alone). The host comes back; the default witness's
    # volume is then lost (or deleted by the operator) and the ledger cut back. Removing the
    # default witness: the one left "holds a checkpoint", but not the one only the lost witness
    # cosigned, so the removal must need --lost-for-good (the record then says LOST).
    remote, server, http, paths, core = _default_and_remote(project, tmp_path)
    port = server.server_address[1]
    pid = core.add_subject(source="t")
    core.give_consent(pid, receipt())
    core.checkpoint_and_witness()  # both cosign
    before = len(lines_of(paths))
    server.shutdown()
    server.server_close()
    with pytest.raises(WitnessUnavailableError):
        core.withdraw_consent(pid)  # in force; cosigned by the default witness alone
    assert not core.may_process(pid, "training").allowed
    origin = core.witnessing.origin
    assert Witness(witness_dir).log(origin).size > before == remote.log(origin).size
    server = make_server(remote, "127.0.0.1", port)  # the host is back
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        name = Witness(witness_dir).name
        paths.ledger.write_bytes(b"".join(lines_of(paths)[:before]))
        (paths.checkpoints / "latest").unlink()
        witness_dir.rename(witness_dir.with_name("lost-volume"))
        write_overrides(paths.params, {"privacy.witness.witnesses": [http]})
        forget_checks()
        result = cli("privacy", "remove-witness", name, "--reason", "volume_lost")
        assert result.exit_code == 2 and "--lost-for-good" in result.output, (
            f"removed as covered, no LOST on the record:\n{result.output}"
        )
        still_refused(paths, pid)
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("lost", ["the kept witness", "another key at its path"])
def test_a_signed_record_calling_lost_what_it_keeps_excuses_none_of_its_damage(
    withdrawn,  # noqa: F811
    witness_dir,  # noqa: F811
    tmp_path,
    lost,
):
    # With the ledger key: cut the withdrawal off, sign a witness.set that keeps the witness but
    # calls it lost (no command writes one), or calls lost a throwaway key at its folder; and
    # garble its state.
    paths, pids = withdrawn
    core = PrivacyCore(paths, check=False)
    Witness(witness_dir).state_path(core.witnessing.origin).write_bytes(b"{")
    (kept,) = [w.to_payload() for w in core.witnessing.recorded().witnesses]
    decoy = kept
    if lost == "another key at its path":
        decoy = dict(kept, vkey=Witness.create(tmp_path / "decoy").verifier.vkey)
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:-1]))
    (paths.checkpoints / "latest").unlink()
    forget_checks()
    ledger = PrivacyCore(paths, check=False).ledger
    ledger.after_append = None
    ledger.append(WITNESS_SET, None, {"witnesses": [kept], "quorum": 0, "lost": [decoy]})
    still_refused(paths, pids[1])


def test_the_refusal_to_remove_says_what_cannot_be_told_not_that_no_witness_holds_it(
    project,
    witness_dir,  # noqa: F811
    tmp_path,
):
    # Legitimate: the default witness's volume is lost; the witness on another host, which
    # holds every checkpoint, is down for the moment. The refusal must not say that no witness
    # left holds the checkpoints (untrue here); it says what cannot be told, and the way out.
    _, server, http, paths, core = _default_and_remote(project, tmp_path)
    pid = core.add_subject(source="t")
    core.give_consent(pid, receipt())
    core.withdraw_consent(pid)  # cosigned by both
    server.shutdown()
    server.server_close()
    name = Witness(witness_dir).name
    witness_dir.rename(witness_dir.with_name("lost-volume"))
    write_overrides(paths.params, {"privacy.witness.witnesses": [http]})
    forget_checks()
    result = cli("privacy", "remove-witness", name, "--reason", "volume_lost")
    assert result.exit_code == 2
    assert "no witness left holds every checkpoint" not in " ".join(result.output.split())
    assert "may hold a checkpoint no witness left holds" in " ".join(result.output.split())
    assert "--lost-for-good" in result.output
