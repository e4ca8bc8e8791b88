"""The ``quantrieve`` command: train, encode, search, evaluate, baseline, export, demo.

Argument parsing and printing over the Python API (:class:`quantrieve.Retriever`), nothing else.
Errors a user can fix (:class:`~quantrieve.errors.QuantrieveError`: a bad config key, a missing
file, a malformed dataset) are printed as one line naming the file, line or key at fault, with
exit code 2; any other exception is a bug and shows its traceback. Warnings about the user's data
or run (:class:`~quantrieve.errors.QuantrieveWarning`) are printed in yellow.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import typer
from rich.table import Table

from quantrieve.api.retriever import Retriever
from quantrieve.cli.terminal import console, progress_bar, stdout
from quantrieve.config import DISTANCES, METHODS, ConfigError, load_config, preset_names
from quantrieve.data import DataError, ImageSet, read_dataset
from quantrieve.data.run_parts import read_run_parts, training_part
from quantrieve.errors import QuantrieveError, QuantrieveWarning
from quantrieve.evaluate import RetrievalResult
from quantrieve.pq import DEFAULT_REFINE_DEPTH, bits_per_book
from quantrieve.runtime.distributed import from_environment, shutdown
from quantrieve.train.trainer import EpochSummary, TrainingError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Fully unsupervised image retrieval with learned product quantization (HQC).",
)

DataDirOpt = Annotated[
    str | None,
    typer.Option("--data-dir", help="Dataset folder (default: the run's or index's own)."),
]
DatasetOpt = Annotated[
    str | None,
    typer.Option("--dataset", help="Dataset reader (default: the run's or index's own)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")]
RefineDepthOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Results re-scored with the index's stored embeddings (default: the index's "
        "refine depth; 0: ADC alone). Only for an index encoded with --refine-depth.",
    ),
]


def _positive_ints(text: str, option: str) -> list[int]:
    """Parse a comma-separated list of integers >= 1, naming the option on error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option} values must be >= 1, got '{text}'")
    return values


def _check_distance(distance: str | None) -> None:
    if distance is not None and distance not in DISTANCES:
        raise ConfigError(f"--distance must be one of {', '.join(DISTANCES)}, got '{distance}'")


def _run_parts(
    retriever: Retriever, dataset: str | None, data_dir: str | None
) -> tuple[dict[str, ImageSet], dict[str, Any]]:
    """The parts of the run's (or index's) own dataset, folder and image size, unless another
    dataset or folder is given; held-out queries of the run are its ``test`` part."""
    source: dict[str, Any] = {}
    if retriever.index is not None:
        source = dict(retriever.index.meta.get("source") or {})
    data = dataclasses.replace(retriever.config.data)
    run_dir = source.get("run_dir") or retriever.run_dir
    if dataset is not None or data_dir is not None:
        data.holdout_queries = 0  # another dataset: its own parts
    data.dataset = dataset or source.get("dataset") or data.dataset
    data.root = data_dir or source.get("root") or data.root
    if retriever.model is not None:  # images as the model takes them
        data.image_size = retriever.model.image_size
        data.channels = retriever.model.channels if data.dataset == "image-folder" else 0
    parts = read_run_parts(data, run_dir, progress_bar("decoding images"))
    where = {"dataset": data.dataset, "root": str(data.root)}
    if run_dir is not None:
        where["run_dir"] = str(Path(run_dir).resolve())
    return parts, where


def _pick(parts: dict[str, ImageSet], where: dict[str, Any], part: str | None) -> ImageSet:
    part = part or training_part(parts)
    if part not in parts:
        raise DataError(
            f"dataset '{where['dataset']}' at {where['root']} has no part '{part}' (has: "
            f"{', '.join(parts)}); choose one with --part, or hold out queries when training "
            "(--holdout N)"
        )
    return parts[part]


def _run_part(
    retriever: Retriever, dataset: str | None, data_dir: str | None, part: str | None
) -> tuple[ImageSet, dict[str, Any]]:
    """One part of :func:`_run_parts` (``None``: the training part, which is the database),
    and where it came from (saved in an index)."""
    parts, where = _run_parts(retriever, dataset, data_dir)
    part = part or training_part(parts)
    return _pick(parts, where, part), {**where, "part": part}


def _print_epoch(summary: EpochSummary, total: int) -> None:
    line = (
        f"epoch {summary.epoch}/{total}  loss {summary.loss:.4f}  "
        f"{summary.images_per_second:.0f} img/s"
    )
    if summary.val_map is not None:
        line += f"  val mAP {summary.val_map:.4f}"
        if summary.val_p10 is not None:
            line += f"  P@10 {summary.val_p10:.4f}"
    if summary.best_val_map is not None:
        line += f"  (best {summary.best_val_map:.4f} @ epoch {summary.best_epoch})"
    console.print(line)


@app.command()
def train(
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/train"),
    preset: Annotated[
        str | None, typer.Option(help="Named preset (see `quantrieve presets`).")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config", help="TOML or JSON config.")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override, e.g. --set train.epochs=30.")
    ] = None,
    bits: Annotated[int | None, typer.Option(help="Code length; sets model.num_books.")] = None,
    method: Annotated[str | None, typer.Option(help=f"Method: {', '.join(METHODS)}.")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset reader, e.g. image-folder (data.dataset).")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Dataset folder (data.root).")
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(help="Side images are decoded to, for image files (data.image_size)."),
    ] = None,
    channels: Annotated[
        int | None,
        typer.Option(help="Image folders: 1 (grayscale) or 3 (RGB); default the data's own."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Training epochs (train.epochs).")] = None,
    skip_bad: Annotated[
        bool,
        typer.Option(
            "--skip-bad",
            help="Leave unreadable images out (listed in run.json) instead of stopping "
            "(data.skip_bad).",
        ),
    ] = False,
    holdout: Annotated[
        int | None,
        typer.Option(
            help="Hold out N images as test queries (a folder without a test part); saved "
            "with the run, never trained on (data.holdout_queries)."
        ),
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
) -> None:
    """Train an encoder from scratch, without labels. Writes model.pt (best by validation mAP)."""
    extra = list(overrides or [])
    for key, value in (
        ("data.dataset", dataset),
        ("data.root", str(Path(data_dir).resolve()) if data_dir else None),
        ("data.image_size", image_size),
        ("data.channels", channels),
        ("train.epochs", epochs),
        ("data.holdout_queries", holdout),
        ("data.skip_bad", "true" if skip_bad else None),
    ):
        if value is not None:
            extra.insert(0, f"{key}={value}")
    if resume:
        if preset is not None or config_file is not None:
            raise TrainingError(
                "--resume continues with the run's saved config.json; drop --preset / --config "
                "(or start a new run in another --out)"
            )
        saved = out / "config.json"
        if not saved.is_file():
            raise TrainingError(f"--resume given but {saved} does not exist")
        retriever = Retriever.from_preset(
            None, bits=bits, method=method, config_file=saved, overrides=extra
        )
    else:
        retriever = Retriever.from_preset(
            preset, bits=bits, method=method, config_file=config_file, overrides=extra
        )
    config = retriever.config
    console.print(
        f"training {config.model.backbone} / {config.loss.preset}, {config.model.bits} bits "
        f"(M={config.model.num_books}, K={config.model.num_codewords}), "
        f"{config.train.epochs} epochs on {config.data.dataset} at {config.data.root} -> {out}"
    )
    parts = read_dataset(
        config.data.dataset,
        config.data.root,
        config.data.image_size or None,
        progress_bar("decoding images"),
        **config.data.reader_options(),
    )
    train_set = parts[training_part(parts)]
    if resume:
        from quantrieve.runtime.checkpoint import load_checkpoint

        done = load_checkpoint(out / "last.pt")["epoch"]
        console.print(f"resuming {out} at epoch {done + 1} of {config.train.epochs} ({done} done)")
    retriever.fit(
        train_set,
        run_dir=out,
        resume=resume,
        progress=progress_bar("training"),
        on_epoch=lambda s: _print_epoch(s, config.train.epochs),
    )
    shutdown(from_environment())
    console.print(f"done: model {out / 'model.pt'}, log {out / 'log.jsonl'}")


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard must be i/n (e.g. 0/4), got '{text}'") from None
    if not 0 <= index < count:
        raise ConfigError(f"--shard i/n needs 0 <= i < n, got '{text}'")
    return index, count


@app.command()
def encode(
    model: Annotated[Path, typer.Argument(help="A run directory or its model.pt.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write.")],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    part: Annotated[
        str | None,
        typer.Option(help="Dataset part to encode (default: the part the run trained on)."),
    ] = None,
    distance: Annotated[str, typer.Option(help=f"Default ranking distance: {DISTANCES}.")] = "l2",
    device: DeviceOpt = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing index at --out.")
    ] = False,
    chunk: Annotated[
        int, typer.Option(help="Images per chunk: the unit of memory, progress and resumption.")
    ] = 8192,
    shard: Annotated[
        str | None,
        typer.Option(help="i/n: encode chunks i, i+n, ... only (one job of a cluster array)."),
    ] = None,
    refine_depth: Annotated[
        int,
        typer.Option(
            help="R > 0: keep each item's embedding in float16 (2 bytes a dimension) and "
            "re-score the first R results of every search with it; 0: codes alone."
        ),
    ] = 0,
) -> None:
    """Encode a dataset part into an index directory (uint8 codes + codebooks + ids + labels).

    Chunk by chunk into OUT.encoding/ (bounded memory; a rerun continues a killed job), then
    into the index. Under torchrun each process takes its share of the chunks; with --shard,
    the shard that finds every chunk done builds the index."""
    from quantrieve.api.encode_job import EncodeJob
    from quantrieve.index.directory import check_index_output
    from quantrieve.runtime.distributed import setup as setup_distributed

    _check_distance(distance)
    if refine_depth < 0:
        raise ConfigError(f"--refine-depth must be >= 0 (0 = off), got {refine_depth}")
    share = _shard(shard)
    check_index_output(out, overwrite)
    retriever = Retriever.load(model, device=device)
    place = setup_distributed(retriever.device)
    if place.enabled and retriever.device.type == "cuda":
        retriever.device = torch.device("cuda", place.local_rank)
    if share is None:
        share = (place.rank, place.world_size)
    database, where = _run_part(retriever, dataset, data_dir, part)
    job = EncodeJob(
        retriever, database, out.with_name(out.name + ".encoding"), chunk, refine=refine_depth > 0
    )
    job.run(share, progress_bar("encoding database"))
    shutdown(place)  # every rank's chunks are written
    if not place.is_main:
        return
    if not job.finished():
        left = job.num_chunks - len(job.done_chunks())
        console.print(
            f"shard {share[0]}/{share[1]} done; {left} of {job.num_chunks} chunks left to other "
            f"shards (the last one to finish builds the index), in {job.folder}"
        )
        return
    codes, content = job.codes()
    index = retriever.index_from_codes(
        database,
        codes,
        content,
        distance,
        where,
        refine=job.refine_embeddings(),
        refine_depth=refine_depth or DEFAULT_REFINE_DEPTH,
    )
    retriever.save(out, overwrite=overwrite)
    job.remove()
    refined = (
        f", {index.refine.nbytes / 1e6:.2f} MB of float16 embeddings re-scoring the first "
        f"{index.refine_depth} results"
        if index.refine is not None
        else ""
    )
    console.print(
        f"index of {len(index)} items, {index.bits} bits ({index.num_books} x "
        f"{index.num_codewords} codewords, {index.codes.nbytes / 1e6:.2f} MB of codes{refined})"
        f" -> {out}"
    )


def _queries(
    retriever: Retriever,
    images: list[Path],
    dataset: str | None,
    data_dir: str | None,
    part: str,
    items: str | None,
) -> ImageSet:
    from quantrieve.data.images import load_image_file

    if images:
        model = retriever.model
        if model is None:
            raise QuantrieveError("the index holds no model.pt, so images cannot be embedded")
        arrays = [load_image_file(p, model.image_size, model.channels) for p in images]
        return ImageSet(np.stack(arrays), None, [str(p) for p in images])
    if dataset is None and data_dir is None and items is None:
        raise ConfigError(
            "give query images (quantrieve search INDEX a.png b.png), or --items with the "
            "dataset part to take them from"
        )
    source, where = _run_part(retriever, dataset, data_dir, part)
    if items is None:
        return source
    try:
        idx = np.array([int(i) for i in items.split(",") if i.strip()])
    except ValueError:
        raise ConfigError(f"--items must be comma-separated integers, got '{items}'") from None
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(source):
        raise ConfigError(f"--items must lie in [0, {len(source)}) for {where['dataset']}/{part}")
    return source.subset(idx)


@app.command()
def search(
    index_dir: Annotated[Path, typer.Argument(help="Index directory.")],
    query_images: Annotated[
        list[Path] | None, typer.Argument(help="Query image files (several, or a shell glob).")
    ] = None,
    images: Annotated[
        list[Path] | None, typer.Option("--image", help="Query image file (repeatable).")
    ] = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    part: Annotated[str, typer.Option(help="Dataset part of the queries.")] = "test",
    items: Annotated[str | None, typer.Option(help="Comma-separated item numbers.")] = None,
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 10,
    distance: Annotated[
        str | None, typer.Option(help=f"{DISTANCES}; default: the index's.")
    ] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    grid: Annotated[
        Path | None,
        typer.Option(help="Also draw the queries and their results as a PNG grid here."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --grid file.")
    ] = False,
    refine_depth: RefineDepthOpt = None,
) -> None:
    """Top-k database items for query images, by ADC with a per-query look-up table."""
    from quantrieve.runtime.outputs import check_new_file

    if k < 1:
        raise ConfigError(f"-k must be >= 1, got {k}")
    _check_distance(distance)
    if grid is not None:
        check_new_file(grid, overwrite, "result grid")
    retriever = Retriever.load(index_dir, device=device, need_index=True)
    queries = _queries(
        retriever, [*(query_images or []), *(images or [])], dataset, data_dir, part, items
    )
    bar = progress_bar("embedding queries") if len(queries) > 5000 else None
    results = retriever.search(queries, k, distance, progress=bar, refine_depth=refine_depth)
    if grid is not None:
        _draw_grid(retriever, queries, results.indices, grid)
    if as_json:
        payload = [
            {"query": q, "results": [h.__dict__ for h in hits]}
            for q, hits in zip(queries.ids, results.hits, strict=True)
        ]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    for q, hits in zip(queries.ids, results.hits, strict=True):
        table = Table(title=f"query {q}")
        for column in ("rank", "item", "id", "distance", "labels"):
            table.add_column(column)
        for h in hits:
            table.add_row(str(h.rank), str(h.item), h.id, f"{h.distance:.4f}", ", ".join(h.labels))
        stdout.print(table)


def _draw_grid(retriever: Retriever, queries: ImageSet, neighbours: np.ndarray, path: Path) -> None:
    """The queries and their results as a PNG; database images come from the index's source."""
    from quantrieve.experiments.figures import plot_retrieval_grid

    assert retriever.index is not None
    part = (retriever.index.meta.get("source") or {}).get("part", "train")
    database, _ = _run_part(retriever, None, None, part)
    if database.ids != retriever.index.ids:
        raise DataError(
            f"the index's items are not its source images ({part}): they changed since it was "
            "encoded, or the search service added or deleted items, so results cannot be "
            "drawn; search without --grid, or encode it again"
        )
    shown = min(len(queries), 16)
    plot_retrieval_grid(queries.subset(np.arange(shown)), database, neighbours[:shown], path)
    console.print(f"result grid: {path}")


@app.command()
def embed(
    model: Annotated[Path, typer.Argument(help="An index directory, a run directory or model.pt.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .npy file to write.")],
    query_images: Annotated[
        list[Path] | None, typer.Argument(help="Image files (several, or a shell glob).")
    ] = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    part: Annotated[
        str, typer.Option(help="Dataset part, when no image files are given.")
    ] = "test",
    items: Annotated[str | None, typer.Option(help="Comma-separated item numbers.")] = None,
    device: DeviceOpt = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --out file.")
    ] = False,
) -> None:
    """Write query embeddings (float32 N x M*d .npy), e.g. to search an exported faiss index;
    their ids go to OUT with the suffix .ids.txt."""
    from quantrieve.runtime.atomic import atomic_path
    from quantrieve.runtime.outputs import check_new_file

    check_new_file(out, overwrite, "embeddings")
    ids_file = out.with_suffix(".ids.txt")
    check_new_file(ids_file, overwrite, "ids")
    retriever = Retriever.load(model, device=device)
    queries = _queries(retriever, list(query_images or []), dataset, data_dir, part, items)
    embeddings = retriever.embed(queries, progress=progress_bar("embedding"))
    with atomic_path(out) as tmp, open(tmp, "wb") as handle:
        np.save(handle, embeddings)
    with atomic_path(ids_file) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in queries.ids), encoding="utf-8")
    console.print(f"{len(embeddings)} embeddings of dimension {embeddings.shape[1]} -> {out}")


@app.command()
def evaluate(
    index_dir: Annotated[Path, typer.Argument(help="Labelled index directory (the database).")],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    part: Annotated[str, typer.Option(help="Dataset part used as queries.")] = "test",
    topk: Annotated[int, typer.Option(help="K of mAP@K.")] = 1000,
    precision_at: Annotated[str, typer.Option(help="Cut-offs of precision@N.")] = "10,100,1000",
    distance: Annotated[
        str | None, typer.Option(help=f"{DISTANCES}; default: the index's.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the PR curve PNG here.")] = None,
    pr_queries: Annotated[
        int | None,
        typer.Option(
            help="Queries the PR curve is estimated on (0 = all; default: the run's "
            "eval.pr_queries, 2,000). Each ranks the whole index."
        ),
    ] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --plot file.")
    ] = False,
    refine_depth: RefineDepthOpt = None,
) -> None:
    """mAP@K, precision@N and PR curve of labelled queries against an index."""
    from quantrieve.runtime.outputs import check_new_file

    if plot is not None:
        check_new_file(plot, overwrite, "PR curve")
    cuts = _positive_ints(precision_at, "--precision-at")
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    if pr_queries is not None and pr_queries < 0:
        raise ConfigError(f"--pr-queries must be >= 0 (0 = every query), got {pr_queries}")
    _check_distance(distance)
    retriever = Retriever.load(index_dir, device=device, need_index=True)
    queries, where = _run_part(retriever, dataset, data_dir, part)
    if queries.labels is None:
        raise DataError(
            f"{where['dataset']}/{part} has no labels; evaluation needs labelled queries"
        )
    result = retriever.evaluate(
        queries,
        topk,
        cuts,
        distance,
        progress_bar("evaluating"),
        pr_queries=pr_queries,
        refine_depth=refine_depth,
    )
    index = retriever.index
    assert index is not None
    if plot is not None:
        from quantrieve.experiments.figures import plot_pr_curves, pr_title

        title = pr_title(
            f"{where['dataset']}/{part} ({result.num_queries:,} queries vs "
            f"{result.num_database:,} indexed items)",
            index.bits,
            f"{result.extra['distance']} ADC",
        )
        plot_pr_curves({f"{index.bits} bits": result}, plot, title)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    refined = result.extra.get("refine_depth")
    how = f", first {refined} refined" if refined else ""
    _print_result(f"{index_dir} ({index.bits} bits, {result.extra['distance']}{how})", result)
    if plot is not None:
        console.print(f"PR curve: {plot}")


def _print_result(title: str, result: RetrievalResult) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row(f"mAP@{result.k}", f"{result.map_at_k:.4f}")
    for n, v in result.precision_at.items():
        table.add_row(f"precision@{n}", f"{v:.4f}")
    table.add_row("queries x database", f"{result.num_queries} x {result.num_database}")
    table.add_row("seconds", f"{result.seconds:.2f}")
    stdout.print(table)


@app.command()
def baseline(
    method: Annotated[str, typer.Argument(help="pq, opq, itq or exact (on raw pixels).")],
    bits: Annotated[int, typer.Option(help="Code length (M * log2(K)).")] = 32,
    num_codewords: Annotated[int, typer.Option("--codewords", help="K.")] = 16,
    run: Annotated[
        Path | None,
        typer.Option(help="A run or index: its database and queries (held-out ones included)."),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset reader name (default: the run's, or fashion-mnist).")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Dataset folder (default: the run's).")
    ] = None,
    topk: Annotated[int, typer.Option(help="K of mAP@K.")] = 1000,
    distance: Annotated[str, typer.Option(help="ADC distance for pq/opq.")] = "sqeuclidean",
    as_json: JsonOpt = False,
) -> None:
    """A shallow baseline on raw pixels (train part = database, test part = queries)."""
    from quantrieve.baselines import fit_baseline
    from quantrieve.config import num_books_for_bits
    from quantrieve.evaluate import evaluate_distances

    _check_distance(distance)
    retriever = Retriever.load(run) if run is not None else Retriever()
    parts, where = _run_parts(retriever, dataset, data_dir)
    database, queries = _pick(parts, where, None), _pick(parts, where, "test")
    if queries.labels is None or database.labels is None:
        raise DataError(
            f"{where['dataset']} at {where['root']} is unlabelled; a baseline needs labels "
            "to be scored"
        )
    books = num_books_for_bits(bits, num_codewords)
    fitted = fit_baseline(method, database.images, queries.images, books, num_codewords, distance)
    result = evaluate_distances(fitted.distances, queries.labels, database.labels, topk)
    if as_json:
        sys.stdout.write(
            json.dumps({"method": method, "bits": fitted.bits, **result.to_dict()}) + "\n"
        )
        return
    _print_result(f"{method} on raw pixels, {fitted.bits or 'full-precision'} bits", result)


@app.command("export-faiss")
def export_faiss_cmd(
    index_dir: Annotated[Path, typer.Argument(help="Index directory.")],
    out: Annotated[Path, typer.Argument(help="faiss index file to write.")],
    fast_scan: Annotated[
        bool,
        typer.Option(
            "--fast-scan",
            help="IndexPQFastScan (K=16): approximate, 8-bit look-up tables, no tie order.",
        ),
    ] = False,
    ivf: Annotated[
        int | None,
        typer.Option(help="IndexIVFPQ with this many inverted lists (search with nprobe)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing faiss index file.")
    ] = False,
) -> None:
    """Export codebooks and codes to a faiss index (squared-L2 ADC, like --distance sqeuclidean).

    IndexPQ ranks exactly as quantrieve's sqeuclidean search; --ivf N builds an inverted-file
    index over the same codes (exact at nprobe = N, faster and approximate below); --fast-scan
    quantizes the look-up tables to 8 bits (approximate)."""
    from quantrieve.index import PQIndex
    from quantrieve.index.faiss_export import check_faiss_output, export_faiss

    if fast_scan and ivf is not None:
        raise ConfigError("choose one of --fast-scan and --ivf")
    check_faiss_output(out, overwrite)
    index = PQIndex.load(index_dir)
    if ivf is not None:
        from quantrieve.index.ivf import build_ivf, estimate_memory, write_ivf

        m, k, d = index.codebooks.shape
        need = estimate_memory(len(index), m, bits_per_book(k), m * d, ivf)
        console.print(f"IVF of {len(index)} items, {ivf} lists: about {need.total / 1e6:.1f} MB")
        write_ivf(build_ivf(index, ivf), out, overwrite)
        console.print(f"faiss IndexIVFPQ (by_residual=False) -> {out}")
        return
    export_faiss(index, out, fast_scan, overwrite)
    console.print(
        f"faiss {'IndexPQFastScan' if fast_scan else 'IndexPQ'} of {len(index)} items -> {out}"
    )


@app.command()
def serve(
    index_dir: Annotated[Path, typer.Argument(help="Index directory to serve.")],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[
        int, typer.Option(help="Worker processes; more than 1 needs --read-only.")
    ] = 1,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Refuse adds and deletes; take no write lock.")
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="QUANTRIEVE_API_KEY",
            help="Key that adds and deletes must send (X-API-Key); or QUANTRIEVE_API_KEY.",
            show_default=False,
        ),
    ] = None,
    cors_origin: Annotated[
        list[str] | None,
        typer.Option("--cors-origin", help="Allow this origin by CORS (repeatable; off if none)."),
    ] = None,
    max_k: Annotated[int, typer.Option(help="Largest k of a search.")] = 100,
    max_batch: Annotated[
        int, typer.Option(help="Most queries (or added images) in one request.")
    ] = 16,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body, in MiB.")] = 16.0,
    device: DeviceOpt = "auto",
    threads: Annotated[
        int, typer.Option(help="torch threads per process (requests already run in parallel).")
    ] = 1,
    log_level: Annotated[str, typer.Option(help="debug, info, warning, error.")] = "info",
) -> None:
    """Serve an index over HTTP: search by image, item or embedding; add and delete items; a
    web page at /. The index is verified at start and its newest complete version served."""
    import logging
    import os

    import uvicorn

    from quantrieve.serve import ServeOptions, create_app
    from quantrieve.serve.app import OPTIONS_ENV

    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if workers > 1 and not read_only:
        raise ConfigError(
            f"--workers {workers} needs --read-only: with live adds and deletes one process "
            "holds the index in memory and its write lock, so every search sees every "
            "acknowledged change (searches run concurrently in its threads); separate worker "
            "processes would each hold their own copy. Serve changes with one worker, or add "
            "--read-only to spread searches over several processes"
        )
    for name, value in (("--max-k", max_k), ("--max-batch", max_batch), ("--threads", threads)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb must be > 0, got {max_upload_mb}")
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    options = ServeOptions(
        read_only=read_only,
        api_key=api_key or None,
        cors_origins=tuple(cors_origin or ()),
        max_k=max_k,
        max_batch=max_batch,
        max_upload_bytes=int(max_upload_mb * 2**20),
        device=device,
        torch_threads=threads,
    )
    application = create_app(index_dir, options)  # verifies the index before binding a port
    console.print(f"quantrieve search service on http://{host}:{port}/ (API: /docs)")
    if workers == 1:
        uvicorn.run(application, host=host, port=port, log_level=log_level.lower())
        return
    application.state.service.close()
    os.environ[OPTIONS_ENV] = json.dumps(
        {
            "index_dir": str(index_dir),
            "options": dataclasses.asdict(options),
            "log_level": log_level,
        }
    )
    uvicorn.run(
        "quantrieve.serve.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level.lower(),
    )


@app.command()
def compact(
    index_dir: Annotated[Path, typer.Argument(help="Index directory changed by a service.")],
) -> None:
    """Rewrite an index without its deleted items, its added items in one segment (item
    numbers kept). The new version is complete before the old one is removed; refused while a
    service writes to the index."""
    from quantrieve.index.compaction import compact as compact_index

    report = compact_index(index_dir)
    console.print(
        f"compacted {index_dir}: {report.items} items ({report.base_items} in the base, "
        f"{report.added_items} added, in one segment); {report.dropped} deleted items dropped, "
        f"{report.segments_before} segments merged; index version {report.generation}"
    )


@app.command()
def presets() -> None:
    """List the shipped presets."""
    for name in preset_names():
        config = load_config(name)
        console.print(
            f"{name}: {config.data.dataset}, {config.model.backbone} (width {config.model.width}), "
            f"{config.model.bits} bits, {config.loss.preset}, {config.train.epochs} epochs"
        )


@app.command()
def demo(
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Fashion-MNIST folder (default: Debian's).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/demo"),
    preset: Annotated[str, typer.Option(help="Training preset.")] = "fashion-mnist-demo",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Config override, e.g. train.epochs=2.")
    ] = None,
) -> None:
    """Short HQC run on Fashion-MNIST: train, encode, evaluate, top-10 grid, PQ comparison."""
    from quantrieve.experiments.demo import run_demo
    from quantrieve.experiments.figures import results_table

    epochs = load_config(preset, overrides=list(overrides or [])).train.epochs
    summary = run_demo(
        out,
        preset,
        data_dir,
        overrides,
        stage=console.rule,
        progress=progress_bar,
        on_epoch=lambda s: _print_epoch(s, epochs),
    )
    stdout.print(results_table(summary["rows"], summary["table_title"]))
    console.print(
        f"outputs in {out}/: results.json, retrieval_grid.png, pr_curve.png, index/, train/"
    )
    console.print(f"total {summary['seconds'] / 60:.1f} min")


@app.command()
def benchmark(
    protocol: Annotated[
        str, typer.Option(help="Evaluation protocol (see `quantrieve protocols`).")
    ] = "fashion-mnist",
    methods: Annotated[
        str,
        typer.Option(help=f"Comma-separated: {', '.join(METHODS)}, pq, opq, itq, exact."),
    ] = "hqc,spq,pq",
    bits: Annotated[
        str | None, typer.Option(help="Comma-separated code lengths; default: the protocol's.")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Training preset of the deep methods; default: protocol's.")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Output folder (default runs/benchmark-PROTOCOL)."),
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option("--data-dir", help="Dataset folder (default: the protocol's default root)."),
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Config override for every deep cell.")
    ] = None,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="Rewrite the report from finished cells.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Recompute finished cells.")] = False,
    seeds: Annotated[
        str | None,
        typer.Option(help="Comma-separated seeds: every cell once per seed, then aggregated."),
    ] = None,
) -> None:
    """Run a methods x bits grid under a protocol (resumable) and write report.md/json + PNGs."""
    from quantrieve.experiments.benchmark import run_benchmark
    from quantrieve.experiments.grid import check_methods, parse_bits, parse_list, parse_seeds
    from quantrieve.experiments.protocols import get_protocol
    from quantrieve.experiments.report import map_table, write_report

    spec = get_protocol(protocol)
    folder = out or Path("runs") / f"benchmark-{spec.name}"
    if report_only:
        write_report(folder)
    else:
        run_benchmark(
            spec,
            check_methods(parse_list(methods)),
            parse_bits(bits) if bits is not None else list(spec.bits),
            preset,
            folder,
            root=data_dir,
            overrides=overrides or [],
            force=force,
            seeds=parse_seeds(seeds) if seeds is not None else None,
            log=console.print,
            progress=progress_bar,
        )
    stdout.print(map_table(folder))
    console.print(f"report: {folder / 'report.md'}, {folder / 'report.json'}")


@app.command()
def protocols() -> None:
    """List the evaluation protocols (queries, database, mAP@K) of `quantrieve benchmark`."""
    from quantrieve.experiments.protocols import describe

    sys.stdout.write(describe() + "\n")


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


def main() -> None:
    """Entry point of the ``quantrieve`` command."""
    if from_environment().rank != 0:
        # Under torchrun, rank 0 alone talks (every rank runs the same command).
        console.quiet = stdout.quiet = True
        warnings.simplefilter("ignore", QuantrieveWarning)
    else:
        warnings.simplefilter("always", QuantrieveWarning)
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        app()
    except QuantrieveError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]; finished epochs are saved, use --resume")
        raise SystemExit(130) from None
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":
    main()
