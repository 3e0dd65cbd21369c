"""Decommissioning, as the MQTT ``wipe`` command does it: each key store destroys the key, then the
certificate, the OpenSSL configurations (one holds the PKCS#11 PIN) and ``agent.json`` are deleted.

The trust anchors stay: they are public, and a re-enrollment brings its own. A key that cannot be
destroyed stops the wipe before any file is deleted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fleetguard.agent.errors import AgentNotEnrolled, KeyStoreError
from fleetguard.agent.identity import DeviceIdentity
from fleetguard.agent.keystore_file import FileKeyStore
from fleetguard.agent.keystore_tpm import TpmKeyStore
from fleetguard.agent.state import AgentState
from fleetguard.pki.keys_pkcs11 import SOFTHSM2_MODULE

from .conftest import DEVICE_ID, TOKEN, FakeEst, MemoryKeyStore, TinyCa, file_config


def _names(state: AgentState) -> list[str]:
    return sorted(path.name for path in state.directory.iterdir())


def test_wipe_with_a_file_key_leaves_only_the_trust_anchors(state: AgentState, tiny_ca: TinyCa) -> None:
    state.save_config(file_config())
    keys = FileKeyStore(state.directory / "device-key.pem")
    identity = DeviceIdentity(state, file_config(), keys, transport_factory=FakeEst(tiny_ca))
    identity.enroll(device_id=DEVICE_ID, token=TOKEN)
    (state.directory / "pkcs11-engine.cnf").write_text("PIN = 1234\n")
    assert _names(state) == [
        "agent.json", "certificate.pem", "device-key.pem", "pkcs11-engine.cnf", "trust-anchors.pem",
    ]  # fmt: skip

    identity.wipe()

    assert _names(state) == ["trust-anchors.pem"]
    assert not keys.exists()
    with pytest.raises(AgentNotEnrolled):
        state.load_config()


def test_a_key_that_cannot_be_destroyed_stops_the_wipe(state: AgentState, tiny_ca: TinyCa) -> None:
    state.save_config(file_config())
    keys = MemoryKeyStore()
    identity = DeviceIdentity(state, file_config(), keys, transport_factory=FakeEst(tiny_ca))
    identity.enroll(device_id=DEVICE_ID, token=TOKEN)
    keys.broken = "the token is not present"
    before = _names(state)

    with pytest.raises(KeyStoreError, match="the token is not present"):
        identity.wipe()

    assert _names(state) == before
    assert keys.exists()


def test_wiping_twice_is_harmless(state: AgentState) -> None:
    keys = FileKeyStore(state.directory / "device-key.pem")
    keys.create()
    keys.destroy()
    keys.destroy()
    state.wipe()
    state.wipe()
    assert _names(state) == ["trust-anchors.pem"]


def test_a_tpm_key_is_destroyed_with_its_wrapping(tmp_path: Path) -> None:
    wrapped = tmp_path / "device-key.tss2.pem"
    wrapped.write_bytes(b"-----BEGIN TSS2 PRIVATE KEY-----\n")
    store = TpmKeyStore(wrapped, provider_conf=tmp_path / "tpm2-openssl.cnf")
    store.destroy()
    assert not store.exists()
    store.destroy()


def test_a_key_file_that_cannot_be_deleted_is_a_key_store_error(tmp_path: Path) -> None:
    directory = tmp_path / "keys"
    directory.mkdir()
    (directory / "device-key.pem").mkdir()  # unlink() cannot remove a directory
    with pytest.raises(KeyStoreError, match="cannot delete the key file"):
        FileKeyStore(directory / "device-key.pem").destroy()


_PKCS11_SCRIPT = """
    import sys
    from pathlib import Path
    from fleetguard.agent.keystore_pkcs11 import Pkcs11KeyStore
    from fleetguard.pki.keys import Passphrase

    def store(label):
        return Pkcs11KeyStore(
            module=Path(sys.argv[1]), token_label="device", key_label=label,
            pin=Passphrase(b"4321", source="test"), engine_conf=Path(sys.argv[2]),
        )

    doomed, kept = store("fleetguard-device"), store("other-key")
    for one in (doomed, kept):  # one session at a time: the token is opened once per process
        one.create()
        one.close()
    doomed.destroy()
    doomed.destroy()  # idempotent
    gone = not doomed.exists()
    doomed.close()
    print(gone, kept.exists())
"""


def test_a_pkcs11_key_is_destroyed_on_the_token_and_other_keys_stay(tmp_path: Path) -> None:
    """In a child process: python-pkcs11 and SoftHSM read their configuration once per process."""
    util = shutil.which("softhsm2-util")
    if util is None or not SOFTHSM2_MODULE.exists():
        if os.environ.get("CI"):
            pytest.fail("SoftHSM2 is missing under CI")
        pytest.skip("SoftHSM2 is not installed")
    (tmp_path / "tokens").mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tmp_path / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        [util, "--init-token", "--free", "--label", "device", "--pin", "4321", "--so-pin", "8765"],
        check=True, capture_output=True, env=env,
    )  # fmt: skip

    script = textwrap.dedent(_PKCS11_SCRIPT)
    result = subprocess.run(
        [sys.executable, "-c", script, str(SOFTHSM2_MODULE), str(tmp_path / "e.cnf")],
        capture_output=True, text=True, env=env, check=False, timeout=60,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]
