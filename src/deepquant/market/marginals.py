"""Discrete marginal laws of the forward-moneyness process on a common grid.

``Marginals(grid, weights, times)`` holds the laws of X_{t_0}, ..., X_{t_N} (DESIGN §1): ``weights``
has shape (N+1, M), row t is the law of X_t on the sorted grid of M points. Rows must be
probabilities with equal means and increase in convex order; each violation is a ``ValueError``
naming the date, the grid point and the size of the violation.

Convex order on a common grid is checked exactly through call prices: for two laws with the same
mean, mu <= nu in convex order iff C_mu(k) <= C_nu(k) for every k, and both call curves are
piecewise linear with kinks at grid points only, so checking k on the grid is exact.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import KW_ONLY, dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np
from scipy import optimize, sparse

from deepquant.atomic import atomic_path, ensure_writable

__all__ = ["Marginals", "ConvexOrderReport", "RepairReport", "call_matrix", "MIN_GRID_SCALE",
           "MAX_GRID_SCALE"]

MIN_GRID_SCALE = 1e-5
MAX_GRID_SCALE = 1e5
"""Range of the grid's scale max|x_j| that ``Marginals`` accepts: solver tolerances are absolute
(HiGHS's feasibility tolerance, 1e-9 in the LP, on martingale rows whose coefficients y - x
scale with the grid; the certified method's start plan now divides its rows by the grid's scale,
``lp._feasible_martingale_plan``, and the measurements below predate that; ``solve_entropic``'s drift
target ``tol`` = 1e-9), so the answers are right only for grids of moderate size.

Measured on the README's three-date example (11 points on [0.5, 1.5]; at-the-money Asian call,
a forward-start straddle for ipm) times factors s: lp, certified, ipm, path-lp, entropic and
``solve_entropic`` all gave their s = 1 answers for max|x| from 9.5e-6 to 9.5e4 (41 log-spaced
factors); so did lp, ipm and certified on Heston marginals (13 points on [0.55, 1.45], 5 dates)
at max|x| = 1e-5 and 1e5. Outside: the LP's 'optimal' [0, 0.15] for 0.0583 at max|x| = 1.5e-8,
a 'converged' entropic plan drifting by 1% of the grid at <= 1.2e-7, certified bounds missing
their target gap at <= 1e-6 (Heston), and a false "not in convex order" from the certified
method (its start plan's feasibility LP) at 1.65e6 (README), 4.4e7 (Heston) and scattered
scales above. Moneyness grids (points near 1) sit in the middle."""


def call_matrix(grid: np.ndarray, strikes: np.ndarray) -> np.ndarray:
    """Payoff matrix ``(x_j - k_i)^+`` of shape (len(strikes), len(grid))."""
    return np.maximum(np.asarray(grid)[None, :] - np.asarray(strikes)[:, None], 0.0)


@dataclass(frozen=True)
class ConvexOrderReport:
    """Worst convex-order violation between consecutive dates.

    Attributes
    ----------
    violation : float
        max over t and grid points k of C_t(k) - C_{t+1}(k) (<= 0 when in convex order).
    date : int
        Index t+1 of the later date in the worst pair (``-1`` when there is a single date).
    point : float
        Grid point k where the worst violation occurs.
    per_date : ndarray, shape (N,)
        Worst violation for each pair (t, t+1).
    """

    violation: float
    date: int
    point: float
    per_date: np.ndarray

    @property
    def ok(self) -> bool:
        return self.violation <= 0.0


@dataclass(frozen=True)
class RepairReport:
    """What ``Marginals.repair_convex_order`` changed: the L1 distance each row moved."""

    moved_l1: np.ndarray
    before: ConvexOrderReport
    after: ConvexOrderReport


@dataclass(frozen=True, eq=False)
class Marginals:
    """Laws of X_t at N+1 dates on a common sorted moneyness grid.

    Parameters
    ----------
    grid : array_like, shape (M,)
        Strictly increasing finite grid points, in forward moneyness: max|x_j| within
        [``MIN_GRID_SCALE``, ``MAX_GRID_SCALE``] = [1e-5, 1e5].
    weights : array_like, shape (N+1, M)
        Row t is the law of X_t. Non-negative, rows sum to 1, equal means, convex order.
    times : array_like, shape (N+1,), optional
        Year fractions of the dates, strictly increasing. Defaults to 0, 1, ..., N.
    sum_tol : float
        Tolerance on |sum_j w_tj - 1|.
    mean_tol : float
        Tolerance on |mean_t - mean_0|, relative to max(1, |mean_0|).
    convex_tol : float
        Tolerance on call-price decreases between consecutive dates, relative to max(1, |mean_0|).
    check_convex : bool
        If False, skip the convex-order check (for instance to build data that is then repaired
        with ``repair_convex_order``). Every other check always runs.
    """

    grid: np.ndarray
    weights: np.ndarray
    times: np.ndarray | None = None
    _: KW_ONLY
    sum_tol: float = 1e-9
    mean_tol: float = 1e-9
    convex_tol: float = 1e-9
    check_convex: bool = True

    def __post_init__(self) -> None:
        grid = _real_array(self.grid, "grid")
        weights = _real_array(self.weights, "weights")
        if grid.ndim != 1 or grid.size < 2:
            raise ValueError(f"grid must be 1-D with at least 2 points, got shape {grid.shape}")
        if not np.all(np.isfinite(grid)):
            bad = int(np.flatnonzero(~np.isfinite(grid))[0])
            raise ValueError(f"grid has a non-finite value {grid[bad]} at index {bad}")
        scale = float(np.max(np.abs(grid)))
        if not MIN_GRID_SCALE <= scale <= MAX_GRID_SCALE:
            raise ValueError(
                f"grid's scale max|x| = {scale:.3g} lies outside [{MIN_GRID_SCALE:.0e}, "
                f"{MAX_GRID_SCALE:.0e}], where the solvers' absolute tolerances give right "
                "answers; express the grid in units of the forward (moneyness x = S / F, points "
                "near 1)")
        steps = np.diff(grid)
        if np.any(steps <= 0):
            bad = int(np.flatnonzero(steps <= 0)[0])
            what = "duplicate" if steps[bad] == 0 else "unsorted"
            raise ValueError(
                f"grid must be strictly increasing: {what} points at index {bad}, {bad + 1} "
                f"({float(grid[bad])!r}, {float(grid[bad + 1])!r})"
            )
        if weights.ndim == 1:
            weights = weights[None, :]
        if weights.ndim != 2 or weights.shape[1] != grid.size or weights.shape[0] == 0:
            raise ValueError(
                f"weights must have shape (N+1, {grid.size}) with N+1 >= 1 dates to match the "
                f"grid, got {weights.shape}"
            )
        for name, tol in (("sum_tol", self.sum_tol), ("mean_tol", self.mean_tol),
                          ("convex_tol", self.convex_tol)):
            if isinstance(tol, bool) or not isinstance(tol, Real) \
                    or not (math.isfinite(tol) and tol >= 0):
                raise ValueError(f"{name} must be a finite non-negative number, got {tol!r}")
        n_dates = weights.shape[0]
        if not np.all(np.isfinite(weights)):
            t, j = map(int, np.argwhere(~np.isfinite(weights))[0])
            raise ValueError(
                f"weights at date {t}, grid point x={grid[j]:.6g} is {weights[t, j]!r} (not finite)"
            )
        if np.any(weights < 0):
            t, j = np.unravel_index(int(np.argmin(weights)), weights.shape)
            raise ValueError(
                f"weights at date {t}, grid point x={grid[j]:.6g} is negative ({weights[t, j]:.3e})"
            )
        sums = weights.sum(axis=1)
        bad_sum = np.abs(sums - 1.0) > self.sum_tol
        if np.any(bad_sum):
            t = int(np.flatnonzero(bad_sum)[0])
            raise ValueError(
                f"weights at date {t} sum to {sums[t]:.12g}, not 1 (|error| {abs(sums[t] - 1):.3e} "
                f"> sum_tol {self.sum_tol:g})"
            )
        means = weights @ grid
        scale = max(1.0, abs(means[0]))
        dmean = np.abs(means - means[0])
        if np.any(dmean > self.mean_tol * scale):
            t = int(np.argmax(dmean))
            raise ValueError(
                f"weights have unequal means: date {t} has mean {means[t]:.12g}, date 0 has "
                f"{means[0]:.12g} (difference {dmean[t]:.3e} > mean_tol {self.mean_tol:g})"
            )
        if self.times is None:
            times = np.arange(n_dates, dtype=np.float64)
        else:
            times = _real_array(self.times, "times").reshape(-1)
            if times.shape != (n_dates,):
                raise ValueError(
                    f"times must have shape ({n_dates},) to match weights, got {times.shape}"
                )
            if not np.all(np.isfinite(times)) or np.any(np.diff(times) <= 0) or times[0] < 0:
                raise ValueError(f"times must be finite, non-negative and increasing, got {times}")
        grid.flags.writeable = False
        weights.flags.writeable = False
        times.flags.writeable = False
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "times", times)
        if self.check_convex and n_dates > 1:
            self.require_convex_order()

    # ------------------------------------------------------------------ basic properties
    @property
    def n_dates(self) -> int:
        """Number of dates N+1."""
        return int(self.weights.shape[0])

    @property
    def n_periods(self) -> int:
        """Number of periods N."""
        return self.n_dates - 1

    @property
    def size(self) -> int:
        """Number of grid points M."""
        return int(self.grid.size)

    @property
    def means(self) -> np.ndarray:
        """Means of the rows, shape (N+1,)."""
        return self.weights @ self.grid

    @property
    def mean(self) -> float:
        """Common mean (1 in forward moneyness)."""
        return float(self.means[0])

    def variances(self) -> np.ndarray:
        """Centred variances of the rows, shape (N+1,)."""
        return self.weights @ self.grid**2 - self.means**2

    def support(self, date: int, *, atol: float = 0.0) -> np.ndarray:
        """Boolean mask of grid points carrying weight > ``atol`` at ``date``."""
        return self.weights[self._date(date)] > atol

    # ------------------------------------------------------------------ prices
    def call_prices(self, strikes: np.ndarray | float | None = None) -> np.ndarray:
        """Undiscounted call prices E[(X_t - k)^+] per date, shape (N+1, K).

        ``strikes`` default to the grid points. The call curve of a law on the grid is piecewise
        linear with kinks at the grid points, so it is computed on the grid in O((N+1) M) time
        and memory (``call_curve``) and interpolated linearly at other strikes (exact).
        """
        curve = call_curve(self.grid, self.weights)
        if strikes is None:
            return curve
        return _interp_curve(self.grid, curve, self.means, _strikes(strikes))

    def put_prices(self, strikes: np.ndarray | float | None = None) -> np.ndarray:
        """Undiscounted put prices E[(k - X_t)^+] per date, shape (N+1, K) (by put-call parity)."""
        k = self.grid if strikes is None else _strikes(strikes)
        return self.call_prices(k) - self.means[:, None] + k[None, :]

    def spot_call_price(
        self, date: int, strike: float, *, forward: float, discount: float = 1.0
    ) -> float:
        """Call price in currency: D(0,t) F(0,t) E[(X_t - K/F)^+] for a strike K on the spot."""
        for name, value in (("forward", forward), ("discount", discount)):
            if not (isinstance(value, Real) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(strike, Real) and math.isfinite(strike)):
            raise ValueError(f"strike must be a finite number, got {strike!r}")
        c = self.call_prices(np.array([strike / forward]))[self._date(date), 0]
        return float(discount * forward * c)

    # ------------------------------------------------------------------ conversions
    @classmethod
    def from_spot_laws(
        cls,
        spot_grid: np.ndarray,
        weights: np.ndarray,
        forwards: np.ndarray,
        *,
        grid: np.ndarray | None = None,
        times: np.ndarray | None = None,
        **options,
    ) -> Marginals:
        """Convert laws of S_t (each row on ``spot_grid``) to laws of X_t = S_t / F(0,t).

        The point masses at S/F_t are split linearly onto the common moneyness ``grid``
        (default: ``spot_grid / forwards[0]``); linear splitting preserves the mass and the mean
        exactly and can only increase a law in convex order.
        """
        spot_grid = np.asarray(spot_grid, dtype=float)
        weights = np.atleast_2d(np.asarray(weights, dtype=float))
        forwards = np.asarray(forwards, dtype=float).reshape(-1)
        if forwards.shape != (weights.shape[0],) or np.any(forwards <= 0):
            raise ValueError(
                f"forwards must be {weights.shape[0]} positive numbers, got {forwards!r}"
            )
        grid = spot_grid / forwards[0] if grid is None else np.asarray(grid, dtype=float)
        rows = [split_onto_grid(spot_grid / f, w, grid) for f, w in zip(forwards, weights)]
        return cls(grid, np.vstack(rows), times, **options)

    def with_options(self, **options) -> Marginals:
        """A copy with other validation options (e.g. ``check_convex=False``)."""
        kw = dict(sum_tol=self.sum_tol, mean_tol=self.mean_tol, convex_tol=self.convex_tol,
                  check_convex=self.check_convex)
        kw.update(options)
        return Marginals(self.grid, self.weights, self.times, **kw)

    def select(self, dates: list[int] | np.ndarray) -> Marginals:
        """The marginals at a subset of dates (in the given increasing order)."""
        idx = [self._date(d) for d in dates]
        return Marginals(
            self.grid, self.weights[idx], self.times[idx], sum_tol=self.sum_tol,
            mean_tol=self.mean_tol, convex_tol=self.convex_tol, check_convex=self.check_convex,
        )

    # ------------------------------------------------------------------ convex order
    def check_convex_order(self) -> ConvexOrderReport:
        """Worst violation of C_t(k) <= C_{t+1}(k) over consecutive dates and grid points k.

        O((N+1) M) time and memory (no M x M matrix), so a 100,001-point grid is cheap.
        """
        calls = self.call_prices()
        if self.n_dates < 2:
            return ConvexOrderReport(-np.inf, -1, float("nan"), np.zeros(0))
        diff = calls[:-1] - calls[1:]
        per_date = diff.max(axis=1)
        t, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
        return ConvexOrderReport(float(diff[t, j]), int(t) + 1, float(self.grid[j]), per_date)

    def require_convex_order(self, *, hint: str = "see Marginals.repair_convex_order",
                             dates: range | None = None) -> None:
        """Raise the package's one convex-order ``ValueError`` when a call price drops between
        consecutive dates by more than ``convex_tol`` (relative to max(1, |mean|)).

        The message names the worst pair (``marginals[t]`` against ``marginals[t-1]``), the
        grid point and the size of the drop, then every other pair out of order, then ``hint``
        (what the caller can do about it). With ``dates`` only the pairs (t-1, t) with t in
        ``dates`` are checked (e.g. the dates a payoff reaches).
        """
        if self.n_dates < 2:
            return
        diff = self.call_prices()
        diff = diff[:-1] - diff[1:]                      # (N, M): C_{t-1}(k) - C_t(k)
        if dates is not None:
            keep = np.array([t + 1 in dates for t in range(self.n_periods)])
            diff = np.where(keep[:, None], diff, -np.inf)
        per_date = diff.max(axis=1)
        tol = self.convex_tol * max(1.0, abs(self.mean))
        t, j = np.unravel_index(int(np.argmax(diff)), diff.shape)
        if diff[t, j] <= tol:
            return
        date = int(t) + 1
        others = [u + 1 for u, v in enumerate(per_date) if v > tol and u + 1 != date]
        also = ("; also " + ", ".join(f"marginals[{u}] vs marginals[{u - 1}] (drop "
                                      f"{per_date[u - 1]:.3e})" for u in others)
                if others else "")
        raise ValueError(
            f"marginals[{date}] is not in convex order with marginals[{date - 1}]: "
            f"call price at k={self.grid[j]:.6g} drops by {diff[t, j]:.3e} "
            f"(> convex_tol {self.convex_tol:g}){also}; {hint}"
        )

    def repair_convex_order(self) -> tuple[Marginals, RepairReport]:
        """Project each later row onto the laws above the (repaired) earlier row in convex order.

        Row t+1 is replaced by the law nu with the same mean that minimises ||nu - mu_{t+1}||_1
        subject to C_nu(k) >= C_{t}(k) at every grid point (an LP solved by HiGHS). Rows already
        in order are left unchanged. Never applied implicitly: the caller sees how far each row
        moved in the returned report.
        """
        before = self.with_options(check_convex=False).check_convex_order()
        w = np.array(self.weights)
        moved = np.zeros(self.n_dates)
        grid = self.grid
        m = grid.size
        payoff = call_matrix(grid, grid)  # (K=M, M)
        mean = self.mean
        for t in range(1, self.n_dates):
            target = payoff @ w[t - 1]
            if np.all(payoff @ w[t] - target >= -1e-15 * max(1.0, abs(mean))):
                continue
            # variables: nu (M), d (M) with d >= |nu - w_t|; minimise sum d
            eye = sparse.identity(m, format="csr")
            a_ub = sparse.vstack([
                sparse.hstack([eye, -eye]),             # nu - d <= w_t
                sparse.hstack([-eye, -eye]),            # -nu - d <= -w_t
                sparse.hstack([-sparse.csr_matrix(payoff), sparse.csr_matrix((m, m))]),
            ]).tocsr()
            b_ub = np.concatenate([w[t], -w[t], -target])
            a_eq = sparse.csr_matrix(np.vstack([
                np.concatenate([np.ones(m), np.zeros(m)]),
                np.concatenate([grid, np.zeros(m)]),
            ]))
            b_eq = np.array([1.0, mean])
            c = np.concatenate([np.zeros(m), np.ones(m)])
            res = optimize.linprog(c, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=b_eq,
                                   bounds=[(0, None)] * (2 * m), method="highs")
            if res.status != 0:
                raise ValueError(
                    f"repair_convex_order: no law above marginals[{t - 1}] with mean {mean:.6g} "
                    f"exists on this grid (HiGHS: {res.message})"
                )
            nu = np.maximum(res.x[:m], 0.0)
            nu /= nu.sum()
            moved[t] = float(np.abs(nu - w[t]).sum())
            w[t] = nu
        repaired = Marginals(
            grid, w, self.times, sum_tol=max(self.sum_tol, 1e-9), mean_tol=max(self.mean_tol, 1e-9),
            convex_tol=max(self.convex_tol, 1e-9), check_convex=self.check_convex,
        )
        after = repaired.with_options(check_convex=False).check_convex_order()
        return repaired, RepairReport(moved, before, after)

    # ------------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``.npz`` with keys ``grid``, ``marginals`` (N+1, M) and ``times`` atomically.

        A path that cannot be written (a missing folder under a read-only one, a parent that is
        a file, a folder) is a ``ValueError`` naming it, before anything is written
        (``deepquant.atomic.ensure_writable``)."""
        path = ensure_writable(path)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, grid=self.grid, marginals=self.weights, times=self.times)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], **options) -> Marginals:
        """Read a file written by ``save`` (keys ``grid``, ``marginals``, optional ``times``)."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"marginals file {str(path)!r} does not exist")
        if path.is_dir():
            raise ValueError(f"marginals file {str(path)!r} is a folder")
        try:
            data = np.load(path, allow_pickle=False)
            if not isinstance(data, np.lib.npyio.NpzFile):   # a .npy (or text) file
                raise ValueError("it holds a single array (a .npy file), not the keys 'grid' "
                                 "and 'marginals' of a .npz")
            with data:
                keys = set(data.files)
                missing = {"grid", "marginals"} - keys
                if missing:
                    raise ValueError(
                        f"it lacks the key(s) {sorted(missing)}; found {sorted(keys)}")
                grid = data["grid"]
                weights = data["marginals"]
                times = data["times"] if "times" in keys else None
        except (OSError, EOFError, ValueError, zipfile.BadZipFile) as exc:
            # not a zip, truncated, a bad CRC, pickled data, or a .npy under a .npz name
            why = ("not a .npz (zip) archive" if "pickled" in str(exc) else str(exc))
            raise ValueError(f"{str(path)!r} is not a readable .npz file: {why}") from None
        return cls(grid, weights, times, **options)

    # ------------------------------------------------------------------ helpers
    def _date(self, date: int) -> int:
        if isinstance(date, bool) or not isinstance(date, Integral):
            raise ValueError(f"date index must be an integer, got {date!r}")
        d = int(date)
        if not -self.n_dates <= d < self.n_dates:
            raise ValueError(f"date index {date!r} out of range for {self.n_dates} dates")
        return d % self.n_dates

    def __repr__(self) -> str:
        return (f"Marginals(n_dates={self.n_dates}, size={self.size}, "
                f"grid=[{self.grid[0]:.4g}, {self.grid[-1]:.4g}], times={np.round(self.times, 4)})")


def _real_array(value, name: str) -> np.ndarray:
    """``value`` as a float64 copy; a ``ValueError`` naming ``name`` for complex or
    non-numeric input (numpy would drop an imaginary part silently)."""
    if np.iscomplexobj(value):
        raise ValueError(f"{name} must be real numbers, got a complex array "
                         f"(dtype {np.asarray(value).dtype})")
    try:
        return np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be an array of real numbers: {exc}") from None


def _strikes(strikes) -> np.ndarray:
    """``strikes`` as a 1-D float array; a ``ValueError`` for a NaN or infinite strike (the
    price would be NaN) or another shape than a number or a 1-D sequence."""
    k = np.atleast_1d(_real_array(strikes, "strikes"))
    if k.ndim != 1:
        raise ValueError(f"strikes must be a number or a 1-D sequence, got shape {k.shape}")
    if not np.isfinite(k).all():
        raise ValueError(f"strikes must be finite, got {strikes!r}")
    return k


def call_curve(grid: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Call prices C_t(x_j) = sum_l w_tl (x_l - x_j)^+ at the grid points, shape (N+1, M).

    Computed in O((N+1) M) by the piecewise-linear recursion C(x_{M-1}) = 0,
    C(x_j) = C(x_{j+1}) + (x_{j+1} - x_j) sum_{l > j} w_l: every term is non-negative, so the
    sum loses no precision (unlike the difference sum w x - x_j sum w).
    """
    w = np.atleast_2d(np.asarray(weights, dtype=float))
    x = np.asarray(grid, dtype=float)
    tail = np.cumsum(w[:, :0:-1], axis=1)[:, ::-1]          # (N+1, M-1): sum_{l > j} w_l
    steps = tail * np.diff(x)[None, :]                       # (x_{j+1} - x_j) sum_{l > j} w_l
    out = np.zeros(w.shape)
    out[:, :-1] = np.cumsum(steps[:, ::-1], axis=1)[:, ::-1]
    return out


def _interp_curve(grid: np.ndarray, curve: np.ndarray, means: np.ndarray, k: np.ndarray
                  ) -> np.ndarray:
    """Call prices at strikes ``k`` from the curve on the grid: linear inside the grid (exact),
    mean - k below it, 0 above it. Shape (N+1, K)."""
    j = np.clip(np.searchsorted(grid, k, side="right") - 1, 0, grid.size - 2)
    lam = np.clip((k - grid[j]) / (grid[j + 1] - grid[j]), 0.0, 1.0)
    out = (1.0 - lam)[None, :] * curve[:, j] + lam[None, :] * curve[:, j + 1]
    below = k < grid[0]
    if np.any(below):
        out[:, below] = means[:, None] - k[None, below]
    out[:, k > grid[-1]] = 0.0
    return out


def split_onto_grid(points: np.ndarray, mass: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Split point masses at ``points`` linearly onto the two neighbouring ``grid`` points.

    Mass and mean are preserved exactly for points inside [grid[0], grid[-1]]; points outside
    are rejected with a ``ValueError``. The result dominates the input in convex order.
    """
    points = np.asarray(points, dtype=float)
    mass = np.asarray(mass, dtype=float)
    grid = np.asarray(grid, dtype=float)
    live = mass > 0
    lo_bad = points[live] < grid[0] - 1e-12 * abs(grid[0])
    hi_bad = points[live] > grid[-1] + 1e-12 * abs(grid[-1])
    if np.any(lo_bad) or np.any(hi_bad):
        bad = points[live][lo_bad | hi_bad][0]
        raise ValueError(
            f"point {bad:.6g} carrying mass lies outside the grid [{grid[0]:.6g}, {grid[-1]:.6g}]"
        )
    p = np.clip(points, grid[0], grid[-1])
    j = np.clip(np.searchsorted(grid, p, side="right") - 1, 0, grid.size - 2)
    lam = (p - grid[j]) / (grid[j + 1] - grid[j])
    out = np.zeros(grid.size)
    np.add.at(out, j, mass * (1.0 - lam))
    np.add.at(out, j + 1, mass * lam)
    return out
