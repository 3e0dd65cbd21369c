"""The Merkle tree of the event log: RFC 9162 (Certificate Transparency v2) section 2.1, SHA-256.

Theory of operation. Every log entry is hashed once into a *leaf hash*; the log's state at size
``n`` is the Merkle Tree Hash (MTH) of its first ``n`` leaf hashes. Leaves and interior nodes are
hashed with distinct one-byte prefixes (RFC 9162 2.1.1), so a leaf can never pass for a node.

- :func:`root_from_leaf_hashes` computes the MTH of a whole list, level by level: hashing adjacent
  pairs and carrying an odd last node up unchanged gives the same root as the RFC's recursive
  split at the largest power of two, without recursion.
- :class:`MerkleFrontier` grows a tree one leaf at a time, keeping only the roots of its perfect
  subtrees (one per set bit of the size), so the root is available at every size in one pass.
- :func:`inclusion_proof` / :func:`verify_inclusion` prove that a leaf is in a tree (RFC 9162
  2.1.3); :func:`consistency_proof` / :func:`verify_consistency` prove that a tree is a prefix of a
  larger one, i.e. that the log only ever grew (RFC 9162 2.1.4).

All functions take leaf *hashes*, never raw entries; everything that is malformed or out of range
raises :class:`~fleetguard.events.errors.ProofError`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fleetguard.events.errors import ProofError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_PROOF_LENGTH",
    "MAX_TREE_SIZE",
    "MerkleFrontier",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

_sha256 = hashlib.sha256

# RFC 9162 2.1.1: domain separation between leaves and interior nodes.
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

HASH_SIZE = 32
"""Bytes in a SHA-256 digest, the only hash this log uses."""

EMPTY_ROOT = _sha256(b"").digest()
"""MTH({}) = HASH(), RFC 9162 2.1.1."""

MAX_TREE_SIZE = 2**64 - 1
"""Tree sizes are uint64 on the wire (RFC 9162 4.10 ``tree_size``)."""

MAX_PROOF_LENGTH = 64
"""A proof in a tree of at most 2**64 - 1 leaves has at most 64 hashes (one per level)."""


def leaf_hash(data: bytes) -> bytes:
    """Return the leaf hash ``SHA-256(0x00 || data)`` of one log entry (RFC 9162 2.1.1)."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the interior node hash ``SHA-256(0x01 || left || right)`` (RFC 9162 2.1.1)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return MTH(D[n]) over all of ``leaf_hashes`` (RFC 9162 2.1.1); ``EMPTY_ROOT`` when empty.

    Raises ``ProofError`` if a leaf hash is not 32 bytes.
    """
    _require_hashes(leaf_hashes, "leaf hash")
    return _subtree_root(leaf_hashes, 0, len(leaf_hashes))


class MerkleFrontier:
    """An append-only Merkle tree that keeps only the roots of its perfect subtrees.

    ``append`` costs one hash amortised (a binary counter: each carry merges two equal subtrees);
    ``root`` costs at most ``log2(size)`` hashes. Memory is ``O(log size)``.
    """

    __slots__ = ("_size", "_stack")

    def __init__(self) -> None:
        self._size = 0
        # Roots of perfect subtrees, largest (leftmost) first; their sizes are the bits of _size.
        self._stack: list[bytes] = []

    @property
    def size(self) -> int:
        """Return the number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Append one leaf hash; raise ``ProofError`` if it is not 32 bytes or the tree is full."""
        if len(leaf_hash) != HASH_SIZE:
            raise ProofError(f"leaf hash is {len(leaf_hash)} bytes, expected {HASH_SIZE}")
        size = self._size
        if size == MAX_TREE_SIZE:
            raise ProofError(f"tree is full at {MAX_TREE_SIZE} leaves")
        stack = self._stack
        node = leaf_hash
        carry = size
        while carry & 1:
            node = _sha256(_NODE_PREFIX + stack.pop() + node).digest()
            carry >>= 1
        stack.append(node)
        self._size = size + 1

    def root(self) -> bytes:
        """Return MTH of the leaves appended so far; ``EMPTY_ROOT`` when there are none.

        For ``n`` not a power of two, MTH(D[n]) = HASH(0x01 || MTH(D[0:k]) || MTH(D[k:n])) with
        ``k`` the largest power of two below ``n`` (RFC 9162 2.1.1): fold the subtree roots from
        the right.
        """
        stack = self._stack
        if not stack:
            return EMPTY_ROOT
        node = stack[-1]
        for left in reversed(stack[:-1]):
            node = _sha256(_NODE_PREFIX + left + node).digest()
        return node


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, tree_size: int) -> list[bytes]:
    """Return PATH(index, D[tree_size]), the audit path of one leaf, leaf level first.

    RFC 9162 2.1.3.1, unrolled: walk from the root towards the leaf, recording the root of the
    sibling subtree at each split, then reverse. Costs ``O(tree_size)`` hashes.
    Raises ``ProofError`` unless ``0 <= index < tree_size <= len(leaf_hashes)``.
    """
    _require_size(tree_size, len(leaf_hashes))
    _require_index(index, tree_size)
    _require_hashes(leaf_hashes, "leaf hash")
    path: list[bytes] = []
    low, high = 0, tree_size
    while high - low > 1:
        mid = low + _split(high - low)
        if index < mid:
            path.append(_subtree_root(leaf_hashes, mid, high))
            high = mid
        else:
            path.append(_subtree_root(leaf_hashes, low, mid))
            low = mid
    path.reverse()
    return path


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    RFC 9162 2.1.3.2, step by step. Returns ``None``; raises ``ProofError`` if the proof does not
    verify, or if the index, size, proof length or a hash length is out of range.
    """
    _require_hash(leaf_hash, "leaf hash")
    _require_hash(root, "root hash")
    _require_proof(proof)
    _require_index(index, tree_size)
    _require_size(tree_size, MAX_TREE_SIZE)
    # Steps 2-3.
    fn, sn = index, tree_size - 1
    node = leaf_hash
    for sibling in proof:
        if sn == 0:  # 4a: more hashes than levels
            raise ProofError(f"inclusion proof for leaf {index} of {tree_size} is too long")
        if fn & 1 or fn == sn:  # 4b
            node = node_hash(sibling, node)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            node = node_hash(node, sibling)
        fn >>= 1  # 4c
        sn >>= 1
    # Step 5.
    if sn != 0:
        raise ProofError(f"inclusion proof for leaf {index} of {tree_size} is too short")
    if node != root:
        raise ProofError(f"inclusion proof for leaf {index} of {tree_size} does not match the root")


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """Return PROOF(old_size, D[new_size]): the tree of ``old_size`` is a prefix of ``new_size``.

    RFC 9162 2.1.4.1 SUBPROOF, unrolled. The proof is empty when ``old_size`` is 0 or equals
    ``new_size`` (nothing to prove). Costs ``O(new_size)`` hashes.
    Raises ``ProofError`` unless ``0 <= old_size <= new_size <= len(leaf_hashes)``.
    """
    _require_size(new_size, len(leaf_hashes))
    _require_size(old_size, new_size)
    _require_hashes(leaf_hashes, "leaf hash")
    if old_size in {0, new_size}:
        return []
    tail: list[bytes] = []
    low, high, m = 0, new_size, old_size
    old_root_is_known = True  # the b flag of SUBPROOF: D[0:m] is the whole old tree
    while m != high - low:
        k = _split(high - low)
        if m <= k:
            tail.append(_subtree_root(leaf_hashes, low + k, high))
            high = low + k
        else:
            tail.append(_subtree_root(leaf_hashes, low, low + k))
            low, m = low + k, m - k
            old_root_is_known = False
    head = [] if old_root_is_known else [_subtree_root(leaf_hashes, low, high)]
    return head + tail[::-1]


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``old_size``, ``old_root``) is a prefix of (``new_size``, ``new_root``).

    RFC 9162 2.1.4.2, with the cases it leaves implicit: equal sizes need an empty proof and
    equal roots; an empty old tree needs an empty proof and ``old_root == EMPTY_ROOT``.
    Returns ``None``; raises ``ProofError`` if the proof does not verify or is out of range.
    """
    _require_hash(old_root, "old root hash")
    _require_hash(new_root, "new root hash")
    _require_proof(proof)
    _require_size(new_size, MAX_TREE_SIZE)
    _require_size(old_size, new_size)
    if old_size in {0, new_size}:
        _verify_trivial_consistency(old_size, new_size, old_root, new_root, proof)
        return
    if not proof:  # step 1
        raise ProofError(f"consistency proof from {old_size} to {new_size} is empty")
    first_root, second_root, sn = _consistency_roots(old_size, new_size, old_root, proof)
    if sn != 0:  # step 7
        raise ProofError(f"consistency proof from {old_size} to {new_size} is too short")
    if first_root != old_root or second_root != new_root:
        raise ProofError(f"consistency proof from {old_size} to {new_size} does not match the roots")


def _verify_trivial_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Verify the cases with nothing to prove: ``old_size`` is 0 or equals ``new_size``."""
    if proof:
        raise ProofError(f"consistency proof from {old_size} to {new_size} must be empty, has {len(proof)}")
    if old_size == 0 and old_root != EMPTY_ROOT:
        raise ProofError("consistency proof: old root is not the empty tree's root")
    if old_size == new_size and old_root != new_root:
        raise ProofError(f"consistency proof: the roots at size {old_size} differ")


def _consistency_roots(
    old_size: int, new_size: int, old_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes, int]:
    """Run RFC 9162 2.1.4.2 steps 2-6; return (fr, sr, sn) for step 7 to check."""
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # step 2: old tree is a perfect subtree of the new one
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1  # step 3
    while fn & 1:  # step 4
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]  # step 5
    for c in path[1:]:  # step 6
        if sn == 0:  # 6a
            raise ProofError(f"consistency proof from {old_size} to {new_size} is too long")
        if fn & 1 or fn == sn:  # 6b
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1  # 6c
        sn >>= 1
    return fr, sr, sn


def _split(n: int) -> int:
    """Return k, the largest power of two smaller than ``n`` (n > 1), RFC 9162 2.1.1."""
    return 1 << ((n - 1).bit_length() - 1)


def _subtree_root(leaf_hashes: Sequence[bytes], low: int, high: int) -> bytes:
    """Return MTH(D[low:high]) level by level, carrying an odd last node up unchanged.

    Carrying the odd node equals the RFC's split at the largest power of two: the left part of
    every split is a perfect tree, so the pairs of each level never straddle a split point.
    """
    if high == low:
        return EMPTY_ROOT
    level = leaf_hashes[low:high]
    while len(level) > 1:
        paired = [
            _sha256(_NODE_PREFIX + left + right).digest()
            for left, right in zip(level[0::2], level[1::2], strict=False)
        ]
        if len(level) & 1:
            paired.append(level[-1])
        level = paired
    return level[0]


def _require_hash(value: bytes, what: str) -> None:
    """Raise ``ProofError`` unless ``value`` is one SHA-256 digest."""
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes, expected {HASH_SIZE}")


def _require_hashes(values: Sequence[bytes], what: str) -> None:
    """Raise ``ProofError`` unless every item of ``values`` is one SHA-256 digest."""
    if set(map(len, values)) <= {HASH_SIZE}:
        return
    position = next(i for i, value in enumerate(values) if len(value) != HASH_SIZE)
    raise ProofError(f"{what} {position} is {len(values[position])} bytes, expected {HASH_SIZE}")


def _require_proof(proof: Sequence[bytes]) -> None:
    """Raise ``ProofError`` if ``proof`` has more than 64 hashes or one of the wrong size."""
    if len(proof) > MAX_PROOF_LENGTH:
        raise ProofError(f"proof has {len(proof)} hashes, at most {MAX_PROOF_LENGTH}")
    _require_hashes(proof, "proof hash")


def _require_size(size: int, limit: int) -> None:
    """Raise ``ProofError`` unless ``0 <= size <= limit``."""
    if not 0 <= size <= limit:
        raise ProofError(f"tree size {size} is out of range 0..{limit}")


def _require_index(index: int, tree_size: int) -> None:
    """Raise ``ProofError`` unless ``0 <= index < tree_size``."""
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} is out of range for tree size {tree_size}")
