"""The registry fold and may_process."""

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from visage_ml.privacy.ledger import entry_hash
from visage_ml.privacy.registry import (
    ALLOWED,
    ERASED,
    NO_BASIS,
    OBJECTED,
    RESTRICTED,
    UNKNOWN,
    WITHDRAWN,
    LedgerRefusedError,
    Registry,
    fold,
)

P = "p" + "a" * 16
RECEIPT = {"purposes": ["training", "evaluation"], "legal_basis": ["art6(1)(a)", "art9(2)(a)"]}


def test_fold_follows_the_life_of_a_subject():
    events = [
        (0, "subject.added", P, {"source": "t"}),
        (1, "consent.given", P, {"receipt": RECEIPT, "receipt_hash": "0" * 64}),
    ]
    st = fold(events)[P]
    assert st.decision("training").reason == ALLOWED
    assert st.decision("identification").reason == NO_BASIS
    st = fold([*events, (2, "consent.withdrawn", P, {"purposes": ["training"]})])[P]
    assert st.decision("training").reason == WITHDRAWN
    assert st.decision("evaluation").allowed
    st = fold([*events, (2, "restriction.set", P, {})])[P]
    assert st.decision("evaluation").reason == RESTRICTED
    st = fold([*events, (2, "restriction.set", P, {}), (3, "restriction.lifted", P, {})])[P]
    assert st.decision("evaluation").allowed and st.last_seq == 3
    st = fold([*events, (2, "objection", P, {"purposes": ["evaluation"]})])[P]
    assert st.decision("evaluation").reason == OBJECTED and st.decision("training").allowed
    st = fold([*events, (2, "erasure.requested", P, {}), (3, "erasure.completed", P, {})])[P]
    assert st.decision("training").reason == ERASED


def test_events_for_unknown_subjects_are_ignored():
    assert fold([(0, "consent.given", P, {"receipt": RECEIPT})]) == {}


def test_may_process_rejects_unknown_purpose_and_subject(tmp_path):
    reg = Registry(tmp_path / "ledger.jsonl")
    assert reg.may_process(P, "training").reason == UNKNOWN
    with pytest.raises(ValueError, match="purposes are"):
        reg.may_process(P, "marketing")


# ---------------------------------------------------------------------------------------------
# The fold cache
# ---------------------------------------------------------------------------------------------


def _ledger(root):
    from visage_ml.config import ProjectPaths
    from visage_ml.privacy.ledger import Ledger

    paths = ProjectPaths(root)
    return Ledger(paths.ledger, key_path=paths.signing_key, public_key_path=paths.ledger_public_key)


def _pids(n):
    return [f"p{i:016x}" for i in range(1, n + 1)]


def _fill(ledger, pids):
    """Subjects with consent, one restricted, one objecting, one erased, one withdrawn."""
    basis = {"purposes": ["training", "identification"], "legal_basis": ["art6(1)(f)"]}
    ledger.append_many([("subject.added", p, {"source": "t"}) for p in pids])
    ledger.append_many([("basis.recorded", p, basis) for p in pids])
    ledger.append_many(
        [
            ("restriction.set", pids[0], {}),
            ("objection", pids[1], {"purposes": ["identification"]}),
            ("erasure.requested", pids[2], {}),
            ("erasure.completed", pids[2], {}),
            ("consent.withdrawn", pids[3], {"purposes": ["training"]}),
            ("gallery.enrolled", pids[4], {"template_sha256": "ab" * 32}),
        ]
    )


def _cached(tmp_path, n):
    """A filled ledger of ``n`` subjects whose fold cache has just been written."""
    ledger = _ledger(tmp_path)
    pids = _pids(n)
    _fill(ledger, pids)
    Registry(ledger.path, cache_every=1).refresh()
    return ledger, pids, ledger.path.with_name("ledger.jsonl.fold")


def _view(reg, pids):
    """What the registry answers about ``pids``, one subject at a time (lazy path)."""
    out = {}
    for pid in pids:
        st = reg.get(pid)
        out[pid] = None if st is None else (st.to_dict(), st.template_sha256)
    return out


def _full(ledger, pids):
    return _view(Registry(ledger.path, cache=False), pids)


def test_a_cold_registry_starts_from_the_cache_and_agrees_with_a_full_fold(tmp_path, monkeypatch):
    import visage_ml.privacy.registry as registry_mod

    ledger, pids, cache = _cached(tmp_path, 40)
    assert cache.is_file()
    assert b"art6(1)(f)" in cache.read_bytes() and b"p0000000000000001" in cache.read_bytes()

    folded = []
    monkeypatch.setattr(registry_mod, "_apply", lambda *a: folded.append(a))
    cold = Registry(ledger.path)
    assert len(cold) == 40 and not folded  # nothing folded: every state came from the cache
    monkeypatch.undo()
    cold = Registry(ledger.path)
    assert _view(cold, pids) == _full(ledger, pids)
    assert cold.may_process(pids[2], "training").reason == ERASED
    assert cold.may_process(pids[3], "training").reason == WITHDRAWN
    assert cold.may_process(pids[0], "identification").reason == RESTRICTED
    assert cold.may_process(pids[1], "identification").reason == OBJECTED
    full = Registry(ledger.path, cache=False)
    assert list(Registry(ledger.path).states()) == list(full.states())  # same order
    assert Registry(ledger.path).states() == full.states()
    assert Registry(ledger.path).last_seqs() == full.last_seqs()
    assert Registry(ledger.path).refresh().changed_seq == full.refresh().changed_seq


def test_events_appended_after_the_cache_are_folded(tmp_path):
    ledger, pids, cache = _cached(tmp_path, 12)
    written = cache.read_bytes()
    new = "p00000000000000ff"
    ledger.append_many(
        [
            ("consent.withdrawn", pids[5], {}),
            ("erasure.requested", pids[6], {}),
            ("erasure.completed", pids[6], {}),
            ("objection", pids[7], {}),
            ("restriction.lifted", pids[0], {}),
            ("subject.added", new, {"source": "t"}),
            ("subject.added", pids[6], {"source": "t"}),  # never brings an erased subject back
        ]
    )
    cold = Registry(ledger.path, cache_every=10**9)
    assert ledger.path.with_name("ledger.jsonl.fold").read_bytes() == written
    assert _view(cold, [*pids, new]) == _full(ledger, [*pids, new])
    assert cold.may_process(pids[5], "training").reason == WITHDRAWN
    assert cold.may_process(pids[6], "identification").reason == ERASED
    assert cold.may_process(pids[7], "training").reason == OBJECTED
    assert cold.may_process(pids[0], "training").allowed
    assert cold.may_process(new, "training").reason == NO_BASIS
    assert cold.states() == Registry(ledger.path, cache=False).states()


def _tamper_cache(path, edit):
    head, _, body = path.read_bytes().partition(b"\n")
    path.write_bytes(edit(head, body))


@pytest.mark.parametrize(
    "damage",
    [
        "cache body edited",
        "cache of another fold",
        "cache cut short",
        "ledger truncated",
        "ledger replaced",
        "last cached line altered",
    ],
)
def test_a_stale_or_damaged_cache_is_ignored(tmp_path, damage):
    import hashlib
    import json

    ledger, pids, cache = _cached(tmp_path, 10)
    erased = pids[2]
    if damage == "cache body edited":
        # The erased subject's row made to look live again (flags 4 -> 0).
        def edit(head, body):
            doc = json.loads(body)
            for row in doc["states"]:
                row[4] = 0
            return head + b"\n" + json.dumps(doc).encode()

        _tamper_cache(cache, edit)
    elif damage == "cache of another fold":
        _tamper_cache(cache, lambda h, b: h.replace(b'"fold":"', b'"fold":"0') + b"\n" + b)
    elif damage == "cache cut short":
        cache.write_bytes(cache.read_bytes()[:-100])
    elif damage == "ledger truncated":
        # Restored from an older backup: the cache covers lines the ledger no longer has.
        lines = ledger.path.read_bytes().splitlines(keepends=True)
        ledger.path.write_bytes(b"".join(lines[:-2]))
    elif damage == "ledger replaced":
        # Another ledger of at least the same length, where the subject was never erased.
        ledger.path.unlink()
        ledger.append_many([("subject.added", p, {"source": "other"}) for p in pids])
        basis = {"purposes": ["training"], "legal_basis": ["art6(1)(f)"]}
        ledger.append_many([("basis.recorded", p, basis) for p in pids * 3])
    elif damage == "last cached line altered":
        data = ledger.path.read_bytes()
        lines = data.splitlines(keepends=True)
        lines[-1] = lines[-1].replace(b'"ab', b'"cd', 1)
        ledger.path.write_bytes(b"".join(lines))
        assert hashlib.sha256(b"".join(lines)).digest() != hashlib.sha256(data).digest()
    cold = Registry(ledger.path, cache_every=10**9)
    if damage == "last cached line altered":
        # The altered line no longer matches its signed hash: nothing is folded from it.
        with pytest.raises(LedgerRefusedError, match="hash does not match"):
            cold.may_process(erased, "training")
        return
    assert _view(cold, pids) == _full(ledger, pids)
    if damage != "ledger replaced":
        assert cold.may_process(erased, "training").reason == ERASED


def test_a_cache_from_a_longer_ledger_is_not_used_after_it_is_replaced(tmp_path):
    """A registry that outlives a ledger replacement starts over, cache or not."""
    ledger = _ledger(tmp_path)
    pids = _pids(8)
    _fill(ledger, pids)
    reg = Registry(ledger.path, cache_every=1)
    assert reg.may_process(pids[2], "training").reason == ERASED
    ledger.path.unlink()
    ledger.append_many([("subject.added", p, {"source": "t"}) for p in pids[:3]])
    assert reg.may_process(pids[2], "training").reason == NO_BASIS
    assert reg.get(pids[5]) is None
    assert _view(Registry(ledger.path), pids) == _full(ledger, pids)


def test_an_unwritable_cache_only_costs_a_full_fold(tmp_path, monkeypatch):
    import visage_ml.privacy.registry as registry_mod

    ledger = _ledger(tmp_path)
    pids = _pids(5)
    _fill(ledger, pids)

    def refuse(*_a, **_k):
        raise PermissionError("read-only")

    monkeypatch.setattr(registry_mod, "atomic_write_bytes", refuse)
    reg = Registry(ledger.path, cache_every=1)
    assert reg.may_process(pids[2], "training").reason == ERASED
    assert not ledger.path.with_name("ledger.jsonl.fold").exists()


def test_a_state_the_cache_cannot_hold_leaves_the_fold_as_it_was(tmp_path):
    ledger = _ledger(tmp_path)
    pid = _pids(1)[0]
    odd = {"purposes": ["training"], "legal_basis": [["nested"]]}  # unhashable basis
    ledger.append_many([("subject.added", pid, {"source": "t"}), ("basis.recorded", pid, odd)])
    reg = Registry(ledger.path, cache_every=1)
    assert reg.may_process(pid, "training").allowed
    assert not ledger.path.with_name("ledger.jsonl.fold").exists()


# ---------------------------------------------------------------------------------------------
# Only verified lines are folded
# ---------------------------------------------------------------------------------------------


def _forged_line(ledger, type_, pid, payload, key):
    """A well-formed next entry (right seq and prev_hash) signed with ``key``."""
    last = ledger.path.read_bytes().splitlines()[-1]
    seq = json.loads(last)["seq"] + 1
    prev = hashlib.sha256(last).hexdigest()
    time = "2026-11-26T07:00:00.000Z"
    h = entry_hash(seq, time, type_, pid, payload, prev)
    sig = base64.b64encode(key.sign(h.encode()) if key else b"\0" * 64).decode()
    obj = {
        "seq": seq,
        "time": time,
        "type": type_,
        "pid": pid,
        "payload": payload,
        "prev_hash": prev,
        "hash": h,
        "sig": sig,
    }
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"


@pytest.mark.parametrize("signer", ["unsigned", "another key"])
def test_an_appended_line_not_signed_by_the_ledger_key_is_refused(tmp_path, signer):
    ledger = _ledger(tmp_path)
    pids = _pids(6)
    _fill(ledger, pids)
    warm = Registry(ledger.path)
    assert warm.may_process(pids[2], "training").reason == ERASED
    key = None if signer == "unsigned" else Ed25519PrivateKey.generate()
    # The attacker brings an erased subject back by "giving consent" again and un-erasing.
    line = _forged_line(ledger, "subject.added", "p" + "e" * 16, {"source": "x"}, key)
    with open(ledger.path, "ab") as fh:
        fh.write(line)
    for reg in (warm, Registry(ledger.path), Registry(ledger.path, cache=False)):
        with pytest.raises(LedgerRefusedError, match="not signed by the ledger key"):
            reg.may_process(pids[0], "training")
    # Inserted in the middle (seq and prev_hash adjusted), the chain breaks instead.
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    ledger.path.write_bytes(b"".join([*lines[:3], lines[-1], *lines[3:-1]]))
    with pytest.raises(LedgerRefusedError, match="seq"):
        Registry(ledger.path, cache=False).may_process(pids[0], "training")


def test_a_fold_cache_forged_without_the_key_is_ignored(tmp_path):
    ledger, pids, cache = _cached(tmp_path, 10)
    head, _, body = cache.read_bytes().partition(b"\n")
    doc = json.loads(body)
    for row in doc["states"]:
        row[4] = 0  # the erased subject looks live again
    forged_body = json.dumps(doc).encode()
    h = json.loads(head)
    h.pop("mac")
    # A plain SHA-256 (what anyone can recompute) and an HMAC under a guessed key both fail.
    for mac in (
        hashlib.sha256(forged_body).hexdigest(),
        hmac.new(b"\0" * 32, forged_body, hashlib.sha256).hexdigest(),
    ):
        cache.write_bytes(json.dumps({**h, "mac": mac}).encode() + b"\n" + forged_body)
        assert Registry(ledger.path).may_process(pids[2], "training").reason == ERASED
    assert (tmp_path / "secrets" / "fold.key").stat().st_mode & 0o777 == 0o600
