"""The certified side of the bounds from bid-ask quotes (``deepquant.mmot.quotes_bounds``).

The variables are the option positions a = p - q (p >= 0 bought at the ask, q >= 0 sold at the
bid); the smoothed sweep of their static potentials is minimised by L-BFGS-B with eps-scaling,
and every stage is certified by the exact sweep (``_Problem.certify``): option cost + cash is a
valid bound at any stage. The smoothed chain's laws give an inner estimate and their band
violation.
"""

from __future__ import annotations

import numbers
import time

import numpy as np
from scipy import optimize

from deepquant.mmot.beside import check_workers
from deepquant.mmot.certified import _OutOfTime, clip_inner, stage_stop
from deepquant.mmot.quote_problem import _Problem, _quote_hedge
from deepquant.mmot.result import BoundSide

__all__ = ["CERTIFIED_OPTIONS"]


CERTIFIED_OPTIONS = ("eps_start", "eps_end", "eps_factor", "band", "max_iter", "rtol", "band_tol",
                     "max_seconds", "a0", "coarse", "workers")
"""Keyword options of the certified method (``bounds_from_quotes(**certified_options)``)."""


BAND_TOL = 1e-6
"""Default largest band violation of an inner chain that counts as feasible (``band_tol``)."""

RTOL = 1e-4
"""Default target of the certified gap, relative to the bound (``rtol``)."""


def _check_certified_options(options: dict) -> None:
    """ValueError/TypeError naming the option for unknown names and out-of-range values."""
    unknown = sorted(set(options) - set(CERTIFIED_OPTIONS))
    if unknown:
        raise TypeError(f"unknown certified option(s) {unknown}; the options are "
                        f"{list(CERTIFIED_OPTIONS)}")
    positive = ("eps_start", "eps_end", "band", "rtol", "max_seconds")
    for name, value in options.items():
        if name == "a0":
            continue
        if name == "workers":
            check_workers(value)
            continue
        if name == "coarse":
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, int | np.integer) or value < 5):
                raise ValueError(f"coarse must be None or an integer >= 5, got {value!r}")
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):  # "1", True, None
            raise TypeError(f"{name} must be a number, got {value!r}")
        v = float(value)
        if not np.isfinite(v) and not (name == "max_seconds" and v == np.inf):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if name in positive and not v > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
        if name == "band_tol" and v < 0:
            raise ValueError(f"band_tol must be >= 0, got {value!r}")
        if name == "eps_factor" and not 0 < v < 1:
            raise ValueError(f"eps_factor must be in (0, 1), got {value!r}")
        if name == "max_iter" and (v != int(v) or v < 1):
            raise ValueError(f"max_iter must be an integer >= 1, got {value!r}")
    start, end = options.get("eps_start", 1e-2), options.get("eps_end", 1e-6)
    if end > start:
        raise ValueError(f"eps_end must be <= eps_start, got eps_end={end!r} and "
                         f"eps_start={start!r}")


def _certified_side(prob: _Problem, sense: str, *, eps_start=1e-2, eps_end=1e-6, eps_factor=0.2,
                    band=40.0, max_iter=300, rtol=RTOL, band_tol=BAND_TOL, max_seconds=600.0,
                    a0: np.ndarray | None = None, start: dict | None = None) -> BoundSide:
    """min over positions of cost(a) + sweep(a) by L-BFGS-B on the entropic smoothing.

    Each smoothed sweep is one objective evaluation; the evaluation with the lowest smoothed
    objective of a stage (L-BFGS-B's last accepted iterate) gives the stage's positions, inner
    estimate and band violation without a further sweep. The budget ``max_seconds`` is checked
    before every evaluation, so a side ends at most one smoothed sweep (plus the exact sweeps
    of the certificate and the hedge) after it.

    ``a0`` is certified before the first stage, so the side never returns a bound worse than
    its certificate; with it, the budget is checked before the first smoothed sweep too (a
    side may then end without smoothing). ``start`` (from a coarse grid: ``inner``,
    ``band_violation``, ``kind``) is the inner estimate until a stage gives one that prices
    the bands at least as well; ``info["inner_kind"]`` says which (``"smoothed chain"``: a
    stage's, on this grid)."""
    t0 = time.perf_counter()
    sign = 1.0 if sense == "upper" else -1.0
    sw = prob.sweeper(sign)
    nq = prob.off[-1]
    has_ask = np.isfinite(prob.ask)
    ask = np.where(has_ask, prob.ask, 0.0)
    bid = prob.bid
    mats = prob.mats

    def prices(law):  # model prices of the quotes under the laws (flat over dates 1..T)
        parts = [law[sw.offsets[t]:sw.offsets[t + 1]] for t in range(prob.T)]
        return np.concatenate([mt @ p for mt, p in zip(mats, parts)])

    bnds = [(0.0, None if h else 0.0) for h in has_ask] + [(0.0, None)] * nq
    a = np.zeros(nq) if a0 is None else np.asarray(a0, dtype=float)
    if a.shape != (nq,):
        raise ValueError(f"a0 must hold one position per quote used, shape ({nq},), got shape "
                         f"{a.shape}")
    z = np.concatenate([np.maximum(a, 0.0), np.maximum(-a, 0.0)])
    z[:nq][~has_ask] = 0.0  # a quote without an ask is never bought
    scale = sw.scale
    best = (np.inf, a.copy(), 0.0)
    inner, band_viol, nit, stages, evals = np.nan, np.inf, 0, 0, 0
    kind = "none"
    if a0 is not None:  # a quote without an ask is never bought (as in z)
        a = np.where(has_ask, a, np.minimum(a, 0.0))
        outer, _, rv = prob.certify(a, sign)
        best = (outer, a.copy(), rv)
    if start is not None:
        inner, band_viol = sign * start["inner"], start["band_violation"]
        kind = start.get("kind", "start")
    eps = eps_start
    status, message = 1, "eps schedule ended before the gap reached rtol"
    while True:
        e_abs = eps * scale
        sw.h_warm = [None] * sw.T
        low: dict = {}  # the stage's evaluation with the lowest smoothed objective

        def fun(zz, e_abs=e_abs, low=low, armed=bool(np.isfinite(best[0]))):
            nonlocal evals
            if (low or armed) and time.perf_counter() - t0 > max_seconds:
                raise _OutOfTime
            aa = zz[:nq] - zz[nq:]
            u = prob.uvec(aa)
            val, grad, st_inner, _, _ = sw.soft(u, e_abs, band)
            evals += 1
            pr = prices(sw.mu_flat - grad)
            f = val - float(u @ sw.mu_flat) + float(ask @ zz[:nq] - bid @ zz[nq:])
            if not low or f < low["f"]:
                low.update(f=f, z=zz.copy(), inner=st_inner, prices=pr)
            g = np.concatenate([ask - pr, pr - bid])
            return f / e_abs, g / e_abs

        def count(intermediate_result):
            nonlocal nit
            nit += 1

        try:
            optimize.minimize(fun, z, jac=True, method="L-BFGS-B", bounds=bnds, callback=count,
                              options=dict(maxiter=max_iter, maxcor=30, gtol=1e-10,
                                           ftol=1e-15))
        except _OutOfTime:
            if not low:  # out of time before the stage's first sweep: a0's certificate stands
                status, message = 1, f"time budget {max_seconds:g} s spent"
                break
        z = low["z"]
        stages += 1
        a = z[:nq] - z[nq:]
        pr = low["prices"]
        viol = prob.band_violation(pr)
        if viol <= max(band_viol, band_tol) or not np.isfinite(inner):
            inner, band_viol, kind = low["inner"], viol, "smoothed chain"
        outer, _, rv = prob.certify(a, sign)
        if outer < best[0]:
            best = (outer, a.copy(), rv)
        gap = best[0] - inner
        verdict = stage_stop(gap, best[0], scale, rtol=rtol, fitted=band_viol <= band_tol,
                             t0=t0, max_seconds=max_seconds, eps=eps, eps_end=eps_end)
        if verdict is not None:
            status, message = verdict
            break
        eps = max(eps * eps_factor, eps_end)
    outer, abest, rv = best
    hedge = _quote_hedge(prob, abest, sense)
    code = "certified" if status == 0 else "certified-wide"
    inner, excess = clip_inner(inner, outer)
    return BoundSide(sign * outer, True, code, message, time.perf_counter() - t0, band_viol,
                     0.0, float(outer - inner), None, None,
                     dict(hedge=hedge, positions=hedge.positions, inner=sign * inner,
                          inner_excess=excess, inner_kind=kind, band_violation=band_viol,
                          stages=stages,
                          iterations=nit, evaluations=evals, eps=eps * scale, violation=rv))
