"""One object for the whole pipeline: train -> embed -> index -> search -> evaluate, in memory.

A :class:`Retriever` holds a run config, a trained :class:`RetrievalModel` and (once built or
loaded) a :class:`PQIndex`. The command line, the demo, the benchmark and a notebook all go
through it, so each step exists once::

    import quantrieve as qr

    parts = qr.read_dataset("fashion-mnist", "/usr/share/datasets/fashion-mnist")
    retriever = qr.Retriever.from_preset("fashion-mnist-demo", bits=32)
    retriever.fit(parts["train"])                 # unsupervised; labels only pick the epoch
    retriever.build_index(parts["train"])
    hits = retriever.search(parts["test"].images[:5], k=10)
    print(retriever.evaluate(parts["test"]).map_at_k)
    retriever.save("runs/my-index")               # an index directory, model included

Nothing here prints; long steps report through ``progress(done, total)``
(:mod:`quantrieve.runtime.progress`).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from quantrieve.config import (
    RunConfig,
    Settings,
    config_from_dict,
    load_config,
    method_settings,
    settings_from_text,
)
from quantrieve.data import DataError, ImageSet
from quantrieve.errors import QuantrieveError, QuantrieveWarning
from quantrieve.evaluate import RetrievalResult, evaluate_codes
from quantrieve.evaluate.code_usage import check_code_usage
from quantrieve.index.directory import check_index_output
from quantrieve.index.format import IndexFormatError, image_fingerprints
from quantrieve.index.hits import Hit, make_hits
from quantrieve.index.model_check import verify_index_model
from quantrieve.index.pq_index import PQIndex
from quantrieve.models.retrieval import RetrievalModel, embed_images, embed_images_with_backbone
from quantrieve.pq import DEFAULT_REFINE_DEPTH
from quantrieve.pq.settings import DEFAULT_REFINE_EXPAND, DEFAULT_REFINE_SOURCE, REFINE_SOURCES
from quantrieve.runtime.device import resolve_device
from quantrieve.runtime.progress import Progress, report
from quantrieve.runtime.run_info import git_commit, package_versions
from quantrieve.train.trainer import EpochCallback, Trainer

Images = ImageSet | np.ndarray


#: One search result (:class:`quantrieve.index.hits.Hit`): rank, stable item number, row, id,
#: distance, label names; the same type the search service answers with.
SearchHit = Hit


@dataclass
class SearchResult:
    """Top-k results of a batch of queries.

    Attributes:
        distances: float32 (Q, k), ascending per row (ties by index row).
        indices: int64 (Q, k) rows of the index (positions in this version; a hit's ``item``
            is its stable number).
        hits: per query, the k :class:`SearchHit` with item numbers, ids and label names.
    """

    distances: np.ndarray
    indices: np.ndarray
    hits: list[list[SearchHit]]


def _as_images(images: Images) -> np.ndarray:
    """uint8 (N, H, W, C) from an ImageSet, a batch, or one image (H, W, C)."""
    array = images.images if isinstance(images, ImageSet) else images
    if isinstance(array, np.ndarray) and array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.dtype != np.uint8:
        raise DataError(
            f"images must be uint8 (N, H, W, C) or one (H, W, C) image, got {array.dtype} "
            f"{tuple(array.shape)}"
        )
    return array


def _as_image_set(images: Images) -> ImageSet:
    if isinstance(images, ImageSet):
        return images
    array = _as_images(images)
    return ImageSet(array, None, [str(i) for i in range(len(array))])


def align_labels(
    query_labels: np.ndarray, query_names: Sequence[str], index: PQIndex
) -> np.ndarray:
    """Query labels with their columns in the index's class order, matched by class name.

    Two folders with the same number of classes but other names would otherwise be scored
    column by column, silently wrong. Raises when the names differ (listing them) or when one
    side has no names and the column counts differ.
    """
    if index.labels is None:
        raise IndexFormatError("the index has no labels, so retrieval cannot be scored")
    columns = index.labels.shape[1]
    query_labels = np.asarray(query_labels, dtype=bool)
    if list(query_names) == list(index.class_names):
        return query_labels
    if not query_names or not index.class_names:
        if query_labels.shape[1] != columns:
            raise IndexFormatError(
                f"queries have {query_labels.shape[1]} label columns, the index {columns}: "
                "they come from different label sets"
            )
        return query_labels
    unknown = [n for n in query_names if n not in index.class_names]
    if unknown:
        raise DataError(
            "the queries' classes are not the index's: "
            f"{', '.join(unknown[:8])}{' ...' if len(unknown) > 8 else ''} are not among the "
            f"index's {', '.join(index.class_names[:8])}"
            f"{' ...' if len(index.class_names) > 8 else ''}; name the class folders alike"
        )
    aligned = np.zeros((len(query_labels), columns), dtype=bool)
    for j, name in enumerate(query_names):
        aligned[:, index.class_names.index(name)] = query_labels[:, j]
    return aligned


class Retriever:
    """A trained encoder and its PQ index, held in memory.

    Args:
        config: The run config (a preset resolved by :func:`~quantrieve.config.load_config`);
            defaults to the built-in defaults. Ignored once a model is loaded, except for its
            ``eval`` section (K, cut-offs, distance).
        model: A trained model (from :meth:`load` or :meth:`fit`).
        index: A built or loaded index.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` for embedding (training uses
            ``config.train.device``).
    """

    def __init__(
        self,
        config: RunConfig | None = None,
        model: RetrievalModel | None = None,
        index: PQIndex | None = None,
        device: str = "auto",
    ) -> None:
        self.config = (config or RunConfig()).validate()
        self.model = model
        self.index = index
        self.device = resolve_device(device)
        self.run_dir: Path | None = None
        self.trainer: Trainer | None = None

    @property
    def amp(self) -> bool:
        """Whether images are embedded under autocast: as the model was trained and validated
        (``train.amp``), so that encoding and search see the numbers validation saw, and a run
        trained in float32 is not slowed by bfloat16 emulation on CPUs without it."""
        return self.config.train.amp

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_preset(
        cls,
        preset: str | None = None,
        *,
        bits: int | None = None,
        method: str | None = None,
        epochs: int | None = None,
        config_file: str | Path | None = None,
        overrides: Sequence[str] | Settings = (),
        device: str = "auto",
    ) -> Retriever:
        """An untrained retriever from a preset (see ``quantrieve presets``) or config file.

        Args:
            bits: code length; sets ``model.num_books`` so that bits = M * log2(K).
            method: a registered method (``hqc``, ``spq``, ``hqc-ref``, ``hqc-no-cc``, ...:
                :data:`quantrieve.config.METHODS`).
            epochs: training epochs (``train.epochs``).
            overrides: typed settings by ``section.key`` (``{"train.epochs": 3}``), or
                ``section.key=value`` strings as ``--set`` on the command line; they win over
                ``method`` and ``epochs``, ``bits`` wins over them.
        """
        settings: dict[str, Any] = method_settings(method) if method is not None else {}
        if epochs is not None:
            settings["train.epochs"] = epochs
        settings.update(
            overrides if isinstance(overrides, Mapping) else settings_from_text(overrides)
        )
        if bits is not None:
            settings["model.bits"] = bits
        return cls(load_config(preset, config_file, settings), device=device)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", need_index: bool = False) -> Retriever:
        """Load an index directory (index + model), a run directory, or a ``model.pt``.

        An index directory's model must carry the index's codebooks: a ``model.pt`` copied in
        from another run is refused instead of embedding queries into the wrong space.

        Args:
            need_index: refuse anything but an index directory.
        """
        path = Path(path)
        index: PQIndex | None = None
        config = RunConfig()
        if not path.exists():
            raise QuantrieveError(f"{path}: not found")
        if need_index or (path.is_dir() and (path / "index.json").is_file()):
            index = PQIndex.load(path)
            model_file = path / "model.pt"
            if model_file.is_file():
                verify_index_model(path)  # its hash and codebooks are the index's
            saved = index.meta.get("training_config")
            if isinstance(saved, dict):
                config = _config_or_default(saved)
        else:  # a run directory, or a model file in one
            model_file = path / "model.pt" if path.is_dir() else path
            path = model_file.parent
            if (path / "config.json").is_file():
                config = _config_or_default(json.loads((path / "config.json").read_text()))
        model = None
        if model_file.is_file():
            model = RetrievalModel.load(model_file)
        elif index is None:
            raise QuantrieveError(f"{path}: no model.pt here (train first)")
        retriever = cls(config, model=model, index=index, device=device)
        retriever.run_dir = path if (path / "run.json").is_file() else None
        return retriever

    # ------------------------------------------------------------------ training
    def fit(
        self,
        images: Images,
        run_dir: str | Path | None = None,
        resume: bool = False,
        progress: Progress | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> Retriever:
        """Train the encoder from scratch on ``images``, without labels.

        Labels, when the image set has them, only choose the best epoch on validation queries
        carved out of ``images`` (``data.val_queries``). With ``run_dir``, checkpoints, logs,
        the validation split and ``model.pt`` are written there and ``resume`` continues an
        interrupted run exactly; without it nothing is written.

        Returns:
            ``self``, holding the best model (by validation mAP, else the last epoch).
        """
        trainer = Trainer(
            self.config,
            _as_image_set(images),
            run_dir,
            resume=resume,
            progress=progress,
            on_epoch=on_epoch,
        )
        trainer.fit()
        self.trainer = trainer
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.model = trainer.best_model()
        self.index = None
        return self

    # ------------------------------------------------------------------ embedding
    def _require_model(self) -> RetrievalModel:
        if self.model is None:
            raise QuantrieveError("no model yet: call fit() or load a trained run first")
        return self.model

    def embed(self, images: Images, progress: Progress | None = None) -> np.ndarray:
        """Continuous embeddings f, float32 (N, M*d): what queries are searched with."""
        return self._embed(images, progress).numpy()

    def _embed(self, images: Images, progress: Progress | None = None) -> torch.Tensor:
        model = self._require_model().to(self.device)
        return embed_images(model, _as_images(images), self.device, amp=self.amp, progress=progress)

    def embed_for_index(
        self, images: Images, index: PQIndex | None = None, progress: Progress | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(f, refine vectors)`` of query images for ``index`` (default: :attr:`index`), the
        ``queries`` and ``refine_queries`` of :meth:`PQIndex.search`: the refine vectors are
        the unit backbone representations when the index refines by them, else None (the
        embeddings themselves serve)."""
        index = index if index is not None else self._require_index()
        if index.refine is None or index.refine_source == "embedding":
            return self._embed(images, progress), None
        model = self._require_model().to(self.device)
        return embed_images_with_backbone(
            model, _as_images(images), self.device, amp=self.amp, progress=progress
        )

    def encode(
        self, images: Images, progress: Progress | None = None, chunk: int = 8192
    ) -> np.ndarray:
        """PQ codes, uint8 (N, M): the index of each image's nearest codeword per book.

        Images are embedded and encoded ``chunk`` at a time: only the codes of the whole set
        are held, never its embeddings."""
        return self._encode(images, progress, chunk)[0]

    def encode_with_embeddings(
        self,
        images: Images,
        progress: Progress | None = None,
        chunk: int = 8192,
        refine_source: str = "embedding",
    ) -> tuple[np.ndarray, np.ndarray]:
        """PQ codes (N, M) uint8 and each item's finer vector in float16: what an index that
        refines keeps (:meth:`build_index` with ``refine_depth``). ``refine_source``:
        ``embedding``, the embeddings the codes quantize (N, M*d); ``backbone``, the unit
        backbone representations (N, backbone width)."""
        codes, fine = self._encode(images, progress, chunk, keep=refine_source)
        assert fine is not None
        return codes, fine

    def _encode(
        self, images: Images, progress: Progress | None, chunk: int, keep: str | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        model = self._require_model().to(self.device)
        array = _as_images(images)
        if keep is not None and keep not in REFINE_SOURCES:
            raise QuantrieveError(f"refine source must be one of {REFINE_SOURCES}, got '{keep}'")
        out = np.empty((len(array), model.quantizer.num_books), dtype=np.uint8)
        width = model.backbone_dim if keep == "backbone" else model.quantizer.dim
        fine = None if keep is None else np.empty((len(array), width), np.float16)
        for start in range(0, len(array), chunk):
            rows = np.arange(start, min(start + chunk, len(array)))
            if keep == "backbone":
                f, vectors = embed_images_with_backbone(
                    model, array, self.device, amp=self.amp, indices=rows
                )
            else:
                f = vectors = embed_images(model, array, self.device, amp=self.amp, indices=rows)
            out[rows] = model.quantizer.encode(f.to(self.device)).cpu().numpy()
            if fine is not None:
                fine[rows] = vectors.float().cpu().numpy().astype(np.float16)
            report(progress, int(rows[-1]) + 1, len(array))
        return out, fine

    # ------------------------------------------------------------------ index
    def build_index(
        self,
        database: Images,
        distance: str | None = None,
        source: dict[str, Any] | None = None,
        progress: Progress | None = None,
        refine_depth: int = 0,
        refine_source: str = DEFAULT_REFINE_SOURCE,
        refine_expand: int = DEFAULT_REFINE_EXPAND,
    ) -> PQIndex:
        """Encode ``database`` into a new in-memory index (ids, labels and class names from
        an :class:`ImageSet`), kept as :attr:`index` and returned.

        Args:
            refine_depth: R > 0 keeps a finer vector of each item in float16 (2 bytes a
                dimension) and re-scores the first R ADC results of every search with it
                (:mod:`quantrieve.pq.refine`); 0 keeps the codes alone.
            refine_source: the finer vector: ``backbone`` (the backbone's representation before
                the projection head, at unit length: the better top of the ranking, measured in
                docs/results.md) or ``embedding`` (the embedding the code quantizes).
            refine_expand: with refinement, n > 0 re-scores each search's head once more
                against the mean of the query and its first n refined results (query
                expansion, :func:`~quantrieve.pq.refine.refine_ranking`; default 3, measured in
                docs/results.md, "Query expansion"); 0: off.
        """
        database = _as_image_set(database)
        if refine_depth < 0:
            raise QuantrieveError(f"refine_depth must be >= 0 (0 = off), got {refine_depth}")
        if refine_expand < 0:
            raise QuantrieveError(f"refine_expand must be >= 0 (0 = off), got {refine_expand}")
        fine = None
        if refine_depth:
            codes, fine = self.encode_with_embeddings(
                database, progress, refine_source=refine_source
            )
        else:
            codes = self.encode(database, progress)
        return self.index_from_codes(
            database,
            codes,
            image_fingerprints(database.images),
            distance,
            source,
            refine=fine,
            refine_depth=refine_depth or DEFAULT_REFINE_DEPTH,
            refine_source=refine_source,
            refine_expand=refine_expand,
        )

    def index_from_codes(
        self,
        database: ImageSet,
        codes: np.ndarray,
        content: np.ndarray | None = None,
        distance: str | None = None,
        source: dict[str, Any] | None = None,
        refine: np.ndarray | None = None,
        refine_depth: int = DEFAULT_REFINE_DEPTH,
        refine_source: str = "embedding",
        refine_expand: int = DEFAULT_REFINE_EXPAND,
    ) -> PQIndex:
        """The index of ``database`` from its codes, already encoded with this model (e.g. by
        an :class:`~quantrieve.api.encode_job.EncodeJob`); kept as :attr:`index`.

        ``refine``: the items' float16 finer vectors (:meth:`encode_with_embeddings` with
        ``refine_source``) for an index that refines its first ``refine_depth`` results and
        expands its queries by ``refine_expand`` of them; None for codes alone."""
        model = self._require_model()
        usage = check_code_usage(
            codes,
            model.config.num_codewords,
            "encoded database",
            refine_depth=0 if refine is None else refine_depth,
        )
        self.index = PQIndex(
            codebooks=model.quantizer.codebooks.detach().cpu().numpy(),
            codes=codes,
            ids=list(database.ids),
            labels=database.labels,
            distance=distance or self.config.eval.distance,
            class_names=list(database.class_names),
            content=content,
            refine=refine,
            refine_depth=refine_depth,
            refine_source=refine_source,
            refine_expand=refine_expand,
            meta={
                "source": source or {},
                "code_usage": usage.to_dict(),
                "model": model.metadata() | model.training_info,
                "training_config": self.config.to_dict(),
                "versions": package_versions(),
                "git_commit": git_commit(),
            },
        )
        return self.index

    def _require_index(self) -> PQIndex:
        if self.index is None:
            raise QuantrieveError("no index yet: call build_index() or load an index first")
        return self.index

    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the index directory (codes, codebooks, ids, labels, ``model.pt``).

        A new or empty folder is written; an existing index is replaced only with
        ``overwrite`` (atomically); any other folder is refused.
        """
        index = self._require_index()
        model = self._require_model()
        check_index_output(path, overwrite)
        return index.save(path, model=model, overwrite=overwrite)

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: Images | torch.Tensor,
        k: int = 10,
        distance: str | None = None,
        progress: Progress | None = None,
        refine_depth: int | None = None,
        labels: Sequence[str] | None = None,
        id_prefix: str | None = None,
        refine_expand: int | None = None,
    ) -> SearchResult:
        """Top-k index items per query image (or per embedding, given a float tensor), by
        ADC with a per-query look-up table.

        Filters (exact; fewer than k hits when fewer items pass): ``labels``, items with any of
        these class names; ``id_prefix``, items whose id starts with it (a sub-folder of the
        indexed folder: ``"2024/"``). Both: items that pass both.

        An index that refines re-scores its first ``refine_depth`` results (default: the
        index's; 0 = ADC alone) with the items' stored vectors, and with ``refine_expand`` = n >
        0 (default: the index's) once more against the mean of the query and its first n
        refined results (query expansion). A query image that is itself
        in the index (the same pixels, for an index that keeps fingerprints) gets its copies
        first, at distance 0, whatever the codes say.
        """
        index = self._require_index()
        if k < 1:
            raise QuantrieveError(f"k must be >= 1, got {k}")
        rows = index.filter_rows(labels, id_prefix)
        embedded = isinstance(queries, torch.Tensor)
        vectors = None
        if embedded:
            f = queries.float()
        else:
            f, vectors = self.embed_for_index(queries, progress=progress)
        prints = None
        if not embedded and index.content is not None:
            prints = image_fingerprints(_as_images(queries))
        dists, idx = index.search(
            f,
            k,
            distance,
            refine_depth,
            fingerprints=prints,
            rows=rows,
            refine_queries=vectors,
            refine_expand=refine_expand,
        )
        hits = make_hits(index, dists.tolist(), idx.tolist())
        return SearchResult(dists.numpy(), idx.numpy(), hits)

    def evaluate(
        self,
        queries: ImageSet,
        k: int | None = None,
        precision_at: Sequence[int] | None = None,
        distance: str | None = None,
        progress: Progress | None = None,
        embeddings: torch.Tensor | None = None,
        pr_queries: int | None = None,
        refine_depth: int | None = None,
        refine_queries: torch.Tensor | None = None,
        refine_expand: int | None = None,
    ) -> RetrievalResult:
        """mAP@K, precision@N and the PR curve of labelled queries against the index.

        Labels are matched by class name (a query folder whose classes are named otherwise is
        refused, not scored column by column). K and the cut-offs default to the config's
        ``eval`` section and are capped at the index size.

        Args:
            embeddings: the queries' embeddings, if already computed (skips embedding).
            pr_queries: evenly spaced queries the PR curve is estimated on (0 = all; default:
                the config's ``eval.pr_queries``).
            refine_depth: for an index that refines, the re-scored head of each ranking
                (default: the index's; 0 = ADC alone), as :meth:`search` ranks.
            refine_queries: with ``embeddings``, the queries' unit backbone vectors for an
                index that refines by them, if already computed (both come from
                :meth:`embed_for_index`); without them such an index embeds the queries again.
            refine_expand: query expansion of the refined head (default: the index's; 0 =
                off), as :meth:`search` ranks.
        """
        index = self._require_index()
        if queries.labels is None:
            raise DataError("the queries have no labels; evaluation needs labelled queries")
        labels = align_labels(queries.labels, queries.class_names, index)
        e = self.config.eval
        refine = _refinement(index, refine_depth)
        expand = index.query_expansion(refine_expand)
        if embeddings is None:
            f, vectors = self.embed_for_index(queries)
        else:
            f, vectors = embeddings, refine_queries
            if refine is not None and index.refine_source != "embedding" and vectors is None:
                vectors = self.embed_for_index(queries)[1]
        assert index.labels is not None
        # Deleted items not yet compacted away are not searched, so they are not scored either.
        codes, db_labels, selves = index.codes, index.labels, self._self_matches(queries, f)
        hidden = index.hidden_mask()
        if hidden is not None:
            rows = np.flatnonzero(~hidden)
            position = np.full(len(hidden), -1, dtype=np.int64)
            position[rows] = np.arange(len(rows))
            codes, db_labels = np.asarray(codes)[rows], np.asarray(db_labels)[rows]
            selves = selves[~hidden[selves[:, 1]]]
            selves[:, 1] = position[selves[:, 1]]
            if refine is not None:
                refine = (np.asarray(refine[0])[rows], refine[1])
        if not len(codes):
            raise QuantrieveError("every item of the index is deleted: nothing to evaluate")
        check_code_usage(
            codes,
            index.num_codewords,
            "indexed database",
            refine_depth=0 if refine is None else refine[1],
        )
        if len(selves):
            warnings.warn(
                QuantrieveWarning(
                    f"{len(np.unique(selves[:, 0]))} of {len(queries)} queries are themselves in "
                    "the index (the same pixels): each copy is moved to the end of that query's "
                    "ranking, so it does not count as its own hit. Hold out queries instead "
                    "(quantrieve train --holdout N, or qr.hold_out) to score images the index "
                    "has never seen."
                ),
                stacklevel=2,
            )
        return evaluate_codes(
            f,
            index.codebooks,
            codes,
            labels,
            db_labels,
            k or e.topk,
            precision_at or e.precision_at,
            distance or index.distance,
            progress,
            exclude=selves,
            pr_queries=e.pr_queries if pr_queries is None else pr_queries,
            refine=refine,
            refine_queries=vectors,
            refine_expand=expand,
        )

    def _self_matches(self, queries: ImageSet, f: torch.Tensor) -> np.ndarray:
        """(query, index row) pairs that are the same image: equal pixel fingerprints. An
        index without fingerprints (made before they were kept) falls back on equal ids and
        equal codes."""
        index = self._require_index()
        if index.content is not None:
            rows: dict[int, list[int]] = {}
            for row, print_ in enumerate(index.content.tolist()):
                rows.setdefault(print_, []).append(row)
            prints = image_fingerprints(queries.images).tolist()
            pairs = [(q, r) for q, p in enumerate(prints) for r in rows.get(p, [])]
            return np.array(pairs, dtype=np.int64).reshape(-1, 2)
        by_id = {item: row for row, item in enumerate(index.ids)}
        pairs = [(q, by_id[i]) for q, i in enumerate(queries.ids) if i in by_id]
        if not pairs or self.model is None:
            return np.zeros((0, 2), dtype=np.int64)
        found = np.array(pairs, dtype=np.int64)
        codes = self.model.quantizer.encode(f[found[:, 0]].to(self.device)).cpu().numpy()
        same = (codes == np.asarray(index.codes)[found[:, 1]]).all(axis=1)
        return found[same]


def _refinement(index: PQIndex, depth: int | None) -> tuple[np.ndarray, int] | None:
    """``(embeddings, R)`` of an index that refines, or None (off, or no embeddings kept)."""
    if depth is not None and depth < 0:
        raise QuantrieveError(f"refine depth must be >= 0 (0 = off), got {depth}")
    if index.refine is None or depth == 0:
        return None
    return index.refine, index.refine_depth if depth is None else depth


def _config_or_default(saved: dict[str, Any]) -> RunConfig:
    """The saved run config, or the defaults if it no longer validates (an old run)."""
    try:
        return config_from_dict(saved).validate()
    except QuantrieveError:
        return RunConfig()
