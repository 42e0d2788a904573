"""The demo's market step (steps 1-3 of ``deepquant.demo``): the chain, its calibration on the
fine grid, and the fitted laws moved onto the coarse demo grid.

``demo_grid`` builds the uniform demo grid containing 1; ``coarsen_marginals`` moves calibrated
marginals onto any grid through their call prices (mass, mean and convex order kept; also used
by ``deepquant.mmot.resolution`` and the neural comparison); ``load_market`` runs the step.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from deepquant.market.marginals import Marginals

if TYPE_CHECKING:
    from deepquant.demo import DemoConfig

__all__ = ["Market", "demo_grid", "coarsen_marginals", "load_market"]


def demo_grid(step: float, lo: float, hi: float) -> np.ndarray:
    """Uniform grid 1 + step * k covering [lo, hi] (contains 1 exactly)."""
    k_lo = int(np.ceil((lo - 1.0) / step - 1e-9))
    k_hi = int(np.floor((hi - 1.0) / step + 1e-9))
    return np.round(1.0 + step * np.arange(k_lo, k_hi + 1), 12)


def coarsen_marginals(fine: Marginals, grid: np.ndarray, *, with_spot: bool = True) -> Marginals:
    """Move calibrated marginals onto ``grid`` through their call prices (convex order kept).

    Calls C_t(k) at the coarse nodes are taken from the fine laws; the greatest convex minorant
    with C(g_0) = 1 - g_0, C(g_{M-1}) = 0 gives the coarse weights
    (``synthetic.marginals_from_call_prices``). With ``with_spot`` a first date t = 0 with
    X_0 = 1 (call curve (1 - k)^+) is prepended.
    """
    from deepquant.market.synthetic import marginals_from_call_prices

    grid = np.asarray(grid, dtype=float)
    calls = fine.call_prices(grid)
    times = np.asarray(fine.times, dtype=float)
    if with_spot:
        calls = np.vstack([np.maximum(1.0 - grid, 0.0)[None, :], calls])
        times = np.concatenate([[0.0], times])
    return marginals_from_call_prices(grid, calls, times)


@dataclass
class Market:
    """Output of the market step: the chain, its calibration and the demo-grid marginals."""

    chain_path: str
    fit: Any                   # CalibrationResult on the fine calibration grid
    grid: np.ndarray           # the demo grid
    marginals: Marginals       # the fitted laws moved onto the demo grid, date 0 prepended
    calibration: dict          # JSON summary of the calibration


def load_market(chain: str | os.PathLike[str] | None, out: Path, cfg: DemoConfig, *,
                say: Callable[[str], None], timings: dict[str, float]) -> Market:
    """Steps 1-3: the chain (the built-in synthetic Heston chain, written to
    ``out/chain.csv``, when ``chain`` is None; else the user's CSV), the calibration on the fine
    grid, and the fitted laws moved onto the demo grid. Stage seconds go into ``timings``
    (``chain``, ``calibration``); ``say`` announces each stage."""
    from deepquant.market.calibrate import calibrate_chain

    say("market data")
    t0 = time.perf_counter()
    if chain is None:
        from deepquant.market.chain import synthetic_chain

        qd = dt.date(2024, 1, 2)
        days = [int(round(float(e.rstrip("d")))) for e in cfg.expiries if e.endswith("d")]
        if len(days) != len(cfg.expiries):
            raise ValueError(f"the synthetic chain needs tenors in days ('30d'), got "
                             f"{cfg.expiries!r}")
        syn = synthetic_chain("heston", seed=cfg.seed, quote_date=qd,
                              expiries=[qd + dt.timedelta(days=d) for d in days])
        chain_path = str(syn.to_csv(out / "chain.csv"))
    else:
        chain_path = str(chain)
    timings["chain"] = time.perf_counter() - t0
    say("calibration")
    t0 = time.perf_counter()
    cal = calibrate_chain(chain_path, expiries=list(cfg.expiries),
                          grid_size=cfg.calibration_grid_size)
    timings["calibration"] = time.perf_counter() - t0
    grid = demo_grid(cfg.grid_step, *cfg.grid_range)
    marg = coarsen_marginals(cal.marginals, grid)
    calibration = dict(success=bool(cal.success), fraction_inside=float(cal.fraction_inside),
                       max_violation=float(cal.max_violation),
                       seconds=timings["calibration"],
                       fine_grid_size=int(cal.marginals.size),
                       slices=[r.as_dict() for r in cal.slices],
                       coarse_grid=[float(grid[0]), float(grid[-1]), int(grid.size)],
                       coarse_call_error=float(np.max(np.abs(
                           marg.call_prices(grid)[1:] - cal.marginals.call_prices(grid)))))
    return Market(chain_path, cal, grid, marg, calibration)
