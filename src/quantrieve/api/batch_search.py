"""Search many query images for a pipeline: a folder or a list of files, streamed in chunks.

:func:`search_files` decodes, embeds and searches ``chunk`` queries at a time and yields one
:class:`QueryResult` per query, in order, so memory stays bounded by the chunk whatever the
number of queries (a folder's file list aside). An unreadable query is yielded with its error
instead of stopping the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from quantrieve.api.retriever import Retriever
from quantrieve.data import DataError, ImageSet
from quantrieve.data.cache import decode_all
from quantrieve.data.folder import list_image_files
from quantrieve.errors import QuantrieveError
from quantrieve.index.hits import Hit

#: Query images decoded and searched at a time.
CHUNK = 256


@dataclass(frozen=True)
class QueryResult:
    """The results of one query file: its hits, or why it could not be searched."""

    query: str
    hits: list[Hit]
    error: str | None = None


def query_files(source: str | Path) -> Iterator[Path]:
    """The query images of ``source``: every image file under a folder (in id order), or the
    paths listed in a text file, one per line (relative paths are taken from the list file's
    folder; blank lines and lines starting with # are skipped), read lazily."""
    source = Path(source)
    if source.is_dir():
        yield from list_image_files(source)
        return
    if not source.is_file():
        raise DataError(f"{source}: no such folder or list file")
    with source.open(encoding="utf-8") as lines:
        for line in lines:
            text = line.strip()
            if text and not text.startswith("#"):
                path = Path(text)
                yield path if path.is_absolute() else source.parent / path


def search_files(
    retriever: Retriever,
    paths: Iterable[Path],
    k: int = 10,
    distance: str | None = None,
    refine_depth: int | None = None,
    chunk: int = CHUNK,
    workers: int | None = None,
    labels: Sequence[str] | None = None,
    id_prefix: str | None = None,
    refine_expand: int | None = None,
) -> Iterator[QueryResult]:
    """Search every image of ``paths`` (see the module docstring), ``chunk`` at a time;
    ``labels`` and ``id_prefix`` filter the hits, and ``refine_depth`` / ``refine_expand``
    override the index's refinement, as in :meth:`Retriever.search`."""
    model = retriever.model
    if model is None:
        raise QuantrieveError("the index holds no model.pt, so images cannot be embedded")
    if chunk < 1:
        raise QuantrieveError(f"chunk must be >= 1, got {chunk}")
    if retriever.index is not None:
        retriever.index.filter_rows(labels, id_prefix)  # a bad filter fails before any query
    options = _Options(k, distance, refine_depth, workers, labels, id_prefix, refine_expand)
    batch: list[Path] = []
    for path in paths:
        batch.append(path)
        if len(batch) == chunk:
            yield from _search_chunk(retriever, batch, options)
            batch = []
    if batch:
        yield from _search_chunk(retriever, batch, options)


@dataclass(frozen=True)
class _Options:
    k: int
    distance: str | None
    refine_depth: int | None
    workers: int | None
    labels: Sequence[str] | None
    id_prefix: str | None
    refine_expand: int | None


def _search_chunk(
    retriever: Retriever, paths: list[Path], options: _Options
) -> Iterator[QueryResult]:
    model = retriever.model
    assert model is not None
    existing = [p for p in paths if p.is_file()]
    decoded = decode_all(existing, model.image_size, None, model.channels, options.workers)
    errors = {str(b.path): f"unreadable image ({b.reason})" for b in decoded.bad}
    errors |= {str(p): "file not found" for p in paths if not p.is_file()}
    good = [str(existing[i]) for i in decoded.kept]
    hits: dict[str, list[Hit]] = {}
    if good:
        queries = ImageSet(decoded.images, None, good)
        result = retriever.search(
            queries,
            options.k,
            options.distance,
            refine_depth=options.refine_depth,
            labels=options.labels,
            id_prefix=options.id_prefix,
            refine_expand=options.refine_expand,
        )
        hits = dict(zip(good, result.hits, strict=True))
    for path in paths:
        name = str(path)
        yield QueryResult(name, hits.get(name, []), errors.get(name))
