"""Benchmark grids: methods x code lengths under one protocol, resumable, with a report.

``run_benchmark`` evaluates every cell (method, bits) of a grid under a protocol
(:mod:`quantrieve.experiments.protocols`) and writes, under ``out_dir``::

    benchmark.json        setup: protocol, preset, overrides, data root, methods, bits, commands
    split/                the protocol's saved random query split (when it has one)
    runs/<method>-<bits>/ deep cells: the training run (log.jsonl, last.pt, model.pt) and index/
    cells/<cell>.json     one finished cell: mAP@K, precision@N, PR curve, timing, config
    report.json           every cell, the protocol, the exact command and the environment
    report.md             tables (mAP@K by method x bits; precision@N and timing per cell)
    pr_<bits>bits.png     PR curves of every method at that code length
    map_vs_bits.png       mAP@K against code length, one line per method

Deep methods share the preset, backbone, epochs and seed and differ only in the loss; their
code length sets ``model.num_books`` (bits = M * log2(K)). Shallow methods run on raw pixels of
the same database and queries with the same K. Shallow cells run first (they take seconds),
then the deep ones, method by method. Every cell is written atomically when it finishes, so a
rerun skips finished cells and an interrupted deep cell resumes its training from ``last.pt``.
The protocol's queries are evaluated once per cell; model selection uses the validation queries
the trainer carves from the training set.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quantrieve.api.retriever import Retriever
from quantrieve.baselines import fit_baseline
from quantrieve.config import METHODS as DEEP
from quantrieve.config import RunConfig, config_differences, load_config, num_books_for_bits
from quantrieve.errors import QuantrieveError
from quantrieve.evaluate import PR_METHOD, RetrievalResult, evaluate_distances
from quantrieve.experiments.figures import plot_pr_curves, pr_title
from quantrieve.experiments.protocols import Protocol, ProtocolData, get_protocol, materialize
from quantrieve.runtime.atomic import atomic_write_json
from quantrieve.runtime.device import resolve_device
from quantrieve.runtime.outputs import OutputKind, refuse_foreign
from quantrieve.runtime.progress import ProgressFactory
from quantrieve.runtime.run_info import environment

SETUP_FILE = "benchmark.json"
SETUP_KEYS = ("protocol", "preset", "overrides")
# What makes two protocols the same for resuming (descriptions may be reworded).
PROTOCOL_KEYS = ("name", "dataset", "topk", "num_queries", "train_is_database", "split_seed")
BASELINE_DISTANCE = "sqeuclidean"
BENCHMARK_KIND = OutputKind("benchmark folder", SETUP_FILE)


class BenchmarkError(QuantrieveError, ValueError):
    """A benchmark request or output folder that cannot be used; the message says why."""


@dataclass(frozen=True)
class GridMethod:
    """One row of the benchmark grid.

    Attributes:
        name: Registry name (``--methods``).
        kind: ``deep`` (trained encoder, :data:`quantrieve.config.METHODS`) or ``shallow``
            (raw-pixel baseline).
        description: One line for the report.
        overrides: Config overrides that define a deep method (applied after the user's).
    """

    name: str
    kind: str
    description: str
    overrides: tuple[str, ...] = ()


METHODS: dict[str, GridMethod] = {
    **{m.name: GridMethod(m.name, "deep", m.description, m.overrides) for m in DEEP.values()},
    **{
        m.name: m
        for m in (
            GridMethod("pq", "shallow", "faiss PQ on raw pixels (same M, K; squared-L2 ADC)"),
            GridMethod(
                "opq", "shallow", "faiss OPQ + PQ on raw pixels (same M, K; squared-L2 ADC)"
            ),
            GridMethod("itq", "shallow", "PCA + ITQ binary codes on raw pixels (Hamming)"),
            GridMethod("exact", "shallow", "exhaustive L2 on raw pixels (uncompressed reference)"),
        )
    },
}


def parse_list(text: str | Sequence[str]) -> list[str]:
    """``"a,b , c"`` or ``["a", "b,c"]`` to ``["a", "b", "c"]``."""
    items = [text] if isinstance(text, str) else list(text)
    return [x.strip() for item in items for x in item.split(",") if x.strip()]


def check_methods(methods: Sequence[str]) -> list[str]:
    """The methods, validated and without duplicates; the error names the unknown ones."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BenchmarkError(
            f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(METHODS)}"
        )
    if not methods:
        raise BenchmarkError(f"no method given; available: {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


def parse_bits(text: str | Sequence[int | str]) -> list[int]:
    """Code lengths from ``"16,32"`` or a sequence; each a positive integer."""
    items = parse_list(text) if isinstance(text, str) else [str(b) for b in text]
    try:
        bits = [int(b) for b in items]
    except ValueError:
        raise BenchmarkError(f"--bits must be comma-separated integers, got {text!r}") from None
    if any(b < 1 for b in bits):
        raise BenchmarkError(f"--bits must be positive, got {bits}")
    return sorted(dict.fromkeys(bits))


def cell_name(method: str, bits: int) -> str:
    """File stem of a cell: ``<method>-<bits>``, or ``exact-full`` for the uncompressed row."""
    return "exact-full" if method == "exact" else f"{method}-{bits}"


def _protocol_overrides(protocol: Protocol) -> list[str]:
    cuts = ",".join(str(n) for n in protocol.precision_at)
    return [
        f"data.dataset={protocol.dataset}",
        f"data.root={protocol.default_root}",
        f"data.val_queries={protocol.val_queries}",
        f"eval.topk={protocol.topk}",
        f"eval.precision_at=[{cuts}]",
    ]


def cell_config(
    preset: str | None,
    protocol: Protocol,
    root: str | Path,
    overrides: Sequence[str],
    method: str,
    bits: int,
) -> RunConfig:
    """Config of a deep cell: preset <- protocol <- user overrides <- data root <- method, bits."""
    extra = [
        *_protocol_overrides(protocol),
        *overrides,
        f"data.root={root}",
        *METHODS[method].overrides,
    ]
    config = load_config(preset, overrides=extra)
    config.model.num_books = num_books_for_bits(bits, config.model.num_codewords)
    return config.validate()


def training_stats(log_file: str | Path) -> dict[str, Any]:
    """Training time and throughput from a run's ``log.jsonl`` epoch records.

    An epoch logged twice (a stop between its log line and its checkpoint) counts once, with
    its last record. ``images_per_second`` is total images over total seconds.
    """
    epochs: dict[int, dict[str, Any]] = {}
    validations: dict[int, float] = {}
    path = Path(log_file)
    if path.is_file():
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            if record.get("kind") == "epoch":
                epochs[int(record["epoch"])] = record
            elif record.get("kind") == "validation":
                validations[int(record["epoch"])] = float(record["map_at_k"])
    seconds = sum(float(r["seconds"]) for r in epochs.values())
    images = sum(float(r["seconds"]) * float(r["images_per_second"]) for r in epochs.values())
    best_epoch = max(validations, key=lambda e: validations[e]) if validations else None
    return {
        "epochs": len(epochs),
        "seconds": seconds,
        "images_per_second": images / seconds if seconds > 0 else None,
        "seconds_per_epoch": seconds / len(epochs) if epochs else None,
        "best_epoch": best_epoch,
        "best_val_map": validations.get(best_epoch) if best_epoch is not None else None,
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: invalid JSON ({exc}); delete it to recompute") from None


# Where the data lies and which device trained a cell do not change what a cell measures.
_LOCATION_KEYS = frozenset({"data.root", "train.device"})


def _check_finished_config(path: Path, finished: dict[str, Any], config: RunConfig) -> None:
    """Refuse to keep a finished deep cell whose config is not the one the grid now resolves.

    Otherwise a changed preset or ``--set`` would silently mix configs in one report.
    """
    saved = finished.get("config")
    if not isinstance(saved, dict):
        raise BenchmarkError(f"{path}: finished cell without its config; delete it to recompute")
    changed = [key for key in config_differences(saved, config) if key not in _LOCATION_KEYS]
    if changed:
        raise BenchmarkError(
            f"{path} was finished with a different config (keys differ: {', '.join(changed)}); "
            f"use another --out, or delete it and its run folder "
            f"({path.parent.parent / 'runs' / path.stem}) to recompute it"
        )


def grid_cells(methods: Sequence[str], bits_list: Sequence[int]) -> list[str]:
    """Cell names of a methods x bits grid (``exact`` contributes one ``exact-full`` cell)."""
    names = [cell_name(m, b) for m in methods for b in ([0] if m == "exact" else bits_list)]
    return list(dict.fromkeys(names))


def _command(setup: dict[str, Any], methods: list[str], bits: list[int]) -> str:
    protocol = setup["protocol"]
    args = ["quantrieve", "benchmark", "--protocol", protocol["name"]]
    args += ["--methods", ",".join(methods)]
    if bits:
        args += ["--bits", ",".join(str(b) for b in bits)]
    if setup.get("preset"):
        args += ["--preset", setup["preset"]]
    args += ["--out", setup["out"]]
    if setup["root"] != protocol["default_root"]:
        args += ["--data-dir", setup["root"]]
    for item in setup["overrides"]:
        args += ["--set", item]
    return shlex.join(args)


def benchmark_commands(setup: dict[str, Any]) -> list[str]:
    """The ``quantrieve benchmark`` command lines that reproduce a setup's cells.

    Methods asked for at the same code lengths share one command, so a grid with ablations at
    32 bits only gives two lines; ``exact`` joins the first.
    """
    cells = setup.get("cells") or grid_cells(setup["methods"], setup["bits"])
    groups: dict[tuple[int, ...], list[str]] = {}
    for method in setup["methods"]:
        if method == "exact":
            continue
        bits = tuple(b for b in setup["bits"] if cell_name(method, b) in cells)
        if bits:
            groups.setdefault(bits, []).append(method)
    lines = [(methods, list(bits)) for bits, methods in groups.items()]
    if "exact-full" in cells:
        if lines:
            lines[0][0].append("exact")
        else:
            lines.append((["exact"], []))
    return [_command(setup, methods, bits) for methods, bits in lines]


def _merge_setup(out_dir: Path, setup: dict[str, Any]) -> dict[str, Any]:
    """Merge with an earlier setup in ``out_dir``; refuse a different protocol/preset/overrides."""
    path = out_dir / SETUP_FILE
    if path.is_file():
        old = _read_json(path)
        for key in SETUP_KEYS:
            before, now = old.get(key), setup[key]
            if key == "protocol" and isinstance(before, dict):
                before = {k: before.get(k) for k in PROTOCOL_KEYS}
                now = {k: now.get(k) for k in PROTOCOL_KEYS}
            if before != now:
                raise BenchmarkError(
                    f"{path}: this folder holds a benchmark with a different {key} "
                    f"({before!r}, now {now!r}); use another --out or the same "
                    "--protocol, --preset and --set values"
                )
        old_cells = old.get("cells") or grid_cells(old["methods"], old["bits"])
        setup["cells"] = list(dict.fromkeys([*old_cells, *setup["cells"]]))
        setup["methods"] = list(dict.fromkeys([*old["methods"], *setup["methods"]]))
        setup["bits"] = sorted(set(old["bits"]) | set(setup["bits"]))
        setup["commands"] = [*old.get("commands", []), *setup["commands"]]
    setup["command"] = "\n".join(benchmark_commands(setup))
    atomic_write_json(setup, path)
    return setup


def result_from_dict(data: dict[str, Any]) -> RetrievalResult:
    """Rebuild a :class:`RetrievalResult` from its saved ``to_dict`` form."""
    return RetrievalResult(
        map_at_k=data["map_at_k"],
        k=data["k"],
        precision_at={int(n): v for n, v in data["precision_at"].items()},
        pr_precision=list(data["pr_precision"]),
        pr_recall=list(data["pr_recall"]),
        num_queries=data["num_queries"],
        num_database=data["num_database"],
        seconds=data["seconds"],
        extra=dict(data.get("extra", {})),
        pr_method=data.get("pr_method", ""),  # absent: a threshold-based curve of old
    )


def _deep_cell(
    config: RunConfig,
    data: ProtocolData,
    run_dir: Path,
    log: Callable[[str], Any],
    step: ProgressFactory,
) -> dict[str, Any]:
    protocol = data.protocol
    resume = (run_dir / "last.pt").is_file()
    log(
        f"{'resuming' if resume else 'training'} {run_dir.name}: {config.model.backbone}, "
        f"{config.loss.preset}, {config.model.bits} bits, {config.train.epochs} epochs"
    )
    start = time.perf_counter()
    retriever = Retriever(config, device=config.train.device)
    retriever.fit(data.train, run_dir, resume=resume, progress=step("training"))
    index = retriever.build_index(
        data.database,
        config.eval.distance,
        source={"protocol": protocol.name, "dataset": protocol.dataset, "part": "database"},
        progress=step("embedding database"),
    )
    # The cell's own index, inside the benchmark's own folder.
    retriever.save(run_dir / "index", overwrite=True)
    result = retriever.evaluate(
        data.queries,
        protocol.topk,
        list(protocol.precision_at),
        progress=step("evaluating"),
    )
    stats = training_stats(run_dir / "log.jsonl")
    model = index.meta.get("model", {})
    # The weights actually evaluated: model.pt, the best epoch by validation mAP.
    stats["best_epoch"] = model.get("epoch", stats["best_epoch"])
    stats["best_val_map"] = model.get("val_map", stats["best_val_map"])
    return {
        "result": result.to_dict(),
        "train": stats,
        "distance": config.eval.distance,
        "run_dir": str(run_dir),
        "config": config.to_dict(),
        "device": str(resolve_device(config.train.device)),
        "wall_seconds": time.perf_counter() - start,
    }


def _shallow_cell(
    method: str, bits: int, num_codewords: int, seed: int, data: ProtocolData
) -> dict[str, Any]:
    protocol = data.protocol
    books = 1 if method == "exact" else num_books_for_bits(bits, num_codewords)
    start = time.perf_counter()
    fitted = fit_baseline(
        method,
        data.database.images,
        data.queries.images,
        books,
        num_codewords,
        BASELINE_DISTANCE,
        seed,
    )
    fit_seconds = time.perf_counter() - start
    assert data.queries.labels is not None and data.database.labels is not None
    result = evaluate_distances(
        fitted.distances,
        data.queries.labels,
        data.database.labels,
        protocol.topk,
        protocol.precision_at,
    )
    return {
        "result": result.to_dict(),
        "train": {"seconds": fit_seconds, "images_per_second": None, "epochs": None},
        "distance": {"pq": BASELINE_DISTANCE, "opq": BASELINE_DISTANCE, "itq": "hamming"}.get(
            method, "l2 (exact)"
        ),
        "num_books": None if method == "exact" else books,
        "num_codewords": None if method == "exact" else num_codewords,
        "device": "cpu",
        "wall_seconds": time.perf_counter() - start,
    }


def run_benchmark(
    protocol: str | Protocol,
    methods: Sequence[str],
    bits_list: Sequence[int],
    preset: str | None,
    out_dir: str | Path,
    root: str | Path | None = None,
    overrides: Sequence[str] = (),
    force: bool = False,
    log: Callable[[str], Any] | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """Run (or resume) a benchmark grid and write its report.

    Args:
        protocol: A :class:`~quantrieve.experiments.protocols.Protocol` or a registered name.
        methods: Names in :data:`METHODS` (deep and shallow may be mixed).
        bits_list: Code lengths; ``exact`` ignores them (one ``exact-full`` cell).
        preset: Training preset of the deep methods (default: the protocol's).
        out_dir: Output folder (see the module docstring for its layout).
        root: Dataset folder (default: ``data.root`` from ``overrides``, else the protocol's).
        overrides: ``section.key=value`` config overrides for every deep cell.
        force: Recompute finished cells (deep runs still resume from their ``last.pt``).
        log: Called with one line per cell (started, kept, its mAP).
        progress: Gives the ``progress(done, total)`` callback of a named step.

    Returns:
        The report (as written to ``report.json``).

    Raises:
        BenchmarkError: unknown method, bad bits, or an ``out_dir`` holding another setup.
        ConfigError: an invalid override or a code length that does not fit K.
    """
    if isinstance(protocol, str):
        protocol = get_protocol(protocol)
    say = log or (lambda _: None)
    step = progress or (lambda _: None)
    methods = check_methods(list(methods))
    bits_list = parse_bits(list(bits_list))
    if not bits_list and any(m != "exact" for m in methods):
        raise BenchmarkError("no code length given (--bits)")
    preset = preset or protocol.default_preset
    overrides = list(overrides)
    out_dir = Path(out_dir)
    refuse_foreign(out_dir, BENCHMARK_KIND, hint=f"runs/benchmark-{protocol.name}")
    base_config = load_config(preset, overrides=[*_protocol_overrides(protocol), *overrides])
    root = str(root if root is not None else base_config.data.root)

    # Resolve every cell's config before any work, so a bad key fails at once.
    cells: list[tuple[str, int, RunConfig | None]] = []
    shallow = [m for m in methods if METHODS[m].kind == "shallow"]
    deep = [m for m in methods if METHODS[m].kind == "deep"]
    for method in shallow:
        for bits in [0] if method == "exact" else bits_list:
            if method != "exact":
                num_books_for_bits(bits, base_config.model.num_codewords)
            cells.append((method, bits, None))
    for method in deep:
        for bits in bits_list:
            cells.append(
                (method, bits, cell_config(preset, protocol, root, overrides, method, bits))
            )

    setup = _merge_setup(
        out_dir,
        {
            "protocol": protocol.to_dict(),
            "preset": preset,
            "overrides": overrides,
            "root": root,
            "out": str(out_dir),
            "methods": methods,
            "bits": bits_list,
            "cells": grid_cells(methods, bits_list),
            "commands": [" ".join(sys.argv)],
        },
    )
    data = materialize(
        protocol,
        root,
        out_dir / "split",
        base_config.data.image_size or None,
        step("decoding images"),
    )
    setup["data"] = data.summary()
    atomic_write_json(setup, out_dir / SETUP_FILE)
    device = str(resolve_device(base_config.train.device))
    for method, bits, config in cells:
        name = cell_name(method, bits)
        path = out_dir / "cells" / f"{name}.json"
        if path.is_file() and not force:
            finished = _read_json(path)
            if config is not None:
                _check_finished_config(path, finished, config)
            say(f"{name}: finished earlier, kept ({path})")
            continue
        if config is None:
            say(f"{name}: fitting on {len(data.database):,} database images")
            body = _shallow_cell(
                method, bits, base_config.model.num_codewords, base_config.train.seed, data
            )
        else:
            body = _deep_cell(config, data, out_dir / "runs" / name, say, step)
        cell = {
            "cell": name,
            "method": method,
            "kind": METHODS[method].kind,
            "description": METHODS[method].description,
            "bits": bits,
            "protocol": protocol.name,
            "data": data.summary(),
            **body,
            "environment": environment(str(body.get("device", device))),
        }
        atomic_write_json(cell, path)
        result = cell["result"]
        say(f"{name}: mAP@{result['k']} = {result['map_at_k']:.4f}")
    return write_report(out_dir)


def load_cells(out_dir: str | Path) -> list[dict[str, Any]]:
    """Every finished cell in ``out_dir/cells``, in file-name order."""
    folder = Path(out_dir) / "cells"
    return [_read_json(p) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def _method_rank(method: str) -> int:
    """Position in ``METHODS`` (HQC, SPQ, ablations, pixel baselines), whatever the run order."""
    order = list(METHODS)
    return order.index(method) if method in order else len(order)


def _ordered_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(cells, key=lambda c: (_method_rank(c["method"]), c["bits"]))


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_count(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _ranked_pr(cell: dict[str, Any]) -> bool:
    """The cell's PR curve was computed per query by ranking (not at shared thresholds)."""
    return cell["result"].get("pr_method") == PR_METHOD


def _effective_k(protocol: dict[str, Any], cells: list[dict[str, Any]]) -> int:
    """K actually used (the evaluator clamps K to the database size)."""
    return cells[0]["result"]["k"] if cells else protocol["topk"]


def plot_map_vs_bits(
    cells: list[dict[str, Any]], path: str | Path, title: str = "mAP vs code length"
) -> Path:
    """One line per method of mAP@K against bits; ``exact`` as a horizontal reference."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    by_method: dict[str, list[tuple[int, float]]] = {}
    for cell in cells:
        by_method.setdefault(cell["method"], []).append((cell["bits"], cell["result"]["map_at_k"]))
    bits_seen = sorted({c["bits"] for c in cells if c["method"] != "exact"})
    for method, points in by_method.items():
        if method == "exact":
            ax.axhline(points[0][1], color="gray", linestyle="--", label="exact (pixels)")
            continue
        points.sort()
        ax.plot([b for b, _ in points], [m for _, m in points], marker="o", label=method)
    if bits_seen:
        ax.set_xscale("log", base=2)
        ax.set_xticks(bits_seen, [str(b) for b in bits_seen])
        ax.minorticks_off()
    ax.set_xlabel("bits")
    ax.set_ylabel(f"mAP@{cells[0]['result']['k']}" if cells else "mAP")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _markdown(report: dict[str, Any], figures: list[str]) -> str:
    protocol, setup, cells = report["protocol"], report["setup"], report["cells"]
    data = setup.get("data", {})
    k = _effective_k(protocol, cells)
    deep = next((c for c in cells if c.get("kind") == "deep"), None)
    val_queries = deep["config"]["data"]["val_queries"] if deep else protocol["val_queries"]
    bits_cols = setup["bits"]
    by_key = {(c["method"], c["bits"]): c for c in cells}
    methods = sorted(
        dict.fromkeys([*setup["methods"], *(c["method"] for c in cells)]), key=_method_rank
    )
    lines = [
        f"# Benchmark: {protocol['name']}",
        "",
        protocol["description"],
        "",
        f"- Queries: {_fmt_count(data.get('queries'))} ({protocol['queries']}); database: "
        f"{_fmt_count(data.get('database'))} ({protocol['database']}); training set "
        f"{'= database' if protocol['train_is_database'] else 'separate'} "
        f"({_fmt_count(data.get('train'))} images, no labels used).",
        f"- Model selection: {val_queries:,} validation queries carved from the training set "
        "(`data.val_queries`); the test queries are evaluated once per cell.",
        f"- Deep methods: preset `{setup['preset']}`, same backbone, epochs and seed; bits = "
        "M * log2(K). Shallow methods: raw pixels, same K, squared-L2 ADC (ITQ: Hamming).",
    ]
    if data.get("split_sha256"):
        lines.append(
            f"- Query split: `{data['split_dir']}/splits.npz`, SHA-256 `{data['split_sha256']}`."
        )
    lines += ["", f"## mAP@{k}", ""]
    if k != protocol["topk"]:
        lines += [
            f"K of the protocol ({protocol['topk']}) exceeds the database: clamped to {k}.",
            "",
        ]
    header = ["method", *(f"{b} bits" for b in bits_cols)]
    has_exact = any(c["method"] == "exact" for c in cells) or "exact" in methods
    if has_exact:
        header.append("uncompressed")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method in methods:
        row = [method]
        for b in bits_cols:
            cell = by_key.get((method, b))
            row.append(
                "–" if method == "exact" or cell is None else _fmt(cell["result"]["map_at_k"])
            )
        if has_exact:
            cell = by_key.get((method, 0)) if method == "exact" else None
            row.append(_fmt(cell["result"]["map_at_k"]) if cell else "–")
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"- `{m}`: {METHODS[m].description}" for m in methods if m in METHODS]
    missing = report["missing"]
    if missing:
        lines += ["", f"Not yet computed: {', '.join(missing)} (rerun the command to resume)."]

    # Cut-offs beyond the database size were clamped by the evaluator: use the saved keys.
    cuts = list(cells[0]["result"]["precision_at"]) if cells else []
    lines += ["", "## Per cell", ""]
    header = [
        "method",
        "bits",
        f"mAP@{k}",
        *(f"P@{n}" for n in cuts),
        "train time",
        "images/s",
        "best val epoch",
        "best val mAP",
        "eval s",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        result, train = cell["result"], cell.get("train", {})
        row = [
            cell["method"],
            "full" if cell["method"] == "exact" else str(cell["bits"]),
            _fmt(result["map_at_k"]),
            *(_fmt(result["precision_at"].get(n)) for n in cuts),
            _duration(train.get("seconds")),
            _fmt_count(train.get("images_per_second")),
            str(train.get("best_epoch") or "–"),
            _fmt(train.get("best_val_map")),
            f"{result['seconds']:.1f}",
        ]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Train time: sum of the logged epoch times (augmentation, forward, backward; without "
        "validation), or the fit time of a shallow baseline. images/s: training images per "
        "second over those epochs.",
    ]
    left_out = report.get("pr_left_out") or []
    if figures or left_out:
        lines += ["", "## Figures", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in figures]
    if left_out:
        lines += [""] if figures else []
        lines.append(
            f"No PR curve for {', '.join(left_out)}: these cells were saved with a curve taken "
            "at distance thresholds shared by all queries, which is not comparable across "
            "queries or methods (PR curves are now taken per query, by ranking). "
            "Re-evaluating those cells (rerun the command after deleting their "
            "`cells/<cell>.json`) draws them. A `pr_<bits>bits.png` not shown above is left "
            "over from an earlier report."
        )
    env = report["environment"]
    devices = "; ".join(
        dict.fromkeys(
            f"{c['environment']['device']}"
            + (f" ({c['environment']['gpu']})" if c["environment"].get("gpu") else "")
            + f", torch threads {c['environment']['torch_threads']}"
            for c in cells
        )
    )
    versions = env["versions"]
    shown = ", ".join(f"{name} {version}" for name, version in versions.items())
    lines += [
        "",
        "## Command",
        "",
        "```bash",
        "\n".join(benchmark_commands(setup)),
        "```",
        "",
        "## Environment",
        "",
        f"- Versions: {shown}",
        f"- Git commit: `{env['git_commit']}`",
        f"- Cells ran on: {devices or '–'}",
        "- Cells finished: "
        + (", ".join(f"{c['cell']} {c['environment']['date']}" for c in cells) or "none"),
        f"- Report written {env['date']} (torch threads {env['torch_threads']}, "
        f"{env['cpu_count']} CPU cores, device {env['device']})",
        "",
    ]
    return "\n".join(lines)


def write_report(out_dir: str | Path) -> dict[str, Any]:
    """Write ``report.json``, ``report.md`` and the figures from the cells in ``out_dir``.

    Works on a partial grid (unfinished cells are listed as missing).

    Raises:
        BenchmarkError: ``out_dir`` holds no ``benchmark.json``.
    """
    out_dir = Path(out_dir)
    setup_path = out_dir / SETUP_FILE
    if not setup_path.is_file():
        raise BenchmarkError(f"{out_dir}: no {SETUP_FILE}; run `quantrieve benchmark` first")
    setup = _read_json(setup_path)
    cells = _ordered_cells(load_cells(out_dir))
    done = {c["cell"] for c in cells}
    expected = setup.get("cells") or grid_cells(setup["methods"], setup["bits"])
    device = next((c["device"] for c in cells if c.get("kind") == "deep"), None)
    report = {
        "protocol": setup["protocol"],
        "setup": setup,
        "command": "\n".join(benchmark_commands(setup)),
        "environment": environment(device),
        "cells": cells,
        "missing": [name for name in expected if name not in done],
    }
    figures: list[str] = []
    # Cells saved before the PR curve was computed per query by ranking hold a curve at
    # distance thresholds shared by all queries: not comparable, so they are left out.
    ranked = [c for c in cells if _ranked_pr(c)]
    report["pr_left_out"] = [c["cell"] for c in cells if not _ranked_pr(c)]
    exact = [c for c in ranked if c["method"] == "exact"]
    for bits in sorted({c["bits"] for c in ranked if c["method"] != "exact"}):
        shown = [c for c in ranked if c["bits"] == bits and c["method"] != "exact"] + exact
        curves = {
            "exact (pixels)"
            if c["method"] == "exact"
            else f"{c['method']} ({c.get('distance')})": result_from_dict(c["result"])
            for c in shown
        }
        by_distance: dict[str, list[str]] = {}
        for c in shown:  # e.g. "l2 (hqc, spq); sqeuclidean (pq, opq); l2 (exact)"
            methods = by_distance.setdefault(str(c.get("distance")), [])
            methods += [] if c["method"] == "exact" else [c["method"]]
        title = pr_title(
            f"{setup['protocol']['name']} ({_fmt_count(setup.get('data', {}).get('queries'))} "
            "queries)",
            bits,
            "; ".join(f"{d} ({', '.join(m)})" if m else d for d, m in by_distance.items()),
        )
        figures.append(plot_pr_curves(curves, out_dir / f"pr_{bits}bits.png", title).name)
    if cells:
        k = _effective_k(setup["protocol"], cells)
        title = f"{setup['protocol']['name']}: mAP@{k} vs code length"
        figures.append(plot_map_vs_bits(cells, out_dir / "map_vs_bits.png", title).name)
    report["figures"] = figures
    atomic_write_json(report, out_dir / "report.json")
    md = _markdown(report, figures)
    (out_dir / "report.md").write_text(md)
    return report


def map_table(out_dir: str | Path) -> str:
    """The mAP@K table of ``out_dir/report.md`` (what the CLI prints)."""
    md = (Path(out_dir) / "report.md").read_text()
    return md[md.index("## mAP@") : md.index("## Per cell")].strip()
