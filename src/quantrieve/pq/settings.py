"""The PQ layer's named settings that other layers read without needing torch."""

#: The ranking distances of ADC (:mod:`quantrieve.pq.adc`): ``l2`` sums the per-book
#: Euclidean distances (SPQ, HQC), ``sqeuclidean`` the squared ones (faiss ``IndexPQ``).
DISTANCES = ("l2", "sqeuclidean")

#: R, the ADC results a refining index re-scores per query (:mod:`quantrieve.pq.refine`).
DEFAULT_REFINE_DEPTH = 100
