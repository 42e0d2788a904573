"""Gibbs kernels of the entropic semi-dual and the exact per-row martingale solve.

For scaled potentials phi = v / eps (columns) and eta = h / eps (rows) a row of the Gibbs plan is
p_x(y) = exp(lk(x, y) + phi(y) + eta(x)(y - x) - LSE_x), lk the log reference kernel minus
c / eps. ``_kernels_into`` evaluates these rows for a batch of periods (blocks of about 2 MiB),
``_evaluate`` adds the semi-dual F(phi, eta) and the measured residuals (``_State``), and
``_row_solve`` finds, row by row, the eta(x) that makes p_x a martingale row (E[Y - x] = 0) by
a safeguarded 1-D Newton: the library's one martingale row solver (the step that Newton
freezes, that light rows are polished with, the whole of the projection of the neural engine,
and the backward pass of the augmented chain's entropic solver).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# ---------------------------------------------------------------------------- evaluation
@dataclass
class _State:
    """Quantities at (phi, eta) for k periods: LSE, moments, residuals, objective.

    The kernels p (k, M, M) live in a separate buffer (see ``_evaluate``).
    """

    lse: np.ndarray      # (k, M)
    col: np.ndarray      # (k, M) column sums of the active plan
    m: np.ndarray        # (k, M) conditional drift E[Y - x] (0 on inactive rows)
    obj: np.ndarray      # (k,)  F(phi, eta)
    obj_scale: np.ndarray  # (k,) magnitude of the terms of F (for round-off tolerances)
    err: np.ndarray      # (k,)  L1 column error of the active plan
    drift: np.ndarray    # (k,)  max |m| over active rows
    finite: np.ndarray   # (k,)  bool

    def take(self, idx: np.ndarray) -> _State:
        return _State(*(getattr(self, f)[idx] for f in _STATE_FIELDS))

    def put(self, idx: np.ndarray, other: _State, other_idx: np.ndarray) -> None:
        for f in _STATE_FIELDS:
            getattr(self, f)[idx] = getattr(other, f)[other_idx]


_STATE_FIELDS = ("lse", "col", "m", "obj", "obj_scale", "err", "drift", "finite")


_BLOCK_ENTRIES = 1 << 18   # periods per pass over (k, M, M) arrays: about 2 MiB (one L2)


def _kernels_into(out: np.ndarray, lk: np.ndarray, diff: np.ndarray, phi: np.ndarray,
                  eta: np.ndarray, mu: np.ndarray | None = None, grid: np.ndarray | None = None
                  ) -> np.ndarray | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-normalised Gibbs kernels into ``out`` (k, M, M); returns the row log-sum-exp (k, M).

    s(x, y) = lk(x, y) + phi(y) + eta(x)(y - x); p = exp(s - LSE_y s). Rows that are -inf
    everywhere (inactive) give zero rows and LSE 0. With ``mu`` and ``grid`` also returns the
    column sums mu @ p and the row means p @ grid, (lse, col, mean), computed block by block
    while the kernels are in cache (blocks of periods of about ``_BLOCK_ENTRIES`` entries).
    """
    k, mm = phi.shape
    step = max(1, _BLOCK_ENTRIES // max(1, mm * mm))
    moments = mu is not None and grid is not None
    if step >= k:
        lse = _kernels_block(out, lk, diff, phi, eta)
        if not moments:
            return lse
        return lse, np.matmul(mu[:, None, :], out)[:, 0, :], np.matmul(out, grid)
    lse = np.empty((k, mm))
    col = np.empty((k, mm)) if moments else None
    mean = np.empty((k, mm)) if moments else None
    for s0 in range(0, k, step):
        sl = slice(s0, min(k, s0 + step))
        o = out[sl]
        lse[sl] = _kernels_block(o, lk[sl], diff, phi[sl], eta[sl])
        if moments:
            col[sl] = np.matmul(mu[sl, None, :], o)[:, 0, :]
            mean[sl] = np.matmul(o, grid)
    if not moments:
        return lse
    return lse, col, mean


def _kernels_block(out: np.ndarray, lk: np.ndarray, diff: np.ndarray, phi: np.ndarray,
                   eta: np.ndarray) -> np.ndarray:
    np.multiply(eta[:, :, None], diff[None], out=out)
    out += lk
    out += phi[:, None, :]
    smax = out.max(axis=2)
    smax[~np.isfinite(smax)] = 0.0
    out -= smax[:, :, None]
    np.exp(out, out=out)
    z = out.sum(axis=2)
    z[~(z > 0)] = 1.0
    out *= (1.0 / z)[:, :, None]
    return smax + np.log(z)


def _evaluate(lk: np.ndarray, grid: np.ndarray, diff: np.ndarray, mu: np.ndarray,
              nu: np.ndarray, phi: np.ndarray, eta: np.ndarray, out: np.ndarray) -> _State:
    """Semi-dual, residuals and kernels (written into ``out``) at (phi, eta)."""
    lse, col, m = _kernels_into(out, lk, diff, phi, eta, mu, grid)
    m -= grid
    m[~(mu > 0)] = 0.0
    obj = np.einsum("by,by->b", nu, phi) - np.einsum("bx,bx->b", mu, lse)
    obj_scale = np.einsum("by,by->b", nu, np.abs(phi)) + np.einsum("bx,bx->b", mu, np.abs(lse))
    err = np.abs(col - nu).sum(axis=1)
    drift = np.abs(m).max(axis=1)
    finite = np.isfinite(obj) & np.isfinite(err) & np.isfinite(drift)
    return _State(lse, col, m, obj, obj_scale, err, drift, finite)


def _row_eval(base: np.ndarray, e: np.ndarray, d: np.ndarray, d2: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows p = exp(base + e d - LSE) (K, M), their LSE, mean E_p[d] and second moment E_p[d^2]."""
    s = base + e[:, None] * d
    smax = s.max(axis=1)
    smax[~np.isfinite(smax)] = 0.0
    s -= smax[:, None]
    p = np.exp(s, out=s)
    z = p.sum(axis=1)
    p /= z[:, None]
    return p, smax + np.log(z), np.einsum("ky,ky->k", p, d), np.einsum("ky,ky->k", p, d2)


def _row_solve(base: np.ndarray, d: np.ndarray, eta: np.ndarray | None, *,
               iters: int = 60, tol: float = 1e-13, kernels: bool = False
               ) -> np.ndarray | tuple[np.ndarray, ...]:
    """Per row, the eta minimising psi(eta) = log sum_y exp(base_y + eta d_y) (K rows, 1-D, convex).

    The one martingale row solver of the library: its stationarity condition is the martingale
    condition m(eta) = E_p[d] = 0 for p = exp(base + eta d - psi). Used by the one-period
    Newton (``_newton``: frozen rows, struggling rows, light rows), the martingale projection of
    the neural engine (``projection``) and the backward pass of the augmented chain
    (``augmented_entropic``, where psi is the message and eta = h / eps).

    ``base`` (K, M): log kernel without the eta term (-inf where a move is forbidden); ``d``
    (K, M): the moves y - x; ``eta`` (K,): the start (None or non-finite entries: 0).
    m is increasing in eta. Safeguarded Newton: steps capped at 30 / max_y |d_y| in log-weight
    across the row, the cap doubling while the capped step heads where no bracket is known yet
    (exponential search), bisection inside the bracket once one is known; a row stops when
    |m| <= ``tol`` or its bracket has shrunk to round-off, after at most ``iters`` steps.

    Edge rows: a row with allowed moves on one side of 0 only has no finite optimum; when it
    allows d = 0 it is pinned to that point mass (eta = -inf or +inf, psi = base at d = 0,
    the only martingale move); with no allowed move at all psi = -inf and its weights are zero.

    Returns eta (K,), or with ``kernels`` (eta, p, psi, m): the normalised rows (K, M), their
    log-sum-exp psi (K,) and their mean m = E_p[d] (K,), the residual the stopping test was
    applied to, at that eta.
    """
    k, mm = base.shape
    fin = np.isfinite(base)
    has_pos = (fin & (d > 0)).any(axis=1)
    has_neg = (fin & (d < 0)).any(axis=1)
    interior = has_pos & has_neg
    e = np.zeros(k) if eta is None else np.array(eta, dtype=np.float64).reshape(k)
    e = np.where(interior & np.isfinite(e), e, 0.0)
    p = np.zeros((k, mm))
    lse = np.full(k, -np.inf)
    m = np.zeros(k)
    rows = np.flatnonzero(interior)
    if rows.size:
        bi, di = base[rows], d[rows]
        ei, pi, li, mi = _solve_interior(bi, di, fin[rows], e[rows], iters, tol)
        e[rows], p[rows], lse[rows], m[rows] = ei, pi, li, mi
    edge = np.flatnonzero(~interior)
    if edge.size:
        zero = fin[edge] & (d[edge] == 0)
        pin = zero.any(axis=1)
        r, c = edge[pin], np.argmax(zero[pin], axis=1)
        lse[r] = base[r, c]
        p[r, c] = 1.0
        e[r] = np.where(has_pos[r], -np.inf, np.where(has_neg[r], np.inf, 0.0))
    if kernels:
        return e, p, lse, m
    return e


def _solve_interior(base: np.ndarray, d: np.ndarray, fin: np.ndarray, e: np.ndarray,
                    iters: int, tol: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``_row_solve`` on rows with allowed moves on both sides of 0 (a finite optimum)."""
    d2 = d * d
    cap = 30.0 / np.maximum(np.where(fin, np.abs(d), 0.0).max(axis=1), 1e-300)
    mult = np.ones(e.shape)
    lo = np.full(e.shape, -np.inf)
    hi = np.full(e.shape, np.inf)
    p, lse, m, sec = _row_eval(base, e, d, d2)
    act = np.arange(e.size)
    for _ in range(iters):
        ma, ea = m[act], e[act]
        la = lo[act] = np.where(ma < 0, np.maximum(lo[act], ea), lo[act])
        ha = hi[act] = np.where(ma > 0, np.minimum(hi[act], ea), hi[act])
        stuck = np.isfinite(la) & np.isfinite(ha) & (ha - la <= 1e-15 * np.maximum(1, np.abs(ea)))
        keep = ~((np.abs(ma) <= tol) | stuck)
        act, ma, ea, la, ha = act[keep], ma[keep], ea[keep], la[keep], ha[keep]
        if act.size == 0:
            break
        var = np.maximum(sec[act] - ma * ma, 1e-300)
        lim = cap[act] * mult[act]
        with np.errstate(over="ignore", invalid="ignore"):
            step = -ma / var
        step = np.where(np.isfinite(step), step, -np.sign(ma) * lim)
        capped = np.abs(step) >= lim
        step = np.clip(step, -lim, lim)
        # no bracket yet on the side of the move: grow the cap geometrically
        open_side = np.where(step > 0, ~np.isfinite(ha), ~np.isfinite(la))
        mult[act] = np.where(capped & open_side, 2.0 * mult[act], 1.0)
        new = ea + step
        mid = 0.5 * (la + ha)
        new = np.where(((new <= la) | (new >= ha)) & np.isfinite(mid), mid, new)
        e[act] = new
        # only rows still moving are re-evaluated
        if act.size == e.size:
            p, lse, m, sec = _row_eval(base, e, d, d2)
        else:
            p[act], lse[act], m[act], sec[act] = _row_eval(base[act], new, d[act], d2[act])
    return e, p, lse, m
