"""The registry fold and may_process."""

import pytest

from visage_ml.privacy.registry import (
    ALLOWED,
    ERASED,
    NO_BASIS,
    OBJECTED,
    RESTRICTED,
    UNKNOWN,
    WITHDRAWN,
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
