"""The HTTP application: a FastAPI app over one :class:`~quantrieve.serve.service.SearchService`.

Endpoints (JSON unless said otherwise; the app's OpenAPI description is at ``/openapi.json``
and ``/docs``, with the models of :mod:`quantrieve.serve.schemas` and this service's limits):

- ``GET /``: the web page (``static/index.html``, no external assets).
- ``POST /search``: multipart query images (field ``images``, repeatable), or JSON ``{"items":
  [...]}`` / ``{"embeddings": [[...]]}``; ``k`` and ``distance`` (form fields, or JSON keys).
- ``GET /items/{item}``, ``GET /items/{item}/image`` (PNG or JPEG).
- ``POST /items`` (multipart ``images``, optional ``labels``), ``DELETE /items/{item}``: changes,
  behind the API key when one is set; refused (403) by a read-only service.
- ``GET /health``, ``GET /stats``, ``GET /metrics`` (Prometheus text).

The routes are in :mod:`quantrieve.serve.routes` (one router per resource), the service and the
write authorisation are dependencies (:mod:`quantrieve.serve.dependencies`), the body limit and
request counts are ASGI middleware (:mod:`quantrieve.serve.middleware`).

Every refusal is a JSON ``{"detail": message}`` with its status: 400 bad image or body, 401
missing or wrong API key, 403 read-only, 404 no such item, 405 method not allowed (its
``Allow`` header lists every method of the path), 413 body over the size limit, 422 a value out
of range or of the wrong type, or a query parameter (no operation takes one); an unexpected
error is a 500 whose traceback goes to the log, and the service goes on.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match

from quantrieve.errors import QuantrieveError
from quantrieve.index.writer import commit_pause
from quantrieve.serve.middleware import (
    BodyLimit,
    BodyTooLargeError,
    RequestMetrics,
    too_large_message,
)
from quantrieve.serve.routes import info, items, search
from quantrieve.serve.schemas import Limits, add_body, search_body
from quantrieve.serve.service import RequestError, SearchService, ServeOptions

log = logging.getLogger("quantrieve.serve")

# Environment variables read by the app factory used for several worker processes, and by the
# tests' fault injection (seconds to wait between an add's segment and its manifest).
OPTIONS_ENV = "QUANTRIEVE_SERVE_OPTIONS"

TITLE = "quantrieve search service"
DESCRIPTION = (
    "Image retrieval with learned product quantization over one index directory: search by "
    'image, item or embedding; add and delete items. Every refusal is `{"detail": message}`; '
    "no operation takes query parameters (422)."
)


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
        service = SearchService(index_dir, options, before_commit=commit_pause())
    opts = service.options
    log.info("serving %s", service.describe())
    loaded = service

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        loaded.close()

    from quantrieve import __version__

    app = FastAPI(title=TITLE, version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.service = service
    app.include_router(info.page_router)
    app.include_router(search.router)
    app.include_router(items.router)
    app.include_router(info.router)
    _add_exception_handlers(app, opts.max_upload_bytes)
    app.openapi = _openapi(app, _limits(service))  # type: ignore[method-assign]
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


def _limits(service: SearchService) -> Limits:
    """What the service accepts, for its request schemas."""
    index, opts = service.live.index, service.options
    return Limits(
        max_k=opts.max_k,
        max_batch=opts.max_batch,
        dimension=index.num_books * int(index.codebooks.shape[2]),
        labels=None if index.labels is None else tuple(index.class_names),
        max_upload_bytes=opts.max_upload_bytes,
        max_pixels=opts.max_pixels,
    )


def _openapi(app: FastAPI, limits: Limits) -> Callable[[], dict[str, Any]]:
    """The app's OpenAPI document: the routes' own, with the request bodies the routes read
    themselves (multipart or JSON) and this service's limits in them."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema["paths"]["/search"]["post"]["requestBody"] = search_body(limits)
            schema["paths"]["/items"]["post"]["requestBody"] = add_body(limits)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app takes at this request's path (asked of the routes
    themselves, included routers too)."""
    routes = request.app.router.routes
    return [
        method
        for method in METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes
        )
    ]


def _add_exception_handlers(app: FastAPI, max_upload_bytes: int) -> None:
    """Every refusal as ``{"detail": message}``; a bug as a logged 500."""

    @app.exception_handler(BodyTooLargeError)
    async def too_large(_: Request, exc: BodyTooLargeError) -> JSONResponse:
        message = too_large_message(max_upload_bytes)
        return JSONResponse({"detail": message}, status_code=413, headers={"Connection": "close"})

    @app.exception_handler(RequestError)
    async def refused(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(QuantrieveError)
    async def user_error(_: Request, exc: QuantrieveError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"detail": f"{where}: {first.get('msg')}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # starlette names only the first matching route's methods
            headers["Allow"] = ", ".join(_allowed_methods(request))
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error in %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; see the service log"}, status_code=500)


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
