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

import swagger_ui_bundle  # type: ignore[import-untyped]
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from fleetguard import __version__
from fleetguard.api.auth import PUBLIC_PATHS, permission_of
from fleetguard.api.limits import BodyLimit
from fleetguard.api.metrics import HttpMetrics, Metrics
from fleetguard.api.openapi import finish_document
from fleetguard.api.problems import UnhandledErrorGuard, install_problem_handlers
from fleetguard.api.routers import (
    devices,
    enroll,
    events,
    firmware,
    health,
    inventory,
    monitor,
    ota,
    pki,
    pki_public,
    segment,
    tokens,
    transfer,
    trust,
)
from fleetguard.api.schemas_segment import MAX_PROFILE_BODY, MAX_SIMULATE_BODY
from fleetguard.config import Settings
from fleetguard.enroll import MAX_BATCH_INPUT_BYTES
from fleetguard.installation import Runtime

__all__ = ["api_routes", "create_app", "create_app_from_env"]

_DESCRIPTION = """\
The fleetguard control plane: device inventory and lifecycle, PKI and enrollment, the zero-trust
policy decision point (Cedar policies, decisions, trust signals), network segmentation (MUD →
nftables), firmware analysis and the release gate, signed OTA updates (releases, campaigns, patch
compliance), and the tamper-evident event log. OTA operations that sign with offline private keys
(publishing, approving, signing staged metadata, key rotation) are `fleetguard ota` commands only.

Every route except `/healthz`, `/readyz`, `/metrics`, the relying parties' `/pki/...` (CA
certificates, CRLs and OCSP) and the OTA image repository's `/ota/image/...` (signed public data)
needs an API token (`Authorization: Bearer fgt_...`) whose role grants the permission the operation
names.
Errors are RFC 9457 problem details (`application/problem+json`).
"""

# transfer before devices: GET /v1/devices/export must not be read as the device id "export".
_ROUTERS = (
    health.router,
    pki_public.router,
    transfer.router,
    devices.router,
    pki.router,
    enroll.router,
    inventory.router,
    events.router,
    tokens.router,
    trust.router,
    segment.router,
    firmware.router,
    ota.router,
    ota.public_router,
    monitor.router,
)


_DOCS_ASSETS = "/docs/assets"


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
        docs_url=None,
        lifespan=_lifespan(runtime if owns_runtime else None),
    )
    app.state.runtime = runtime
    _serve_docs(app)
    app.state.metrics = Metrics(runtime.inventory)
    for router in _ROUTERS:
        app.include_router(router)
    _require_permissions()
    install_problem_handlers(app)
    settings = runtime.settings
    app.add_middleware(
        BodyLimit,
        default=settings.max_request_bytes,
        routes={
            transfer.IMPORT_PATH: settings.max_import_bytes,
            enroll.BATCHES_PATH: min(settings.max_import_bytes, MAX_BATCH_INPUT_BYTES),
            # A policy set is bounded by its own size (MAX_POLICY_BYTES), whatever the default is.
            trust.POLICIES_PATH: trust.MAX_POLICY_BODY,
            trust.VALIDATE_PATH: trust.MAX_POLICY_BODY,
            trust.DIFF_PATH: trust.MAX_POLICY_BODY,
            # A MUD file is bounded by its own size (MAX_MUD_BYTES); a simulation carries many flows.
            segment.PROFILES_PATH: MAX_PROFILE_BODY,
            segment.SIMULATE_PATH: MAX_SIMULATE_BODY,
            firmware.SCANS_PATH: settings.max_firmware_bytes,
        },
    )
    app.add_middleware(UnhandledErrorGuard)
    app.add_middleware(HttpMetrics, metrics=app.state.metrics)
    return app


def _serve_docs(app: FastAPI) -> None:
    # Swagger UI from the swagger-ui-bundle package, not FastAPI's default CDN: the docs work on an
    # air-gapped gateway, and no third-party script runs in an operator's browser.
    app.mount(_DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="fleetguard API",
            swagger_js_url=f"{_DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{_DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{_DOCS_ASSETS}/favicon-32x32.png",
        )


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
