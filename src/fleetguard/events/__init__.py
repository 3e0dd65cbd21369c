"""The tamper-evident event log and the event bus."""

__all__: list[str] = []
