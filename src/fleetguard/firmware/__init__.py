"""Firmware security analysis: safe extraction, analyzers, components, offline vulnerabilities, SBOM, gate.

See ``model`` for the values every part shares.
"""
