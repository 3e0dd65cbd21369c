"""``fleetguard up`` without serving: a taken port fails with one line; passwords are masked."""

from __future__ import annotations

import socket

import pytest

from fleetguard.cli.up import masked_url

from .conftest import Cli, one_line


def test_a_taken_port_is_one_line(cli: Cli, initialized: None) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = cli("up", "--port", str(port))
    assert result.exit_code == 1
    assert one_line(result.stderr) == (
        f"error: port {port} on 127.0.0.1 is already in use (stop the other server or pass --port)"
    )


def test_up_before_init_says_to_run_init(cli: Cli) -> None:
    result = cli("up", "--port", "0")
    assert result.exit_code == 1
    assert "run: fleetguard init" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql+psycopg://fleet:s3cret@db.example:5432/fleet",
            "postgresql+psycopg://fleet:***@db.example:5432/fleet",
        ),
        ("nats://user:pw@nats.example:4222", "nats://user:***@nats.example:4222"),
        ("sqlite:////var/lib/fleetguard/fleetguard.db", "sqlite:////var/lib/fleetguard/fleetguard.db"),
        ("memory://", "memory://"),
    ],
)
def test_masked_url_hides_passwords(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_listener_disables_nagle_for_accepted_connections() -> None:
    from fleetguard.cli.up import _listen

    with _listen("127.0.0.1", 0) as listener:
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
