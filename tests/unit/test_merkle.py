"""Merkle tree heads and proofs (RFC 9162 §2.1) against published test vectors and by hand."""

import hashlib

import pytest

from visage_ml.privacy import merkle


def h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def x(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


# -- Published vectors -----------------------------------------------------------------------
# Copied from transparency-dev/merkle (Certificate Transparency's Go Merkle library),
# proof/verify_test.go (`leaves`, `roots`, `inclusionProofs`, `consistencyProofs`; the same data
# as google/certificate-transparency's merkle_tree_test.cc) and rfc6962/rfc6962_test.go (hasher).
# In `inclusionProofs` the Go file numbers leaves from 1; INCLUSION below uses 0-based indices.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_ROOTS = {  # tree size -> root
    1: x("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
    2: x("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"),
    3: x("aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"),
    4: x("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
    5: x("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4"),
    6: x("76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef"),
    7: x("ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c"),
    8: x("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"),
}
INCLUSION = [  # (leaf index, tree size, audit path)
    (0, 1, []),
    (
        0,
        8,
        [
            x("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            x("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            x("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        5,
        8,
        [
            x("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            x("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            x("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (2, 3, [x("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")]),
    (
        1,
        5,
        [
            x("6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"),
            x("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            x("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
]
CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            x("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            x("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            x("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ],
    ),
    (
        6,
        8,
        [
            x("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            x("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            x("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
    (
        2,
        5,
        [
            x("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            x("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
        ],
    ),
    (
        6,
        7,
        [
            x("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
            x("b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f"),
            x("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ],
    ),
]
CT_HASHES = [merkle.leaf_hash(d) for d in CT_LEAVES]
SOME_HASH = x("abacaba000000000000000000000000000000000000000000060061e00123456")


def test_hashes_match_the_rfc6962_hasher_vectors():
    assert x("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == (
        merkle.EMPTY_ROOT
    )
    assert merkle.root([]) == merkle.EMPTY_ROOT
    assert merkle.leaf_hash(b"") == x(
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    assert merkle.leaf_hash(b"L123456") == x(
        "395aa064aa4c29f7010acfe3f25db9485bbd4b91897b6ad7ad547639252b4d56"
    )
    assert merkle.node_hash(b"N123", b"N456") == x(
        "aa217fe888e47007fa15edab33c2b492a722cb106c64667fc2b044444de66bbb"
    )


@pytest.mark.parametrize("size", sorted(CT_ROOTS))
def test_roots_match_the_published_vectors(size):
    assert merkle.root(CT_LEAVES[:size]) == CT_ROOTS[size]
    assert merkle.root_from_leaf_hashes(CT_HASHES[:size]) == CT_ROOTS[size]
    assert merkle.MerkleTree(CT_HASHES[:size]).root() == CT_ROOTS[size]


def _inclusion_probes(index, size, proof, root, leaf):
    """Altered inputs that must all fail (the Go test's ``corruptInclusionProof``)."""
    probes = [
        (index - 1, size, root, leaf, proof),
        (index + 1, size, root, leaf, proof),
        (index ^ 2, size, root, leaf, proof),
        (index, size * 2, root, leaf, proof),
        (index, size // 2, root, leaf, proof),
        (index, size, root, b"WrongLeaf", proof),
        (index, size, merkle.EMPTY_ROOT, leaf, proof),
        (index, size, SOME_HASH, leaf, proof),
        (index, size, root, leaf, [*proof, b""]),
        (index, size, root, leaf, [*proof, root]),
        (index, size, root, leaf, [b"", *proof]),
        (index, size, root, leaf, [root, *proof]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 8]) + proof[i][1:]
        probes.append((index, size, root, leaf, flipped))
    if proof:
        probes.append((index, size, root, leaf, proof[:-1]))
    if len(proof) > 1:
        probes.append((index, size, root, leaf, [proof[0], SOME_HASH, *proof[1:]]))
    return probes


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_published_vectors(index, size, proof):
    tree = merkle.MerkleTree(CT_HASHES[:size])
    assert tree.inclusion_proof(index) == proof
    assert merkle.inclusion_proof(CT_HASHES[:size], index) == proof
    root, leaf = CT_ROOTS[size], CT_HASHES[index]
    assert merkle.verify_inclusion(leaf, index, size, proof, root)
    for probe in _inclusion_probes(index, size, proof, root, leaf):
        p_index, p_size, p_root, p_leaf, p_proof = probe
        assert not merkle.verify_inclusion(p_leaf, p_index, p_size, p_proof, p_root), probe


def _consistency_probes(old, new, old_root, new_root, proof):
    """Altered inputs that must all fail (the Go test's ``corruptConsistencyProof``)."""
    probes = [
        (old - 1, new, old_root, new_root, proof),
        (old + 1, new, old_root, new_root, proof),
        (old ^ 2, new, old_root, new_root, proof),
        (old, new * 2, old_root, new_root, proof),
        (old, new // 2, old_root, new_root, proof),
        (old, new, b"WrongRoot", new_root, proof),
        (old, new, old_root, b"WrongRoot", proof),
        (old, new, new_root, old_root, proof),
        (old, new, old_root, new_root, []),
        (old, new, old_root, new_root, [*proof, b""]),
        (old, new, old_root, new_root, [*proof, old_root]),
        (old, new, old_root, new_root, [*proof, new_root]),
        (old, new, old_root, new_root, [b"", *proof]),
        (old, new, old_root, new_root, [old_root, *proof]),
        (old, new, old_root, new_root, [new_root, *proof]),
        (old, new, old_root, new_root, [proof[0], *proof]),
        (old, new, old_root, new_root, proof[:-1]),
    ]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([proof[i][0] ^ 16]) + proof[i][1:]
        probes.append((old, new, old_root, new_root, flipped))
    return probes


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_published_vectors(old, new, proof):
    tree = merkle.MerkleTree(CT_HASHES[:new])
    assert tree.consistency_proof(old) == proof
    assert merkle.consistency_proof(CT_HASHES[:new], old) == proof
    old_root, new_root = CT_ROOTS[old], CT_ROOTS[new]
    assert merkle.verify_consistency(old, new, proof, old_root, new_root)
    if not proof:  # same size: only the root comparison is left to alter
        assert not merkle.verify_consistency(old, new, proof, SOME_HASH, new_root)
        return
    for probe in _consistency_probes(old, new, old_root, new_root, proof):
        p_old, p_new, p_old_root, p_new_root, p_proof = probe
        assert not merkle.verify_consistency(p_old, p_new, p_proof, p_old_root, p_new_root), probe


def test_bad_indices_and_sizes_are_refused():
    tree = merkle.MerkleTree(CT_HASHES[:7])
    for index in (-1, 7, 8):
        with pytest.raises(ValueError, match="outside a tree of 7"):
            tree.inclusion_proof(index)
    for old in (0, 8):
        with pytest.raises(ValueError, match=r"1\.\.7"):
            tree.consistency_proof(old)
    with pytest.raises(ValueError):
        merkle.MerkleTree([]).inclusion_proof(0)


# -- Hand-built trees and the RFC's recursive definitions ------------------------------------

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


def _mth(hashes):
    """RFC 9162 §2.1.1 ``MTH``, transcribed literally (the oracle for the tree's shortcuts)."""
    if len(hashes) == 1:
        return hashes[0]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    return n(_mth(hashes[:k]), _mth(hashes[k:]))


def _path(m, hashes):
    """RFC 9162 §2.1.3.1 ``PATH(m, D[n])``."""
    if len(hashes) == 1:
        return []
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    if m < k:
        return [*_path(m, hashes[:k]), _mth(hashes[k:])]
    return [*_path(m - k, hashes[k:]), _mth(hashes[:k])]


def _subproof(m, hashes, complete):
    """RFC 9162 §2.1.4.1 ``SUBPROOF(m, D[n], b)``."""
    if m == len(hashes):
        return [] if complete else [_mth(hashes)]
    k = 1 << ((len(hashes) - 1).bit_length() - 1)
    if m <= k:
        return [*_subproof(m, hashes[:k], complete), _mth(hashes[k:])]
    return [*_subproof(m - k, hashes[k:], False), _mth(hashes[:k])]


def test_tree_agrees_with_the_rfc_definitions_and_proofs_verify_for_many_sizes():
    leaves = [bytes([i]) * 7 for i in range(40)]
    hashes = [merkle.leaf_hash(d) for d in leaves]
    for size in range(1, len(hashes) + 1):
        tree = merkle.MerkleTree(hashes[:size])
        root = tree.root()
        assert root == _mth(hashes[:size]) == merkle.root(leaves[:size])
        for i in range(size):
            proof = tree.inclusion_proof(i)
            assert proof == _path(i, hashes[:size])
            assert merkle.verify_inclusion(hashes[i], i, size, proof, root)
        for old in range(1, size + 1):
            proof = tree.consistency_proof(old)
            assert proof == _subproof(old, hashes[:size], True)
            assert merkle.verify_consistency(old, size, proof, _mth(hashes[:old]), root)
    assert merkle.MerkleTree([]).root() == merkle.EMPTY_ROOT


def test_a_tree_extended_leaf_by_leaf_is_the_tree_built_whole():
    leaves = [merkle.leaf_hash(bytes([i]) * 3) for i in range(70)]
    for start in range(0, 40):
        base = merkle.MerkleTree(leaves[:start])
        for end in (start, start + 1, start + 2, start + 7, 70):
            grown, whole = base.extended(leaves[start:end]), merkle.MerkleTree(leaves[:end])
            assert grown.levels == whole.levels, (start, end)
        assert base.levels == merkle.MerkleTree(leaves[:start]).levels  # left as it was


def test_a_tree_is_never_extended_from_one_whose_leaves_differ():
    # merkle.tree reuses a recent tree only when its leaves are exactly the first ones asked
    # for: a ledger rewritten before its end gets the root of what it holds now.
    leaves = [merkle.leaf_hash(b"%d" % i) for i in range(300)]
    for n in (1, 2, 100, 101, 300):
        assert merkle.tree(leaves[:n]).root() == merkle.MerkleTree(leaves[:n]).root()
    altered = [*leaves[:50], merkle.leaf_hash(b"forged"), *leaves[51:]]
    assert merkle.tree(altered).root() == merkle.MerkleTree(altered).root()
    assert merkle.tree(altered).root() != merkle.tree(leaves).root()
    t = merkle.tree(leaves[:257])
    assert t.consistency_proof(100) == merkle.MerkleTree(leaves[:257]).consistency_proof(100)
    assert t.inclusion_proof(256) == merkle.MerkleTree(leaves[:257]).inclusion_proof(256)
