"""Delta hedges from the calibrated model and their backtest (deepquant.mmot.delta).

Invariants: under the model the tracking error has mean 0 (V and X are martingales) and the
variance ``expected_error_variance`` computed exactly on the chain; the minimum-variance delta
minimises that variance state by state, so it beats the finite-difference delta and no hedge.
"""

from __future__ import annotations

import numpy as np
import pytest

from deepquant.market.marginals import Marginals
from deepquant.mmot.delta import BacktestResult, backtest, delta_hedge
from deepquant.mmot.model import CalibratedModel
from deepquant.payoffs import AsianCall, EuropeanCall, ForwardStartStraddle, LookbackCall
from tests.conftest import random_walk_marginals
from tests.result_protocol import ResultProtocol

K_SE = 4.0  # Monte Carlo tolerance in standard errors


@pytest.fixture(scope="module")
def model():
    grid, w = random_walk_marginals()
    return CalibratedModel.calibrate(Marginals(grid, w))


PAYOFFS = [AsianCall(strike=100.0, dates=(1, 2, 3)), LookbackCall(strike=100.0),
           ForwardStartStraddle(strike=1.0, t1=1, t2=3)]


@pytest.mark.parametrize("payoff", PAYOFFS, ids=lambda p: p.name)
def test_value_is_model_price_and_backtest_is_unbiased(model, payoff):
    hedge = delta_hedge(model, payoff)
    assert hedge.price == pytest.approx(model.price(payoff), abs=1e-12)
    res = backtest(hedge, model.sample(20_000, rng=2024))
    assert abs(res.mean) <= K_SE * res.stderr
    # sample variance against the exact chain variance: the sample std of a std estimate with
    # n = 20000 is about std * sqrt((kurtosis - 1) / 4n) < 2% here; allow 6%
    exact = np.sqrt(hedge.expected_error_variance())
    assert res.std == pytest.approx(exact, rel=0.06)
    assert res.std < res.unhedged_std
    assert res.n_paths == 20_000 and set(res.quantiles) == {"0.01", "0.05", "0.5", "0.95", "0.99"}


@pytest.mark.parametrize("payoff", PAYOFFS, ids=lambda p: p.name)
def test_min_variance_beats_finite_difference(model, payoff):
    mv = delta_hedge(model, payoff, method="mv").expected_error_variance()
    fd = delta_hedge(model, payoff, method="fd").expected_error_variance()
    unhedged = delta_hedge(model, payoff)
    zero = np.sum([np.sum(j * v**2) for j, v in
                   zip(unhedged.joint_laws()[-1:], unhedged.values[-1:])]) - unhedged.price**2
    assert mv <= fd + 1e-12
    assert mv < zero  # the hedge removes variance relative to holding nothing


def test_binomial_chain_replicates_exactly():
    """Two-point steps (X +- 1 w.p. 1/2) make the market complete: the min-variance delta is
    the replicating one and the tracking error is 0 on every path (1e-12, round-off). The
    binomial kernels are given explicitly (the marginals alone admit other martingale laws)."""
    grid = np.arange(97.0, 104.0)
    rows = [np.zeros(grid.size)]
    rows[0][3] = 1.0
    for _ in range(3):
        nxt = 0.5 * (np.roll(rows[-1], 1) + np.roll(rows[-1], -1))
        rows.append(nxt)
    m = Marginals(grid, np.vstack(rows))
    k = np.zeros((grid.size, grid.size))
    for i in range(1, grid.size - 1):
        k[i, i - 1] = k[i, i + 1] = 0.5
    k[0, 0] = k[-1, -1] = 1.0  # never reached
    model = CalibratedModel(m, np.stack([k, k, k]))
    for payoff in (EuropeanCall(strike=100.0), AsianCall(strike=100.0, dates=(1, 2, 3))):
        hedge = delta_hedge(model, payoff)
        res = backtest(hedge, model.sample(2_000, rng=5))
        assert np.max(np.abs(res.errors)) < 1e-12
        assert hedge.expected_error_variance() < 1e-20


def test_input_errors(model):
    hedge = delta_hedge(model, PAYOFFS[0])
    with pytest.raises(ValueError, match=r"method must be 'mv' or 'fd', got 'bs'"):
        delta_hedge(model, PAYOFFS[0], method="bs")
    with pytest.raises(ValueError, match=r"paths must have shape \(n_paths >= 2, 4\)"):
        backtest(hedge, np.ones((10, 3)))
    with pytest.raises(ValueError, match=r"path 0, date 1 has 100\.5"):
        backtest(hedge, np.array([[100.0, 100.5, 100.0, 100.0]] * 3))


class TestBacktestResult(ResultProtocol):
    result_type = BacktestResult

    @pytest.fixture(scope="class")
    @classmethod
    def result(cls, model):
        return backtest(delta_hedge(model, PAYOFFS[0]), model.sample(200, rng=1))


def test_hedge_and_model_types_are_checked():
    # library fuzz, third pass: AttributeErrors ('NoneType' object has no attribute
    # 'marginals' / 'kernels') from inside
    with pytest.raises(TypeError, match="model must be a calibrated model .* got NoneType"):
        delta_hedge(None, AsianCall(strike=100.0))
    with pytest.raises(TypeError, match="hedge must be a DeltaHedge .* got NoneType"):
        backtest(None, np.full((4, 3), 100.0))
