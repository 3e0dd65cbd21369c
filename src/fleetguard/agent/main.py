"""The ``fleetguard-agent`` program: the device side of fleetguard.

``enroll`` gets the device its first operational certificate over EST, ``renew`` renews it once,
``run`` keeps it renewed in the background and, when enrolled with ``--mqtt``, keeps the device
connected to the MQTT broker (:mod:`fleetguard.agent.mqtt`) until SIGTERM/SIGINT or a ``wipe``
command; ``status`` says where it stands; ``tuf init|refresh|download`` is the device's TUF client
(:mod:`fleetguard.agent.tuf_client`); ``update init`` and ``update [--once]`` install over-the-air
updates to A/B slots (:mod:`fleetguard.agent.updater`). State lives in one directory (``--state-dir``, default
``/var/lib/fleetguard-agent``), described in :mod:`fleetguard.agent.state`.

``run`` runs the renewal loop and the MQTT link in two threads; the main thread waits for a signal or
for either to end, then stops both. A thread's error is re-raised here (exit status 1).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from cryptography import x509

from fleetguard import __version__
from fleetguard.agent.errors import AgentConfigInvalid, EnrollmentPending
from fleetguard.agent.identity import AgentStatus, DeviceIdentity, FactoryCredential, RenewalLoop
from fleetguard.agent.keystore import KeyStoreKind
from fleetguard.agent.mqtt import DEFAULT_TELEMETRY_INTERVAL_S, LinkOutcome, MqttLink, require_mqtt_key_store
from fleetguard.agent.state import AgentConfig, AgentState, KeyStoreConfig
from fleetguard.cli.exit_status import EXIT_STATUS_EPILOG, ReportingGroup
from fleetguard.errors import FleetguardError
from fleetguard.pki.keys import Passphrase

__all__ = ["app", "main"]

DEFAULT_STATE_DIR = Path("/var/lib/fleetguard-agent")
TOKEN_ENV = "FLEETGUARD_AGENT_TOKEN"  # noqa: S105 - the name of the variable, not a secret
_MAX_PENDING_WAIT_S = 7 * 24 * 3600
_MAX_TELEMETRY_INTERVAL_S = 24 * 3600.0
_JOIN_ALLOWANCE_S = 15.0  # beyond three network timeouts: a link stopped in the middle of connecting

app = typer.Typer(
    cls=ReportingGroup,
    name="fleetguard-agent",
    help=(
        "fleetguard-agent runs on a device. It enrolls the device with the fleet's CA over EST "
        "(RFC 7030) using a one-time enrollment token or the factory certificate, keeps the device key "
        "in a file, a PKCS#11 token or the TPM (the key never leaves the token or TPM), and renews the "
        "certificate at 2/3 of its life with jitter, backing off when the server is busy. With --mqtt it "
        "also connects to the fleet's MQTT broker with its certificate (file or TPM key): telemetry out, "
        "commands (reenroll, wipe) in."
    ),
    epilog=EXIT_STATUS_EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

StateDir = Annotated[
    Path,
    typer.Option(
        "--state-dir", envvar="FLEETGUARD_AGENT_STATE_DIR", help="Where the agent keeps its configuration, "
        "certificate and key references (created with mode 0700).",
    ),
]  # fmt: skip
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of text.")]


@app.callback()
def root(
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Show tracebacks on failure.")] = False,
) -> None:
    """fleetguard-agent: the device side of fleetguard."""


@app.command("version")
def version() -> None:
    """Print the agent's version."""
    typer.echo(f"fleetguard-agent {__version__}")


@app.command("enroll")
def enroll_command(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    server: Annotated[str, typer.Option(help="The EST server, https://host[:port].")],
    trust_anchors: Annotated[
        Path, typer.Option(help="PEM CA certificate(s) that authenticate the EST server (RFC 7030 4.1.1).")
    ],
    state_dir: StateDir = DEFAULT_STATE_DIR,
    device_id: Annotated[
        str | None, typer.Option(help="The device id the enrollment token is bound to.")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option(help=f"File holding the one-time enrollment token (or set ${TOKEN_ENV}).")
    ] = None,
    factory_cert: Annotated[
        Path | None, typer.Option(help="Factory (IDevID) certificate chain, PEM, to authenticate with.")
    ] = None,
    factory_key: Annotated[
        Path | None,
        typer.Option(
            help="The factory certificate's key: a PEM file (0600), or a TPM-wrapped key (--key-store tpm)."
        ),
    ] = None,
    key_store: Annotated[KeyStoreKind, typer.Option(help="Where the device key is created and kept.")] = (
        KeyStoreKind.FILE
    ),
    pkcs11_module: Annotated[str | None, typer.Option(help="PKCS#11 module (default: SoftHSM2).")] = None,
    pkcs11_token: Annotated[str | None, typer.Option(help="PKCS#11 token label.")] = None,
    pkcs11_key_label: Annotated[str, typer.Option(help="Label of the device key on the token.")] = (
        "fleetguard-device"
    ),
    pkcs11_pin_file: Annotated[
        Path | None,
        typer.Option(help="File (0600) with the token's user PIN (or set $FLEETGUARD_AGENT_PKCS11_PIN)."),
    ] = None,
    tpm_tcti: Annotated[
        str | None, typer.Option(help="How to reach the TPM (tpm2-tss TCTI), e.g. device:/dev/tpmrm0.")
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="If the request waits for an operator's approval, poll until decided."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each server answer.")] = 30.0,
    mqtt: Annotated[
        str | None,
        typer.Option(
            "--mqtt",
            help="The MQTT broker `run` connects to, mqtts://host[:port] (port 8883 by default), with "
            "the device certificate. Needs a file or TPM key store (not PKCS#11).",
        ),
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Enroll this device: create its key, send a CSR with a token or factory certificate, save the result.

    Exactly one of --token-file (or $FLEETGUARD_AGENT_TOKEN) with --device-id, or --factory-cert with
    --factory-key. Running it again after a pending answer resends the same request.
    """
    token = _token(token_file)
    factory = _factory(factory_cert, factory_key)
    if (token is None) == (factory is None):
        raise AgentConfigInvalid(f"give an enrollment token (--token-file or ${TOKEN_ENV}) or --factory-cert")
    if token is not None and device_id is None:
        raise AgentConfigInvalid("token enrollment needs --device-id, the id the token is bound to")
    if mqtt is not None:
        require_mqtt_key_store(key_store)
    store_config = KeyStoreConfig(
        kind=key_store,
        pkcs11_token=pkcs11_token,
        pkcs11_key_label=pkcs11_key_label,
        pkcs11_pin_file=None if pkcs11_pin_file is None else str(pkcs11_pin_file.resolve()),
        tpm_tcti=tpm_tcti,
        **({} if pkcs11_module is None else {"pkcs11_module": pkcs11_module}),
    )
    config = AgentConfig(
        server_url=server, key_store=store_config, device_id=device_id, timeout_s=timeout, mqtt_url=mqtt
    )
    state = AgentState(state_dir)
    state.prepare()
    state.save_trust_anchors(_read_certificates(trust_anchors))
    state.save_config(config)
    with _identity(state, config) as identity:
        certificate = _enroll_until_decided(
            identity, device_id=device_id, token=token, factory=factory, wait=wait
        )
        _print_certificate("enrolled", identity, certificate, as_json=as_json)


@app.command("renew")
def renew_command(state_dir: StateDir = DEFAULT_STATE_DIR, as_json: AsJson = False) -> None:
    """Renew the certificate now (simplereenroll with the current certificate and the same key).

    The key stays in the store chosen at enrollment (file, PKCS#11 token or TPM); the certificate changes.
    """
    state = AgentState(state_dir)
    with _identity(state, state.load_config()) as identity:
        _print_certificate("renewed", identity, identity.renew(), as_json=as_json)


@app.command("run")
def run_command(
    state_dir: StateDir = DEFAULT_STATE_DIR,
    telemetry_interval: Annotated[
        float,
        typer.Option(
            min=1.0, max=_MAX_TELEMETRY_INTERVAL_S, help="Seconds between telemetry reports over MQTT."
        ),
    ] = DEFAULT_TELEMETRY_INTERVAL_S,
) -> None:
    """Keep the certificate renewed (at 2/3 of its life, with jitter; backing off on failure) till SIGTERM.

    Uses the key store chosen at enrollment (file, PKCS#11 token or TPM). A revoked certificate, or one
    expired beyond the server's grace window, stops the loop with exit status 1: enroll again. When
    enrolled with --mqtt, also stays connected to the broker: telemetry on devices/<id>/telemetry,
    commands on devices/<id>/commands; a `wipe` command deletes the key, the certificate and the
    configuration and ends with exit status 0.
    """
    _log_to_stderr()
    log = logging.getLogger("fleetguard.agent")
    state = AgentState(state_dir)
    config = state.load_config()
    if config.mqtt_url is not None:
        require_mqtt_key_store(config.key_store.kind)
    stop = threading.Event()
    with _identity(state, config) as identity, _stop_on_signals(stop):
        log.info("agent for %s: next renewal at %s", config.device_id, identity.next_renewal().isoformat())
        renewal = RenewalLoop(identity, clock=lambda: dt.datetime.now(dt.UTC), wait=stop.wait)
        workers = [_Worker("renewal", renewal.run, stop)]
        if config.mqtt_url is not None:
            link = MqttLink(identity, state, stop=stop, telemetry_interval_s=telemetry_interval)
            workers.append(_Worker("mqtt", link.run, stop))
        for worker in workers:
            worker.start()
        stop.wait()
        for worker in workers:
            worker.join(config.timeout_s * 3 + _JOIN_ALLOWANCE_S)
    if any(worker.result is LinkOutcome.WIPED for worker in workers):
        # A renewal loop that woke between the wipe and the stop may have found the files gone.
        for worker in workers:
            if worker.error is not None:
                log.info("after the wipe: %s", worker.error)
        log.warning("the device was wiped (decommissioned); the agent exits")
        return
    for worker in workers:
        if worker.error is not None:
            raise worker.error


@app.command("status")
def status_command(state_dir: StateDir = DEFAULT_STATE_DIR, as_json: AsJson = False) -> None:
    """Show the device id, the certificate's validity and renewal time, and where the key is.

    The key store line names the file, the PKCS#11 token and label, or the TPM key file and TCTI.
    """
    state = AgentState(state_dir)
    with _identity(state, state.load_config()) as identity:
        status = identity.status(dt.datetime.now(dt.UTC))
    if as_json:
        typer.echo(json.dumps(_jsonable(status), sort_keys=True))
        return
    for name, value in asdict(status).items():
        shown = value.isoformat() if isinstance(value, dt.datetime) else value
        typer.echo(f"{name.replace('_', ' ')}: {'-' if shown is None else shown}")


tuf_app = typer.Typer(
    name="tuf",
    help="The device's TUF client (python-tuf ngclient): trust a root, refresh metadata, download targets.",
    no_args_is_help=True,
)
app.add_typer(tuf_app)
MetadataDir = Annotated[Path, typer.Option(help="Trusted TUF metadata: root.json, timestamp.json, ...")]
MetadataUrl = Annotated[str, typer.Option(help="The repository's metadata base URL.")]
DaysInFuture = Annotated[
    int, typer.Option(min=0, max=36500, help="Check expiry as if it were this many days later.")
]


@tuf_app.command("init")
def tuf_init_command(
    metadata_dir: MetadataDir,
    trusted_root: Annotated[Path, typer.Option(help="The initial root.json, obtained out of band.")],
) -> None:
    """Verify the root's own signatures and store it as the trusted root.json. No network request."""
    from fleetguard.agent import tuf_client

    tuf_client.init(metadata_dir, trusted_root)
    typer.echo(f"trusted root stored in {metadata_dir}")


@tuf_app.command("refresh")
def tuf_refresh_command(
    metadata_dir: MetadataDir, metadata_url: MetadataUrl, days_in_future: DaysInFuture = 0
) -> None:
    """Update the top-level metadata (TUF spec 5.3-5.6); only verified metadata is written."""
    from fleetguard.agent import tuf_client

    tuf_client.refresh(metadata_dir, metadata_url, days_in_future=days_in_future)
    typer.echo(f"metadata in {metadata_dir} is current")


@tuf_app.command("download")
def tuf_download_command(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    metadata_dir: MetadataDir,
    metadata_url: MetadataUrl,
    target_name: Annotated[str, typer.Option(help="The target path in the repository.")],
    target_dir: Annotated[Path, typer.Option(help="Where verified targets are stored.")],
    target_base_url: Annotated[str, typer.Option(help="The repository's targets base URL.")],
    days_in_future: DaysInFuture = 0,
) -> None:
    """Refresh, then download the target and verify its length and hashes (TUF spec 5.7)."""
    from fleetguard.agent import tuf_client

    target = tuf_client.download(
        metadata_dir, metadata_url, target_name, target_dir, target_base_url, days_in_future=days_in_future
    )
    typer.echo(f"{'already present' if target.cached else 'downloaded'}: {target.path}")


update_app = typer.Typer(
    name="update",
    help="Over-the-air updates: check in, verify with the director and the image repository (TUF/Uptane), "
    "install to the inactive A/B slot, reboot, health-check, commit or roll back.",
)
app.add_typer(update_app)


@update_app.callback(invoke_without_command=True)
def update_command(
    context: typer.Context,
    state_dir: StateDir = DEFAULT_STATE_DIR,
    once: Annotated[bool, typer.Option("--once", help="Check once and exit (1 if refused).")] = False,
    interval: Annotated[
        float, typer.Option(min=10.0, max=7 * 24 * 3600.0, help="Seconds between check-ins.")
    ] = 3600.0,
) -> None:
    """Check for an update and install it; without --once, every --interval seconds until SIGTERM.

    Needs `update init` first and a file key store. A refused update is logged and the loop goes on.
    """
    if context.invoked_subcommand is not None:
        return
    from fleetguard.agent.ota_fetcher import HttpsFetcher
    from fleetguard.agent.slots import CommandHealthCheck, SlotStore
    from fleetguard.agent.updater import UpdateClient, http_reporter, load_ota_config

    _log_to_stderr()
    log = logging.getLogger("fleetguard.agent")
    state = AgentState(state_dir)
    config = state.load_config()
    ota = load_ota_config(state_dir)
    stop = threading.Event()
    health = CommandHealthCheck(ota.health_command, ota.health_timeout_s)
    with _identity(state, config) as identity, _stop_on_signals(stop):
        fetcher = HttpsFetcher.with_client_certificate(
            ota.server_url, trust_anchors=state.trust_anchors, certificate=state.certificate_path,
            key=identity.tls_key(), timeout_s=config.timeout_s,
        )  # fmt: skip
        client = UpdateClient(
            state_dir / "ota", device_id=_device_id(state, config), hardware_id=ota.hardware_id,
            slots=SlotStore(ota.slots_dir), health=health,
            fetcher=fetcher, base_url=fetcher.origin, report=http_reporter(fetcher),
            now=lambda: dt.datetime.now(dt.UTC),
        )  # fmt: skip
        while True:
            try:
                outcome = client.update_once()
                typer.echo(f"{outcome.result}: {outcome.release or '-'} ({outcome.detail})")
            except FleetguardError as exc:
                if once:
                    raise
                log.warning("update refused: %s", exc)
            if once or stop.wait(interval):
                return


@update_app.command("init")
def update_init_command(  # noqa: PLR0917 - one parameter per option; typer passes them by keyword
    server: Annotated[str, typer.Option(help="The OTA endpoint (the EST server), https://host[:port].")],
    hardware_id: Annotated[str, typer.Option(help="This device's hardware id, as releases name it.")],
    slots: Annotated[Path, typer.Option(help="The A/B slot directory (initialized at provisioning).")],
    health_cmd: Annotated[str, typer.Option(help="Health check command, split like a shell (no shell).")],
    director_root: Annotated[Path, typer.Option(help="The director's 1.root.json, obtained out of band.")],
    image_root: Annotated[Path, typer.Option(help="The image repository's 1.root.json, out of band.")],
    state_dir: StateDir = DEFAULT_STATE_DIR,
    health_timeout: Annotated[float, typer.Option(min=1.0, max=3600.0, help="Health check seconds.")] = 60.0,
) -> None:
    """Save ota.json and trust the two repositories' roots; refuses to replace roots already trusted."""
    import shlex

    from fleetguard.agent.slots import SlotStore
    from fleetguard.agent.updater import OtaConfig, bootstrap_trust, read_root_file, save_ota_config

    config = OtaConfig(server, hardware_id, slots.resolve(), tuple(shlex.split(health_cmd)), health_timeout)
    SlotStore(config.slots_dir).read_state()  # the slots must exist and be valid
    state = AgentState(state_dir)
    state.prepare()
    bootstrap_trust(state_dir / "ota", read_root_file(director_root), read_root_file(image_root))
    save_ota_config(state_dir, config)
    typer.echo(f"OTA configured for {hardware_id}; run `fleetguard-agent update`")


def main() -> None:
    """Run the ``fleetguard-agent`` program; exit with 0 ok, 1 failure, 2 usage or 130 interrupted."""
    app(prog_name="fleetguard-agent")


# -- helpers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def _identity(state: AgentState, config: AgentConfig) -> Iterator[DeviceIdentity]:
    key_store = state.key_store(config.key_store)
    try:
        yield DeviceIdentity(state, config, key_store)
    finally:
        key_store.close()


def _enroll_until_decided(
    identity: DeviceIdentity,
    *,
    device_id: str | None,
    token: str | None,
    factory: FactoryCredential | None,
    wait: bool,
) -> x509.Certificate:
    deadline = time.monotonic() + _MAX_PENDING_WAIT_S
    while True:
        try:
            return identity.enroll(device_id=device_id, token=token, factory=factory)
        except EnrollmentPending as pending:
            delay = pending.retry_after_s or 60.0
            if not wait or time.monotonic() + delay > deadline:
                raise
            typer.echo(f"pending approval; asking again in {delay:.0f} s", err=True)
            time.sleep(delay)


def _device_id(state: AgentState, config: AgentConfig) -> str:
    """Return the device id: the configured one, or the operational certificate's CN (architecture)."""
    if config.device_id is not None:
        return config.device_id
    chain = state.certificate_chain()
    names = [] if chain is None else chain[0].subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if not names or not isinstance(names[0].value, str):
        raise AgentConfigInvalid("the device id is unknown: enroll first")
    return names[0].value


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        return Passphrase.from_file(token_file).reveal().decode().strip()
    value = os.environ.get(TOKEN_ENV)
    return value.strip() if value else None


def _factory(certificate: Path | None, key: Path | None) -> FactoryCredential | None:
    if certificate is None and key is None:
        return None
    if certificate is None or key is None:
        raise AgentConfigInvalid("--factory-cert and --factory-key go together")
    return FactoryCredential(str(certificate.resolve()), str(key.resolve()))


def _read_certificates(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes()[: 1 << 20])
    except ValueError as exc:
        raise AgentConfigInvalid(f"{path} holds no PEM certificate") from exc


def _print_certificate(
    verb: str, identity: DeviceIdentity, certificate: x509.Certificate, *, as_json: bool
) -> None:
    record = {
        "device_id": identity.config.device_id,
        "serial": f"{certificate.serial_number:x}",
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "renew_at": identity.next_renewal().isoformat(),
    }
    if as_json:
        typer.echo(json.dumps({"result": verb, **record}, sort_keys=True))
    else:
        typer.echo(
            f"{verb} {record['device_id']}: certificate {record['serial']} "
            f"valid until {record['not_after']}, renewal at {record['renew_at']}"
        )


def _jsonable(status: AgentStatus) -> dict[str, object]:
    return {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in asdict(status).items()}


def _log_to_stderr() -> None:
    logger = logging.getLogger("fleetguard")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


class _Worker:
    """A thread that runs ``target`` and keeps its result or error; when it ends, it sets ``stop``."""

    def __init__(self, name: str, target: Callable[[], object], stop: threading.Event) -> None:
        self._target, self._stop = target, stop
        self._thread = threading.Thread(target=self._run, name=f"fleetguard-agent-{name}", daemon=True)
        self.result: object = None
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logging.getLogger("fleetguard.agent").warning("%s did not stop in time", self._thread.name)

    def _run(self) -> None:
        try:
            self.result = self._target()
        except BaseException as exc:  # noqa: BLE001 - the boundary: run_command re-raises it
            self.error = exc
        finally:
            self._stop.set()


@contextlib.contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
