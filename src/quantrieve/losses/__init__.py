"""Loss terms of HQC and SPQ, each a pure function of tensors, and the weighted objective."""

from quantrieve.losses.consistency import consistent_contrastive
from quantrieve.losses.contrastive import cross_quantized_contrastive, nt_xent
from quantrieve.losses.objective import TERMS, Objective, fuse
from quantrieve.losses.part import codeword_diversity, part_neighbour_consistency

__all__ = [
    "TERMS",
    "Objective",
    "codeword_diversity",
    "consistent_contrastive",
    "cross_quantized_contrastive",
    "fuse",
    "nt_xent",
    "part_neighbour_consistency",
]
