"""Code length: bits = M * log2(K), with K a power of two (the one place it is computed).

SPQ's code counted ``M * sqrt(K)`` bits; a code of M books of K codewords carries M * log2(K)
bits, stored here as one byte per book (K <= 256).
"""

from __future__ import annotations

MAX_CODEWORDS = 256


def is_codeword_count(num_codewords: int) -> bool:
    """Whether K is a power of two in [2, 256]: the codeword counts quantrieve stores."""
    k = num_codewords
    return 2 <= k <= MAX_CODEWORDS and k & (k - 1) == 0


def bits_per_book(num_codewords: int) -> int:
    """log2(K) for a valid K (:func:`is_codeword_count`).

    Raises:
        ValueError: K is not a power of two in [2, 256].
    """
    if not is_codeword_count(num_codewords):
        raise ValueError(
            f"the codeword count K must be a power of two in [2, {MAX_CODEWORDS}] (codes are "
            f"stored as one byte per book), got {num_codewords}"
        )
    return num_codewords.bit_length() - 1


def code_bits(num_books: int, num_codewords: int) -> int:
    """Bits of one code: M * log2(K)."""
    return num_books * bits_per_book(num_codewords)
