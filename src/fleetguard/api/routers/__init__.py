"""One router per capability; :mod:`fleetguard.api.app` includes them in a fixed order."""
