"""Prometheus metrics of one app: HTTP requests by route template, and devices by lifecycle state.

Each app owns a :class:`~prometheus_client.CollectorRegistry` (never the process-global one), so
that several apps in one process, as in tests, count separately. Requests are labelled with the
route *template* (``/v1/devices/{device_id}``), never the raw path, to keep label cardinality bounded;
requests that match no route share the label ``unmatched``. Device counts are read at scrape time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fleetguard.inventory.lifecycle import State
from fleetguard.inventory.model import DeviceFilter
from fleetguard.inventory.service import Inventory
from fleetguard.store.errors import StoreUnavailable

__all__ = ["CONTENT_TYPE", "HttpMetrics", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text exposition format 0.0.4
_UNMATCHED = "unmatched"

_log = logging.getLogger(__name__)


class Metrics:
    """The registry of one app and the collectors in it."""

    def __init__(self, inventory: Inventory) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fleetguard_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fleetguard_http_request_duration_seconds",
            "Time to answer HTTP requests, by method and route template.",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(_DeviceStates(inventory))

    def render(self) -> bytes:
        """Return every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class HttpMetrics:
    """Pure ASGI middleware that counts and times every HTTP request in ``metrics``."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client sees if the app fails before answering
        started = time.perf_counter()

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            route = _template(scope)
            method = str(scope["method"])
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


class _DeviceStates(Collector):
    """Gauge ``fleetguard_devices{state=...}``, counted in the inventory at each scrape."""

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        try:
            for state in State:
                family.add_metric([state.value], self._inventory.count(DeviceFilter(state=state)))
        except StoreUnavailable as exc:
            # A scrape must not fail because the database is busy: the gauge is left out this time.
            _log.warning("device counts left out of metrics: %s", exc)
            return []
        return [family]

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "fleetguard_devices", "Devices in the inventory, by state.", labels=["state"]
        )


def _template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else _UNMATCHED
