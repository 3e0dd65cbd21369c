"""Settings for one installation, read from ``FLEETGUARD_*`` environment variables.

The data directory holds the SQLite database (unless ``FLEETGUARD_DATABASE_URL`` names another), the
installation file written by ``fleetguard init`` and the signing keys. Every bound that protects a
server from its input lives here so that operators can see and tune it in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

_MIB = 1024 * 1024


class Settings(BaseSettings):
    """One installation's configuration; every field can be set as ``FLEETGUARD_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLEETGUARD_", frozen=True, extra="ignore")

    data_dir: Path = Path("fleetguard-data")
    database_url: str | None = None
    bus_url: str = "memory://"
    bus_partitions: int = Field(default=16, ge=1, le=1024)
    trust_domain: str | None = None

    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8470, ge=0, le=65535)

    # Bounds on input; each protects a server from one request or one file.
    max_request_bytes: int = Field(default=1 * _MIB, ge=1024)
    max_import_bytes: int = Field(default=256 * _MIB, ge=1024)
    # A firmware image uploaded to POST /v1/firmware/scans (streamed to a private file).
    max_firmware_bytes: int = Field(default=512 * _MIB, ge=1024)
    max_import_rows: int = Field(default=2_000_000, ge=1)
    max_page_size: int = Field(default=1000, ge=1)
    checkpoint_interval_s: float = Field(default=60.0, gt=0)

    # PKI (issue 3). The base URL is where relying parties fetch CRLs, OCSP and CA certificates; it
    # goes into every certificate, so set it to the address devices reach (plain http: RFC 5280
    # 4.2.1.13, the data is signed).
    pki_base_url: str | None = None
    device_certificate_days: int = Field(default=30, ge=1, le=825)
    crl_partitions: int = Field(default=1024, ge=1, le=65536)
    crl_validity_hours: float = Field(default=24.0, gt=0)
    ocsp_validity_hours: float = Field(default=4.0, gt=0)
    renewal_grace_days: float = Field(default=30.0, ge=0)
    renewal_rate_per_s: float = Field(default=200.0, gt=0)
    renewal_burst: int = Field(default=1000, ge=1)
    device_renewals_per_hour: float = Field(default=6.0, gt=0)
    device_renewal_burst: int = Field(default=3, ge=1)
    ca_passphrase_env: str = "FLEETGUARD_CA_PASSPHRASE"  # noqa: S105 - the variable name, not a secret
    ca_passphrase_file: Path | None = None
    pkcs11_module: Path | None = None
    pkcs11_token: str | None = None
    pkcs11_pin_env: str = "FLEETGUARD_PKCS11_PIN"

    # EST (RFC 7030) enrollment endpoint that `fleetguard up` serves over TLS; 0 disables it. More
    # than one worker serves it from that many processes, for more than one core (they share the
    # rate limits of the process that starts them).
    est_host: str | None = None
    est_port: int = Field(default=8443, ge=0, le=65535)
    est_workers: int = Field(default=1, ge=1, le=64)

    # MQTT broker (Mosquitto) that `fleetguard up` configures, supervises and drives as the trust
    # capability's enforcement point; 0 disables it. The control listener is loopback only.
    mqtt_host: str | None = None
    mqtt_port: int = Field(default=8883, ge=0, le=65535)
    mqtt_control_port: int = Field(default=8884, ge=1, le=65535)
    mqtt_crl_refresh_s: float = Field(default=3600.0, ge=10.0, le=86400.0)
    # fleetguard's Mosquitto auth plugin (built with cc at first start): `auto` uses it when it builds
    # and falls back to dynamic-security roles with a warning, `on` requires it, `off` never builds it.
    mqtt_plugin: Literal["auto", "on", "off"] = "auto"

    # Segmentation: `up` enforces the fleet's ruleset only when segment_enforce is on. nft runs
    # here (as root), or inside the named network namespace (`ip netns exec`) when the gateway is
    # one; MUD DNS names are resolved with these name servers (comma-separated;
    # empty: the system's). `up` re-resolves names and reads violations every segment_refresh_s.
    segment_enforce: bool = False
    segment_netns: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    segment_nameservers: str = ""
    segment_dns_port: int = Field(default=53, ge=1, le=65535)
    segment_refresh_s: float = Field(default=30.0, ge=1.0, le=3600.0)
    # OTA: `up` evaluates every running rollout campaign (silent devices time out, soak and deadlines,
    # windows, completion) and re-signs the image repository's timestamp when due, every
    # ota_evaluate_s; a device report that breaches a threshold is acted on at once.
    ota_evaluate_s: float = Field(default=10.0, ge=0.05, le=3600.0)
    # Monitoring: `up` collects NetFlow v5/v9 and IPFIX over UDP on netflow_port (0: off) from the
    # exporters listed in netflow_exporters (comma-separated addresses; UDP sources can be forged,
    # so the list is required and exporters belong on a filtered management network), and runs the
    # detectors over the flows. monitor_quarantine_at (1..100) quarantines a device whose risk from
    # open alerts reaches it; unset, alerts only raise the risk that zero trust decides with.
    netflow_host: str = "0.0.0.0"  # noqa: S104 - exporters reach it on the management network
    netflow_port: int = Field(default=0, ge=0, le=65535)
    netflow_exporters: str = ""
    monitor_quarantine_at: int | None = Field(default=None, ge=1, le=100)
    # Live capture (AF_PACKET, root) of one interface into the monitor: rules, and the anomaly model
    # once `fleetguard monitor train` made one. Empty: off.
    monitor_interface: str = Field(default="", pattern=r"^[A-Za-z0-9_.:@-]{0,15}$")
    # SIEM export of every new alert: RFC 5424 syslog over UDP with a CEF message (host:port), and a
    # JSON webhook (http(s) URL). Empty: off.
    alert_syslog: str = Field(default="", pattern=r"^$|^[A-Za-z0-9_.:-]{1,253}:[0-9]{1,5}$")
    alert_webhook: str = Field(default="", pattern=r"^$|^https?://[^\s]{1,2000}$")
    sqlite_busy_timeout_ms: int = Field(default=5000, ge=0)

    @property
    def resolved_pki_base_url(self) -> str:
        """The public URL prefix of CRLs, OCSP and CA certificates, without a trailing slash."""
        if self.pki_base_url:
            return self.pki_base_url.rstrip("/")
        return f"http://{self.api_host}:{self.api_port}/pki"

    @property
    def resolved_database_url(self) -> str:
        """The SQLAlchemy URL: the configured one, or SQLite under the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fleetguard.db').resolve()}"
