"""The benchmark report: ``report.json`` and ``report.md`` (tables by method x bits, per-cell
precision and timing, the commands, the environment) from the finished cells."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from quantrieve.config import METHODS
from quantrieve.evaluate import PR_METHOD
from quantrieve.experiments.cells import load_cells, result_from_dict
from quantrieve.experiments.figures import plot_map_vs_bits, plot_pr_curves, pr_title
from quantrieve.experiments.grid import (
    SETUP_FILE,
    BenchmarkError,
    benchmark_commands,
    grid_cells,
    read_json,
)
from quantrieve.runtime.atomic import atomic_write_json
from quantrieve.runtime.run_info import environment


def method_rank(method: str) -> int:
    """Position in :data:`quantrieve.config.METHODS` (HQC, SPQ, ablations, pixel baselines),
    whatever the run order."""
    order = list(METHODS)
    return order.index(method) if method in order else len(order)


def ordered_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Cells by method (``METHODS`` order), code length and seed."""
    return sorted(cells, key=lambda c: (method_rank(c["method"]), c["bits"], c.get("seed") or 0))


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_count(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def _versions(versions: dict[str, str]) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def _fmt_seed(seed: int | None) -> str:
    return "–" if seed is None else str(seed)


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


def effective_k(protocol: dict[str, Any], cells: list[dict[str, Any]]) -> int:
    """K actually used (the evaluator clamps K to the database size)."""
    return cells[0]["result"]["k"] if cells else protocol["topk"]


def _markdown(report: dict[str, Any], figures: list[str]) -> str:
    protocol, setup, cells = report["protocol"], report["setup"], report["cells"]
    data = setup.get("data", {})
    k = effective_k(protocol, cells)
    deep = next((c for c in cells if c.get("kind") == "deep"), None)
    val_queries = deep["config"]["data"]["val_queries"] if deep else protocol["val_queries"]
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
    lines += ["", *map_section(report)]
    seeds = seeds_section(report)
    if seeds:
        lines += ["", *seeds]

    # Cut-offs beyond the database size were clamped by the evaluator: use the saved keys.
    cuts = list(cells[0]["result"]["precision_at"]) if cells else []
    lines += ["", "## Per cell", ""]
    # A grid run with --seeds has one cell per seed: the rows need the seed to be told apart.
    by_seed = len({c.get("seed") for c in cells if c.get("seed") is not None}) > 1
    header = [
        "method",
        "bits",
        *(["seed"] if by_seed else []),
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
            *([_fmt_seed(cell.get("seed"))] if by_seed else []),
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
    # What the cells ran with, which a later --report-only must not overwrite with its own.
    version_sets = list(dict.fromkeys(_versions(c["environment"]["versions"]) for c in cells)) or [
        _versions(env["versions"])
    ]
    commits = list(dict.fromkeys(c["environment"].get("git_commit") or "–" for c in cells))
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
        *(f"- Versions: {shown}" for shown in version_sets),
        f"- Git commit of the cells: {', '.join(f'`{c}`' for c in commits) or '–'}",
        f"- Cells ran on: {devices or '–'}",
        "- Cells finished: "
        + (", ".join(f"{c['cell']} {c['environment']['date']}" for c in cells) or "none"),
        f"- Report written {env['date']} at `{env['git_commit']}` (torch threads "
        f"{env['torch_threads']}, "
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
    setup = read_json(setup_path)
    cells = ordered_cells(load_cells(out_dir))
    done = {c["cell"] for c in cells}
    expected = setup.get("cells") or grid_cells(
        setup["methods"], setup["bits"], setup.get("seeds") or [0]
    )
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
    # One seed per curve: the grid's first seed (cells saved before seeds have none).
    first_seed = (setup.get("seeds") or [0])[0]
    ranked = [c for c in cells if _ranked_pr(c) and c.get("seed") in (None, first_seed)]
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
        k = effective_k(setup["protocol"], cells)
        title = f"{setup['protocol']['name']}: mAP@{k} vs code length"
        figures.append(plot_map_vs_bits(cells, out_dir / "map_vs_bits.png", title).name)
    report["figures"] = figures
    atomic_write_json(report, out_dir / "report.json")
    md = _markdown(report, figures)
    (out_dir / "report.md").write_text(md)
    return report


def map_section(report: dict[str, Any]) -> list[str]:
    """The mAP@K section of the report: a table of methods x code lengths, the methods'
    descriptions and the cells not computed yet (Markdown lines)."""
    protocol, setup, cells = report["protocol"], report["setup"], report["cells"]
    k = effective_k(protocol, cells)
    bits_cols = setup["bits"]
    by_key: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for c in cells:
        by_key.setdefault((c["method"], c["bits"]), []).append(c)
    several = any(len(group) > 1 for group in by_key.values())
    methods = sorted(
        dict.fromkeys([*setup["methods"], *(c["method"] for c in cells)]), key=method_rank
    )
    lines = [f"## mAP@{k}", ""]
    if several:
        lines += [
            f"Mean ± standard deviation over seeds {', '.join(map(str, setup['seeds']))} "
            "(n = cells finished); per-seed values and paired differences: section Seeds.",
            "",
        ]
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
            group = by_key.get((method, b))
            row.append("–" if method == "exact" or not group else _fmt_group(group, several))
        if has_exact:
            group = by_key.get((method, 0)) if method == "exact" else None
            row.append(_fmt_group(group, several) if group else "–")
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + [f"- `{m}`: {METHODS[m].description}" for m in methods if m in METHODS]
    missing = report["missing"]
    if missing:
        lines += ["", f"Not yet computed: {', '.join(missing)} (rerun the command to resume)."]
    return lines


def _fmt_group(group: list[dict[str, Any]], several: bool) -> str:
    """One cell's mAP, or mean ± sd (n) of a method's cells over seeds."""
    values = [c["result"]["map_at_k"] for c in group]
    if not several:
        return _fmt(values[0])
    mean = sum(values) / len(values)
    sd = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0
    return f"{mean:.4f} ± {sd:.4f} ({len(values)})"


def seeds_section(report: dict[str, Any]) -> list[str]:
    """Per-seed mAP of every method and code length, and paired differences on common seeds
    against the first deep method of the grid (Markdown lines; empty for one seed)."""
    cells = [c for c in report["cells"] if c["method"] != "exact"]
    seeds = report["setup"].get("seeds") or [0]
    if len(seeds) < 2:
        return []
    value = {(c["method"], c["bits"], c.get("seed") or 0): c["result"]["map_at_k"] for c in cells}
    methods = sorted(dict.fromkeys(c["method"] for c in cells), key=method_rank)
    bits_list = sorted({c["bits"] for c in cells})
    lines = ["## Seeds", "", "| method | bits | " + " | ".join(f"seed {s}" for s in seeds) + " |"]
    lines.append("|" + "---|" * (len(seeds) + 2))
    for method in methods:
        for bits in bits_list:
            row = [_fmt(value.get((method, bits, s))) for s in seeds]
            if any(r != "–" for r in row):
                lines.append(f"| {method} | {bits} | " + " | ".join(row) + " |")
    reference = next((m for m in methods if METHODS[m].kind == "deep"), None)
    rows = []
    for method in methods:
        if reference is None or method == reference:
            continue
        for bits in bits_list:
            common = [
                s for s in seeds if (reference, bits, s) in value and (method, bits, s) in value
            ]
            if not common:
                continue
            diffs = [value[(reference, bits, s)] - value[(method, bits, s)] for s in common]
            mean = sum(diffs) / len(diffs)
            sd = (
                (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5
                if len(diffs) > 1
                else 0.0
            )
            wins = sum(d > 0 for d in diffs)
            rows.append(
                f"| {method} | {bits} | {len(common)} | {mean:+.4f} | {sd:.4f} | "
                f"{wins} of {len(common)} |"
            )
    if not rows:  # one method: nothing to pair
        return lines
    return [
        *lines,
        "",
        f"Paired differences, `{reference}` minus each method, on the seeds both finished:",
        "",
        "| method | bits | seeds | mean difference | sd | " + f"{reference} better |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


def map_table(out_dir: str | Path) -> str:
    """The mAP@K section of the report in ``out_dir`` (what the CLI prints), made from
    ``report.json`` as ``report.md``'s is."""
    report = json.loads((Path(out_dir) / "report.json").read_text())
    return "\n".join(map_section(report)).strip()
