"""Bootstrap confidence intervals for metrics that average per-query hits (R@K, precision@1).

A score on a few hundred queries moves by a whole point when one query flips, so a margin between
two models means little without its noise. Both functions resample the query set with replacement
(``resamples`` times, from ``seed``) and return the percentile interval of the resampled score, in
percent like the evaluators' numbers:

- :func:`bootstrap_interval`: one model's score, from its per-query hits;
- :func:`paired_bootstrap_interval`: the difference of two models scored on the same queries, each
  resample taking the same queries for both, so what the models share (an easy query both get
  right) cancels. An interval that excludes 0 is a margin the queries support.

The hits of R@K come from :func:`unime.evaluation.retrieval.retrieval_ranks` (``ranks < k``).

>>> import numpy as np
>>> bootstrap_interval(np.ones(50, dtype=bool))
(100.0, 100.0)
>>> paired_bootstrap_interval(np.arange(50) % 2, np.arange(50) % 2)
(0.0, 0.0)
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


def _as_hits(values: np.ndarray, name: str) -> np.ndarray:
    hits = np.asarray(values, dtype=np.float64)
    if hits.ndim != 1 or hits.size == 0:
        raise ValueError(f"{name}: need a non-empty 1-D array of per-query hits, got shape {hits.shape}")
    if not np.all((hits >= 0) & (hits <= 1)):
        raise ValueError(f"{name}: per-query hits must lie in [0, 1] (booleans or 0/1)")
    return hits


def _percentile_interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    low, high = np.percentile(samples, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def _resampled_queries(n: int, resamples: int, seed: int) -> np.ndarray:
    """``[resamples, n]`` query indices drawn with replacement; the same for the same (n, resamples, seed)."""
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_interval(hits: np.ndarray, *, resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = SEED) -> tuple[float, float]:
    """The ``level`` percentile interval (percent) of the mean of ``hits`` (one entry per query:
    a boolean, 0/1, or a fraction) over ``resamples`` resamplings of the queries."""
    values = _as_hits(hits, "hits")
    means = values[_resampled_queries(len(values), resamples, seed)].mean(axis=1)
    return _percentile_interval(100 * means, level)


def paired_bootstrap_interval(hits_a: np.ndarray, hits_b: np.ndarray, *, resamples: int = RESAMPLES,
                              level: float = LEVEL, seed: int = SEED) -> tuple[float, float]:
    """The ``level`` percentile interval (percentage points) of mean(``hits_a``) - mean(``hits_b``),
    the two models' hits on the same queries in the same order, each resample taking the same
    queries for both. Identical hits give exactly (0.0, 0.0)."""
    a, b = _as_hits(hits_a, "hits_a"), _as_hits(hits_b, "hits_b")
    if a.shape != b.shape:
        raise ValueError(f"paired hits need the same queries: {a.size} against {b.size}")
    differences = (a - b)[_resampled_queries(len(a), resamples, seed)].mean(axis=1)
    return _percentile_interval(100 * differences, level)
