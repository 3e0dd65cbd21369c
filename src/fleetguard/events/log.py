"""The append-only, tamper-evident event log.

Theory of operation:

* **Append.** Inside the caller's transaction (so that a state change and its event commit together or
  not at all) the single ``event_head`` row is locked, each new entry gets the next sequence number and
  the previous entry's hash, and its own hash is computed over its canonical bytes
  (:mod:`fleetguard.events.entry`). Rows are only ever inserted.
* **Checkpoint.** Periodically the installation's Ed25519 key signs a tree head: the RFC 9162 Merkle
  root over the first ``tree_size`` entry hashes. Before signing, the entries since the previous
  checkpoint are re-verified, so that a tampered log is never laundered by a signature.
* **Verify.** :meth:`EventLog.verify` streams the whole log once, recomputes every hash, checks every
  link, and recomputes the root at every checkpointed size, checking each signature. It names each
  modified, missing, inserted or reordered entry and each rewritten checkpointed range.
* **Prove.** Inclusion and consistency proofs (RFC 9162 2.1.3 and 2.1.4) let an auditor who holds a
  signed tree head check an entry, or that a later tree extends an earlier one, without the database.

What it cannot do alone: entries appended after the newest checkpoint can be truncated by someone who
can write the database and the head row; publish checkpoints to an external witness to close that gap.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Row, bindparam, insert, select, update
from sqlalchemy.orm import Session

from fleetguard.errors import InvalidInput, NotFound
from fleetguard.events.checkpoint import (
    CheckpointSigner,
    SignedTreeHead,
    TreeHead,
    verify_tree_head,
)
from fleetguard.events.entry import (
    GENESIS_HASH,
    EventEntry,
    NewEvent,
    entry_hash,
    from_micros,
    to_micros,
)
from fleetguard.events.errors import CheckpointError, EventLogError, TamperDetected
from fleetguard.events.merkle import (
    MerkleFrontier,
    consistency_proof,
    inclusion_proof,
)
from fleetguard.store.database import Database
from fleetguard.store.driver import DriverRow, DriverTransaction, Prepared
from fleetguard.store.errors import DuplicateKey
from fleetguard.store.models import Base, CheckpointRow, EventHeadRow, EventRow

__all__ = [
    "ConsistencyProof",
    "EventLog",
    "Finding",
    "FindingKind",
    "InclusionProof",
    "VerificationReport",
]

_HEAD_ID = 1
_EVENTS = Base.metadata.tables["event_log"]
_STREAM_BATCH = 20_000
_MAX_FINDINGS = 1000
_MAX_PAGE = 10_000

# The append statements are built once: every state change in the installation runs them, and
# building a statement costs SQLAlchemy more than the database takes to run it. They go to the
# session's connection (Core), which skips the ORM's execution layer.
# FOR UPDATE serializes appenders on PostgreSQL; SQLite transactions start with BEGIN IMMEDIATE
# (fleetguard.store.database), which serializes them there.
_LOCK_HEAD = select(EventHeadRow.seq, EventHeadRow.hash).where(EventHeadRow.id == _HEAD_ID).with_for_update()
_SET_HEAD = (
    update(EventHeadRow)
    .where(EventHeadRow.id == _HEAD_ID)
    .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)
_INSERT_ENTRY = insert(_EVENTS)
_PREPARED_LOCK_HEAD = Prepared(_LOCK_HEAD)
_PREPARED_SET_HEAD = Prepared(_SET_HEAD)
_PREPARED_INSERT_ENTRY = Prepared(_INSERT_ENTRY)

_COLUMNS = (
    EventRow.seq,
    EventRow.time_us,
    EventRow.prev_hash,
    EventRow.actor,
    EventRow.subject,
    EventRow.action,
    EventRow.reason,
    EventRow.data,
    EventRow.hash,
)
# The relay reads the entries after its cursor after every burst of commits: prepared once, too.
_FORWARD = Prepared(
    select(*_COLUMNS)
    .where(EventRow.seq > bindparam("after"))
    .order_by(EventRow.seq)
    .limit(bindparam("limit"))
)


class FindingKind(enum.StrEnum):
    """What :meth:`EventLog.verify` found wrong."""

    MODIFIED = "modified"  # content does not match the entry's own hash
    MISSING = "missing"  # a gap in sequence numbers: entries deleted
    BROKEN_LINK = "broken-link"  # prev_hash is not the previous entry's hash: inserted or reordered
    TRUNCATED = "truncated"  # the log ends before the head row or a checkpoint says it should
    CHECKPOINT_MISMATCH = "checkpoint-mismatch"  # a signed range was rewritten
    BAD_CHECKPOINT = "bad-checkpoint"  # a checkpoint's signature or encoding does not verify


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem, located at an entry (``seq``) or a checkpoint size."""

    kind: FindingKind
    seq: int
    detail: str


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """The outcome of a full verification; ``findings`` is empty when the log is intact."""

    entries: int
    checkpoints: int
    findings: tuple[Finding, ...]
    more_findings: int

    @property
    def intact(self) -> bool:
        """True when no finding was made."""
        return not self.findings

    def require_intact(self) -> None:
        """Raise :class:`TamperDetected` naming the first finding, if there is any."""
        if self.findings:
            first = self.findings[0]
            total = len(self.findings) + self.more_findings
            raise TamperDetected(f"event log tampered: {total} finding(s); first: {first.detail}")


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """RFC 9162 inclusion proof of entry ``seq`` (leaf index ``seq - 1``) in a tree of ``tree_size``."""

    seq: int
    tree_size: int
    leaf_hash: bytes
    path: tuple[bytes, ...]
    root_hash: bytes


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """RFC 9162 consistency proof that the tree of ``new_size`` extends the tree of ``old_size``."""

    old_size: int
    new_size: int
    old_root: bytes
    new_root: bytes
    path: tuple[bytes, ...]


class EventLog:
    """The installation's event log in ``database``; ``origin`` names it in signed tree heads."""

    def __init__(self, database: Database, origin: str) -> None:
        self._db = database
        self.origin = origin

    # -- appending ---------------------------------------------------------------------------

    def append(self, session: Session, event: NewEvent, *, now: dt.datetime) -> EventEntry:
        """Append one event inside ``session``'s transaction and return the stored entry."""
        return self.append_many(session, [event], now=now)[0]

    def append_many(
        self, session: Session, events: Sequence[NewEvent], *, now: dt.datetime
    ) -> list[EventEntry]:
        """Append ``events`` in order inside ``session``'s transaction; return the stored entries."""
        if not events:
            return []
        time_us = to_micros(now)
        connection = session.connection()
        entries = _chained(_head(connection.execute(_LOCK_HEAD).one_or_none()), events, now)
        connection.execute(_INSERT_ENTRY, [_row_values(entry, time_us) for entry in entries])
        connection.execute(_SET_HEAD, {"new_seq": entries[-1].seq, "new_hash": entries[-1].hash})
        return entries

    def append_in(
        self, transaction: DriverTransaction, events: Sequence[NewEvent], *, now: dt.datetime
    ) -> list[EventEntry]:
        """Append ``events`` as :meth:`append_many` does, inside a driver-level ``transaction``.

        The same statements, prepared once (:mod:`fleetguard.store.driver`), for the hot paths
        that record in such a transaction.
        """
        if not events:
            return []
        time_us = to_micros(now)
        entries = _chained(_head(transaction.first(_PREPARED_LOCK_HEAD)), events, now)
        transaction.execute_many(_PREPARED_INSERT_ENTRY, [_row_values(entry, time_us) for entry in entries])
        transaction.execute(_PREPARED_SET_HEAD, {"new_seq": entries[-1].seq, "new_hash": entries[-1].hash})
        return entries

    # -- reading -----------------------------------------------------------------------------

    def size(self) -> int:
        """Return the number of entries according to the head row."""
        with self._db.reading() as session:
            return self._lock_free_head(session)[0]

    def entries(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        subject: str | None = None,
        action: str | None = None,
        newest_first: bool = False,
    ) -> list[EventEntry]:
        """Return up to ``limit`` entries after ``after_seq`` (or before it when newest first)."""
        if not 1 <= limit <= _MAX_PAGE:
            raise InvalidInput(f"limit must be between 1 and {_MAX_PAGE}")
        if subject is None and action is None and not newest_first:  # the relay's query
            with self._db.driver_reading() as reading:
                return [_entry(row) for row in reading.rows(_FORWARD, {"after": after_seq, "limit": limit})]
        query = select(*_COLUMNS)
        if subject is not None:
            query = query.where(EventRow.subject == subject)
        if action is not None:
            query = query.where(EventRow.action == action)
        if newest_first:
            if after_seq > 0:
                query = query.where(EventRow.seq < after_seq)
            query = query.order_by(EventRow.seq.desc())
        else:
            query = query.where(EventRow.seq > after_seq).order_by(EventRow.seq)
        with self._db.reading() as session:
            return [_entry(row) for row in session.execute(query.limit(limit))]

    def get(self, seq: int) -> EventEntry:
        """Return entry ``seq``; raise :class:`NotFound` if there is none."""
        with self._db.reading() as session:
            row = session.execute(select(*_COLUMNS).where(EventRow.seq == seq)).one_or_none()
        if row is None:
            raise NotFound(f"no event log entry with sequence number {seq}")
        return _entry(row)

    @staticmethod
    def _lock_free_head(session: Session) -> tuple[int, bytes]:
        row = session.execute(
            select(EventHeadRow.seq, EventHeadRow.hash).where(EventHeadRow.id == _HEAD_ID)
        ).one()
        return int(row.seq), bytes(row.hash)

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self, signer: CheckpointSigner, *, now: dt.datetime) -> SignedTreeHead:
        """Sign a tree head over every entry so far and store it; return it.

        When nothing was appended since the newest checkpoint, that checkpoint is returned.

        Raises:
            TamperDetected: the entries since the previous checkpoint do not verify.
        """
        latest = self.latest_checkpoint()
        size = self.size()
        if latest is not None and latest.head.tree_size == size:
            return latest
        verified_from = latest.head.tree_size if latest is not None else 0
        # The signed prefix only contributes its stored hashes (already verified when it was signed);
        # entries after it are re-verified in full before anything new is signed.
        frontier = MerkleFrontier()
        for leaf in self._stored_hashes(upto=verified_from):
            frontier.append(leaf)
        problems = _FindingSink()
        expected = _ChainCursor()
        if verified_from:
            expected.skip_to(verified_from + 1, latest_hash=self._stored_hash(verified_from))
        for row in self._stream(after=verified_from, upto=size):
            expected.check(row, problems)
            frontier.append(bytes(row.hash))
        if frontier.size != size:
            problems.add(FindingKind.TRUNCATED, frontier.size, "log shorter than its head row")
        problems.report(frontier.size, 0).require_intact()
        head = TreeHead(origin=self.origin, tree_size=size, root_hash=frontier.root(), timestamp=now)
        signed = signer.sign(head)
        try:
            with self._db.transaction() as session:
                session.add(
                    CheckpointRow(
                        tree_size=size, root_hash=head.root_hash, note=signed.to_note(), created_at=now
                    )
                )
        except DuplicateKey:
            # Another process signed the same size first: its checkpoint is as good as ours.
            return self._checkpoint_at(size)
        return signed

    def _checkpoint_at(self, size: int) -> SignedTreeHead:
        query = select(CheckpointRow.note).where(CheckpointRow.tree_size == size)
        with self._db.reading() as session:
            return SignedTreeHead.from_note(session.execute(query).scalar_one())

    def _stored_hashes(self, *, upto: int) -> Iterator[bytes]:
        if upto <= 0:
            return
        query = select(EventRow.hash).where(EventRow.seq <= upto).order_by(EventRow.seq)
        with self._db.read_engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=_STREAM_BATCH).execute(query)
            for (leaf,) in result:
                yield bytes(leaf)

    def _stored_hash(self, seq: int) -> bytes:
        with self._db.reading() as session:
            value = session.execute(select(EventRow.hash).where(EventRow.seq == seq)).scalar_one_or_none()
        if value is None:
            raise TamperDetected(f"entry {seq}, covered by a signed checkpoint, is missing")
        return bytes(value)

    def latest_checkpoint(self) -> SignedTreeHead | None:
        """Return the newest signed tree head, or None before the first checkpoint."""
        query = select(CheckpointRow.note).order_by(CheckpointRow.tree_size.desc()).limit(1)
        with self._db.reading() as session:
            note = session.execute(query).scalar_one_or_none()
        return None if note is None else SignedTreeHead.from_note(note)

    def checkpoints(self) -> list[SignedTreeHead]:
        """Return every stored signed tree head, oldest first (fails on a malformed note)."""
        with self._db.reading() as session:
            notes = session.execute(select(CheckpointRow.note).order_by(CheckpointRow.tree_size)).scalars()
            return [SignedTreeHead.from_note(note) for note in notes]

    # -- proofs ------------------------------------------------------------------------------

    def prove_inclusion(self, seq: int, tree_size: int | None = None) -> InclusionProof:
        """Return the inclusion proof of entry ``seq`` in the tree of ``tree_size`` (default: all)."""
        size = self.size() if tree_size is None else tree_size
        if not 1 <= seq <= size:
            raise InvalidInput(f"entry {seq} is not in a tree of size {size}")
        leaves = self._leaf_hashes(size)
        path = inclusion_proof(leaves, seq - 1, size)
        return InclusionProof(seq, size, leaves[seq - 1], tuple(path), _root(leaves))

    def prove_consistency(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        """Return the proof that the tree of ``new_size`` (default: all) extends ``old_size``."""
        size = self.size() if new_size is None else new_size
        if not 1 <= old_size <= size:
            raise InvalidInput(f"old size {old_size} must be between 1 and {size}")
        leaves = self._leaf_hashes(size)
        path = consistency_proof(leaves, old_size, size)
        return ConsistencyProof(old_size, size, _root(leaves[:old_size]), _root(leaves), tuple(path))

    def _leaf_hashes(self, size: int) -> list[bytes]:
        current = self.size()
        if size > current:
            raise InvalidInput(f"tree size {size} is larger than the log ({current} entries)")
        query = select(EventRow.hash).where(EventRow.seq <= size).order_by(EventRow.seq)
        with self._db.reading() as session:
            leaves = [bytes(h) for h in session.execute(query).scalars()]
        if len(leaves) != size:
            raise TamperDetected(f"log holds {len(leaves)} of the first {size} entries")
        return leaves

    # -- verification ------------------------------------------------------------------------

    def verify(
        self,
        public_key: Ed25519PublicKey,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> VerificationReport:
        """Recompute every hash, link and checkpointed root; return what was found.

        ``progress`` is called with the number of entries checked so far, every few thousand.
        """
        checkpoints, problems = self._load_checkpoints(public_key)
        with self._db.reading() as session:
            head_seq, _ = self._lock_free_head(session)
        frontier = MerkleFrontier()
        cursor = _ChainCursor()
        last_seq = 0
        for row in self._stream(upto=None):
            recomputed = cursor.check(row, problems)
            frontier.append(recomputed)
            last_seq = row.seq
            expected_root = checkpoints.get(frontier.size)
            if expected_root is not None and frontier.root() != expected_root:
                problems.add(
                    FindingKind.CHECKPOINT_MISMATCH,
                    frontier.size,
                    f"entries 1..{frontier.size} do not match the signed checkpoint of that size",
                )
            if progress is not None and frontier.size % 10_000 == 0:
                progress(frontier.size)
        if last_seq < head_seq:
            problems.add(
                FindingKind.TRUNCATED,
                last_seq + 1,
                f"log ends at entry {last_seq} but its head says {head_seq}: entries deleted",
            )
        for size in sorted(s for s in checkpoints if s > frontier.size):
            problems.add(
                FindingKind.TRUNCATED,
                size,
                f"a signed checkpoint covers {size} entries but the log holds {frontier.size}",
            )
        if progress is not None:
            progress(frontier.size)
        return problems.report(frontier.size, len(checkpoints))

    def _load_checkpoints(self, public_key: Ed25519PublicKey) -> tuple[dict[int, bytes], _FindingSink]:
        problems = _FindingSink()
        roots: dict[int, bytes] = {}
        with self._db.reading() as session:
            rows = session.execute(select(CheckpointRow.tree_size, CheckpointRow.note)).all()
        for tree_size, note in rows:
            try:
                signed = SignedTreeHead.from_note(note)
                verify_tree_head(signed, public_key)
            except CheckpointError as exc:
                problems.add(FindingKind.BAD_CHECKPOINT, tree_size, f"checkpoint {tree_size}: {exc}")
                continue
            if signed.head.tree_size != tree_size or signed.head.origin != self.origin:
                problems.add(
                    FindingKind.BAD_CHECKPOINT,
                    tree_size,
                    f"checkpoint {tree_size} is signed for {signed.head.origin!r} size "
                    f"{signed.head.tree_size}",
                )
                continue
            roots[tree_size] = signed.head.root_hash
        return roots, problems

    def _stream(self, *, upto: int | None, after: int = 0) -> Iterator[_Row]:
        query = select(*_COLUMNS).where(EventRow.seq > after).order_by(EventRow.seq)
        if upto is not None:
            query = query.where(EventRow.seq <= upto)
        with self._db.read_engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=_STREAM_BATCH).execute(query)
            for row in result:
                yield _Row(*row)


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    time_us: int
    prev_hash: bytes
    actor: str
    subject: str
    action: str
    reason: str
    data: str
    hash: bytes


class _ChainCursor:
    """Walks the chain, checking sequence numbers, hashes and links."""

    __slots__ = ("next_seq", "prev_hash")

    def __init__(self) -> None:
        self.next_seq = 1
        self.prev_hash = GENESIS_HASH

    def skip_to(self, next_seq: int, *, latest_hash: bytes) -> None:
        self.next_seq = next_seq
        self.prev_hash = latest_hash

    def check(self, row: _Row, problems: _FindingSink) -> bytes:
        """Record what is wrong with ``row``; return its recomputed hash."""
        if row.seq != self.next_seq:
            problems.add(
                FindingKind.MISSING,
                self.next_seq,
                f"entries {self.next_seq}..{row.seq - 1} are missing (deleted)",
            )
        recomputed = entry_hash(
            row.seq, row.time_us, bytes(row.prev_hash), row.actor, row.subject, row.action,
            row.reason, row.data,
        )  # fmt: skip
        stored = bytes(row.hash)
        if recomputed != stored:
            problems.add(FindingKind.MODIFIED, row.seq, f"entry {row.seq} was modified: content ≠ its hash")
        if bytes(row.prev_hash) != self.prev_hash:
            problems.add(
                FindingKind.BROKEN_LINK,
                row.seq,
                f"entry {row.seq} does not link to entry {row.seq - 1}: "
                "an entry was inserted, deleted or reordered before it",
            )
        self.next_seq = row.seq + 1
        self.prev_hash = stored
        return recomputed


class _FindingSink:
    __slots__ = ("findings", "more")

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.more = 0

    def add(self, kind: FindingKind, seq: int, detail: str) -> None:
        if len(self.findings) < _MAX_FINDINGS:
            self.findings.append(Finding(kind, seq, detail))
        else:
            self.more += 1

    def report(self, entries: int, checkpoints: int) -> VerificationReport:
        return VerificationReport(entries, checkpoints, tuple(self.findings), self.more)


def _root(leaves: Sequence[bytes]) -> bytes:
    frontier = MerkleFrontier()
    for leaf in leaves:
        frontier.append(leaf)
    return frontier.root()


def _head(row: Row[int, bytes] | DriverRow | None) -> tuple[int, bytes]:
    """Return (seq, hash) of the locked head row; raise ``EventLogError`` when it is missing."""
    if row is None:
        raise EventLogError("event log head row is missing; the schema was not migrated")
    return int(row.seq), bytes(row.hash)


def _chained(head: tuple[int, bytes], events: Sequence[NewEvent], now: dt.datetime) -> list[EventEntry]:
    """Return ``events`` as the entries that follow ``head``: numbered, each hashed over its predecessor."""
    seq, prev = head
    time_us = to_micros(now)
    entries: list[EventEntry] = []
    for event in events:
        seq += 1
        data = event.canonical_data
        digest = entry_hash(seq, time_us, prev, event.actor, event.subject, event.action, event.reason, data)
        entries.append(
            EventEntry(seq, now, event.actor, event.subject, event.action, event.reason, data, prev, digest)
        )
        prev = digest
    return entries


def _entry(row: object) -> EventEntry:
    r = _Row(*row)  # type: ignore[misc]
    return EventEntry(
        r.seq, from_micros(r.time_us), r.actor, r.subject, r.action, r.reason, r.data,
        bytes(r.prev_hash), bytes(r.hash),
    )  # fmt: skip


def _row_values(entry: EventEntry, time_us: int) -> dict[str, object]:
    return {
        "seq": entry.seq,
        "time_us": time_us,
        "actor": entry.actor,
        "subject": entry.subject,
        "action": entry.action,
        "reason": entry.reason,
        "data": entry.data,
        "prev_hash": entry.prev_hash,
        "hash": entry.hash,
    }
