"""Bounds against the grid: the same calibrated laws moved onto finer and finer grids
(DESIGN §2.8: a tight bracket on a coarse grid can hide a larger discretisation error).

``resolution_study(fine, payoffs, sizes)`` moves the calibrated marginals onto uniform grids of
the given sizes containing 1 (through their call prices: mass, mean and convex order kept) and
computes each payoff's bounds with ``bounds(method="auto")`` (the exact LP while small, the
certified method beyond), with the method, the certified gaps and the seconds per entry.
``halved_bounds(marginals, payoff)`` is the quick check of any marginals file: the same bounds
on every other grid point.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.payoffs import Payoff

__all__ = ["ResolutionEntry", "halved_bounds", "halved_marginals", "resolution_study", "uniform_grid"]


@dataclass(frozen=True)
class ResolutionEntry:
    """The bounds of one payoff on one grid."""

    label: str
    size: int
    lower: float
    upper: float
    method: str
    status: str
    success: bool
    lower_gap: float
    upper_gap: float
    seconds: float
    grid: tuple[float, float] = field(default=(np.nan, np.nan))
    lower_from: str = ""
    upper_from: str = ""
    """Where each bound came from when not from the method's own solve (``BoundSide.bound_from``:
    the relaxation to a forward start's own dates), else ``""``."""

    def to_dict(self) -> dict:
        return dict(label=self.label, size=self.size, lower=self.lower, upper=self.upper,
                    method=self.method, status=self.status, success=self.success,
                    lower_gap=self.lower_gap, upper_gap=self.upper_gap, seconds=self.seconds,
                    grid=list(self.grid), lower_from=self.lower_from, upper_from=self.upper_from)


def uniform_grid(size: int, lo: float, hi: float) -> np.ndarray:
    """About ``size`` points 1 + k * step covering [lo, hi] (1 on the grid exactly, so ATM
    strikes are grid points and equal-weight running sums fall on a lattice)."""
    if int(size) < 3:
        raise ValueError(f"grid size must be >= 3, got {size!r}")
    if not 0 < lo < 1 < hi:
        raise ValueError(f"grid range must satisfy 0 < lo < 1 < hi, got ({lo!r}, {hi!r})")
    step = (hi - lo) / (int(size) - 1)
    below = int(np.ceil((1.0 - lo) / step - 1e-9))
    above = int(size) - 1 - below
    return 1.0 + step * np.arange(-below, above + 1)


def resolution_study(fine: Marginals, payoffs: Mapping[str, Payoff], sizes: Sequence[int], *,
                     grid_range: tuple[float, float] | None = None,
                     progress: Callable[[str], None] | None = None,
                     **options) -> list[ResolutionEntry]:
    """Bounds of every payoff on uniform grids of each size (module docstring).

    Parameters
    ----------
    fine : Marginals
        Calibrated marginals of the expiries (any grid, no row for date 0): date 0, X_0 = 1,
        is added on every grid.
    payoffs : mapping label -> Payoff
    sizes : sequence of int
        Grid sizes.
    grid_range : (lo, hi), optional
        Default: the range of ``fine.grid``.
    progress : callable(str), optional
    **options
        Passed to ``bounds`` (e.g. ``rtol``, ``max_seconds`` of the certified method).
    """
    from deepquant.demo_market import coarsen_marginals
    from deepquant.mmot.bounds import bounds

    lo, hi = grid_range or (float(fine.grid[0]), float(fine.grid[-1]))
    say = progress or (lambda _msg: None)
    out = []
    for size in sizes:
        grid = uniform_grid(size, lo, hi)
        marg = coarsen_marginals(fine, grid)
        for label, payoff in payoffs.items():
            say(f"bounds of {label} on {grid.size} points")
            t0 = time.perf_counter()
            res = bounds(marg, payoff, **options)
            sides = [getattr(res, f"{s}_side") for s in ("lower", "upper")]
            gaps = [getattr(s, "gap", np.nan) for s in sides]
            froms = [getattr(s, "bound_from", "") for s in sides]
            out.append(ResolutionEntry(label, int(grid.size), float(res.lower), float(res.upper),
                                       res.method, res.status, bool(res.success),
                                       float(gaps[0]), float(gaps[1]),
                                       time.perf_counter() - t0, (float(grid[0]),
                                                                  float(grid[-1])),
                                       *froms))
    return out


def halved_marginals(marginals: Marginals) -> Marginals:
    """``marginals`` moved onto every other grid point (``halved_bounds``): the points of the
    parity of the first date's heaviest point (a point mass X_0 stays put) and both ends, each
    dropped point's mass split linearly onto its kept neighbours (``entropic.coarse_marginals``:
    mass, mean, every call price at a kept point and the convex order kept).

    Raises ``ValueError`` when that keeps every point (a grid of 2 points, or 3 with the
    heaviest first-date point in the middle): the check would compare the bounds with
    themselves."""
    from deepquant.mmot.entropic import coarse_marginals

    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals, got {type(marginals).__name__}")
    offset = int(np.argmax(marginals.weights[0])) % 2
    half = coarse_marginals(marginals, offset)
    if half.size == marginals.size:
        raise ValueError(f"marginals on {marginals.size} grid points cannot be halved (every "
                         f"other point from index {offset} and both ends keep them all): the "
                         "grid check needs at least 4 points")
    return half


def halved_bounds(marginals: Marginals, payoff: Payoff, method: str = "auto", **options):
    """The bounds of ``payoff`` on ``marginals`` moved onto every other grid point
    (``halved_marginals``): the grid's own effect on the bounds, to show beside them (a bracket
    on one grid says nothing of it). ``method`` and ``options`` as for ``bounds``.

    Returns
    -------
    (Marginals, BoundsResult)
        The halved marginals and their bounds.
    """
    from deepquant.mmot.bounds import bounds

    half = halved_marginals(marginals)
    return half, bounds(half, payoff, method, **options)
