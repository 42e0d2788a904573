"""Market layer: marginals, synthetic models, option chains and calibration.

* ``marginals``  ``Marginals`` (laws of X_t in forward moneyness, convex order);
* ``synthetic``  GBM / Merton / Heston marginals, exactly in convex order on the grid;
* ``chain``      the built-in synthetic option chain (Cboe-style quotes);
* ``quotes``     loading real chains, cleaning, picking expiries;
* ``parity``     forwards and discount factors by put-call parity (outlier-robust), rate and
                 calendar-arbitrage checks;
* ``calibrate``  quotes -> arbitrage-free marginals inside the bid-ask band (one convex program).
* ``result``     ``CalibrationResult`` and ``SliceReport`` (re-exported by ``calibrate``).
"""

from deepquant.market.calibrate import CalibrationResult, calibrate, calibrate_chain
from deepquant.market.chain import SyntheticChain, synthetic_chain
from deepquant.market.marginals import ConvexOrderReport, Marginals, RepairReport, call_matrix
from deepquant.market.parity import fit_parity
from deepquant.market.quotes import OptionChain, load_chain
from deepquant.market.synthetic import (
    gbm_marginals,
    heston_marginals,
    merton_marginals,
    synthetic_marginals,
)

__all__ = [
    "Marginals",
    "ConvexOrderReport",
    "RepairReport",
    "call_matrix",
    "gbm_marginals",
    "merton_marginals",
    "heston_marginals",
    "synthetic_marginals",
    "SyntheticChain",
    "synthetic_chain",
    "OptionChain",
    "load_chain",
    "fit_parity",
    "CalibrationResult",
    "calibrate",
    "calibrate_chain",
]
