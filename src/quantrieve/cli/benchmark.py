"""``quantrieve benchmark`` and ``quantrieve protocols``: a methods x bits grid under an
evaluation protocol, and the list of protocols."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from quantrieve.cli.options import data_dir_option, set_option
from quantrieve.cli.terminal import console, progress_bar, stdout
from quantrieve.config import METHODS

ProtocolOpt = Annotated[str, typer.Option(help="Evaluation protocol (see `quantrieve protocols`).")]
MethodsOpt = Annotated[
    str,
    typer.Option(help=f"Comma-separated: {', '.join(METHODS)}."),
]
BitsOpt = Annotated[
    str | None, typer.Option(help="Comma-separated code lengths; default: the protocol's.")
]
PresetOpt = Annotated[
    str | None, typer.Option(help="Training preset of the deep methods; default: protocol's.")
]
OutOpt = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Output folder (default runs/benchmark-PROTOCOL)."),
]
DataDirOpt = data_dir_option("Dataset folder (default: the protocol's default root).")
SetOpt = set_option("Config override for every deep cell.")
ReportOnlyOpt = Annotated[
    bool, typer.Option("--report-only", help="Rewrite the report from finished cells.")
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Recompute finished cells.")]
SeedsOpt = Annotated[
    str | None,
    typer.Option(help="Comma-separated seeds: every cell once per seed, then aggregated."),
]


def benchmark(
    protocol: ProtocolOpt = "fashion-mnist",
    methods: MethodsOpt = "hqc,spq,pq",
    bits: BitsOpt = None,
    preset: PresetOpt = None,
    out: OutOpt = None,
    data_dir: DataDirOpt = None,
    overrides: SetOpt = None,
    report_only: ReportOnlyOpt = False,
    force: ForceOpt = False,
    seeds: SeedsOpt = None,
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


def protocols() -> None:
    """List the evaluation protocols (queries, database, mAP@K) of `quantrieve benchmark`."""
    from quantrieve.experiments.protocols import describe

    sys.stdout.write(describe() + "\n")
