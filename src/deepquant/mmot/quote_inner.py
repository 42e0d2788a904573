"""A rigorous inner value for the bounds from bid-ask quotes (``deepquant.mmot.quotes_bounds``).

Any martingale law on the grid that prices every quote inside its band is feasible for the
quote problem, so its E[f] lies between the two optima: on the lower side it is an upper
estimate of the lower bound's optimum, on the upper side a lower one. A martingale with FIXED
marginals that lie inside the bands is such a law. Here it is the Markov chain of one-period
martingale couplings of ``deepquant.mmot.markov_inner`` (exact marginals to the one-period
LPs' tolerance, value computed exactly by a forward pass), started from the continuation values
of the side's certified positions (``markov_inner.dual_value_to_go`` of their static
potentials), on the first of these laws that prices the bands within ``band_tol`` (measured):

* the laws inside the bands that price the side's positions best
  (``quote_bands.laws_in_bands``, ``inner_marginals``);
* the calibrated marginals (``fitted``): ``repair="calibration"`` widens every band to contain
  their prices (with 1e-9 room), so they lie inside by construction;
* the closest laws of the band check (``quote_bands.check_bands``): inside the bands whenever
  the check passes, and after ``repair="minimal"`` by construction.

When time is left after ``markov_inner.MARKOV_SHARE`` of it, a chain whose kernels also see
the running statistic (``path_inner``: against the Markov chain's values to go, then the
positions') replaces the Markov chain where it is tighter: it has the same marginals, so it is
as feasible. The chain's own laws (the marginals to ~1e-9) are priced against the bands again,
so the reported ``band_violation`` is that of the plan whose value is the inner value.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.mmot.augment import build_chain
from deepquant.mmot.certified import clip_inner, within_rtol
from deepquant.mmot.markov_inner import (
    MARKOV_SHARE,
    MARKOV_STALL,
    chain_value,
    dual_value_to_go,
    fits_marginals,
    markov_inner,
)
from deepquant.mmot.path_inner import improve
from deepquant.mmot.quote_bands import laws_in_bands
from deepquant.mmot.quote_problem import _Problem
from deepquant.mmot.result import BoundSide
from deepquant.mmot.sweep import _Sweeper

__all__ = ["QuoteSearch", "inner_marginals", "quote_markov_inner", "reinner_side"]


TILT_TIE = 1e-6
"""Weight of the L1 distance to the reference laws (per unit of mass) against the positions'
value in ``laws_in_bands``: a tie-break among the laws that price the positions best.
Measured (SPX, M = 150, the Markov stage 3 s on the laws of a 10 s side): 1e-6 and 1e-3 give
the same inner values to 7e-5 (lookback upper 0.05394 / 0.05387, straddle upper 0.07671 /
0.07665)."""


def inner_marginals(prob: _Problem, band_tol: float, positions: np.ndarray | None = None
                    ) -> tuple[list[tuple[str, Marginals, float]], list[str]]:
    """The candidate laws in order, as (which laws, marginals with date 0 prepended, measured
    band violation), each pricing every quote used within ``band_tol`` and a valid
    ``Marginals`` (mean 1, convex order), and why the others were left out.

    The candidates: with ``positions`` (one per quote used), the laws inside the bands that
    price them best (``quote_bands.laws_in_bands``, the calibrated or closest laws as the
    tie-break's reference: at the optimum, complementary slackness puts the long quotes at the
    ask and the short ones at the bid); the calibrated marginals; the band check's closest
    laws."""
    grid, times = prob.grid, prob.bands.times
    delta = (np.abs(grid - 1.0) < 1e-12).astype(float)
    reference = prob.fitted if prob.fitted is not None else prob.closest

    def tilted():
        if positions is None or reference is None:
            return None
        value = np.zeros((prob.bands.n_expiries, grid.size))
        value[:prob.T] = prob.uvec(positions).reshape(-1, grid.size)
        return laws_in_bands(prob.bands, grid, value, reference, tie=TILT_TIE)

    found, rejected = [], []
    for name, make in (("laws pricing the positions best", tilted),
                       ("calibrated marginals", prob.fitted),
                       ("closest laws of the band check", prob.closest)):
        laws = make() if callable(make) else make
        if laws is None:
            if callable(make) and positions is not None and reference is not None:
                rejected.append(f"{name}: the LP found none")
            continue
        laws = np.maximum(np.asarray(laws, dtype=float), 0.0)
        laws = laws / laws.sum(axis=1, keepdims=True)
        viol = prob.band_violation(prob.prices(laws[:prob.T]))
        if not viol <= band_tol:
            rejected.append(f"{name} miss the bands by {viol:.3g}")
            continue
        try:
            marg = Marginals(grid, np.vstack([delta, laws]), np.concatenate([[0.0], times]))
        except ValueError as exc:
            rejected.append(f"{name}: {exc}")
            continue
        found.append((name, marg, viol))
    return found, rejected


def quote_markov_inner(prob: _Problem, side: str, positions: np.ndarray, *, max_seconds: float,
                       band_tol: float) -> dict:
    """The Markov chain (or, where tighter, the path-dependent chain of the module docstring)
    on the first of ``inner_marginals`` that gives one within ``max_seconds`` for ``side``,
    started from the continuation values of ``positions`` (one
    per quote used: their static potentials u_t = sum_i a_i c_i, swept exactly on the chain of
    those marginals).

    Returns a dict: ``value`` (E[f] of the chain, NaN if none was built), ``feasible`` (its laws
    within ``MARGINAL_TOL`` (L1, summed over dates) of the marginals, martingale rows within
    ``certified.POLISH_RESIDUAL``, and quotes within ``band_tol`` of the bands),
    ``band_violation`` (of the chain's own laws), ``marginals`` (which laws),
    ``marginal_violation`` (their band violation), ``rejected`` (why laws before them were
    left out: outside the bands, no valid marginals, or no chain), ``marginals_seconds`` (to
    find the candidates), ``laws`` ((T, M) the chain's laws of dates 1..T on the grid),
    ``marginal_error``, ``drift``, ``cycles``, ``status``, ``seconds``, ``markov_value`` (the
    Markov chain's E[f]); ``path`` (when time was left for it): the path-dependent passes,
    ``adopted`` when that chain is the one reported."""
    t0 = time.perf_counter()
    search = QuoteSearch(prob, side, positions, band_tol)
    search.markov(max_seconds)
    left = max_seconds - (time.perf_counter() - t0)
    path = search.path(left) if search.res is not None and left > 0 else None
    return search.result(path, seconds=time.perf_counter() - t0)


class QuoteSearch:
    """The stages of ``quote_markov_inner`` on one side, so that a caller can run them apart
    (the path passes in another process, ``beside.quote_inner_beside_polish``): ``markov``
    finds the laws and the Markov chain, ``path`` returns the path-dependent passes' chain
    (value, laws, marginal error, drift, report) and ``result`` the dict of
    ``quote_markov_inner`` with it (or without, ``path=None``)."""

    def __init__(self, prob: _Problem, side: str, positions: np.ndarray, band_tol: float):
        self.prob, self.band_tol = prob, band_tol
        self.sign = 1.0 if side == "upper" else -1.0
        self.positions = positions
        self.res = None  # the Markov chain, once ``markov`` built one
        self.out = {}

    def markov(self, max_seconds: float) -> None:
        t0 = time.perf_counter()
        prob, sign = self.prob, self.sign
        found, rejected = inner_marginals(prob, self.band_tol, self.positions)
        self.out = dict(value=np.nan, feasible=False, band_violation=np.inf, marginals="none",
                        marginal_violation=np.inf, rejected=rejected,
                        marginals_seconds=time.perf_counter() - t0, laws=None,
                        marginal_error=np.inf, drift=np.inf, cycles=0,
                        status="no_marginals" if not found else "time_budget")
        u = np.zeros((prob.T + 1, prob.grid.size))
        u[1:] = prob.uvec(self.positions).reshape(-1, prob.grid.size)
        for name, marg, mviol in found:
            if not max_seconds - (time.perf_counter() - t0) > 0:
                break
            chain = build_chain(marg, prob.payoff, sum_mode=prob.sum_mode,
                                sum_grid_size=prob.sum_grid_size)
            self.sw = _Sweeper(chain, marg, sign)
            self.start, self.moves = dual_value_to_go(self.sw, self.sw.flatten(u), moves=True)
            left = max_seconds - (time.perf_counter() - t0)  # infinite: markov_inner's default
            res = markov_inner(self.sw, start_values=self.start, stall=MARKOV_STALL,
                               **(dict(max_seconds=max(MARKOV_SHARE * left, 0.0))
                                  if np.isfinite(left) else {}))
            self.out.update(marginals=name, marginal_violation=mviol, cycles=res.cycles,
                            status=res.status)
            if res.kernels is not None:
                self.res, self.markov_laws = res, chain_value(self.sw, res.kernels)[1]
                break
            rejected.append(f"{name}: no Markov chain ({res.status})")

    def path(self, seconds: float) -> tuple:
        path, report = improve(self.sw, self.res.kernels, self.sign,
                               max_seconds=seconds if np.isfinite(seconds) else 600.0,
                               dual=self.start, moves=self.moves, dual_name="positions")
        return path.value, path.laws, path.residual, path.drift, report

    def result(self, path: tuple | None = None, *, seconds: float) -> dict:
        out, prob, sign, res = dict(self.out), self.prob, self.sign, self.res
        if res is None:
            return dict(out, seconds=seconds)
        value, laws, resid, drift = res.value, self.markov_laws, res.residual, res.drift
        if path is not None:
            out["path"] = path[4]
            if path[4]["fits"] and path[0] > value:
                value, laws, resid, drift = path[:4]
                out["path"]["adopted"] = True
        on_grid = np.zeros((prob.T, prob.grid.size))
        for t, (per, law) in enumerate(zip(self.sw.periods, laws)):
            on_grid[t, per.ys] = law
        viol = prob.band_violation(prob.prices(on_grid))
        feasible = fits_marginals(value, resid, drift) and viol <= self.band_tol
        return dict(out, value=sign * value, markov_value=sign * res.value, feasible=feasible,
                    band_violation=viol, laws=on_grid, marginal_error=resid, drift=drift,
                    seconds=seconds)


def adopt_quote_markov(fine: BoundSide, prob: _Problem, side: str, *, max_seconds: float,
                        band_tol: float, rtol: float) -> BoundSide:
    """``fine`` with the Markov chain of ``quote_inner.quote_markov_inner`` (started from its
    certified positions, within ``max_seconds``) as its inner value when that chain is feasible
    (marginals, martingale rows and bands within tolerance) and the side's inner value is not a
    feasible one of this grid that is tighter (a smoothed chain of this grid within
    ``band_tol`` of the bands). The attempt is reported in ``info["markov"]`` either way."""
    positions = np.concatenate(fine.info["positions"])
    mk = quote_markov_inner(prob, side, positions, max_seconds=max_seconds, band_tol=band_tol)
    return adopt_quote_chain(fine, prob, side, mk, band_tol=band_tol, rtol=rtol)


def adopt_quote_chain(fine: BoundSide, prob: _Problem, side: str, mk: dict, *,
                       band_tol: float, rtol: float, key: str = "markov") -> BoundSide:
    """``fine`` with the chain ``mk`` (a ``quote_inner.quote_markov_inner`` result) as its
    inner value, by the rule of ``adopt_quote_markov``; the attempt reported in
    ``info[key]``."""
    sign = 1.0 if side == "upper" else -1.0
    current = sign * fine.info["inner"]
    own = (fine.info["inner_kind"] == "smoothed chain"
           and fine.info["band_violation"] <= band_tol and np.isfinite(current))
    report = dict(mk)
    report["adopted"] = bool(mk["feasible"] and (not own or sign * mk["value"] > current))
    if not report["adopted"]:
        return dataclasses.replace(fine, info=dict(fine.info, **{key: report}))
    outer = sign * fine.value
    inner, excess = clip_inner(sign * mk["value"], outer)
    scale = prob.sweeper(sign).scale
    path = mk.get("path")
    adopted = path is not None and path["adopted"]
    kind = "path-dependent chain" if adopted else "Markov chain"
    how = (f"from the {path['start']} values to go of a Markov chain of " if adopted else "")
    info = dict(fine.info, inner=sign * inner, inner_excess=excess, **{key: report},
                band_violation=mk["band_violation"],
                inner_kind=f"{kind} on the {mk['marginals']} ({how}{mk['cycles']} cycles, "
                           f"{mk['status']})")
    status = "certified" if within_rtol(outer - inner, outer, scale, rtol) else "certified-wide"
    return dataclasses.replace(fine, gap=float(outer - inner), status=status,
                               primal_residual=mk["band_violation"], info=info)


def reinner_side(fine: BoundSide, prob: _Problem, side: str, *, max_seconds: float,
                  band_tol: float, rtol: float) -> BoundSide:
    """``fine`` (a side of the bounds from quotes) with the chain of ``quote_markov_inner``
    started from its polished positions (``quotes_bounds.REINNER_SHARE``) as its inner value
    when that chain is feasible and tighter than the inner value it has (or that one is not a
    feasible value of this grid: a coarse grid's); ``info["reinner"]`` reports the attempt
    either way (``info["markov"]`` stays the first one's). Skipped when the positions were not
    polished or no time is left."""
    if "polish" not in fine.info or not fine.info["polish"]["steps"] or max_seconds <= 0:
        return fine
    sign = 1.0 if side == "upper" else -1.0
    positions = np.concatenate(fine.info["positions"])
    mk = quote_markov_inner(prob, side, positions, max_seconds=max_seconds, band_tol=band_tol)
    on_grid = (not fine.info["inner_kind"].startswith("coarse grid")
               and fine.info.get("band_violation", np.inf) <= band_tol)
    better = bool(mk["feasible"] and (not on_grid
                                      or sign * mk["value"] > sign * fine.info["inner"]))
    if not better:
        return dataclasses.replace(fine, info=dict(fine.info, reinner=dict(mk, adopted=False)))
    out = adopt_quote_chain(fine, prob, side, mk, band_tol=band_tol, rtol=rtol, key="reinner")
    return dataclasses.replace(out, info=dict(
        out.info, inner_kind=out.info["inner_kind"] + ", from the polished positions"))
