"""``/items``: an item's metadata and image, adding images, deleting an item."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from quantrieve.serve.dependencies import (
    Service,
    media_type,
    no_query_parameters,
    read_form,
    require_writes,
)
from quantrieve.serve.routes.common import refusals
from quantrieve.serve.schemas import (
    ITEM_LIMIT,
    AddResponse,
    DeleteResponse,
    ItemResponse,
)
from quantrieve.serve.service import RequestError

router = APIRouter(prefix="/items", tags=["items"], dependencies=[Depends(no_query_parameters)])

Item = Annotated[
    int,
    Path(ge=0, lt=ITEM_LIMIT, description="The item number (from search results)."),
]
Writes = [Depends(require_writes)]


@router.get(
    "/{item}",
    response_model=ItemResponse,
    response_model_exclude_unset=True,
    responses=refusals(404, 422),
    summary="An item's metadata",
)
def get_item(item: Item, service: Service) -> ItemResponse:
    """Its id, labels, PQ code, image URL, and the uploaded file's name when it was added."""
    return ItemResponse.model_validate(service.item(item))


@router.get(
    "/{item}/image",
    response_class=Response,
    responses={
        200: {
            "description": "The item's image (a cached thumbnail)",
            "content": {
                "image/png": {"schema": {"type": "string", "format": "binary"}},
                "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **refusals(404, 422),
    },
    summary="An item's image (a cached thumbnail)",
)
def get_image(item: Item, service: Service) -> Response:
    """PNG or JPEG, at most the service's thumbnail size on its longer side."""
    data, kind = service.image(item)
    return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})


@router.post(
    "",
    status_code=201,
    response_model=AddResponse,
    dependencies=Writes,
    responses=refusals(400, 401, 403, 413, 422),
    summary="Add images (embedded, encoded, appended durably)",
)
async def add_items(request: Request, service: Service) -> AddResponse:
    """The new items' numbers are returned once the change is on disk (its segment and
    manifest written and synced). (The request body is described in the service's own OpenAPI
    document, with its limits and labels.)"""
    if media_type(request) != "multipart/form-data":
        raise RequestError(400, "send the images as multipart/form-data (field 'images')")
    uploads, fields = await read_form(request, service)
    result = await run_in_threadpool(service.add, uploads, fields.get("labels", []))
    return AddResponse.model_validate(result)


@router.delete(
    "/{item}",
    response_model=DeleteResponse,
    dependencies=Writes,
    responses=refusals(401, 403, 404, 422),
    summary="Delete an item",
)
def delete_item(item: Item, service: Service) -> DeleteResponse:
    """The item is tombstoned durably and never returned again; `quantrieve compact`
    rewrites the codes without it."""
    return DeleteResponse.model_validate(service.delete(item))
