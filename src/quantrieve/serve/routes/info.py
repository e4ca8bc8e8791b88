"""The service itself: ``GET /health``, ``GET /stats``, ``GET /metrics`` and the web page."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from quantrieve.serve.dependencies import Service, no_query_parameters
from quantrieve.serve.metrics import CONTENT_TYPE
from quantrieve.serve.routes.common import refusals
from quantrieve.serve.schemas import HealthResponse, StatsResponse

router = APIRouter(tags=["service"], dependencies=[Depends(no_query_parameters)])
page_router = APIRouter(include_in_schema=False)

PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
}
PROMETHEUS_TEXT = "text/plain; version=0.0.4"  # CONTENT_TYPE, less its charset


@page_router.get("/", response_class=HTMLResponse)
def page() -> HTMLResponse:
    """The web page (``static/index.html``, no external assets)."""
    html = resources.files("quantrieve.serve").joinpath("static/index.html").read_text()
    return HTMLResponse(html, headers=PAGE_HEADERS)


@router.get("/health", response_model=HealthResponse, responses=refusals(422), summary="Liveness")
def health(service: Service) -> HealthResponse:
    """The number of items and the index version served."""
    live = service.live
    return HealthResponse(status="ok", items=len(live), index_version=live.generation)


@router.get(
    "/stats",
    response_model=StatsResponse,
    responses=refusals(422),
    summary="Index and service statistics",
)
def stats(service: Service) -> StatsResponse:
    """The index (items, versions, codebooks), the service (queries, latency, memory) and its
    limits."""
    return StatsResponse.model_validate(service.stats())


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text exposition format 0.0.4",
            "content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}},
        },
        **refusals(422),
    },
    summary="Prometheus metrics",
)
def metrics(service: Service) -> Response:
    """Requests by route and status, request and search latency histograms, the index's
    gauges, the process (CPU, memory) and the build (``quantrieve.serve.metrics``)."""
    live = service.live
    gauges = {
        "quantrieve_index_items": (len(live), "Items in the served index."),
        "quantrieve_index_generation": (live.generation, "Generation (version) of the index."),
        "quantrieve_index_segments": (len(live.segments), "Appended segments."),
        "quantrieve_index_deleted_items": (len(live.deleted), "Deleted items not yet compacted."),
    }
    return Response(service.metrics.exposition(gauges), media_type=CONTENT_TYPE)
