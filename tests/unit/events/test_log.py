"""The event log: appends, checkpoints, proofs, and detection of every kind of tampering.

Tampering is done the way an attacker with database access would: with SQL on the tables.
"""

from __future__ import annotations

import datetime as dt

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from fleetguard.errors import InvalidInput
from fleetguard.events.checkpoint import CheckpointSigner, SignedTreeHead, TreeHead
from fleetguard.events.entry import GENESIS_HASH, NewEvent, entry_hash, to_micros
from fleetguard.events.errors import TamperDetected
from fleetguard.events.log import EventLog, FindingKind
from fleetguard.events.merkle import root_from_leaf_hashes, verify_consistency, verify_inclusion
from fleetguard.store.database import Database

NOW = dt.datetime(2026, 11, 26, 12, 0, tzinfo=dt.UTC)
ORIGIN = "example.org/fleetguard/test"


@pytest.fixture
def signer() -> CheckpointSigner:
    return CheckpointSigner(Ed25519PrivateKey.generate(), ORIGIN)


@pytest.fixture
def log(database: Database) -> EventLog:
    return EventLog(database, ORIGIN)


def _append(log: EventLog, database: Database, count: int, start: int = 0) -> None:
    events = [
        NewEvent(actor="tester", subject=f"device:d{i}", action="device.registered", reason=f"r{i}",
                 data={"n": i, "ok": True})
        for i in range(start, start + count)
    ]  # fmt: skip
    with database.transaction() as session:
        log.append_many(session, events, now=NOW)


def _sql(database: Database, statement: str, **params: object) -> None:
    with database.engine.begin() as conn:
        conn.execute(text(statement), params)


def _kinds(log: EventLog, signer: CheckpointSigner) -> list[tuple[FindingKind, int]]:
    return [(f.kind, f.seq) for f in log.verify(signer.public_key()).findings]


def test_append_chains_hashes_from_genesis(log: EventLog, database: Database) -> None:
    _append(log, database, 3)
    entries = log.entries(limit=10)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in entries[1:]] == [e.hash for e in entries[:-1]]
    first = entries[0]
    assert first.hash == entry_hash(
        1, to_micros(NOW), GENESIS_HASH, "tester", "device:d0", "device.registered", "r0", first.data
    )
    assert first.details() == {"n": 0, "ok": True}
    assert log.size() == 3


def test_append_rolled_back_with_its_transaction(log: EventLog, database: Database) -> None:
    def append_then_fail() -> None:
        with database.transaction() as session:
            log.append(session, NewEvent(actor="a", subject="s", action="x"), now=NOW)
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        append_then_fail()
    assert log.size() == 0
    assert log.entries() == []


def test_event_fields_are_bounded() -> None:
    with pytest.raises(InvalidInput, match="event reason is 4097 characters; the limit is 4096"):
        NewEvent(actor="a", subject="s", action="x", reason="r" * 4097)
    with pytest.raises(InvalidInput, match="event actor must not be empty"):
        NewEvent(actor="", subject="s", action="x")
    with pytest.raises(InvalidInput, match="event data exceeds 16384 bytes"):
        NewEvent(actor="a", subject="s", action="x", data={"big": "x" * 20000})


def test_intact_log_verifies(log: EventLog, database: Database, signer: CheckpointSigner) -> None:
    _append(log, database, 10)
    log.checkpoint(signer, now=NOW)
    _append(log, database, 5, start=10)
    report = log.verify(signer.public_key())
    assert report.intact
    assert (report.entries, report.checkpoints) == (15, 1)
    report.require_intact()


def test_modified_entry_is_named(log: EventLog, database: Database, signer: CheckpointSigner) -> None:
    _append(log, database, 5)
    _sql(database, "UPDATE event_log SET actor = 'mallory' WHERE seq = 3")
    assert _kinds(log, signer) == [(FindingKind.MODIFIED, 3)]


def test_modified_entry_with_recomputed_hash_breaks_the_next_link(
    log: EventLog, database: Database, signer: CheckpointSigner
) -> None:
    _append(log, database, 5)
    row = log.get(3)
    forged = entry_hash(
        3, to_micros(NOW), row.prev_hash, "mallory", row.subject, row.action, row.reason, row.data
    )
    _sql(database, "UPDATE event_log SET actor = 'mallory', hash = :h WHERE seq = 3", h=forged)
    assert _kinds(log, signer) == [(FindingKind.BROKEN_LINK, 4)]


def test_fully_rewritten_history_is_caught_by_the_signed_checkpoint(
    log: EventLog, database: Database, signer: CheckpointSigner
) -> None:
    _append(log, database, 4)
    log.checkpoint(signer, now=NOW)
    # The attacker rewrites entry 2 and re-chains everything after it: every hash and link is valid.
    prev = log.get(1).hash
    for seq in range(2, 5):
        e = log.get(seq)
        actor = "mallory" if seq == 2 else e.actor
        h = entry_hash(seq, to_micros(NOW), prev, actor, e.subject, e.action, e.reason, e.data)
        _sql(database, "UPDATE event_log SET actor = :a, prev_hash = :p, hash = :h WHERE seq = :s",
             a=actor, p=prev, h=h, s=seq)  # fmt: skip
        prev = h
    _sql(database, "UPDATE event_head SET hash = :h", h=prev)
    assert _kinds(log, signer) == [(FindingKind.CHECKPOINT_MISMATCH, 4)]


def test_deleted_entry_is_named(log: EventLog, database: Database, signer: CheckpointSigner) -> None:
    _append(log, database, 5)
    _sql(database, "DELETE FROM event_log WHERE seq = 3")
    assert _kinds(log, signer) == [(FindingKind.MISSING, 3), (FindingKind.BROKEN_LINK, 4)]


def test_deleted_tail_is_truncation(log: EventLog, database: Database, signer: CheckpointSigner) -> None:
    _append(log, database, 5)
    _sql(database, "DELETE FROM event_log WHERE seq >= 4")
    report = log.verify(signer.public_key())
    assert [(f.kind, f.seq) for f in report.findings] == [(FindingKind.TRUNCATED, 4)]
    assert "log ends at entry 3 but its head says 5" in report.findings[0].detail


def test_truncation_below_a_checkpoint_is_caught_even_with_a_forged_head(
    log: EventLog, database: Database, signer: CheckpointSigner
) -> None:
    _append(log, database, 5)
    log.checkpoint(signer, now=NOW)
    _sql(database, "DELETE FROM event_log WHERE seq >= 4")
    _sql(database, "UPDATE event_head SET seq = 3")
    assert _kinds(log, signer) == [(FindingKind.TRUNCATED, 5)]


def test_inserted_entry_is_named(log: EventLog, database: Database, signer: CheckpointSigner) -> None:
    _append(log, database, 3)
    # Shift entry 3 to 4 and insert a forged entry 3 that links correctly to entry 2.
    _sql(database, "UPDATE event_log SET seq = 4 WHERE seq = 3")
    prev = log.get(2).hash
    h = entry_hash(3, to_micros(NOW), prev, "mallory", "device:x", "device.registered", "", "{}")
    _sql(
        database,
        "INSERT INTO event_log (seq, time_us, actor, subject, action, reason, data, prev_hash, hash) "
        "VALUES (3, :t, 'mallory', 'device:x', 'device.registered', '', '{}', :p, :h)",
        t=to_micros(NOW),
        p=prev,
        h=h,
    )
    assert _kinds(log, signer) == [(FindingKind.MODIFIED, 4), (FindingKind.BROKEN_LINK, 4)]


def test_reordered_entries_are_named(log: EventLog, database: Database, signer: CheckpointSigner) -> None:
    _append(log, database, 4)
    _sql(database, "UPDATE event_log SET seq = 100 WHERE seq = 2")
    _sql(database, "UPDATE event_log SET seq = 2 WHERE seq = 3")
    _sql(database, "UPDATE event_log SET seq = 3 WHERE seq = 100")
    findings = _kinds(log, signer)
    assert (FindingKind.MODIFIED, 2) in findings
    assert (FindingKind.MODIFIED, 3) in findings
    assert (FindingKind.BROKEN_LINK, 2) in findings


def test_forged_checkpoint_signature_is_named(
    log: EventLog, database: Database, signer: CheckpointSigner
) -> None:
    _append(log, database, 2)
    log.checkpoint(signer, now=NOW)
    other = CheckpointSigner(Ed25519PrivateKey.generate(), ORIGIN)
    forged = other.sign(log.checkpoints()[0].head).to_note()
    _sql(database, "UPDATE event_checkpoints SET note = :n", n=forged)
    assert _kinds(log, signer) == [(FindingKind.BAD_CHECKPOINT, 2)]


def test_checkpoint_refuses_to_sign_a_tampered_log(
    log: EventLog, database: Database, signer: CheckpointSigner
) -> None:
    _append(log, database, 3)
    _sql(database, "UPDATE event_log SET reason = 'hidden' WHERE seq = 2")
    with pytest.raises(TamperDetected, match="entry 2 was modified"):
        log.checkpoint(signer, now=NOW)
    assert log.checkpoints() == []


def test_checkpoint_is_reused_when_nothing_was_appended(
    log: EventLog, database: Database, signer: CheckpointSigner
) -> None:
    _append(log, database, 3)
    first = log.checkpoint(signer, now=NOW)
    again = log.checkpoint(signer, now=NOW + dt.timedelta(minutes=1))
    assert again == first
    assert first.head.root_hash == root_from_leaf_hashes([e.hash for e in log.entries()])


def test_inclusion_and_consistency_proofs_verify_against_signed_roots(
    log: EventLog, database: Database, signer: CheckpointSigner
) -> None:
    _append(log, database, 7)
    old = log.checkpoint(signer, now=NOW)
    _append(log, database, 6, start=7)
    new = log.checkpoint(signer, now=NOW)
    proof = log.prove_inclusion(5, 13)
    assert proof.root_hash == new.head.root_hash
    verify_inclusion(proof.leaf_hash, 4, 13, proof.path, new.head.root_hash)
    consistency = log.prove_consistency(7, 13)
    verify_consistency(7, 13, old.head.root_hash, new.head.root_hash, consistency.path)


def test_proof_arguments_are_bounded(log: EventLog, database: Database) -> None:
    _append(log, database, 3)
    with pytest.raises(InvalidInput, match="entry 4 is not in a tree of size 3"):
        log.prove_inclusion(4)
    with pytest.raises(InvalidInput, match="tree size 9 is larger than the log"):
        log.prove_inclusion(1, 9)
    with pytest.raises(InvalidInput, match="old size 0 must be between 1 and 3"):
        log.prove_consistency(0)


def test_entries_filter_and_page(log: EventLog, database: Database) -> None:
    _append(log, database, 6)
    assert [e.seq for e in log.entries(after_seq=2, limit=2)] == [3, 4]
    assert [e.seq for e in log.entries(subject="device:d4")] == [5]
    assert [e.seq for e in log.entries(newest_first=True, limit=2)] == [6, 5]
    assert [e.seq for e in log.entries(newest_first=True, after_seq=3)] == [2, 1]
    with pytest.raises(InvalidInput, match="limit must be between 1 and 10000"):
        log.entries(limit=0)


_COLUMNS = st.sampled_from(["actor", "subject", "action", "reason", "data"])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(2, 12), target=st.data(), column=_COLUMNS, value=st.text(min_size=1, max_size=8))
def test_any_single_field_edit_is_detected_at_that_entry(
    tmp_path_factory: pytest.TempPathFactory,
    size: int,
    target: st.DataObject,
    column: str,
    value: str,
) -> None:
    from fleetguard.store.database import open_database

    db = open_database(f"sqlite:///{tmp_path_factory.mktemp('h') / 'h.db'}")
    try:
        log = EventLog(db, ORIGIN)
        signer = CheckpointSigner(Ed25519PrivateKey.generate(), ORIGIN)
        _append(log, db, size)
        seq = target.draw(st.integers(1, size))
        before = getattr(log.get(seq), column)
        _sql(db, f"UPDATE event_log SET {column} = :v WHERE seq = :s", v=value, s=seq)
        findings = _kinds(log, signer)
        if value == before:
            assert findings == []
        else:
            assert findings == [(FindingKind.MODIFIED, seq)]
    finally:
        db.close()


class _RacingSigner(CheckpointSigner):
    """Signs, but lets another process store its checkpoint of the same size first."""

    def __init__(self, key: Ed25519PrivateKey, rival: EventLog, rival_signer: CheckpointSigner) -> None:
        super().__init__(key, ORIGIN)
        self._rival = rival
        self._rival_signer = rival_signer

    def sign(self, head: TreeHead) -> SignedTreeHead:
        self._rival.checkpoint(self._rival_signer, now=NOW)
        return super().sign(head)


def test_concurrent_checkpoint_of_the_same_size_returns_the_stored_one(
    log: EventLog, database: Database, signer: CheckpointSigner
) -> None:
    _append(log, database, 3)
    racing = _RacingSigner(Ed25519PrivateKey.generate(), EventLog(database, ORIGIN), signer)
    result = log.checkpoint(racing, now=NOW + dt.timedelta(seconds=5))
    [stored] = log.checkpoints()
    assert result == stored
    assert (stored.head.tree_size, stored.head.timestamp) == (3, NOW)


def test_checkpoint_after_checkpoint_verifies_only_new_entries_and_extends_the_tree(
    log: EventLog, database: Database, signer: CheckpointSigner
) -> None:
    _append(log, database, 5)
    old = log.checkpoint(signer, now=NOW)
    _append(log, database, 4, start=5)
    _sql(database, "UPDATE event_log SET reason = 'edited' WHERE seq = 7")
    with pytest.raises(TamperDetected, match="entry 7 was modified"):
        log.checkpoint(signer, now=NOW)
    _sql(database, "UPDATE event_log SET reason = 'r6' WHERE seq = 7")
    new = log.checkpoint(signer, now=NOW)
    verify_consistency(5, 9, old.head.root_hash, new.head.root_hash, log.prove_consistency(5, 9).path)
