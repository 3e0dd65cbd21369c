"""The HTTP API: an app factory (:func:`fleetguard.api.app.create_app`), one router per capability,
operator tokens and roles, and RFC 9457 problem details.

This package imports nothing on purpose: ``fleetguard.installation`` imports ``fleetguard.api.tokens``,
and the app imports the installation.
"""
