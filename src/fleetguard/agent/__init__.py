"""The reference device agent (``fleetguard-agent``).

Later issues add enrollment (EST, RFC 7030), mutual-TLS MQTT, the TUF update client with A/B slots
and rollback, and telemetry; today the program only says what it will do and which version it is.
"""

__all__: list[str] = []
