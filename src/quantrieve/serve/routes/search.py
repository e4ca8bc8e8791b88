"""``POST /search``: top-k items for query images, items of the index, or embeddings."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from quantrieve.serve.dependencies import (
    Service,
    form_choice,
    form_int,
    media_type,
    no_query_parameters,
    read_form,
)
from quantrieve.serve.routes.common import refusals
from quantrieve.serve.schemas import (
    MAX_EMBEDDING_VALUE,
    MAX_ID_PREFIX,
    SearchJSON,
    SearchResponse,
    split_labels,
)
from quantrieve.serve.service import RequestError

router = APIRouter(tags=["search"], dependencies=[Depends(no_query_parameters)])


@router.post(
    "/search",
    response_model=SearchResponse,
    responses=refusals(400, 404, 413, 422),
    summary="Top-k items for query images, items of the index, or embeddings",
)
async def search(request: Request, service: Service) -> SearchResponse:
    """Multipart: query images in ``images`` (several allowed), ``k``, ``distance``, and the
    filters ``labels`` (comma-separated class names) and ``id_prefix``. JSON:
    ``{"items": [3, 17]}`` (items of the index, searched by their images) or
    ``{"embeddings": [[...]]}`` (vectors of the index's dimension), with ``k``, ``distance``,
    ``labels`` (a list) and ``id_prefix``. Each query gets its hits: rank, item, id,
    distance, labels, whether added, and the image URL. (The request body is described in
    the service's own OpenAPI document, with its limits.)"""
    kind = media_type(request)
    if kind == "multipart/form-data":
        uploads, fields = await read_form(request, service)
        k = form_int(fields, "k", 10)
        distance = form_choice(fields, "distance")
        labels = split_labels(form_choice(fields, "labels") or "")
        id_prefix = form_choice(fields, "id_prefix")
        if id_prefix is not None and len(id_prefix) > MAX_ID_PREFIX:
            raise RequestError(422, f"id_prefix is longer than {MAX_ID_PREFIX} characters")
        result = await run_in_threadpool(
            service.search,
            uploads=uploads,
            k=k,
            distance=distance,
            labels=labels,
            id_prefix=id_prefix,
        )
        return SearchResponse.model_validate(result)
    if kind != "application/json":
        raise RequestError(
            400, "send query images as multipart/form-data, or items/embeddings as JSON"
        )
    try:
        body = SearchJSON.model_validate_json(await request.body())
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise RequestError(422, f"{where or 'body'}: {first.get('msg')}") from None
    if any(abs(v) > MAX_EMBEDDING_VALUE for e in body.embeddings or () for v in e):
        bound = f"{MAX_EMBEDDING_VALUE:g}"
        raise RequestError(422, f"embedding values must be between -{bound} and {bound}")
    result = await run_in_threadpool(
        service.search,
        items=body.items or [],
        embeddings=body.embeddings or [],
        k=body.k,
        distance=body.distance,
        labels=body.labels,
        id_prefix=body.id_prefix,
    )
    return SearchResponse.model_validate(result)
