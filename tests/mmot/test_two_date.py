"""The chain of a two-date payoff's conditional laws: a feasible martingale chain on the
marginals (measured), inside the exact chain LP's bounds, adopted by the inner value's search
and skipped when its LP is too large."""

from __future__ import annotations

import time

import numpy as np
import pytest

from deepquant.market.synthetic import heston_marginals
from deepquant.mmot import two_date as module
from deepquant.mmot.augment import build_chain
from deepquant.mmot.beside import fork_available, inner_beside_polish
from deepquant.mmot.bounds import bounds
from deepquant.mmot.certified import nest_supports, side_result
from deepquant.mmot.markov_inner import MARGINAL_TOL, adopt_markov_inner, markov_inner
from deepquant.mmot.path_inner import bucket_chain_value
from deepquant.mmot.relaxed import relaxed_bounds
from deepquant.mmot.sweep import _Sweeper
from deepquant.payoffs import ForwardStartCall, ForwardStartStraddle

PAYOFFS = [ForwardStartStraddle(t1=1, t2=4), ForwardStartCall(strike=1.02, t1=1, t2=4)]


def _case(payoff, size=25):
    m = heston_marginals(np.arange(5) * 30 / 365, grid=np.linspace(0.6, 1.4, size))
    mm, _ = nest_supports(m, payoff.last_date(m.n_dates))
    return mm, build_chain(mm, payoff)


@pytest.mark.parametrize("payoff", PAYOFFS, ids=lambda p: p.name)
def test_the_chain_is_feasible_and_inside_the_exact_lp(payoff):
    # feasible to the library's tolerances (laws = marginals in L1 to MARGINAL_TOL, rows
    # martingales to 1e-8), valued exactly (its value again from its kernels), inside the
    # exact chain LP's bounds (a primal value, HiGHS's 1e-7 tolerances times the scale) and at
    # least as good as the Markov chain whose kernels carry the light rows
    mm, chain = _case(payoff)
    lp = bounds(mm, payoff, method="lp")
    rel = relaxed_bounds(mm, payoff, ("lower", "upper"))
    done = 0
    for sense, opt in (("lower", lp.lower), ("upper", lp.upper)):
        sw = _Sweeper(chain, mm, 1.0 if sense == "upper" else -1.0)
        mk = markov_inner(sw, max_seconds=10)
        out = module.conditional_law_chain(sw, mk.kernels, rel.info["plans"][sense], 1,
                                           max_seconds=30, margin=25)
        assert out["status"] in ("done", "no_lp")
        if out["status"] != "done":
            continue
        done += 1
        assert out["fits"] and out["residual"] <= MARGINAL_TOL and out["drift"] <= 1e-8
        again = bucket_chain_value(sw, out["classes"], out["kernels"])
        assert again[0] == pytest.approx(out["value"], abs=1e-12)
        assert out["value"] <= sw.sign * opt + 1e-7 * sw.scale
        assert out["value"] >= mk.value - 1e-7 * sw.scale
    assert done >= 1


def test_the_chain_reaches_the_lp_where_the_relaxation_is_tight():
    # the straddle's lower side on this chain: the relaxation's bound is the chain LP's, and
    # the conditional laws' chain reaches it (to 1e-7 of the scale)
    payoff = PAYOFFS[0]
    mm, chain = _case(payoff)
    lp = bounds(mm, payoff, method="lp", sides=("lower",))
    rel = relaxed_bounds(mm, payoff, ("lower",))
    if abs(rel.lower - lp.lower) > 1e-7:
        pytest.skip("the dates in between bind on this chain")
    sw = _Sweeper(chain, mm, -1.0)
    mk = markov_inner(sw, max_seconds=10)
    out = module.conditional_law_chain(sw, mk.kernels, rel.info["plans"]["lower"], 1,
                                       max_seconds=30, margin=25)
    assert out["status"] == "done" and out["fits"]
    assert -out["value"] == pytest.approx(lp.lower, abs=1e-7 * sw.scale)


def _weak_side(chain, mm, sense, inner):
    sw = _Sweeper(chain, mm, 1.0 if sense == "upper" else -1.0)
    best = sw.certify(np.zeros(sw.mu_flat.size))
    return side_result(sw, sw.sign, time.perf_counter(), best, sw.sign * inner, 1.0,
                       "coarse grid", 1, "weak start", {})


@pytest.mark.parametrize("beside", [False, True])
def test_the_inner_search_adopts_it_and_reports_it(beside, monkeypatch):
    # the Markov stage, then the conditional laws' chain (the windows widened: the test's grid
    # is coarse), then the passes: the chain is reported in info["two_date"] and adopted when
    # it is the best; the side's inner value is a feasible value inside the LP
    if beside and not fork_available():
        pytest.skip("no fork on this platform")
    payoff = PAYOFFS[0]
    mm, chain = _case(payoff)
    lp = bounds(mm, payoff, method="lp", sides=("lower",))
    plan = relaxed_bounds(mm, payoff, ("lower",)).info["plans"]["lower"]
    real = module.conditional_law_chain
    monkeypatch.setattr(module, "conditional_law_chain",
                        lambda *a, **k: real(*a, **dict(k, margin=25)))
    side = _weak_side(chain, mm, "lower", inner=1.0)
    opts = dict(inner_resid_tol=1e-3, rtol=1e-4, two_date=(plan, 1))
    if beside:
        out = inner_beside_polish(side, chain, mm, "lower", markov_seconds=2, max_seconds=6,
                                  **opts)
    else:
        out = adopt_markov_inner(side, chain, mm, "lower", max_seconds=20, **opts)
    report = out.info["two_date"]
    assert report["status"] == "done" and report["fits"]
    assert report["value"] >= lp.lower - 1e-7
    assert lp.lower - 1e-7 <= out.info["inner"] <= report["value"] + 1e-12
    adopted = [k for k in ("markov", "path", "two_date") if out.info.get(k, {}).get("adopted")]
    assert len(adopted) == 1
    if adopted == ["two_date"]:
        assert out.info["inner"] == pytest.approx(report["value"], abs=1e-12)
        assert "conditional laws" in out.info["inner_kind"]


def test_a_large_lp_is_skipped_at_once(monkeypatch):
    payoff = PAYOFFS[0]
    mm, chain = _case(payoff)
    plan = relaxed_bounds(mm, payoff, ("lower",)).info["plans"]["lower"]
    sw = _Sweeper(chain, mm, -1.0)
    mk = markov_inner(sw, max_seconds=5)
    monkeypatch.setattr(module, "MAX_VARIABLES", 10)
    out = module.conditional_law_chain(sw, mk.kernels, plan, 1, max_seconds=30)
    assert out["status"] == "too_large" and out["variables"] > 10 and out["seconds"] == 0.0
