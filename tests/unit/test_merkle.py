"""Merkle tree heads and proofs against trees computed by hand (RFC 9162 §2.1)."""

import hashlib

import pytest

from visage_ml.privacy import merkle


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


LEAVES = [b"a", b"b", b"c", b"d", b"e"]
L = [h(b"\x00" + d) for d in LEAVES]


def n(left: bytes, right: bytes) -> bytes:
    return h(b"\x01" + left + right)


# Hand-built trees: sizes 1..5 (size 3 = ((a,b),c); size 5 = (((a,b),(c,d)),e)).
HAND = {
    0: h(b""),
    1: L[0],
    2: n(L[0], L[1]),
    3: n(n(L[0], L[1]), L[2]),
    4: n(n(L[0], L[1]), n(L[2], L[3])),
    5: n(n(n(L[0], L[1]), n(L[2], L[3])), L[4]),
}


@pytest.mark.parametrize("size", sorted(HAND))
def test_root_matches_hand_computed_tree(size):
    assert merkle.root(LEAVES[:size]) == HAND[size]


def test_inclusion_proofs_by_hand():
    # Leaf c (index 2) in the tree of 5: siblings d, (a,b), e.
    assert merkle.inclusion_proof(L, 2) == [L[3], n(L[0], L[1]), L[4]]
    # Leaf e (index 4) in the tree of 5: only the left subtree of 4.
    assert merkle.inclusion_proof(L, 4) == [HAND[4]]
    for i in range(5):
        proof = merkle.inclusion_proof(L, i)
        assert merkle.verify_inclusion(L[i], i, 5, proof, HAND[5])
        assert not merkle.verify_inclusion(L[i], i, 5, proof, HAND[4])
        assert not merkle.verify_inclusion(L[(i + 1) % 5], i, 5, proof, HAND[5])


def test_consistency_proofs_by_hand():
    # RFC 9162 example shape: tree of 3 inside tree of 5 needs c, d, (a,b), e.
    assert merkle.consistency_proof(L, 3) == [L[2], L[3], n(L[0], L[1]), L[4]]
    assert merkle.consistency_proof(L, 4) == [L[4]]
    for old in range(1, 6):
        proof = merkle.consistency_proof(L, old)
        assert merkle.verify_consistency(old, 5, proof, HAND[old], HAND[5])
        assert not merkle.verify_consistency(old, 5, proof, HAND[old], HAND[4])
        if old > 1:
            assert not merkle.verify_consistency(old, 5, proof, HAND[old - 1], HAND[5])


def test_proofs_hold_for_many_sizes():
    leaves = [bytes([i]) * 7 for i in range(33)]
    hashes = [merkle.leaf_hash(x) for x in leaves]
    for size in range(1, 34):
        root = merkle.root(leaves[:size])
        for i in range(size):
            assert merkle.verify_inclusion(
                hashes[i], i, size, merkle.inclusion_proof(hashes[:size], i), root
            )
        for old in range(1, size + 1):
            proof = merkle.consistency_proof(hashes[:size], old)
            assert merkle.verify_consistency(old, size, proof, merkle.root(leaves[:old]), root)


def test_tree_object_gives_the_same_roots_and_paths_as_the_rfc_definition():
    hashes = [merkle.leaf_hash(bytes([i]) * 3) for i in range(45)]
    for size in range(1, 46):
        tree = merkle.MerkleTree(hashes[:size])
        assert tree.root() == merkle.root_from_leaf_hashes(hashes[:size])
        for i in range(size):
            assert tree.inclusion_proof(i) == merkle.inclusion_proof(hashes[:size], i)
    assert merkle.MerkleTree([]).root() == merkle.EMPTY_ROOT
