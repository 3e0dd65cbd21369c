"""Liveness, readiness and metrics: the only routes that need no token.

``/healthz`` says the process answers; ``/readyz`` says it can serve, i.e. the database answers;
``/metrics`` is the Prometheus scrape target. None of them reveals more than counts.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from fleetguard.api import schemas
from fleetguard.api.context import RuntimeDep
from fleetguard.api.metrics import CONTENT_TYPE, Metrics
from fleetguard.api.problems import problem_responses

__all__ = ["router"]

router = APIRouter(tags=["health"])


def _metrics(request: Request) -> Metrics:
    metrics = request.app.state.metrics
    assert isinstance(metrics, Metrics)
    return metrics


@router.get("/healthz", summary="Liveness")
def healthz() -> schemas.Health:
    """Answer 200 while the process serves requests; it checks nothing else."""
    return schemas.Health(status="ok")


@router.get("/readyz", summary="Readiness", responses=problem_responses(503))
def readyz(runtime: RuntimeDep) -> schemas.Health:
    """Answer 200 when the database answers a query, else 503 with problem details."""
    runtime.database.ping()
    return schemas.Health(status="ready")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format 0.0.4."}},
)
def metrics(collected: Annotated[Metrics, Depends(_metrics)]) -> Response:
    """Return request counts and latencies by route, and devices by lifecycle state."""
    return Response(collected.render(), media_type=CONTENT_TYPE)
