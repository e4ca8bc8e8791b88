"""The options several commands share, declared once, and the checks of option values.

Options whose meaning is the same everywhere are ``Annotated`` aliases (``DeviceOpt``); those
whose help names what the command writes or reads are made by a function of that text
(:func:`overwrite_option`). Each command module imports from here and from
:mod:`quantrieve.cli.terminal`, never from another command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from quantrieve.config import DISTANCES, ConfigError

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
RefineExpandOpt = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Query expansion of the refined head: n > 0 re-scores it once more against the "
        "mean of the query and its first n refined results (default: the index's; 0: off).",
    ),
]
# Positions in a dataset part: rows, not items (an item is a stable number in an index).
# --items, the old name, still works.
RowsOpt = Annotated[
    str | None,
    typer.Option(
        "--rows",
        "--items",
        help="Comma-separated rows (positions) of the dataset part to take the queries from.",
    ),
]
DistanceOpt = Annotated[str | None, typer.Option(help=f"{DISTANCES}; default: the index's.")]
IndexDirArg = Annotated[Path, typer.Argument(help="Index directory.")]


def overwrite_option(what: str) -> Any:
    """``--overwrite``: replace an existing ``what`` (an ``Annotated`` bool option)."""
    return Annotated[bool, typer.Option("--overwrite", help=f"Replace an existing {what}.")]


def set_option(help_text: str) -> Any:
    """``--set section.key=value`` (repeatable): the user's config overrides, as text."""
    return Annotated[list[str] | None, typer.Option("--set", help=help_text)]


def data_dir_option(help_text: str) -> Any:
    """``--data-dir`` with a command's own help (:data:`DataDirOpt` for the usual one)."""
    return Annotated[str | None, typer.Option("--data-dir", help=help_text)]


def out_option(help_text: str) -> Any:
    """``--out`` / ``-o``: the path a command writes."""
    return Annotated[Path, typer.Option("--out", "-o", help=help_text)]


def positive_ints(text: str, option: str) -> list[int]:
    """Parse a comma-separated list of integers >= 1, naming the option on error."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option} values must be >= 1, got '{text}'")
    return values


def check_distance(distance: str | None) -> None:
    """Refuse a ``--distance`` that is not a known ranking distance."""
    if distance is not None and distance not in DISTANCES:
        raise ConfigError(f"--distance must be one of {', '.join(DISTANCES)}, got '{distance}'")
