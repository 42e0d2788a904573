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
           "with_today", "SPX_ENV"]

SPX_ENV = "DEEPQUANT_SPX_DATA"
"""Environment variable naming the SPX data folder (``spx_options_normalized.csv`` inside)."""
MIN_DAYS, MAX_DAYS = 7, 366
"""Expiries drawn by the chain families lie between 1 week and 1 year."""


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
    from scipy.stats import norm

    from deepquant.market.synthetic import marginals_from_call_prices

    t = np.asarray(times, dtype=float)
    if t.ndim != 1 or t.size < 2 or t[0] != 0.0 or np.any(np.diff(t) <= 0):
        raise ValueError(f"times must be increasing from 0 with at least 2 dates, got {times!r}")
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
        s = np.sqrt(w)
        d1 = (-k + 0.5 * w) / s
        calls.append(norm.cdf(d1) - x * norm.cdf(d1 - s))
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
    from deepquant.market.calibrate import select_slices
    from deepquant.market.chain import synthetic_chain
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
