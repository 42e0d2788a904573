"""Outer bounds from the dates a payoff reads: the relaxation to those dates, solved exactly
and certified on the chain (DESIGN §2.1, §2.8).

A payoff of (X_t1, X_t2) alone with dates between them (a forward start with t2 > t1 + 1,
``Payoff.own_dates``) needs the augmented chain of the remembered X_t1 over every period from
t1 to t2. But every martingale law with the marginals mu_0, ..., mu_N gives (X_t1, X_t2) a
martingale coupling of (mu_t1, mu_t2), so the bounds over those couplings, a one-period problem
that the interior point method (``ipm``) solves exactly in a fraction of a second at 150
points, bound the multi-period ones: the lower one from below, the upper from above. The dates
in between can only tighten the multi-period bounds.

The relaxation's potentials (u_t1, u_t2; zero at the other dates) are potentials of the chain
too: the chain's exact sweep certifies them there (``_Sweeper.certify``: the cheapest
positions h_t(X_t, X_t1), among them the relaxation's h(X_t1) held from t1 to t2, and the
constant shifted by the measured worst violation), so the adopted bound is one of the chain's
own certificates, with its hedge from ``duals_of`` like any other, whatever the interior point
method reached. The certified pipeline (``multiscale``) takes it where it is tighter, before
the inner value's stages and the polish, which then go on from it; its optimal plans give the
windows of the conditional laws' chain (``two_date``), the inner value of such a payoff.

Measured (Heston on [0.55, 1.45], N = 5, and 13 monthly dates on [0.4, 1.8], M = 150; one
process): the relaxation's bounds and their certificates on the chain agree to 1e-7, in
0.02-0.2 s for the interior point method and 0.01-0.02 s for the sweep. In the pipeline (the
forward-start straddle, t1 = 1): N = 5, 10 s per side, [0.057963, 0.107686] -> [0.057966,
0.107663] and, from the dual's pass against the relaxation's values to go, the upper inner
value 0.107583 -> 0.107640: gaps 0.15-0.17% / 0.096% -> 0.17% / 0.022% (``workers=2``); 13
monthly dates, 20 s per side, [0.112860, 0.170770] -> [0.113008, 0.170397], gaps 0.35% /
0.55% -> 0.23% / 0.21%. The polish has not moved an adopted bound in any of these runs, so an
adopted side gives the polish's share of its budget to the inner value, and with two workers
the two processes share its path passes instead of polishing (``beside._shared_passes``; the
N = 5 upper side 0.022% in every run, the 13 monthly dates' 0.014%; docs/benchmarks-certified.md,
"The relaxation to the payoff's own dates", "A final certificate's passes shared").

The bounds from quotes (``quotes_bounds``) relax the same way (``quote_relaxation``): the
exact quote LP of the expiries the payoff reads alone gives positions in their quotes, and the
whole problem's exact sweep certifies them as positions with none at the other expiries.
Measured on the SPX chain (5 expiries, 150 points, 10 s per side), the straddle from expiry 1
to 5: [0.044665, 0.077379] -> [0.044795, 0.077337], real brackets 2.6e-4 / 5.2e-4 -> 7.5e-5
/ 2.8e-4 (docs/quote-bounds.md, "The relaxation to the expiries the payoff reads").
"""

from __future__ import annotations

import time
import warnings

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.mmot.augment import AugmentedChain
from deepquant.mmot.certified import adopt_certificate
from deepquant.mmot.result import BoundSide, BoundsResult
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import Payoff
from deepquant.results import ConvergenceWarning

__all__ = ["MAX_POINTS", "PLAN_MAX_POINTS", "RTOL", "adopt_relaxed", "quote_relaxation",
           "relaxed_bounds"]

RTOL = 1e-7
"""Relative width of the interior point method's brackets on the relaxation (its default):
the certificate on the chain is what counts, and it is exact whatever the IPM reached."""

MAX_POINTS = 400
"""Largest grid the relaxation runs on: its cost grows as M^3 (a dense Cholesky factorisation
of M x M per step; 0.2 s for both sides at M = 150, about 9 s at M = 800 on 2 cores), and a
multi-period certified side beyond a few hundred points is not the case it helps."""


PLAN_MAX_POINTS = 200
"""Largest grid whose relaxation's optimal plans are also computed (HiGHS, 0.3 s for both sides
at 150 points): the windows of ``two_date.conditional_law_chain``, whose LP beyond it is
larger than ``two_date.MAX_VARIABLES`` anyway."""


def relaxed_bounds(marginals: Marginals, payoff: Payoff, sides: tuple[str, ...]
                   ) -> BoundsResult | None:
    """The interior point method's bounds of ``payoff`` on the marginals of the dates it reads
    alone (``payoff.own_dates``), with ``info["dates"]`` those dates, ``info["plans"]`` the
    optimal plans (M, M) of (X_t1, X_t2) by side (on grids up to ``PLAN_MAX_POINTS``, for a
    remembered value) and ``info["seconds"]`` its time; None when the payoff reads every
    date up to its last or the grid has more than ``MAX_POINTS`` points. ``marginals``:
    nested as the chain's (``certified.nest_supports``), so that the relaxation's supports
    are the chain's."""
    from deepquant.mmot.ipm import ipm_bounds

    dates = payoff.own_dates(marginals.n_dates)
    if dates is None or marginals.size > MAX_POINTS:
        return None
    relaxed = payoff.on_dates(dates)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # only the certificate on the chain counts: an IPM short of its rtol is no failure here
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            res = ipm_bounds(marginals.select(list(dates)), relaxed, rtol=RTOL,
                             sides=tuple(sides))
        except ValueError:
            # the two dates' laws out of convex order by more than the check's tolerance (the
            # round-off of the periods between adds up): no relaxation, the chain stands
            return None
    plans = {}
    if marginals.size <= PLAN_MAX_POINTS and payoff.statistic(marginals.n_dates).kind == "value":
        # the optimal plans of (X_t1, X_t2): the windows of the conditional laws (``two_date``).
        # A second solve on purpose: HiGHS's vertex duals would do as the certificate, but the
        # inner value's passes run against the adopted potentials' values to go, and the
        # interior point method's central ones lead them to better chains (measured, 13 dates,
        # 20 s, the straddle's upper inner value: 0.170046 against 0.169501 with HiGHS's duals)
        from deepquant.mmot.lp import lp_bounds

        try:
            lp = lp_bounds(marginals.select(list(dates)), relaxed, return_plan=True,
                           decompose=False, sides=tuple(sides))
            for side in sides:
                bs = lp.lower_side if side == "lower" else lp.upper_side
                if bs is not None and bs.success and bs.plan is not None:
                    plans[side] = np.asarray(bs.plan[0]).sum(axis=1)
        except ValueError:
            plans = {}
    res.info.update(dates=tuple(int(d) for d in dates), plans=plans,
                    seconds=time.perf_counter() - t0)
    return res


def adopt_relaxed(side: BoundSide, relaxed: BoundsResult | None, chain: AugmentedChain,
                  marginals: Marginals, sense: str, *, rtol: float) -> BoundSide:
    """``side`` (a certified side of ``chain`` on ``marginals``) with the certificate on the
    chain of the relaxation's potentials (module docstring) as its outer bound when it is
    tighter (``certified.adopt_certificate``); ``info["relaxation"]`` reports the attempt:
    the dates, the relaxation's own bound, its certificate on the chain, ``adopted``. ``side``
    as it is when there is no relaxation, or no certificate to compare with."""
    rel = None if relaxed is None else (relaxed.lower_side if sense == "lower"
                                        else relaxed.upper_side)
    if rel is None or rel.duals is None or side.info.get("u_sweep") is None \
            or not np.isfinite(rel.value):
        return side
    t0 = time.perf_counter()
    sign = 1.0 if sense == "upper" else -1.0
    t1, t2 = relaxed.info["dates"]
    u = np.zeros((chain.last_date + 1, chain.size))  # the payoff's sign, as Duals.u
    u[t1] = np.nan_to_num(rel.duals.u[0])
    u[t2] = np.nan_to_num(rel.duals.u[1])
    sw = _Sweeper(chain, marginals, sign)
    best = sw.certify(sw.flatten(sign * u))
    report = dict(dates=(t1, t2), bound=rel.value, certified=sign * best[0],
                  adopted=bool(best[0] < sign * side.value),
                  seconds=relaxed.info["seconds"] + time.perf_counter() - t0)
    return adopt_certificate(side, sw, best, rtol=rtol, info=dict(side.info, relaxation=report),
                             note=f"outer bound from the relaxation to dates {t1} and {t2}")


def quote_relaxation(prob, side: str, highs_options: dict | None = None
                     ) -> tuple[tuple, dict] | None:
    """The bounds from quotes (``quotes_bounds``) relaxed to the expiries the payoff reads:
    (best = (bound in the side's sign, positions of ``prob``, violation) by ``prob.certify``,
    a report), or None when the payoff reads every date, the grid has more than
    ``MAX_POINTS`` points or HiGHS gives no solution. The exact quote LP (``_lp_side``) of the
    bands of those expiries alone (today's date 0 kept) gives positions in their quotes; as
    positions of the whole problem (none at the other expiries) the exact sweep of ``prob``
    certifies them, a valid bound whatever the relaxation's LP reached."""
    from deepquant.mmot.quote_bands import QuoteBands
    from deepquant.mmot.quote_problem import _Problem
    from deepquant.mmot.quotes_bounds import _lp_side

    dates = prob.payoff.own_dates(prob.T + 1)
    if dates is None or prob.grid.size > MAX_POINTS:
        return None
    t0 = time.perf_counter()
    kept = dates if dates[0] == 0 else (0, *dates)
    expiries = [d - 1 for d in kept if d >= 1]  # date d is expiry d - 1 (date 0 is today)
    b = prob.bands
    sub = QuoteBands(tuple(b.labels[s] for s in expiries), b.times[expiries],
                     *(tuple(getattr(b, f)[s] for s in expiries)
                       for f in ("k", "is_call", "bid", "ask")))
    fitted = None if prob.fitted is None else np.asarray(prob.fitted)[expiries]
    sub_prob = _Problem(sub, prob.grid, prob.payoff.on_dates(kept), fitted, prob.sum_mode,
                        prob.sum_grid_size)
    lp = _lp_side(sub_prob, side, highs_options)
    if not lp.success:
        return None
    a = np.zeros(prob.off[-1])
    for s, pos in zip(expiries, lp.info["positions"]):
        a[prob.off[s]:prob.off[s + 1]] = pos
    sign = 1.0 if side == "upper" else -1.0
    total, _, viol = prob.certify(a, sign)
    report = dict(dates=tuple(int(d) for d in dates), bound=lp.value, certified=sign * total,
                  seconds=time.perf_counter() - t0)
    return (total, a, viol), report
