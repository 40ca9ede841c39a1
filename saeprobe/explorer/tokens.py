"""Showing tokens: their text (the model's tokenizer, offline) and the grid of image tokens."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

logger = logging.getLogger(__name__)

__all__ = ["TokenDecoder", "image_grid"]


def image_grid(
    n_tokens: int, width: int | None = None, height: int | None = None
) -> tuple[int, int]:
    """``(rows, cols)`` of ``n_tokens`` image tokens laid out in reading order.

    A perfect square is square; otherwise the factorisation ``rows x cols = n_tokens`` whose
    aspect ``cols / rows`` is closest (in log scale) to the image's ``width / height``
    (square when the size is unknown).
    """
    n = int(n_tokens)
    if n <= 0:
        return (0, 0)
    r = math.isqrt(n)
    if r * r == n:
        return (r, r)
    aspect = (width / height) if width and height else 1.0
    best, best_err = (1, n), math.inf
    for rows in range(1, n + 1):
        if n % rows:
            continue
        cols = n // rows
        err = abs(math.log(cols / rows) - math.log(aspect))
        if err < best_err - 1e-12:
            best, best_err = (rows, cols), err
    return best


class TokenDecoder:
    """Token ids to display strings with a model's tokenizer, loaded offline if it can be.

    Parameters
    ----------
    path : str | None
        The model folder (``model.json``'s ``path``) or a hub id already in the local cache.
        Nothing is downloaded; when no tokenizer loads, :attr:`available` is False and
        tokens are shown by position.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.tokenizer = None
        if path:
            try:
                from transformers import AutoTokenizer

                self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            except Exception as exc:  # noqa: BLE001 - any failure means "show positions"
                logger.info("no tokenizer for %s (%s); tokens are shown by position", path, exc)

    @property
    def available(self) -> bool:
        return self.tokenizer is not None

    def decode(self, token_ids: Sequence[int]) -> list[str] | None:
        """One string per token id (None without a tokenizer)."""
        if self.tokenizer is None:
            return None
        try:
            return [self.tokenizer.decode([int(t)]) for t in token_ids]
        except Exception as exc:  # noqa: BLE001 - an odd id must not break the card
            logger.debug("decoding tokens failed (%s)", exc)
            return None
