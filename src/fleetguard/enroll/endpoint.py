"""The EST endpoint of a running installation: its TLS identity, trust anchors and server.

The same mTLS endpoint serves the devices' OTA resources (:mod:`fleetguard.ota.device_api`):
check-ins, step reports and the director's per-device metadata, authenticated by the device's
operational certificate.

``fleetguard up`` calls :func:`open_est_endpoint`. The endpoint needs the CA (to issue its own TLS
server certificate, ``pki/servers/est.*``, renewed by the renewal scheduler like any server
certificate) and trusts, for client certificates, this installation's CAs and the registered
manufacturer CAs (re-read by the server as they change). With ``FLEETGUARD_EST_WORKERS`` above 1 it
is served by that many worker processes (:mod:`fleetguard.enroll.est_workers`), else by a thread of
this process.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

from fleetguard.enroll.est_server import EstServer
from fleetguard.enroll.est_workers import EstWorkers, est_server
from fleetguard.errors import FleetguardError
from fleetguard.installation import Runtime
from fleetguard.ota.device_api import OtaDeviceRoutes
from fleetguard.types import utc_now

__all__ = ["EstEndpoint", "open_est_endpoint"]

_log = logging.getLogger(__name__)
_NAME = "est"


@dataclass(frozen=True, slots=True)
class EstEndpoint:
    """A started EST server, or why there is none."""

    server: EstServer | EstWorkers | None
    url: str | None
    reason: str | None

    def stop(self) -> None:
        """Stop the server, if one runs."""
        if self.server is not None:
            self.server.stop()


def open_est_endpoint(runtime: Runtime, *, host: str) -> EstEndpoint:
    """Start the EST server on ``host`` and ``Settings.est_port``; never raises for a missing CA.

    Returns an endpoint without a server (and the reason) when the port is 0, the CA is not
    initialized, or the CA key cannot be unlocked: the rest of ``up`` still runs.
    """
    port = runtime.settings.est_port
    if port == 0:
        return EstEndpoint(None, None, "disabled (FLEETGUARD_EST_PORT=0)")
    try:
        server = _start(runtime, host, port)
    except (FleetguardError, OSError) as exc:
        _log.warning("EST endpoint not started: %s", exc)
        return EstEndpoint(None, None, f"not started: {exc}")
    bound_host, bound_port = server.address[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    return EstEndpoint(server, f"https://{shown}:{bound_port}/.well-known/est/", None)


def _start(runtime: Runtime, host: str, port: int) -> EstServer | EstWorkers:
    pki = runtime.pki
    pki.authority()  # CaNotInitialized / KeyBackendError before anything is written
    if not (pki.server_directory / f"{_NAME}.chain.pem").exists():
        names, addresses = _names(host)
        pki.issue_server(_NAME, names, addresses, actor="fleetguard up")
    workers = runtime.settings.est_workers
    server: EstServer | EstWorkers
    if workers > 1:
        server = EstWorkers(runtime, host=host, port=port, count=workers)  # each serves OTA's routes too
    else:
        routes = OtaDeviceRoutes(runtime.ota, runtime.campaigns, pki, clock=utc_now)
        server = est_server(pki, runtime.enroll, host=host, port=port, device_routes=routes)
    server.start()
    return server


def _names(host: str) -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return [host], []
    return ["localhost"], [address]
