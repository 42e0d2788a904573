"""``bounds``: the one entry point for model-free price bounds (DESIGN §2).

    >>> res = bounds(marginals, AsianCall(strike=1.0))           # exact LP, augmented chain
    >>> res.lower, res.upper, res.status, res.sizes

Methods
-------
``"lp"``        exact LP (HiGHS): per-period LPs for pairwise payoffs, the augmented chain LP
                for path-dependent ones (``deepquant.mmot.lp``).
``"path-lp"``   the LP over all grid paths, for tiny problems (``deepquant.mmot.pathlp``).
``"entropic"``  entropic plans on the augmented chain (``deepquant.mmot.augmented_entropic``);
                needs ``eps``; the bounds are the transport costs of the entropic plans, inner
                estimates of the LP bounds.
"""

from __future__ import annotations

from deepquant.market.marginals import Marginals
from deepquant.mmot.result import BoundsResult
from deepquant.payoffs import Payoff

__all__ = ["bounds", "METHODS"]

METHODS = ("lp", "path-lp", "entropic")


def bounds(marginals: Marginals, payoff: Payoff, method: str = "lp", *,
           eps: float | None = None, **options) -> BoundsResult:
    """Lower and upper bounds of E[payoff] over martingale laws with the given marginals.

    Parameters
    ----------
    marginals : Marginals
        Laws of X_0..X_N on a common grid (in convex order, or pass ``martingale_tol > 0`` to
        the LP for the relaxed problem).
    payoff : Payoff
        From ``deepquant.payoffs`` (e.g. ``make_payoff("asian-call", strike=1.0)``).
    method : {"lp", "path-lp", "entropic"}
    eps : float, optional
        Entropic regularisation; required for (and only for) ``method="entropic"``.
    **options
        Passed to ``lp.lp_bounds`` (``sum_mode``, ``sum_grid_size``, ``martingale_tol``,
        ``highs_options``, ``return_plan``, ...), ``pathlp.path_lp_bounds`` (``max_paths``, ...)
        or ``augmented_entropic.entropic_bounds`` (``reference``, ``tol``, ...).

    Returns
    -------
    BoundsResult
    """
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    if not isinstance(payoff, Payoff):
        raise TypeError(f"payoff must be a Payoff, got {type(payoff).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method != "entropic" and eps is not None:
        raise ValueError(f"eps is only used by method='entropic', got eps={eps!r} with "
                         f"method={method!r}")
    if method == "lp":
        from deepquant.mmot.lp import lp_bounds

        return lp_bounds(marginals, payoff, **options)
    if method == "path-lp":
        from deepquant.mmot.pathlp import path_lp_bounds

        return path_lp_bounds(marginals, payoff, **options)
    if eps is None or not eps > 0:
        raise ValueError(f"method='entropic' needs eps > 0, got eps={eps!r}")
    from deepquant.mmot.augmented_entropic import entropic_bounds

    return entropic_bounds(marginals, payoff, float(eps), **options)
