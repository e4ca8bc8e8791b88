"""Loss timing: all M books at once vs a Python loop over books, and the cost of a full HQC
training step relative to an NT-Xent-only step on the same batch.

    .venv/bin/python benchmarks/loss_speed.py [--batch 256] [--books 8] [--repeats 200]

Prints a table and writes benchmarks/results/loss_speed.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from quantrieve.config import LossConfig, load_config
from quantrieve.losses import Objective, codeword_diversity, part_neighbour_consistency
from quantrieve.losses.contrastive import twin_index
from quantrieve.models.retrieval import RetrievalModel
from quantrieve.runtime.device import autocast


def pn_loop(z_a, z_b, num_books, top_n, tau):
    """L_pn with a Python loop over books (same maths as the batched version)."""
    batch = z_a.shape[0]
    z = torch.cat([z_a, z_b]).float()
    rows = torch.arange(2 * batch)
    total = 0.0
    for part in z.chunk(num_books, dim=1):
        x = F.normalize(part, dim=1)
        sims = x @ x.T / tau
        sims[rows, rows] = float("-inf")
        sims[rows, twin_index(batch)] = float("-inf")
        pos = torch.logsumexp(sims.topk(min(top_n, 2 * batch - 2), dim=1).values, dim=1)
        total = total + (torch.logsumexp(sims, dim=1) - pos).mean()
    return total / num_books


def cd_loop(f, codebooks):
    """L_cd with a Python loop over books."""
    total = 0.0
    for m, part in enumerate(f.float().chunk(codebooks.shape[0], dim=1)):
        p = torch.softmax(F.normalize(part, dim=1) @ F.normalize(codebooks[m], dim=1).T, dim=1)
        usage = p.mean(0)
        total = total + (usage * torch.log(usage + 1e-5)).sum()
    return total / codebooks.shape[0]


def timed(fn, repeats: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--books", type=int, default=8)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results/loss_speed.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    b, m, d = args.batch, args.books, args.dim
    z_a = torch.randn(b, m * d, requires_grad=True)
    z_b = torch.randn(b, m * d, requires_grad=True)
    books = torch.randn(m, 16, d, requires_grad=True)
    rows = {}

    def fwd_bwd(loss_fn):
        return lambda: loss_fn().backward()

    for name, batched, loop in (
        (
            "L_pn",
            lambda: part_neighbour_consistency(z_a, z_b, m, 20, 0.5),
            lambda: pn_loop(z_a, z_b, m, 20, 0.5),
        ),
        (
            "L_cd",
            lambda: codeword_diversity(torch.cat([z_a, z_b]), books),
            lambda: cd_loop(torch.cat([z_a, z_b]), books),
        ),
    ):
        torch.testing.assert_close(batched(), loop(), rtol=1e-4, atol=1e-5)
        t_batched = timed(fwd_bwd(batched), args.repeats)
        t_loop = timed(fwd_bwd(loop), args.repeats)
        rows[name] = {
            "batched_ms": 1e3 * t_batched,
            "loop_ms": 1e3 * t_loop,
            "speedup": t_loop / t_batched,
        }

    # One full training step (augmented views already made) with HQC vs NT-Xent alone.
    config = load_config("fashion-mnist-cpu")
    model = RetrievalModel(config.model, 28, 1, [0.3], [0.35])
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    views = torch.randn(2 * b, 1, 28, 28)
    device = torch.device("cpu")
    objectives = {
        "hqc": Objective(config.loss, m),
        "ntxent_only": Objective(LossConfig(w_icf=1, w_icz=0, w_cc=0, w_pn=0, w_cd=0), m),
    }

    def step(objective: Objective) -> None:
        with autocast(device, True):
            f = model.encoder.embed(views)
        f = f.float()
        z = model.quantizer(f)
        loss = objective(f[:b], f[b:], z[:b], z[b:], model.quantizer.codebooks)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    steps = {
        name: timed(lambda o=o: step(o), max(3, args.repeats // 4))
        for name, o in objectives.items()
    }
    rows["train_step"] = {
        "hqc_ms": 1e3 * steps["hqc"],
        "ntxent_only_ms": 1e3 * steps["ntxent_only"],
        "ratio": steps["hqc"] / steps["ntxent_only"],
    }
    result = {"batch": b, "books": m, "dim": d, "threads": torch.get_num_threads(), **rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
