"""The stalker: a real photo of the user searches a pool of generations (rank-1 targeted)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from iddm.evaluate.metrics.common import (
    _check_dims,
    _embeddings,
)


def _pool_flags(pool_is_user: Sequence[bool] | np.ndarray, k: int) -> np.ndarray:
    flags = np.asarray(pool_is_user)
    if flags.ndim != 1 or len(flags) != k:
        raise ValueError(f"pool_is_user must hold one flag per pool embedding: got shape {flags.shape} for {k}.")
    if flags.dtype != bool:
        raise ValueError(f"pool_is_user must be a boolean array, got dtype {flags.dtype}.")
    if flags.all() or not flags.any():
        raise ValueError(
            f"The pool holds {int(flags.sum())} of the user's generations among {k} images; targeted search needs "
            "both the user's generations and other identities' images."
        )
    return flags


def targeted_chance_level(pool_is_user: Sequence[bool] | np.ndarray) -> float:
    """Rank-1 targeted hit rate of a random ranking: the fraction of the pool that is the user's generations."""
    flags = np.asarray(pool_is_user, dtype=bool)
    if flags.size == 0:
        raise ValueError("pool_is_user is empty.")
    return float(flags.mean())


def rank1_targeted_hits(query_emb: Any, pool_emb: Any, pool_is_user: Sequence[bool] | np.ndarray) -> np.ndarray:
    """Per-query rank-1 hits of the stalker (R1-T): is the top-ranked pool image one of the user's generations?

    Args:
        query_emb: ``(Q, D)`` embeddings of real photos of the user (the attacker's queries).
        pool_emb: ``(K, D)`` embeddings of public images: the user's generations mixed with other
            identities' images.
        pool_is_user: ``(K,)`` bool, ``True`` for the user's generations.

    Returns:
        ``(Q,)`` bool; a tie between a user item and another item counts as a hit.
    """
    query = _embeddings(query_emb, "query_emb")
    pool = _embeddings(pool_emb, "pool_emb")
    flags = _pool_flags(pool_is_user, len(pool))
    _check_dims((query, "query_emb"), (pool, "pool_emb"))
    if len(query) == 0:
        return np.zeros(0, dtype=bool)
    scores = query @ pool.T
    return scores[:, flags].max(axis=1) >= scores[:, ~flags].max(axis=1)


def rank1_targeted(query_emb: Any, pool_emb: Any, pool_is_user: Sequence[bool] | np.ndarray) -> float:
    """R1-T: fraction of queries whose rank-1 pool result is the user's generation (lower = more private).

    See :func:`rank1_targeted_hits` for the arguments. Compare with :func:`targeted_chance_level`.

    Returns:
        Hit rate in ``[0, 1]``; ``nan`` when there are no queries.
    """
    hits = rank1_targeted_hits(query_emb, pool_emb, pool_is_user)
    return float(hits.mean()) if len(hits) else math.nan
