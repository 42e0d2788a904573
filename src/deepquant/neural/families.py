"""Instance families beyond the lognormal / jump / stochastic-volatility laws of the training set.

Each builder returns ``Marginals`` on a given moneyness grid, date 0 today (a point mass at 1),
rows exactly in convex order on the grid (the network's input convention):

* ``svi_marginals`` — an SSVI surface (Gatheral & Jacquier 2014, "Arbitrage-free SVI volatility
  surfaces", eq. 4.1 with the power-law phi of eq. 4.5): total implied variance

      w(k, theta_t) = theta_t / 2 (1 + rho phi k + sqrt((phi k + rho)^2 + 1 - rho^2)),
      phi(theta) = eta / (theta^gamma (1 + theta)^(1 - gamma)),  k = log(x),

  with theta_t the ATM total variance of a per-period forward ATM volatility term structure.
  Black call prices at w(k, theta_t) are moved onto the grid by
  ``deepquant.market.synthetic.marginals_from_call_prices`` (greatest convex minorant per date,
  running maximum over dates): whatever butterfly or calendar violation the parameters leave is
  removed there, so the rows are in convex order on the grid exactly (to round-off).
* ``chain_marginals`` — the arbitrage-free calibration (``deepquant.market.calibrate``) of the
  synthetic Cboe-style chain (``deepquant.market.chain.synthetic_chain``) of a model with random
  parameters, on the model grid, at N expiries between 1 week and 1 year.
* ``spx_marginals`` — the calibration of the SPX chain of 2023-06-09 (read from
  ``$DEEPQUANT_SPX_DATA``, never copied) at N of its expiries between 1 week and 1 year, with
  every quote band moved inside itself: each slice's prices shift by a random fraction z_s of
  the half-spread and every quote by its own fraction (``perturbation`` scales both), and the
  band narrows to half its width around the new price. ``perturbation=0`` is the plain
  calibration on the model grid.

* ``rbergomi_marginals`` — the rough Bergomi model (Bayer, Friz & Gatheral 2016; the
  project's hybrid-scheme simulator ``deepquant.rough.rbergomi.RoughBergomi``, r = 0, S0 = 1)
  at given dates, call prices on the grid by the mixing (conditional) estimator (Romano &
  Touzi 1997; as in ``benchmarks/rough_weak_error.py``): given the volatility driver W, log S_t
  is Gaussian, so

      E[(S_t - k)^+] = E[ Black(F = s_t, k, total variance (1 - rho^2) Q_t) ],
      s_t = exp(rho X_t - rho^2 Q_t / 2),  X_t = int_0^t sqrt(V) dW,  Q_t = int_0^t V ds,

  with the engine's left-point sums for X and Q (exactly the expectation of its log-Euler
  paths). The sample's s_t is divided by its mean (mean exactly 1 per date; the martingale
  correction), then ``marginals_from_call_prices`` moves the calls onto the grid: whatever
  Monte Carlo noise leaves of butterfly or calendar violations is removed there.
* ``scaled_marginals`` — any grid marginals with supports of another width: the law of
  1 + s (X_t - 1) (a martingale again; calls s C_t(1 + (k - 1) / s), exact for the piecewise
  linear call curves of grid laws), then cut to the grid range where the widest row's weights
  exceed ``tail`` (1e-12): the curves restricted to that range go through
  ``marginals_from_call_prices`` on the sub-grid (the few 1e-12 of mass outside move to its
  ends) and the rows are zero outside it, still exactly in convex order.

Quotes outside ``fit_range`` (K / F) are left out of the calibrations: the calibration grid is
the model grid, and every quote must lie strictly inside it.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deepquant.market.marginals import Marginals

__all__ = ["svi_marginals", "chain_marginals", "spx_marginals", "spx_data_path",
           "rbergomi_marginals", "scaled_marginals", "with_today", "SPX_ENV"]

SPX_ENV = "DEEPQUANT_SPX_DATA"
"""Environment variable naming the SPX data folder (``spx_options_normalized.csv`` inside)."""
MIN_DAYS, MAX_DAYS = 7, 366
"""Expiries drawn by the chain families lie between 1 week and 1 year."""


def dates_from_today(times: Sequence[float]) -> np.ndarray:
    """``times`` as a float array: increasing dates from 0 (today), at least 2; ValueError
    naming ``times`` otherwise."""
    t = np.asarray(times, dtype=float)
    if t.ndim != 1 or t.size < 2 or t[0] != 0.0 or np.any(np.diff(t) <= 0):
        raise ValueError(f"times must be increasing from 0 with at least 2 dates, got {times!r}")
    return t


def with_today(marginals: Marginals) -> Marginals:
    """``marginals`` with date 0 (a point mass at 1, time 0) in front; unchanged when its first
    row already is that point mass. Exact: the point mass is below every law of mean 1 in
    convex order, and the first period of any martingale from it is its next law."""
    grid = marginals.grid
    i_one = int(np.argmin(np.abs(grid - 1.0)))
    if abs(grid[i_one] - 1.0) > 1e-12:
        raise ValueError(f"the grid must hold the point 1 to add today's point mass; nearest "
                         f"point {grid[i_one]:.6g}")
    if marginals.weights[0, i_one] >= 1.0 - 1e-12:
        return marginals
    w0 = np.zeros(grid.size)
    w0[i_one] = 1.0
    times = marginals.times
    if times is None or times[0] <= 0:
        raise ValueError("marginals need positive times to add today (time 0) in front")
    return Marginals(grid, np.vstack([w0, marginals.weights]), np.concatenate([[0.0], times]))


def svi_marginals(times: Sequence[float], atm_vols: Sequence[float] | float, grid: np.ndarray,
                  *, rho: float = -0.5, eta: float = 1.0, gamma: float = 0.4) -> Marginals:
    """SSVI marginals (module doc).

    Parameters
    ----------
    times : array_like, shape (N+1,)
        Increasing dates from 0 (today).
    atm_vols : float or array_like, shape (N,)
        Forward ATM volatility per period: theta_t = sum_{s < t} atm_vols[s]^2 (t_{s+1} - t_s).
    grid : ndarray, shape (M,)
        Moneyness grid holding 1.
    rho, eta, gamma : float
        SSVI correlation (|rho| < 1), curvature level (> 0) and decay (in [0, 1]).
    """
    from deepquant.blackscholes import black_price
    from deepquant.market.synthetic import marginals_from_call_prices

    t = dates_from_today(times)
    sig = np.broadcast_to(np.asarray(atm_vols, dtype=float), (t.size - 1,))
    if not np.all(np.isfinite(sig)) or np.any(sig <= 0):
        raise ValueError(f"atm_vols must be finite and > 0, got {atm_vols!r}")
    if not -1 < rho < 1:
        raise ValueError(f"rho must be in (-1, 1), got {rho!r}")
    if not eta > 0:
        raise ValueError(f"eta must be > 0, got {eta!r}")
    if not 0 <= gamma <= 1:
        raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
    x = np.asarray(grid, dtype=float)
    k = np.log(x)
    theta = np.cumsum(sig ** 2 * np.diff(t))
    calls = [np.maximum(1.0 - x, 0.0)]
    for th in theta:
        phi = eta / (th ** gamma * (1.0 + th) ** (1.0 - gamma))
        w = 0.5 * th * (1 + rho * phi * k + np.sqrt((phi * k + rho) ** 2 + 1 - rho ** 2))
        # undiscounted call on the unit forward at total volatility sqrt(w)
        calls.append(black_price(1.0, x, np.sqrt(w), 1.0))
    return marginals_from_call_prices(x, np.array(calls), t)


def _calibrated(quotes, grid: np.ndarray) -> Marginals:
    from deepquant.market.calibrate import calibrate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = calibrate(quotes, grid=grid)
    return with_today(res.marginals)


def chain_marginals(days: Sequence[int], grid: np.ndarray, *, model: str = "heston",
                    params: dict | None = None, seed: int = 0,
                    fit_range: tuple[float, float] = (0.52, 1.97)) -> Marginals:
    """The calibration on ``grid`` of the synthetic chain of ``model`` (``params``) at the
    expiries ``days`` after the quote date (at least 2), with today in front."""
    from deepquant.market.chain import synthetic_chain
    from deepquant.market.expiries import select_slices
    from deepquant.market.parity import fit_parity, normalize_slice
    from deepquant.market.quotes import load_chain

    days = sorted({int(d) for d in days})
    if len(days) < 2 or days[0] < 1:
        raise ValueError(f"days must hold at least 2 distinct positive day counts, got {days!r}")
    qd = dt.date(2024, 1, 2)
    dates = [qd + dt.timedelta(days=d) for d in days]
    syn = synthetic_chain(model, seed=seed, quote_date=qd, expiries=dates, params=params)
    with tempfile.TemporaryDirectory() as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ch = load_chain(syn.to_csv(Path(tmp) / "chain.csv"))
    slices = select_slices(ch, [d.isoformat() for d in dates])
    quotes = [normalize_slice(sl, fit_parity(sl, spot=ch.spot), fit_range=fit_range)
              for sl in slices]
    return _calibrated(quotes, grid)


def spx_data_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The SPX quotes file: ``path`` (a folder or the CSV), else ``$DEEPQUANT_SPX_DATA``."""
    p = path if path is not None else os.environ.get(SPX_ENV)
    if not p:
        raise ValueError(f"no SPX data: pass the folder of spx_options_normalized.csv or set "
                         f"{SPX_ENV}")
    p = Path(p)
    if p.is_dir():
        p = p / "spx_options_normalized.csv"
    if not p.is_file():
        raise ValueError(f"SPX data file {str(p)!r} does not exist (set {SPX_ENV} to the "
                         "folder that holds spx_options_normalized.csv)")
    return p


@functools.lru_cache(maxsize=4)
def _spx_slices(path: str, fit_lo: float, fit_hi: float):
    """(labels, times, normalised quotes) of the SPX slices between 1 week and 1 year, one
    slice per expiry date (the PM root where both exist); loaded once per process."""
    from deepquant.market.parity import fit_parity, normalize_slice
    from deepquant.market.quotes import load_chain

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ch = load_chain(path)
    out: dict[float, object] = {}
    for sl in ch.slices:
        if not MIN_DAYS / 365 <= sl.t <= MAX_DAYS / 365:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                q = normalize_slice(sl, fit_parity(sl, spot=ch.spot), fit_range=(fit_lo, fit_hi))
        except ValueError:
            continue
        day = round(sl.t * 365, 1)
        if day not in out or sl.label.endswith("W"):
            out[day] = q
    return tuple(out[d] for d in sorted(out))


def spx_marginals(n_expiries: int, grid: np.ndarray, *, rng=None, perturbation: float = 1.0,
                  path: str | os.PathLike[str] | None = None,
                  fit_range: tuple[float, float] = (0.52, 1.97)) -> Marginals:
    """A perturbed calibration of the SPX chain at ``n_expiries`` (>= 2) random expiries
    between 1 week and 1 year (module doc), with today in front."""
    from dataclasses import replace

    rng = np.random.default_rng(rng)
    slices = _spx_slices(str(spx_data_path(path)), *fit_range)
    if not 2 <= n_expiries <= len(slices):
        raise ValueError(f"n_expiries must be in [2, {len(slices)}], got {n_expiries!r}")
    pick = np.sort(rng.choice(len(slices), size=n_expiries, replace=False))
    quotes = []
    for i in pick:
        q = slices[i]
        half = 0.5 * (q.ask - q.bid)
        z = perturbation * (0.5 * rng.uniform(-1, 1) + 0.25 * rng.uniform(-1, 1, q.k.size))
        mid = 0.5 * (q.ask + q.bid) + z * half
        quotes.append(replace(q, bid=np.maximum(mid - 0.5 * half, 0.0), ask=mid + 0.5 * half))
    return _calibrated(quotes, grid)


def _on_simulation_grid(t: np.ndarray, n_steps: int) -> np.ndarray:
    """Indices of the dates ``t`` (from 0, increasing) on the uniform grid of ``n_steps`` steps
    over [0, t[-1]]; ValueError when a date is off that grid."""
    pos = t / t[-1] * n_steps
    idx = np.rint(pos).astype(int)
    if np.any(np.abs(pos - idx) > 1e-9 * n_steps):
        raise ValueError(f"times must be multiples of times[-1] / n_steps = {t[-1] / n_steps:.6g} "
                         f"(the simulation grid), got {t.tolist()!r}")
    return idx


def rbergomi_marginals(times: Sequence[float], grid: np.ndarray, *, H: float = 0.1,
                       eta: float = 1.9, rho: float = -0.9, xi0: float = 0.04,
                       n_steps: int | None = None, n_paths: int = 1024, rng=None) -> Marginals:
    """Rough Bergomi marginals (module doc) at ``times`` on ``grid``.

    Parameters
    ----------
    times : array_like, shape (N+1,)
        Increasing dates from 0 (today), each a point of the simulation grid (``n_steps``).
    grid : ndarray, shape (M,)
        Moneyness grid with grid[0] < 1 < grid[-1].
    H, eta, rho, xi0 : float
        Hurst index in (0, 0.5], vol of vol >= 0, correlation in (-1, 1) and flat forward
        variance > 0 (``RoughBergomi``).
    n_steps : int, optional
        Steps of the hybrid scheme over [0, times[-1]]; default the smallest multiple of N
        that is >= 128 (then uniform dates lie on the grid).
    n_paths : int
        Paths (RQMC with antithetics: a power of 2, >= 4). Cost about n_paths x M x N Black
        prices: with 1024 paths 0.2-2 s for N = 2-63 on the 150-point model grid.
    rng : int, Generator or None
        Seed of the scrambled Sobol points: the same seed, the same marginals.
    """
    from deepquant.blackscholes import black_price
    from deepquant.market.synthetic import marginals_from_call_prices
    from deepquant.rough.rbergomi import RoughBergomi

    t = dates_from_today(times)
    if not -1 < rho < 1:
        raise ValueError(f"rho must be in (-1, 1), got {rho!r}")
    if isinstance(n_paths, bool) or not isinstance(n_paths, (int, np.integer)) or n_paths < 4 \
            or n_paths & (n_paths - 1):
        raise ValueError(f"n_paths must be a power of 2 >= 4, got {n_paths!r}")
    n = t.size - 1
    if n_steps is None:
        n_steps = n * -(-128 // n)
    if isinstance(n_steps, bool) or not isinstance(n_steps, (int, np.integer)) or n_steps < n:
        raise ValueError(f"n_steps must be an integer >= N = {n}, got {n_steps!r}")
    idx = _on_simulation_grid(t, int(n_steps))
    model = RoughBergomi(H=H, eta=eta, rho=rho, xi0=xi0, r=0.0, S0=1.0)
    paths = model.simulate(int(n_paths), T=float(t[-1]), n_steps=int(n_steps), rng=rng)
    dt = t[-1] / n_steps
    V = paths.V[:, :-1]
    X = np.concatenate([np.zeros((n_paths, 1)), np.cumsum(np.sqrt(V) * paths.dW, axis=1)], 1)
    Q = np.concatenate([np.zeros((n_paths, 1)), np.cumsum(V, axis=1) * dt], 1)
    x = np.asarray(grid, dtype=float)
    calls = [np.maximum(1.0 - x, 0.0)]
    for i in idx[1:]:
        s = np.exp(rho * X[:, i] - 0.5 * rho ** 2 * Q[:, i])
        s /= s.mean()
        sd = np.sqrt((1.0 - rho ** 2) * Q[:, i])
        calls.append(black_price(s[:, None], x[None, :], sd[:, None], 1.0).mean(axis=0))
    return marginals_from_call_prices(x, np.array(calls), t)


def scaled_marginals(marginals: Marginals, scale: float, *, tail: float = 1e-12) -> Marginals:
    """``marginals`` (rows of mean 1 in convex order on their grid) with supports of another
    width (module doc): X_t -> 1 + ``scale`` (X_t - 1), weights below ``tail`` in the tails cut.

    Parameters
    ----------
    marginals : Marginals
        Rows on a grid with grid[0] < 1 < grid[-1].
    scale : float
        > 0; below 1 the supports shrink towards 1, above 1 they widen (the mass past the grid
        ends moves to them).
    tail : float
        In [0, 1e-6]: the rows are zero outside the grid range where the widest (last) row's
        weights exceed it.
    """
    from deepquant.market.synthetic import marginals_from_call_prices

    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals instance, got {type(marginals).__name__}")
    if not (isinstance(scale, (int, float, np.floating)) and np.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    if not 0 <= tail <= 1e-6:
        raise ValueError(f"tail must be in [0, 1e-6], got {tail!r}")
    x = marginals.grid
    # E[(1 + s (X - 1) - k)^+] = s C(1 + (k - 1) / s); call_prices is exact off the grid too
    scaled = scale * marginals.call_prices(1.0 + (x - 1.0) / scale)
    full = marginals_from_call_prices(x, scaled, marginals.times)
    live = np.flatnonzero(full.weights[-1] > tail)
    i_one = int(np.searchsorted(x, 1.0))                             # first point >= 1
    lo, hi = min(int(live[0]), i_one - 1), max(int(live[-1]), i_one + (x[i_one] == 1.0))
    if lo == 0 and hi == x.size - 1:
        return full
    sub = marginals_from_call_prices(x[lo:hi + 1], full.call_prices(x[lo:hi + 1]),
                                     marginals.times)
    out = np.zeros_like(full.weights)
    out[:, lo:hi + 1] = sub.weights
    return Marginals(x, out, marginals.times)
