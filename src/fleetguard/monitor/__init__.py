"""Passive threat monitoring: ingestion, discovery, incremental features, detectors, alerts, response."""
