"""The PQ layer's named settings that other layers read without needing torch."""

#: The ranking distances of ADC (:mod:`quantrieve.pq.adc`): ``l2`` sums the per-book
#: Euclidean distances (SPQ, HQC), ``sqeuclidean`` the squared ones (faiss ``IndexPQ``).
DISTANCES = ("l2", "sqeuclidean")

#: R, the ADC results a refining index re-scores per query (:mod:`quantrieve.pq.refine`).
DEFAULT_REFINE_DEPTH = 100

#: n, the first refined results a new refining index averages each query with before it
#: re-scores the head once more (query expansion, :func:`quantrieve.pq.refine.refine_ranking`;
#: measured in docs/results.md, "Query expansion"). An index written without the setting
#: (before it existed) does not expand.
DEFAULT_REFINE_EXPAND = 3

#: The head of a refined ranking grows to at most this many times R to take in the rest of a
#: tie group straddling place R (:mod:`quantrieve.pq.refine`).
TIE_SPAN = 4


#: Float32 values of gathered finer copies held at once while re-scoring heads: queries are
#: re-scored in blocks of ``REFINE_BLOCK_VALUES // (head * D)`` (at least one).
REFINE_BLOCK_VALUES = 2**24


def tie_width(depth: int, k: int) -> int:
    """How many ADC results a refined search of depth R fetches for a top k: enough for the
    head to take in a tie group straddling place R (:func:`quantrieve.pq.refine.refine_ranking`)."""
    return max(k, TIE_SPAN * depth)


#: What a refining index keeps per item to re-score with (:mod:`quantrieve.pq.refine`):
#: ``embedding``, the embedding f the codes quantize; ``backbone``, the backbone's
#: representation before the projection head, at unit length (re-scored by the distance
#: between unit vectors, a cosine ranking).
REFINE_SOURCES = ("embedding", "backbone")

#: What ``quantrieve encode --refine-depth`` and ``Retriever.build_index`` keep unless told: the
#: backbone vectors, ahead of the embeddings on P@10 and mAP@1000 on every collection measured
#: (docs/results.md, "Refining by the backbone").
DEFAULT_REFINE_SOURCE = "backbone"
