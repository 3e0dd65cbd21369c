"""The ``fleetguard`` command line: one module per command group, wired together in :mod:`.main`.

Commands open the installation's :class:`~fleetguard.installation.Runtime` when they run and close it
when they finish; every failure becomes one line on stderr and exit status 1 (:mod:`.exit_status`).
"""

__all__: list[str] = []
