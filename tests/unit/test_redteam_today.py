"""Red-team: an erasure before sealing (no photograph's hash on the record, every object
certified) and the witnesses the ledger's open check reads (privacy/witnessed.py).

Each test is an attack by an operator with the project's disk or a regulator counting what was
certified, or the legitimate use a defence must leave open.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
from project_helpers import write_overrides
from rights_fakes import make_project
from test_erasure import _dvc, _objects, md5_bytes
from test_redteam_plaintext import (  # noqa: F401 - fixtures
    assert_no_object_of,
    dvc_plain,
    names_of,
    pids_linked,
    unseal,
)
from test_redteam_witness_set import (  # noqa: F401 - fixtures
    drop_witnesses,
    later_withdrawal,
    only_the_default_witness,
    recorded_second_witness,
    still_refused,
)
from test_witnessed import (  # noqa: F401 - fixtures
    cli,
    lines_of,
    receipt,
    second_witness,
    withdrawn,
    witness_dir,
)

from visage_ml.config import ProjectPaths
from visage_ml.privacy.core import PrivacyCore
from visage_ml.privacy.witness import KEY_FILE, STATE_FILE, VKEY_FILE, Witness, make_server
from visage_ml.privacy.witnessed import WitnessSetError, forget_checks
from visage_ml.rights import dvc_objects
from visage_ml.rights.certify import verify_certificate
from visage_ml.rights.content_hashes import PLAINTEXT_WITHHELD
from visage_ml.rights.erasure import Erasure

# ---------------------------------------------------------------------------------------------
# Erasure before sealing: every object removed is certified, none by its hash
# ---------------------------------------------------------------------------------------------


def test_a_photograph_in_clear_of_another_format_is_not_named_by_its_hash(project):
    # The dvc step takes every file of the subject's folder that is not sealed for a file in
    # clear; the raw step must too, whatever its extension (a .webp, a .png.bak left beside).
    proj = make_project(project, n_subjects=3)
    victim = proj.pids[0]
    pngs = unseal(proj, victim)
    for i, f in enumerate(sorted((proj.paths.raw / victim).glob("*.png"))):
        f.rename(f.with_suffix(".webp" if i == 0 else ".png.bak"))
    result = Erasure(proj.paths).erase(victim)
    assert pids_linked(proj.paths, names_of(pngs)) == set()
    raw = [a for a in result.certificate["claims"]["artefacts"] if f"/{victim}/" in a["path"]]
    assert len(raw) == len(pngs)
    assert {a["content"] for a in raw} == {PLAINTEXT_WITHHELD}
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


@pytest.mark.pipeline
def test_two_versions_of_one_plaintext_photo_are_both_certified(dvc_plain):  # noqa: F811
    # The victim's first PNG was rewritten in place and tracked again (two objects, both
    # listed as the same file by two manifests): the certificate names one object per object
    # removed, in each store, without either's hash.
    proj, victim, pngs, remote = dvc_plain
    first = sorted((proj.paths.raw / victim).glob("*.png"))[0]
    edited = first.read_bytes() + b"\0"
    first.write_bytes(edited)
    dvc_objects.add(proj.paths.root, proj.paths.raw)
    assert _dvc(proj.paths.root, "push").returncode == 0
    objects = {md5_bytes(p) for p in [*pngs, edited]}
    assert objects <= set(_objects(remote))
    result = Erasure(proj.paths).erase(victim)
    assert_no_object_of(proj, victim, [*pngs, edited], remote)
    withheld = [
        a
        for a in result.certificate["claims"]["artefacts"]
        if a["step"] == "dvc" and a.get("content") == PLAINTEXT_WITHHELD
    ]
    assert len(withheld) == 2 * len(objects), [a["path"] for a in withheld]
    cert = result.certificate_path.read_text(encoding="utf-8")
    assert not [h for h in objects if h in cert]
    assert verify_certificate(result.certificate_path, root=proj.paths.root).ok


# ---------------------------------------------------------------------------------------------
# Witnesses: a recorded directory witness is read whenever its folder holds its checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.pipeline
def test_a_plan_of_an_earlier_version_naming_a_webp_by_its_hash_is_not_certified_so(
    dvc_plain,  # noqa: F811
    monkeypatch,
):
    # An erasure begun by an earlier version, whose raw plan gave every file of the subject's
    # folder its MD5 and whose DVC step deleted the .dir manifests first, then was cut short,
    # and finished by this one: the plan alone names the objects left. The DVC step must take
    # a photograph in clear of any extension for one, and certify its object without its MD5.
    from visage_ml.rights.erasure import raw as raw_step
    from visage_ml.rights.erasure.base import file_artefact

    proj, victim, _, remote = dvc_plain
    first = sorted((proj.paths.raw / victim).glob("*.png"))[0]
    webp = first.read_bytes()
    first.rename(first.with_suffix(".webp"))
    # Recorded so: without the record's listing, the erasure checks that data/raw is what
    # data/raw.dvc holds before anything is erased.
    dvc_objects.add(proj.paths.root, proj.paths.raw)
    for folder in (proj.paths.root / ".dvc" / "cache", remote):
        for f in folder.rglob("*.dir"):
            f.unlink()
    monkeypatch.setattr(
        raw_step, "withheld_artefact", lambda ctx, store, f: file_artefact(ctx, store, f, md5=True)
    )
    result = Erasure(proj.paths).erase(victim)
    dvc_claims = [
        a for a in result.certificate["claims"]["artefacts"] if a["store"].startswith("dvc")
    ]
    assert dvc_claims
    assert md5_bytes(webp) not in json.dumps(dvc_claims)
    for folder in (proj.paths.root / ".dvc" / "cache", remote):
        assert md5_bytes(webp) not in _objects(folder)  # and its object is gone all the same


def test_deleting_the_witness_private_key_does_not_hide_its_checkpoint(withdrawn, witness_dir):  # noqa: F811
    # The folder still publishes the recorded key (witness.vkey), so the witness "is there";
    # without witness.key its checkpoint of the withdrawal must still be read.
    paths, pids = withdrawn
    (witness_dir / KEY_FILE).unlink()
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:-1]))
    (paths.checkpoints / "latest").unlink()
    still_refused(paths, pids[1])


def test_a_default_witness_stripped_of_its_keys_is_still_read(later_withdrawal, witness_dir):  # noqa: F811
    # A ledger cut to before its first witness.set names no witness; the default folder's
    # checkpoints are read whether or not its key files are left.
    paths, pids, first_seq, _ = later_withdrawal
    (witness_dir / KEY_FILE).unlink()
    (witness_dir / VKEY_FILE).unlink()
    drop_witnesses(paths)
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:first_seq]))
    still_refused(paths, pids[2])


@pytest.mark.parametrize("how", ["deleted", "garbled"])
def test_a_witness_state_file_deleted_or_garbled_does_not_hide_its_checkpoint(
    withdrawn,  # noqa: F811
    witness_dir,  # noqa: F811
    how,
):
    paths, pids = withdrawn
    origin = PrivacyCore(paths, check=False).witnessing.origin
    state = Witness(witness_dir)._log_dir(origin) / STATE_FILE
    assert state.is_file()
    if how == "deleted":
        state.unlink()
    else:
        state.write_bytes(b"{")
    paths.ledger.write_bytes(b"".join(lines_of(paths)[:-1]))
    (paths.checkpoints / "latest").unlink()
    still_refused(paths, pids[1])
    forget_checks()
    with pytest.raises(WitnessSetError) as info:
        PrivacyCore(paths)
    msg = str(info.value)
    assert "cannot show what it cosigned" in msg and "restore that folder" in msg
    assert "--lost-for-good" in msg


def test_a_witness_whose_state_is_lost_for_good_is_let_go_on_the_record(
    withdrawn,  # noqa: F811
    witness_dir,  # noqa: F811
):
    # The way out the refusal offers, when the folder really is damaged (nothing was cut).
    paths, pids = withdrawn
    core = PrivacyCore(paths, check=False)
    name = Witness(witness_dir).name
    state = Witness(witness_dir).state_path(core.witnessing.origin)
    state.write_bytes(b"{")
    drop_witnesses(paths)
    forget_checks()
    result = cli("privacy", "remove-witness", name, "--reason", "disk_damaged")
    assert result.exit_code == 2 and "--lost-for-good" in result.output
    result = cli("privacy", "remove-witness", name, "--reason", "disk_damaged", "--lost-for-good")
    assert result.exit_code == 0, result.output
    assert state.read_bytes() == b"{"  # left as found, not reset to the present ledger
    forget_checks()
    assert PrivacyCore(paths).may_process(pids[1], "training").reason == "consent_withdrawn"
    assert f"LOST: {name}" in cli("privacy", "verify-ledger").output


def test_a_witness_removed_in_the_ordinary_way_then_damaged_does_not_stop_the_project(
    withdrawn,  # noqa: F811
    witness_dir,  # noqa: F811
):
    # It holds nothing newer than its removal, which the ledger records after it.
    paths, pids = withdrawn
    second = recorded_second_witness(paths, pids[0])
    only_the_default_witness(paths)
    result = cli("privacy", "remove-witness", second.name, "--reason", "decommissioned")
    assert result.exit_code == 0, result.output
    second.state_path(PrivacyCore(paths).witnessing.origin).write_bytes(b"{")
    forget_checks()
    core = PrivacyCore(paths)
    core.restrict(pids[2])
    assert core.may_process(pids[1], "training").reason == "consent_withdrawn"


def test_a_witness_removed_on_the_record_that_now_hangs_does_not_slow_every_open(
    project,
    witness_dir,  # noqa: F811
):
    remote = Witness.create(witness_dir.parent / "remote-host", name="witness.example.org/w1")
    server = make_server(remote, "127.0.0.1", 0)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    default = {"kind": "directory", "path": "default"}
    hung = socket.socket()
    try:
        write_overrides(
            project / "params.yaml",
            {
                "privacy.witness.witnesses": [
                    default,
                    {"kind": "http", "url": url, "key": remote.verifier.vkey},
                ],
                "privacy.witness.timeout_seconds": 2.0,
            },
        )
        paths = ProjectPaths(project)
        core = PrivacyCore(paths)
        remote.add_log(core.witnessing.log_verifier().vkey)
        pid = core.add_subject(source="t")
        core.give_consent(pid, receipt())
        core.withdraw_consent(pid)  # cosigned by both
        write_overrides(paths.params, {"privacy.witness.witnesses": [default]})
        forget_checks()
        result = cli("privacy", "remove-witness", remote.name, "--reason", "decommissioned")
        assert result.exit_code == 0, result.output
    finally:
        server.shutdown()
        server.server_close()
    # Its host now accepts connections and never answers.
    hung.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    hung.bind(("127.0.0.1", port))
    hung.listen(8)
    try:
        forget_checks()  # a new process: a CLI command, a stage
        t = time.perf_counter()
        assert not PrivacyCore(paths).may_process(pid, "training").allowed
        assert time.perf_counter() - t < 1.5
        # The next process does not ask it again for an hour (its silence is on disk).
        assert f"http witness {url}" in json.loads((paths.checkpoints / "silent.json").read_text())
        forget_checks()
        t = time.perf_counter()
        assert not PrivacyCore(paths).may_process(pid, "training").allowed
        assert time.perf_counter() - t < 0.5
    finally:
        hung.close()
