"""``bounds``: the one entry point for model-free price bounds (DESIGN §2).

    >>> res = bounds(marginals, AsianCall(strike=1.0))           # exact LP, augmented chain
    >>> res.lower, res.upper, res.status, res.sizes

Methods
-------
``"auto"``      (default) the interior point method for pairwise payoffs beyond
                ``IPM_MIN_COLUMNS`` variables; otherwise the exact LP when it is small (at
                most ``LP_MAX_COLUMNS`` variables) and the certified method beyond;
                ``result.method`` says which ran.
``"lp"``        exact LP (HiGHS): per-period LPs for pairwise payoffs, the augmented chain LP
                for path-dependent ones (``deepquant.mmot.lp``).
``"certified"`` certified bounds at market resolution (``deepquant.mmot.multiscale``): the
                smoothed dual optimised by L-BFGS with eps-scaling, each iterate certified by
                the exact concave-envelope sweep; ``lower``/``upper`` are always valid bounds
                and each side reports its gap to an inner estimate.
``"ipm"``       pairwise payoffs only (``payoff.pairwise(n)`` not None: forward-start payoffs
                between adjacent dates, Europeans, sum of squared increments): each one-period
                LP by a primal-dual interior point method whose Newton systems reduce to one
                dense Cholesky factorisation in the next date's potentials
                (``deepquant.mmot.ipm``); the potentials are certified by the exact concave
                envelope, so ``lower``/``upper`` are valid bounds and each side reports its
                bracket [inner, outer].
``"path-lp"``   the LP over all grid paths, for tiny problems (``deepquant.mmot.pathlp``).
``"entropic"``  entropic plans on the augmented chain (``deepquant.mmot.augmented_entropic``);
                needs ``eps``; the bounds are the transport costs of the entropic plans, inner
                estimates of the LP bounds.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.mmot.result import BoundsResult, MMOTProblem
from deepquant.payoffs import Payoff, check_payoff

__all__ = ["bounds", "METHODS"]

METHODS = ("auto", "lp", "certified", "ipm", "path-lp", "entropic")

IPM_MIN_COLUMNS = 10_000
"""``method="auto"`` runs the interior point method for pairwise payoffs beyond this many
variables (about M = 100 per period; measured 6x faster than HiGHS in CPU there, 13x at M = 800,
``docs/benchmarks-ipm.md``)."""

LP_MAX_COLUMNS = 60_000
"""``method="auto"`` runs the exact LP up to this many variables pi_t(x, s, y) (about 10 s per
side with HiGHS on 2 cores), the certified method beyond."""


def bounds(marginals: Marginals, payoff: Payoff, method: str = "auto", *,
           eps: float | None = None, **options) -> BoundsResult:
    """Lower and upper bounds of E[payoff] over martingale laws with the given marginals.

    Parameters
    ----------
    marginals : Marginals
        Laws of X_0..X_N on a common grid (in convex order, or pass ``martingale_tol > 0`` to
        the LP for the relaxed problem).
    payoff : Payoff
        From ``deepquant.payoffs`` (e.g. ``make_payoff("asian-call", strike=1.0)``).
    method : {"auto", "lp", "certified", "ipm", "path-lp", "entropic"}
    eps : float, optional
        Entropic regularisation; required for (and only for) ``method="entropic"``: a real
        number between ``MIN_EPS_RATIO`` and ``MAX_EPS_RATIO`` times the problem's scale
        (``deepquant.mmot.augmented_entropic``).
    **options
        Passed to ``lp.lp_bounds`` (``sum_mode``, ``sum_grid_size``, ``martingale_tol``,
        ``highs_options``, ``return_plan``, ...), ``multiscale.certified_bounds`` (``rtol``,
        ``eps_end``, ``max_seconds``, ``progress``, ``workers``, ...), ``ipm.ipm_bounds`` (``rtol``,
        ``feas_tol``, ``max_iter``, ``sides``, ``workers``), ``pathlp.path_lp_bounds``
        (``max_paths``, ...) or ``augmented_entropic.entropic_bounds`` (``reference``, ``tol``,
        ...).

    Returns
    -------
    BoundsResult
        With ``problem`` (marginals, payoff, the method that ran, the options), so that
        ``superhedge(result)`` and ``verify_hedge(hedge)`` need nothing else.
    """
    res = _solve(marginals, payoff, method, eps=eps, **options)
    opts = {k: v for k, v in options.items() if k != "progress"}
    if eps is not None:
        opts["eps"] = eps
    return dataclasses.replace(res, problem=MMOTProblem(marginals, payoff, res.method, opts))


def _solve(marginals: Marginals, payoff: Payoff, method: str, *, eps: float | None,
           **options) -> BoundsResult:
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    check_payoff(payoff)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "entropic" and eps is not None:
        raise ValueError(f"eps is only used by method='entropic', got eps={eps!r} with "
                         f"method={method!r}")
    if method == "auto":
        cols = lp_columns(marginals, payoff, **_chain_options(options))
        method = "lp" if cols <= LP_MAX_COLUMNS or options.get("martingale_tol") \
            else "certified"
        if payoff.pairwise(marginals.n_dates) is not None and not options.get("martingale_tol") \
                and cols > min(IPM_MIN_COLUMNS, LP_MAX_COLUMNS):
            method = "ipm"
        if method == "lp":
            options = {k: v for k, v in options.items() if k not in _CERTIFIED_ONLY}
        elif method == "ipm":
            options = {k: v for k, v in options.items() if k in _IPM_OPTIONS}
        else:
            options = {k: v for k, v in options.items() if k not in _LP_ONLY}
    if method == "ipm":
        from deepquant.mmot.ipm import ipm_bounds

        return ipm_bounds(marginals, payoff, **options)
    if method == "certified":
        from deepquant.mmot.multiscale import certified_bounds

        return certified_bounds(marginals, payoff, **options)
    if method == "lp":
        from deepquant.mmot.lp import lp_bounds

        return lp_bounds(marginals, payoff, **options)
    if method == "path-lp":
        from deepquant.mmot.pathlp import path_lp_bounds

        return path_lp_bounds(marginals, payoff, **options)
    if eps is None:
        raise ValueError("method='entropic' needs eps > 0, got eps=None")
    from deepquant.mmot._support import _check_eps
    from deepquant.mmot.augmented_entropic import entropic_bounds

    return entropic_bounds(marginals, payoff, _check_eps(eps), **options)


_CERTIFIED_ONLY = ("rtol", "eps_start", "eps_end", "eps_factor", "band", "max_iter",
                   "max_seconds", "multiscale", "progress", "gtol", "maxcor", "polish",
                   "polish_max_states", "inner_resid_tol", "precondition", "feas_tol",
                   "workers")
_IPM_OPTIONS = ("rtol", "feas_tol", "max_iter", "sides", "workers")
_LP_ONLY = ("decompose", "martingale", "martingale_tol", "highs_options", "return_plan",
            "algorithm")


def _chain_options(options: dict) -> dict:
    return {k: options[k] for k in ("sum_mode", "sum_grid_size") if k in options}


def lp_columns(marginals: Marginals, payoff: Payoff, **chain_options) -> int:
    """Number of variables of the exact LP of ``payoff`` on ``marginals``: sum over periods of
    |supp mu_t| x |supp mu_{t+1}| for a pairwise payoff (one-period LPs), of reachable pairs
    (x, s) x |supp mu_{t+1}| on the augmented chain otherwise."""
    from deepquant.mmot.augment import build_chain
    from deepquant.mmot.certified import lp_columns as chain_lp_columns

    n = marginals.n_dates
    supp = np.asarray(marginals.weights > 0)
    terms = payoff.pairwise(n)
    if terms is not None:
        periods = sorted({int(t) for t, _ in terms})
        return int(sum(supp[t].sum() * supp[t + 1].sum() for t in periods))
    return chain_lp_columns(build_chain(marginals, payoff, **chain_options))
