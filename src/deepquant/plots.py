"""Figures of the market layer (matplotlib, Agg backend, files written atomically).

``calibration_figures`` draws a calibration's implied densities and its fit to the quotes in
implied volatility. matplotlib is imported inside the functions, so importing this module is
cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from deepquant.blackscholes import implied_vol

if TYPE_CHECKING:
    from deepquant.market.calibrate import CalibrationResult

__all__ = ["calibration_figures"]


def calibration_figures(result: CalibrationResult, folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``densities.png`` and ``implied_vols.png`` for a calibration into ``folder``.

    * densities: the implied density p_{s,j} = W_sj / cell_j of every slice against moneyness.
    * implied vols: per slice, Black implied vols of the out-of-the-money quotes (puts for k < 1,
      calls for k >= 1) as bid–ask bars, with the model's implied vol on a fine strike grid.

    Uses matplotlib with the Agg backend (no display needed); files are written atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deepquant.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marg = result.marginals
    x = marg.grid
    cell = np.empty_like(x)
    cell[1:-1] = (x[2:] - x[:-2]) / 2
    cell[0], cell[-1] = (x[1] - x[0]) / 2, (x[-1] - x[-2]) / 2
    out = []

    fig, ax = plt.subplots(figsize=(8, 5))
    cmap = plt.get_cmap("viridis")
    n_s = marg.n_dates
    lo = min(float(q.k.min()) for q in result.quotes)
    hi = max(float(q.k.max()) for q in result.quotes)
    for s, rep in enumerate(result.slices):
        ax.plot(x, marg.weights[s] / cell, color=cmap(s / max(1, n_s - 1)),
                label=f"{rep.label} ({rep.days:.0f}d)", lw=1.2)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("forward moneyness K/F")
    ax.set_ylabel("implied density")
    ax.set_title("Calibrated marginals (convex order, within bid-ask)")
    ax.legend(fontsize=7, ncol=1 + n_s // 12)
    fig.tight_layout()
    with atomic_path(folder / "densities.png") as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    out.append(folder / "densities.png")

    ncol = min(3, n_s)
    nrow = int(np.ceil(n_s / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.2 * nrow), squeeze=False)
    for s, (q, rep) in enumerate(zip(result.quotes, result.slices)):
        ax = axes[s // ncol][s % ncol]
        otm = np.where(q.is_call, q.k >= 1, q.k < 1)
        kq, cq = q.k[otm], q.is_call[otm]
        iv_bid = implied_vol(q.bid[otm], 1.0, kq, q.t, is_call=cq)
        iv_ask = implied_vol(q.ask[otm], 1.0, kq, q.t, is_call=cq)
        mid = np.where(np.isfinite(iv_bid), iv_bid, 0.0)
        ok = np.isfinite(iv_ask)
        ax.errorbar(kq[ok], 0.5 * (mid[ok] + iv_ask[ok]),
                    yerr=0.5 * (iv_ask[ok] - mid[ok]), fmt="none", ecolor="tab:gray",
                    elinewidth=1.0, capsize=1.5, label="market bid/ask")
        kf = np.linspace(kq.min(), kq.max(), 400)
        cf = np.full(kf.shape, True)
        cf[kf < 1] = False
        c = marg.call_prices(kf)[s]
        model = np.where(cf, c, c - 1.0 + kf)
        ax.plot(kf, implied_vol(model, 1.0, kf, q.t, is_call=cf), color="tab:red", lw=1.0,
                label="model")
        ax.set_title(f"{rep.label} ({rep.days:.0f}d): {100 * rep.fraction_inside:.1f}% inside",
                     fontsize=8)
        ax.set_xlabel("K/F", fontsize=8)
        ax.set_ylabel("implied vol", fontsize=8)
        ax.tick_params(labelsize=7)
        if s == 0:
            ax.legend(fontsize=7)
    for s in range(n_s, nrow * ncol):
        axes[s // ncol][s % ncol].axis("off")
    fig.tight_layout()
    with atomic_path(folder / "implied_vols.png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    out.append(folder / "implied_vols.png")
    return out
