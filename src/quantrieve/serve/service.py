"""The search service's state: one index version in memory, searched concurrently, changed by
one writer at a time.

Concurrency model. The current version is an immutable :class:`~quantrieve.index.live.
LiveIndex` held in one attribute. A search reads that attribute once and works on that version
to the end (its rows, item numbers and search state), so it never waits for a change and never
sees half of one. Changes (adds, deletes) take a lock, so they run one at a time: each writes
its files and its new manifest durably (the index layer's :class:`~quantrieve.index.writer.
IndexWriter`, which also holds the index's file lock against other processes), builds the new
version with its search state, and only then swaps the attribute. Decoding and embedding an
upload happen before the lock is taken.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantrieve.data.images import MAX_UPLOAD_PIXELS, decode_image_bytes
from quantrieve.errors import QuantrieveError
from quantrieve.index.format import codebooks_sha256, format_version, image_fingerprints
from quantrieve.index.hits import Hit, make_hits
from quantrieve.index.live import LiveIndex, open_live
from quantrieve.index.pq_index import torch_installed
from quantrieve.index.segment_files import NewItems
from quantrieve.index.writer import IndexWriter
from quantrieve.pq import DISTANCES
from quantrieve.serve.metrics import Metrics, resident_memory_bytes
from quantrieve.serve.sources import ItemImages

log = logging.getLogger("quantrieve.serve")


@dataclass(frozen=True)
class ServeOptions:
    """How a service runs.

    Attributes:
        read_only: refuse adds and deletes (and take no write lock: several processes may serve
            one index).
        api_key: when set, adds and deletes need it (``X-API-Key`` or ``Authorization: Bearer``).
        cors_origins: origins allowed by CORS (none: no CORS headers at all).
        max_k: largest k of a search.
        max_batch: most query images, items or embeddings in one search, or images in one add.
        max_upload_bytes: largest request body.
        max_pixels: largest width x height of an uploaded image (decompression bombs).
        device: where queries are embedded (``auto``, ``cpu``, ``cuda``...).
        thumbnail_size: largest side of a served thumbnail of an image file.
        torch_threads: intra-op threads of torch in this process (None: leave as it is), or
            of onnxruntime with ``onnx``. Requests run concurrently in threads, so one thread
            each is the default: on a busy machine several OpenMP threads per small forward
            pass spin against each other (a single query took 400 ms at 2 threads on a loaded
            2-core machine, 1 ms at 1).
        onnx: embed queries with this encoder exported by ``quantrieve export-onnx``, run by
            onnxruntime, instead of the index's ``model.pt`` by torch: a read-only service that
            needs no torch (its searches are then numpy's, :meth:`PQIndex.search_numpy`).
    """

    read_only: bool = False
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_k: int = 100
    max_batch: int = 16
    max_upload_bytes: int = 16 * 2**20
    max_pixels: int = MAX_UPLOAD_PIXELS
    device: str = "auto"
    thumbnail_size: int = 160
    torch_threads: int | None = 1
    onnx: str | None = None


class RequestError(QuantrieveError):
    """A request the service refuses; ``status`` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    """One uploaded file: its client-side name (shown only) and bytes."""

    name: str
    data: bytes


def clean_name(name: str | None, fallback: str) -> str:
    """A client's file name for display only: its last path component, printable characters,
    at most 200 of them."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    printable = "".join(c for c in base if c.isprintable())[:200].strip()
    return printable or fallback


class SearchService:
    """The model and the current index version of one index directory, in memory.

    Startup verifies the index (checksums of the base files and of every segment, the codebook
    hash, and that ``model.pt`` is the index's own) and loads its newest complete version.

    Args:
        index_dir: the index directory.
        options: see :class:`ServeOptions`.
        before_commit: passed to the index writer (tests stop a process with it mid-add).

    Raises:
        QuantrieveError: the index does not load or verify, has no model, or (unless read-only)
            is locked by another writer or not writable.
    """

    def __init__(
        self,
        index_dir: str | Path,
        options: ServeOptions | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        self.path = Path(index_dir)
        self.options = options or ServeOptions()
        if not (self.path / "index.json").is_file():
            raise QuantrieveError(f"{self.path}: not an index directory (no index.json)")
        if self.options.onnx is not None and not self.options.read_only:
            raise QuantrieveError(
                "an ONNX encoder serves searches only (adds need the index's model.pt to encode "
                "images): add --read-only, or drop --onnx"
            )
        self.writer = None if self.options.read_only else IndexWriter(self.path, before_commit)
        self.retriever: Any = None
        try:
            self.live: LiveIndex = open_live(self.path)
            self.codebooks_sha256 = codebooks_sha256(self.live.index.codebooks)
            if self.options.onnx is not None:
                self._load_onnx(self.options.onnx)
            else:
                self._load_model()
        except BaseException:
            self.close()
            raise
        self._prepare(self.live)
        self._change = threading.Lock()
        self.metrics = Metrics()
        index = self.live.index
        self.images = ItemImages(
            dict(index.meta.get("source") or {}),
            self.image_size,
            self.channels,
            self.options.thumbnail_size,
            max_pixels=self.options.max_pixels,
        )

    def _load_model(self) -> None:
        """Queries embedded by the index's ``model.pt`` (torch)."""
        if not torch_installed():
            raise QuantrieveError(
                "torch is not installed, so the index's model.pt cannot embed queries; serve "
                "an exported encoder instead: quantrieve serve INDEX --read-only --onnx "
                "ENCODER.onnx (written by quantrieve export-onnx INDEX ENCODER.onnx where torch "
                "is installed)"
            )
        import torch

        from quantrieve.api.retriever import Retriever

        if self.options.torch_threads is not None:
            torch.set_num_threads(self.options.torch_threads)
        self.retriever = Retriever.load(self.path, self.options.device, need_index=True)
        if self.retriever.model is None:
            raise QuantrieveError(
                f"{self.path}: no model.pt, so query images cannot be embedded; encode the "
                "index with its model (quantrieve encode RUN --out INDEX)"
            )
        self.retriever.index = self.live.index
        self.image_size = self.retriever.model.image_size
        self.channels = self.retriever.model.channels
        retriever = self.retriever
        self.embed = lambda pixels: retriever.embed_for_index(pixels, self.live.index)
        self.encoder = "model.pt (torch)"

    def _load_onnx(self, path: str) -> None:
        """Queries embedded by an exported encoder (onnxruntime), checked against the index."""
        from quantrieve.models.onnx_runtime import OnnxEncoder

        encoder = OnnxEncoder(path, self.options.torch_threads)
        index = self.live.index
        if encoder.codebooks_sha256 not in (None, self.codebooks_sha256):
            raise QuantrieveError(
                f"{path} was exported from an index with other codebooks (sha256 "
                f"{encoder.codebooks_sha256[:16]}..., this index's {self.codebooks_sha256[:16]}"
                "...); export this index's encoder: quantrieve export-onnx INDEX OUT.onnx"
            )
        dim = index.num_books * index.codebooks.shape[2]
        if encoder.embedding_dim != dim:
            raise QuantrieveError(
                f"{path} embeds into {encoder.embedding_dim} values, this index's codes "
                f"take {dim}; export this index's encoder"
            )
        self.image_size, self.channels = encoder.image_size, encoder.channels
        if index.refine is not None and index.refine_source == "backbone":
            if encoder.backbone_dim != index.refine.shape[1]:
                raise QuantrieveError(
                    f"this index refines with backbone vectors, which {path} does not output; "
                    "export this index's encoder again: quantrieve export-onnx INDEX OUT.onnx"
                )
            self.embed = encoder.embed_with_backbone
        else:
            self.embed = lambda pixels: (encoder.embed(pixels), None)
        self.encoder = f"{path} (onnxruntime)"

    def _prepare(self, live: LiveIndex) -> None:
        """Build a new version's search state before it takes searches (torch's searcher,
        or numpy's without torch)."""
        if torch_installed():
            live.index.searcher().prepare()
        else:
            live.index.prepare_numpy()
        if self.retriever is not None:
            self.retriever.index = live.index

    def close(self) -> None:
        """Release the index's write lock (the process may end without it: the lock goes too)."""
        if getattr(self, "writer", None) is not None:
            self.writer.close()  # type: ignore[union-attr]
            self.writer = None

    def describe(self) -> str:
        """One line saying what is served (logged at startup)."""
        live, index = self.live, self.live.index
        writes = (
            "read-only"
            if self.options.read_only
            else ("adds/deletes need the API key" if self.options.api_key else "adds/deletes open")
        )
        return (
            f"{self.path}: {len(live)} items ({live.base_items} base rows, "
            f"{live.added_items} added, {len(live.deleted)} deleted), index version "
            f"{live.generation}, {index.bits} bits ({index.num_books} x {index.num_codewords} "
            f"codewords), distance {index.distance}, {self._refinement(index)}, codebooks sha256 "
            f"{self.codebooks_sha256[:16]}..., checksums verified; queries embedded by "
            f"{self.encoder}; {writes}"
        )

    @staticmethod
    def _refinement(index: Any) -> str:
        if index.refine is None:
            return "ADC alone"
        expanded = f", expanded by the first {index.refine_expand}" if index.refine_expand else ""
        return f"first {index.refine_depth} re-scored by {index.refine_source} vectors{expanded}"

    # ------------------------------------------------------------------ queries
    def check_k(self, k: int) -> int:
        if not 1 <= k <= self.options.max_k:
            raise RequestError(422, f"k must be between 1 and {self.options.max_k}, got {k}")
        return k

    def check_distance(self, distance: str | None) -> str | None:
        if distance is not None and distance not in DISTANCES:
            raise RequestError(
                422, f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}"
            )
        return distance

    def check_batch(self, count: int, what: str) -> None:
        if count < 1:
            raise RequestError(422, f"no {what} given")
        if count > self.options.max_batch:
            raise RequestError(
                422, f"{count} {what} in one request; at most {self.options.max_batch}"
            )

    def decode(self, uploads: Sequence[Upload]) -> np.ndarray:
        """The uploads as the model sees them, uint8 (n, H, W, C); a bad one is a 400 that
        names it."""
        pixels = []
        for upload in uploads:
            try:
                pixels.append(
                    decode_image_bytes(
                        upload.data,
                        self.image_size,
                        self.channels,
                        self.options.max_pixels,
                        upload.name,
                    )
                )
            except QuantrieveError as exc:
                raise RequestError(400, str(exc)) from None
        return np.stack(pixels)

    def item_pixels(self, live: LiveIndex, key: int) -> np.ndarray:
        row = self.row(live, key)
        if live.part[row] >= 0:
            return live.read_added(row)[0]
        try:
            return self.images.base_pixels(live.index.ids[row])
        except QuantrieveError as exc:
            raise RequestError(404, f"item {key}: {exc}") from None

    def row(self, live: LiveIndex, key: int) -> int:
        """The live row of item ``key`` in ``live``, or a 404."""
        row = live.row(key)
        if row is None:
            reason = "it was deleted" if key in live.deleted else "no such item"
            raise RequestError(404, f"item {key} is not in the index ({reason})")
        return row

    def search(
        self,
        *,
        uploads: Sequence[Upload] = (),
        items: Sequence[int] = (),
        embeddings: Sequence[Sequence[float]] = (),
        k: int = 10,
        distance: str | None = None,
        labels: Sequence[str] | None = None,
        id_prefix: str | None = None,
    ) -> dict[str, Any]:
        """Top-k items for query images, items of the index, or raw embeddings (one kind);
        only items with any of ``labels`` and an id starting with ``id_prefix`` when given
        (:meth:`~quantrieve.index.pq_index.PQIndex.filter_rows`; 422 for a label the index
        does not have).

        Returns:
            ``{"k", "distance", "index_version", "items", "milliseconds", "queries": [{"query",
            "hits": [Hit fields + "image_url"]}]}``.
        """
        start = time.perf_counter()
        self.check_k(k)
        self.check_distance(distance)
        live = self.live  # one version for the whole request
        kinds = [bool(uploads), bool(items), bool(embeddings)]
        if sum(kinds) != 1:
            raise RequestError(422, "give query images, or items, or embeddings (one of them)")
        try:
            rows = live.index.filter_rows(labels, id_prefix)
        except QuantrieveError as exc:
            raise RequestError(422, str(exc)) from None
        prints = None
        if uploads:
            self.check_batch(len(uploads), "query images")
            pixels = self.decode(uploads)
            f, vectors = self.embed(pixels)
            names = [u.name for u in uploads]
        elif items:
            self.check_batch(len(items), "query items")
            pixels = np.stack([self.item_pixels(live, key) for key in items])
            f, vectors = self.embed(pixels)
            names = [f"item {key}" for key in items]
        else:
            self.check_batch(len(embeddings), "query embeddings")
            f, vectors = self._embeddings(embeddings), None
            names = [f"embedding {i}" for i in range(len(f))]
        if (uploads or items) and live.index.content is not None:
            prints = image_fingerprints(pixels)  # a query's own copies rank first
        try:
            dists, found = live.index.search(
                f, k, distance, fingerprints=prints, rows=rows, refine_queries=vectors
            )
        except QuantrieveError as exc:  # embeddings given for an index that refines otherwise
            raise RequestError(422, str(exc)) from None
        hits = self._hits(live, dists.tolist(), found.tolist())
        seconds = time.perf_counter() - start
        self.metrics.search(len(names), seconds)
        return {
            "k": k,
            "distance": distance or live.index.distance,
            "index_version": live.generation,
            "items": len(live),
            "milliseconds": round(seconds * 1e3, 3),
            "queries": [
                {"query": name, "hits": [_hit_json(h) for h in row]}
                for name, row in zip(names, hits, strict=True)
            ],
        }

    def _embeddings(self, embeddings: Sequence[Sequence[float]]) -> np.ndarray:
        dim = self.live.index.num_books * self.live.index.codebooks.shape[2]
        if any(len(e) != dim for e in embeddings):
            sizes = sorted({len(e) for e in embeddings})
            raise RequestError(422, f"embeddings must have {dim} values each, got {sizes}")
        f = np.asarray(embeddings, dtype=np.float32)
        if not np.isfinite(f).all():
            raise RequestError(422, "embeddings must be finite numbers (no NaN or infinity)")
        return f

    def _hits(self, live: LiveIndex, dists: list[list[float]], rows: list[list[int]]) -> list:
        return make_hits(live.index, dists, rows, added=live.part >= 0)

    def item(self, key: int) -> dict[str, Any]:
        """Metadata of item ``key`` (404 when it is not in the index)."""
        live = self.live
        row = self.row(live, key)
        index = live.index
        out: dict[str, Any] = {
            "item": key,
            "id": index.ids[row],
            "labels": index.label_names(row),
            "added": bool(live.part[row] >= 0),
            "code": np.asarray(index.codes[row]).tolist(),
            "image_url": f"/items/{key}/image",
            "index_version": live.generation,
        }
        if out["added"]:
            out["name"] = live.read_added(row)[2]
        return out

    def image(self, key: int) -> tuple[bytes, str]:
        """The thumbnail of item ``key`` and its media type (404 when unavailable)."""
        live = self.live
        row = self.row(live, key)
        try:
            return self.images.thumbnail(live, row)
        except QuantrieveError as exc:
            raise RequestError(404, f"item {key}: {exc}") from None

    # ------------------------------------------------------------------ changes
    def _writer(self) -> IndexWriter:
        if self.writer is None:
            raise RequestError(403, "this service is read-only (started with --read-only)")
        return self.writer

    def _labels(self, labels: Sequence[str], count: int) -> np.ndarray | None:
        """Label rows for ``count`` added images from one comma-separated list per image (or
        one for all); None for an unlabelled index."""
        index = self.live.index
        if index.labels is None:
            if any(label.strip() for label in labels):
                raise RequestError(422, "this index has no labels; send images without labels")
            return None
        rows = np.zeros((count, index.labels.shape[1]), dtype=bool)
        if not labels:
            return rows
        if len(labels) not in (1, count):
            raise RequestError(
                422, f"{len(labels)} label lists for {count} images; give one per image, or one"
            )
        names = index.class_names
        for i in range(count):
            for name in (n.strip() for n in labels[min(i, len(labels) - 1)].split(",")):
                if not name:
                    continue
                if name not in names:
                    raise RequestError(
                        422, f"unknown label {name!r}; this index's labels: {', '.join(names)}"
                    )
                rows[i, names.index(name)] = True
        return rows

    def add(self, uploads: Sequence[Upload], labels: Sequence[str] = ()) -> dict[str, Any]:
        """Embed, encode and append images; durable on return. Returns their item numbers."""
        self._writer()
        self.check_batch(len(uploads), "images")
        pixels = self.decode(uploads)
        label_rows = self._labels(labels, len(uploads))
        refines = self.live.index.refine is not None
        fine = None
        if refines:
            codes, fine = self.retriever.encode_with_embeddings(
                pixels, refine_source=self.live.index.refine_source
            )
        else:
            codes = self.retriever.encode(pixels)
        with self._change:
            live = self.live
            items = NewItems(
                codes=codes,
                pixels=pixels,
                raw=[u.data for u in uploads],
                names=[u.name for u in uploads],
                labels=label_rows,
                content=None if live.index.content is None else image_fingerprints(pixels),
                refine=fine,
            )
            new = self._writer().append(live, items)
            self._prepare(new)
            self.live = new
        self.metrics.changed(added=len(uploads))
        keys = new.keys[new.num_rows - len(uploads) :].tolist()
        log.info("added items %s (index version %d)", keys, new.generation)
        return {
            "added": [
                {
                    "item": key,
                    "id": f"added:{key}",
                    "name": u.name,
                    "image_url": f"/items/{key}/image",
                }
                for key, u in zip(keys, uploads, strict=True)
            ],
            "index_version": new.generation,
            "items": len(new),
        }

    def delete(self, key: int) -> dict[str, Any]:
        """Tombstone item ``key`` (never returned again); durable on return."""
        self._writer()
        with self._change:
            live = self.live
            self.row(live, key)
            new = self._writer().delete(live, [key])
            self._prepare(new)
            self.live = new
        self.metrics.changed(deleted=1)
        log.info("deleted item %d (index version %d)", key, new.generation)
        return {"deleted": key, "index_version": new.generation, "items": len(new)}

    # ------------------------------------------------------------------ reports
    def stats(self) -> dict[str, Any]:
        """What /stats returns."""
        live, index = self.live, self.live.index
        snap = self.metrics.snapshot()
        quantiles = self.metrics.latency_quantiles()
        return {
            "index_dir": str(self.path),
            "items": len(live),
            "base_items": live.base_items,
            "added_items": live.added_items,
            "deleted_items": len(live.deleted),
            "segments": len(live.segments),
            "index_version": live.generation,
            "index_format_version": format_version(live.index.refine, live.index.refine_source),
            "codebooks_sha256": self.codebooks_sha256,
            "bits": index.bits,
            "num_books": index.num_books,
            "num_codewords": index.num_codewords,
            "distance": index.distance,
            "refine_depth": 0 if index.refine is None else index.refine_depth,
            "refine_source": None if index.refine is None else index.refine_source,
            "refine_expand": 0 if index.refine is None else index.refine_expand,
            "labels": list(index.class_names),
            "image_size": self.image_size,
            "channels": self.channels,
            "read_only": self.options.read_only,
            "writes_need_api_key": bool(self.options.api_key),
            "queries_served": snap["queries_served"],
            "search_requests": snap["search_requests"],
            "latency_ms": {f"p{round(q * 100)}": round(v * 1e3, 3) for q, v in quantiles.items()},
            "uptime_seconds": round(float(snap["uptime_seconds"]), 1),
            "resident_memory_bytes": resident_memory_bytes(),
            "limits": {
                "max_k": self.options.max_k,
                "max_batch": self.options.max_batch,
                "max_upload_bytes": self.options.max_upload_bytes,
                "max_pixels": self.options.max_pixels,
            },
        }


def _hit_json(hit: Hit) -> dict[str, Any]:
    """A hit over HTTP: the item number, never the row (a position inside one version)."""
    fields = {k: v for k, v in hit.__dict__.items() if k != "row"}
    return {**fields, "image_url": f"/items/{hit.item}/image"}
