"""Probes for supervisors and load balancers, and Prometheus metrics. No login needed."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ui.deps import ServicesDep
from ui.status import broker_check, clickhouse_check

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(services: ServicesDep) -> JSONResponse:
    """The broker and ClickHouse are reachable (503 when one is not)."""
    found = [broker_check(services), clickhouse_check(services)]
    body = {check.name: {"ok": check.ok, "detail": check.detail} for check in found}
    ready = all(check.ok for check in found)
    return JSONResponse({"ready": ready, "checks": body}, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
