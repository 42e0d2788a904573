"""Model-free bounds by multi-period martingale optimal transport (DESIGN §2).

Entry points:

* ``bounds(marginals, payoff, method="auto"|"lp"|"certified"|"entropic"|"path-lp")``: lower and
  upper bounds over all martingale laws with the given marginals (path-dependent payoffs through
  the augmented chain of DESIGN §2.3): exact LP on small grids, certified bounds (a dual checked
  on every path, DESIGN §2.8) at market resolution;
* ``solve_entropic(marginals, eps, ...)``: the batched entropic Newton solver (pairwise or no cost);
* ``CalibratedModel.calibrate(marginals)``: the entropic calibrated martingale model, ``price`` and
  ``sample``;
* ``superhedge`` / ``verify_hedge``: semi-static hedges from the LP dual; ``delta_hedge`` /
  ``backtest``: delta hedges from the calibrated model;
* ``widen``, ``widen_bounds``: transaction-cost and calibration-uncertainty widening (of two
  numbers, or of a ``bounds`` result under its optimal plans);
* ``insert_date`` / ``append_date`` / ``update_date`` (incremental) and ``sparse_marginals``.
"""

from deepquant.mmot.augment import AugmentedChain, build_chain, expectation
from deepquant.mmot.bounds import METHODS, bounds
from deepquant.mmot.certified import CertifiedProgress
from deepquant.mmot.delta import BacktestResult, DeltaHedge, backtest, delta_hedge
from deepquant.mmot.entropic import EntropicResult, newton_polish, solve_entropic
from deepquant.mmot.hedge import SemiStaticHedge, superhedge, verify_hedge
from deepquant.mmot.incremental import append_date, insert_date, update_date
from deepquant.mmot.model import CalibratedModel, ModelPrice
from deepquant.mmot.multiscale import certified_bounds
from deepquant.mmot.result import BoundsResult
from deepquant.mmot.sparse import adaptive_grid, sparse_marginals
from deepquant.mmot.widening import WidenedBounds, widen, widen_bounds
from deepquant.results import ConvergenceWarning

__all__ = [
    "bounds",
    "METHODS",
    "certified_bounds",
    "CertifiedProgress",
    "BoundsResult",
    "solve_entropic",
    "newton_polish",
    "EntropicResult",
    "ConvergenceWarning",
    "CalibratedModel",
    "ModelPrice",
    "AugmentedChain",
    "build_chain",
    "expectation",
    "superhedge",
    "verify_hedge",
    "SemiStaticHedge",
    "delta_hedge",
    "backtest",
    "DeltaHedge",
    "BacktestResult",
    "widen",
    "widen_bounds",
    "WidenedBounds",
    "insert_date",
    "append_date",
    "update_date",
    "adaptive_grid",
    "sparse_marginals",
]
