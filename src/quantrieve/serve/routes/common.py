"""What every router of the search service shares: the documented refusals."""

from __future__ import annotations

from typing import Any

from quantrieve.serve.schemas import ErrorResponse


def refusals(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given refusal statuses (all ``{"detail": ...}``)."""
    return {status: {"model": ErrorResponse, "description": WHY[status]} for status in statuses}


WHY = {
    400: "Not an image, a refused image, or a malformed body",
    401: "API key missing or wrong",
    403: "The service is read-only",
    404: "No such item (never added, or deleted)",
    413: "Request body over the size limit",
    422: "A value out of range or of the wrong type (k, batch, distance, item, embedding, "
    "labels), or a query parameter (none is taken)",
}
