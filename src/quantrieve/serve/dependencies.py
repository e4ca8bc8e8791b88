"""FastAPI dependencies of the search service: the service object, the write authorisation,
the refusal of query parameters, and the reading of multipart bodies.

The service lives in ``app.state.service`` (one per app, made by
:func:`~quantrieve.serve.app.create_app`); routes receive it through :func:`get_service`, so a
test may override that dependency. Changes need :func:`require_writes`: a read-only service
refuses them (403), and a service with an API key wants it in ``X-API-Key`` or as
``Authorization: Bearer`` (401 when missing or wrong), compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import UploadFile

from quantrieve.serve.middleware import BodyTooLargeError
from quantrieve.serve.schemas import text_integer
from quantrieve.serve.service import RequestError, SearchService, Upload, clean_name

API_KEY_HEADER = "X-API-Key"
READ_ONLY_MESSAGE = "this service is read-only (started with --read-only)"
NO_KEY_MESSAGE = f"this service needs its API key for changes (header {API_KEY_HEADER})"

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    scheme_name="APIKey",
    description="The service's API key (`quantrieve serve --api-key`), needed for changes "
    "when the service has one.",
    auto_error=False,
)
bearer = HTTPBearer(
    scheme_name="Bearer",
    description="The same API key as a bearer token (`Authorization: Bearer KEY`).",
    auto_error=False,
)


def get_service(request: Request) -> SearchService:
    """The app's service."""
    return request.app.state.service  # type: ignore[no-any-return]


Service = Annotated[SearchService, Depends(get_service)]


def require_writes(
    service: Service,
    key: Annotated[str | None, Security(api_key_header)],
    token: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> None:
    """Let a change through, or refuse it: 403 read-only, 401 API key missing or wrong."""
    if service.options.read_only:
        raise RequestError(403, READ_ONLY_MESSAGE)
    expected = service.options.api_key
    if not expected:
        return
    given = key if key is not None else (token.credentials.strip() if token else None)
    if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
        raise RequestError(401, NO_KEY_MESSAGE)


def no_query_parameters(request: Request) -> None:
    """Refuse a query string (422): no operation takes one, and a ``?k=5`` meant for a search
    would otherwise be ignored without a word."""
    names = sorted(set(request.query_params.keys()))
    if names or request.url.query:
        listed = ", ".join(repr(n) for n in names) or "(empty)"
        raise RequestError(
            422,
            f"unexpected query parameters {listed}; this endpoint takes none (k and "
            "distance of a search go in its body)",
        )


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_form(
    request: Request, service: SearchService
) -> tuple[list[Upload], dict[str, list[str]]]:
    """Uploaded files (field ``images``) and text fields of a multipart body (400 when it is
    malformed, 422 for a file in another field)."""
    most = service.options.max_batch
    try:
        form = await request.form(max_files=most + 1, max_fields=most + 16)
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
                uploads.append(Upload(clean_name(value.filename, f"image {len(uploads)}"), data))
            else:
                fields.setdefault(name, []).append(value)
    finally:
        await form.close()
    return uploads, fields


def form_int(fields: dict[str, list[str]], name: str, default: int) -> int:
    """The last value of text field ``name`` as an integer (a JSON number with no fraction; 422
    otherwise), or ``default`` when absent."""
    values = fields.get(name)
    if not values:
        return default
    value = text_integer(values[-1][:100])
    if value is None:
        raise RequestError(422, f"{name} must be an integer, got {values[-1][:100]!r}")
    return value


def form_choice(fields: dict[str, list[str]], name: str) -> str | None:
    """The last value of text field ``name``, or None when absent (an empty value is kept, for
    the service to refuse)."""
    values = fields.get(name)
    return values[-1] if values else None
