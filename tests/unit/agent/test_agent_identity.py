"""Enrollment, renewal and the renewal loop, against an EST server behind the transport interface.

Nothing is saved until the server's answer is checked: a certificate for another key, or one no
``cacerts`` CA issued, leaves the state directory as it was.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetguard.agent.errors import (
    AgentConfigInvalid,
    AgentNotEnrolled,
    EnrollmentPending,
    EstRequestFailed,
    EstServerBusy,
    EstServerUnreachable,
    KeyStoreError,
    RenewalImpossible,
)
from fleetguard.agent.identity import AgentStatus, DeviceIdentity, FactoryCredential, RenewalLoop
from fleetguard.agent.keystore_tpm import TPM_WRAPPED_KEY_HEADER
from fleetguard.agent.renewal import renew_at
from fleetguard.agent.state import AgentState
from fleetguard.agent.transport import EstReply, TlsClientKey, TlsKeyKind
from fleetguard.pki.csr import validate_csr

from .conftest import (
    DEVICE_ID,
    NOW,
    SERVER_URL,
    TOKEN,
    FakeEst,
    MemoryKeyStore,
    Sent,
    TinyCa,
    certs_only,
    device_name,
    file_config,
    text,
    write_key,
    write_pem,
)

SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class Agent:
    """A device identity over a fake server, with a key store in memory."""

    state: AgentState
    keys: MemoryKeyStore
    server: FakeEst
    identity: DeviceIdentity

    def files(self) -> dict[str, bytes]:
        """Return every file of the state directory, to show that a failure changed nothing."""
        return {path.name: path.read_bytes() for path in sorted(self.state.directory.iterdir())}

    def leaf(self) -> x509.Certificate:
        chain = self.state.certificate_chain()
        assert chain is not None
        return chain[0]

    def public_key(self) -> bytes:
        assert self.keys.key is not None
        return self.keys.key.public_key().public_bytes(*SPKI)


@pytest.fixture
def agent(state: AgentState, tiny_ca: TinyCa) -> Agent:
    state.save_config(file_config())
    keys = MemoryKeyStore()
    server = FakeEst(tiny_ca)
    return Agent(state, keys, server, DeviceIdentity(state, file_config(), keys, transport_factory=server))


@pytest.fixture
def enrolled(agent: Agent) -> Agent:
    agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)
    agent.server.sent.clear()
    return agent


# -- enrollment -----------------------------------------------------------------------------------


def test_token_enrollment_saves_the_chain_the_anchors_and_the_device_id(
    agent: Agent, tiny_ca: TinyCa
) -> None:
    issued = agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)

    assert agent.keys.created == 1
    assert issued.public_key().public_bytes(*SPKI) == agent.public_key()
    # the leaf and its issuing chain; the root is a trust anchor, never sent back in a handshake
    assert agent.state.certificate_chain() == [issued, tiny_ca.issuing]
    assert set(agent.state.load_trust_anchors()) == set(tiny_ca.cacerts)
    assert json.loads(agent.state.config_path.read_text())["device_id"] == DEVICE_ID
    assert agent.identity.config.device_id == DEVICE_ID


def test_token_enrollment_sends_a_csr_for_the_device_key_with_basic_credentials(agent: Agent) -> None:
    agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)

    enroll, cacerts = agent.server.sent
    assert (enroll.operation, cacerts.operation) == ("simpleenroll", "cacerts")
    assert enroll.headers["Authorization"] == "Basic ZGV2LTE6dG9rLTNmOWE="
    csr = enroll.csr
    assert csr.is_signature_valid
    assert csr.public_key().public_bytes(*SPKI) == agent.public_key()
    assert csr.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, DEVICE_ID)])
    accepted = validate_csr(csr.public_bytes(serialization.Encoding.DER))  # what the CA's check says
    assert accepted.public_key.public_bytes(*SPKI) == agent.public_key()
    # a token enrollment has no client certificate; the server is checked against the trust anchors
    assert enroll.settings.certificate is None
    assert enroll.settings.key is None
    assert enroll.settings.trust_anchors == agent.state.trust_anchors
    assert enroll.settings.server_url == SERVER_URL


@pytest.fixture
def factory(tmp_path: Path, tiny_ca: TinyCa) -> FactoryCredential:
    """A factory (IDevID) certificate and its PEM key file, as provisioned at manufacture."""
    key = ec.generate_private_key(ec.SECP256R1())
    idevid = tiny_ca.issue(
        key.public_key(), x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "SN-0001")])
    )
    return FactoryCredential(
        str(write_pem(tmp_path / "idevid.pem", idevid)), str(write_key(tmp_path / "idevid.key", key))
    )


def test_factory_enrollment_presents_the_factory_certificate(
    state: AgentState, tiny_ca: TinyCa, factory: FactoryCredential
) -> None:
    keys, server = MemoryKeyStore(), FakeEst(tiny_ca)
    identity = DeviceIdentity(state, file_config(device_id=None), keys, transport_factory=server)

    issued = identity.enroll(factory=factory)

    enroll = server.sent[0]
    assert "Authorization" not in enroll.headers
    assert enroll.settings.certificate == Path(factory.certificate)
    assert enroll.settings.key == TlsClientKey(TlsKeyKind.FILE, factory.key)
    # the device id is what the server put in the certificate, saved for later runs
    assert issued.subject == device_name("dev-factory")
    assert identity.config.device_id == "dev-factory"
    assert state.load_config().device_id == "dev-factory"


def test_a_missing_factory_key_is_a_configuration_error(agent: Agent, tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    before = agent.files()

    with pytest.raises(AgentConfigInvalid, match=rf"^cannot read the factory key {missing}: No such file"):
        agent.identity.enroll(factory=FactoryCredential(str(tmp_path / "idevid.pem"), str(missing)))

    assert agent.server.sent == []
    assert agent.files() == before


def test_a_tpm_held_factory_key_needs_the_tpm_key_store(agent: Agent, tmp_path: Path) -> None:
    wrapped = tmp_path / "idevid.tss2.pem"
    wrapped.write_bytes(TPM_WRAPPED_KEY_HEADER + b"\nAAAA\n-----END TSS2 PRIVATE KEY-----\n")

    with pytest.raises(AgentConfigInvalid, match=r"^the factory key is held by a TPM: use --key-store tpm$"):
        agent.identity.enroll(factory=FactoryCredential(str(tmp_path / "idevid.pem"), str(wrapped)))

    assert agent.server.sent == []


def test_enrolling_again_keeps_the_key(agent: Agent) -> None:
    agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)
    first = agent.public_key()

    agent.identity.enroll(device_id=DEVICE_ID, token="another-token")

    assert agent.keys.created == 1
    assert agent.public_key() == first


@pytest.mark.parametrize("credentials", [{}, {"token": TOKEN, "factory": None}])
def test_enroll_needs_exactly_one_credential(agent: Agent, credentials: dict[str, object]) -> None:
    if "factory" in credentials:
        credentials["factory"] = FactoryCredential("/factory/idevid.pem", "/factory/idevid.key")
    before = agent.files()

    with pytest.raises(
        AgentConfigInvalid, match=r"^enroll with either an enrollment token or a factory certificate$"
    ):
        agent.identity.enroll(device_id=DEVICE_ID, **credentials)  # type: ignore[arg-type]

    assert agent.keys.created == 0
    assert agent.server.sent == []
    assert agent.files() == before


def test_a_certificate_for_another_key_is_refused_and_nothing_saved(agent: Agent) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    agent.server.handlers["simpleenroll"] = lambda sent: certs_only(
        agent.server.issue_for(sent, public_key=other)
    )
    before = agent.files()

    with pytest.raises(
        EstServerUnreachable, match=r"^the server issued a certificate for another key; it was not saved$"
    ):
        agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)

    assert agent.files() == before
    assert not agent.state.certificate_path.exists()


def test_a_certificate_no_cacerts_ca_issued_is_refused_and_nothing_saved(
    agent: Agent, foreign_ca: TinyCa
) -> None:
    agent.server.handlers["simpleenroll"] = lambda sent: certs_only(
        foreign_ca.issue(sent.csr.public_key(), device_name(DEVICE_ID))
    )
    before = agent.files()

    with pytest.raises(
        EstServerUnreachable, match=r"^the issued certificate chains to none of the server's CA certificates$"
    ):
        agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)

    assert agent.files() == before


def test_a_certificate_with_a_lookalike_issuer_name_is_refused(agent: Agent, tiny_ca: TinyCa) -> None:
    # same issuer name as the fleet's issuing CA, signed by another key
    impostor = TinyCa(
        tiny_ca.root_key, tiny_ca.root, ec.generate_private_key(ec.SECP256R1()), tiny_ca.issuing
    )
    agent.server.handlers["simpleenroll"] = lambda sent: certs_only(
        impostor.issue(sent.csr.public_key(), device_name(DEVICE_ID))
    )
    before = agent.files()

    with pytest.raises(EstServerUnreachable, match=r"chains to none of the server's CA certificates$"):
        agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)

    assert agent.files() == before


@pytest.mark.parametrize(
    "subject",
    [
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fleet")]),
        x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "a"), x509.NameAttribute(NameOID.COMMON_NAME, "b")]
        ),
    ],
)
def test_a_certificate_without_one_common_name_is_refused(
    agent: Agent, tiny_ca: TinyCa, subject: x509.Name
) -> None:
    agent.server.handlers["simpleenroll"] = lambda sent: certs_only(
        tiny_ca.issue(sent.csr.public_key(), subject)
    )
    before = agent.files()

    with pytest.raises(EstServerUnreachable, match=r"^the issued certificate has no single common name$"):
        agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)

    assert agent.files() == before


def test_a_pending_enrollment_saves_nothing_and_is_resent_with_the_same_key(agent: Agent) -> None:
    agent.server.handlers["simpleenroll"] = lambda sent: text(
        202, "request 7 is pending approval", retry_after="300"
    )
    before = agent.files()

    with pytest.raises(EnrollmentPending, match=r"^request 7 is pending approval") as caught:
        agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)

    assert caught.value.retry_after_s == 300.0
    assert agent.files() == before
    first_csr = agent.server.sent[-1].csr
    del agent.server.handlers["simpleenroll"]

    agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)

    assert agent.server.sent[-2].csr.public_key() == first_csr.public_key()
    assert agent.keys.created == 1


def test_a_refused_token_saves_nothing(agent: Agent) -> None:
    agent.server.handlers["simpleenroll"] = lambda sent: text(401, "the enrollment token is not valid")
    before = agent.files()

    with pytest.raises(
        EstRequestFailed, match=r"^EST simpleenroll refused with HTTP 401: the enrollment token"
    ):
        agent.identity.enroll(device_id=DEVICE_ID, token=TOKEN)

    assert agent.files() == before


# -- renewal --------------------------------------------------------------------------------------


def test_renewal_sends_the_exact_subject_and_the_same_key(enrolled: Agent) -> None:
    old = enrolled.leaf()

    new = enrolled.identity.renew()

    reenroll, cacerts = enrolled.server.sent
    assert (reenroll.operation, cacerts.operation) == ("simplereenroll", "cacerts")
    # RFC 7030 4.2.2: the subject byte for byte, and (for a renewal) the same key
    assert reenroll.csr.subject.public_bytes() == old.subject.public_bytes()
    assert reenroll.csr.public_key().public_bytes(*SPKI) == enrolled.public_key()
    assert reenroll.csr.is_signature_valid
    assert "Authorization" not in reenroll.headers
    # mutual TLS with the current certificate and the key store's key
    assert reenroll.settings.certificate == enrolled.state.certificate_path
    assert reenroll.settings.key == enrolled.keys.tls_key()
    assert new.serial_number != old.serial_number
    assert enrolled.leaf() == new
    assert enrolled.identity.config.device_id == DEVICE_ID


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_renewal_is_impossible_and_keeps_the_certificate(enrolled: Agent, status: int) -> None:
    enrolled.server.handlers["simplereenroll"] = lambda sent: text(status, "certificate 1f is revoked\n")
    before = enrolled.files()
    serial = enrolled.leaf().serial_number

    with pytest.raises(
        RenewalImpossible,
        match=rf"^the server refuses to renew certificate {serial:x}: certificate 1f is revoked "
        r"\(enroll again with an enrollment token or the factory certificate\)$",
    ) as caught:
        enrolled.identity.renew()

    assert isinstance(caught.value.__cause__, EstRequestFailed)
    assert enrolled.files() == before


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (text(400, "bad CSR"), EstRequestFailed, r"^EST simplereenroll refused with HTTP 400: bad CSR$"),
        (text(500, "internal error"), EstRequestFailed, r"^EST simplereenroll refused with HTTP 500"),
        (
            text(503, "busy", retry_after="120"),
            EstServerBusy,
            r"^EST simplereenroll: the server is busy \(busy\)",
        ),
        (EstReply(200, "text/html", None, b"<html>"), EstServerUnreachable, r"answered text/html"),
    ],
)
def test_other_renewal_failures_keep_the_certificate(
    enrolled: Agent, reply: EstReply, error: type[Exception], message: str
) -> None:
    enrolled.server.handlers["simplereenroll"] = lambda sent: reply
    before = enrolled.files()

    with pytest.raises(error, match=message):
        enrolled.identity.renew()

    assert enrolled.files() == before


def test_a_renewal_for_another_key_keeps_the_certificate(enrolled: Agent) -> None:
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    enrolled.server.handlers["simplereenroll"] = lambda sent: certs_only(
        enrolled.server.issue_for(sent, public_key=other)
    )
    before = enrolled.files()

    with pytest.raises(EstServerUnreachable, match=r"^the server issued a certificate for another key"):
        enrolled.identity.renew()

    assert enrolled.files() == before


def test_renewal_before_enrollment_is_not_enrolled(agent: Agent) -> None:
    with pytest.raises(AgentNotEnrolled, match=rf"^the agent in {agent.state.directory} is not enrolled"):
        agent.identity.renew()

    assert agent.server.sent == []
    with pytest.raises(AgentNotEnrolled):
        agent.identity.next_renewal()


def test_renewal_with_a_broken_key_store_sends_nothing(enrolled: Agent) -> None:
    enrolled.keys.broken = "the token is not present"
    before = enrolled.files()

    with pytest.raises(KeyStoreError, match=r"^the token is not present$"):
        enrolled.identity.renew()

    assert enrolled.server.sent == []
    assert enrolled.files() == before


# -- status ---------------------------------------------------------------------------------------


def test_status_before_enrollment(agent: Agent) -> None:
    assert agent.identity.status(NOW) == AgentStatus(
        DEVICE_ID, None, None, None, None, "not-enrolled", "memory", SERVER_URL
    )


def test_status_follows_the_certificate_through_its_life(enrolled: Agent) -> None:
    leaf = enrolled.leaf()
    start, end = leaf.not_valid_before_utc, leaf.not_valid_after_utc
    due = renew_at(start, end, seed=f"{DEVICE_ID}:{leaf.serial_number:x}")

    status = enrolled.identity.status(start)

    assert status == AgentStatus(
        DEVICE_ID, f"{leaf.serial_number:x}", start, end, due, "valid", "memory", SERVER_URL
    )
    assert enrolled.identity.next_renewal() == due
    assert enrolled.identity.status(due).phase == "due"
    assert enrolled.identity.status(end).phase == "expired"


# -- the renewal loop -----------------------------------------------------------------------------


class TopOfRange(random.Random):
    """Backoff at its ceiling, so that delays are exact."""

    def uniform(self, a: float, b: float) -> float:
        return b


@dataclass
class Clock:
    """A clock that moves only when the loop waits; ``wait`` stops the loop after ``stop_after`` calls."""

    now: dt.datetime
    stop_after: int
    waits: list[float] = field(default_factory=list)

    def __call__(self) -> dt.datetime:
        return self.now

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        self.now += dt.timedelta(seconds=seconds)
        return len(self.waits) >= self.stop_after


def _loop(agent: Agent, clock: Clock, *, max_sleep_s: float = 3600.0) -> RenewalLoop:
    agent.server.clock = clock
    return RenewalLoop(
        agent.identity, clock=clock, wait=clock.wait, max_sleep_s=max_sleep_s, rng=TopOfRange()
    )


def _renewals(agent: Agent) -> list[Sent]:
    return [sent for sent in agent.server.sent if sent.operation == "simplereenroll"]


def test_a_certificate_not_due_sleeps_until_its_renewal_time(enrolled: Agent) -> None:
    due = enrolled.identity.next_renewal()
    clock = Clock(NOW, stop_after=1)

    _loop(enrolled, clock, max_sleep_s=1e9).run()

    assert clock.waits == [(due - NOW).total_seconds()]
    assert enrolled.server.sent == []


def test_long_sleeps_are_cut_into_max_sleep(enrolled: Agent) -> None:
    clock = Clock(NOW, stop_after=3)

    _loop(enrolled, clock, max_sleep_s=3600).run()

    assert clock.waits == [3600.0, 3600.0, 3600.0]
    assert enrolled.server.sent == []


def test_a_due_certificate_is_renewed_then_the_loop_sleeps_till_the_next_time(enrolled: Agent) -> None:
    old = enrolled.leaf()
    start = enrolled.identity.next_renewal()
    clock = Clock(start, stop_after=2)

    _loop(enrolled, clock, max_sleep_s=1e9).run()

    new = enrolled.leaf()
    assert new.serial_number != old.serial_number
    assert clock.waits == [0.0, (enrolled.identity.next_renewal() - start).total_seconds()]
    assert len(_renewals(enrolled)) == 1


def test_a_busy_server_is_asked_again_no_sooner_than_its_retry_after(enrolled: Agent) -> None:
    enrolled.server.handlers["simplereenroll"] = lambda sent: text(503, "busy", retry_after="120")
    clock = Clock(enrolled.identity.next_renewal(), stop_after=1)

    _loop(enrolled, clock).run()

    assert clock.waits == [120.0]


def test_a_retry_after_longer_than_max_sleep_is_still_honoured(enrolled: Agent) -> None:
    times: list[dt.datetime] = []

    def busy(sent: Sent) -> EstReply:
        times.append(clock.now)
        return text(503, "busy", retry_after="7200")

    enrolled.server.handlers["simplereenroll"] = busy
    clock = Clock(enrolled.identity.next_renewal(), stop_after=6)

    _loop(enrolled, clock, max_sleep_s=3600).run()

    assert clock.waits == [3600.0] * 6
    assert [(t - times[0]).total_seconds() for t in times] == [0.0, 7200.0, 14400.0]


def test_an_unreachable_server_is_retried_with_growing_backoff(enrolled: Agent) -> None:
    def unreachable(sent: Sent) -> EstReply:
        raise EstServerUnreachable("no answer from the server: Connection refused")

    enrolled.server.handlers["simplereenroll"] = unreachable
    clock = Clock(enrolled.identity.next_renewal(), stop_after=10)

    _loop(enrolled, clock).run()

    assert clock.waits == [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0, 3600.0]
    assert len(_renewals(enrolled)) == 10


def test_backoff_with_real_jitter_stays_inside_its_bounds(enrolled: Agent) -> None:
    def unreachable(sent: Sent) -> EstReply:
        raise EstServerUnreachable("no answer")

    enrolled.server.handlers["simplereenroll"] = unreachable
    clock = Clock(enrolled.identity.next_renewal(), stop_after=8)
    enrolled.server.clock = clock
    loop = RenewalLoop(enrolled.identity, clock=clock, wait=clock.wait, rng=random.Random(4))  # noqa: S311

    loop.run()

    bounds = [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0]
    assert all(15.0 <= waited <= bound for waited, bound in zip(clock.waits, bounds, strict=True))


def test_a_refusal_other_than_401_403_is_retried(enrolled: Agent) -> None:
    enrolled.server.handlers["simplereenroll"] = lambda sent: text(500, "internal error")
    clock = Clock(enrolled.identity.next_renewal(), stop_after=2)

    _loop(enrolled, clock).run()

    assert clock.waits == [30.0, 60.0]


def test_success_resets_the_backoff(enrolled: Agent) -> None:
    outcomes = ["down", "down", "ok", "down"]

    def flaky(sent: Sent) -> EstReply:
        if outcomes.pop(0) == "down":
            raise EstServerUnreachable("no answer")
        return certs_only(enrolled.server.issue_for(sent))

    enrolled.server.handlers["simplereenroll"] = flaky
    enrolled.server.lifetime = dt.timedelta(hours=1)  # the next renewal is due within the hour
    clock = Clock(enrolled.identity.next_renewal(), stop_after=5)

    _loop(enrolled, clock).run()

    assert clock.waits[:3] == [30.0, 60.0, 0.0]
    assert 0 < clock.waits[3] < 3600
    assert clock.waits[4] == 30.0  # attempt 0 again
    assert outcomes == []


def test_the_loop_stops_when_wait_says_so(enrolled: Agent) -> None:
    clock = Clock(NOW, stop_after=1)

    _loop(enrolled, clock).run()

    assert len(clock.waits) == 1
    assert enrolled.server.sent == []


def test_an_impossible_renewal_stops_the_loop(enrolled: Agent) -> None:
    enrolled.server.handlers["simplereenroll"] = lambda sent: text(403, "revoked")
    clock = Clock(enrolled.identity.next_renewal(), stop_after=100)

    with pytest.raises(RenewalImpossible, match=r"revoked"):
        _loop(enrolled, clock).run()

    assert clock.waits == []


def test_a_broken_key_store_stops_the_loop(enrolled: Agent) -> None:
    enrolled.keys.broken = "the TPM is gone"
    clock = Clock(enrolled.identity.next_renewal(), stop_after=100)

    with pytest.raises(KeyStoreError, match=r"^the TPM is gone$"):
        _loop(enrolled, clock).run()

    assert clock.waits == []


def test_the_loop_needs_an_enrolled_agent(agent: Agent) -> None:
    clock = Clock(NOW, stop_after=1)

    with pytest.raises(AgentNotEnrolled):
        _loop(agent, clock).run()
