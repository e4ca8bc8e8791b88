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

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quantrieve.config import (
    METHODS,
    RunConfig,
    load_config,
    num_books_for_bits,
    settings_from_text,
)
from quantrieve.experiments.cells import deep_cell, shallow_cell
from quantrieve.experiments.grid import (
    BENCHMARK_KIND,
    SETUP_FILE,
    BenchmarkError,
    cell_config,
    cell_name,
    check_finished_config,
    check_methods,
    grid_cells,
    merge_setup,
    parse_bits,
    parse_seeds,
    protocol_settings,
    read_json,
)
from quantrieve.experiments.protocols import Protocol, get_protocol, materialize
from quantrieve.experiments.report import write_report
from quantrieve.runtime.atomic import atomic_write_json
from quantrieve.runtime.device import resolve_device
from quantrieve.runtime.outputs import refuse_foreign
from quantrieve.runtime.progress import ProgressFactory
from quantrieve.runtime.run_info import command_line, environment


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
    seeds: Sequence[int] | None = None,
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
        seeds: Run every cell once per seed (``train.seed``, and the baselines' seed); the
            report gives mean, standard deviation and paired differences over seeds. Default:
            the preset's seed alone.

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
    base_config = load_config(
        preset, overrides={**protocol_settings(protocol), **settings_from_text(overrides)}
    )
    root = str(root if root is not None else base_config.data.root)
    explicit = seeds is not None
    seed_list = parse_seeds(list(seeds)) if seeds is not None else [base_config.train.seed]

    # Resolve every cell's config before any work, so a bad key fails at once.
    cells: list[tuple[str, int, int, RunConfig | None]] = []
    shallow = [m for m in methods if METHODS[m].kind == "shallow"]
    deep = [m for m in methods if METHODS[m].kind == "deep"]
    for seed in seed_list:
        for method in shallow:
            if method == "exact" and seed != seed_list[0]:
                continue  # exhaustive search has no seed: one cell
            for bits in [0] if method == "exact" else bits_list:
                if method != "exact":
                    num_books_for_bits(bits, base_config.model.num_codewords)
                cells.append((method, bits, seed, None))
    for seed in seed_list:
        for method in deep:
            for bits in bits_list:
                config = cell_config(
                    preset, protocol, root, overrides, method, bits, seed if explicit else None
                )
                cells.append((method, bits, seed, config))

    setup = merge_setup(
        out_dir,
        {
            "protocol": protocol.to_dict(),
            "preset": preset,
            "overrides": overrides,
            "root": root,
            "out": str(out_dir),
            "methods": methods,
            "bits": bits_list,
            "seeds": seed_list,
            "cells": grid_cells(methods, bits_list, seed_list),
            "commands": [command_line()],
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
    for method, bits, seed, config in cells:
        name = cell_name(method, bits, seed)
        path = out_dir / "cells" / f"{name}.json"
        if path.is_file() and not force:
            finished = read_json(path)
            if config is not None:
                check_finished_config(path, finished, config)
            say(f"{name}: finished earlier, kept ({path})")
            continue
        if config is None:
            say(f"{name}: fitting on {len(data.database):,} database images")
            body = shallow_cell(method, bits, base_config.model.num_codewords, seed, data)
        else:
            body = deep_cell(config, data, out_dir / "runs" / name, say, step)
        cell = {
            "cell": name,
            "method": method,
            "kind": METHODS[method].kind,
            "description": METHODS[method].description,
            "bits": bits,
            "seed": None if method == "exact" else seed,
            "protocol": protocol.name,
            "data": data.summary(),
            **body,
            "environment": environment(str(body.get("device", device))),
        }
        atomic_write_json(cell, path)
        result = cell["result"]
        say(f"{name}: mAP@{result['k']} = {result['map_at_k']:.4f}")
    return write_report(out_dir)
