"""Purpose filter and identity-disjoint, group-stratified splits."""

import pandas as pd
import pytest

from visage_ml.data.manifest import (
    PurposeFilter,
    assign_splits,
    label_coverage,
    purpose_filter,
    usable_splits,
)


def snapshot(rows):
    return pd.DataFrame(rows, columns=["pid", "purpose", "allowed", "reason", "as_of_seq"])


def pid(i: int) -> str:
    return f"p{i:016x}"


def test_pools_follow_the_snapshot_and_exclusions_keep_their_reason():
    rows = []
    for i, (train, evaluation, reason) in enumerate(
        [
            (True, True, "allowed"),
            (True, False, "no_consent"),
            (False, True, "consent_withdrawn"),
            (False, False, "restricted"),
            (False, False, "objected"),
        ]
    ):
        rows.append((pid(i), "training", train, "allowed" if train else reason, i))
        rows.append((pid(i), "evaluation", evaluation, "allowed" if evaluation else reason, i))
    pools = purpose_filter([pid(i) for i in range(6)], snapshot(rows))
    assert pools.train_pool == {pid(0), pid(1)}
    assert pools.test_pool == {pid(0), pid(2)}
    assert pools.excluded == {pid(3): "restricted", pid(4): "objected", pid(5): "unknown_subject"}
    assert pools.exclusion_counts() == {"objected": 1, "restricted": 1, "unknown_subject": 1}


def test_splits_are_disjoint_stratified_and_ignore_consent():
    pids = [pid(i) for i in range(200)]
    groups = {p: ("g1" if i < 120 else "g4") for i, p in enumerate(pids)}
    splits = assign_splits(groups, val=0.1, test=0.25, seed=7)
    assert set(splits) == set(pids)
    for g, n in (("g1", 120), ("g4", 80)):
        members = [p for p in pids if groups[p] == g]
        n_test = sum(splits[p] == "test" for p in members)
        n_val = sum(splits[p] == "val" for p in members)
        assert abs(n_test - 0.25 * n) <= 1 and abs(n_val - 0.1 * n) <= 1
    assert assign_splits(groups, val=0.1, test=0.25, seed=8) != splits


def test_subjects_are_dropped_not_moved_when_their_split_purpose_is_not_allowed():
    splits = {pid(0): "train", pid(1): "test", pid(2): "val", pid(3): "test"}
    pools = PurposeFilter(train_pool={pid(0), pid(1)}, test_pool={pid(0), pid(2), pid(3)})
    kept = usable_splits(splits, pools)
    assert kept == {pid(0): "train", pid(3): "test"}
    assert pools.excluded == {pid(1): "no_evaluation_basis", pid(2): "no_training_basis"}


def test_removing_one_subject_moves_at_most_a_few_others():
    pids = [pid(i) for i in range(100)]
    groups = dict.fromkeys(pids, "g1")
    before = assign_splits(groups, val=0.1, test=0.25, seed=1)
    del groups[pids[3]]
    after = assign_splits(groups, val=0.1, test=0.25, seed=1)
    moved = [p for p in after if after[p] != before[p]]
    assert len(moved) <= 2


def test_roles_keep_benchmarks_out_of_training_and_training_sets_out_of_test():
    pids = [pid(i) for i in range(300)]
    groups = dict.fromkeys(pids, "g1")
    roles = {
        p: ("evaluation" if i < 100 else "training" if i < 200 else "both")
        for i, p in enumerate(pids)
    }
    sources = {
        p: ("import:lfw" if i < 100 else "import:imagefolder" if i < 200 else "synthfaces")
        for i, p in enumerate(pids)
    }
    splits = assign_splits(groups, val=0.1, test=0.25, seed=3, roles=roles, sources=sources)
    assert {splits[p] for p in pids[:100]} == {"test"}  # a benchmark is never trained on
    training_only = [splits[p] for p in pids[100:200]]
    assert "test" not in training_only
    # the validation share of a training-only set is that of train + val
    assert abs(training_only.count("val") - round(0.1 / 0.75 * 100)) <= 1
    both = [splits[p] for p in pids[200:]]
    assert abs(both.count("test") - 25) <= 1 and abs(both.count("val") - 10) <= 1
    with pytest.raises(ValueError, match="evaluation"):
        assign_splits(groups, val=0.1, test=0.25, seed=3, roles={pids[0]: "benchmark"})


def test_an_imported_set_never_moves_the_subjects_of_another_source():
    synth = [pid(i) for i in range(120)]
    groups = {p: ("g1" if i % 3 else "g2") for i, p in enumerate(synth)}
    sources = dict.fromkeys(synth, "synthfaces")
    before = assign_splits(groups, val=0.1, test=0.25, seed=5, sources=sources)
    # Without roles or sources (every subject "both", one stratum per group): the same splits.
    assert assign_splits(groups, val=0.1, test=0.25, seed=5) == before
    imported = [pid(1000 + i) for i in range(80)]
    groups.update(dict.fromkeys(imported, "g1"))
    sources.update(dict.fromkeys(imported, "import:imagefolder"))
    after = assign_splits(groups, val=0.1, test=0.25, seed=5, sources=sources)
    assert {p: after[p] for p in synth} == before


def test_label_coverage_counts_subjects_per_label():
    manifest = pd.DataFrame(
        {
            "pid": [pid(0), pid(0), pid(1), pid(2), pid(3)],
            "age": pd.array([30, 30, None, 41, None], dtype="Int16"),
            "gender": pd.array(["female", "female", None, "male", None], dtype="string"),
            "group": pd.array(["g1", "g1", None, "white", None], dtype="string"),
        }
    )
    cov = label_coverage(manifest)
    assert cov == {
        "subjects": 4,
        "age": 2,
        "gender": 2,
        "group": 1,
        "group_other": 1,
        "complete": 1,
        "unlabeled": 2,
        "unlabeled_share": 0.5,
    }
