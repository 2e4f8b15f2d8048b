"""Merkle tree heads with inclusion and consistency proofs, as RFC 9162 (CT v2) §2.1 specifies.

Leaves are byte strings (ledger lines). ``MTH({}) = SHA-256()``, a leaf hashes as
``SHA-256(0x00 || d)`` and an interior node as ``SHA-256(0x01 || left || right)``; a tree of
``n`` leaves splits at ``k``, the largest power of two smaller than ``n``.

One implementation: :class:`MerkleTree` builds every level once (O(n) hashes), then serves the
root and each proof in O(log n) node look-ups, which is what a ledger of ~100k entries needs.
A ledger's trees grow by a few leaves at a time: :func:`tree` extends a tree built lately
over exactly the same first leaves (:meth:`MerkleTree.extended`, O(new + log n) hashes).
The module functions (:func:`root`, :func:`inclusion_proof`, :func:`consistency_proof`) are
shorthands that build a tree; the verifiers need no tree at all.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()

MSG_LEAF_INDEX = "leaf index {index} outside a tree of {size} leaves"
MSG_OLD_SIZE = "old size {old} must be in 1..{size} (the new tree's size)"


def leaf_hash(data: bytes) -> bytes:
    """Hash of one leaf: ``SHA-256(0x00 || data)``."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly smaller than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """All levels of the RFC 9162 tree over leaf hashes, built once.

    Level 0 holds the leaf hashes; each level pairs nodes left to right and carries an odd last
    node up unchanged. Node ``i`` of level ``h`` is then ``MTH`` of the leaves
    ``[i * 2**h, min((i + 1) * 2**h, size))``, so every subtree that RFC 9162's recursive
    definitions name (root, audit path, consistency proof) is one stored node.

    Parameters
    ----------
    hashes
        Leaf hashes (:func:`leaf_hash` of each leaf), in log order.
    """

    def __init__(self, hashes: Sequence[bytes]) -> None:
        level = list(hashes)
        levels = [level]
        sha256 = hashlib.sha256  # bound once: this loop is the hot path of every tree head
        while len(level) > 1:
            nxt = [
                sha256(b"\x01" + level[i] + level[i + 1]).digest()
                for i in range(0, len(level) - 1, 2)
            ]
            if len(level) % 2:
                nxt.append(level[-1])
            levels.append(nxt)
            level = nxt
        self.levels = levels
        self.size = len(levels[0])

    def root(self) -> bytes:
        """``MTH(D[n])``: the tree head's root hash."""
        return self.levels[-1][0] if self.size else EMPTY_ROOT

    def _subtree(self, lo: int, hi: int) -> bytes:
        """``MTH(D[lo:hi])`` of a subtree of the recursion: ``lo`` is a multiple of ``2**h`` and
        ``hi == min(lo + 2**h, size)`` for ``h = ceil(log2(hi - lo))``."""
        h = (hi - lo - 1).bit_length()
        return self.levels[h][lo >> h]

    def inclusion_proof(self, index: int) -> list[bytes]:
        """``PATH(index, D[n])``: the audit path of leaf ``index``, leaf end first.

        Raises
        ------
        ValueError
            ``index`` is not a leaf of this tree.
        """
        if not 0 <= index < self.size:
            raise ValueError(MSG_LEAF_INDEX.format(index=index, size=self.size))
        path = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            index >>= 1
        return path

    def consistency_proof(self, old_size: int) -> list[bytes]:
        """``PROOF(old_size, D[n])``: shows the tree of the first ``old_size`` leaves is a prefix.

        Raises
        ------
        ValueError
            ``old_size`` is not in ``1..size``.
        """
        if not 0 < old_size <= self.size:
            raise ValueError(MSG_OLD_SIZE.format(old=old_size, size=self.size))
        # SUBPROOF(m, D[lo:hi], complete) of RFC 9162 §2.1.4.1, unrolled: each step keeps the
        # half holding the old tree's edge and records the other half's root (outermost first).
        proof: list[bytes] = []
        lo, hi, m, complete = 0, self.size, old_size, True
        while m != hi - lo:
            k = _split(hi - lo)
            if m <= k:
                proof.append(self._subtree(lo + k, hi))
                hi = lo + k
            else:
                proof.append(self._subtree(lo, lo + k))
                lo, m, complete = lo + k, m - k, False
        if not complete:
            proof.append(self._subtree(lo, hi))
        proof.reverse()
        return proof

    def extended(self, hashes: Sequence[bytes]) -> MerkleTree:
        """The tree of this one's leaves followed by ``hashes``: only the nodes the new leaves
        change are hashed (about log n of the old ones, and the new ones'); this tree is left
        as it was."""
        levels = [[*self.levels[0], *hashes]]
        start = self.size  # the first node of the level below that changed
        sha256 = hashlib.sha256
        while len(levels[-1]) > 1:
            level, h = levels[-1], len(levels) - 1
            keep = start // 2
            old = self.levels[h + 1] if h + 1 < len(self.levels) else []
            nxt = old[:keep]
            nxt.extend(
                sha256(b"\x01" + level[i] + level[i + 1]).digest()
                for i in range(2 * keep, len(level) - 1, 2)
            )
            if len(level) % 2:
                nxt.append(level[-1])
            levels.append(nxt)
            start = keep
        tree = MerkleTree.__new__(MerkleTree)
        tree.levels, tree.size = levels, len(levels[0])
        return tree


# The trees built lately (largest last): a ledger's next tree head, certificate or proof is a
# tree over the same leaves and a few more. Two are kept (each about 65 bytes a leaf, shared).
_RECENT: list[MerkleTree] = []
_RECENT_KEPT = 2
_RECENT_LOCK = threading.Lock()


def tree(hashes: Sequence[bytes]) -> MerkleTree:
    """``MerkleTree(hashes)``, extended from a tree built lately whose leaves are exactly the
    first of ``hashes`` (compared in full, never assumed), else built whole. An erasure builds
    four trees over a ledger of 150k entries: 0.12 s each, whole."""
    with _RECENT_LOCK:
        recent = sorted(_RECENT, key=lambda t: t.size, reverse=True)
    base = None
    for t in recent:
        if 0 < t.size <= len(hashes) and t.levels[0] == list(hashes[: t.size]):
            base = t
            break
    if base is not None and base.size == len(hashes):
        return base
    built = base.extended(hashes[base.size :]) if base is not None else MerkleTree(hashes)
    with _RECENT_LOCK:
        _RECENT.append(built)
        del _RECENT[:-_RECENT_KEPT]
    return built


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """``MTH`` of the leaves whose hashes are ``hashes``."""
    return tree(hashes).root()


def root(leaves: Sequence[bytes]) -> bytes:
    """``MTH(D[n])`` of the raw leaves."""
    return MerkleTree([leaf_hash(d) for d in leaves]).root()


def inclusion_proof(hashes: Sequence[bytes], index: int) -> list[bytes]:
    """``PATH(m, D[n])``: audit path for leaf ``index`` in the tree of ``len(hashes)`` leaves."""
    return MerkleTree(hashes).inclusion_proof(index)


def consistency_proof(hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """``PROOF(m, D[n])``: shows the tree of ``old_size`` leaves is a prefix of ``hashes``."""
    return MerkleTree(hashes).consistency_proof(old_size)


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
