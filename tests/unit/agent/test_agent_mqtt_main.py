"""``fleetguard-agent`` and MQTT: ``enroll --mqtt``, ``run --telemetry-interval``, and what is refused.

A PKCS#11 key cannot authenticate MQTT (see :mod:`fleetguard.agent.mqtt`): ``enroll --mqtt`` refuses
it before anything is written, and ``run`` refuses a configuration that asks for it. Configurations
written before MQTT (no ``mqtt_url``) still load, and one without a broker is written without it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.main import app
from fleetguard.agent.state import AgentConfig, AgentState, KeyStoreConfig

from .conftest import DEVICE_ID, SERVER_URL, TinyCa, closed_port, write_pem

BROKER = "mqtts://broker.example.org:8883"


@pytest.fixture
def anchors(tmp_path: Path, tiny_ca: TinyCa) -> Path:
    return write_pem(tmp_path / "root.pem", tiny_ca.root)


def _enroll(state_dir: Path, anchors: Path, *args: str, server: str = SERVER_URL) -> Result:
    return CliRunner().invoke(
        app,
        ["enroll", "--server", server, "--trust-anchors", str(anchors), "--state-dir", str(state_dir),
         "--device-id", DEVICE_ID, *args],
        env={"FLEETGUARD_AGENT_TOKEN": "tok-3f9a"},
    )  # fmt: skip


def _error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    [line] = result.stderr.strip().splitlines()
    return line


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """``run`` sends fleetguard's log to the stderr of the moment; put the logger back afterwards."""
    logger = logging.getLogger("fleetguard")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_enroll_with_mqtt_and_a_pkcs11_key_is_refused_before_anything_is_written(
    tmp_path: Path, anchors: Path
) -> None:
    state_dir = tmp_path / "agent"
    result = _enroll(state_dir, anchors, "--key-store", "pkcs11", "--pkcs11-token", "t", "--mqtt", BROKER)
    assert _error(result) == (
        "error: a PKCS#11 key cannot authenticate to the MQTT broker: only curl's OpenSSL engine reaches it, "
        "and the MQTT client runs on Python's ssl (EST enrollment and renewal work; drop --mqtt)"
    )
    assert not state_dir.exists()


@pytest.mark.parametrize("url", ["mqtt://broker.example.org", "mqtts://broker.example.org/x", "broker:8883"])
def test_enroll_refuses_a_broker_url_that_is_not_mqtts(tmp_path: Path, anchors: Path, url: str) -> None:
    state_dir = tmp_path / "agent"
    result = _enroll(state_dir, anchors, "--mqtt", url)
    assert _error(result) == f"error: the MQTT broker URL must be mqtts://host[:port], not {url!r}"
    assert not state_dir.exists()


def test_enroll_saves_the_broker_url(tmp_path: Path, anchors: Path) -> None:
    state_dir = tmp_path / "agent"
    result = _enroll(state_dir, anchors, "--mqtt", BROKER, server=f"https://127.0.0.1:{closed_port()}")
    assert result.exit_code == 1  # no EST server: the configuration is saved for the next try
    assert json.loads((state_dir / "agent.json").read_text())["mqtt_url"] == BROKER
    assert AgentState(state_dir).load_config().mqtt_url == BROKER


def test_a_configuration_without_a_broker_omits_it_and_one_from_before_mqtt_loads(state: AgentState) -> None:
    state.save_config(AgentConfig(server_url=SERVER_URL, key_store=KeyStoreConfig(), device_id=DEVICE_ID))
    saved = json.loads(state.config_path.read_text())
    assert "mqtt_url" not in saved  # an agent rolled back to a version without MQTT reads it as before
    assert state.load_config().mqtt_url is None


def test_a_saved_broker_url_is_checked_when_loaded(state: AgentState) -> None:
    state.save_config(AgentConfig(server_url=SERVER_URL, key_store=KeyStoreConfig(), mqtt_url=BROKER))
    document = json.loads(state.config_path.read_text())
    state.config_path.write_text(json.dumps({**document, "mqtt_url": "mqtt://plain.example.org"}))
    with pytest.raises(Exception, match="the MQTT broker URL must be mqtts://host"):
        state.load_config()


@pytest.mark.usefixtures("_restore_logging")
def test_run_refuses_mqtt_with_a_pkcs11_key(state: AgentState) -> None:
    store = KeyStoreConfig(kind=KeyStoreKind.PKCS11, pkcs11_token="t")
    state.save_config(
        AgentConfig(server_url=SERVER_URL, key_store=store, device_id=DEVICE_ID, mqtt_url=BROKER)
    )
    result = CliRunner().invoke(app, ["run", "--state-dir", str(state.directory)])
    assert _error(result).startswith("error: a PKCS#11 key cannot authenticate to the MQTT broker")


@pytest.mark.parametrize("interval", ["0", "0.5", "-1", "86401"])
def test_run_refuses_a_telemetry_interval_out_of_range(tmp_path: Path, interval: str) -> None:
    result = CliRunner().invoke(app, ["run", "--state-dir", str(tmp_path), "--telemetry-interval", interval])
    assert result.exit_code == 2
    assert "--telemetry-interval" in result.stderr


@pytest.mark.parametrize(("command", "words"), [("enroll", "--mqtt"), ("run", "--telemetry-interval")])
def test_help_describes_the_mqtt_options(command: str, words: str) -> None:
    shown = " ".join(CliRunner().invoke(app, [command, "--help"]).stdout.split())
    assert words in shown
