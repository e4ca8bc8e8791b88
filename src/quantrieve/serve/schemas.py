"""The search service's HTTP contract: pydantic models of every request and answer.

The answers are what :class:`~quantrieve.serve.service.SearchService` returns, field for field
and in the same order (the routes validate the service's dicts into these models), so
``/openapi.json`` describes the JSON the service really sends. A hit's ``row`` is deliberately
absent: rows are positions inside one index version, items are the stable numbers.

The limits of one service (largest k and batch, the embedding dimension, the class names of a
labelled index, the body size) are its options and its index, so they are written into the
request bodies' schemas when the app is built (:func:`search_body`, :func:`add_body`), from the
same values the service checks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat

from quantrieve.pq import DISTANCES

# Item numbers are non-negative and below 2**62 (they index int64 arrays with room to spare).
ITEM_LIMIT = 2**62
# Largest magnitude of a raw embedding value: squared distances stay finite in float32 for any
# dimension below 10**20 (a larger value is refused with 422, never answered with infinities).
MAX_EMBEDDING_VALUE = 1e9
# Longest id prefix a search may filter by.
MAX_ID_PREFIX = 1024
# The image files a query or an add may upload (decoded by Pillow; others are refused with 400).
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/webp", "image/gif")

# A number in JSON text (what an integer form field must look like, too).
JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,3})?")


def json_integer(value: object) -> int:
    """An integer as JSON Schema means it: a number with no fractional part (``3`` or ``3.0``),
    never ``true``/``false`` or a string (pydantic's lax mode takes those for integers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Input should be a valid integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("Input should be a valid integer, got a number with a fraction")
        return int(value)
    return value


def text_integer(text: str) -> int | None:
    """The integer a form field's text spells as a JSON number (``"5"``, ``"5.0"``, ``"5e0"``),
    or None when it spells none."""
    if not JSON_NUMBER.fullmatch(text):
        return None
    number = Decimal(text)
    return int(number) if number == number.to_integral_value() else None


Distance = Literal["l2", "sqeuclidean"]
Integer = Annotated[int, BeforeValidator(json_integer)]
ItemNumber = Annotated[Integer, Field(ge=0, lt=ITEM_LIMIT)]


# ---------------------------------------------------------------------------------- requests
class SearchJSON(BaseModel):
    """A search by items of the index or by raw embeddings (JSON body of ``POST /search``).

    Strict types: ``false`` is not item 0 and ``"3"`` is not a k (``3.0`` is 3, as in JSON
    Schema), and an embedding's values are numbers, not strings. Give exactly one
    of ``items`` and ``embeddings`` (a field that is present must be a non-empty list).
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    items: Annotated[list[ItemNumber], Field(min_length=1)] = None  # type: ignore[assignment]
    embeddings: Annotated[list[list[StrictFloat]], Field(min_length=1)] = None  # type: ignore[assignment]
    k: Integer = 10
    distance: Distance | None = None
    labels: Annotated[list[str], Field(min_length=1)] | None = None
    id_prefix: Annotated[str, Field(max_length=MAX_ID_PREFIX)] | None = None


def split_labels(text: str) -> list[str] | None:
    """The class names of a comma-separated ``labels`` form field (None when blank)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    return names or None


# ----------------------------------------------------------------------------------- answers
class ErrorResponse(BaseModel):
    """Every refusal: a message saying what was wrong."""

    detail: str = Field(examples=["k must be between 1 and 100, got 0"])


class HitOut(BaseModel):
    """One result of one query."""

    rank: int = Field(description="From 1.")
    item: int = Field(description="The item's stable number (GET /items/{item}).")
    id: str = Field(description="A file name, `part:index`, or `added:<item>`.")
    distance: float = Field(description="Ascending (refined for a refining index's first hits).")
    labels: list[str] = Field(description="Class names (empty when the index is unlabelled).")
    added: bool = Field(description="Added by the service after the index was encoded.")
    image_url: str = Field(description="The item's image.")


class QueryResult(BaseModel):
    """The hits of one query."""

    query: str = Field(description="The query's file name, `item N` or `embedding N`.")
    hits: list[HitOut]


class SearchResponse(BaseModel):
    """Answer of ``POST /search``: one entry of ``queries`` per query, in order."""

    k: int
    distance: str = Field(description="The distance used (the index's own unless asked).")
    index_version: int = Field(description="The index version searched.")
    items: int = Field(description="Items in that version.")
    milliseconds: float
    queries: list[QueryResult]


class ItemResponse(BaseModel):
    """Answer of ``GET /items/{item}``."""

    item: int
    id: str
    labels: list[str]
    added: bool
    code: list[int] = Field(description="The item's PQ code (one codeword per codebook).")
    image_url: str
    index_version: int
    name: str | None = Field(
        default=None, description="The uploaded file's name (only for added items)."
    )


class AddedItem(BaseModel):
    """One added image."""

    item: int
    id: str
    name: str
    image_url: str


class AddResponse(BaseModel):
    """Answer of ``POST /items``, sent once the change is on disk."""

    added: list[AddedItem]
    index_version: int
    items: int


class DeleteResponse(BaseModel):
    """Answer of ``DELETE /items/{item}``, sent once the tombstone is on disk."""

    deleted: int
    index_version: int
    items: int


class HealthResponse(BaseModel):
    """Answer of ``GET /health``."""

    status: Literal["ok"]
    items: int
    index_version: int


class LimitsOut(BaseModel):
    """The service's request limits."""

    max_k: int
    max_batch: int
    max_upload_bytes: int
    max_pixels: int


class StatsResponse(BaseModel):
    """Answer of ``GET /stats``."""

    index_dir: str
    items: int
    base_items: int
    added_items: int
    deleted_items: int
    segments: int
    index_version: int
    index_format_version: int
    codebooks_sha256: str
    bits: int
    num_books: int
    num_codewords: int
    distance: str
    refine_depth: int = Field(
        description="Results re-scored with the index's finer vectors (0: ADC alone)."
    )
    refine_source: str | None = Field(
        description="What re-scores them: 'backbone' or 'embedding' (null: no refinement)."
    )
    refine_expand: int = Field(
        default=0,
        description="Query expansion of the refined head: re-scored once more against the "
        "mean of the query and its first n refined results (0: off).",
    )
    labels: list[str]
    image_size: int
    channels: int
    read_only: bool
    writes_need_api_key: bool
    queries_served: int
    search_requests: int
    latency_ms: dict[str, float] = Field(
        description="Search latency quantiles (p50, p90, p99; empty before the first search)."
    )
    uptime_seconds: float
    resident_memory_bytes: int
    limits: LimitsOut


# ------------------------------------------------------------------ request bodies (OpenAPI)
@dataclass(frozen=True)
class Limits:
    """What one service accepts, as its request schemas state it.

    Attributes:
        max_k: largest k.
        max_batch: most query images, items or embeddings in a search, or images in an add.
        dimension: values in an embedding.
        labels: the class names of a labelled index (None: unlabelled).
        max_upload_bytes: largest request body.
        max_pixels: largest width x height of an uploaded image.
    """

    max_k: int
    max_batch: int
    dimension: int
    labels: tuple[str, ...] | None
    max_upload_bytes: int
    max_pixels: int


def _images(limits: Limits) -> dict[str, Any]:
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": limits.max_batch,
        "items": {"type": "string", "format": "binary"},
        "description": f"Image files ({', '.join(IMAGE_TYPES)}), at most "
        f"{limits.max_batch} per request, each at most {limits.max_pixels:,} pixels, the "
        f"whole body at most {limits.max_upload_bytes:,} bytes (413 beyond). A file that is "
        "empty, cut short, not one of these types, or in an unsupported pixel mode is refused "
        "with 400 naming it.",
    }


def _encoding() -> dict[str, Any]:
    return {"images": {"contentType": ", ".join(IMAGE_TYPES)}}


def search_body(limits: Limits) -> dict[str, Any]:
    """The request body of ``POST /search`` (multipart images, or JSON items/embeddings)."""
    k = {"type": "integer", "minimum": 1, "maximum": limits.max_k, "default": 10}
    distance = {"type": "string", "enum": list(DISTANCES)}
    id_prefix = {
        "type": "string",
        "maxLength": MAX_ID_PREFIX,
        "description": "Only items whose id starts with this (a sub-folder: '2024/').",
    }
    value = {
        "type": "number",
        "minimum": -MAX_EMBEDDING_VALUE,
        "maximum": MAX_EMBEDDING_VALUE,
    }
    json_schema = {
        "type": "object",
        "title": "SearchJSON",
        "additionalProperties": False,
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_batch,
                "items": {"type": "integer", "minimum": 0, "maximum": ITEM_LIMIT - 1},
                "description": "Items of the index, searched by their images (404 for an item "
                "not in the index).",
            },
            "embeddings": {
                "type": "array",
                "minItems": 1,
                "maxItems": limits.max_batch,
                "items": {
                    "type": "array",
                    "minItems": limits.dimension,
                    "maxItems": limits.dimension,
                    "items": value,
                },
                "description": f"Vectors of the index's dimension ({limits.dimension}).",
            },
            "k": k,
            "distance": {"anyOf": [distance, {"type": "null"}], "default": None},
            **_label_filter(limits),
            "id_prefix": {"anyOf": [id_prefix, {"type": "null"}], "default": None},
        },
        "oneOf": [{"required": ["items"]}, {"required": ["embeddings"]}],
    }
    form_labels = {
        "type": "string",
        "pattern": labels_pattern(limits.labels),
        "description": "Only items with any of these comma-separated class names (blank: all).",
    }
    form = {
        "type": "object",
        "required": ["images"],
        "properties": {
            "images": _images(limits),
            "k": k,
            "distance": distance,
            "labels": form_labels,
            "id_prefix": id_prefix,
        },
    }
    return {
        "required": True,
        "description": "Query images as multipart/form-data, or items or embeddings as JSON "
        "(exactly one of them). No query parameters: k, distance and the filters (labels, "
        "id_prefix) go in the body. A filtered search is exact and may return fewer than k "
        "hits.",
        "content": {
            "multipart/form-data": {"schema": form, "encoding": _encoding()},
            "application/json": {"schema": json_schema},
        },
    }


def _label_filter(limits: Limits) -> dict[str, Any]:
    """The JSON ``labels`` filter of a search: absent for an unlabelled index."""
    if limits.labels is None:
        return {}
    names = {"type": "array", "minItems": 1, "items": {"enum": list(limits.labels)}}
    return {
        "labels": {
            "anyOf": [names, {"type": "null"}],
            "default": None,
            "description": "Only items with any of these class names.",
        }
    }


def labels_pattern(labels: Sequence[str] | None) -> str:
    """A regular expression of one ``labels`` field: comma-separated class names of the index
    (blank for an unlabelled index)."""
    if labels is None:
        return r"^\s*$"
    name = "(?:" + "|".join(re.escape(label) for label in labels) + ")"
    item = rf"\s*(?:{name}\s*)?"
    return rf"^{item}(?:,{item})*$"


def add_body(limits: Limits) -> dict[str, Any]:
    """The request body of ``POST /items`` (multipart images and optional labels)."""
    labels = {
        "type": "array",
        "maxItems": 1,
        "items": {"type": "string", "pattern": labels_pattern(limits.labels)},
        "description": "Comma-separated class names for every image"
        + (
            f" (this index's labels: {', '.join(limits.labels)})"
            if limits.labels is not None
            else " (this index is unlabelled: none)"
        )
        + ". The field may also be repeated, one list per image (422 unless the count is one "
        "or the number of images).",
    }
    form = {
        "type": "object",
        "required": ["images"],
        "properties": {"images": _images(limits), "labels": labels},
    }
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": form, "encoding": _encoding()}},
    }
