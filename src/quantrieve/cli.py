"""The ``quantrieve`` command: train, encode, search, evaluate, baseline, export, demo.

Errors a user can fix (a bad config key, a missing file, a malformed dataset) are printed as one
line naming the file, line or key at fault, with exit code 2; no traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from quantrieve.config import (
    DISTANCES,
    LOSS_PRESETS,
    ConfigError,
    RunConfig,
    load_config,
    num_books_for_bits,
    preset_names,
)
from quantrieve.data import DataError, ImageSet, read_dataset
from quantrieve.errors import QuantrieveError
from quantrieve.index.store import IndexFormatError, PQIndex
from quantrieve.progress import CountingProgress, console, stdout
from quantrieve.train.trainer import TrainingError

app = typer.Typer(
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Fully unsupervised image retrieval with learned product quantization (HQC).",
)

USER_ERRORS = (
    QuantrieveError,
    ConfigError,
    DataError,
    IndexFormatError,
    TrainingError,
    FileNotFoundError,
    ValueError,
)

DataDirOpt = Annotated[
    str | None, typer.Option("--data-dir", help="Dataset folder (default: the config's data.root).")
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _resolve_config(
    preset: str | None,
    config_file: Path | None,
    overrides: list[str] | None,
    bits: int | None,
    method: str | None,
    data_dir: str | None,
) -> RunConfig:
    extra = list(overrides or [])
    if method is not None:
        extra.insert(0, f"loss.preset={method}")
    if data_dir is not None:
        extra.insert(0, f"data.root={data_dir}")
    config = load_config(preset, config_file, extra)
    if bits is not None:
        config.model.num_books = num_books_for_bits(bits, config.model.num_codewords)
        config.validate()
    return config


def _model_image_size(model_file: Path) -> int:
    """The square input size a model was trained on (datasets of image files are decoded to it)."""
    from quantrieve.encode import RetrievalModel

    return RetrievalModel.load(model_file).image_size


def _positive_ints(text: str, option: str) -> list[int]:
    """Parse a comma-separated list of integers >= 1, naming the option on error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option} values must be >= 1, got '{text}'")
    return values


def _read_part(dataset: str, root: str, part: str, image_size: int | None = None) -> ImageSet:
    parts = read_dataset(dataset, root, image_size, CountingProgress("decoding images"))
    if part not in parts:
        raise DataError(
            f"dataset '{dataset}' at {root} has no part '{part}' (has: {', '.join(parts)})"
        )
    return parts[part]


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
    method: Annotated[
        str | None, typer.Option(help=f"Loss preset: {', '.join(LOSS_PRESETS)}.")
    ] = None,
    data_dir: DataDirOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out.")] = False,
) -> None:
    """Train an encoder from scratch, without labels. Writes model.pt (best by validation mAP)."""
    from quantrieve.pipeline import train_run

    if resume:
        if preset is not None or config_file is not None:
            raise TrainingError(
                "--resume continues with the run's saved config.json; drop --preset / --config "
                "(or start a new run in another --out)"
            )
        saved = out / "config.json"
        if not saved.is_file():
            raise TrainingError(f"--resume given but {saved} does not exist")
        config = _resolve_config(None, saved, overrides, bits, method, data_dir)
    else:
        config = _resolve_config(preset, config_file, overrides, bits, method, data_dir)
    console.print(
        f"training {config.model.backbone} / {config.loss.preset}, {config.model.bits} bits "
        f"(M={config.model.num_books}, K={config.model.num_codewords}), "
        f"{config.train.epochs} epochs -> {out}"
    )
    train_run(config, out, resume=resume)
    console.print(f"done: model {out / 'model.pt'}, log {out / 'log.jsonl'}")


@app.command()
def encode(
    model: Annotated[Path, typer.Argument(help="model.pt or a run directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Index directory to write.")],
    dataset: Annotated[str, typer.Option(help="Dataset reader name.")] = "fashion-mnist",
    data_dir: DataDirOpt = None,
    part: Annotated[str, typer.Option(help="Dataset part to encode as the database.")] = "train",
    distance: Annotated[str, typer.Option(help=f"Default ranking distance: {DISTANCES}.")] = "l2",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing index at --out.")
    ] = False,
) -> None:
    """Encode a dataset part into an index directory (uint8 codes + codebooks + ids + labels)."""
    from quantrieve.index.store import check_index_output
    from quantrieve.pipeline import encode_index, resolve_model_file

    check_index_output(out, overwrite)
    root = data_dir or RunConfig().data.root

    database = _read_part(dataset, root, part, _model_image_size(resolve_model_file(model)))
    index = encode_index(
        model,
        database,
        out,
        distance,
        device,
        source={"dataset": dataset, "root": str(root), "part": part},
        overwrite=overwrite,
    )
    console.print(
        f"index of {len(index)} items, {index.bits} bits ({index.num_books} x "
        f"{index.num_codewords} codewords, {index.codes.nbytes / 1e6:.2f} MB of codes) -> {out}"
    )


def _queries(
    index_dir: Path,
    images: list[Path] | None,
    dataset: str | None,
    data_dir: str | None,
    part: str,
    items: str | None,
) -> tuple[np.ndarray, list[str], np.ndarray | None]:
    from quantrieve.data.images import load_image_file
    from quantrieve.encode import RetrievalModel
    from quantrieve.index.store import model_path

    if images:
        model = RetrievalModel.load(model_path(index_dir))
        arrays = [load_image_file(p, model.image_size, model.channels) for p in images]
        return np.stack(arrays), [str(p) for p in images], None
    if dataset is None:
        raise ConfigError("give query images with --image FILE, or --dataset (with --items)")
    root = data_dir or RunConfig().data.root
    source = _read_part(dataset, root, part, _model_image_size(model_path(index_dir)))
    if items is None:
        idx = np.arange(len(source))
    else:
        try:
            idx = np.array([int(i) for i in items.split(",") if i.strip()])
        except ValueError:
            raise ConfigError(f"--items must be comma-separated integers, got '{items}'") from None
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= len(source):
            raise ConfigError(f"--items must lie in [0, {len(source)}) for {dataset}/{part}")
    sub = source.subset(idx)
    return sub.images, sub.ids, sub.labels


@app.command()
def search(
    index_dir: Annotated[Path, typer.Argument(help="Index directory.")],
    images: Annotated[
        list[Path] | None, typer.Option("--image", help="Query image file(s).")
    ] = None,
    dataset: Annotated[str | None, typer.Option(help="Take queries from this dataset.")] = None,
    data_dir: DataDirOpt = None,
    part: Annotated[str, typer.Option(help="Dataset part of the queries.")] = "test",
    items: Annotated[str | None, typer.Option(help="Comma-separated item numbers.")] = None,
    k: Annotated[int, typer.Option("-k", help="Results per query.")] = 10,
    distance: Annotated[
        str | None, typer.Option(help=f"{DISTANCES}; default: the index's.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Top-k database items for query images, by ADC with a per-query look-up table."""
    from quantrieve.pipeline import embed_queries, search_index

    if k < 1:
        raise ConfigError(f"-k must be >= 1, got {k}")
    index = PQIndex.load(index_dir)
    query_images, query_ids, _ = _queries(index_dir, images, dataset, data_dir, part, items)
    f = embed_queries(index_dir, query_images, device, show_progress=len(query_images) > 5000)
    results = search_index(index, f, k, distance)
    if as_json:
        payload = [
            {"query": q, "results": [h.__dict__ for h in hits]}
            for q, hits in zip(query_ids, results, strict=True)
        ]
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    for q, hits in zip(query_ids, results, strict=True):
        table = Table(title=f"query {q}")
        for column in ("rank", "item", "id", "distance", "labels"):
            table.add_column(column)
        for h in hits:
            table.add_row(str(h.rank), str(h.index), h.id, f"{h.distance:.4f}", ", ".join(h.labels))
        stdout.print(table)


@app.command()
def evaluate(
    index_dir: Annotated[Path, typer.Argument(help="Labelled index directory (the database).")],
    dataset: Annotated[str, typer.Option(help="Dataset of the queries.")] = "fashion-mnist",
    data_dir: DataDirOpt = None,
    part: Annotated[str, typer.Option(help="Dataset part used as queries.")] = "test",
    topk: Annotated[int, typer.Option(help="K of mAP@K.")] = 1000,
    precision_at: Annotated[str, typer.Option(help="Cut-offs of precision@N.")] = "10,100,1000",
    distance: Annotated[
        str | None, typer.Option(help=f"{DISTANCES}; default: the index's.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the PR curve PNG here.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda.")] = "auto",
    as_json: JsonOpt = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --plot file.")
    ] = False,
) -> None:
    """mAP@K, precision@N and PR curve of labelled queries against an index."""
    from quantrieve.runtime.outputs import check_new_file

    if plot is not None:
        check_new_file(plot, overwrite, "PR curve")
    from quantrieve.pipeline import embed_queries, evaluate_index
    from quantrieve.report import plot_pr_curves, pr_title

    index = PQIndex.load(index_dir)
    root = data_dir or RunConfig().data.root
    from quantrieve.index.store import model_path

    queries = _read_part(dataset, root, part, _model_image_size(model_path(index_dir)))
    if queries.labels is None:
        raise DataError(f"{dataset}/{part} has no labels; evaluation needs labelled queries")
    cuts = _positive_ints(precision_at, "--precision-at")
    if topk < 1:
        raise ConfigError(f"--topk must be >= 1, got {topk}")
    f = embed_queries(index_dir, queries.images, device)
    result = evaluate_index(index, f, queries.labels, topk, cuts, distance)
    if plot is not None:
        title = pr_title(
            f"{dataset}/{part} ({result.num_queries:,} queries vs "
            f"{result.num_database:,} indexed items)",
            index.bits,
            f"{result.extra['distance']} ADC",
        )
        plot_pr_curves({f"{index.bits} bits": result}, plot, title)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2) + "\n")
        return
    _print_result(f"{index_dir} ({index.bits} bits, {result.extra['distance']})", result)
    if plot is not None:
        console.print(f"PR curve: {plot}")


def _print_result(title: str, result) -> None:
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
    dataset: Annotated[str, typer.Option(help="Dataset reader name.")] = "fashion-mnist",
    data_dir: DataDirOpt = None,
    topk: Annotated[int, typer.Option(help="K of mAP@K.")] = 1000,
    distance: Annotated[str, typer.Option(help="ADC distance for pq/opq.")] = "sqeuclidean",
    as_json: JsonOpt = False,
) -> None:
    """A shallow baseline on raw pixels (train part = database, test part = queries)."""

    from quantrieve.baselines import fit_baseline
    from quantrieve.pipeline import evaluate_distances

    root = data_dir or RunConfig().data.root
    database, queries = _read_part(dataset, root, "train"), _read_part(dataset, root, "test")
    if queries.labels is None or database.labels is None:
        raise DataError(f"{dataset} at {root} is unlabelled; a baseline needs labels to be scored")
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
    fast_scan: Annotated[bool, typer.Option("--fast-scan", help="IndexPQFastScan (K=16).")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing faiss index file.")
    ] = False,
) -> None:
    """Export codebooks and codes to a faiss index (squared-L2 ADC, like --distance sqeuclidean)."""
    from quantrieve.index.faiss_export import check_faiss_output, export_faiss

    check_faiss_output(out, overwrite)
    index = PQIndex.load(index_dir)
    export_faiss(index, out, fast_scan, overwrite)
    console.print(
        f"faiss {'IndexPQFastScan' if fast_scan else 'IndexPQ'} of {len(index)} items -> {out}"
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
    data_dir: DataDirOpt = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("runs/demo"),
    preset: Annotated[str, typer.Option(help="Training preset.")] = "fashion-mnist-demo",
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Config override, e.g. train.epochs=2.")
    ] = None,
) -> None:
    """Short HQC run on Fashion-MNIST: train, encode, evaluate, top-10 grid, PQ comparison."""
    from quantrieve.report import run_demo

    run_demo(out, preset, data_dir, overrides)


@app.command()
def benchmark(
    protocol: Annotated[
        str, typer.Option(help="Evaluation protocol (see `quantrieve protocols`).")
    ] = "fashion-mnist",
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated: hqc, spq, hqc-ref, hqc-no-cc, hqc-no-pn, hqc-no-cd, "
            "pq, opq, itq, exact."
        ),
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
) -> None:
    """Run a methods x bits grid under a protocol (resumable) and write report.md/json + PNGs."""
    from quantrieve.benchmark import (
        check_methods,
        map_table,
        parse_bits,
        parse_list,
        run_benchmark,
        write_report,
    )
    from quantrieve.protocols import get_protocol

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
        )
    stdout.print(map_table(folder))
    console.print(f"report: {folder / 'report.md'}, {folder / 'report.json'}")


@app.command()
def protocols() -> None:
    """List the evaluation protocols (queries, database, mAP@K) of `quantrieve benchmark`."""
    from quantrieve.protocols import describe

    sys.stdout.write(describe() + "\n")


def main() -> None:
    try:
        app()
    except USER_ERRORS as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]; finished epochs are saved, use --resume")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
