"""Merkle tree heads with inclusion and consistency proofs, as RFC 9162 (CT v2) §2.1 specifies.

Leaves are byte strings (ledger lines). ``MTH({}) = SHA-256()``, a leaf hashes as
``SHA-256(0x00 || d)`` and an interior node as ``SHA-256(0x01 || left || right)``; a tree of
``n`` leaves splits at ``k``, the largest power of two smaller than ``n``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """Merkle tree head over leaves whose hashes are ``hashes``.

    Iterative: combines left to right level by level, carrying an odd last node up unchanged,
    which yields the same tree shape as RFC 9162's recursive definition.
    """
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


class MerkleTree:
    """All levels of the tree over ``hashes``, built once: root and audit paths in O(n) total.

    Level 0 holds the leaf hashes; each level pairs nodes left to right and carries an odd last
    node up unchanged, which is RFC 9162's tree (see :func:`root_from_leaf_hashes`).
    """

    def __init__(self, hashes: Sequence[bytes]) -> None:
        levels = [list(hashes)]
        while len(levels[-1]) > 1:
            level = levels[-1]
            nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])
            levels.append(nxt)
        self.levels = levels
        self.size = len(hashes)

    def root(self) -> bytes:
        """The tree head's root hash."""
        return self.levels[-1][0] if self.size else EMPTY_ROOT

    def inclusion_proof(self, index: int) -> list[bytes]:
        """Audit path of leaf ``index``, leaf first (equal to :func:`inclusion_proof`)."""
        if not 0 <= index < self.size:
            raise ValueError(f"leaf index {index} outside a tree of {self.size} leaves")
        path = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index >>= 1
        return path


def root(leaves: Sequence[bytes]) -> bytes:
    """``MTH(D[n])`` of the raw leaves."""
    return root_from_leaf_hashes([leaf_hash(d) for d in leaves])


def _subroot(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    return root_from_leaf_hashes(hashes[lo:hi])


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(m, D[n])``: audit path for leaf ``index`` in the tree of ``len(hashes)`` leaves."""
    n = len(hashes)
    if not 0 <= index < n:
        raise ValueError(f"leaf index {index} outside a tree of {n} leaves")
    path: list[bytes] = []
    lo, hi, m = 0, n, index
    # Walk down from the root; collect the sibling subtree roots, then reverse (leaf first).
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_subroot(hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_subroot(hashes, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], expected_root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2: does ``proof`` show leaf hash ``leaf`` at ``index`` under the root?"""
    if not 0 <= index < tree_size:
        return False
    fn, sn = index, tree_size - 1
    r = leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def consistency_proof(hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """``PROOF(m, D[n])``: shows the tree of ``old_size`` leaves is a prefix of ``hashes``."""
    n = len(hashes)
    if not 0 < old_size <= n:
        raise ValueError(f"old size {old_size} must be in 1..{n}")

    def subproof(m: int, lo: int, hi: int, complete: bool) -> list[bytes]:
        size = hi - lo
        if m == size:
            return [] if complete else [_subroot(hashes, lo, hi)]
        k = _split(size)
        if m <= k:
            return [*subproof(m, lo, lo + k, complete), _subroot(hashes, lo + k, hi)]
        return [*subproof(m - k, lo + k, hi, False), _subroot(hashes, lo, lo + k)]

    return subproof(old_size, 0, n, True)


def verify_consistency(
    old_size: int,
    new_size: int,
    proof: Sequence[bytes],
    old_root: bytes,
    new_root: bytes,
) -> bool:
    """RFC 9162 §2.1.4.2: is the tree (old_size, old_root) a prefix of (new_size, new_root)?"""
    if old_size < 1 or old_size > new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # exact power of two: the old root is the first node
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == old_root and sr == new_root
