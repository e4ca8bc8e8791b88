"""Benchmark grid on the tiny IDX dataset: cells, resumability, report files, CLI."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import TINY, TINY_RUN
from typer.testing import CliRunner

from quantrieve.cli import app, main
from quantrieve.experiments import cells
from quantrieve.experiments import report as report_module
from quantrieve.experiments.benchmark import run_benchmark
from quantrieve.experiments.cells import training_stats
from quantrieve.experiments.grid import BenchmarkError, benchmark_commands, grid_cells
from quantrieve.experiments.report import write_report

# A tiny deep run; bits set model.num_books (8 bits = 2 books of 16 codewords).
BENCH = [*TINY_RUN, f"model.num_codewords={TINY.codewords}"]
GRID = {"methods": ["hqc", "pq", "exact"], "bits_list": [8], "preset": "fashion-mnist-cpu"}


@pytest.fixture(scope="module")
def finished(tiny_fashion: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bench") / "fm"
    run_benchmark("fashion-mnist", **GRID, out_dir=out, root=tiny_fashion, overrides=BENCH)
    return out


def _cell(out: Path, name: str) -> dict:
    return json.loads((out / "cells" / f"{name}.json").read_text())


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_grid_writes_one_cell_per_method_and_bits(finished: Path) -> None:
    names = sorted(p.stem for p in (finished / "cells").glob("*.json"))
    assert names == ["exact-full", "hqc-8", "pq-8"]
    hqc, pq = _cell(finished, "hqc-8"), _cell(finished, "pq-8")
    for cell in (hqc, pq, _cell(finished, "exact-full")):
        result = cell["result"]
        assert 0 <= result["map_at_k"] <= 1
        assert (result["num_queries"], result["num_database"]) == (TINY.test, TINY.train)
        assert result["k"] == TINY.train  # mAP@1000 clamped to the tiny database
        assert len(result["pr_precision"]) == len(result["pr_recall"]) > 1
    assert hqc["config"]["model"]["num_books"] == 2 and hqc["config"]["loss"]["preset"] == "hqc"
    assert hqc["train"]["epochs"] == 2 and hqc["train"]["seconds"] > 0
    assert hqc["train"]["images_per_second"] > 0 and hqc["train"]["best_epoch"] in (1, 2)
    assert (finished / "runs" / "hqc-8" / "index" / "codes.npy").is_file()
    assert pq["num_books"] == 2 and pq["kind"] == "shallow"
    assert hqc["environment"]["torch_threads"] == 1
    assert not list((finished / "cells").glob(".*.tmp"))


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_report_files(finished: Path) -> None:
    md = (finished / "report.md").read_text()
    assert "| method | 8 bits | uncompressed |" in md
    assert "| hqc |" in md and "| pq |" in md and "| exact |" in md
    assert "![pr_8bits](pr_8bits.png)" in md and "![map_vs_bits](map_vs_bits.png)" in md
    assert "quantrieve benchmark --protocol fashion-mnist --methods hqc,pq,exact --bits 8" in md
    assert "images/s" in md and "P@10" in md
    for png in ("pr_8bits.png", "map_vs_bits.png"):
        assert (finished / png).read_bytes()[:4] == b"\x89PNG"
    report = json.loads((finished / "report.json").read_text())
    assert [c["cell"] for c in report["cells"]] == ["hqc-8", "pq-8", "exact-full"]
    assert report["missing"] == [] and report["protocol"]["topk"] == 1000
    env = report["environment"]
    assert {"versions", "git_commit", "device", "torch_threads", "date"} <= set(env)
    assert env["versions"]["torch"] != "missing"
    assert report["setup"]["data"]["train_is_database"]


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_rerun_keeps_finished_cells(
    finished: Path, tiny_fashion: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stamps = {p.name: p.stat().st_mtime_ns for p in (finished / "cells").glob("*.json")}

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(cells.Retriever, "fit", refuse)
    monkeypatch.setattr(cells, "fit_baseline", refuse)
    run_benchmark("fashion-mnist", **GRID, out_dir=finished, root=tiny_fashion, overrides=BENCH)
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (finished / "cells").glob("*.json")}


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_unfinished_deep_cell_resumes_its_run(
    finished: Path, tiny_fashion: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []
    real = cells.Retriever.fit

    def spy(self, images, run_dir=None, resume=False, **kwargs):
        seen.append(resume)
        return real(self, images, run_dir, resume=resume, **kwargs)

    monkeypatch.setattr(cells.Retriever, "fit", spy)
    before = _cell(finished, "hqc-8")
    (finished / "cells" / "hqc-8.json").unlink()
    run_benchmark(
        "fashion-mnist",
        ["hqc"],
        [8],
        "fashion-mnist-cpu",
        finished,
        root=tiny_fashion,
        overrides=BENCH,
    )
    assert seen == [True]
    after = _cell(finished, "hqc-8")
    assert after["result"]["map_at_k"] == pytest.approx(before["result"]["map_at_k"])
    assert after["train"]["epochs"] == 2


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_other_setup_in_same_folder_is_refused(finished: Path, tiny_fashion: Path) -> None:
    with pytest.raises(BenchmarkError, match="different overrides"):
        run_benchmark(
            "fashion-mnist",
            ["pq"],
            [8],
            "fashion-mnist-cpu",
            finished,
            root=tiny_fashion,
            overrides=[*BENCH, "train.epochs=3"],
        )


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_finished_cell_of_another_config_is_refused(
    finished: Path, tiny_fashion: Path, tmp_path: Path
) -> None:
    """A preset edited since a cell finished must not mix configs in one report."""
    out = tmp_path / "fm"
    shutil.copytree(finished, out)
    path = out / "cells" / "hqc-8.json"
    cell = json.loads(path.read_text())
    cell["config"]["data"]["root"] = "/elsewhere"  # where the data lies does not matter
    path.write_text(json.dumps(cell))
    grid = {**GRID, "methods": ["hqc"]}
    run_benchmark("fashion-mnist", **grid, out_dir=out, root=tiny_fashion, overrides=BENCH)
    cell["config"]["augment"]["brightness"] = 0.123
    path.write_text(json.dumps(cell))
    with pytest.raises(
        BenchmarkError,
        match=r"hqc-8.json was finished with a different config "
        r"\(keys differ: augment.brightness\)",
    ):
        run_benchmark("fashion-mnist", **grid, out_dir=out, root=tiny_fashion, overrides=BENCH)


def test_unknown_method_and_bad_bits_are_named(tmp_path: Path) -> None:
    with pytest.raises(BenchmarkError, match="unknown method 'hqcc'; available: hqc, spq"):
        run_benchmark("fashion-mnist", ["hqc", "hqcc"], [8], None, tmp_path)
    with pytest.raises(ValueError, match="--bits 10 is not a multiple of log2"):
        run_benchmark("fashion-mnist", ["pq"], [10], None, tmp_path)
    assert not any(tmp_path.iterdir())


def test_methods_are_one_registry_trained_first_then_the_pixel_baselines() -> None:
    from quantrieve.baselines import BASELINES
    from quantrieve.config import METHODS, TRAINED_METHODS, method_settings

    assert list(METHODS) == [*TRAINED_METHODS, *BASELINES]
    assert list(BASELINES) == ["pq", "opq", "itq", "exact"]
    assert [m.name for m in METHODS.values() if not m.coded] == ["exact"]
    assert all(METHODS[m].settings for m in TRAINED_METHODS)
    with pytest.raises(ValueError, match="unknown method 'pq'; available: hqc, spq, hqc-ref"):
        method_settings("pq")  # a pixel baseline is not trained


def test_training_stats_count_a_repeated_epoch_once(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    records = [
        {"kind": "epoch", "epoch": 1, "seconds": 2.0, "images_per_second": 100.0},
        {"kind": "validation", "epoch": 1, "map_at_k": 0.3},
        {"kind": "epoch", "epoch": 2, "seconds": 9.0, "images_per_second": 10.0},  # interrupted
        {"kind": "epoch", "epoch": 2, "seconds": 2.0, "images_per_second": 100.0},
        {"kind": "validation", "epoch": 2, "map_at_k": 0.2},
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    stats = training_stats(log)
    assert stats["epochs"] == 2 and stats["seconds"] == 4.0
    assert stats["images_per_second"] == 100.0
    assert (stats["best_epoch"], stats["best_val_map"]) == (1, 0.3)


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_cli_report_only_and_protocols(finished: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["benchmark", "--report-only", "--out", str(finished)])
    assert result.exit_code == 0, result.output
    assert "| method | 8 bits | uncompressed |" in result.stdout
    listing = runner.invoke(app, ["protocols"])
    assert listing.exit_code == 0 and "nuswide21" in listing.stdout
    assert "mAP@5000" in listing.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--protocol", "imagenet"], "unknown protocol 'imagenet'; available: fashion-mnist"),
        (["--methods", "hqc,nope"], "unknown method 'nope'; available: hqc"),
        (["--bits", "8,x"], "--bits must be comma-separated integers"),
        (["--report-only"], "no benchmark.json; run `quantrieve benchmark` first"),
    ],
)
def test_cli_errors_are_one_line(
    args: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
    tmp_path: Path,
) -> None:
    argv = ["quantrieve", "benchmark", *args, "--out", str(tmp_path / "b")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_commands_and_missing_cells_follow_the_cells_asked_for(
    finished: Path, tmp_path: Path
) -> None:
    """Ablations asked for at one code length are not reported missing at the others."""
    out = tmp_path / "mixed"
    (out / "cells").mkdir(parents=True)
    setup = json.loads((finished / "benchmark.json").read_text())
    setup.update(out=str(out), methods=["hqc", "pq", "exact", "hqc-no-cc"], bits=[8, 16])
    setup["cells"] = [*grid_cells(["hqc", "pq", "exact"], [8, 16]), "hqc-no-cc-8"]
    assert setup["cells"][:5] == ["hqc-8", "hqc-16", "pq-8", "pq-16", "exact-full"]
    commands = benchmark_commands(setup)
    assert len(commands) == 2
    assert "--methods hqc,pq,exact --bits 8,16" in commands[0]
    assert "--methods hqc-no-cc --bits 8 " in commands[1]
    (out / "benchmark.json").write_text(json.dumps(setup))
    for name in ("hqc-8", "pq-8", "exact-full"):
        (out / "cells" / f"{name}.json").write_text(
            (finished / "cells" / f"{name}.json").read_text()
        )
    assert write_report(out)["missing"] == ["hqc-16", "pq-16", "hqc-no-cc-8"]


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_report_rows_follow_the_method_list_not_the_run_order(
    finished: Path, tmp_path: Path
) -> None:
    """Cells run as exact, pq, hqc are reported as hqc, pq, exact, each with its description."""
    out = tmp_path / "reordered"
    (out / "cells").mkdir(parents=True)
    setup = json.loads((finished / "benchmark.json").read_text())
    setup.update(out=str(out), methods=["exact", "pq", "hqc"])
    (out / "benchmark.json").write_text(json.dumps(setup))
    for name in ("exact-full", "pq-8", "hqc-8"):
        (out / "cells" / f"{name}.json").write_text(
            (finished / "cells" / f"{name}.json").read_text()
        )
    report = write_report(out)
    assert [c["cell"] for c in report["cells"]] == ["hqc-8", "pq-8", "exact-full"]
    md = (out / "report.md").read_text()
    rows = [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| ")]
    assert rows[1:4] == ["| hqc", "| pq", "| exact"]
    assert "- `pq`: faiss PQ on raw pixels" in md


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_report_of_a_partial_grid_lists_missing_cells(finished: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    (partial / "cells").mkdir(parents=True)
    setup = json.loads((finished / "benchmark.json").read_text())
    setup["out"] = str(partial)
    (partial / "benchmark.json").write_text(json.dumps(setup))
    (partial / "cells" / "pq-8.json").write_text((finished / "cells" / "pq-8.json").read_text())
    report = write_report(partial)
    assert report["missing"] == ["hqc-8", "exact-full"]
    md = (partial / "report.md").read_text()
    assert "Not yet computed: hqc-8, exact-full" in md


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_report_leaves_out_pr_curves_saved_at_distance_thresholds(
    finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cells saved before the per-query, rank-based PR curve (no ``pr_method``) are not drawn:
    their curve used thresholds shared by all queries. The report says which were left out;
    the titles name dataset, bits and the distances."""
    drawn: list[tuple[list[str], str]] = []
    real_plot = report_module.plot_pr_curves

    def recording(curves: dict, path: Path, title: str) -> Path:
        drawn.append((list(curves), title))
        return real_plot(curves, path, title)

    monkeypatch.setattr(report_module, "plot_pr_curves", recording)
    out = tmp_path / "old"
    (out / "cells").mkdir(parents=True)
    setup = json.loads((finished / "benchmark.json").read_text())
    setup["out"] = str(out)
    (out / "benchmark.json").write_text(json.dumps(setup))
    for name in ("hqc-8", "pq-8", "exact-full"):
        cell = _cell(finished, name)
        assert cell["result"]["pr_method"] == "rank-interpolated"
        if name == "hqc-8":
            del cell["result"]["pr_method"]
        (out / "cells" / f"{name}.json").write_text(json.dumps(cell))
    report = write_report(out)
    assert report["pr_left_out"] == ["hqc-8"]
    assert [(labels, title.replace("\n", " ")) for labels, title in drawn] == [
        (
            ["pq (sqeuclidean)", "exact (pixels)"],
            f"fashion-mnist ({TINY.test} queries) 8 bits; distance: sqeuclidean (pq); l2 (exact)",
        )
    ]
    md = (out / "report.md").read_text()
    assert "![pr_8bits](pr_8bits.png)" in md and "No PR curve for hqc-8:" in md
    for name in ("pq-8", "exact-full"):  # nothing comparable left: no PR figure at all
        cell = _cell(out, name)
        del cell["result"]["pr_method"]
        (out / "cells" / f"{name}.json").write_text(json.dumps(cell))
    (out / "pr_8bits.png").unlink()
    report = write_report(out)
    assert report["pr_left_out"] == ["hqc-8", "pq-8", "exact-full"]
    assert report["figures"] == ["map_vs_bits.png"] and not (out / "pr_8bits.png").exists()
    assert "No PR curve for hqc-8, pq-8, exact-full:" in (out / "report.md").read_text()


def test_pr_plot_refuses_a_curve_saved_at_distance_thresholds(
    finished: Path, tmp_path: Path
) -> None:
    """A saved result without ``pr_method`` (a curve of old, at shared distance thresholds)
    cannot be drawn next to rank-based curves."""
    from quantrieve.experiments.figures import plot_pr_curves

    result = _cell(finished, "pq-8")["result"]
    plot_pr_curves({"pq": cells.result_from_dict(result)}, tmp_path / "ok.png", "t")
    del result["pr_method"]
    with pytest.raises(ValueError, match="shared distance thresholds"):
        plot_pr_curves({"pq": cells.result_from_dict(result)}, tmp_path / "old.png", "t")
    assert not (tmp_path / "old.png").exists()


@pytest.mark.slow  # trains a tiny grid (make test-fast leaves it out)
def test_seeds_run_as_part_of_the_grid_and_are_aggregated(tiny_fashion: Path, tmp_path: Path):
    out = tmp_path / "seeds"
    report = run_benchmark(
        "fashion-mnist",
        ["hqc", "pq"],
        [8],
        "fashion-mnist-cpu",
        out,
        root=tiny_fashion,
        # One short epoch a seed: what is tested is how seeds are run and aggregated.
        overrides=[
            *BENCH,
            "train.epochs=1",
            "train.warmup_epochs=0",
            "train.max_steps_per_epoch=2",
        ],
        seeds=[0, 1],
    )
    names = sorted(p.stem for p in (out / "cells").glob("*.json"))
    assert names == ["hqc-8", "hqc-8-seed1", "pq-8", "pq-8-seed1"]
    seed1 = _cell(out, "hqc-8-seed1")
    assert seed1["seed"] == 1 and seed1["config"]["train"]["seed"] == 1
    assert _cell(out, "hqc-8")["config"]["train"]["seed"] == 0
    assert report["missing"] == []
    md = (out / "report.md").read_text()
    values = [_cell(out, n)["result"]["map_at_k"] for n in ("hqc-8", "hqc-8-seed1")]
    mean = sum(values) / 2
    assert f"{mean:.4f} ± " in md and "(2)" in md
    assert "## Seeds" in md and "| pq | 8 | 2 |" in md  # paired: hqc minus pq on 2 seeds
    per_cell = md.split("## Per cell")[1].split("\n## ")[0].splitlines()
    assert per_cell[2].startswith("| method | bits | seed | mAP@")
    rows = [line.split(" | ")[:3] for line in per_cell if line.startswith(("| hqc", "| pq"))]
    assert [row[1:] for row in rows] == [["8", "0"], ["8", "1"]] * 2  # by method, then seed
    assert [row[0] for row in rows] == ["| hqc", "| hqc", "| pq", "| pq"]
    # A rewritten report keeps the commit the cells ran at, not the rewriter's.
    cell_path = out / "cells" / "hqc-8-seed1.json"
    record = json.loads(cell_path.read_text())
    record["environment"]["git_commit"] = "0123abc"
    cell_path.write_text(json.dumps(record))
    write_report(out)
    environment = (out / "report.md").read_text().split("## Environment")[1]
    assert "- Git commit of the cells: `" in environment and "`0123abc`" in environment
    assert "--seeds 0,1" in report["command"]


def test_seeds_of_one_method_have_no_paired_table() -> None:
    """One method over seeds: per-seed values, and no empty table of paired differences."""
    finished = [
        {"method": "hqc", "bits": 32, "seed": s, "result": {"map_at_k": v}}
        for s, v in ((0, 0.5), (1, 0.6))
    ]
    lines = report_module.seeds_section({"cells": finished, "setup": {"seeds": [0, 1]}})
    assert "| hqc | 32 | 0.5000 | 0.6000 |" in lines
    assert not any("Paired" in line for line in lines)
    finished += [{"method": "spq", "bits": 32, "seed": 1, "result": {"map_at_k": 0.55}}]
    lines = report_module.seeds_section({"cells": finished, "setup": {"seeds": [0, 1]}})
    assert "| spq | 32 | 1 | +0.0500 | 0.0000 | 1 of 1 |" in lines
