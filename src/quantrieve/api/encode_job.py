"""Encoding a large image set into an index in bounded memory, resumably, in shards.

An :class:`EncodeJob` works in a folder of its own (marker ``job.json``)::

    job.json          what is encoded: item count, chunk size, books M, the ids' and the
                      codebooks' SHA-256 (a job is only continued with the same images and model)
    codes.npy         uint8 (N, M), preallocated, filled chunk by chunk (memory-mapped)
    content.npy       uint64 (N,), the items' pixel fingerprints, likewise
    done/<c>          one empty file per finished chunk c, created after its rows are on disk

Chunk c holds items [c * chunk, (c + 1) * chunk). A process decodes, embeds and encodes one
chunk at a time and writes its rows; only codes stay (N x M bytes), never the embeddings of the
whole set, and pages of memory-mapped images are released after each chunk, so memory stays
flat whatever N. A killed job loses at most the chunks in progress: a rerun skips the finished
ones. Chunks are dealt round-robin to shards (``shard=(i, n)``: chunks c with c % n == i), for
``torchrun`` ranks or the jobs of a cluster scheduler, which may run at the same time: they
write disjoint rows of the same files. When every chunk is done, :meth:`EncodeJob.index` builds
the index.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from quantrieve.data import ImageSet
from quantrieve.errors import QuantrieveError
from quantrieve.index.format import image_fingerprints
from quantrieve.runtime.atomic import atomic_write_json
from quantrieve.runtime.outputs import OutputKind, refuse_foreign
from quantrieve.runtime.progress import Progress, report

JOB_FORMAT = "quantrieve-encode-job"
JOB_KIND = OutputKind("encode job", "job.json")
# The files a job folder may hold (removing a finished job removes these only).
JOB_FILES = ("job.json", "codes.npy", "content.npy", "refine.npy", "done")


class EncodeJobError(QuantrieveError):
    """A job folder that belongs to other images or another model, or an unfinished job."""


def _ids_sha256(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()


def release_pages(images: Any) -> None:
    """Let the kernel drop the pages of a memory-mapped image array that were read (their
    data stays on disk): reading a large memory map would otherwise keep every page resident."""
    array = images
    while not isinstance(array, np.memmap) and isinstance(getattr(array, "base", None), np.ndarray):
        array = array.base  # IndexedImages or a view -> the array it reads
    handle = getattr(array, "_mmap", None)
    if isinstance(handle, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        handle.madvise(mmap.MADV_DONTNEED)


class EncodeJob:
    """Encode ``images`` with ``retriever``'s model into codes in ``folder``.

    Args:
        retriever: holds the model (``quantrieve.api.Retriever``).
        images: the database.
        folder: the job's own folder (created; an existing job folder is continued when it was
            made for the same images and model, and refused otherwise).
        chunk: items per chunk (the unit of memory, progress and resumption).
        refine: also keep each item's finer vector in float16 (``refine.npy``, 2 bytes a
            dimension), for an index that refines its rankings.
        refine_source: that vector (:meth:`Retriever.encode_with_embeddings`): ``embedding``
            or ``backbone``.
    """

    def __init__(
        self,
        retriever: Any,
        images: ImageSet,
        folder: str | Path,
        chunk: int = 8192,
        refine: bool = False,
        refine_source: str = "embedding",
    ):
        if chunk < 1:
            raise EncodeJobError(f"chunk must be >= 1, got {chunk}")
        self.retriever = retriever
        self.images = images
        self.folder = Path(folder)
        self.chunk = chunk
        self.refine = refine
        self.refine_source = refine_source
        model = retriever._require_model()
        books = model.quantizer.codebooks.detach().cpu().numpy()
        self.spec = {
            "format": JOB_FORMAT,
            "num_items": len(images),
            "chunk": chunk,
            "num_books": int(books.shape[0]),
            "ids_sha256": _ids_sha256(list(images.ids)),
            "codebooks_sha256": hashlib.sha256(books.astype(np.float32).tobytes()).hexdigest(),
        }
        if refine:  # absent otherwise: a job folder written before refinement still continues
            self.spec["refine_dim"] = int(books.shape[0] * books.shape[2])
            if refine_source != "embedding":
                self.spec["refine_source"] = refine_source
                self.spec["refine_dim"] = int(model.backbone_dim)
        self._prepare()

    @property
    def num_chunks(self) -> int:
        return -(-len(self.images) // self.chunk)

    def _prepare(self) -> None:
        refuse_foreign(self.folder, JOB_KIND, hint=f"{self.folder}-job")
        marker = self.folder / "job.json"
        if marker.is_file():
            saved = json.loads(marker.read_text())
            if saved != self.spec:
                changed = sorted(k for k in self.spec if saved.get(k) != self.spec[k])
                raise EncodeJobError(
                    f"{self.folder}: an encode job for other images or another model "
                    f"({', '.join(changed)} differ); finish it with those, or remove the "
                    "folder to start again"
                )
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "done").mkdir(exist_ok=True)
        n, m = len(self.images), self.spec["num_books"]
        files = [("codes.npy", np.uint8, (n, m)), ("content.npy", np.uint64, (n,))]
        if self.refine:
            files.append(("refine.npy", np.float16, (n, self.spec["refine_dim"])))
        for name, dtype, shape in files:
            target = self.folder / name
            if not target.is_file():
                tmp = self.folder / f".{name}.{os.getpid()}.tmp"
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
                array.flush()
                del array
                # Atomic, and never replaces the file another shard made first.
                with contextlib.suppress(FileExistsError):
                    os.link(tmp, target)
                tmp.unlink()
        atomic_write_json(self.spec, marker)

    def done_chunks(self) -> set[int]:
        """Chunks whose rows are on disk."""
        return {int(p.name) for p in (self.folder / "done").iterdir() if p.name.isdigit()}

    def finished(self) -> bool:
        return len(self.done_chunks()) == self.num_chunks

    def run(self, shard: tuple[int, int] = (0, 1), progress: Progress | None = None) -> int:
        """Encode this shard's unfinished chunks; returns how many were encoded now.

        Args:
            shard: ``(i, n)``: this process takes chunks c with c % n == i.
            progress: ``progress(items_done, items_of_this_shard)``.
        """
        index, count = shard
        if not 0 <= index < count:
            raise EncodeJobError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
        mine = [c for c in range(self.num_chunks) if c % count == index]
        todo = [c for c in mine if c not in self.done_chunks()]
        total = sum(self._rows(c).stop - self._rows(c).start for c in mine)
        done = total - sum(self._rows(c).stop - self._rows(c).start for c in todo)
        codes = np.load(self.folder / "codes.npy", mmap_mode="r+")
        content = np.load(self.folder / "content.npy", mmap_mode="r+")
        fine = np.load(self.folder / "refine.npy", mmap_mode="r+") if self.refine else None
        try:
            for c in todo:
                rows = self._rows(c)
                pixels = np.ascontiguousarray(self.images.images[rows])
                release_pages(self.images.images)
                if fine is None:
                    codes[rows] = self.retriever.encode(pixels)
                else:
                    codes[rows], fine[rows] = self.retriever.encode_with_embeddings(
                        pixels, refine_source=self.refine_source
                    )
                    fine.flush()
                content[rows] = image_fingerprints(pixels)
                codes.flush()
                content.flush()
                (self.folder / "done" / str(c)).touch()
                done += rows.stop - rows.start
                report(progress, done, total)
                release_pages(codes)
        finally:
            del codes, content, fine
        return len(todo)

    def _rows(self, c: int) -> slice:
        return slice(c * self.chunk, min((c + 1) * self.chunk, len(self.images)))

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """The finished job's codes (N, M) and fingerprints (N,), read into memory."""
        missing = self.num_chunks - len(self.done_chunks())
        if missing:
            raise EncodeJobError(
                f"{self.folder}: {missing} of {self.num_chunks} chunks are not encoded yet; run "
                "the remaining shards (or the job without --shard) first"
            )
        codes = np.array(np.load(self.folder / "codes.npy", mmap_mode="r"))
        content = np.array(np.load(self.folder / "content.npy", mmap_mode="r"))
        return codes, content

    def refine_embeddings(self) -> np.ndarray | None:
        """The finished job's float16 finer vectors (N, D), memory-mapped; None without
        ``refine``."""
        if not self.refine:
            return None
        self.codes()  # the same check that every chunk is done
        return np.load(self.folder / "refine.npy", mmap_mode="r")

    def remove(self) -> None:
        """Delete the job folder: only the files a job writes, then the folder if empty."""
        for name in JOB_FILES:
            target = self.folder / name
            if target.is_dir():
                for p in target.iterdir():
                    if p.name.isdigit():
                        p.unlink()
                if not any(target.iterdir()):
                    target.rmdir()
            elif target.is_file():
                target.unlink()
        if not any(self.folder.iterdir()):
            self.folder.rmdir()
