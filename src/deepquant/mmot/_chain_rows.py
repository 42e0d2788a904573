"""Row-wise log-sum-exp numerics of the augmented entropic solver
(``deepquant.mmot.augmented_entropic``): a stable log-sum-exp and its segmented form. The
per-row martingale solve min_g log sum_y exp(L_y + g d_y) is the library's one row solver,
``deepquant.mmot._gibbs._row_solve``."""

from __future__ import annotations

import numpy as np


def _lse(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return -np.inf
    mx = v.max()
    return float(mx + np.log(np.exp(v - mx).sum()))


def _segment_logsumexp(key: np.ndarray, vals: np.ndarray, size: int) -> np.ndarray:
    """out[k] = log sum_{i: key_i = k} exp(vals_i); -inf for empty segments."""
    mx = np.full(size, -np.inf)
    np.maximum.at(mx, key, vals)
    safe = np.where(np.isfinite(mx), mx, 0.0)
    with np.errstate(invalid="ignore"):
        e = np.exp(vals - safe[key])
    e = np.where(np.isfinite(e), e, 0.0)
    s = np.bincount(key, weights=e, minlength=size)
    with np.errstate(divide="ignore"):
        return np.where(s > 0, safe + np.log(s), -np.inf)
