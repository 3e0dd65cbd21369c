"""The MQTT enforcement point of a running installation: Mosquitto, its files, and continuous evaluation.

``fleetguard up`` calls :func:`open_mqtt_endpoint`. It needs the CA: the broker's TLS server
certificate (``pki/servers/mqtt.*``) is issued like EST's and renewed by the renewal scheduler; the
device listener trusts this installation's CAs and checks the complete CRL of every issuing CA,
refreshed every ``FLEETGUARD_MQTT_CRL_REFRESH_S`` (and at every revocation, through the evaluator);
at the same check a renewed server certificate restarts the broker (it reads it only at start).
The gateway directory is ``<data dir>/gateway``.

Then a :class:`~fleetguard.trust.evaluator.ContinuousEvaluator` consumes the event bus and drives the
broker through :class:`~fleetguard.gateway.pep.BrokerEnforcementPoint`, and every device is
reconciled once in the background (devices already enforced with the same plan cost one decision).
When the dynamic-security state is new (first start, or its file was removed), the enforcement
records are forgotten first, so that every device is enforced again rather than believed enforced.
"""

from __future__ import annotations

import getpass
import ipaddress
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fleetguard.errors import FleetguardError
from fleetguard.gateway.config import BrokerConfig
from fleetguard.gateway.pep import BrokerEnforcementPoint
from fleetguard.gateway.plugin import PluginMode, resolve_auth_plugin
from fleetguard.gateway.service import GatewayService
from fleetguard.installation import Runtime
from fleetguard.pki.ca import ChainFormat
from fleetguard.pki.service import ROOT_ID
from fleetguard.private_file import replace_private_file
from fleetguard.trust.evaluator import ContinuousEvaluator, EnforcementPoint
from fleetguard.types import utc_now

__all__ = ["MqttEndpoint", "open_mqtt_endpoint"]

_log = logging.getLogger(__name__)
_NAME = "mqtt"


@dataclass
class MqttEndpoint:
    """A supervised broker with its evaluator, or why there is none."""

    gateway: GatewayService | None
    evaluator: ContinuousEvaluator | None
    url: str | None
    reason: str | None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def stop(self) -> None:
        """Stop the evaluator, the CRL refresher and the broker."""
        self._stop.set()
        if self.evaluator is not None:
            self.evaluator.stop()
        for thread in self._threads:
            thread.join(10)
        if self.gateway is not None:
            self.gateway.stop()


def open_mqtt_endpoint(
    runtime: Runtime, *, host: str, extra_points: Sequence[EnforcementPoint] = ()
) -> MqttEndpoint:
    """Start the broker on ``host`` and ``Settings.mqtt_port`` with its evaluator; never raises.

    Returns an endpoint without a broker (and the reason) when the port is 0, the CA is not
    initialized, or Mosquitto cannot start: the rest of ``up`` still runs. ``extra_points`` (the
    firewall) are driven by the same evaluator as the broker.
    """
    settings = runtime.settings
    if settings.mqtt_port == 0:
        return MqttEndpoint(None, None, None, "disabled (FLEETGUARD_MQTT_PORT=0)")
    try:
        gateway, fresh = _start(runtime, host)
    except (FleetguardError, OSError) as exc:
        _log.warning("MQTT broker not started: %s", exc)
        return MqttEndpoint(None, None, None, f"not started: {exc}")
    evaluator = ContinuousEvaluator(
        runtime.trust,
        [BrokerEnforcementPoint(gateway.enforcer, lambda: _crl_bundle(runtime)), *extra_points],
        runtime.database,
        runtime.log,
        clock=utc_now,
        on_commit=runtime.relay.notify,
        all_devices=lambda: [device.id for device in runtime.inventory.iterate()],
    )
    if fresh:
        evaluator.forget_all()
    evaluator.start(runtime.bus)
    shown = f"[{host}]" if ":" in host else host
    endpoint = MqttEndpoint(gateway, evaluator, f"mqtts://{shown}:{settings.mqtt_port}", None)
    _background(endpoint, "fleetguard-mqtt-reconcile", lambda: _reconcile_all(runtime, evaluator))
    _background(endpoint, "fleetguard-mqtt-crl", lambda: _refresh_crl(runtime, gateway, endpoint._stop))
    return endpoint


def _start(runtime: Runtime, host: str) -> tuple[GatewayService, bool]:
    pki, settings = runtime.pki, runtime.settings
    pki.authority()  # CaNotInitialized / KeyBackendError before anything is written
    servers = pki.server_directory
    if not (servers / f"{_NAME}.chain.pem").exists():
        names, addresses = _names(host)
        pki.issue_server(_NAME, names, addresses, actor="fleetguard up")
    directory = settings.data_dir / "gateway"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    bundle = directory / "device-ca-bundle.pem"
    replace_private_file(bundle, pki.trust_bundle(ChainFormat.PEM))
    config = BrokerConfig(
        directory=directory, ca_bundle=bundle, server_certificate=servers / f"{_NAME}.chain.pem",
        server_key=servers / f"{_NAME}.key.pem", listen_host=host, listen_port=settings.mqtt_port,
        control_port=settings.mqtt_control_port, user=_user(),
        auth_plugin=resolve_auth_plugin(PluginMode(settings.mqtt_plugin), directory),
    )  # fmt: skip
    fresh = not (directory / "dynsec.json").exists() or (
        config.auth_plugin is not None and not config.plugin_state_file.exists()
    )
    gateway = GatewayService(config)
    gateway.start(_crl_bundle(runtime))
    return gateway, fresh


def _crl_bundle(runtime: Runtime) -> bytes:
    """Return the complete CRL of every CA that issues device certificates, PEM, concatenated."""
    issuers = [ca.id for ca in runtime.pki.authorities() if ca.id != ROOT_ID]
    return b"".join(runtime.revocation.crl(issuer, None).pem() for issuer in issuers)


def _reconcile_all(runtime: Runtime, evaluator: ContinuousEvaluator) -> None:
    ids = [device.id for device in runtime.inventory.iterate()]
    outcomes = evaluator.reconcile(ids)
    failed = [o.device_id for o in outcomes if o.status != "enforced"]
    _log.info(
        "mqtt: %d devices reconciled at start, %d not enforced (retried with backoff)", len(ids), len(failed)
    )


def _refresh_crl(runtime: Runtime, gateway: GatewayService, stop: threading.Event) -> None:
    """Refresh the broker's CRL on schedule; restart it when the renewal scheduler renewed its certificate.

    Mosquitto 2.0.11 reads its server certificate only at start, and an expired CRL makes it refuse
    every device, so both are kept current here.
    """
    certificate = gateway.config.server_certificate
    stamp = _stamp(certificate)
    while not stop.wait(runtime.settings.mqtt_crl_refresh_s):
        try:
            if _stamp(certificate) != stamp:
                stamp = _stamp(certificate)
                _log.info("mqtt: the broker's server certificate was renewed; restarting the broker")
                gateway.broker.restart()
            gateway.update_crl(_crl_bundle(runtime))
        except (FleetguardError, OSError) as exc:
            _log.error("mqtt: the broker's CRL could not be refreshed: %s", exc)


def _stamp(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_ino, status.st_mtime_ns


def _background(endpoint: MqttEndpoint, name: str, target: Callable[[], None]) -> None:
    def run() -> None:
        try:
            target()
        except (FleetguardError, OSError):
            _log.exception("%s stopped", name)

    thread = threading.Thread(target=run, name=name, daemon=True)
    endpoint._threads.append(thread)
    thread.start()


def _user() -> str:
    # Mosquitto started as root switches to the `mosquitto` user and then cannot read the 0600 keys.
    return getpass.getuser()


def _names(host: str) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [host], []
    if address.is_unspecified:
        return ["localhost"], [ipaddress.IPv4Address("127.0.0.1")]
    return ["localhost"], [address]
