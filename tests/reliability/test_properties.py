"""Property-based tests (hypothesis): the ledger, the gallery and the registry fold.

- any sequence of ledger events verifies, and any single-byte change to the file is detected;
- any interleaving of enrol / erase / withdraw / restrict / identify / restart on the gallery
  agrees with a plain reference model (a dict of templates and a set of blocked subjects);
- the registry's fold (batch, incremental over a real ledger, and a cold start from the fold
  cache plus the lines appended after it) agrees with a reference fold written from the
  documented semantics.

The default run keeps example counts small; the ``slow`` variants run many more.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visage_ml.config import PURPOSES, ProjectPaths
from visage_ml.privacy.core import NewSubject, NothingChangedError, PrivacyCore
from visage_ml.privacy.ledger import Ledger
from visage_ml.privacy.registry import Registry, fold
from visage_ml.serving.gallery import EnrolmentRefusedError, Gallery, NotEnrolledError

FAST = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
SLOW = settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
PIDS = [f"p{i:016x}" for i in (0x1A, 0x2B, 0x3C, 0x4D, 0x5E)]


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    """A temporary folder per example (function fixtures are not reset between examples)."""
    with tempfile.TemporaryDirectory(prefix="visage-prop-") as tmp:
        yield Path(tmp)


# ---------------------------------------------------------------------------------------------
# Ledger: every sequence verifies, every single-byte change is detected
# ---------------------------------------------------------------------------------------------

SAFE_KEYS = st.sampled_from(["request_id", "step", "phase", "n", "note_code", "sha256", "k"])
JSON_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
PAYLOAD = st.dictionaries(
    SAFE_KEYS,
    st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3), max_leaves=6),
    max_size=4,
)
EVENT = st.tuples(
    st.sampled_from(["subject.added", "consent.withdrawn", "erasure.step", "notification.sent"]),
    st.sampled_from([None, *PIDS]),
    PAYLOAD,
)
BATCHES = st.lists(
    st.one_of(st.lists(EVENT, min_size=1, max_size=4), st.just("checkpoint")),
    min_size=1,
    max_size=6,
)


def write_ledger(root: Path, batches: list[Any]) -> Ledger:
    ledger = Ledger(
        root / "ledger.jsonl", key_path=root / "ledger.key", public_key_path=root / "ledger.pub"
    )
    for batch in batches:
        if batch == "checkpoint":
            ledger.checkpoint()
        elif len(batch) == 1:
            ledger.append(*batch[0])
        else:
            ledger.append_many(batch)
    return ledger


def check_ledger(batches: list[Any], position: float, delta: int) -> None:
    with scratch() as root:
        ledger = write_ledger(root, batches)
        result = ledger.verify()
        n_events = sum(1 if b == "checkpoint" else len(b) for b in batches)
        assert result.ok and result.entries == n_events, result.message()
        data = bytearray(ledger.path.read_bytes())
        i = min(int(position * len(data)), len(data) - 1)
        data[i] = (data[i] + delta) % 256
        ledger.path.write_bytes(bytes(data))
        assert not ledger.verify().ok, f"byte {i} changed unnoticed"
        assert not ledger.verify(all_signatures=False).ok, f"byte {i} (anchors only)"


@FAST
@given(BATCHES, st.floats(0, 1, exclude_max=True), st.integers(1, 255))
def test_any_ledger_verifies_and_any_byte_change_is_detected(batches, position, delta):
    check_ledger(batches, position, delta)


@pytest.mark.slow
@SLOW
@given(BATCHES, st.floats(0, 1, exclude_max=True), st.integers(1, 255))
def test_any_ledger_verifies_and_any_byte_change_is_detected_many(batches, position, delta):
    check_ledger(batches, position, delta)


def test_a_changed_signature_encoding_of_the_last_entry_is_detected(tmp_path):
    """Regression: base64's spare bits let the last entry's signature change unnoticed."""
    ledger = write_ledger(tmp_path, [[("subject.added", PIDS[0], {})]])
    data = ledger.path.read_bytes()
    pos = data.rindex(b'=="') - 1  # last base64 digit: 2 signature bits, 4 spare bits
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digit = alphabet.index(data[pos])
    twin = alphabet[(digit & 0b110000) | ((digit + 1) & 0b001111)]
    ledger.path.write_bytes(data[:pos] + bytes([twin]) + data[pos + 1 :])
    assert not ledger.verify().ok


# ---------------------------------------------------------------------------------------------
# Gallery against a reference model
# ---------------------------------------------------------------------------------------------

DIM = 32
THRESHOLD = 0.8


@dataclass
class Reference:
    """What the gallery should hold: templates of enrolled subjects, and who is blocked."""

    templates: dict[str, np.ndarray] = field(default_factory=dict)
    erased: set[str] = field(default_factory=set)
    withdrawn: set[str] = field(default_factory=set)
    restricted: set[str] = field(default_factory=set)

    def allowed(self, pid: str) -> bool:
        return not ({pid} & (self.erased | self.withdrawn | self.restricted))

    def searchable(self) -> set[str]:
        return {p for p in self.templates if self.allowed(p)}

    def identify(self, q: np.ndarray, top_k: int) -> list[str]:
        scores = {p: float(self.templates[p] @ q) for p in self.searchable()}
        hits = sorted((p for p, s in scores.items() if s >= THRESHOLD), key=lambda p: -scores[p])
        return hits[:top_k]


def unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def identity_vector(pid: str) -> np.ndarray:
    """A subject's 'true' direction: random, so two subjects are far apart in 32 dimensions."""
    return unit(np.random.default_rng(int(pid[1:], 16)).normal(size=DIM))


def photo_embeddings(pid: str, seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = identity_vector(pid)
    return np.stack([unit(base + rng.normal(scale=0.05, size=DIM)) for _ in range(n)])


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("enroll"), st.sampled_from(PIDS), st.integers(0, 99), st.integers(1, 3)),
        st.tuples(st.just("erase"), st.sampled_from(PIDS)),
        st.tuples(st.just("withdraw"), st.sampled_from(PIDS)),
        st.tuples(st.just("restrict"), st.sampled_from(PIDS)),
        st.tuples(st.just("lift"), st.sampled_from(PIDS)),
        st.tuples(st.just("identify"), st.sampled_from(PIDS), st.integers(1, 3)),
        st.tuples(st.just("verify"), st.sampled_from(PIDS)),
        st.tuples(st.just("restart")),
    ),
    min_size=1,
    max_size=14,
)


class GalleryRun:
    """A gallery on a fresh project whose subjects all consent to identification."""

    def __init__(self, root: Path) -> None:
        from visage_ml.privacy.consent import ConsentReceipt, sha256_text

        (root / "params.yaml").write_text("{}\n")
        self.paths = ProjectPaths(root)
        self.core = PrivacyCore(self.paths)
        self.core.add_subjects([NewSubject(pid=p) for p in PIDS], source="test", snapshot=False)
        receipt = ConsentReceipt(
            controller="c",
            controller_contact="c@example.org",
            purposes=("identification",),
            notice_version="v1",
            notice_hash=sha256_text("n"),
            collection_method="test",
            given_at="2026-11-26T07:00:00.000Z",
        )
        payload = {"receipt": receipt.to_dict(), "receipt_hash": receipt.digest()}
        self.core.ledger.append_many([("consent.given", p, payload) for p in PIDS])
        self.gallery = self.open()

    def open(self) -> Gallery:
        return Gallery.open(
            self.paths, model_version="m1", embedding_dim=DIM, threshold=THRESHOLD, core=self.core
        )

    def erase(self, pid: str) -> None:
        """The gallery's part of an erasure, bracketed by its registry events."""
        self.core.ledger.append("erasure.requested", pid, {"request_id": "r20260101-00000000"})
        self.gallery.erase(pid)
        self.core.ledger.append("erasure.completed", pid, {"request_id": "r20260101-00000000"})


def check_gallery(ops: list[tuple]) -> None:
    with scratch() as root:
        run, ref = GalleryRun(root), Reference()
        for op in ops:
            kind, pid = op[0], op[1] if len(op) > 1 else None
            g = run.gallery
            if kind == "enroll":
                emb = photo_embeddings(pid, op[2], op[3])
                if ref.allowed(pid):
                    g.enroll(pid, emb)
                    ref.templates[pid] = unit(emb.mean(axis=0))
                else:
                    with pytest.raises(EnrolmentRefusedError):
                        g.enroll(pid, emb)
            elif kind == "erase":
                if pid not in ref.erased:
                    run.erase(pid)
                    ref.erased.add(pid)
                    ref.templates.pop(pid, None)
            elif kind in ("withdraw", "restrict", "lift"):
                if pid in ref.erased:
                    continue
                if kind == "withdraw" and pid in ref.withdrawn:
                    with pytest.raises(NothingChangedError):  # records nothing a second time
                        run.core.withdraw_consent(pid, ["identification"], snapshot=False)
                elif kind == "withdraw":
                    run.core.withdraw_consent(pid, ["identification"], snapshot=False)
                    ref.withdrawn.add(pid)
                elif kind == "restrict":
                    run.core.ledger.append("restriction.set", pid, {"reason_code": "test"})
                    ref.restricted.add(pid)
                else:
                    run.core.ledger.append("restriction.lifted", pid, {})
                    ref.restricted.discard(pid)
            elif kind == "identify":
                q = photo_embeddings(pid, 1000, 1)[0]
                got = [m.pid for m in g.identify(q, top_k=op[2])]
                assert got == ref.identify(q, op[2]), (op, got)
            elif kind == "verify":
                q = photo_embeddings(pid, 2000, 1)[0]
                if pid in ref.searchable():
                    match, score = g.verify(q, pid)
                    assert match and score == pytest.approx(float(ref.templates[pid] @ q), abs=1e-5)
                else:
                    with pytest.raises(NotEnrolledError):
                        g.verify(q, pid)
            elif kind == "restart":
                run.core = PrivacyCore(run.paths)
                run.gallery = run.open()
            assert set(run.gallery.searchable()) == ref.searchable(), op
            assert set(run.gallery.stored()) == set(ref.templates), op
        # Erased subjects leave no file behind; a fresh process sees exactly the model.
        for pid in ref.erased:
            assert not run.gallery.template_path(pid).exists()
            assert not run.gallery.keys.path(pid).exists()
        fresh = Gallery.open(
            run.paths,
            model_version="m1",
            embedding_dim=DIM,
            threshold=THRESHOLD,
            core=PrivacyCore(run.paths),
        )
        assert set(fresh.searchable()) == ref.searchable()
        assert run.core.ledger.verify().ok


@FAST
@given(OPS)
def test_gallery_agrees_with_a_reference_model(ops):
    check_gallery(ops)


@pytest.mark.slow
@SLOW
@given(OPS)
def test_gallery_agrees_with_a_reference_model_many(ops):
    check_gallery(ops)


# ---------------------------------------------------------------------------------------------
# Registry fold against a reference fold
# ---------------------------------------------------------------------------------------------

PURPOSE_LISTS = st.lists(st.sampled_from(PURPOSES), max_size=3, unique=True)
REG_EVENT = st.one_of(
    st.tuples(st.just("subject.added"), st.sampled_from(PIDS), st.just({"source": "t"})),
    st.tuples(
        st.just("consent.given"),
        st.sampled_from(PIDS),
        PURPOSE_LISTS.map(lambda ps: {"receipt": {"purposes": ps, "legal_basis": ["art6(1)(a)"]}}),
    ),
    st.tuples(
        st.just("basis.recorded"),
        st.sampled_from(PIDS),
        PURPOSE_LISTS.map(lambda ps: {"purposes": ps, "legal_basis": ["art6(1)(f)"]}),
    ),
    *[
        st.tuples(st.just(t), st.sampled_from(PIDS), PURPOSE_LISTS.map(lambda ps: {"purposes": ps}))
        for t in ("consent.withdrawn", "objection", "objection.withdrawn")
    ],
    *[
        st.tuples(st.just(t), st.sampled_from(PIDS), st.just({}))
        for t in (
            "restriction.set",
            "restriction.lifted",
            "erasure.requested",
            "erasure.completed",
            "gallery.enrolled",
        )
    ],
    st.tuples(
        st.just("request.denied"),
        st.sampled_from(PIDS),
        st.sampled_from(["erasure", "access"]).map(lambda r: {"right": r}),
    ),
)


def reference_fold(events: list[tuple[str, str, dict]]) -> dict[str, dict[str, Any]]:
    """The registry's documented semantics, written independently of its code.

    A subject exists from its first ``subject.added``; an erased subject's state is final
    (nothing later, not even a second ``subject.added``, changes it).
    """
    subjects: dict[str, dict[str, Any]] = {}
    for type_, pid, payload in events:
        if type_ == "subject.added":
            if pid not in subjects:
                subjects[pid] = {
                    "granted": {},
                    "restricted": False,
                    "objected": set(),
                    "pending": False,
                    "erased": False,
                }
            continue
        s = subjects.get(pid)
        if s is None or s["erased"]:
            continue
        purposes = payload.get("purposes") or list(PURPOSES)
        if type_ == "consent.given":
            for p in payload["receipt"]["purposes"]:
                s["granted"][p] = True
        elif type_ == "basis.recorded":
            for p in payload["purposes"]:
                s["granted"][p] = True
        elif type_ == "consent.withdrawn":
            for p in purposes:
                s["granted"][p] = False
        elif type_ == "objection":
            s["objected"] |= set(purposes)
        elif type_ == "objection.withdrawn":
            s["objected"] -= set(purposes)
        elif type_ == "restriction.set":
            s["restricted"] = True
        elif type_ == "restriction.lifted":
            s["restricted"] = False
        elif type_ == "erasure.requested":
            s["pending"] = True
        elif type_ == "erasure.completed":
            s.update(pending=False, erased=True, granted={})
        elif type_ == "request.denied" and payload.get("right") == "erasure":
            s["pending"] = False
    out = {}
    for pid, s in subjects.items():
        decisions = {}
        for p in PURPOSES:
            if s["erased"]:
                reason = "erased"
            elif s["pending"]:
                reason = "erasure_pending"
            elif p in s["objected"]:
                reason = "objected"
            elif s["restricted"]:
                reason = "restricted"
            elif p not in s["granted"]:
                reason = "no_consent"
            elif not s["granted"][p]:
                reason = "consent_withdrawn"
            else:
                reason = "allowed"
            decisions[p] = reason
        # An erased subject's other flags are not compared: nothing can act on them any more.
        out[pid] = {"erased": s["erased"], "restricted": s["restricted"] and not s["erased"]}
        out[pid].update(decisions)
    return out


def observed(states: Any) -> dict[str, dict[str, Any]]:
    return {
        pid: {
            "erased": st_.erased,
            "restricted": st_.restricted and not st_.erased,
            **{p: st_.decision(p).reason for p in PURPOSES},
        }
        for pid, st_ in states.items()
    }


def check_fold(events: list[tuple[str, str, dict]], cuts: list[int]) -> None:
    expected = reference_fold(events)
    assert observed(fold((i, t, p, pl) for i, (t, p, pl) in enumerate(events))) == expected
    # The incremental registry over a real ledger, refreshed between arbitrary appends; it writes
    # the fold cache at each refresh. At each cut a cold registry starts from the cache the
    # previous refresh wrote and folds the lines appended since: it agrees with the reference
    # fold of what the ledger holds, whether it unpacks one subject at a time or all at once.
    with scratch() as root:
        ledger = Ledger(root / "l.jsonl", key_path=root / "k", public_key_path=root / "k.pub")
        # Not the project layout: the public key and the fold cache's key are named here.
        keys = {"public_key_path": root / "k.pub", "mac_key_path": root / "fold.key"}
        registry = Registry(ledger.path, cache_every=1, **keys)
        start = 0
        for cut in [*sorted(set(cuts)), len(events)]:
            chunk = events[start:cut]
            if chunk:
                ledger.append_many(chunk)
            start = max(start, cut)
            want = reference_fold(events[:start])
            cold = Registry(ledger.path, cache_every=10**9, **keys)
            assert observed({p: cold.get(p) for p in PIDS if p in cold}) == want
            assert observed(Registry(ledger.path, cache_every=10**9, **keys).states()) == want
            registry.refresh()
        assert observed(registry.states()) == expected
        assert ledger.path.with_name("l.jsonl.fold").is_file() or not events


@FAST
@given(st.lists(REG_EVENT, max_size=30), st.lists(st.integers(0, 30), max_size=4))
def test_registry_fold_agrees_with_a_reference_fold(events, cuts):
    check_fold(events, cuts)


@pytest.mark.slow
@SLOW
@given(st.lists(REG_EVENT, max_size=60), st.lists(st.integers(0, 60), max_size=6))
def test_registry_fold_agrees_with_a_reference_fold_many(events, cuts):
    check_fold(events, cuts)


def test_a_second_registration_does_not_reset_a_subject():
    """Regression: a repeated subject.added lifted restrictions and un-erased subjects."""
    pid = PIDS[0]
    events = [
        ("subject.added", pid, {"source": "t"}),
        ("restriction.set", pid, {}),
        ("subject.added", pid, {"source": "t"}),
    ]
    check_fold(events, [])
    erased = [
        ("subject.added", pid, {"source": "t"}),
        ("erasure.completed", pid, {}),
        ("subject.added", pid, {"source": "t"}),
        ("consent.given", pid, {"receipt": {"purposes": list(PURPOSES)}}),
    ]
    check_fold(erased, [2])
    assert fold((i, t, p, pl) for i, (t, p, pl) in enumerate(erased))[pid].erased
