"""``quantrieve demo``: a short HQC run on Fashion-MNIST, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from quantrieve.cli.options import data_dir_option, out_option, set_option
from quantrieve.cli.terminal import console, print_epoch, progress_bar, stdout
from quantrieve.config import load_config

DataDirOpt = data_dir_option("Fashion-MNIST folder (default: Debian's).")
OutOpt = out_option("Output folder.")
PresetOpt = Annotated[str, typer.Option(help="Training preset.")]
SetOpt = set_option("Config override, e.g. train.epochs=2.")


def demo(
    data_dir: DataDirOpt = None,
    out: OutOpt = Path("runs/demo"),
    preset: PresetOpt = "fashion-mnist-demo",
    overrides: SetOpt = None,
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
        on_epoch=lambda s: print_epoch(s, epochs),
    )
    stdout.print(results_table(summary["rows"], summary["table_title"]))
    console.print(
        f"outputs in {out}/: results.json, retrieval_grid.png, pr_curve.png, index/, train/"
    )
    console.print(f"total {summary['seconds'] / 60:.1f} min")
