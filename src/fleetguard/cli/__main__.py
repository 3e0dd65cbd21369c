"""``python -m fleetguard.cli``: the same program as the ``fleetguard`` console script."""

from fleetguard.cli.main import main

main()
