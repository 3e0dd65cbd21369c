"""The ``fleetguard-agent`` program in-process: option checks, one-line errors, exit statuses, status.

Every refusal here happens before anything is written: the state directory is not even created.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner, Result

from fleetguard import __version__
from fleetguard.agent.keystore_file import FileKeyStore
from fleetguard.agent.main import app
from fleetguard.agent.renewal import renew_at
from fleetguard.agent.state import AgentConfig, AgentState, KeyStoreConfig

from .conftest import DEVICE_ID, TinyCa, closed_port, device_name, write_pem

NOT_ENROLLED = "(run `fleetguard-agent enroll` with an enrollment token or a factory certificate)"


def _one_line(text: str) -> str:
    lines = text.strip("\n").splitlines()
    assert len(lines) == 1, text
    return lines[0]


@dataclass(frozen=True)
class Agent:
    """Runs ``fleetguard-agent`` in-process against a state directory that does not exist yet."""

    state_dir: Path
    anchors: Path

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> Result:
        return CliRunner().invoke(app, list(args), env=env)

    def enroll(
        self, *args: str, server: str = "https://est.example.org", env: dict[str, str] | None = None
    ) -> Result:
        return self(
            "enroll", "--server", server, "--trust-anchors", str(self.anchors),
            "--state-dir", str(self.state_dir), *args, env=env,
        )  # fmt: skip

    def fails(self, result: Result, line: str) -> None:
        """Require exit status 1 with exactly ``error: <line>`` on stderr, nothing on stdout."""
        assert result.exit_code == 1, result.output
        assert _one_line(result.stderr) == f"error: {line}"
        assert result.stdout == ""


@pytest.fixture
def agent(tmp_path: Path, tiny_ca: TinyCa) -> Agent:
    return Agent(tmp_path / "agent", write_pem(tmp_path / "root.pem", tiny_ca.root))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("tok-3f9a\n")
    path.chmod(0o600)
    return path


# -- enroll: what is refused before anything is written --------------------------------------------


def test_enroll_without_a_credential(agent: Agent) -> None:
    agent.fails(
        agent.enroll(), "give an enrollment token (--token-file or $FLEETGUARD_AGENT_TOKEN) or --factory-cert"
    )
    assert not agent.state_dir.exists()


def test_enroll_with_a_token_and_a_factory_certificate(agent: Agent, tmp_path: Path) -> None:
    result = agent.enroll(
        "--device-id", DEVICE_ID, "--factory-cert", str(tmp_path / "c.pem"),
        "--factory-key", str(tmp_path / "k"), env={"FLEETGUARD_AGENT_TOKEN": "tok-3f9a"},
    )  # fmt: skip

    agent.fails(
        result, "give an enrollment token (--token-file or $FLEETGUARD_AGENT_TOKEN) or --factory-cert"
    )
    assert not agent.state_dir.exists()


def test_a_token_needs_the_device_id(agent: Agent, token_file: Path) -> None:
    agent.fails(
        agent.enroll("--token-file", str(token_file)),
        "token enrollment needs --device-id, the id the token is bound to",
    )
    assert not agent.state_dir.exists()


def test_a_token_from_the_environment_needs_the_device_id(agent: Agent) -> None:
    result = agent.enroll(env={"FLEETGUARD_AGENT_TOKEN": "tok-3f9a"})

    agent.fails(result, "token enrollment needs --device-id, the id the token is bound to")


def test_a_token_file_others_can_read_is_refused(agent: Agent, token_file: Path) -> None:
    token_file.chmod(0o644)

    result = agent.enroll("--device-id", DEVICE_ID, "--token-file", str(token_file))

    agent.fails(
        result, f"passphrase file {token_file} has mode 0644: others can access it (chmod 600 {token_file})"
    )
    assert not agent.state_dir.exists()


@pytest.mark.parametrize("given", ["--factory-cert", "--factory-key"])
def test_the_factory_certificate_and_key_go_together(agent: Agent, tmp_path: Path, given: str) -> None:
    agent.fails(
        agent.enroll(given, str(tmp_path / "idevid.pem")), "--factory-cert and --factory-key go together"
    )
    assert not agent.state_dir.exists()


def test_enroll_refuses_a_server_that_is_not_https(agent: Agent) -> None:
    result = agent.enroll(
        "--device-id", DEVICE_ID, server="http://est.example.org", env={"FLEETGUARD_AGENT_TOKEN": "t"}
    )

    agent.fails(
        result,
        "the EST server URL must be https://host[:port], not 'http://est.example.org' "
        "(RFC 7030 3.2.2: the agent adds /.well-known/est/ itself)",
    )
    assert not agent.state_dir.exists()


def test_the_pkcs11_key_store_needs_a_token_label(agent: Agent) -> None:
    result = agent.enroll(
        "--device-id", DEVICE_ID, "--key-store", "pkcs11", env={"FLEETGUARD_AGENT_TOKEN": "t"}
    )

    agent.fails(result, "the pkcs11 key store needs a token label (--pkcs11-token)")
    assert not agent.state_dir.exists()


@pytest.mark.parametrize("timeout", ["0", "601"])
def test_enroll_refuses_a_timeout_out_of_range(agent: Agent, timeout: str) -> None:
    result = agent.enroll("--device-id", DEVICE_ID, "--timeout", timeout, env={"FLEETGUARD_AGENT_TOKEN": "t"})

    agent.fails(result, "the timeout must be between 0 and 600 seconds")
    assert not agent.state_dir.exists()


def test_an_unknown_key_store_is_a_usage_error(agent: Agent) -> None:
    result = agent.enroll("--key-store", "floppy")

    assert result.exit_code == 2
    assert not agent.state_dir.exists()


def test_enroll_without_a_server_is_a_usage_error(agent: Agent) -> None:
    assert agent("enroll", "--trust-anchors", str(agent.anchors)).exit_code == 2


def test_trust_anchors_without_a_certificate_are_refused(agent: Agent, tmp_path: Path) -> None:
    agent.anchors.write_text("not a certificate\n")

    result = agent.enroll("--device-id", DEVICE_ID, env={"FLEETGUARD_AGENT_TOKEN": "t"})

    agent.fails(result, f"{agent.anchors} holds no PEM certificate")
    assert not (agent.state_dir / "agent.json").exists()


def test_an_unreachable_server_leaves_the_key_for_the_next_try_but_no_certificate(agent: Agent) -> None:
    url = f"https://127.0.0.1:{closed_port()}"

    result = agent.enroll("--device-id", DEVICE_ID, server=url, env={"FLEETGUARD_AGENT_TOKEN": "t"})

    assert result.exit_code == 1
    line = _one_line(result.stderr)
    assert line.startswith(f"error: no answer from {url}: ")
    assert line.endswith("(check the server URL, the network and the trust anchors)")
    assert sorted(p.name for p in agent.state_dir.iterdir()) == [
        "agent.json",
        "device-key.pem",
        "trust-anchors.pem",
    ]
    saved = AgentState(agent.state_dir).load_config()
    assert (saved.server_url, saved.device_id) == (url, DEVICE_ID)


# -- status, renew, run ---------------------------------------------------------------------------


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    """``run`` sends fleetguard's log to the stderr of the moment; put the logger back afterwards."""
    logger = logging.getLogger("fleetguard")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


@pytest.mark.usefixtures("_restore_logging")
@pytest.mark.parametrize("command", ["status", "renew", "run"])
def test_commands_before_enrollment_say_not_enrolled(agent: Agent, command: str) -> None:
    result = agent(command, "--state-dir", str(agent.state_dir))

    agent.fails(result, f"the agent in {agent.state_dir} is not enrolled {NOT_ENROLLED}")
    assert not agent.state_dir.exists()


def test_the_state_dir_comes_from_the_environment(agent: Agent) -> None:
    result = agent("status", env={"FLEETGUARD_AGENT_STATE_DIR": str(agent.state_dir)})

    agent.fails(result, f"the agent in {agent.state_dir} is not enrolled {NOT_ENROLLED}")


def test_verbose_adds_the_traceback(agent: Agent) -> None:
    result = agent("-v", "status", "--state-dir", str(agent.state_dir))

    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: the agent in")


@dataclass(frozen=True)
class Enrolled:
    state: AgentState
    serial: str
    not_after: dt.datetime
    renew_at: dt.datetime


@pytest.fixture
def enrolled(agent: Agent, tiny_ca: TinyCa) -> Enrolled:
    """A state directory as enrollment leaves it, with a certificate valid from yesterday for 30 days."""
    state = AgentState(agent.state_dir)
    state.prepare()
    state.save_trust_anchors(list(tiny_ca.cacerts))
    url = f"https://127.0.0.1:{closed_port()}"
    state.save_config(
        AgentConfig(server_url=url, key_store=KeyStoreConfig(), device_id=DEVICE_ID, timeout_s=5)
    )
    store = FileKeyStore(agent.state_dir / "device-key.pem")
    store.create()
    public_key = store.signing_key().public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
    leaf = tiny_ca.issue(public_key, device_name(DEVICE_ID), not_before=start)
    state.save_certificate(leaf, [tiny_ca.issuing])
    end = leaf.not_valid_after_utc
    return Enrolled(
        state,
        f"{leaf.serial_number:x}",
        end,
        renew_at(start, end, seed=f"{DEVICE_ID}:{leaf.serial_number:x}"),
    )


def test_status_as_json(agent: Agent, enrolled: Enrolled) -> None:
    result = agent("status", "--state-dir", str(agent.state_dir), "--json")

    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status == {
        "device_id": DEVICE_ID,
        "serial": enrolled.serial,
        "not_before": (enrolled.not_after - dt.timedelta(days=30)).isoformat(),
        "not_after": enrolled.not_after.isoformat(),
        "renew_at": enrolled.renew_at.isoformat(),
        "phase": "valid",
        "key_store": f"file {agent.state_dir / 'device-key.pem'}",
        "server_url": enrolled.state.load_config().server_url,
    }


def test_status_as_text(agent: Agent, enrolled: Enrolled) -> None:
    result = agent("status", "--state-dir", str(agent.state_dir))

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"device id: {DEVICE_ID}"
    assert lines[1] == f"serial: {enrolled.serial}"
    assert f"renew at: {enrolled.renew_at.isoformat()}" in lines
    assert "phase: valid" in lines


def test_a_failed_renewal_keeps_the_certificate(agent: Agent, enrolled: Enrolled) -> None:
    before = enrolled.state.certificate_path.read_bytes()

    result = agent("renew", "--state-dir", str(agent.state_dir))

    assert result.exit_code == 1
    assert _one_line(result.stderr).startswith("error: no answer from https://127.0.0.1:")
    assert enrolled.state.certificate_path.read_bytes() == before


# -- help -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["version"], ["enroll"], ["renew"], ["run"], ["status"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])

    assert result.exit_code == 0, result.output
    assert "Usage: fleetguard-agent" in result.stdout


@pytest.mark.parametrize("command", [[], ["enroll"]])
def test_help_names_the_key_stores(command: list[str]) -> None:
    shown = " ".join(CliRunner().invoke(app, [*command, "--help"]).stdout.split())

    if command:
        assert "file|pkcs11|tpm" in shown
    else:
        assert "keeps the device key in a file, a PKCS#11 token or the TPM" in shown


def test_version(agent: Agent) -> None:
    result = agent("version")

    assert result.exit_code == 0
    assert result.stdout == f"fleetguard-agent {__version__}\n"
