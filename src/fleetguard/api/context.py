"""What a route gets from its request: the installation's runtime, stored on ``app.state``.

There is no module-level runtime: each app built by :func:`fleetguard.api.app.create_app` carries its
own, so that tests and several installations can run side by side in one process.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from fleetguard.installation import Runtime

__all__ = ["RuntimeDep", "runtime_of"]


async def runtime_of(request: Request) -> Runtime:
    """Return the runtime of the app serving ``request`` (async: no threadpool hop for a lookup)."""
    runtime = request.app.state.runtime
    assert isinstance(runtime, Runtime)
    return runtime


RuntimeDep = Annotated[Runtime, Depends(runtime_of)]
