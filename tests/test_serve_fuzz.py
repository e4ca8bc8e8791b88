"""The search service against its own OpenAPI document: schemathesis generates requests from
``/openapi.json`` (valid ones and deliberately invalid ones, every operation, fixed seed, a
bounded number of examples) and sends them to the in-process ASGI app (no socket), with the API
key configured so that adds and deletes are exercised too.

Checks, each run on every response:

- ``not_a_server_error``: no 5xx, whatever is sent.
- ``status_code_conformance``: the status is one the document lists for the operation.
- ``content_type_conformance``: the Content-Type is one the document lists for that status.
- ``response_schema_conformance``: the body validates against the documented response schema.
- ``response_headers_conformance``: documented response headers are present and valid.
- ``positive_data_acceptance``: a request valid per the document is not refused as malformed
  (2xx, or 401/403/404 which depend on credentials and on which items exist).
- ``negative_data_rejection``: a request invalid per the document is refused with a 4xx.
- ``missing_required_header``, ``ignored_auth``: a missing or wrong API key is refused (401).
- ``unsupported_method``, ``allow_header_conformance``: a method the document does not list
  gets 405, whose ``Allow`` names exactly the methods it does list.
- ``use_after_free``, ``ensure_resource_availability``: a deleted item stays gone; a created
  one is there.

Images in generated multipart bodies come from a strategy for the image types the document
lists (``encoding.images.contentType``): small real PNG/JPEG/BMP/GIF/WEBP files.
"""

from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from quantrieve.serve import ServeOptions, create_app
from quantrieve.serve.schemas import IMAGE_TYPES

KEY = "fuzz-key-5678"
OPTIONS = ServeOptions(api_key=KEY, max_k=20, max_batch=4, max_upload_bytes=300_000)
# The budget: examples per operation and generation phase. 8 operations; the whole test stays
# well under 30 s on a loaded 2-core machine.
MAX_EXAMPLES = 12
SEED = 20240601
FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/bmp": "BMP", "image/gif": "GIF"}
FORMATS["image/webp"] = "WEBP"
assert set(FORMATS) == set(IMAGE_TYPES)


def _register_image_files() -> None:
    """Tell schemathesis how to draw each image type: 1 to max_batch small real files.

    schemathesis puts one draw of a part's media-type strategy in place of the whole ``images``
    array, and sends a lone value of an array property as a plain field without a file name
    (which servers, starlette included, read as text). So the strategy draws the array: 1 to
    max_batch image files of the type, each sent as a file part of that content type.
    (Imported here, not at module level: the fast test subset never pays for schemathesis.)
    """
    import schemathesis
    from hypothesis import strategies as st

    def image(kind: str) -> Any:
        @st.composite
        def draw(draw_from: st.DrawFn) -> bytes:
            width = draw_from(st.integers(1, 24))
            height = draw_from(st.integers(1, 24))
            mode = draw_from(st.sampled_from(["L", "RGB"]))
            seed = draw_from(st.integers(0, 2**16))
            shape = (height, width) if mode == "L" else (height, width, 3)
            pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
            buffer = io.BytesIO()
            Image.fromarray(pixels, mode).save(buffer, format=FORMATS[kind])
            return buffer.getvalue()

        return draw()

    for kind in IMAGE_TYPES:
        schemathesis.openapi.media_type(
            kind, st.lists(image(kind), min_size=1, max_size=OPTIONS.max_batch)
        )


def _failures(recorder: Any) -> list[str]:
    """The failed checks of one scenario, one line each (operation, check, status, message)."""
    from schemathesis.engine import Status

    lines = []
    for case_id, checks in recorder.checks.items():
        for check in checks:
            if check.status != Status.SUCCESS and check.failure_info is not None:
                interaction = recorder.interactions.get(case_id)
                response = interaction.response if interaction else None
                status = response.status_code if response else "-"
                answer = response.content[:200] if response and response.content else b""
                case = recorder.cases[case_id].value
                sent = f"query={case.query} body={str(case.body)[:200]}"
                failure = check.failure_info.failure
                lines.append(
                    f"{recorder.label}: {check.name} ({status} {answer!r}): {failure.title}; "
                    f"sent {sent}"
                )
    return lines


@pytest.mark.slow
def test_the_service_keeps_its_openapi_contract(tiny_index: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import schemathesis
        from schemathesis.engine import events

    _register_image_files()
    index_dir = Path(shutil.copytree(tiny_index, tmp_path / "index"))
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"X-API-Key": KEY},
            "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "deterministic": True},
            "phases": {"stateful": {"enabled": False}},
            "suppress-health-check": ["all"],
        }
    )
    app = create_app(index_dir, OPTIONS)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    requests = 0
    failures: list[str] = []
    errors: list[str] = []
    operations = set()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            requests += len(event.recorder.interactions)
            operations.add(event.recorder.label)
            failures += _failures(event.recorder)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            errors.append(repr(getattr(event, "value", None) or getattr(event, "exception", None)))
    print(f"{requests} requests over {len(operations)} operations")
    assert not errors, errors
    assert not failures, "\n".join(sorted(set(failures)))
    assert len(operations) == 8 and requests > 8 * MAX_EXAMPLES
