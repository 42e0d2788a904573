"""Truncated path signatures of the lifted path (t, log S, V) for the rough engine.

The path is the piecewise-linear interpolation of the grid values of the three channels

    x_t = ( t / T,  log(S_t / S0) / sqrt(xi0 T),  var(V_t) ),

with the variance channel ``log(V_t / xi0)`` (default, ``variance="log"``) or
``V_t / xi0 - 1`` (``variance="level"``): both are functions of V, the log keeps the heavy
right tail of the rough Bergomi variance (eta = 1.9) from dominating the higher levels. The
signature up to level L has 3 + 9 + ... + 3^L terms (no scalar 1).

Signatures at every grid point are cumulative: S(x)_{0,t_{k+1}} = S(x)_{0,t_k} (x) exp(dx_k)
(Chen's identity), computed with ``pysiglib.sig_join`` one segment at a time for the whole
batch. pysiglib is imported lazily (extra ``deepquant-mmot[signature]``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from deepquant.rough.rbergomi import RoughPaths

__all__ = ["signature_length", "lifted_path", "iter_signatures", "signatures_at"]

VARIANCE_CHANNELS = ("log", "level")


def _siglib():
    try:
        import pysiglib
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "signature features need pysiglib: pip install 'deepquant-mmot[signature]'"
        ) from exc
    return pysiglib


def signature_length(level: int, dim: int = 3) -> int:
    """Number of signature terms of a ``dim``-dimensional path up to ``level`` (no scalar)."""
    if level < 0:
        raise ValueError(f"signature level must be >= 0, got {level}")
    return sum(dim**k for k in range(1, level + 1))


def lifted_path(paths: RoughPaths, xi0: float, *, variance: str = "log",
                stride: int = 1) -> np.ndarray:
    """The channels (t/T, log(S/S0)/sqrt(xi0 T), var(V)) at every ``stride``-th grid point,
    shape (n_paths, n / stride + 1, 3) (the grid points 0, stride, 2 stride, ...)."""
    if variance not in VARIANCE_CHANNELS:
        raise ValueError(f"variance must be one of {VARIANCE_CHANNELS}, got {variance!r}")
    T = float(paths.times[-1])
    S, V, times = paths.S[:, ::stride], paths.V[:, ::stride], paths.times[::stride]
    n_paths, n1 = S.shape
    x = np.empty((n_paths, n1, 3))
    x[:, :, 0] = times[None, :] / T
    x[:, :, 1] = np.log(S / S[:, :1]) / math.sqrt(xi0 * T)
    x[:, :, 2] = np.log(V / xi0) if variance == "log" else V / xi0 - 1.0
    return x


def iter_signatures(x: np.ndarray, level: int) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (k, signature of x[:, :k+1]) for k = 0..n; signatures have shape (n_paths, L).

    ``x`` has shape (n_paths, n+1, d). At k = 0 the signature is zero (constant path).
    """
    n_paths, n1, d = x.shape
    length = signature_length(level, d)
    cur = np.zeros((n_paths, length))
    yield 0, cur
    if level == 0:
        for k in range(1, n1):
            yield k, cur
        return
    ps = _siglib()
    dx = np.ascontiguousarray(np.diff(x, axis=1))
    for k in range(1, n1):
        if k == 1:
            cur = ps.sig(x[:, :2].copy(), level)
        else:
            cur = ps.sig_join(cur, dx[:, k - 1].copy(), d, level)
        yield k, cur


def signatures_at(x: np.ndarray, level: int, indices) -> np.ndarray:
    """Signatures of x up to each grid index in ``indices``, shape (n_paths, len(indices), L)."""
    indices = [int(i) for i in indices]
    wanted = {i: j for j, i in enumerate(indices)}
    n_paths, n1, d = x.shape
    if indices and (min(indices) < 0 or max(indices) >= n1):
        raise ValueError(f"indices must lie in 0..{n1 - 1}, got {indices}")
    out = np.zeros((n_paths, len(indices), signature_length(level, d)))
    last = max(indices) if indices else -1
    for k, sig in iter_signatures(x, level):
        if k in wanted:
            out[:, wanted[k]] = sig
        if k >= last:
            break
    return out
