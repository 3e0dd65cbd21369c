"""Attacks on the foundation, each named after what the attacker tries.

They go through the real entry points (the CLI, the API's token store, the database file) the way an
attacker with that access would.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleetguard.api.tokens import AuthenticationFailed, Role
from fleetguard.cli.main import app
from fleetguard.config import Settings
from fleetguard.events.entry import entry_hash
from fleetguard.installation import Runtime, initialize
from fleetguard.inventory.lifecycle import Action
from fleetguard.inventory.model import DeviceSpec
from fleetguard.types import utc_now


@pytest.fixture
def runtime(tmp_path: Path) -> Runtime:
    settings = Settings(data_dir=tmp_path / "data")
    initialize(settings, "example.org", now=utc_now())
    rt = Runtime(settings)
    rt.inventory.register(DeviceSpec(id="cam-1", serial="S1", manufacturer="Acme"), actor="ops")
    rt.inventory.transition("cam-1", Action.PROVISION, actor="ops")
    rt.inventory.transition("cam-1", Action.ACTIVATE, actor="ops")
    rt.inventory.transition("cam-1", Action.QUARANTINE, actor="ops", reason="beaconing to C2")
    rt.inventory.register(DeviceSpec(id="cam-2", serial="S2", manufacturer="Acme"), actor="ops")
    return rt


def _verify_cli(data_dir: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["--data-dir", str(data_dir), "events", "verify"])
    return result.exit_code, result.output


def test_hiding_a_quarantine_by_rewriting_and_rechaining_history_is_detected(runtime: Runtime) -> None:
    runtime.log.checkpoint(runtime.signer(), now=utc_now())
    db = runtime.settings.data_dir / "fleetguard.db"
    runtime.close()
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT seq, time_us, prev_hash, actor, subject, action, reason, data FROM event_log ORDER BY seq"
        ).fetchall()
        # Turn the quarantine into a harmless update and recompute every later hash and link.
        prev = None
        for seq, time_us, prev_hash, actor, subject, action, reason, data in rows:
            hidden = action == "device.quarantine"
            new_action, new_reason = ("device.updated", "") if hidden else (action, reason)
            link = prev_hash if prev is None else prev
            digest = entry_hash(seq, time_us, link, actor, subject, new_action, new_reason, data)
            conn.execute(
                "UPDATE event_log SET action = ?, reason = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                (new_action, new_reason, link, digest, seq),
            )
            prev = digest
        conn.execute("UPDATE event_head SET hash = ?", (prev,))
    conn.close()
    code, output = _verify_cli(runtime.settings.data_dir)
    assert code == 1
    assert "checkpoint-mismatch" in output
    assert "do not match the signed checkpoint" in output


def test_deleting_the_quarantine_entry_is_detected_and_named(runtime: Runtime) -> None:
    db = runtime.settings.data_dir / "fleetguard.db"
    runtime.close()
    with sqlite3.connect(db) as conn:
        [(seq,)] = conn.execute("SELECT seq FROM event_log WHERE action = 'device.quarantine'")
        conn.execute("DELETE FROM event_log WHERE seq = ?", (seq,))
    conn.close()
    code, output = _verify_cli(runtime.settings.data_dir)
    assert code == 1
    assert f"seq {seq}: missing" in output


def test_forging_a_token_for_a_known_token_id_is_rejected(runtime: Runtime) -> None:
    info, token = runtime.tokens.create("ci", Role.OPERATOR, actor="admin", now=utc_now())
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(AuthenticationFailed, match="unknown API token"):
        runtime.tokens.authenticate(forged, now=utc_now())
    assert runtime.tokens.authenticate(token, now=utc_now()).id == info.id
    runtime.close()


def test_a_stolen_database_yields_no_usable_token(runtime: Runtime) -> None:
    _, token = runtime.tokens.create("ci", Role.ADMIN, actor="admin", now=utc_now())
    db = runtime.settings.data_dir / "fleetguard.db"
    runtime.close()
    conn = sqlite3.connect(db)
    dump = b"\n".join(line.encode() for line in conn.iterdump())
    conn.close()
    secret = token.rsplit("_", 1)[1]
    assert secret.encode() not in dump
    assert secret.encode() not in db.read_bytes()


def test_signing_key_readable_by_others_is_refused(runtime: Runtime) -> None:
    key = runtime.settings.data_dir / "keys" / "event-log-ed25519.pem"
    key.chmod(0o644)
    code, output = _verify_cli(runtime.settings.data_dir)
    runtime.close()
    assert code == 1
    assert output.count("\n") == 1
    assert "error:" in output
