"""Tests of the RFC 9162 Merkle tree: known answers, a recursive reference, and properties."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetguard.events.errors import ProofError
from fleetguard.events.merkle import (
    EMPTY_ROOT,
    MerkleFrontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

# The RFC 6962 test vectors of the certificate-transparency reference implementation, as kept in
# transparency-dev/merkle testonly/constants.go: eight leaf inputs and the root at each size.
CT_LEAVES = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    bytes(range(0x60, 0x70)),
]
CT_ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = {
    (0, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (5, 8): [
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
}
CT_CONSISTENCY = {
    (1, 1): [],
    (1, 8): [
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    ],
    (6, 8): [
        "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    ],
    (2, 5): [
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    ],
}
CT_LEAF_HASHES = [leaf_hash(data) for data in CT_LEAVES]


# -- a straightforward recursive reference, transcribed from RFC 9162 2.1 --------------------------


def _k(n: int) -> int:
    """Largest power of two smaller than n."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: Sequence[bytes]) -> bytes:
    """MTH(D[n]), RFC 9162 2.1.1, over leaf hashes."""
    if len(d) == 0:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]), RFC 9162 2.1.3.1."""
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b), RFC 9162 2.1.4.1."""
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def leaves(n: int) -> list[bytes]:
    """Return ``n`` distinct leaf hashes."""
    return [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def flip(value: bytes, bit: int) -> bytes:
    """Return ``value`` with one bit (taken modulo its length) inverted."""
    bit %= len(value) * 8
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# -- hashes and roots ------------------------------------------------------------------------------


def test_empty_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert MerkleFrontier().root() == EMPTY_ROOT


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()


def test_single_leaf_root_is_the_leaf_hash() -> None:
    assert root_from_leaf_hashes([leaf_hash(b"")]).hex() == CT_ROOTS[1]


@pytest.mark.parametrize("size", range(9))
def test_root_matches_ct_vectors(size: int) -> None:
    assert root_from_leaf_hashes(CT_LEAF_HASHES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size"), sorted(CT_INCLUSION))
def test_inclusion_proof_matches_ct_vectors(index: int, size: int) -> None:
    proof = inclusion_proof(CT_LEAF_HASHES, index, size)
    assert [h.hex() for h in proof] == CT_INCLUSION[index, size]
    root = bytes.fromhex(CT_ROOTS[size])
    verify_inclusion(CT_LEAF_HASHES[index], index, size, proof, root)


@pytest.mark.parametrize(("old", "new"), sorted(CT_CONSISTENCY))
def test_consistency_proof_matches_ct_vectors(old: int, new: int) -> None:
    proof = consistency_proof(CT_LEAF_HASHES, old, new)
    assert [h.hex() for h in proof] == CT_CONSISTENCY[old, new]
    old_root, new_root = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    verify_consistency(old, new, old_root, new_root, proof)


def test_root_matches_recursive_reference_for_sizes_0_to_70() -> None:
    hashes = leaves(70)
    for n in range(71):
        assert root_from_leaf_hashes(hashes[:n]) == ref_mth(hashes[:n]), n


def test_frontier_root_matches_reference_at_every_size_to_70() -> None:
    hashes = leaves(70)
    frontier = MerkleFrontier()
    assert frontier.size == 0
    for n, value in enumerate(hashes, start=1):
        frontier.append(value)
        assert frontier.size == n
        assert frontier.root() == ref_mth(hashes[:n]), n


def test_proofs_match_recursive_reference_for_sizes_to_33() -> None:
    hashes = leaves(33)
    for n in range(1, 34):
        for m in range(n):
            assert inclusion_proof(hashes, m, n) == ref_path(m, hashes[:n]), (m, n)
        for m in range(1, n + 1):
            assert consistency_proof(hashes, m, n) == ref_subproof(m, hashes[:n], True), (m, n)


# -- properties ------------------------------------------------------------------------------------

sizes_and_index = st.integers(min_value=1, max_value=300).flatmap(
    lambda n: st.tuples(st.just(n), st.integers(min_value=0, max_value=n - 1))
)
old_and_new = st.integers(min_value=1, max_value=300).flatmap(
    lambda n: st.tuples(st.integers(min_value=1, max_value=n), st.just(n))
)
HASHES_300 = leaves(300)


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=200))
def test_frontier_root_equals_root_from_leaf_hashes_at_every_size(values: list[bytes]) -> None:
    frontier = MerkleFrontier()
    for n, value in enumerate(values, start=1):
        frontier.append(value)
        assert frontier.root() == root_from_leaf_hashes(values[:n])
    assert frontier.size == len(values)


@given(sizes_and_index)
def test_every_inclusion_proof_verifies(case: tuple[int, int]) -> None:
    size, index = case
    proof = inclusion_proof(HASHES_300, index, size)
    root = root_from_leaf_hashes(HASHES_300[:size])
    verify_inclusion(HASHES_300[index], index, size, proof, root)


@given(old_and_new)
def test_every_consistency_proof_verifies(case: tuple[int, int]) -> None:
    old, new = case
    proof = consistency_proof(HASHES_300, old, new)
    old_root = root_from_leaf_hashes(HASHES_300[:old])
    new_root = root_from_leaf_hashes(HASHES_300[:new])
    verify_consistency(old, new, old_root, new_root, proof)


@given(sizes_and_index, st.integers(min_value=0), st.sampled_from(["proof", "root", "leaf"]))
def test_flipped_bit_breaks_inclusion(case: tuple[int, int], bit: int, target: str) -> None:
    size, index = case
    proof = inclusion_proof(HASHES_300, index, size)
    root = root_from_leaf_hashes(HASHES_300[:size])
    leaf = HASHES_300[index]
    if target == "proof" and proof:
        position = bit % len(proof)
        proof[position] = flip(proof[position], bit // len(proof))
    elif target == "root":
        root = flip(root, bit)
    else:
        leaf = flip(leaf, bit)
    with pytest.raises(ProofError, match=r"does not match the root"):
        verify_inclusion(leaf, index, size, proof, root)


@given(old_and_new, st.integers(min_value=0), st.sampled_from(["proof", "old", "new"]))
def test_flipped_bit_breaks_consistency(case: tuple[int, int], bit: int, target: str) -> None:
    old, new = case
    proof = consistency_proof(HASHES_300, old, new)
    old_root = root_from_leaf_hashes(HASHES_300[:old])
    new_root = root_from_leaf_hashes(HASHES_300[:new])
    if target == "proof" and proof:
        position = bit % len(proof)
        proof[position] = flip(proof[position], bit // len(proof))
    elif target == "new":
        new_root = flip(new_root, bit)
    else:
        old_root = flip(old_root, bit)
    with pytest.raises(ProofError, match=r"does not match the roots|roots at size \d+ differ"):
        verify_consistency(old, new, old_root, new_root, proof)


# -- malformed proofs and bounds -------------------------------------------------------------------


def test_inclusion_proof_with_an_extra_hash_is_too_long() -> None:
    proof = inclusion_proof(CT_LEAF_HASHES, 0, 8)
    root = bytes.fromhex(CT_ROOTS[8])
    with pytest.raises(ProofError, match=r"^inclusion proof for leaf 0 of 8 is too long$"):
        verify_inclusion(CT_LEAF_HASHES[0], 0, 8, [*proof, proof[0]], root)


def test_inclusion_proof_missing_a_hash_is_too_short() -> None:
    proof = inclusion_proof(CT_LEAF_HASHES, 5, 8)
    root = bytes.fromhex(CT_ROOTS[8])
    with pytest.raises(ProofError, match=r"^inclusion proof for leaf 5 of 8 is too short$"):
        verify_inclusion(CT_LEAF_HASHES[5], 5, 8, proof[:-1], root)


def test_inclusion_proof_for_another_index_is_rejected() -> None:
    proof = inclusion_proof(CT_LEAF_HASHES, 5, 8)
    root = bytes.fromhex(CT_ROOTS[8])
    with pytest.raises(ProofError, match=r"^inclusion proof for leaf 4 of 8 does not match"):
        verify_inclusion(CT_LEAF_HASHES[5], 4, 8, proof, root)


@pytest.mark.parametrize(("index", "size"), [(-1, 8), (8, 8), (0, 0), (9, 8)])
def test_inclusion_index_out_of_range(index: int, size: int) -> None:
    pattern = rf"^leaf index {index} is out of range for tree size {size}$"
    with pytest.raises(ProofError, match=pattern):
        inclusion_proof(CT_LEAF_HASHES, index, size)
    with pytest.raises(ProofError, match=pattern):
        verify_inclusion(CT_LEAF_HASHES[0], index, size, [], EMPTY_ROOT)


def test_inclusion_tree_larger_than_leaves_is_rejected() -> None:
    with pytest.raises(ProofError, match=r"^tree size 9 is out of range 0\.\.8$"):
        inclusion_proof(CT_LEAF_HASHES, 0, 9)


def test_proof_longer_than_64_hashes_is_rejected() -> None:
    with pytest.raises(ProofError, match=r"^proof has 65 hashes, at most 64$"):
        verify_inclusion(CT_LEAF_HASHES[0], 0, 2**64 - 1, [EMPTY_ROOT] * 65, EMPTY_ROOT)
    with pytest.raises(ProofError, match=r"^proof has 65 hashes, at most 64$"):
        verify_consistency(1, 2**64 - 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT] * 65)


def test_tree_size_above_uint64_is_rejected() -> None:
    with pytest.raises(ProofError, match=r"^tree size 18446744073709551616 is out of range"):
        verify_inclusion(CT_LEAF_HASHES[0], 0, 2**64, [], EMPTY_ROOT)


@pytest.mark.parametrize("length", [0, 31, 33])
def test_hashes_of_the_wrong_length_are_rejected(length: int) -> None:
    bad = b"\x00" * length
    good = EMPTY_ROOT
    with pytest.raises(ProofError, match=rf"^leaf hash is {length} bytes, expected 32$"):
        verify_inclusion(bad, 0, 1, [], good)
    with pytest.raises(ProofError, match=rf"^root hash is {length} bytes, expected 32$"):
        verify_inclusion(good, 0, 1, [], bad)
    with pytest.raises(ProofError, match=rf"^proof hash 1 is {length} bytes, expected 32$"):
        verify_inclusion(good, 0, 4, [good, bad], good)
    with pytest.raises(ProofError, match=rf"^old root hash is {length} bytes, expected 32$"):
        verify_consistency(1, 2, bad, good, [good])
    with pytest.raises(ProofError, match=rf"^leaf hash 2 is {length} bytes, expected 32$"):
        root_from_leaf_hashes([good, good, bad])
    with pytest.raises(ProofError, match=rf"^leaf hash is {length} bytes, expected 32$"):
        MerkleFrontier().append(bad)


def test_frontier_rejected_append_leaves_it_unchanged() -> None:
    frontier = MerkleFrontier()
    frontier.append(CT_LEAF_HASHES[0])
    with pytest.raises(ProofError, match="leaf hash is 3 bytes"):
        frontier.append(b"abc")
    assert frontier.size == 1
    assert frontier.root().hex() == CT_ROOTS[1]


@pytest.mark.parametrize(("old", "new"), [(-1, 4), (5, 4), (0, 9)])
def test_consistency_sizes_out_of_range(old: int, new: int) -> None:
    with pytest.raises(ProofError, match=r"^tree size -?\d+ is out of range 0\.\.\d+$"):
        consistency_proof(CT_LEAF_HASHES, old, new)


def test_consistency_verify_rejects_shrinking_tree() -> None:
    with pytest.raises(ProofError, match=r"^tree size 5 is out of range 0\.\.4$"):
        verify_consistency(5, 4, EMPTY_ROOT, EMPTY_ROOT, [])


def test_consistency_from_empty_tree_needs_empty_proof_and_empty_root() -> None:
    root = bytes.fromhex(CT_ROOTS[8])
    assert consistency_proof(CT_LEAF_HASHES, 0, 8) == []
    verify_consistency(0, 8, EMPTY_ROOT, root, [])
    with pytest.raises(ProofError, match=r"^consistency proof from 0 to 8 must be empty, has 1$"):
        verify_consistency(0, 8, EMPTY_ROOT, root, [root])
    with pytest.raises(ProofError, match=r"old root is not the empty tree's root"):
        verify_consistency(0, 8, root, root, [])


def test_consistency_between_equal_sizes_needs_equal_roots() -> None:
    root = bytes.fromhex(CT_ROOTS[8])
    verify_consistency(8, 8, root, root, [])
    with pytest.raises(ProofError, match=r"^consistency proof: the roots at size 8 differ$"):
        verify_consistency(8, 8, root, EMPTY_ROOT, [])


def test_empty_consistency_proof_between_different_sizes_is_rejected() -> None:
    old_root, new_root = bytes.fromhex(CT_ROOTS[3]), bytes.fromhex(CT_ROOTS[8])
    with pytest.raises(ProofError, match=r"^consistency proof from 3 to 8 is empty$"):
        verify_consistency(3, 8, old_root, new_root, [])


def test_consistency_proof_with_an_extra_hash_is_too_long() -> None:
    proof = consistency_proof(CT_LEAF_HASHES, 6, 8)
    old_root, new_root = bytes.fromhex(CT_ROOTS[6]), bytes.fromhex(CT_ROOTS[8])
    with pytest.raises(ProofError, match=r"^consistency proof from 6 to 8 is too long$"):
        verify_consistency(6, 8, old_root, new_root, [*proof, proof[0]])


def test_consistency_proof_missing_a_hash_is_too_short() -> None:
    proof = consistency_proof(CT_LEAF_HASHES, 6, 8)
    old_root, new_root = bytes.fromhex(CT_ROOTS[6]), bytes.fromhex(CT_ROOTS[8])
    with pytest.raises(ProofError, match=r"^consistency proof from 6 to 8 is too short$"):
        verify_consistency(6, 8, old_root, new_root, proof[:-1])


def test_consistency_proof_against_a_rewritten_prefix_is_rejected() -> None:
    rewritten = [*CT_LEAF_HASHES[:2], leaf_hash(b"forged"), *CT_LEAF_HASHES[3:]]
    proof = consistency_proof(rewritten, 6, 8)
    old_root = bytes.fromhex(CT_ROOTS[6])
    new_root = root_from_leaf_hashes(rewritten)
    with pytest.raises(ProofError, match=r"^consistency proof from 6 to 8 does not match the roots$"):
        verify_consistency(6, 8, old_root, new_root, proof)
