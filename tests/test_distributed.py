"""Data-parallel training on the CPU: two processes under torchrun (gloo) against one.

The same global batch of views is fed to one process and to two (each takes its half); with
synchronised batch norm the two set-ups compute the same network, so the first loss must be
equal and the weights after a few steps equal to float tolerance. A killed two-process run must
resume and end exactly where an uninterrupted one does. The gathered gradient of two processes
equals the one-process gradient of the concatenated rows, bit for bit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_idx_dataset

HERE = Path(__file__).resolve().parent
WORKER = HERE / "distributed_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(*args: str, nproc: int = 2) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        *args,
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_idx_dataset(tmp_path_factory.mktemp("ddp") / "data", TINY.train, TINY.test)


def _run(command: list[str], timeout: float) -> None:
    """Run ``command``; on failure, fail with the end of what it wrote to stderr."""
    done = subprocess.run(command, env=_env(), timeout=timeout, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.fail(f"exit status {done.returncode}:\n{done.stderr[-4000:]}")


def _steps(data: Path, out: Path, sync: bool, nproc: int, *overrides: str) -> dict:
    args = [str(WORKER), str(data), str(out), "3", str(sync).lower(), *overrides]
    command = _torchrun(*args, nproc=nproc) if nproc > 1 else [sys.executable, *args]
    _run(command, timeout=300)
    return torch.load(out, weights_only=True)


@pytest.mark.slow
def test_two_processes_with_sync_batchnorm_compute_what_one_does(
    data: Path, tmp_path: Path
) -> None:
    one = _steps(data, tmp_path / "one.pt", True, 1)
    two = _steps(data, tmp_path / "two.pt", True, 2)
    # The first loss: the same global batch, the same network (weights equal before step 1).
    assert two["losses"][0] == pytest.approx(one["losses"][0], rel=1e-6, abs=1e-6)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    for name, value in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    # Per-rank batch norm (the default) normalises each half with its own statistics: another
    # network, so the numbers differ from the first step on.
    per_rank = _steps(data, tmp_path / "per-rank.pt", False, 2)
    assert per_rank["losses"][0] != pytest.approx(one["losses"][0], rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_two_processes_with_small_views_compute_what_one_does(data: Path, tmp_path: Path) -> None:
    """Multi-crop: each rank passes its share of the small views too; gathered per view, the
    pairs' losses equal one process's."""
    small = ("augment.small_crops=2", "augment.small_crop_ratio=0.75")
    one = _steps(data, tmp_path / "one.pt", True, 1, *small)
    two = _steps(data, tmp_path / "two.pt", True, 2, *small)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    for name, value in one["weights"].items():
        torch.testing.assert_close(two["weights"][name], value, rtol=1e-4, atol=1e-5, msg=name)
    plain = _steps(data, tmp_path / "plain.pt", True, 1)
    assert plain["losses"][0] != pytest.approx(one["losses"][0], rel=1e-6)


TRAIN = [
    "-m",
    "quantrieve",
    "train",
    "--set",
    "model.width=4",
    "--set",
    "model.proj_hidden=16",
    "--set",
    "model.codeword_dim=4",
    "--set",
    "model.num_books=4",
    "--set",
    "train.batch_size=32",
    "--set",
    "train.max_steps_per_epoch=6",
    "--set",
    "train.warmup_epochs=1",
    "--set",
    "train.amp=false",
    "--set",
    "data.val_queries=40",
    "--set",
    "train.sync_batchnorm=true",
    "--set",
    "train.device=cpu",
]


def _epochs(run: Path) -> list[int]:
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r["epoch"] for r in map(json.loads, lines) if r["kind"] == "epoch"]


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_exactly(data: Path, tmp_path: Path) -> None:
    common = ["--data-dir", str(data), "--epochs", "4"]
    straight = tmp_path / "straight"
    _run(_torchrun(*TRAIN, *common, "--out", str(straight)), timeout=600)
    assert _epochs(straight) == [1, 2, 3, 4]
    run = tmp_path / "killed"
    process = subprocess.Popen(
        _torchrun(*TRAIN, *common, "--out", str(run)),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    try:
        while not (run / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
            assert process.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # torchrun and both workers
        process.wait(timeout=60)
    assert (run / "last.pt").exists()
    _run(_torchrun(*TRAIN, "--resume", "--out", str(run)), timeout=600)
    assert _epochs(run) == [1, 2, 3, 4]  # the killed epoch logged once, after the resume
    a = torch.load(straight / "last.pt", weights_only=True)["model"]
    b = torch.load(run / "last.pt", weights_only=True)["model"]
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=0, atol=0, msg=name)
    record = json.loads((run / "run.json").read_text())
    assert record["world_size"] == 2


@pytest.mark.slow
def test_gathered_gradient_equals_one_process_reference(tmp_path: Path) -> None:
    """all_gather_with_grad over two gloo processes: the gathered tensor is every rank's rows
    in rank order, and each rank's rows get the gradient one process computes for the sum of
    all ranks' losses of the concatenated rows (bit for bit: a sum of two terms)."""
    import torch.multiprocessing as mp
    from distributed_worker import gather_gradients, gathered_rows, rank_loss

    world = 2
    out = tmp_path / "grad"
    mp.spawn(
        gather_gradients,
        args=(world, str(tmp_path / "store"), str(out)),
        nprocs=world,
        join=True,
    )
    rows = [gathered_rows(r).requires_grad_() for r in range(world)]
    together = torch.cat(rows)
    sum(rank_loss(together, r) for r in range(world)).backward()
    for rank in range(world):
        saved = torch.load(f"{out}.{rank}", weights_only=True)
        torch.testing.assert_close(saved["gathered"], together.detach(), rtol=0, atol=0)
        torch.testing.assert_close(saved["grad"], rows[rank].grad, rtol=0, atol=0)


def test_gather_in_a_group_of_one_is_the_identity_with_its_gradient(tmp_path: Path) -> None:
    """The public collectives behind all_gather_with_grad exist and run (a fast check in one
    process; the two-process comparison above is slow)."""
    import torch.distributed as dist

    from quantrieve.runtime.distributed import all_gather_with_grad

    assert not dist.is_initialized()
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        rows = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
        gathered = all_gather_with_grad(rows)
        assert torch.equal(gathered, rows.detach())
        weights = torch.linspace(-1, 2, 12).view(3, 4)
        (weights * gathered).sum().backward()
    finally:
        dist.destroy_process_group()
    assert rows.grad is not None and torch.equal(rows.grad, weights)
