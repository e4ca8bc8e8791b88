"""The benchmark grid: its methods (:data:`quantrieve.config.METHODS`, deep and shallow), code
lengths, cell names and configs, the setup a folder holds, and the commands that reproduce it
(see :mod:`quantrieve.experiments.benchmark`)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantrieve.config import (
    METHODS,
    RunConfig,
    config_differences,
    load_config,
    settings_from_text,
)
from quantrieve.errors import QuantrieveError
from quantrieve.experiments.protocols import Protocol
from quantrieve.runtime.atomic import atomic_write_json
from quantrieve.runtime.outputs import OutputKind

SETUP_FILE = "benchmark.json"


SETUP_KEYS = ("protocol", "preset", "overrides")


# What makes two protocols the same for resuming (descriptions may be reworded).
PROTOCOL_KEYS = ("name", "dataset", "topk", "num_queries", "train_is_database", "split_seed")


BENCHMARK_KIND = OutputKind("benchmark folder", SETUP_FILE)


class BenchmarkError(QuantrieveError, ValueError):
    """A benchmark request or output folder that cannot be used; the message says why."""


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


def cell_name(method: str, bits: int, seed: int = 0) -> str:
    """File stem of a cell: ``<method>-<bits>`` (``-seed<S>`` added for seeds other than 0),
    or ``exact-full`` for the uncompressed row, which has no seed."""
    if method == "exact":
        return "exact-full"
    return f"{method}-{bits}" + (f"-seed{seed}" if seed else "")


def parse_seeds(text: str | Sequence[int | str]) -> list[int]:
    """Seeds from ``"0,1,2"`` or a sequence; each an integer >= 0, without duplicates."""
    items = parse_list(text) if isinstance(text, str) else [str(s) for s in text]
    try:
        seeds = [int(s) for s in items]
    except ValueError:
        raise BenchmarkError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds):
        raise BenchmarkError(f"--seeds must be integers >= 0, got {text!r}")
    return list(dict.fromkeys(seeds))


def protocol_settings(protocol: Protocol) -> dict[str, Any]:
    """The config settings a protocol fixes: dataset, folder, validation queries, K, cut-offs."""
    return {
        "data.dataset": protocol.dataset,
        "data.root": protocol.default_root,
        "data.val_queries": protocol.val_queries,
        "eval.topk": protocol.topk,
        "eval.precision_at": list(protocol.precision_at),
    }


def cell_config(
    preset: str | None,
    protocol: Protocol,
    root: str | Path,
    overrides: Sequence[str],
    method: str,
    bits: int,
    seed: int | None = None,
) -> RunConfig:
    """Config of a deep cell: preset <- protocol <- user overrides <- data root <- method, bits
    (<- ``train.seed``, when the grid runs several seeds)."""
    settings = {
        **protocol_settings(protocol),
        **settings_from_text(overrides),
        "data.root": str(root),
        **METHODS[method].settings,
        **({"train.seed": seed} if seed is not None else {}),
        "model.bits": bits,
    }
    return load_config(preset, overrides=settings)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkError(f"{path}: invalid JSON ({exc}); delete it to recompute") from None


# Where the data lies and which device trained a cell do not change what a cell measures.
_LOCATION_KEYS = frozenset({"data.root", "train.device"})


def check_finished_config(path: Path, finished: dict[str, Any], config: RunConfig) -> None:
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


def grid_cells(
    methods: Sequence[str], bits_list: Sequence[int], seeds: Sequence[int] = (0,)
) -> list[str]:
    """Cell names of a methods x bits x seeds grid (``exact`` contributes one ``exact-full``
    cell)."""
    names = [
        cell_name(m, b, s)
        for s in seeds
        for m in methods
        for b in ([0] if m == "exact" else bits_list)
    ]
    return list(dict.fromkeys(names))


def grid_command(setup: dict[str, Any], methods: list[str], bits: list[int]) -> str:
    protocol = setup["protocol"]
    args = ["quantrieve", "benchmark", "--protocol", protocol["name"]]
    args += ["--methods", ",".join(methods)]
    if bits:
        args += ["--bits", ",".join(str(b) for b in bits)]
    if setup.get("seeds") and setup["seeds"] != [0]:
        args += ["--seeds", ",".join(str(s) for s in setup["seeds"])]
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
    seeds = setup.get("seeds") or [0]
    cells = setup.get("cells") or grid_cells(setup["methods"], setup["bits"], seeds)
    groups: dict[tuple[int, ...], list[str]] = {}
    for method in setup["methods"]:
        if method == "exact":
            continue
        bits = tuple(
            b for b in setup["bits"] if any(cell_name(method, b, s) in cells for s in seeds)
        )
        if bits:
            groups.setdefault(bits, []).append(method)
    lines = [(methods, list(bits)) for bits, methods in groups.items()]
    if "exact-full" in cells:
        if lines:
            lines[0][0].append("exact")
        else:
            lines.append((["exact"], []))
    return [grid_command(setup, methods, bits) for methods, bits in lines]


def merge_setup(out_dir: Path, setup: dict[str, Any]) -> dict[str, Any]:
    """Merge with an earlier setup in ``out_dir``; refuse a different protocol/preset/overrides."""
    path = out_dir / SETUP_FILE
    if path.is_file():
        old = read_json(path)
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
        old_seeds = old.get("seeds") or [0]
        old_cells = old.get("cells") or grid_cells(old["methods"], old["bits"], old_seeds)
        setup["cells"] = list(dict.fromkeys([*old_cells, *setup["cells"]]))
        setup["methods"] = list(dict.fromkeys([*old["methods"], *setup["methods"]]))
        setup["bits"] = sorted(set(old["bits"]) | set(setup["bits"]))
        setup["seeds"] = list(dict.fromkeys([*old_seeds, *setup.get("seeds", [0])]))
        setup["commands"] = [*old.get("commands", []), *setup["commands"]]
    setup["command"] = "\n".join(benchmark_commands(setup))
    atomic_write_json(setup, path)
    return setup
