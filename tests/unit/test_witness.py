"""The witness: tlog-witness add-checkpoint (statuses, persistence, HTTP), log key rotation."""

from __future__ import annotations

import base64
import json
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visage_ml.config import ProjectPaths
from visage_ml.privacy import merkle
from visage_ml.privacy.checkpoint import (
    Checkpoint,
    Note,
    Signer,
    format_add_checkpoint,
    parse_note,
    parse_signature_line,
    verified_cosigners,
)
from visage_ml.privacy.keys import new_pid
from visage_ml.privacy.ledger import Ledger
from visage_ml.privacy.witness import (
    HttpWitness,
    Witness,
    WitnessError,
    binding_text,
    make_server,
    project_id,
)

ORIGIN = "example.org/test-log"


class Log:
    """A tiny log: leaves, a key, signed checkpoints and proofs."""

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self.leaves: list[bytes] = []
        self.signer = Signer(ORIGIN, key or Ed25519PrivateKey.generate())

    def add(self, n: int) -> None:
        self.leaves += [f"entry {len(self.leaves) + i}".encode() for i in range(n)]

    def note(self, size: int | None = None, *, signer: Signer | None = None) -> bytes:
        size = len(self.leaves) if size is None else size
        cp = Checkpoint(ORIGIN, size, merkle.root(self.leaves[:size]))
        return Note(cp.text(), ((signer or self.signer).sign(cp.text()),)).to_bytes()

    def proof(self, old: int, size: int | None = None) -> list[bytes]:
        size = len(self.leaves) if size is None else size
        if old in (0, size):
            return []
        hashes = [merkle.leaf_hash(x) for x in self.leaves[:size]]
        return merkle.consistency_proof(hashes, old)


@pytest.fixture
def witness(tmp_path: Path) -> Witness:
    return Witness.create(tmp_path / "w", name="witness.example/w1")


@pytest.fixture
def log(witness: Witness) -> Log:
    lg = Log()
    witness.add_log(lg.signer.verifier().vkey)
    return lg


def status_of(fn) -> tuple[int, int | None]:
    with pytest.raises(WitnessError) as info:
        fn()
    return info.value.status, info.value.size


def test_cosigns_a_consistent_checkpoint_and_persists_it(witness, log):
    log.add(5)
    sig = witness.add_checkpoint(0, [], log.note())
    note = parse_note(log.note())
    assert verified_cosigners(Note(note.text, (sig,)), [witness.verifier]) == [witness.verifier]
    log.add(7)
    witness.add_checkpoint(5, log.proof(5), log.note())
    # A fresh process sees the stored state: size, root and the cosigned checkpoint.
    again = Witness(witness.root).log(ORIGIN)
    assert again.size == 12 and again.root == merkle.root(log.leaves)
    stored = parse_note(again.checkpoint)
    assert verified_cosigners(stored, [witness.verifier])
    assert (witness.root / "witness.key").stat().st_mode & 0o777 == 0o600


def test_refuses_what_the_spec_says_with_the_status_it_says(witness, log, tmp_path):
    log.add(8)
    witness.add_checkpoint(0, [], log.note(6))
    # Unknown origin: 404.
    stranger = Log()
    stranger.signer = Signer("example.org/other", Ed25519PrivateKey.generate())
    cp = Checkpoint("example.org/other", 1, merkle.root([b"x"]))
    other = Note(cp.text(), (stranger.signer.sign(cp.text()),)).to_bytes()
    assert status_of(lambda: witness.add_checkpoint(0, [], other)) == (404, None)
    # Signed by a key the witness does not pin: 403.
    rogue = Signer(ORIGIN, Ed25519PrivateKey.generate())
    assert (
        status_of(lambda: witness.add_checkpoint(6, log.proof(6), log.note(signer=rogue)))[0] == 403
    )
    # Old size larger than the checkpoint: 400.
    assert status_of(lambda: witness.add_checkpoint(9, [], log.note(8)))[0] == 400
    # Old size is not what the witness cosigned last: 409 with its size.
    assert status_of(lambda: witness.add_checkpoint(3, log.proof(3), log.note())) == (409, 6)
    assert status_of(lambda: witness.add_checkpoint(0, [], log.note())) == (409, 6)
    # A proof that does not verify: 422.
    bad = log.proof(6)
    bad[0] = bytes(32)
    assert status_of(lambda: witness.add_checkpoint(6, bad, log.note()))[0] == 422
    # A smaller tree (rollback): 409 or 400, never a cosignature.
    assert status_of(lambda: witness.add_checkpoint(6, [], log.note(4)))[0] == 400
    assert Witness(witness.root).log(ORIGIN).size == 6  # nothing moved


def test_a_forked_history_is_refused_at_the_same_size_and_beyond(witness, log):
    log.add(10)
    witness.add_checkpoint(0, [], log.note())
    fork = Log(log.signer.private_key)  # the stolen key rewrites history after entry 6
    fork.leaves = [*log.leaves[:6], *(b"forged %d" % i for i in range(4))]
    assert status_of(lambda: witness.add_checkpoint(10, [], fork.note()))[0] == 409
    fork.add(3)
    assert status_of(lambda: witness.add_checkpoint(10, fork.proof(10), fork.note()))[0] == 422
    assert Witness(witness.root).log(ORIGIN).root == merkle.root(log.leaves)


def test_concurrent_requests_never_roll_the_witness_back(witness, log):
    log.add(40)
    witness.add_checkpoint(0, [], log.note(10))
    outcomes: list[object] = []

    def submit(size: int) -> None:
        try:
            outcomes.append(witness.add_checkpoint(10, log.proof(10, size), log.note(size)))
        except WitnessError as exc:
            outcomes.append(exc.status)

    threads = [threading.Thread(target=submit, args=(s,)) for s in (20, 30, 40, 15)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Exactly one request from size 10 wins; the others see 409: no size is ever lowered.
    assert sum(1 for o in outcomes if o == 409) == 3
    assert Witness(witness.root).log(ORIGIN).size in (15, 20, 30, 40)


def _post(url: str, body: bytes):
    """POST ``body`` to a loopback witness (http only)."""
    req = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - http://127.0.0.1
    return urllib.request.urlopen(req, timeout=10)  # noqa: S310 - http://127.0.0.1


def test_http_add_checkpoint_speaks_the_protocol(witness, log):
    server = make_server(witness, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        log.add(4)
        with _post(url + "/add-checkpoint", format_add_checkpoint(0, [], log.note())) as resp:
            assert resp.status == 200
            line = resp.read().decode()
        sig = parse_signature_line(line.rstrip("\n"))
        assert verified_cosigners(
            Note(parse_note(log.note()).text, (sig,)), [witness.verifier]
        ) == [witness.verifier]
        # 409: the body is the witness's size, with the spec's content type.
        log.add(2)
        with pytest.raises(urllib.error.HTTPError) as info:
            _post(url + "/add-checkpoint", format_add_checkpoint(0, [], log.note()))
        assert info.value.code == 409
        assert info.value.headers["Content-Type"] == "text/x.tlog.size"
        assert info.value.read() == b"4\n"
        # The client: known witness key, retry from the size it reports.
        client = HttpWitness(url, witness.verifier.vkey)
        with pytest.raises(WitnessError) as conflict:
            client.add_checkpoint(0, [], log.note())
        assert conflict.value.size == 4
        client.add_checkpoint(4, log.proof(4), log.note())
        assert parse_note(client.latest(ORIGIN)).text == parse_note(log.note()).text
        assert client.latest("example.org/unknown") is None
        # A body larger than the limit is refused before it is read.
        with pytest.raises(urllib.error.HTTPError) as info:
            _post(url + "/add-checkpoint", b"x" * 70_000)
        assert info.value.code == 413
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_http_witness_is_an_error_not_a_cosignature():
    client = HttpWitness("http://127.0.0.1:9", "w+00000000+" + "A" * 44, timeout=2)
    with pytest.raises(WitnessError) as info:
        client.latest(ORIGIN)
    assert info.value.status == 503 and "unreachable" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Log key rotation
# ---------------------------------------------------------------------------------------------


def _ledger(root: Path) -> Ledger:
    paths = ProjectPaths(root)
    return Ledger(paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key)


def _cosign_all(witness: Witness, ledger: Ledger, signers: list[Signer], old: int) -> int:
    hashes = ledger.leaf_hashes()
    tree = merkle.MerkleTree(hashes)
    text = Checkpoint(ORIGIN, tree.size, tree.root()).text()
    note = Note(text, tuple(s.sign(text) for s in signers)).to_bytes()
    witness.add_checkpoint(old, tree.consistency_proof(old) if 0 < old < tree.size else [], note)
    return tree.size


def test_a_witness_accepts_a_new_log_key_only_through_the_signed_rotation(tmp_path, witness):
    ledger = _ledger(tmp_path / "p")
    for _ in range(3):
        ledger.append("subject.added", new_pid(), {"source": "t"})
    old_signer = Signer(ORIGIN, ledger.signing_key())
    witness.add_log(old_signer.verifier().vkey)
    size = _cosign_all(witness, ledger, [old_signer], 0)
    entry, previous = ledger.rotate_key(Ed25519PrivateKey.generate())
    new_signer = Signer(ORIGIN, ledger.signing_key())
    # Before the witness saw the rotation, the new key alone is refused.
    hashes = ledger.leaf_hashes()
    tree = merkle.MerkleTree(hashes)
    text = Checkpoint(ORIGIN, tree.size, tree.root()).text()
    only_new = Note(text, (new_signer.sign(text),)).to_bytes()
    assert (
        status_of(lambda: witness.add_checkpoint(size, tree.consistency_proof(size), only_new))[0]
        == 403
    )
    # Pinning another key by hand is refused too: keys change only through the ledger.
    assert status_of(lambda: witness.add_log(new_signer.verifier().vkey))[0] == 409
    size = _cosign_all(witness, ledger, [old_signer, new_signer], size)
    line = entry.line()
    tree = merkle.MerkleTree(ledger.leaf_hashes())
    # A forged rotation (another new key, signed by nobody the witness trusts) is refused.
    forged = json.loads(line)
    forged["payload"]["new_key"] = base64.b64encode(bytes(32)).decode()
    assert (
        status_of(
            lambda: witness.rotate_log_key(
                ORIGIN, json.dumps(forged).encode(), entry.seq, tree.inclusion_proof(entry.seq)
            )
        )[0]
        == 422
    )
    # A genuine rotation with a wrong index is not included.
    assert (
        status_of(
            lambda: witness.rotate_log_key(ORIGIN, line, entry.seq - 1, tree.inclusion_proof(1))
        )[0]
        == 422
    )
    witness.rotate_log_key(ORIGIN, line, entry.seq, tree.inclusion_proof(entry.seq))
    state = Witness(witness.root).log(ORIGIN)
    assert state.keys == [new_signer.verifier().vkey]
    assert state.retired[0]["key"] == old_signer.verifier().vkey
    ledger.append("subject.added", new_pid(), {"source": "t"})
    _cosign_all(witness, ledger, [new_signer], size)  # the new key alone now suffices
    # The retired (perhaps stolen) key alone is refused from now on.
    ledger.append("subject.added", new_pid(), {"source": "t"})
    tree = merkle.MerkleTree(ledger.leaf_hashes())
    text = Checkpoint(ORIGIN, tree.size, tree.root()).text()
    stale = Note(text, (Signer(ORIGIN, previous).sign(text),)).to_bytes()
    known = Witness(witness.root).log(ORIGIN).size
    assert (
        status_of(lambda: witness.add_checkpoint(known, tree.consistency_proof(known), stale))[0]
        == 403
    )


def binding(project: str, origin: str, signer: Signer) -> bytes:
    text = binding_text(project, origin)
    return Note(text, (signer.sign(text),)).to_bytes()


def test_a_project_is_bound_to_one_log_only_by_that_log_s_key(witness, log, tmp_path):
    project = project_id(tmp_path / "project")
    other = Log()
    # Not signed by the log's key, not a known log, not a binding note: refused.
    forged = binding(project, ORIGIN, other.signer)
    assert status_of(lambda: witness.bind(forged))[0] == 403
    unknown = Signer("example.org/unknown", Ed25519PrivateKey.generate())
    assert status_of(lambda: witness.bind(binding(project, unknown.name, unknown)))[0] == 404
    assert status_of(lambda: witness.bind(log.note()))[0] == 400
    assert witness.bound(project) is None
    assert witness.bind(binding(project, ORIGIN, log.signer)) == ORIGIN
    assert witness.bind(binding(project, ORIGIN, log.signer)) == ORIGIN  # idempotent
    # Another log (a ledger rebuilt under a new key) for the same folder: 409, even though the
    # witness knows and trusts that other log.
    rebuilt = Signer("example.org/rebuilt", Ed25519PrivateKey.generate())
    witness.add_log(rebuilt.verifier().vkey)
    with pytest.raises(WitnessError) as info:
        witness.bind(binding(project, rebuilt.name, rebuilt))
    assert info.value.status == 409 and "visage witness release" in str(info.value)
    assert witness.bound(project) == ORIGIN
    # The operator's release is recorded; then the folder binds afresh.
    assert witness.release(project, reason="re-created") == ORIGIN
    assert witness.release(project) is None
    released = (witness.root / "projects" / "released.jsonl").read_text().splitlines()
    assert [json.loads(line)["origin"] for line in released] == [ORIGIN]
    assert witness.bind(binding(project, rebuilt.name, rebuilt)) == rebuilt.name
    # The id is a hash: the folder's name is not in the witness's files.
    assert "project" not in " ".join(p.name for p in (witness.root / "projects").iterdir())


def test_a_witness_that_lost_a_bound_log_s_state_does_not_start_it_again_from_nothing(
    witness, log, tmp_path
):
    # Its state deleted (by hand, or by someone who wants a cut ledger cosigned): added again
    # from nothing, it would cosign any shorter ledger. The binding says the log was witnessed.
    project = project_id(tmp_path / "project")
    witness.bind(binding(project, ORIGIN, log.signer))
    witness.state_path(ORIGIN).unlink()
    with pytest.raises(WitnessError) as info:
        witness.add_log(log.signer.verifier().vkey)
    assert info.value.status == 409 and "visage witness release" in str(info.value)
    assert witness.log(ORIGIN) is None
    # Its operator lets the project go on the record; then the log starts afresh.
    assert witness.release(project, reason="state_lost") == ORIGIN
    assert witness.add_log(log.signer.verifier().vkey).size == 0


def test_http_binding_endpoints(witness, log, tmp_path):
    server = make_server(witness, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = HttpWitness(f"http://127.0.0.1:{server.server_address[1]}", witness.verifier.vkey)
        project = project_id(tmp_path / "project")
        assert client.bound(project) is None
        assert client.bind(binding(project, ORIGIN, log.signer)) == ORIGIN
        assert client.bound(project) == ORIGIN
        rebuilt = Signer("example.org/rebuilt", Ed25519PrivateKey.generate())
        witness.add_log(rebuilt.verifier().vkey)
        assert status_of(lambda: client.bind(binding(project, rebuilt.name, rebuilt)))[0] == 409
        assert status_of(lambda: client.bound("not-an-id"))[0] == 400
    finally:
        server.shutdown()
        server.server_close()
