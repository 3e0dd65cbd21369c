"""The reference device agent (``fleetguard-agent``).

It enrolls the device over EST (RFC 7030) with a key in a file, a PKCS#11 token or the TPM, keeps
the certificate renewed, and keeps a mutual-TLS MQTT session with the fleet's broker for telemetry
and commands (:mod:`fleetguard.agent.mqtt`). A later issue adds the TUF update client with A/B slots
and rollback.
"""

__all__: list[str] = []
