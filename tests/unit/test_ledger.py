"""The signed ledger: chain, signatures, tamper detection, torn tails, concurrent writers."""

import base64
import hashlib
import json
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visage_ml.config import ProjectPaths
from visage_ml.privacy import merkle
from visage_ml.privacy.keys import LedgerKeyError, load_public_key, new_pid
from visage_ml.privacy.ledger import (
    SCHEDULER,
    Ledger,
    LedgerError,
    acting_as,
    entry_hash,
    entry_hash_of,
    inclusion_for,
    os_actor,
    raw_key,
    verify_inclusion_record,
)


def make_ledger(root: Path) -> Ledger:
    paths = ProjectPaths(root)
    return Ledger(paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key)


def fill(ledger: Ledger, n: int = 6) -> list[str]:
    pids = [new_pid() for _ in range(n)]
    for pid in pids:
        ledger.append("subject.added", pid, {"source": "test"})
    return pids


def test_append_builds_a_verifiable_chain_with_published_key(tmp_path):
    ledger = make_ledger(tmp_path)
    fill(ledger, 5)
    entries = list(ledger.entries())
    assert [e.seq for e in entries] == [0, 1, 2, 3, 4]
    lines = ledger.path.read_bytes().splitlines()
    # Each entry's prev_hash is the SHA-256 of the whole previous line, signature included.
    assert all(
        e.prev_hash == hashlib.sha256(line).hexdigest()
        for line, e in zip(lines, entries[1:], strict=False)
    )
    assert ledger.verify().ok
    assert (tmp_path / "privacy" / "ledger.pub").read_text().startswith("-----BEGIN PUBLIC KEY")
    assert (tmp_path / "secrets" / "ledger.key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("all_signatures", [True, False])
def test_any_single_byte_change_is_detected_and_names_that_entry(tmp_path, all_signatures):
    ledger = make_ledger(tmp_path)
    fill(ledger, 4)
    ledger.checkpoint()
    ledger.append("consent.withdrawn", new_pid().replace("p", "p", 1), {"purposes": ["training"]})
    original = ledger.path.read_bytes()
    lines = original.split(b"\n")[:-1]
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    # the first entry, an ordinary one, the tree head, the last
    for lineno in (1, 2, len(lines) - 1, len(lines)):
        lo, hi = starts[lineno - 1], starts[lineno] - 1  # every byte of the line but its newline
        for pos in range(lo, hi):
            data = bytearray(original)
            data[pos] ^= 0x01
            ledger.path.write_bytes(bytes(data))
            result = ledger.verify(all_signatures=all_signatures)
            assert not result.ok, f"byte {pos} change not detected"
            assert result.bad_line == lineno, (pos, result)
    ledger.path.write_bytes(original)
    assert ledger.verify().ok


def test_forged_entry_with_recomputed_hash_fails_signature(tmp_path):
    ledger = make_ledger(tmp_path)
    fill(ledger, 3)
    lines = ledger.path.read_bytes().splitlines()
    obj = json.loads(lines[1])
    obj["payload"]["source"] = "forged"
    obj["hash"] = entry_hash_of(obj)
    lines[1] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    ledger.path.write_bytes(b"\n".join(lines) + b"\n")
    result = ledger.verify()
    assert (result.ok, result.bad_line) == (False, 2)
    assert "signature" in result.reason


def _rechained(lines: list[bytes], start: int, forge: bool = True) -> list[bytes]:
    """``lines`` with entry ``start`` altered (when ``forge``) and every entry from it on given
    a hash and link that recompute: only the signatures, which need the key, stay wrong."""
    out = list(lines[:start])
    for line in lines[start:]:
        obj = json.loads(line)
        if forge and obj["seq"] == start:
            obj["payload"]["source"] = "forged"
        obj["prev_hash"] = hashlib.sha256(out[-1]).hexdigest() if out else obj["prev_hash"]
        obj["hash"] = entry_hash_of(obj)
        out.append(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())
    return out


@pytest.fixture
def checked_on_threads(monkeypatch):
    """Ledger.verify checks ordinary entries' signatures on 4 threads, 1 entry or more each."""
    import visage_ml.privacy.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "SIGNATURE_THREADS", 4)
    monkeypatch.setattr(ledger_module, "_SIGNATURES_PER_THREAD", 1)


def test_a_forged_run_of_entries_is_named_at_its_first_entry_when_checked_on_threads(
    tmp_path, checked_on_threads
):
    ledger = make_ledger(tmp_path)
    fill(ledger, 40)
    original = ledger.path.read_bytes().splitlines()
    for start in (1, 7, 23, 38):
        ledger.path.write_bytes(b"\n".join(_rechained(original, start)) + b"\n")
        result = ledger.verify()
        assert (result.ok, result.bad_line, result.bad_seq) == (False, start + 1, start), start
        assert "bad signature" in result.reason
    ledger.path.write_bytes(b"\n".join(original) + b"\n")
    assert ledger.verify().ok


def test_a_bad_signature_before_a_sequence_gap_is_the_problem_named_and_not_after_it(
    tmp_path, checked_on_threads
):
    ledger = make_ledger(tmp_path)
    fill(ledger, 40)
    original = ledger.path.read_bytes().splitlines()
    forged = _rechained(original, 5)
    # a gap at entry 30 after a forged entry 5: the forgery is named
    ledger.path.write_bytes(b"\n".join(forged[:30] + forged[31:]) + b"\n")
    assert ledger.verify().bad_line == 6
    # a forged entry 20 after a gap at entry 10: the gap is named
    forged = _rechained(original, 20)
    ledger.path.write_bytes(b"\n".join(forged[:10] + forged[11:]) + b"\n")
    result = ledger.verify()
    assert (result.bad_line, result.reason) == (11, "sequence gap: expected seq 10")


def test_a_signed_tree_head_that_is_not_an_object_is_named_not_a_crash(tmp_path):
    # Only the key holder (or a writer's bug) can sign such a line; verify names it.
    ledger = make_ledger(tmp_path)
    fill(ledger, 3)
    last = ledger.path.read_bytes().splitlines()[-1]
    obj = {"seq": 3, "time": "2026-01-01T00:00:00.000Z", "type": "tree_head", "pid": None}
    obj |= {"payload": [], "prev_hash": hashlib.sha256(last).hexdigest()}
    obj["hash"] = entry_hash(3, obj["time"], "tree_head", None, [], obj["prev_hash"], None)
    obj["sig"] = base64.b64encode(ledger.signing_key().sign(obj["hash"].encode())).decode()
    with ledger.path.open("ab") as fh:
        fh.write(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    result = ledger.verify()
    assert (result.ok, result.bad_line, result.reason) == (
        False,
        4,
        "tree head does not match the entries",
    )


def test_deleted_entry_is_a_sequence_gap(tmp_path):
    ledger = make_ledger(tmp_path)
    fill(ledger, 4)
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    ledger.path.write_bytes(b"".join(lines[:2] + lines[3:]))
    result = ledger.verify()
    assert (result.ok, result.bad_line) == (False, 3)


def test_torn_last_line_is_reported_then_quarantined_without_losing_entries(tmp_path):
    ledger = make_ledger(tmp_path)
    fill(ledger, 3)
    intact = ledger.path.read_bytes()
    with open(ledger.path, "ab") as fh:
        fh.write(b'{"seq":3,"time":"2026-')  # a crash mid-write
    result = ledger.verify()
    assert not result.ok and result.bad_line == 4 and "torn" in result.reason
    entry = ledger.append("subject.added", new_pid(), {"source": "after-crash"})
    assert ledger.verify().ok
    data = ledger.path.read_bytes()
    assert data.startswith(intact)  # nothing earlier lost
    types = [e.type for e in ledger.entries()]
    assert types == ["subject.added"] * 3 + ["ledger.repaired", "subject.added"]
    assert entry.seq == 4
    quarantined = list(tmp_path.joinpath("privacy").glob("ledger.jsonl.torn-*"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == b'{"seq":3,"time":"2026-'


def test_personal_data_keys_and_unknown_types_are_refused(tmp_path):
    ledger = make_ledger(tmp_path)
    pid = new_pid()
    with pytest.raises(ValueError, match="identity vault"):
        ledger.append("subject.added", pid, {"source": "x", "meta": {"email": "a@b.c"}})
    with pytest.raises(ValueError, match="unknown ledger event type"):
        ledger.append("subject.renamed", pid, {})
    with pytest.raises(ValueError, match="not a visage pid"):
        ledger.append("subject.added", "Alice", {})
    assert not ledger.path.exists() or ledger.path.read_bytes() == b""


def test_tree_head_inclusion_and_consistency(tmp_path):
    ledger = make_ledger(tmp_path)
    fill(ledger, 5)
    assert "tree head" not in ledger.verify().message()  # none yet: nothing to say of them
    head1 = ledger.checkpoint()
    fill(ledger, 4)
    head2 = ledger.checkpoint()
    assert ledger.verify().tree_heads == 2
    assert "2 signed tree head(s) match" in ledger.verify().message()
    # The fingerprint a regulator compares with the certificate's proof.log.fingerprint.
    fingerprint = ledger.key_chain().fingerprints()[-1]
    assert ledger.verify().message().endswith(f"key fingerprint {fingerprint}")
    lines = ledger.path.read_bytes().splitlines()
    record = inclusion_for(ledger, 3, head2.payload["size"])
    assert record["root"] == head2.payload["root"]
    assert verify_inclusion_record(record, lines[3])
    assert not verify_inclusion_record(record, lines[4])
    hashes = ledger.leaf_hashes(head2.payload["size"])
    proof = merkle.consistency_proof(hashes, head1.payload["size"])
    assert merkle.verify_consistency(
        head1.payload["size"],
        head2.payload["size"],
        proof,
        bytes.fromhex(head1.payload["root"]),
        bytes.fromhex(head2.payload["root"]),
    )


WRITER = """
import sys
from pathlib import Path
from visage_ml.config import ProjectPaths
from visage_ml.privacy import merkle
from visage_ml.privacy.ledger import Ledger
paths = ProjectPaths(Path(sys.argv[1]))
ledger = Ledger(paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key)
pid = "p" + sys.argv[2] * 16
for i in range(int(sys.argv[3])):
    ledger.append("rectification", pid, {"i": i})
"""


def test_four_processes_append_concurrently_without_lost_or_duplicated_seq(tmp_path):
    ledger = make_ledger(tmp_path)
    ledger.append("dataset.acquired", None, {"n": 0})  # creates the key before the race
    per_writer = 60
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), digit, str(per_writer)])
        for digit in "1234"
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    result = ledger.verify()
    assert result.ok, result.message()
    entries = list(ledger.entries())
    assert [e.seq for e in entries] == list(range(1 + 4 * per_writer))
    for digit in "1234":
        mine = [e.payload["i"] for e in entries if e.pid == "p" + digit * 16]
        assert mine == list(range(per_writer))


def test_leaf_hash_cache_matches_a_fresh_computation_and_notices_replacement(tmp_path):
    ledger = make_ledger(tmp_path)
    ledger.append_many([("rectification", new_pid(), {"i": i}) for i in range(1500)])

    def fresh():
        return [merkle.leaf_hash(line) for line in ledger.path.read_bytes().splitlines()]

    assert ledger.leaf_hashes() == fresh()
    cache = ledger.path.with_name("ledger.jsonl.leaves")
    assert cache.exists()
    fill(ledger, 3)
    assert ledger.leaf_hashes() == fresh()  # cached prefix + the new lines
    assert ledger.leaf_hashes(10) == fresh()[:10]
    # A different ledger under the same name (e.g. restored from a backup) is rehashed.
    ledger.path.unlink()
    fill(ledger, 2)
    assert ledger.leaf_hashes() == fresh()


def test_key_rotation_is_followed_and_a_forged_rotation_is_caught(tmp_path):
    ledger = make_ledger(tmp_path)
    fill(ledger, 3)
    old_pub = load_public_key(ledger.public_key_path)
    entry, previous = ledger.rotate_key(Ed25519PrivateKey.generate())
    fill(ledger, 2)
    result = ledger.verify()
    assert result.ok and len(result.keys) == 2, result.message()
    assert ledger.verify(old_pub).ok  # the old published key is in the key history
    assert ledger.key_chain().starts == [0, entry.seq + 1]
    stranger = Ed25519PrivateKey.generate().public_key()
    bad = ledger.verify(stranger)
    assert not bad.ok and "signs no part of this ledger" in bad.reason
    # A rotation whose new key was swapped (re-signed with the old, stolen key) is caught: the
    # new key's own signature over the prefix is missing.
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    obj = json.loads(lines[entry.seq])
    thief = Ed25519PrivateKey.generate()
    obj["payload"]["new_key"] = base64.b64encode(raw_key(thief.public_key())).decode()
    obj["hash"] = entry_hash_of(obj)
    obj["sig"] = base64.b64encode(previous.sign(obj["hash"].encode())).decode()
    lines[entry.seq] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    ledger.path.write_bytes(b"".join(lines[: entry.seq + 1]))
    result = ledger.verify(old_pub)
    assert not result.ok and "not signed by the new key" in result.reason
    # The chain this process read before (certificates ask for it) is not answered again.
    with pytest.raises(LedgerError, match="not signed by the new key"):
        ledger.key_chain(old_pub)


def _flip_in_place(path: Path, line_no: int, field: bytes) -> bytes:
    """Change one character of ``field``'s value on line ``line_no`` (0-based), in place: the
    same file, the same length, every later line kept. Returns the bytes before."""
    before = path.read_bytes()
    lines = before.split(b"\n")
    pos = lines[line_no].index(field) + len(field) + 2
    line = bytearray(lines[line_no])
    line[pos] = ord("B") if line[pos] != ord("B") else ord("C")
    lines[line_no] = bytes(line)
    with open(path, "r+b") as fh:  # not a new file: the inode stays
        fh.write(b"\n".join(lines))
    return before


def test_a_rotation_altered_in_place_after_a_read_is_caught_and_its_restore_seen(tmp_path):
    # An operator with disk access edits the rotation line of a ledger a server has already
    # read, keeping its length and every line after it; then puts the good bytes back.
    ledger = make_ledger(tmp_path)
    fill(ledger, 3)
    entry, _ = ledger.rotate_key(Ed25519PrivateKey.generate())
    fill(ledger, 3)
    good = ledger.key_chain()
    before = _flip_in_place(ledger.path, entry.seq, b'"new_key_sig"')
    fill(ledger, 2)  # appended after the edit: the last line read is unchanged
    with pytest.raises(LedgerError, match=r"altered|not signed"):
        ledger.key_chain()
    with open(ledger.path, "r+b") as fh:  # restored in place from a backup
        fh.write(before)
    assert ledger.key_chain().keys == good.keys


def test_a_missing_key_is_refused_while_a_ledger_exists(tmp_path):
    ledger = make_ledger(tmp_path)
    fill(ledger, 2)
    pub = ledger.public_key_path.read_bytes()
    ledger.key_path.unlink()
    fresh = make_ledger(tmp_path)
    with pytest.raises(LedgerKeyError, match="never creates a new ledger key"):
        fresh.append("dataset.acquired", None, {"n": 1})
    assert not ledger.key_path.exists() and ledger.public_key_path.read_bytes() == pub
    # A new, empty ledger still gets its key on first use.
    other = make_ledger(tmp_path / "new")
    other.append("dataset.acquired", None, {"n": 1})
    assert other.verify().ok


def test_each_entry_names_its_actor_and_ledgers_without_actors_still_verify(tmp_path):
    ledger = make_ledger(tmp_path)
    fill(ledger, 2)
    # An entry written before actors existed: no `actor` key, hashed without it.
    key = ledger.signing_key()
    lines = ledger.path.read_bytes().splitlines()
    last = json.loads(lines[-1])
    old = {k: v for k, v in last.items() if k not in ("actor", "hash", "sig")}
    old["seq"], old["prev_hash"] = 2, hashlib.sha256(lines[-1]).hexdigest()
    old["hash"] = entry_hash(
        old["seq"], old["time"], old["type"], old["pid"], old["payload"], old["prev_hash"]
    )
    old["sig"] = base64.b64encode(key.sign(old["hash"].encode())).decode()
    with open(ledger.path, "ab") as fh:
        fh.write(json.dumps(old, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    with acting_as(SCHEDULER):
        ledger.append("subject.added", new_pid(), {"source": "test"})
    ledger.append("subject.added", new_pid(), {"source": "test"}, actor="api-key:a1b2c3d4e5f6")
    entries = list(ledger.entries())
    assert [e.actor for e in entries] == [
        os_actor(),
        os_actor(),
        None,
        SCHEDULER,
        "api-key:a1b2c3d4e5f6",
    ]
    assert ledger.verify().ok, ledger.verify().message()
    # The actor is hashed and signed: claiming someone else breaks the entry.
    lines = ledger.path.read_bytes().splitlines()
    lines[3] = lines[3].replace(b'"scheduler"', b'"os:mallory"')
    ledger.path.write_bytes(b"\n".join(lines) + b"\n")
    bad = ledger.verify()
    assert not bad.ok and bad.bad_line == 4 and "altered" in bad.reason
    with pytest.raises(ValueError, match="actor code"):
        ledger.append("subject.added", new_pid(), {}, actor="Jane Doe <jane@example.org>")


def test_the_first_rotation_is_found_in_what_was_appended_since_and_in_a_replaced_file(tmp_path):
    """The privacy core names the log after the ledger's first key on every request; the scan
    reads only what was appended since, but never answers from a file that is not the one read."""
    from visage_ml.privacy.ledger import first_rotation_in_file

    def rotation(key: bytes) -> bytes:
        old = base64.b64encode(key).decode()
        return b'{"payload":{"old_key":"%s"},"seq":9,"type":"ledger.key_rotated"}\n' % old.encode()

    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"seq":0,"type":"subject.registered"}\n')
    assert first_rotation_in_file(path) is None
    # A rotation half-written when asked, then ended: found once its line is whole.
    line = rotation(b"k" * 32)
    with path.open("ab") as f:
        f.write(line[:20])
    assert first_rotation_in_file(path) is None
    with path.open("ab") as f:
        f.write(line[20:])
    assert first_rotation_in_file(path) == b"k" * 32
    with path.open("ab") as f:
        f.write(rotation(b"z" * 32))  # a later rotation is not the first
    assert first_rotation_in_file(path) == b"k" * 32
    # Replaced by another ledger (a restore, a copy): read again whole.
    other = tmp_path / "other.jsonl"
    other.write_bytes(rotation(b"q" * 32))
    other.replace(path)
    assert first_rotation_in_file(path) == b"q" * 32
    path.unlink()
    assert first_rotation_in_file(path) is None


def test_a_ledger_rewritten_in_place_from_its_start_is_read_again_for_its_first_rotation(
    tmp_path,
):
    from visage_ml.privacy.ledger import first_rotation_in_file

    key = base64.b64encode(b"r" * 32).decode()
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b'{"seq":0,"type":"subject.registered"}\n')
    assert first_rotation_in_file(path) is None
    # The same file (same inode), truncated and written again longer: its start changed.
    path.write_bytes(
        b'{"payload":{"old_key":"%s"},"seq":0,"type":"ledger.key_rotated"}\n' % key.encode()
        + b'{"seq":1,"type":"subject.registered"}\n'
    )
    assert first_rotation_in_file(path) == b"r" * 32


def test_a_reader_after_a_seq_starts_near_it_and_misses_no_entry_after_it(tmp_path):
    # /v1/ledger?after_seq= pages start at Ledger.offset_before, not at the first entry.
    from visage_ml.privacy.ledger import LINE_STRIDE

    ledger = make_ledger(tmp_path)
    ledger.append_many([("subject.added", new_pid(), {"source": "t"})] * (2 * LINE_STRIDE + 5))
    n = len(ledger)

    def seqs_after(after: int) -> list[int]:
        off = ledger.offset_before(after)
        return [int(json.loads(line)["seq"]) for _, line in ledger.iter_lines(start_offset=off)]

    for after in (-1, 0, LINE_STRIDE - 1, LINE_STRIDE, LINE_STRIDE + 7, 2 * LINE_STRIDE, n - 1):
        got = seqs_after(after)
        assert got[0] <= after + 1 and got == list(range(got[0], n)), after
        assert after < 2 * LINE_STRIDE or got[0] >= 2 * LINE_STRIDE  # started near, not at 0
    # The ledger put back shorter (a restore): no offset past its end, nothing skipped.
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    ledger.path.write_bytes(b"".join(lines[: LINE_STRIDE + 3]))
    assert [s for s in seqs_after(2 * LINE_STRIDE) if s > 2 * LINE_STRIDE] == []
    assert [s for s in seqs_after(LINE_STRIDE) if s > LINE_STRIDE] == [
        LINE_STRIDE + 1,
        LINE_STRIDE + 2,
    ]


def test_entries_containing_a_pid_are_those_a_full_reading_finds_even_across_blocks(
    tmp_path, monkeypatch
):
    import visage_ml.privacy.ledger as ledger_mod

    monkeypatch.setattr(ledger_mod, "SCAN_BLOCK", 700)  # lines cut across blocks
    ledger = make_ledger(tmp_path)
    pids = fill(ledger, 30)
    ledger.append("subject.added", pids[4], {"source": "again"})
    with ledger.path.open("ab") as f:  # a torn last line holding the pid is not an entry
        f.write(b'{"seq":31,"pid":"%s"' % pids[4].encode())
    want = [e.seq for e in ledger.entries() if e.pid == pids[4]]
    assert want == [4, 30]
    assert [e.seq for e in ledger.entries(containing=pids[4].encode())] == want
    both = (pids[4].encode(), pids[9].encode())
    assert [e.seq for e in ledger.entries(containing=both)] == [4, 9, 30]


def test_an_empty_needle_is_in_every_line_and_the_search_for_it_ends(tmp_path):
    # b"" is in every line: entries(containing=b"") (a pid of "" given to
    # `visage privacy consent check-evidence`, events_of) must list every entry, not spin for ever.
    import threading

    ledger = make_ledger(tmp_path)
    fill(ledger, 3)
    found: list[list[int]] = []
    t = threading.Thread(
        target=lambda: found.append([e.seq for e in ledger.entries(containing=b"")]), daemon=True
    )
    t.start()
    t.join(10)
    assert not t.is_alive(), "Ledger.entries(containing=b'') never returns"
    assert found == [[0, 1, 2]]
    assert list(ledger.lines_containing((b"", b"subject.added"))) == [
        line for _, line in ledger.iter_lines()
    ]


def test_warm_folds_reads_the_ledger_so_that_the_next_call_reads_only_what_was_appended(
    tmp_path, monkeypatch, caplog
):
    import visage_ml.privacy.ledger as ledger_module

    monkeypatch.setattr(ledger_module, "_FOLDS", weakref.WeakSet())
    read: list[int] = []

    def count(state: int, chunk: bytes, offset: int) -> int:
        read.append(len(chunk))
        return state + chunk.count(b"\n")

    def broken(state: int, chunk: bytes, offset: int) -> int:
        raise ValueError("unreadable")

    lines = ledger_module.LedgerFold(count, 0)
    cold = ledger_module.LedgerFold(broken, 0)  # noqa: F841 - listed while it exists
    ledger = make_ledger(tmp_path)
    fill(ledger, 30)
    ledger_module.warm_folds(ledger.path)  # the broken fold is passed over, and said so
    assert read == [ledger.path.stat().st_size]
    assert "broken was not read at start-up: ValueError: unreadable" in caplog.text
    size = ledger.path.stat().st_size
    fill(ledger, 1)
    assert lines(ledger.path) == 31
    assert read[1:] == [ledger.path.stat().st_size - size]
