"""The HTTP application: a FastAPI app over one :class:`~quantrieve.serve.service.SearchService`.

Endpoints (JSON unless said otherwise; the app's OpenAPI description is at ``/openapi.json``
and ``/docs``):

- ``GET /``: the web page (``static/index.html``, no external assets).
- ``POST /search``: multipart query images (field ``images``, repeatable), or JSON ``{"items":
  [...]}`` / ``{"embeddings": [[...]]}``; ``k`` and ``distance`` (form fields, or JSON keys).
- ``GET /items/{item}``, ``GET /items/{item}/image`` (PNG or JPEG).
- ``POST /items`` (multipart ``images``, optional ``labels``), ``DELETE /items/{item}``: changes,
  behind the API key when one is set; refused (403) by a read-only service.
- ``GET /health``, ``GET /stats``, ``GET /metrics`` (Prometheus text).

Every refusal is a JSON ``{"detail": message}`` with its status: 400 bad image or body, 401
missing or wrong API key, 403 read-only, 404 no such item, 413 body over the size limit, 422
out-of-range k, batch, distance or embedding; an unexpected error is a 500 whose traceback goes
to the log, and the service goes on.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from quantrieve.errors import QuantrieveError
from quantrieve.serve.service import (
    RequestError,
    SearchService,
    ServeOptions,
    Upload,
    clean_name,
)

log = logging.getLogger("quantrieve.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Environment variables read by the app factory used for several worker processes, and by the
# tests' fault injection (seconds to wait between an add's segment and its manifest).
OPTIONS_ENV = "QUANTRIEVE_SERVE_OPTIONS"
COMMIT_DELAY_ENV = "QUANTRIEVE_TEST_COMMIT_DELAY"
ITEM_LIMIT = 2**62
ItemNumber = Annotated[
    int, PathParam(ge=0, lt=ITEM_LIMIT, description="The item number (from search results).")
]


class BodyTooLargeError(Exception):
    """A request body went past the limit while it was read."""


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413: at once when Content-Length says so,
    else as soon as the streamed body passes it (nothing beyond it is read)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await _send_json(send, 413, self._message())
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLargeError
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except BodyTooLargeError:
            if not started:
                await _send_json(send, 413, self._message())

    def _message(self) -> str:
        return f"request body over the limit of {self.limit:,} bytes (--max-upload-mb)"


async def _send_json(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestMetrics:
    """Count every request by method, route template (never the raw path) and status."""

    def __init__(self, app: ASGIApp, service: SearchService) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.service.metrics.request(scope.get("method", "?"), route, status)


class SearchJSON(BaseModel):
    """A search by items of the index or by raw embeddings (JSON body of ``POST /search``)."""

    model_config = ConfigDict(extra="forbid")

    items: list[int] | None = None
    embeddings: list[list[float]] | None = None
    k: int = 10
    distance: Literal["l2", "sqeuclidean"] | None = None


SEARCH_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["images"],
                "properties": {
                    "images": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "Query images (JPEG, PNG, BMP, WEBP, GIF).",
                    },
                    "k": {"type": "integer", "default": 10, "minimum": 1},
                    "distance": {"type": "string", "enum": ["l2", "sqeuclidean"]},
                },
            }
        },
        "application/json": {"schema": SearchJSON.model_json_schema()},
    },
}
ADD_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["images"],
                "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}},
                    "labels": {
                        "type": "array",
                        "items": {"type": "string"},
                        "description": "Per image (or one for all): comma-separated class "
                        "names of a labelled index.",
                    },
                },
            }
        }
    },
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not an image, a refused image, or a malformed body"},
    404: {"description": "No such item (never added, or deleted)"},
    413: {"description": "Request body over the size limit"},
    422: {"description": "k, batch, distance or embedding out of range"},
}
WRITE_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    401: {"description": "API key missing or wrong"},
    403: {"description": "The service is read-only"},
}


def create_app(
    index_dir: str | Path,
    options: ServeOptions | None = None,
    *,
    service: SearchService | None = None,
) -> FastAPI:
    """The search service of one index directory, as an ASGI app.

    The index is loaded and verified here (errors are raised before any port is bound). The
    write lock taken by a writable service is released when the app shuts down.

    Args:
        index_dir: the index directory.
        options: limits, API key, CORS origins, read-only (:class:`ServeOptions`).
        service: an already loaded service (``index_dir`` and ``options`` are then its own).
    """
    if service is None:
        delay = float(os.environ.get(COMMIT_DELAY_ENV) or 0)
        pause = None
        if delay > 0:
            import time

            def pause() -> None:
                time.sleep(delay)

        service = SearchService(index_dir, options, before_commit=pause)
    opts = service.options
    log.info("serving %s", service.describe())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    from quantrieve import __version__

    app = FastAPI(
        title="quantrieve search service",
        version=__version__,
        description="Image retrieval with learned product quantization over one index "
        "directory: search by image, item or embedding; add and delete items.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(BodyTooLargeError)
    async def too_large(_: Request, exc: BodyTooLargeError) -> JSONResponse:
        limit = opts.max_upload_bytes
        message = f"request body over the limit of {limit:,} bytes (--max-upload-mb)"
        return JSONResponse({"detail": message}, status_code=413, headers={"Connection": "close"})

    @app.exception_handler(RequestError)
    async def refused(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(QuantrieveError)
    async def user_error(_: Request, exc: QuantrieveError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; see the service log"}, status_code=500)

    def authorise(request: Request) -> None:
        if opts.read_only:
            raise RequestError(403, "this service is read-only (started with --read-only)")
        if not opts.api_key:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if given is None or not hmac.compare_digest(given.encode(), opts.api_key.encode()):
            raise RequestError(401, "this service needs its API key for changes (header X-API-Key)")

    async def read_form(request: Request) -> tuple[list[Upload], dict[str, list[str]]]:
        """Uploaded files (field ``images``) and text fields of a multipart body."""
        try:
            form = await request.form(max_files=opts.max_batch + 1, max_fields=opts.max_batch + 16)
        except BodyTooLargeError:
            raise
        except Exception as exc:  # starlette/multipart raise several types for a bad body
            detail = getattr(exc, "detail", None) or str(exc) or type(exc).__name__
            raise RequestError(400, f"malformed multipart body ({detail})") from None
        uploads: list[Upload] = []
        fields: dict[str, list[str]] = {}
        try:
            for name, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if name not in ("images", "image"):
                        raise RequestError(422, f"unexpected file field {name!r} (use 'images')")
                    data = await value.read()
                    uploads.append(
                        Upload(clean_name(value.filename, f"image {len(uploads)}"), data)
                    )
                else:
                    fields.setdefault(name, []).append(value)
        finally:
            await form.close()
        return uploads, fields

    def form_int(fields: dict[str, list[str]], name: str, default: int) -> int:
        values = fields.get(name)
        if not values:
            return default
        try:
            return int(values[-1])
        except ValueError:
            raise RequestError(422, f"{name} must be an integer, got {values[-1]!r}") from None

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        html = resources.files("quantrieve.serve").joinpath("static/index.html").read_text()
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                "style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )

    @app.post(
        "/search",
        openapi_extra={"requestBody": SEARCH_BODY},
        responses=ERRORS,
        summary="Top-k items for query images, items of the index, or embeddings",
    )
    async def search(request: Request) -> dict[str, Any]:
        """Multipart: query images in ``images`` (several allowed), ``k``, ``distance``. JSON:
        ``{"items": [3, 17]}`` (items of the index, searched by their images) or
        ``{"embeddings": [[...]]}`` (vectors of the index's dimension), with ``k`` and
        ``distance``. Each query gets its hits: rank, item, id, distance, labels, whether added,
        and the image URL."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            uploads, fields = await read_form(request)
            k = form_int(fields, "k", 10)
            distance = (fields.get("distance") or [None])[-1] or None
            return await run_in_threadpool(service.search, uploads=uploads, k=k, distance=distance)
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
        return await run_in_threadpool(
            service.search,
            items=body.items or [],
            embeddings=body.embeddings or [],
            k=body.k,
            distance=body.distance,
        )

    @app.get("/items/{item}", responses=ERRORS, summary="An item's metadata")
    def get_item(item: ItemNumber) -> dict[str, Any]:
        return service.item(item)

    @app.get(
        "/items/{item}/image",
        responses={**ERRORS, 200: {"content": {"image/png": {}, "image/jpeg": {}}}},
        response_class=Response,
        summary="An item's image (a cached thumbnail)",
    )
    def get_image(item: ItemNumber) -> Response:
        data, media_type = service.image(item)
        return Response(data, media_type=media_type, headers={"Cache-Control": "max-age=3600"})

    @app.post(
        "/items",
        status_code=201,
        openapi_extra={"requestBody": ADD_BODY},
        responses=WRITE_ERRORS,
        summary="Add images (embedded, encoded, appended durably)",
    )
    async def add_items(request: Request) -> dict[str, Any]:
        """The new items' numbers are returned once the change is on disk (its segment and
        manifest written and synced)."""
        authorise(request)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "multipart/form-data":
            raise RequestError(400, "send the images as multipart/form-data (field 'images')")
        uploads, fields = await read_form(request)
        return await run_in_threadpool(service.add, uploads, fields.get("labels", []))

    @app.delete("/items/{item}", responses=WRITE_ERRORS, summary="Delete an item")
    def delete_item(request: Request, item: ItemNumber) -> dict[str, Any]:
        """The item is tombstoned durably and never returned again; `quantrieve compact`
        rewrites the codes without it."""
        authorise(request)
        return service.delete(item)

    @app.get("/health", summary="Liveness")
    def health() -> dict[str, Any]:
        live = service.live
        return {"status": "ok", "items": len(live), "index_version": live.generation}

    @app.get("/stats", summary="Index and service statistics")
    def stats() -> dict[str, Any]:
        return service.stats()

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
    def metrics() -> PlainTextResponse:
        live = service.live
        from quantrieve.serve.metrics import resident_memory_bytes

        gauges = {
            "quantrieve_items": (len(live), "Items in the served index."),
            "quantrieve_index_version": (live.generation, "Generation of the served index."),
            "quantrieve_deleted_items": (len(live.deleted), "Deleted items not yet compacted."),
            "quantrieve_segments": (len(live.segments), "Appended segments."),
            "process_resident_memory_bytes": (resident_memory_bytes(), "Resident memory."),
        }
        return PlainTextResponse(
            service.metrics.prometheus(gauges), media_type="text/plain; version=0.0.4"
        )

    if opts.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(opts.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Content-Type", "X-API-Key", "Authorization"],
        )
    app.add_middleware(BodyLimit, limit=opts.max_upload_bytes)
    app.add_middleware(RequestMetrics, service=service)
    return app


def app_from_environment() -> FastAPI:
    """App factory for several worker processes (``uvicorn --factory``): the index directory
    and options come from the ``QUANTRIEVE_SERVE_OPTIONS`` environment variable (JSON)."""
    config = json.loads(os.environ[OPTIONS_ENV])
    logging.basicConfig(  # a worker process: log like the command that started it
        level=str(config.get("log_level", "info")).upper(),
        format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s",
    )
    options = config["options"]
    options["cors_origins"] = tuple(options.get("cors_origins") or ())
    return create_app(config["index_dir"], ServeOptions(**options))
