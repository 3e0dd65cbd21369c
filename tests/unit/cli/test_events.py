"""``fleetguard events``: listing, verification that names tampered entries, checkpoints and proofs."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from fleetguard.events.checkpoint import SignedTreeHead, load_public_key, verify_tree_head
from fleetguard.events.merkle import verify_consistency, verify_inclusion

from .conftest import Cli, one_line


@pytest.fixture
def logged(cli: Cli, initialized: None) -> Cli:
    """An installation whose log holds 7 entries: init's two, then five device changes."""
    for number in range(1, 4):
        cli.ok("devices", "add", "--id", f"d{number}", "--serial", f"S{number}", "--manufacturer", "Acme")
    cli.ok("devices", "provision", "d1")
    cli.ok("devices", "activate", "d1")
    return cli


def _tamper(cli: Cli, *statements: str) -> None:
    with closing(sqlite3.connect(cli.database)) as connection, connection:
        for statement in statements:
            connection.execute(statement)


def test_list_json_returns_entries_in_order(logged: Cli) -> None:
    entries = logged.json("events", "list")
    assert isinstance(entries, list)
    assert [e["seq"] for e in entries] == list(range(1, 8))
    assert entries[0]["action"] == "token.created"
    newest = logged.json("events", "list", "--newest", "--limit", "2", "--action", "device.activate")
    assert isinstance(newest, list)
    assert [e["seq"] for e in newest] == [7]


def test_show_prints_one_entry(logged: Cli) -> None:
    entry = logged.json("events", "show", "3")
    assert isinstance(entry, dict)
    assert entry["subject"] == "device:d1"
    assert "device.registered" in logged.ok("events", "show", "3").stdout
    result = logged("events", "show", "99")
    assert result.exit_code == 1
    assert one_line(result.stderr) == "error: no event log entry with sequence number 99"


def test_verify_an_intact_log(logged: Cli) -> None:
    logged.ok("events", "checkpoint")
    result = logged.ok("events", "verify")
    assert result.stdout.strip() == "event log intact: 7 entries, 1 checkpoints"
    report = logged.json("events", "verify")
    assert report == {"intact": True, "entries": 7, "checkpoints": 1, "findings": [], "more_findings": 0}


def test_verify_names_a_modified_entry(logged: Cli) -> None:
    _tamper(logged, "UPDATE event_log SET actor = 'mallory' WHERE seq = 2")
    result = logged("events", "verify")
    assert result.exit_code == 1
    assert "seq 2: modified: entry 2 was modified" in result.stdout
    assert "event log tampered" in result.stderr


def test_verify_names_a_deleted_entry(logged: Cli) -> None:
    _tamper(logged, "DELETE FROM event_log WHERE seq = 3")
    result = logged("events", "verify")
    assert result.exit_code == 1
    assert "seq 3: missing: entries 3..3 are missing (deleted)" in result.stdout
    assert "seq 4: broken-link:" in result.stdout


def test_verify_names_swapped_entries(logged: Cli) -> None:
    columns = "time_us, actor, subject, action, reason, data, prev_hash, hash"
    _tamper(
        logged,
        f"CREATE TEMP TABLE saved AS SELECT seq, {columns} FROM event_log WHERE seq IN (4, 5)",
        *(
            f"UPDATE event_log SET {column} = (SELECT {column} FROM saved WHERE seq = 9 - event_log.seq) "
            "WHERE seq IN (4, 5)"
            for column in columns.split(", ")
        ),
    )
    report = logged("events", "verify", "--json")
    assert report.exit_code == 1
    findings = json.loads(report.stdout)["findings"]
    assert {(f["seq"], f["kind"]) for f in findings} >= {(4, "modified"), (5, "modified"), (4, "broken-link")}


def test_verify_detects_a_rewrite_under_a_checkpoint(logged: Cli) -> None:
    logged.ok("events", "checkpoint")
    _tamper(logged, "UPDATE event_log SET reason = 'nothing to see' WHERE seq = 6")
    report = logged("events", "verify", "--json")
    assert report.exit_code == 1
    kinds = {(f["seq"], f["kind"]) for f in json.loads(report.stdout)["findings"]}
    assert (6, "modified") in kinds
    assert (7, "checkpoint-mismatch") in kinds


def test_verify_with_another_public_key_rejects_the_checkpoints(logged: Cli, tmp_path: Path) -> None:
    logged.ok("events", "checkpoint")
    other = Cli(logged.runner, tmp_path / "other")
    other.ok("init", "--trust-domain", "other.example", "--json")
    key_file = tmp_path / "other.pem"
    key_file.write_text(other.ok("events", "public-key").stdout, encoding="ascii")
    result = logged("events", "verify", "--public-key", str(key_file))
    assert result.exit_code == 1
    assert "bad-checkpoint" in result.stdout


def test_checkpoint_is_signed_by_the_public_key(logged: Cli) -> None:
    record = logged.json("events", "checkpoint")
    assert isinstance(record, dict)
    assert record["tree_size"] == 7
    key = load_public_key(logged.ok("events", "public-key").stdout.encode())
    verify_tree_head(SignedTreeHead.from_note(str(record["note"])), key)
    assert logged.ok("events", "checkpoint").stdout == record["note"]


def test_inclusion_proof_verifies_against_the_checkpoint(logged: Cli) -> None:
    logged.ok("events", "checkpoint")
    proof = json.loads(logged.ok("events", "prove", "3").stdout)
    assert proof["tree_size"] == 7
    verify_inclusion(
        bytes.fromhex(proof["leaf_hash"]), proof["leaf_index"], proof["tree_size"],
        [bytes.fromhex(node) for node in proof["path"]], bytes.fromhex(proof["root_hash"]),
    )  # fmt: skip
    signed = SignedTreeHead.from_note(proof["checkpoint"])
    assert signed.head.root_hash.hex() == proof["root_hash"]
    smaller = json.loads(logged.ok("events", "prove", "3", "--tree-size", "4").stdout)
    assert smaller["tree_size"] == 4
    assert smaller["checkpoint"] is None


def test_inclusion_proof_out_of_range_is_one_line(logged: Cli) -> None:
    result = logged("events", "prove", "9")
    assert result.exit_code == 1
    assert one_line(result.stderr) == "error: entry 9 is not in a tree of size 7"


def test_consistency_proof_verifies(logged: Cli) -> None:
    proof = json.loads(logged.ok("events", "consistency", "2").stdout)
    assert (proof["old_size"], proof["new_size"]) == (2, 7)
    verify_consistency(
        2, 7, bytes.fromhex(proof["old_root"]), bytes.fromhex(proof["new_root"]),
        [bytes.fromhex(node) for node in proof["path"]],
    )  # fmt: skip
    assert json.loads(logged.ok("events", "consistency", "3", "5").stdout)["new_size"] == 5


def test_events_list_for_people(logged: Cli) -> None:
    result = logged.ok("events", "list", "--subject", "device:d2")
    assert "device.registered" in result.stdout
    assert "device:d1" not in result.stdout
    assert logged("events", "list", "--subject", "x", "--device", "d1").exit_code == 2
