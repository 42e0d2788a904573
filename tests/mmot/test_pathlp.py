"""The augmented LP equals the full path-space LP (the oracle) on small random cases."""

from __future__ import annotations

import numpy as np
import pytest

from deepquant.market.marginals import Marginals
from deepquant.mmot.bounds import bounds
from deepquant.payoffs import make_payoff
from tests.conftest import martingale_kernel_marginals
from tests.mmot.test_augment import irregular_marginals

CASES = [
    ("asian-call", dict(strike=1.0)),  # running sum on a lattice (uniform grid, equal weights)
    ("asian-put", dict(strike=1.02)),
    ("lookback-call", dict(strike=1.0)),
    ("lookback-put", dict(strike=1.05)),
    ("forward-start-straddle", dict(t1=0, t2=2)),  # remembered value, non-adjacent dates
    ("forward-start-call", dict(t1=1, t2=3, strike=0.98)),
    ("up-and-out-call", dict(strike=1.0, barrier=1.15)),
    ("down-and-in-put", dict(strike=1.0, barrier=0.9)),
]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name,params", CASES)
def test_augmented_lp_equals_path_lp(name, params, seed):
    rng = np.random.default_rng(seed)
    mg = Marginals(*martingale_kernel_marginals(rng, n_dates=4, size=9))
    payoff = make_payoff(name, **params)
    lp = bounds(mg, payoff, method="lp")
    oracle = bounds(mg, payoff, method="path-lp")
    assert lp.success and oracle.success and lp.exact
    # two exact LPs solved to ~1e-12: agreement to 1e-8
    assert lp.lower == pytest.approx(oracle.lower, abs=1e-8)
    assert lp.upper == pytest.approx(oracle.upper, abs=1e-8)


@pytest.mark.parametrize("name,params", [("lookback-call", dict(strike=1.0)),
                                         ("forward-start-straddle", dict(t1=0, t2=3)),
                                         ("up-and-out-call", dict(strike=1.0, barrier=1.1))])
def test_irregular_grid_equals_path_lp(name, params):
    mg = irregular_marginals(np.random.default_rng(5), n_dates=4, size=9)
    payoff = make_payoff(name, **params)
    lp = bounds(mg, payoff)
    oracle = bounds(mg, payoff, method="path-lp")
    assert lp.lower == pytest.approx(oracle.lower, abs=1e-8)
    assert lp.upper == pytest.approx(oracle.upper, abs=1e-8)


def test_path_lp_refuses_large_problems():
    mg = Marginals(*martingale_kernel_marginals(np.random.default_rng(0), n_dates=4, size=9))
    with pytest.raises(ValueError, match="max_paths"):
        bounds(mg, make_payoff("asian-call"), method="path-lp", max_paths=10)
    with pytest.raises(ValueError, match="filtration must be one of"):
        bounds(mg, make_payoff("asian-call"), method="path-lp", filtration="weak")
