"""Scenario sweeps: one payoff priced on K perturbed marginal sets, neural beside classical.

The workload the surrogate is built for: risk on a bumped volatility surface re-calibrates the
martingale model K times. ``sweep`` runs the network once per ``batch`` of scenarios with one
number of dates, then per ``chunk`` of that batch solves the exact row multipliers in one
compiled call and prices the chunk's calibrated chains in one batched forward recursion on the
shared augmented chain (``deepquant.mmot.model.price_batch``) straight from the projection's
kernel array; it optionally spreads the batches over threads and, when asked, does the same
with the classical entropic solver so that the errors and the times sit side by side.

Scenario builders: ``term_structure_marginals`` (lognormal marginals of a piecewise-constant
forward volatility per period, X_t = exp(sum_s sigma_s dW_s - w_t / 2) with total variance
w_t = sum_{s < t} sigma_s^2 (t_{s+1} - t_s); convex order holds because w_t increases) and
``bumped_scenarios`` (K sets from one base term structure and K x N relative volatility bumps).

The network's grid is fixed: a scenario whose laws reach beyond it is moved onto it, its tails
squeezed onto the end points, which changes its call prices by up to the tail bound
P(g_0) + C(g_{M-1}) (``deepquant.market.synthetic.tail_bounds``). ``scenario_tail_bounds``
gives that bound per scenario; passed to ``sweep(tail_bounds=)``, a bound above ``TAIL_TOL``
makes the result ``success=False`` (status ``"tails_off_grid"``): both the neural and the
classical prices are then those of the squeezed laws, not of the scenario.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from deepquant.atomic import to_jsonable
from deepquant.market.marginals import Marginals
from deepquant.market.synthetic import TAIL_TOL
from deepquant.results import check_count, total_seconds, warn_failure

__all__ = ["SweepResult", "TAIL_TOL", "sweep", "scenario_tail_bounds",
           "term_structure_marginals", "total_variances", "bumped_scenarios"]



def term_structure_marginals(times: Sequence[float], vols: Sequence[float] | float,
                             grid: np.ndarray, **options) -> Marginals:
    """Lognormal marginals of a per-period forward volatility term structure.

    Parameters
    ----------
    times : array_like, shape (N+1,)
        Increasing dates, times[0] = 0 (today, X_0 = 1).
    vols : float or array_like, shape (N,)
        Forward volatility of each period (> 0).
    grid : ndarray, shape (M,)
        Moneyness grid straddling 1.
    **options
        Validation options of ``Marginals``.

    Returns
    -------
    Marginals
        Black call prices at the total variances w_t, discretised by
        ``deepquant.market.synthetic.marginals_from_call_prices`` (exact convex order).
    """
    from deepquant.market.synthetic import gbm_marginals

    t, w = total_variances(times, vols)
    # a lognormal law of total variance w is the GBM law with sigma = 1 at "time" w
    m = gbm_marginals(w, grid=grid, sigma=1.0, **options)
    return Marginals(m.grid, m.weights, t, **options)


def total_variances(times: Sequence[float], vols: Sequence[float] | float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(dates from today, total variances w_t = sum of vol^2 dt over the periods up to t), both
    shape (N+1,), of a per-period forward volatility term structure (``vols`` checked: finite
    and > 0, one per period or one for all)."""
    from deepquant.neural.families import dates_from_today

    t = dates_from_today(times)
    sig = np.broadcast_to(np.asarray(vols, dtype=float), (t.size - 1,))
    if not np.all(np.isfinite(sig)) or np.any(sig <= 0):
        raise ValueError(f"vols must be finite and > 0, one per period ({t.size - 1}), "
                         f"got {vols!r}")
    return t, np.concatenate([[0.0], np.cumsum(sig ** 2 * np.diff(t))])


def bumped_scenarios(times: Sequence[float], vols: Sequence[float] | float, grid: np.ndarray,
                     bumps: np.ndarray) -> list[Marginals]:
    """K scenarios of relative volatility bumps on a base term structure.

    ``bumps`` has shape (K,) (a parallel bump per scenario) or (K, N) (one per period);
    scenario k uses vols * (1 + bumps[k]). Returns K ``Marginals`` on ``grid``.
    """
    t = np.asarray(times, dtype=float)
    b = np.asarray(bumps, dtype=float)
    if b.ndim == 1:
        b = b[:, None]
    if b.ndim != 2 or b.shape[1] not in (1, t.size - 1) or b.shape[0] < 1:
        raise ValueError(f"bumps must have shape (K,) or (K, N={t.size - 1}), got "
                         f"{np.shape(bumps)}")
    if not np.all(np.isfinite(b)) or np.any(b <= -1):
        raise ValueError("bumps must be finite and > -1 (relative volatility changes)")
    base = np.broadcast_to(np.asarray(vols, dtype=float), (t.size - 1,))
    return [term_structure_marginals(t, base * (1.0 + row), grid) for row in b]


def scenario_tail_bounds(times: Sequence[float], vols: Sequence[float] | float,
                         grid: np.ndarray, bumps: np.ndarray) -> np.ndarray:
    """Tail bound of each scenario of ``bumped_scenarios(times, vols, grid, bumps)``, shape (K,):
    the largest over its dates of P(g_0) + C(g_{M-1}) for its lognormal law (the most a call
    price moves when the mass outside ``grid`` is moved onto it); the last date has the widest
    law, so it is the bound there."""
    from deepquant.market.synthetic import GBMParams, tail_bounds

    t = np.asarray(times, dtype=float)
    b = np.asarray(bumps, dtype=float)
    b = b[:, None] if b.ndim == 1 else b
    base = np.broadcast_to(np.asarray(vols, dtype=float), (t.size - 1,))
    g = np.asarray(grid, dtype=float)
    # a lognormal law of total variance w is the GBM law with sigma = 1 at "time" w
    unit = GBMParams(sigma=1.0)
    return np.array([float(tail_bounds(unit, [total_variances(t, base * (1.0 + row))[1][-1]],
                                       g)[0]) for row in b])


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Prices of one payoff on K scenarios (the result protocol of ``deepquant.results``).

    Attributes
    ----------
    neural : ndarray, shape (K,)
        Prices under the neural pricer's models (``modes`` says which fell back).
    classical : ndarray, shape (K,) or None
        Prices under the classical calibrated models (None when not computed).
    modes : list of str
        ``"neural"`` or ``"classical"`` (out-of-distribution fallback) per scenario.
    neural_seconds, classical_seconds : float
        Wall time of the whole neural path (forward pass, projections, fallbacks, pricing) and
        of the classical path (K solves, pricing); NaN when not run.
    neural_pricing_seconds, classical_pricing_seconds : float
        The batched pricing part of each.
    marginal_error : ndarray, shape (K,)
        max_t L1 column error of each neural model.
    classical_success : ndarray of bool, shape (K,) or None
        Whether each classical solve converged.
    success, status, message
        False / ``"tails_off_grid"`` when a scenario's tail bound (``sweep(tail_bounds=)``)
        exceeds ``TAIL_TOL``, else False / ``"classical_failed"`` when a classical solve did
        not converge (prices still reported; a ``ConvergenceWarning`` says so); else True /
        ``"done"``.
    seconds : float
        neural_seconds + classical_seconds (the latter when run).
    """

    payoff: str
    neural: np.ndarray
    classical: np.ndarray | None
    modes: list[str]
    neural_seconds: float
    classical_seconds: float
    neural_pricing_seconds: float
    classical_pricing_seconds: float
    marginal_error: np.ndarray
    classical_success: np.ndarray | None = None
    messages: list[str] = field(default_factory=list, repr=False)
    success: bool = True
    status: str = "done"
    message: str = ""

    @property
    def seconds(self) -> float:
        return total_seconds({"neural": self.neural_seconds,
                              "classical": self.classical_seconds})

    @property
    def errors_pct(self) -> np.ndarray:
        """|neural - classical| / |classical| in %, shape (K,) (NaN without classical)."""
        if self.classical is None:
            return np.full(self.neural.shape, np.nan)
        return 100.0 * np.abs(self.neural - self.classical) / np.maximum(
            np.abs(self.classical), 1e-12)

    def to_dict(self) -> dict[str, Any]:
        """Scalar summary, JSON-safe (the per-scenario arrays left out)."""
        err = self.errors_pct
        k = int(self.neural.size)
        out = {"payoff": self.payoff, "scenarios": k, "success": self.success,
               "status": self.status, "message": self.message, "seconds": self.seconds,
               "neural_seconds": self.neural_seconds,
               "neural_per_scenario_ms": 1e3 * self.neural_seconds / k,
               "neural_pricing_seconds": self.neural_pricing_seconds,
               "neural_outside_pricing_ms": 1e3 * (self.neural_seconds
                                                   - self.neural_pricing_seconds) / k,
               "fallbacks": int(sum(m != "neural" for m in self.modes)),
               "max_marginal_error": float(np.max(self.marginal_error))}
        if self.classical is not None:
            out.update({"classical_seconds": self.classical_seconds,
                        "classical_per_scenario_ms": 1e3 * self.classical_seconds / k,
                        "classical_pricing_seconds": self.classical_pricing_seconds,
                        "speedup": self.classical_seconds / self.neural_seconds,
                        # the speed-up if the neural side did nothing but its exact pricing
                        "speedup_bound": self.classical_seconds / self.neural_pricing_seconds,
                        "mean_err_pct": float(np.mean(err)),
                        "median_err_pct": float(np.median(err)),
                        "max_err_pct": float(np.max(err)),
                        "classical_failures": int(np.sum(~self.classical_success))})
        return to_jsonable(out)

    def summary(self) -> dict[str, Any]:
        """Same as ``to_dict``."""
        return self.to_dict()


def sweep(marginals: Sequence[Marginals], payoff, *, pricer=None, classical: bool = True,
          tol: float = 1e-9, chunk: int = 2, batch: int = 64, threads: int = 1,
          tail_bounds: Sequence[float] | None = None, **chain_options) -> SweepResult:
    """Price ``payoff`` on every marginal set of ``marginals`` (see module doc).

    Parameters
    ----------
    marginals : sequence of Marginals
        K scenarios (any mix of numbers of dates; each number of dates in forward passes of
        ``batch``).
    payoff : Payoff
    pricer : NeuralPricer, optional
        Default: ``NeuralPricer()`` (the shipped checkpoint, with its out-of-distribution guard
        and classical fallback).
    classical : bool
        Also calibrate every scenario with the classical solver (``solve_entropic`` to ``tol``)
        and price under it.
    chunk : int
        Scenarios per batch of the exact pricing, on both paths; on the neural path also per
        stacked row projection, priced right after on its own kernel array (no copy), while
        the chunk's kernels are still in cache (bounds the memory to ``chunk`` kernel sets).
        Two: a kernel set is 1.8 MB at N = 10, M = 150, so chunks of 8 (14 MB) left the cache
        between the projection and the pricing (neural side 12.5 -> 7.5 ms per scenario at
        chunks of 2, with other jobs on the machine; the same prices bit for bit).
    batch : int
        Scenarios per forward pass of the network (the neural path's unit of work per thread).
    threads : int
        Neural batches run on this many threads (the forward pass, projection and pricing
        release the GIL); the classical path runs on one.
    tail_bounds : array_like, shape (K,), optional
        How much moving each scenario's laws onto its grid changed its call prices
        (``scenario_tail_bounds`` for ``bumped_scenarios``): above ``TAIL_TOL`` the prices are
        those of other laws than the scenario's, and the result says ``success=False``.
    **chain_options
        Passed to the augmented chain (``sum_mode``, ``sum_grid_size``).
    """
    from deepquant.mmot.model import price_batch
    from deepquant.neural.pricer import NeuralGridWarning, NeuralPricer
    from deepquant.payoffs import check_payoff

    items = list(marginals)
    if not items:
        raise ValueError("marginals must hold at least one scenario, got none")
    for i, m in enumerate(items):
        if not isinstance(m, Marginals):
            raise TypeError(f"marginals[{i}] must be a Marginals, got {type(m).__name__}")
    check_payoff(payoff)
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    for name, val in (("chunk", chunk), ("batch", batch), ("threads", threads)):
        check_count(val, name)
    if tail_bounds is not None:
        try:
            tails = np.asarray(tail_bounds, dtype=float)
        except (TypeError, ValueError):
            tails = np.full(1, np.nan)
        if tails.shape != (len(items),) or not np.all(tails >= 0):
            raise ValueError(f"tail_bounds must hold one number >= 0 per scenario, shape "
                             f"({len(items)},), got {tail_bounds!r:.80}")
    pricer = NeuralPricer() if pricer is None else pricer

    t0 = time.perf_counter()
    neural = np.empty(len(items))
    modes, merr, messages = [None] * len(items), np.empty(len(items)), [""] * len(items)
    margs: list[Marginals] = [None] * len(items)
    pricing = [0.0]
    opts = dict(chain_options)
    opts.setdefault("support", "full")          # every neural model sits on the model grid

    def keep(i: int, s) -> None:     # keep no kernels: K models of N M^2 floats add up
        modes[i], merr[i], messages[i], margs[i] = s.mode, s.marginal_error, s.message, \
            s.marginals

    def run(ids: list[int]) -> None:
        """One forward pass for ``ids`` (on the model grid, one number of dates), then per
        ``chunk`` of them the stacked projection, the guard and one batched price of the
        chunk's own kernel array (a fallback's classical kernels written into its slot)."""
        weights = np.stack([prepared[i][0].weights for i in ids])
        v, h = pricer.predict(weights)
        for lo in range(0, len(ids), chunk):
            part = ids[lo:lo + chunk]
            res = pricer._project(weights[lo:lo + len(part)], v[lo:lo + len(part)],
                                  h[lo:lo + len(part)])
            kern = res[0]
            for j, i in enumerate(part):
                marg, regridded, _ = prepared[i]
                s = pricer._finish(marg, regridded, "", (v[lo + j], h[lo + j]),
                                   tuple(a[j] for a in res), 0.0)
                if s.mode != "neural":
                    kern[j] = s.kernels
                keep(i, s)
            tp = time.perf_counter()
            neural[part] = price_batch([prepared[i][0] for i in part], kern, payoff, **opts)
            pricing[0] += time.perf_counter() - tp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NeuralGridWarning)
        prepared = [pricer._prepare(m) for m in items]
    by_n: dict[int, list[int]] = {}
    odd = []                          # not on the model grid: the classical solver, as given
    for i, (marg, _, problem) in enumerate(prepared):
        if problem:
            odd.append(i)
        else:
            by_n.setdefault(marg.n_dates, []).append(i)
    for lo in range(0, len(odd), chunk):          # in chunks: their kernels add up too
        part = odd[lo:lo + chunk]
        sols = pricer.solve_batch([items[i] for i in part])
        tp = time.perf_counter()
        neural[part] = _price_grouped([s.marginals for s in sols], [s.kernels for s in sols],
                                      payoff, price_batch, chain_options, pricer.grid)
        pricing[0] += time.perf_counter() - tp
        for i, s in zip(part, sols):
            keep(i, s)
    blocks = [ids[lo:lo + batch] for ids in by_n.values() for lo in range(0, len(ids), batch)]
    if blocks:
        run(blocks[0])                              # builds the shared chain once
    if threads > 1 and len(blocks) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(run, blocks[1:]))
    else:
        for ids in blocks[1:]:
            run(ids)
    t_end = time.perf_counter()
    n_fallback = sum(m != "neural" for m in modes)
    res = SweepResult(
        payoff=payoff.name, neural=neural, classical=None, modes=modes,
        neural_seconds=t_end - t0, classical_seconds=float("nan"),
        neural_pricing_seconds=pricing[0] / max(1, min(threads, len(blocks))),
        classical_pricing_seconds=float("nan"), marginal_error=merr, messages=messages,
        message=f"{len(items)} scenarios, {n_fallback} classical fallbacks")
    if classical:
        from deepquant.mmot.entropic import solve_entropic

        # the same (model-grid) inputs as the network's, solved and priced chunk by chunk
        t0 = time.perf_counter()
        prices, ok, first_fail, t_price = np.empty(len(margs)), [], "", 0.0
        for lo in range(0, len(margs), chunk):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                solved = [solve_entropic(m, 1.0, tol=tol) for m in margs[lo:lo + chunk]]
            tp = time.perf_counter()
            prices[lo:lo + len(solved)] = _price_grouped(
                margs[lo:lo + chunk], [r.kernels for r in solved], payoff, price_batch,
                chain_options, pricer.grid)
            t_price += time.perf_counter() - tp
            ok += [bool(r.success) for r in solved]
            first_fail = first_fail or next((r.message for r in solved if not r.success), "")
        t_end = time.perf_counter()
        ok = np.array(ok)
        failed = np.flatnonzero(~ok)
        res = replace(res, classical=prices, classical_seconds=t_end - t0,
                      classical_pricing_seconds=t_price, classical_success=ok,
                      success=not failed.size,
                      status="classical_failed" if failed.size else "done",
                      message=res.message + (f"; {failed.size} classical solves did not "
                                             f"converge (scenarios {failed.tolist()}; first: "
                                             f"{first_fail})"
                                             if failed.size else ""))
    if tail_bounds is not None and np.any(tails > TAIL_TOL):
        wide = np.flatnonzero(tails > TAIL_TOL)
        res = replace(res, success=False, status="tails_off_grid", message=(
            f"{wide.size} of {len(items)} scenarios (first {wide[:5].tolist()}) reach beyond "
            f"the grid [{pricer.grid[0]:.4g}, {pricer.grid[-1]:.4g}]: moving their tails onto "
            f"it changes call prices by up to {tails.max():.3g} (more than TAIL_TOL = "
            f"{TAIL_TOL:g}), so the prices are those of the squeezed laws; " + res.message))
    warn_failure(res, "sweep")
    return res


def _price_grouped(margs, kernels, payoff, price_batch, chain_options, model_grid
                   ) -> np.ndarray:
    """price_batch over groups of scenarios that share a grid and a number of dates; groups on
    the network's grid ``model_grid`` on the full-support chain (built once per payoff and
    number of dates, ``price_batch(support="full")``)."""
    out = np.empty(len(margs))
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(margs):
        groups.setdefault((m.weights.shape, m.grid.tobytes()), []).append(i)
    for ids in groups.values():
        opts = dict(chain_options)
        if np.array_equal(margs[ids[0]].grid, model_grid):
            opts.setdefault("support", "full")
        out[ids] = price_batch([margs[i] for i in ids], np.stack([kernels[i] for i in ids]),
                               payoff, **opts)
    return out
