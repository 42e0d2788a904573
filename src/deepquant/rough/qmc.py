"""Randomness for the rough engine: scrambled Sobol points, Brownian bridge, antithetics, adaptive
stopping (DESIGN §4, seed 004 §4).

* ``gaussian_points``: (n, d) standard normals, either randomized QMC (Owen-scrambled Sobol from
  ``scipy.stats.qmc.Sobol`` mapped through the inverse normal CDF) or plain pseudo-random MC.
  With ``antithetic=True`` the second half of the rows is the negative of the first half
  (u -> 1 - u), so n must be even; for RQMC the number of Sobol points n/2 must be a power of 2.
* ``BrownianBridge``: maps d normals to d Brownian increments, filling the terminal value first
  and then midpoints breadth-first (Glasserman 2004, §3.1), so that the first Sobol coordinates
  carry the largest-variance directions.
* ``driver_increments``: the three noise arrays of the rough Bergomi scheme (dW, dW_perp, z).
  Sobol coordinates are assigned by importance: W and W_perp bridge coordinates interleaved
  first, the hybrid-scheme cell residuals z last.
* ``adaptive_mean``: i.i.d. batch estimates (each from an independent scramble) are added until
  the 95% t half-width reaches ``tol`` or has not improved on its best value by more than a
  relative ``min_improvement`` for ``patience`` consecutive batches (stagnation detection).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import stats
from scipy.stats import qmc

from deepquant.results import check_count, result_dict, warn_failure
from deepquant.seeds import RngLike, check_rng

__all__ = [
    "as_seed_sequence",
    "gaussian_points",
    "BrownianBridge",
    "driver_increments",
    "AdaptiveResult",
    "adaptive_mean",
    "t_interval",
    "variance_of_mean",
]

_EPS = 1e-12

SOBOL_MAX_DIM = 21201
"""Most dimensions of scipy's Sobol points (its direction numbers); a path of n steps takes
3 n (``driver_increments``)."""


def as_seed_sequence(rng: RngLike) -> np.random.SeedSequence:
    """A ``SeedSequence`` from an int, a Generator, a SeedSequence or None (fresh entropy)."""
    rng = check_rng(rng)
    if isinstance(rng, np.random.SeedSequence):
        return rng
    if isinstance(rng, np.random.Generator):
        return np.random.SeedSequence(rng.integers(0, 2**63 - 1, size=4).tolist())
    return np.random.SeedSequence(rng)


def gaussian_points(n: int, dim: int, *, method: str = "rqmc", antithetic: bool = True,
                    rng: RngLike = None) -> np.ndarray:
    """Standard normal points, shape (n, dim).

    ``method="rqmc"``: the first n/2 (antithetic) or n points of a freshly scrambled Sobol
    sequence (its own scramble from ``rng``), u clipped to [1e-12, 1 - 1e-12], then
    ``norm.ppf``. ``method="mc"``: ``Generator.standard_normal``.
    """
    if method not in ("rqmc", "mc"):
        raise ValueError(f"method must be 'rqmc' or 'mc', got {method!r}")
    if not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"n_paths must be an integer >= 2, got {n!r}")
    check_count(dim, "dim")
    if antithetic and n % 2:
        raise ValueError(f"n_paths must be even with antithetic pairs, got {n}")
    m = n // 2 if antithetic else n
    seed = as_seed_sequence(rng)
    if method == "rqmc":
        if m & (m - 1):
            raise ValueError(
                f"n_paths must be a power of 2 (times 2 with antithetics) for Sobol points, "
                f"got {n}"
            )
        if dim > SOBOL_MAX_DIM:
            raise ValueError(f"Sobol points support dim <= {SOBOL_MAX_DIM}, got {dim}")
        sobol = qmc.Sobol(dim, scramble=True, rng=np.random.default_rng(seed))
        u = sobol.random_base2(int(round(math.log2(m))))
        from deepquant.rough.kernels import clipped_normals

        z = clipped_normals(u, _EPS)  # ndtri(clip(u)) = norm.ppf without its checks, one pass
    else:
        z = np.random.default_rng(seed).standard_normal((m, dim))
    if antithetic:
        z = np.concatenate([z, -z], axis=0)
    return z


class BrownianBridge:
    """Brownian-bridge construction of increments on a uniform grid of ``n_steps`` steps.

    ``increments(z)`` maps z of shape (n_paths, n_steps) (column 0 = the most important
    coordinate) to increments of shape (n_paths, n_steps) with step ``dt``. The map is linear and
    orthogonal up to scaling, so i.i.d. N(0,1) input gives exact Brownian increments.
    """

    def __init__(self, n_steps: int, dt: float) -> None:
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1, got {n_steps}")
        self.n_steps = n_steps
        self.dt = dt
        # plan: (target, left, right, w_left, w_right, std) in construction order
        plan = [(n_steps, 0, -1, 0.0, 0.0, math.sqrt(n_steps * dt))]
        queue = [(0, n_steps)]
        while queue:
            nxt = []
            for lo, hi in queue:
                if hi - lo < 2:
                    continue
                mid = (lo + hi) // 2
                wl = (hi - mid) / (hi - lo)
                wr = (mid - lo) / (hi - lo)
                std = math.sqrt((mid - lo) * (hi - mid) / (hi - lo) * dt)
                plan.append((mid, lo, hi, wl, wr, std))
                nxt += [(lo, mid), (mid, hi)]
            queue = nxt
        self._plan = plan

    def increments(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=float)
        if z.shape[-1] != self.n_steps:
            raise ValueError(f"z must have {self.n_steps} columns, got shape {z.shape}")
        from deepquant.rough.kernels import bridge_increments

        # per path, in the plan's order: w_tgt = wl w_lo + wr w_hi + std z_col, then diff
        return bridge_increments(z, self._plan)


def driver_increments(n_paths: int, n_steps: int, dt: float, *, method: str = "rqmc",
                      antithetic: bool = True, bridge: bool = True, rng: RngLike = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Noise for the rough Bergomi scheme: (dW, dW_perp, z), each (n_paths, n_steps).

    dW and dW_perp are Brownian increments with step dt; z is i.i.d. N(0,1) for the cell
    residuals (see ``RoughBergomi.cell_from_normals``). Coordinates 0..2n-1 of each point are
    the W and W_perp coordinates interleaved (bridge order if ``bridge``), 2n..3n-1 are z.
    """
    check_count(n_steps, "n_steps")
    g = gaussian_points(n_paths, 3 * n_steps, method=method, antithetic=antithetic, rng=rng)
    zw, zp, z = g[:, 0 : 2 * n_steps : 2], g[:, 1 : 2 * n_steps : 2], g[:, 2 * n_steps :]
    if bridge:
        bb = BrownianBridge(n_steps, dt)
        return bb.increments(zw), bb.increments(zp), np.ascontiguousarray(z)
    s = math.sqrt(dt)
    return s * zw, s * zp, np.ascontiguousarray(z)


def t_interval(samples: np.ndarray, level: float = 0.95, axis: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, standard error and t half-width of ``samples`` along ``axis`` (n >= 2)."""
    samples = np.asarray(samples, dtype=float)
    n = samples.shape[axis]
    if n < 2:
        raise ValueError(f"need at least 2 samples for a t interval, got {n}")
    mean = samples.mean(axis=axis)
    se = samples.std(axis=axis, ddof=1) / math.sqrt(n)
    return mean, se, stats.t.ppf(0.5 + level / 2.0, n - 1) * se


def variance_of_mean(x: np.ndarray, *, antithetic: bool) -> np.ndarray:
    """Sample variance of the mean of ``x`` (n, ...) along axis 0 over its independent units:
    the antithetic pairs (row i with row n/2 + i, as ``gaussian_points`` draws them; their
    means) or the rows, s^2 / n_units with ddof = 1; shape x.shape[1:]; NaN with one unit.

    Unbiased for plain Monte Carlo; for one scramble of a Sobol batch it is the variance of as
    many independent points, not the scrambled net's own (which the spread of independent
    batches estimates, on only n_batches - 1 degrees of freedom): measured within a factor
    0.76-1.32 of it in standard errors for the engine's estimators
    (``rough.result.PATH_CROSSED_STDERRS``)."""
    x = np.asarray(x, dtype=float)
    n = x.shape[0]
    if antithetic:
        if n % 2:
            raise ValueError(f"antithetic pairs need an even number of rows, got {n}")
        x = 0.5 * (x[: n // 2] + x[n // 2 :])
    if x.shape[0] < 2:   # one unit (e.g. a batch of one antithetic pair): no estimate
        return np.full(x.shape[1:], np.nan)
    return x.var(axis=0, ddof=1) / x.shape[0]


@dataclass(frozen=True, eq=False)
class AdaptiveResult:
    """Result of ``adaptive_mean`` (the result protocol of ``deepquant.results``).

    mean, stderr, half_width : ndarray (k,)   over the batch estimates
    batches : ndarray (n_batches, k)          every batch estimate
    n_batches : int                            also ``nit``
    reason : str                               "tol", "patience" or "max_batches"; also ``status``
    history : list of float                    monitored half-width after each batch
    success : bool                             False only when a target ``tol`` > 0 was set and
                                               not reached
    message : str ; seconds : float            one line; wall time
    """

    mean: np.ndarray
    stderr: np.ndarray
    half_width: np.ndarray
    batches: np.ndarray
    n_batches: int
    reason: str
    history: list = field(default_factory=list)
    success: bool = True
    message: str = ""
    seconds: float = float("nan")

    @property
    def status(self) -> str:
        return self.reason

    @property
    def nit(self) -> int:
        return self.n_batches

    def to_dict(self) -> dict:
        """JSON-safe: every field but the per-batch estimates."""
        return result_dict(self, skip=("batches",))


def adaptive_mean(batch_fn: Callable[[int, np.random.SeedSequence], np.ndarray],
                  rng: RngLike = None, *, min_batches: int = 4, max_batches: int = 64,
                  tol: float = 0.0, patience: int = 3, min_improvement: float = 0.02,
                  monitor: Callable[[np.ndarray], float] | None = None,
                  callback: Callable[[int, float], None] | None = None) -> AdaptiveResult:
    """Average i.i.d. batch estimates until the confidence interval stops improving.

    ``batch_fn(b, seed)`` returns the estimates (k,) of batch b computed from its own seed
    (spawned from ``rng``). After each batch from ``min_batches`` on, the monitored half-width
    h = ``monitor(half_widths)`` (default: the largest) is compared with the best so far: stop
    if h <= tol, or if h > best * (1 - min_improvement) for ``patience`` consecutive batches,
    or at ``max_batches``. A target ``tol`` > 0 that is not reached gives ``success=False`` and a
    ``ConvergenceWarning``.
    """
    if min_batches < 2:
        raise ValueError(f"min_batches must be >= 2, got {min_batches}")
    if max_batches < min_batches:
        raise ValueError(f"max_batches must be >= min_batches={min_batches}, got {max_batches}")
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    if not 0.0 <= min_improvement < 1.0:
        raise ValueError(f"min_improvement must be in [0, 1), got {min_improvement}")
    monitor = monitor or (lambda h: float(np.max(h)))
    t0 = time.perf_counter()
    root = as_seed_sequence(rng)
    estimates: list[np.ndarray] = []
    history: list[float] = []
    best = math.inf
    stale = 0
    reason = "max_batches"
    for b in range(max_batches):
        (seed,) = root.spawn(1)
        estimates.append(np.atleast_1d(np.asarray(batch_fn(b, seed), dtype=float)))
        if len(estimates) < 2:
            if callback:
                callback(b + 1, math.inf)
            continue
        _, _, hw = t_interval(np.stack(estimates))
        h = monitor(hw)
        history.append(h)
        if callback:
            callback(b + 1, h)
        if len(estimates) < min_batches:
            best = min(best, h)
            continue
        if h <= tol:
            reason = "tol"
            break
        if h < best * (1.0 - min_improvement):
            best, stale = h, 0
        else:
            stale += 1
            if stale >= patience:
                reason = "patience"
                break
    arr = np.stack(estimates)
    mean, se, hw = t_interval(arr)
    success = not (tol > 0 and reason != "tol")
    message = (f"stopped on {reason} after {len(estimates)} batches, monitored 95% half-width "
               f"{history[-1] if history else math.inf:.3g}")
    if not success:
        message += f"; the target tol={tol:g} was not reached"
    out = AdaptiveResult(mean=mean, stderr=se, half_width=hw, batches=arr,
                         n_batches=len(estimates), reason=reason, history=history,
                         success=success, message=message, seconds=time.perf_counter() - t0)
    warn_failure(out, "adaptive_mean")
    return out
