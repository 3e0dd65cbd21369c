"""mosquitto.conf, the ACL file and the first dynsec.json, rendered from a BrokerConfig."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fleetguard.errors import InvalidInput
from fleetguard.gateway.config import BrokerConfig, render_acl, render_dynsec_config, render_mosquitto_conf
from fleetguard.gateway.model import Access, TopicGrant
from fleetguard.gateway.roles import ADMIN_ROLE, ADMIN_USERNAME, QUARANTINE_ROLE


def _config(**changes: object) -> BrokerConfig:
    values: dict[str, object] = {
        "directory": Path("/srv/gw"), "ca_bundle": Path("/srv/pki/bundle.pem"),
        "server_certificate": Path("/srv/pki/mqtt.chain.pem"), "server_key": Path("/srv/pki/mqtt.key.pem"),
        "listen_host": "192.0.2.1", "listen_port": 8883, "control_port": 8884, "user": "fleetguard",
    }  # fmt: skip
    values.update(changes)
    return BrokerConfig(**values)  # type: ignore[arg-type]


def _listeners(conf: str) -> list[list[str]]:
    blocks = conf.split("\nlistener ")[1:]
    return [f"listener {block}".strip().splitlines() for block in blocks]


def test_the_device_listener_requires_a_certificate_and_takes_its_cn_as_username() -> None:
    device, control = _listeners(render_mosquitto_conf(_config()))
    assert device[0] == "listener 8883 192.0.2.1"
    for line in (
        "cafile /srv/pki/bundle.pem", "certfile /srv/pki/mqtt.chain.pem", "keyfile /srv/pki/mqtt.key.pem",
        "crlfile /srv/gw/crl.pem", "require_certificate true", "use_identity_as_username true",
        "tls_version tlsv1.2",
    ):  # fmt: skip
        assert line in device
    assert control[0] == "listener 8884 127.0.0.1"
    assert "cafile /srv/gw/local-ca.pem" in control
    assert "require_certificate true" in control
    assert "use_identity_as_username true" in control


def test_the_global_section_shares_one_acl_file_and_plugin_and_keeps_nothing_on_disk() -> None:
    conf = render_mosquitto_conf(_config())
    head = conf.split("\nlistener ")[0].splitlines()
    for line in (
        "per_listener_settings false", "persistence false", "allow_anonymous false", "user fleetguard",
        "acl_file /srv/gw/acl", "plugin_opt_config_file /srv/gw/dynsec.json", "log_dest stderr",
        "connection_messages true", "log_type information", "log_type notice", "max_packet_size 262144",
    ):  # fmt: skip
        assert line in head
    assert "log_dest stdout" not in conf


def test_no_user_line_without_a_user() -> None:
    assert "\nuser " not in render_mosquitto_conf(_config(user=None))


@pytest.mark.parametrize(
    "changes",
    [
        {"ca_bundle": Path("/srv/a\nlistener 1883")},
        {"user": "root\nallow_anonymous true"},
        {"listen_host": "192.0.2.1 "},
        {"server_key": Path("/srv/key\x00")},
    ],
)
def test_a_value_that_would_add_a_configuration_line_is_refused(changes: dict[str, object]) -> None:
    with pytest.raises(InvalidInput, match="cannot be written into a Mosquitto configuration line"):
        _config(**changes)


def test_the_control_listener_must_be_loopback() -> None:
    with pytest.raises(InvalidInput, match="must be a loopback address"):
        _config(control_host="192.0.2.1")
    assert _config(control_host="::1").control_host == "::1"


@pytest.mark.parametrize(("listen", "control"), [(8883, 8883), (0, 8884), (8883, 70000)])
def test_ports_must_be_valid_and_distinct(listen: int, control: int) -> None:
    with pytest.raises(InvalidInput):
        _config(listen_port=listen, control_port=control)


def test_the_acl_file_has_one_pattern_line_per_grant() -> None:
    grants = (
        TopicGrant(Access.BOTH, "devices/%u/#"),
        TopicGrant(Access.PUBLISH, "telemetry/%u"),
        TopicGrant(Access.SUBSCRIBE, "broadcast/#"),
    )
    lines = render_acl(grants).splitlines()
    assert lines[1:] == [
        "pattern readwrite devices/%u/#",
        "pattern write telemetry/%u",
        "pattern read broadcast/#",
    ]
    assert lines[0].startswith("#")


def test_the_first_dynsec_state_denies_by_default_and_holds_admin_and_quarantine() -> None:
    document = json.loads(render_dynsec_config())
    assert set(document["defaultACLAccess"].values()) == {False}
    assert len(document["defaultACLAccess"]) == 4
    assert document["clients"] == [{"username": ADMIN_USERNAME, "roles": [{"rolename": ADMIN_ROLE}]}]
    assert "password" not in json.dumps(document)
    roles = {role["rolename"]: role["acls"] for role in document["roles"]}
    assert all(
        acl["topic"].startswith("$CONTROL/dynamic-security/") and acl["allow"] for acl in roles[ADMIN_ROLE]
    )
    assert {acl["acltype"] for acl in roles[QUARANTINE_ROLE]} == {
        "publishClientSend", "publishClientReceive", "subscribeLiteral", "subscribePattern",
    }  # fmt: skip
    assert not any(acl["allow"] for acl in roles[QUARANTINE_ROLE])
