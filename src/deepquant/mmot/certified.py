"""Certified MMOT bounds at market resolution (DESIGN §2.8).

One side (the upper; the lower is minus the upper of -f) of the bounds on the augmented chain is
min over static potentials u_t of the superhedging value F(u) (``deepquant.mmot.envelope``): any
u gives a VALID bound in one exact backward sweep of concave envelopes. The method:

1. smooth F with the entropic envelope (h eliminated state by state, reference kernel mu_{t+1})
   and minimise F_eps over the N*M potentials by L-BFGS, with eps-scaling (eps from 1e-2 to
   about 1e-7 of the payoff scale, warm-started);
2. after each stage, certify: the exact sweep gives the cheapest h and constant for the current
   u; the superhedging inequality is then checked on every move of the chain and the constant is
   shifted by the measured worst violation (rounding only). That is the **outer bound**;
3. the smoothed chain of the last stage is a martingale (its rows solved exactly) whose marginals
   are off by the measured residual: its value is the **inner estimate**.

``gap = outer - inner`` says how far from the LP optimum the bound can be. Stop when the relative
gap reaches ``rtol`` (or the schedule or the time budget ends; the result says which).

Chains small enough for an LP (``POLISH_MAX_STATES``) skip the smoothing: the chain LP is solved
exactly by column generation (``deepquant.mmot.colgen``, every move priced in the same layout);
its plan is feasible (a rigorous inner value) and its potentials, swept exactly, give the outer
bound, so the bracket closes to the LP tolerance.

This module solves one side on one chain; ``deepquant.mmot.multiscale`` (``certified_bounds``)
starts it from coarser grids.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import dataclass

import numpy as np
from scipy import optimize
from threadpoolctl import threadpool_limits

from deepquant.market.marginals import Marginals
from deepquant.mmot.augment import AugmentedChain
from deepquant.mmot.colgen import band_moves, solve_chain_colgen
from deepquant.mmot.envelope import warm_kernels
from deepquant.mmot.result import BoundSide
from deepquant.mmot.sweep import _Sweeper, duals_of
from deepquant.results import check_count

__all__ = ["better_inner", "certify_side", "clip_inner", "nest_supports", "stage_stop",
           "CertifiedProgress"]


POLISH_MAX_STATES = 1_500
"""Chains with at most this many live states (x, s) over all periods are solved exactly by
column generation (measured on a loaded 2-core machine: lookback N = 5, M = 25 (742 states) in
4 s per side; the Asian at M = 25 (3,625 states) took over 50 s per pricing round); larger ones
go through the smoothed stages, then one restricted LP for the inner value."""

INNER_MAX_COLUMNS = 1_500_000
"""The restricted LP of the inner value (smoothed plan's bands plus near-contact moves) is
solved only up to this many columns."""

POLISH_RESIDUAL = 1e-8
"""Largest row residual of a column-generation plan accepted as a feasible (inner) plan."""

INNER_RESID_TOL = 1e-3
"""Default largest marginal error (L1 summed over dates) of an inner chain that counts as
fitted (``certify_side``'s ``inner_resid_tol``)."""


def live_states(chain: AugmentedChain) -> int:
    """Number of live states (x, s) at the dates 0..T-1 (the LP's martingale rows)."""
    return int(sum(chain.reach[t][chain.support[t]].sum() for t in range(chain.last_date)))


def lp_columns(chain: AugmentedChain) -> int:
    """Number of columns (moves (x, s) -> y) of the chain LP, counted without building it."""
    return int(sum(chain.reach[t][chain.support[t]].sum() * chain.support[t + 1].sum()
                   for t in range(chain.last_date)))


@dataclass(frozen=True)
class CertifiedProgress:
    """One eps stage of a certified solve, passed to ``progress`` callbacks. ``eps == 0``
    marks a round of the exact column generation (``stage`` the round, ``inner`` the restricted
    LP's value, ``outer`` the exact sweep of its potentials)."""

    side: str
    stage: int
    eps: float
    outer: float
    inner: float
    marginal_error: float
    seconds: float


def nest_supports(marginals: Marginals, last_date: int, *, max_mass: float = 1e-8
                  ) -> tuple[Marginals, float]:
    """Merge tail mass of mu_t lying outside the hull of supp mu_{t+1} onto that hull's end point.

    Marginals in convex order within a tolerance (tails of 1e-12 mass, supports that differ by
    date) can put mass at points from which no martingale move onto supp mu_{t+1} exists; the
    exact problem is then infeasible by that mass. Dates are processed backwards so the supports
    nest. Returns the repaired marginals and the total mass moved; more than ``max_mass`` is a
    ``ValueError`` naming the date (the marginals are then not in convex order).
    """
    w = np.array(marginals.weights, dtype=float)
    grid = np.asarray(marginals.grid, dtype=float)
    moved = 0.0
    for t in range(last_date - 1, -1, -1):
        nxt = np.flatnonzero(w[t + 1] > 0)
        lo, hi = nxt[0], nxt[-1]
        for sl, end in ((slice(0, lo), lo), (slice(hi + 1, None), hi)):
            extra = float(w[t, sl].sum())
            if extra > 0:
                if extra > max_mass:
                    raise ValueError(
                        f"marginals[{t}] has mass {extra:.3e} outside [{grid[lo]:.6g}, "
                        f"{grid[hi]:.6g}], the hull of the support of marginals[{t + 1}]: no "
                        "martingale has these marginals (repair the convex order first)")
                w[t, end] += extra
                w[t, sl] = 0.0
                moved += extra
    if moved == 0.0:
        return marginals, 0.0
    return Marginals(grid, w, marginals.times, sum_tol=marginals.sum_tol,
                     mean_tol=max(marginals.mean_tol, 1e-8), convex_tol=marginals.convex_tol,
                     check_convex=False), moved


class _OutOfTime(Exception):
    """The time budget ran out inside an L-BFGS stage (raised by the objective before a
    smoothed sweep, so that a line search of many sweeps cannot overrun the budget)."""


def within_rtol(gap: float, outer: float, scale: float, rtol: float) -> bool:
    """|gap| <= rtol * max(|outer|, 1e-3 * scale): the bracket is closed to ``rtol`` of the
    bound (of the payoff's scale for bounds near 0)."""
    return abs(gap) <= rtol * max(abs(outer), 1e-3 * scale)


def stage_stop(gap: float, outer: float, scale: float, *, rtol: float, fitted: bool,
               t0: float, max_seconds: float, eps: float, eps_end: float
               ) -> tuple[int, str] | None:
    """The end of an eps-scaling loop after a stage, as (status, message), or None to go on:
    the gap within ``rtol`` of the bound (with the inner value's fit acceptable), the time
    budget spent, or the schedule at ``eps_end``."""
    if within_rtol(gap, outer, scale, rtol) and fitted:
        return 0, "certified gap within rtol"
    if time.perf_counter() - t0 > max_seconds:
        return 1, f"time budget {max_seconds:g} s spent"
    if eps <= eps_end * (1 + 1e-9):
        return 1, "eps schedule ended before the gap reached rtol"
    return None


def check_options(*, rtol: float = 1e-4, eps_start: float = 1e-2, eps_end: float = 1e-7,
                   eps_factor: float = 0.2, band: float = 40.0, max_seconds: float = 600.0,
                   max_iter: int = 400, inner_resid_tol: float = INNER_RESID_TOL,
                   **_: object) -> None:
    """ValueError naming the option and the value for an out-of-range option of
    ``certify_side`` (defaults as there; other keywords are ignored), NaN included: a NaN time
    budget would never run out."""
    for name, v in (("rtol", rtol), ("eps_start", eps_start), ("eps_end", eps_end),
                    ("eps_factor", eps_factor), ("band", band), ("max_seconds", max_seconds)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):  # "1", True, None
            raise ValueError(f"{name} must be a number, got {v!r}")
    for name, v in (("rtol", rtol), ("eps_start", eps_start), ("eps_end", eps_end)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    if not 0 < eps_factor < 1:
        raise ValueError(f"eps_factor must be in (0, 1), got {eps_factor!r}")
    if eps_end > eps_start:
        raise ValueError(f"eps_end must be <= eps_start, got {eps_end!r} > {eps_start!r}")
    if not (np.isfinite(band) and band >= 5):
        raise ValueError(f"band must be >= 5, got {band!r}")
    check_count(max_iter, "max_iter")
    if isinstance(inner_resid_tol, bool) or not isinstance(inner_resid_tol, numbers.Real) \
            or not (np.isfinite(inner_resid_tol) and inner_resid_tol >= 0):
        raise ValueError(f"inner_resid_tol must be a finite number >= 0, got "
                         f"{inner_resid_tol!r}")
    if not max_seconds >= 0:  # 0: no stage, the start's certificate (a coarse level's)
        raise ValueError(f"max_seconds must be a number >= 0 (inf: no budget), got "
                         f"{max_seconds!r}")


def certify_side(chain: AugmentedChain, marginals: Marginals, sense: str, *,
                 rtol: float = 1e-4, eps_start: float = 1e-2, eps_end: float = 1e-7,
                 eps_factor: float = 0.2, band: float = 40.0, max_iter: int = 400,
                 gtol: float = 1e-9, maxcor: int = 50, precondition: float = 0.0,
                 inner_resid_tol: float = INNER_RESID_TOL, polish: bool = True,
                 polish_max_states: int = POLISH_MAX_STATES, max_seconds: float = 600.0,
                 u0: np.ndarray | None = None, start: dict | None = None,
                 min_sweeps: int = 0, progress=None) -> BoundSide:
    """One side of the certified bounds on ``chain`` (see the module docstring).

    Parameters
    ----------
    chain : AugmentedChain
    marginals : Marginals
    sense : {"lower", "upper"}
    rtol : float
        Stop when |outer - inner| <= rtol * max(|outer|, 1e-3 * payoff scale) with the inner
        chain's marginal error (L1 summed over dates) <= ``inner_resid_tol``.
    eps_start, eps_end, eps_factor : float
        eps-scaling schedule, relative to the payoff scale max |f| on the chain.
    band : float
        Band of the smoothed envelope in units of eps (terms below exp(-band) dropped).
    max_iter : int
        L-BFGS iterations per stage.
    gtol, maxcor : float, int
        L-BFGS-B options (gradient tolerance on the marginal residual, memory).
    precondition : float
        0 (off) or a mass floor: optimise v = u sqrt(max(mu, floor) / eps) (the diagonal of
        the Hessian at a fitted chain, floored so tail points are not blown up).
    inner_resid_tol : float
        Marginal error (L1 over dates) below which an inner estimate counts.
    polish : bool
        Solve the chain LP exactly by column generation (``deepquant.mmot.colgen``) when the
        chain has at most ``polish_max_states`` live states in all: first from ``u0`` (if it
        converges, the bracket closes to the LP tolerance and the smoothed stages are skipped),
        otherwise (larger chains) the LP restricted to the final smoothed plan's bands and the
        near-contact moves is solved once (up to ``INNER_MAX_COLUMNS`` columns). Either plan is
        feasible, so its value is a rigorous inner bound (``info["inner_kind"]`` says which
        inner value is reported); its potentials, swept exactly, are a second outer candidate.
    polish_max_states : int
    max_seconds : float
        Time budget; the best certificate so far is returned when it runs out.
    u0 : ndarray, optional
        Warm start, the concatenated potentials u_1..u_T on the supports, or a (k, n) array of
        k candidates (the stages start from the one with the best certificate). Its certificate
        is taken before the first stage (the side never ends worse than it), and the budget is
        then checked before the first smoothed sweep too (a side may end without smoothing).
    start : dict, optional
        The inner estimate until a stage gives one (``inner``, ``resid``, ``kind``), e.g. the
        inner value of a coarse grid.
    min_sweeps : int
        With ``u0``: run the smoothed stages only if this many smoothed sweeps, predicted as
        ``SOFT_OVER_HARD`` times the exact sweep of ``u0``'s certificate, fit in the budget
        left (0: always run them).
    progress : callable, optional
        Called with a ``CertifiedProgress`` after each stage.

    Returns
    -------
    BoundSide
        ``value`` the certified outer bound (always valid), ``gap`` outer - inner,
        ``primal_residual`` the inner chain's L1 marginal error, ``info`` with ``inner``,
        ``eps``, ``stages``, ``iterations``, ``violation`` (the shift added to the constant).
    """
    if sense not in ("lower", "upper"):
        raise ValueError(f"sense must be 'lower' or 'upper', got {sense!r}")
    check_options(rtol=rtol, eps_start=eps_start, eps_end=eps_end, eps_factor=eps_factor,
                   band=band, max_seconds=max_seconds)
    warm_kernels()  # compiled or loaded outside the budget (once per process)
    t0 = time.perf_counter()
    sign = 1.0 if sense == "upper" else -1.0
    if chain.last_date == 0:
        val = float(np.sum(chain.law0[:, None] * chain.initial.toarray() * chain.terminal))
        return BoundSide(val, True, "optimal", "no free variables (payoff known at date 0)",
                         0.0, 0.0, 0.0, 0.0, info=dict(inner=val))
    with threadpool_limits(limits=1, user_api="blas"):
        # L-BFGS-B's small dense algebra: 4x slower with 2 BLAS threads on 2 cores (DESIGN §7)
        return _certify(chain, marginals, sense, sign, t0, rtol=rtol, eps_start=eps_start,
                        eps_end=eps_end, eps_factor=eps_factor, band=band, max_iter=max_iter,
                        gtol=gtol, maxcor=maxcor, precondition=precondition,
                        inner_resid_tol=inner_resid_tol, polish=polish,
                        polish_max_states=polish_max_states, max_seconds=max_seconds, u0=u0,
                        start=start, min_sweeps=min_sweeps, progress=progress)


def _certify(chain, marginals, sense, sign, t0, *, rtol, eps_start, eps_end, eps_factor, band,
             max_iter, gtol, maxcor, precondition, inner_resid_tol, polish, polish_max_states,
             max_seconds, u0, start, min_sweeps, progress) -> BoundSide:
    sw = _Sweeper(chain, marginals, sign)
    starts = np.zeros((1, sw.mu_flat.size)) if u0 is None else np.array(u0, dtype=float)
    if starts.shape[-1:] != sw.mu_flat.shape or starts.ndim > 2:
        raise ValueError(f"u0 must have shape {sw.mu_flat.shape} (or (k, "
                         f"{sw.mu_flat.size}) for k candidates), got {starts.shape}")
    starts = starts.reshape(-1, sw.mu_flat.size)
    uvec = starts[0]
    scale = sw.scale
    best = (np.inf, uvec.copy(), np.zeros(sw.T))
    inner = np.nan
    resid = np.inf  # marginal error (L1 over dates) of the chain that gave ``inner``
    drift = np.nan
    nit = 0
    stages = 0
    eps = eps_start
    inner_kind = "smoothed chain"
    if u0 is not None:  # the start's certificate: the side never ends worse than it
        t_cert = time.perf_counter()
        # the candidates ranked by their lowered values (one exact sweep each), the best one
        # certified (a second, verified sweep) and the stages' start
        ranked = [sw.lower_to_lines(cand) for cand in starts]
        k = int(np.argmin([r[0] for r in ranked]))
        uvec = starts[k].copy()
        best = sw.certify(uvec.copy(), ranked[k][1])
        sweep = SOFT_OVER_HARD * (time.perf_counter() - t_cert) / (1 + starts.shape[0])
        if min_sweeps * sweep >= max_seconds - (time.perf_counter() - t0):
            max_seconds = 0.0  # no smoothed stage fits: the start's certificate stands
    if start is not None:
        inner, resid, inner_kind = sign * start["inner"], start["resid"], start["kind"]
    if polish and live_states(chain) <= polish_max_states:
        log = None
        if progress is not None:
            def log(rnd, sec, cols, val, worst, outer):
                # eps = 0 marks a column-generation round: the restricted LP's value is an
                # inner value, its potentials swept exactly the round's outer bound
                progress(CertifiedProgress(sense, rnd, 0.0, sign * outer, sign * val, 0.0,
                                           time.perf_counter() - t0))
        cg = solve_chain_colgen(sw, uvec, max_seconds=max_seconds, log=log)
        if cg.u is not None and cg.residual <= POLISH_RESIDUAL:
            # a feasible plan (rigorous inner) and its potentials (a second outer candidate)
            cert = sw.certify(cg.u)
            if best[0] < cert[0]:  # a budget-stopped LP can end worse than its start
                cert = best
            outer = cert[0]
            within = within_rtol(outer - cg.value, outer, scale, rtol)
            status = 0 if within else 1
            message = (f"LP solved by column generation ({cg.rounds} rounds, {cg.columns} "
                       f"columns): {cg.message}")
            return side_result(sw, sign, t0, cert, cg.value, cg.residual,
                                "LP (column generation)", status, message,
                                dict(eps=0.0, stages=0, iterations=cg.rounds, drift=0.0,
                                     lp_seconds=cg.lp_seconds, columns=cg.columns))
    status, message = 1, "eps schedule ended before the gap reached rtol"
    while True:
        e_abs = eps * scale
        sw.h_warm = [None] * sw.T

        # diagonal preconditioner: d law_t(y) / d u_t(y) ~ -mu_t(y) / eps (the Gibbs weight
        # of y scales like exp(-u_t(y) / eps)), so optimise v = u * sqrt(mu / eps)
        pre = (np.sqrt(e_abs / np.maximum(sw.mu_flat, precondition)) if precondition > 0
               else np.full(sw.mu_flat.size, e_abs))

        low: dict = {}  # the stage's evaluation with the lowest smoothed value

        def fun(v, e_abs=e_abs, pre=pre, low=low, armed=bool(np.isfinite(best[0]))):
            # the budget is checked before every sweep: one L-BFGS stage (up to max_iter
            # iterations, each with its line search) can otherwise run far past it
            if (low or armed) and time.perf_counter() - t0 > max_seconds:
                raise _OutOfTime
            val, grad, _, _, _ = sw.soft(v * pre, e_abs, band)
            if not low or val < low["f"]:
                low.update(f=val, v=v.copy())
            return val / e_abs, grad * pre / e_abs

        def count(intermediate_result):
            nonlocal nit
            nit += 1

        try:
            optimize.minimize(fun, uvec / pre, jac=True, method="L-BFGS-B", callback=count,
                              options=dict(maxiter=max_iter, maxcor=maxcor, gtol=gtol,
                                           ftol=1e-15))
        except _OutOfTime:
            if not low:  # out of time before the stage's first sweep: the start stands
                status, message = 1, f"time budget {max_seconds:g} s spent"
                break
        uvec = low["v"] * pre
        stages += 1
        _, _, stage_inner, law, drift = sw.soft(uvec, e_abs, band)
        stage_resid = float(np.sum(np.abs(law - sw.mu_flat)))
        if better_inner(stage_inner, stage_resid, inner, resid, inner_resid_tol):
            inner, resid, inner_kind = stage_inner, stage_resid, "smoothed chain"
        cert = sw.certify(uvec.copy())
        if cert[0] < best[0]:
            best = cert
        gap = best[0] - inner
        if progress is not None:
            progress(CertifiedProgress(sense, stages, e_abs, sign * best[0], sign * inner, resid,
                                       time.perf_counter() - t0))
        verdict = stage_stop(gap, best[0], scale, rtol=rtol, fitted=resid <= inner_resid_tol,
                             t0=t0, max_seconds=max_seconds, eps=eps, eps_end=eps_end)
        if verdict is not None:
            status, message = verdict
            break
        eps = max(eps * eps_factor, eps_end)
    extra = dict(eps=eps * scale, stages=stages, iterations=nit, drift=drift)
    left = max_seconds - (time.perf_counter() - t0)
    if polish and left > 1.0:
        # one restricted LP on the final stage's bands and the near-contact moves of the best
        # potentials (within what is left of the budget): a feasible plan, so a rigorous inner
        # value
        sw.soft(best[1], eps * scale, band)
        cg = solve_chain_colgen(sw, best[1], k=6, extra=band_moves(sw), max_rounds=1,
                                solver="ipm", max_columns=INNER_MAX_COLUMNS, max_seconds=left)
        if cg.u is not None and cg.residual <= POLISH_RESIDUAL:
            inner, resid, inner_kind = cg.value, cg.residual, "restricted LP"
            extra.update(lp_seconds=cg.lp_seconds, columns=cg.columns)
            cert = sw.certify(cg.u)
            if cert[0] < best[0]:
                best = cert
            if within_rtol(best[0] - inner, best[0], scale, rtol):
                status, message = 0, "certified gap within rtol (inner: a feasible plan)"
    return side_result(sw, sign, t0, best, inner, resid, inner_kind, status, message, extra)


def better_inner(value: float, resid: float, inner: float, inner_resid: float, tol: float
                 ) -> bool:
    """Whether a chain's ``value`` (sign-flipped: larger is tighter) with marginal error
    ``resid`` replaces the inner estimate ``inner`` (error ``inner_resid``; NaN: not measured
    on this grid, e.g. a coarse grid's value). The estimate is only as good as its chain's
    marginals: among chains that fit them within ``tol`` keep the largest value (the entropic
    bias is downwards); while none does, keep the best-fitting one."""
    fits, fitted = resid <= tol, inner_resid <= tol
    return bool((fits and (not fitted or value > inner))
                or (not fits and not fitted and resid < inner_resid))


def clip_inner(inner: float, outer: float) -> tuple[float, float]:
    """(inner clipped to the outer bound, the excess clipped off). An inner value above the
    certified outer bound is an artefact: a smoothed chain's marginal (or band) error, or an LP
    plan whose row residuals (within the solver's tolerance) sit on rows with huge duals (tail
    states of 1e-13 mass). The bracket keeps the outer bound and reports the excess instead of
    a negative gap."""
    return min(inner, outer), max(0.0, float(inner - outer))


def adopt_certificate(side: BoundSide, sw: _Sweeper, best, *, rtol: float,
                      inner_resid_tol: float = INNER_RESID_TOL, info: dict | None = None,
                      note: str | None = None) -> BoundSide:
    """``side`` with the certificate ``best`` = (outer, u, violation per period) of
    ``sw.certify`` (the sweep's sign) as its outer bound when it is tighter, else ``side`` (with
    ``info`` either way: the caller's report of the attempt). The gap is taken to the side's
    inner value (clipped to the new bound), the hedge (``duals_of``) and potentials
    (``info["u_sweep"]``) are the new certificate's, and the status becomes ``"certified"`` only
    when the gap is within ``rtol`` and the inner value's chain fits the marginals
    (``side.primal_residual <= inner_resid_tol``, as ``certify_side`` asks); ``note`` is added
    to the message of an adopted certificate."""
    import dataclasses

    sign = sw.sign
    info = dict(side.info if info is None else info)
    outer, ubest, viol = best
    if not outer < sign * side.value:
        return dataclasses.replace(side, info=info)
    inner, excess = clip_inner(sign * side.info["inner"], outer)
    gap = outer - inner
    info.update(u_sweep=sw.unflatten(ubest), violation=float(viol.sum()), inner_excess=excess,
                relative_gap=gap / max(abs(outer), 1e-300))
    within = (within_rtol(gap, outer, sw.scale, rtol)
              and side.primal_residual <= inner_resid_tol)
    return dataclasses.replace(side, value=sign * outer, gap=float(gap), duals=duals_of(sw, ubest),
                               info=info, status="certified" if within else side.status,
                               message=side.message if note is None
                               else f"{side.message}; {note}")


def side_result(sw: _Sweeper, sign: float, t0: float, best, inner: float, resid: float,
                 inner_kind: str, status: int, message: str, extra: dict) -> BoundSide:
    """The BoundSide of the certificate ``best`` = (outer, u, violation per period)."""
    outer, ubest, viol = best
    duals = duals_of(sw, ubest)
    inner, excess = clip_inner(inner, outer)
    extra = dict(extra, inner_excess=excess)
    gap = outer - inner
    info = dict(inner=sign * inner, inner_kind=inner_kind, u_sweep=sw.unflatten(ubest),
                violation=float(viol.sum()), scale=sw.scale,
                relative_gap=gap / max(abs(outer), 1e-300), **extra)
    code = "certified" if status == 0 else "certified-wide"
    return BoundSide(sign * outer, True, code, message, time.perf_counter() - t0, resid, 0.0,
                     float(gap), duals, None, info)


SOFT_OVER_HARD = 100.0
"""Predicted cost of one smoothed sweep over one exact sweep of the same chain, which decides
whether a level above the work level runs smoothed stages (``min_sweeps``). Measured 70-160
when it was set; on the current kernels (Heston, N = 5, M = 150, at the certified potentials)
the lookback's ratio is 1-5 (exact 16 ms, smoothed 15-78 ms) and the Asian's 1.3-10 (63 ms,
85-630 ms), so the prediction now mostly keeps the 150-point level to its certificate. Kept:
running those stages anyway did not tighten the lookback's upper side in 10 s (0.08254
against 0.08261; docs/benchmarks-certified.md, "The fine level's own stages")."""
