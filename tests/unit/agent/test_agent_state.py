"""The agent's state directory: agent.json, trust anchors, the certificate file, key store choice."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from fleetguard.agent.errors import AgentConfigInvalid, AgentNotEnrolled
from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.keystore_file import FileKeyStore
from fleetguard.agent.keystore_pkcs11 import Pkcs11KeyStore
from fleetguard.agent.keystore_tpm import TpmKeyStore
from fleetguard.agent.state import AgentConfig, AgentState, KeyStoreConfig

from .conftest import SERVER_URL, TinyCa, device_name, write_pem


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        AgentConfig(server_url=SERVER_URL, key_store=KeyStoreConfig()),
        AgentConfig(server_url=SERVER_URL, key_store=KeyStoreConfig(), device_id="dev-1", timeout_s=4.5),
        AgentConfig(
            server_url="https://[::1]:8443",
            key_store=KeyStoreConfig(
                kind=KeyStoreKind.PKCS11,
                pkcs11_module="/opt/hsm/lib.so",
                pkcs11_token="fleet",
                pkcs11_key_label="device",
                pkcs11_pin_env="HSM_PIN",
                pkcs11_pin_file="/etc/agent/pin",
            ),
            device_id="dev-2",
        ),
        AgentConfig(
            server_url=SERVER_URL,
            key_store=KeyStoreConfig(kind=KeyStoreKind.TPM, tpm_tcti="device:/dev/tpmrm0"),
        ),
    ],
)
def test_the_configuration_round_trips_through_agent_json(state: AgentState, config: AgentConfig) -> None:
    state.save_config(config)

    assert state.load_config() == config
    assert _mode(state.config_path) == 0o600


def test_agent_json_holds_no_secret(state: AgentState) -> None:
    state.save_config(
        AgentConfig(
            server_url=SERVER_URL,
            key_store=KeyStoreConfig(
                kind=KeyStoreKind.PKCS11, pkcs11_token="fleet", pkcs11_pin_env="HSM_PIN"
            ),
        )
    )

    saved = json.loads(state.config_path.read_text())
    assert saved["key_store"]["pkcs11_pin_env"] == "HSM_PIN"  # the variable's name, not its value
    assert set(saved) == {"server_url", "key_store", "device_id", "timeout_s"}


def test_no_agent_json_is_not_enrolled(state: AgentState) -> None:
    with pytest.raises(AgentNotEnrolled, match=rf"^the agent in {state.directory} is not enrolled \(run"):
        state.load_config()


_VALID = {"server_url": SERVER_URL, "key_store": {"kind": "file"}}


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"\xff\xfe",
        b"[]",
        b'"agent"',
        b"5",
        b"null",
        b"{}",
        json.dumps({"server_url": SERVER_URL}).encode(),
        json.dumps({**_VALID, "key_store": "file"}).encode(),
        json.dumps({**_VALID, "key_store": None}).encode(),
        json.dumps({**_VALID, "key_store": {}}).encode(),
        json.dumps({**_VALID, "key_store": {"kind": "floppy"}}).encode(),
        json.dumps({**_VALID, "key_store": {"kind": "file", "pin": "1234"}}).encode(),
        json.dumps({**_VALID, "unknown": 1}).encode(),
        json.dumps({**_VALID, "server_url": 5}).encode(),
        json.dumps({**_VALID, "timeout_s": "fast"}).encode(),
    ],
)
def test_a_corrupt_agent_json_is_invalid(state: AgentState, content: bytes) -> None:
    state.config_path.write_bytes(content)

    with pytest.raises(
        AgentConfigInvalid, match=rf"^{state.config_path} is not a valid agent configuration: "
    ):
        state.load_config()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"server_url": "http://est.example.org"}, r"^the EST server URL must be https://host\[:port\]"),
        ({"server_url": None}, r"^the EST server URL must be https://host\[:port\], not None"),
        ({"timeout_s": 0}, r"^the timeout must be between 0 and 600 seconds$"),
        ({"timeout_s": 601}, r"^the timeout must be between 0 and 600 seconds$"),
        ({"key_store": {"kind": "pkcs11"}}, r"^the pkcs11 key store needs a token label \(--pkcs11-token\)$"),
    ],
)
def test_a_saved_value_out_of_range_is_invalid(
    state: AgentState, change: dict[str, object], message: str
) -> None:
    state.config_path.write_text(json.dumps({**_VALID, **change}))

    with pytest.raises(AgentConfigInvalid, match=message):
        state.load_config()


def test_an_oversized_agent_json_is_refused(state: AgentState) -> None:
    state.config_path.write_bytes(b" " * (256 * 1024 + 1))

    with pytest.raises(AgentConfigInvalid, match=rf"^{state.config_path} is larger than 262144 bytes$"):
        state.load_config()


def test_an_unreadable_agent_json_is_invalid(state: AgentState) -> None:
    state.config_path.mkdir()

    with pytest.raises(AgentConfigInvalid, match=rf"^cannot read {state.config_path}: Is a directory$"):
        state.load_config()


@pytest.mark.parametrize("timeout", [0.0, -1.0, 600.5])
def test_config_refuses_a_timeout_out_of_range(timeout: float) -> None:
    with pytest.raises(AgentConfigInvalid, match=r"^the timeout must be between 0 and 600 seconds$"):
        AgentConfig(server_url=SERVER_URL, key_store=KeyStoreConfig(), timeout_s=timeout)


def test_config_refuses_a_url_that_is_not_https() -> None:
    with pytest.raises(AgentConfigInvalid, match=r"^the EST server URL must be https://host\[:port\]"):
        AgentConfig(server_url="http://est.example.org", key_store=KeyStoreConfig())


@pytest.mark.parametrize("token", [None, ""])
def test_the_pkcs11_key_store_needs_a_token(token: str | None) -> None:
    with pytest.raises(
        AgentConfigInvalid, match=r"^the pkcs11 key store needs a token label \(--pkcs11-token\)$"
    ):
        KeyStoreConfig(kind=KeyStoreKind.PKCS11, pkcs11_token=token)


# -- the directory --------------------------------------------------------------------------------


def test_prepare_creates_the_directory_for_the_owner_only(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "var" / "lib" / "agent")

    state.prepare()
    state.prepare()  # again: nothing to do

    assert _mode(state.directory) == 0o700


@pytest.mark.parametrize("mode", [0o755, 0o750, 0o701, 0o707])
def test_prepare_refuses_a_directory_others_may_enter(tmp_path: Path, mode: int) -> None:
    directory = tmp_path / "agent"
    directory.mkdir()
    directory.chmod(mode)

    with pytest.raises(
        AgentConfigInvalid,
        match=rf"^the state directory {directory} is accessible to others \(chmod 700 {directory}\)$",
    ):
        AgentState(directory).prepare()

    assert _mode(directory) == mode  # reported, not silently changed


# -- certificates ---------------------------------------------------------------------------------


def test_trust_anchors_and_certificate_round_trip(state: AgentState, tiny_ca: TinyCa) -> None:
    leaf = tiny_ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), device_name("dev-1"))

    state.save_trust_anchors(list(tiny_ca.cacerts))
    state.save_certificate(leaf, [tiny_ca.issuing])

    assert state.load_trust_anchors() == list(tiny_ca.cacerts)
    assert state.certificate_chain() == [leaf, tiny_ca.issuing]
    assert _mode(state.trust_anchors) == _mode(state.certificate_path) == 0o600


def test_no_certificate_before_enrollment(state: AgentState) -> None:
    assert state.certificate_chain() is None


def test_an_empty_trust_anchor_list_is_refused_and_the_old_one_kept(state: AgentState) -> None:
    before = state.trust_anchors.read_bytes()

    with pytest.raises(AgentConfigInvalid, match=r"^no trust anchor given$"):
        state.save_trust_anchors([])

    assert state.trust_anchors.read_bytes() == before


@pytest.mark.parametrize(
    "content", [b"", b"garbage", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]
)
def test_a_corrupt_certificate_file_is_invalid(state: AgentState, content: bytes) -> None:
    state.certificate_path.write_bytes(content)
    state.trust_anchors.write_bytes(content)

    with pytest.raises(
        AgentConfigInvalid, match=rf"^the certificate file {state.certificate_path} holds no valid PEM"
    ):
        state.certificate_chain()
    with pytest.raises(
        AgentConfigInvalid, match=rf"^the trust anchors file {state.trust_anchors} holds no valid PEM"
    ):
        state.load_trust_anchors()


def test_missing_trust_anchors_are_invalid(tmp_path: Path) -> None:
    state = AgentState(tmp_path)

    with pytest.raises(
        AgentConfigInvalid, match=rf"^cannot read {state.trust_anchors}: No such file or directory$"
    ):
        state.load_trust_anchors()


def test_a_certificate_file_is_replaced_whole(state: AgentState, tiny_ca: TinyCa) -> None:
    first = tiny_ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), device_name("dev-1"))
    second = tiny_ca.issue(ec.generate_private_key(ec.SECP256R1()).public_key(), device_name("dev-1"))
    state.save_certificate(first, [tiny_ca.issuing])

    state.save_certificate(second, [])

    assert state.certificate_chain() == [second]
    assert sorted(path.name for path in state.directory.iterdir()) == ["certificate.pem", "trust-anchors.pem"]


def test_the_file_writer_and_reader_agree_on_pem(state: AgentState, tiny_ca: TinyCa, tmp_path: Path) -> None:
    path = write_pem(tmp_path / "chain.pem", *tiny_ca.cacerts)

    assert x509.load_pem_x509_certificates(path.read_bytes()) == list(tiny_ca.cacerts)


# -- which key store ------------------------------------------------------------------------------


def test_the_file_key_store_lives_in_the_directory(state: AgentState) -> None:
    store = state.key_store(KeyStoreConfig())

    assert isinstance(store, FileKeyStore)
    assert store.describe() == f"file {state.directory / 'device-key.pem'}"


def test_the_tpm_key_store_keeps_its_files_in_the_directory(state: AgentState) -> None:
    store = state.key_store(KeyStoreConfig(kind=KeyStoreKind.TPM, tpm_tcti="swtpm:port=2321"))

    assert isinstance(store, TpmKeyStore)
    assert store.kind is KeyStoreKind.TPM


def test_the_pkcs11_key_store_needs_a_pin(state: AgentState) -> None:
    config = KeyStoreConfig(
        kind=KeyStoreKind.PKCS11, pkcs11_token="fleet", pkcs11_pin_env="FLEETGUARD_TEST_NO_PIN"
    )

    with pytest.raises(
        AgentConfigInvalid,
        match=r"^the PKCS#11 PIN is not set: put it in \$FLEETGUARD_TEST_NO_PIN "
        r"or a file \(--pkcs11-pin-file\)$",
    ):
        state.key_store(config)


def test_the_pkcs11_key_store_reads_the_pin_from_a_file(state: AgentState, tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("1234\n")
    pin.chmod(0o600)
    config = KeyStoreConfig(kind=KeyStoreKind.PKCS11, pkcs11_token="fleet", pkcs11_pin_file=str(pin))

    store = state.key_store(config)

    assert isinstance(store, Pkcs11KeyStore)
    assert store.describe().startswith("pkcs11 token 'fleet' key 'fleetguard-device'")
