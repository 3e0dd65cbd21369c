"""The FastAPI app factory.

:func:`create_app` wires one installation's :class:`~fleetguard.installation.Runtime` into a new app:
routers, problem-details handlers, body limits and metrics. Nothing is module-global, so any number
of apps can live in one process. The app refuses to be built with a route that requires no
permission unless the route is one of :data:`fleetguard.api.auth.PUBLIC_PATHS`.

Middleware, outermost first: metrics (sees every answer, 413 and 500 included), the last-resort
error guard, the body limit, then FastAPI's own exception handling and the routers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from fleetguard import __version__
from fleetguard.api.auth import PUBLIC_PATHS, permission_of
from fleetguard.api.limits import BodyLimit
from fleetguard.api.metrics import HttpMetrics, Metrics
from fleetguard.api.openapi import finish_document
from fleetguard.api.problems import UnhandledErrorGuard, install_problem_handlers
from fleetguard.api.routers import devices, events, health, inventory, tokens, transfer
from fleetguard.config import Settings
from fleetguard.installation import Runtime

__all__ = ["api_routes", "create_app", "create_app_from_env"]

_DESCRIPTION = """\
The fleetguard control plane: device inventory and lifecycle, and the tamper-evident event log.

Every route except `/healthz`, `/readyz` and `/metrics` needs an API token
(`Authorization: Bearer fgt_...`) whose role grants the permission the operation names.
Errors are RFC 9457 problem details (`application/problem+json`).
"""

# transfer before devices: GET /v1/devices/export must not be read as the device id "export".
_ROUTERS = (health.router, transfer.router, devices.router, inventory.router, events.router, tokens.router)


def api_routes() -> Iterator[APIRoute]:
    """Yield every operation the app serves (read from the routers: FastAPI may nest them lazily)."""
    for router in _ROUTERS:
        yield from (route for route in router.routes if isinstance(route, APIRoute))


class _FleetguardApi(FastAPI):
    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = finish_document(super().openapi(), api_routes())
        return self.openapi_schema


def create_app(runtime: Runtime, *, owns_runtime: bool = False) -> FastAPI:
    """Return an app serving ``runtime``; with ``owns_runtime`` the app closes it on shutdown.

    Raises:
        RuntimeError: a route requires no permission and is not a public path.
    """
    app = _FleetguardApi(
        title="fleetguard",
        version=__version__,
        description=_DESCRIPTION,
        redoc_url=None,
        lifespan=_lifespan(runtime if owns_runtime else None),
    )
    app.state.runtime = runtime
    app.state.metrics = Metrics(runtime.inventory)
    for router in _ROUTERS:
        app.include_router(router)
    _require_permissions()
    install_problem_handlers(app)
    settings = runtime.settings
    app.add_middleware(
        BodyLimit,
        default=settings.max_request_bytes,
        routes={transfer.IMPORT_PATH: settings.max_import_bytes},
    )
    app.add_middleware(UnhandledErrorGuard)
    app.add_middleware(HttpMetrics, metrics=app.state.metrics)
    return app


def create_app_from_env() -> FastAPI:
    """Return an app for the installation that ``FLEETGUARD_*`` names (``uvicorn --factory``)."""
    return create_app(Runtime(Settings()), owns_runtime=True)


def _require_permissions() -> None:
    for route in api_routes():
        if route.path not in PUBLIC_PATHS and permission_of(route) is None:
            raise RuntimeError(f"route {sorted(route.methods or ())} {route.path} requires no permission")


def _lifespan(owned: Runtime | None) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owned is not None:
                owned.close()

    return lifespan
