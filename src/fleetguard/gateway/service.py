"""One installation's MQTT gateway, wired: broker process, control client, probe and enforcer.

``fleetguard up`` (or ``fleetguard serve gateway``) builds a :class:`BrokerConfig` from the
installation (the PKI's trust bundle and a ``mqtt`` server certificate), creates a
:class:`GatewayService`, calls :meth:`GatewayService.start` with the complete CRLs of the issuing CAs,
and :meth:`GatewayService.update_crl` whenever a CRL is re-signed (well before its nextUpdate: an
expired CRL in the broker refuses every device, see :mod:`fleetguard.gateway.crlfile`). Enforcement
requests go to :attr:`GatewayService.enforcer`.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

from fleetguard.gateway.authority import GatewayAuthority
from fleetguard.gateway.broker import MosquittoBroker
from fleetguard.gateway.config import BrokerConfig
from fleetguard.gateway.dynsec import DynsecClient
from fleetguard.gateway.enforcement import BrokerEnforcer
from fleetguard.gateway.plugin import RESPONSE_CHANNEL, AuthPluginClient, StateFile
from fleetguard.gateway.probe import MqttProbe
from fleetguard.types import utc_now

__all__ = ["GatewayService"]

_CONTROL_TIMEOUT_S = 5.0
_PROBE_TIMEOUT_S = 3.0
_READY_TIMEOUT_S = 10.0


class GatewayService:
    """Mosquitto supervised, controlled and verified from one gateway directory."""

    def __init__(
        self,
        config: BrokerConfig,
        *,
        executable: Path | None = None,
        control_timeout_s: float = _CONTROL_TIMEOUT_S,
        probe_timeout_s: float = _PROBE_TIMEOUT_S,
        ready_timeout_s: float = _READY_TIMEOUT_S,
        clock: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        config.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(config.directory, 0o700)
        self.config = config
        self.authority = GatewayAuthority.load_or_create(config.directory, now=clock())
        self.broker = MosquittoBroker(
            config, self.authority, executable=executable, ready_timeout_s=ready_timeout_s, clock=clock
        )
        host, port = config.control_host, config.control_port
        channels = (RESPONSE_CHANNEL,) if config.auth_plugin else ()
        self.control = DynsecClient(
            host, port, self.authority, config.directory, timeout_s=control_timeout_s, clock=clock,
            channels=channels,
        )  # fmt: skip
        self.plugin = (
            AuthPluginClient(self.control, StateFile(config.plugin_state_file))
            if config.auth_plugin
            else None
        )
        """fleetguard's auth plugin, when the broker loads it (:mod:`fleetguard.gateway.plugin`)."""
        self.probe = MqttProbe(
            host, port, self.authority, config.directory, timeout_s=probe_timeout_s, clock=clock
        )
        self.enforcer = BrokerEnforcer(
            self.control, self.probe, self.broker, grants=config.grants, clock=clock, plugin=self.plugin
        )

    def start(self, crl_pem: bytes) -> None:
        """Write the files, start Mosquitto, and set its dynamic-security baseline.

        Raises ``CrlRejected`` for a bad CRL, ``BrokerStartFailed`` when Mosquitto does not run, and
        ``BrokerUnavailable``/``BrokerCommandFailed`` when the baseline cannot be set (the broker is
        then stopped again: it must not serve devices with unknown defaults).
        """
        self.broker.prepare(crl_pem)
        self.broker.start()
        try:
            self.enforcer.prepare()
        except BaseException:
            self.stop()
            raise

    def update_crl(self, crl_pem: bytes) -> None:
        """Install a newer CRL bundle and reload the broker, confirmed.

        Raises ``CrlRejected`` (nothing changed) or ``BrokerUnavailable``.
        """
        self.broker.install_crl(crl_pem)
        self.broker.reload()

    def stop(self) -> None:
        """Close the control connection and stop Mosquitto."""
        self.control.close()
        self.broker.stop()
