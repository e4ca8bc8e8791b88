"""Random restarts of unused codewords (``train.codeword_restart``; docs/method.md, "Restarting
unused codewords").

A codeword that no embedding is nearest to gets no gradient through the hard codes and little
through the soft ones: once the embeddings move away from it, it stays unused, and the book
spends its 4 bits on fewer words. Following the random restarts of Jukebox (Dhariwal et al.,
"Jukebox: A Generative Model for Music", 2020, section 2.3), each book keeps a moving average
of the share of every codeword among the batch's hard codes,

    u_mk <- DECAY * u_mk + (1 - DECAY) * |{i : b_im = k}| / B,

and after a step, a codeword whose share fell below ``threshold / K`` is moved onto the
sub-vector f_im of a batch image drawn at random (its optimiser moments set to zero, its share
back to the even 1/K). The draws come from a generator seeded by the run's seed and the step,
over the whole (gathered) batch, so every rank restarts the same codewords the same way.
"""

from __future__ import annotations

import torch
from torch import Tensor

from quantrieve.models.quantizer import ProductQuantizer

#: Decay of the usage average: a memory of about ten steps, so that a collection of a thousand
#: images (fifteen steps an epoch at batch 64) can restart a codeword within an epoch.
DECAY = 0.9


class CodewordRestarts:
    """The usage average of every codeword, and the restarts it calls for.

    Args:
        quantizer: the model's product quantizer (its codebooks are changed in place).
        threshold: a codeword is restarted when its average share of the codes is below
            ``threshold / K`` (0 < threshold < 1).
        seed: the run's seed (with the step, it seeds the draws).
    """

    def __init__(self, quantizer: ProductQuantizer, threshold: float, seed: int) -> None:
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.quantizer = quantizer
        self.threshold = threshold
        self.seed = seed
        k = quantizer.num_codewords
        self.usage = torch.full(
            (quantizer.num_books, k), 1.0 / k, device=quantizer.codebooks.device
        )
        self.restarted = 0  # since the last take_count()

    @torch.no_grad()
    def after_step(self, f: Tensor, step: int, optimizer: torch.optim.Optimizer) -> int:
        """Update the usage with the hard codes of ``f`` ((B, M*d), the batch's first views,
        the same on every rank) and restart the codewords it calls for; returns how many."""
        q = self.quantizer
        k = q.num_codewords
        codes = q.encode(f).long()  # (B, M)
        shares = torch.zeros_like(self.usage).scatter_add_(
            1, codes.T, torch.ones_like(codes.T, dtype=self.usage.dtype)
        ) / len(f)
        self.usage.mul_(DECAY).add_(shares, alpha=1 - DECAY)
        books, words = torch.nonzero(self.usage < self.threshold / k, as_tuple=True)
        if len(books) == 0:
            return 0
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        picks = torch.randint(len(f), (len(books),), generator=g).to(f.device)
        parts = q.split(f.float())  # (B, M, d)
        q.codebooks[books, words] = parts[picks, books].to(q.codebooks.dtype)
        state = optimizer.state.get(q.codebooks, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key][books, words] = 0
        self.usage[books, words] = 1.0 / k
        self.restarted += len(books)
        return len(books)

    def take_count(self) -> int:
        """Codewords restarted since the last call (the epoch's count, for the log)."""
        count, self.restarted = self.restarted, 0
        return count

    def state_dict(self) -> dict[str, Tensor]:
        return {"usage": self.usage.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.usage.copy_(state["usage"])
