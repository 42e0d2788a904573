"""Common random numbers across time grids: one Brownian path drives every grid.

A Richardson extrapolation in the time step (``deepquant.rough.extrapolate``) needs the
DIFFERENCE of prices on grids with h and h/2. Run independently, that difference carries the
Monte Carlo error of both runs (measured: about 0.3% of the price at K = 100, as large as the
difference itself). Here the grids are coupled: the finest grid's driver increments are drawn
once (scrambled Sobol points, Brownian bridge, antithetic pairs, as for one run) and each
coarser grid takes

* dW and dW_perp on a coarse step = the sum of the two fine increments in it (exact), and
* the hybrid-scheme cell integral I^c = int_{t}^{t + 2 dt} (t + 2 dt - s)^a dW_s (a = H - 1/2)
  as its conditional law given the fine data of the two fine cells, (dW_1, I_1, dW_2, I_2):
  a linear combination beta . (dW_1, I_1, dW_2, I_2) plus an independent normal with the
  residual variance (Gaussian conditioning; the fine cells and I^c are integrals of one
  Brownian path, so their joint covariance is exact:
  Cov(I^c, dW_1) = ((2dt)^(a+1) - dt^(a+1)) / (a+1), Cov(I^c, dW_2) = dt^(a+1) / (a+1),
  Cov(I^c, I_2) = dt^(2a+1) / (2a+1), Cov(I^c, I_1) = dt^(2a+1) 2F1(-a, a+1; a+2; -1) / (a+1)).

So every coarse grid sees increments with EXACTLY the law of its own hybrid scheme (the
coarse run is unchanged in distribution, hence the extrapolated value is unchanged in
expectation), while the grids share one Brownian path. For H = 0.07 the residual is 0.05% of
Var(I^c): the coarse cell integral is almost a function of the fine data. The residual normals
come from a side stream of the batch seed (antithetic like the points). Repeated, the map
gives grids with 4x, 8x, ... the step.

``price_levels`` runs one ``BermudanPricer`` on several such grids (steps per period s, 2s,
4s, ...): the regression paths of all grids come from one draw (so the fitted policies differ
only by the discretisation), every pricing batch is one draw shared by all grids, and the
sub-simulation dual's inner paths are coupled the same way (``subsim_pathwise(inner_refine=)``).
The batch estimates of all grids are kept, so the covariance of the grids' prices (and the
standard error of any linear combination: a difference, a Richardson extrapolation) is
estimated from paired batches. ``share_fit=True`` fits the finest grid only and applies its
policy and martingales to the coarser grids (each bracket stays valid for its own grid).

What coupling buys is limited by the scheme's strong error (rate H): the grids' raw payoffs
correlate about 0.8 path by path, and after the martingale control variate, which removes the
part the grids share, their residuals correlate about 0.5. So a paired difference has about 0.8x
the standard error of an unpaired one, with each grid's own fit or one shared fit alike
(docs/benchmarks-rough.md, "The grid difference").
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.special import hyp2f1

from deepquant.payoffs import Payoff
from deepquant.results import result_dict
from deepquant.rough.qmc import RngLike, adaptive_mean, as_seed_sequence, driver_increments
from deepquant.rough.rbergomi import RoughBergomi, RoughPaths
from deepquant.rough.subsim import InnerShare

__all__ = ["coarsening_map", "coarsen_increments", "coupled_increments", "grids_of",
           "coupled_paths", "CoupledRun", "price_levels", "share_fit_donors"]

_SIDE_KEY = 0xC0A5E
"""spawn_key word of the side stream (residual normals) derived from a seed; far above the
number of children the engine ever spawns, so it collides with none of them."""


@lru_cache(maxsize=64)
def coarsening_map(H: float, dt: float) -> tuple[tuple[float, float, float, float], float]:
    """Coefficients beta of (dW_1, I_1, dW_2, I_2) and the residual standard deviation of the
    cell integral over two fine steps of length ``dt`` (module docstring).

    Exact Gaussian conditioning; for H = 1/2 (I = dW) the minimum-norm solution and residual 0.
    """
    a = H - 0.5
    c12 = dt ** (a + 1.0) / (a + 1.0)
    c22 = dt ** (2.0 * a + 1.0) / (2.0 * a + 1.0)
    fine = np.zeros((4, 4))
    fine[:2, :2] = fine[2:, 2:] = [[dt, c12], [c12, c22]]
    cross = np.array([((2.0 * dt) ** (a + 1.0) - dt ** (a + 1.0)) / (a + 1.0),
                      dt ** (2.0 * a + 1.0) * hyp2f1(-a, a + 1.0, a + 2.0, -1.0) / (a + 1.0),
                      c12, c22])
    beta = np.linalg.lstsq(fine, cross, rcond=1e-12)[0]
    var = (2.0 * dt) ** (2.0 * a + 1.0) / (2.0 * a + 1.0)
    resid = max(var - float(beta @ cross), 0.0)
    return tuple(float(b) for b in beta), math.sqrt(resid)


def _side_stream(seed: np.random.SeedSequence) -> np.random.Generator:
    """A generator derived from ``seed`` without spawning from it (its children are unchanged)."""
    return np.random.default_rng(np.random.SeedSequence(
        entropy=seed.entropy, spawn_key=(*seed.spawn_key, _SIDE_KEY)))


def _antithetic_normals(gen: np.random.Generator, shape: tuple, axis: int,
                        antithetic: bool) -> np.ndarray:
    """Standard normals of ``shape``; with ``antithetic`` the second half along ``axis`` is
    the negative of the first (as the driver points)."""
    if not antithetic:
        return gen.standard_normal(shape)
    half = list(shape)
    half[axis] //= 2
    z = gen.standard_normal(tuple(half))
    return np.concatenate([z, -z], axis=axis)


def coarsen_increments(model, dW: np.ndarray, dW_perp: np.ndarray, cell: np.ndarray,
                       dt: float, z: np.ndarray | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Increments of the grid with step 2 dt from those with step ``dt``.

    dW, dW_perp, cell : (..., n) fine increments and cell integrals (n even); z : (..., n/2)
    independent standard normals for the cell residual (None: zero, only for tests). Returns
    (dW, dW_perp, cell) of shape (..., n/2). Models without a Volterra cell (Heston) get
    cell = 0.
    """
    n = dW.shape[-1]
    if n % 2:
        raise ValueError(f"the fine grid must have an even number of steps, got {n}")
    if not isinstance(model, RoughBergomi):
        shape = dW.shape[:-1] + (n // 2, 2)
        w, wp = dW.reshape(shape), dW_perp.reshape(shape)
        dWc = w[..., 0] + w[..., 1]
        return dWc, wp[..., 0] + wp[..., 1], np.zeros_like(dWc)
    from deepquant.rough.kernels import coarsen_cells

    beta, sd = coarsening_map(float(model.H), float(dt))
    # pair sums; cell ((b0 dW_1 + b1 I_1) + b2 dW_2) + b3 I_2 + sd z, in one compiled pass
    return coarsen_cells(dW, dW_perp, cell, beta, sd, z if sd > 0 else None)


def coupled_increments(model, n_paths: int, steps: list[int], T: float, *,
                       method: str = "rqmc", antithetic: bool = True, bridge: bool = True,
                       rng: RngLike = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(dW, dW_perp, cell) for each grid in ``steps`` (total steps, each twice the previous),
    all from one draw on the finest grid (module docstring). The finest grid's increments are
    exactly those of ``model.simulate`` with the same ``rng``."""
    steps = [int(s) for s in steps]
    if any(b != 2 * a for a, b in zip(steps, steps[1:], strict=False)):
        raise ValueError(f"steps must each be twice the previous, got {steps}")
    seed = as_seed_sequence(rng)
    nf = steps[-1]
    dt = T / nf
    dW, dWp, z = driver_increments(n_paths, nf, dt, method=method, antithetic=antithetic,
                                   bridge=bridge, rng=seed)
    cell = (model.cell_from_normals(dW, z, dt) if isinstance(model, RoughBergomi)
            else np.zeros_like(dW))
    out = [(dW, dWp, cell)]
    side = _side_stream(seed)
    for _ in steps[:-1]:
        zr = _antithetic_normals(side, (n_paths, dW.shape[1] // 2), 0, antithetic)
        dW, dWp, cell = coarsen_increments(model, dW, dWp, cell, dt, zr)
        dt *= 2.0
        out.append((dW, dWp, cell))
    return out[::-1]


def grids_of(pricers: list) -> list[int]:
    """The distinct total step counts of ``pricers``, increasing; each must be twice the
    previous, and the pricers must share T and the sampling options."""
    grids = sorted({int(q.n_steps) for q in pricers})
    if any(b != 2 * a for a, b in zip(grids, grids[1:], strict=False)):
        raise ValueError(f"coupled grids must have total steps each twice the previous, got "
                         f"{grids}")
    first = pricers[0]
    for q in pricers[1:]:
        for name in ("T", "method", "antithetic", "bridge", "device", "dtype"):
            if getattr(q, name) != getattr(first, name):
                raise ValueError(f"coupled pricers must share {name}: {getattr(first, name)!r}"
                                 f" != {getattr(q, name)!r}")
    return grids


def coupled_paths(model, pricers: list, n_paths: int, rng: RngLike) -> list[RoughPaths]:
    """Paths for each pricer (its own grid; grids as in ``grids_of``) from one draw on the
    finest grid; pricers with the same grid get the same paths. The finest grid's paths equal
    ``pricer.simulate(model, n_paths, rng)``."""
    grids = grids_of(pricers)
    p = pricers[-1]
    incs = coupled_increments(model, n_paths, grids, p.T, method=p.method,
                              antithetic=p.antithetic, bridge=p.bridge, rng=rng)
    by_grid = {}
    for n, (dW, dWp, cell) in zip(grids, incs, strict=True):
        if isinstance(model, RoughBergomi):
            by_grid[n] = model.paths_from_increments(dW, dWp, cell, p.T, device=p.device,
                                                     dtype=p.dtype)
        else:
            by_grid[n] = model.paths_from_increments(dW, dWp, p.T)
    return [by_grid[int(q.n_steps)] for q in pricers]


def _fresh(seed: np.random.SeedSequence) -> np.random.SeedSequence:
    """A copy of ``seed`` that has spawned nothing yet (equal children for every grid)."""
    return np.random.SeedSequence(entropy=seed.entropy, spawn_key=seed.spawn_key)


@dataclass(frozen=True)
class CoupledRun:
    """One ``BermudanPricer`` on coupled grids (module docstring).

    steps : steps per exercise period of each level
    runs : a ``BermudanResult`` per level (its intervals from the shared batches)
    batches : (n_batches, n_levels, ``engine.BATCH_COLUMNS``) per-batch estimates (lower with
        control variate, upper, plain lower, gap, and the path-level variances of the batch
        means of the gap, the upper estimate and upper minus the plain lower) of every level
    cpu_seconds : process time of the whole run; cpu_by_grid : the part spent in each level
        (features, fits, sub-simulation), the shared simulation of the paths apart
    """

    steps: tuple
    runs: list
    batches: np.ndarray
    cpu_seconds: float
    cpu_by_grid: tuple = ()
    timings: dict = field(default_factory=dict)

    @property
    def n_batches(self) -> int:
        return int(self.batches.shape[0])

    def covariance(self, which: str = "midpoint") -> np.ndarray:
        """Covariance (n_grids, n_grids) of the grids' estimates ("midpoint", "lower",
        "upper"): the sample covariance of the paired batch estimates / n_batches."""
        from deepquant.rough.engine import lower_columns

        b = self.batches
        # each grid's lower estimate: with its control variate, or plain where it was dropped
        low = np.stack([b[:, i, lower_columns(r.control_variate)[0]]
                        for i, r in enumerate(self.runs)], axis=1)
        x = {"lower": low, "upper": b[:, :, 1], "midpoint": 0.5 * (low + b[:, :, 1])}[which]
        return np.atleast_2d(np.cov(x, rowvar=False, ddof=1)) / x.shape[0]

    def difference(self, which: str = "midpoint") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Differences of consecutive grids (finer - coarser), their paired standard errors
        and the standard errors the same runs would have if independent, each (n_grids - 1,)."""
        cov = self.covariance(which)
        vals = np.array([{"midpoint": r.value, "lower": r.lower, "upper": r.upper}[which]
                         for r in self.runs])
        var = np.diag(cov)
        paired = var[1:] + var[:-1] - 2.0 * np.diag(cov, 1)
        return (np.diff(vals), np.sqrt(np.maximum(paired, 0.0)),
                np.sqrt(var[1:] + var[:-1]))

    def to_dict(self) -> dict:
        return result_dict(self, skip=("batches",))


def share_fit_donors(pricers: list) -> list[int]:
    """For each level, the level whose fit it uses with ``share_fit``: the finest level with
    the same exercise dates. The two must differ in ``steps_per_date`` only and see the path at
    the same feature points (``feature_steps`` <= the coarser grid's steps per period), so
    that the policy, the martingales and the value function take the same features;
    ValueError otherwise."""
    from dataclasses import replace

    donors = []
    for q in pricers:
        k = max((i for i, p in enumerate(pricers) if p.n_dates == q.n_dates),
                key=lambda i: int(pricers[i].n_steps))
        d = pricers[k]
        if replace(q, steps_per_date=d.steps_per_date) != d:
            raise ValueError("share_fit: levels with the same exercise dates may differ only "
                             "in steps_per_date")
        if q.steps_per_date // q.feature_stride != d.steps_per_date // d.feature_stride:
            raise ValueError(f"share_fit needs features at the same points on every grid: "
                             f"feature_steps={q.feature_steps!r} must be <= the coarsest "
                             f"steps_per_date={q.steps_per_date}")
        donors.append(k)
    return donors


def price_levels(model, payoff: Payoff, pricers: list, *, rng: RngLike = None,
                 callback=None, share_fit: bool = False) -> CoupledRun:
    """Run each of ``pricers`` (one ``BermudanPricer`` per level: steps per period and/or
    exercise dates varied; total steps equal or doubling, see ``grids_of``) on coupled paths:
    one draw of regression paths for all levels, each pricing batch one draw shared by all
    levels, the sub-simulation's inner paths coupled across grids with the same exercise
    dates. The batches stop by the adaptive rule of ``pricers[-1]`` applied to the widest
    interval of any level. ``callback(result)`` once per level at the end. Seeds: ``rng``
    spawns (regression, validation, pricing) as one run does, so the finest grid sees the
    paths that a single run with the same seed would.

    ``share_fit``: fit only the finest level of each set of exercise dates and apply ITS
    policy, martingales and value function to the coarser grids (``share_fit_donors``). Each
    level's bracket still holds for its own discretised model (a stopping rule adapted to the
    coarse path gives a lower bound; the martingale basis is an exact martingale of every
    grid's scheme for any coefficients, and the sub-simulation dual is an upper bound for any
    value function), and the difference of two grids' lower bounds is then that of ONE
    stopping rule: the model's discretisation without the fits' differences. The coarser
    levels' fits (features of the regression paths, least squares) are not computed."""
    from deepquant.results import ConvergenceWarning
    from deepquant.rough.engine import BATCH_COLUMNS, exercise_payoff, monitored_half_width

    pricers = list(pricers)
    if not pricers:
        raise ValueError("pricers must not be empty")
    for q in pricers:
        q.check_model(model)
    payoff = exercise_payoff(payoff)
    payoffs = [q.prepare_payoff(payoff) for q in pricers]  # dates checked on each level
    grids = grids_of(pricers)
    levels = pricers
    donors = share_fit_donors(levels) if share_fit else list(range(len(levels)))
    ref = pricers[-1]
    # inner paths: drawn on the finest grid's step among the levels with the same dates
    refine = [max(int(q.n_steps) for q in pricers if q.n_dates == p.n_dates) // int(p.n_steps)
              for p in pricers]
    c0 = time.process_time()
    t0 = time.perf_counter()
    root = as_seed_sequence(rng)
    seed_reg, seed_val, seed_price = root.spawn(3)
    timings: dict = {"grids": grids}
    cpu = [0.0] * len(levels)
    n_reg = max(q.n_regression for q in pricers)
    reg = coupled_paths(model, levels, n_reg, seed_reg)
    timings["regression_paths"] = time.perf_counter() - t0
    val_cache: dict = {}

    def validation(i: int):
        def get():
            if not val_cache:
                n_val = max(ref.batch_size, n_reg // 4)
                val_cache.update(enumerate(coupled_paths(model, levels, n_val, seed_val)))
            return val_cache.pop(i)
        return get

    fits: list = [None] * len(levels)
    for i in sorted(range(len(levels)), key=lambda i: donors[i] != i):
        ci = time.process_time()
        if donors[i] == i:
            fits[i] = levels[i]._fit_paths(model, payoffs[i],
                                           _head(reg[i], levels[i].n_regression),
                                           validation(i), {})
        else:
            fits[i] = fits[donors[i]]
        reg[i] = None
        cpu[i] += time.process_time() - ci
    del reg
    val_cache.clear()
    t_price = time.perf_counter()

    # finest grids first: they hand their inner draws on to the coarser ones
    order = sorted(range(len(levels)), key=lambda i: -int(levels[i].n_steps))
    wanted = {(int(levels[i].steps_per_date) * refine[i], refine[i])
              for i in range(len(levels)) if refine[i] > 1}

    def batch(b: int, seed) -> np.ndarray:
        paths = coupled_paths(model, levels, ref.batch_size, seed)
        (inner,) = seed.spawn(1)
        share = InnerShare(wanted)
        out: list = [None] * len(levels)
        for i in order:
            ci = time.process_time()
            out[i] = levels[i]._batch_estimates(model, payoffs[i], fits[i], paths[i],
                                                _fresh(inner), inner_refine=refine[i],
                                                inner_share=share)
            paths[i] = None
            cpu[i] += time.process_time() - ci
        return np.concatenate(out)

    def monitor(h: np.ndarray) -> float:
        return max(monitored_half_width(x) for x in h.reshape(len(levels), BATCH_COLUMNS))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ad = adaptive_mean(batch, seed_price, min_batches=ref.min_batches,
                           max_batches=ref.max_batches, tol=ref.tol, patience=ref.patience,
                           min_improvement=ref.min_improvement, monitor=monitor)
    timings["pricing"] = time.perf_counter() - t_price
    L = len(levels)
    batches = ad.batches.reshape(ad.n_batches, L, BATCH_COLUMNS)
    wall = time.perf_counter() - t0
    cpu_total = time.process_time() - c0
    runs = []
    for i, lvl in enumerate(levels):
        res = lvl._result(model, payoffs[i], fits[i], ad,
                          slice(BATCH_COLUMNS * i, BATCH_COLUMNS * (i + 1)), seconds=wall,
                          cpu_seconds=cpu[i], timings=dict(timings))
        runs.append(res)
        if callback:
            callback(res)
    return CoupledRun(steps=tuple(int(q.steps_per_date) for q in pricers), runs=runs,
                      batches=batches, cpu_seconds=cpu_total, cpu_by_grid=tuple(cpu),
                      timings=timings)


def _head(paths: RoughPaths, n: int) -> RoughPaths:
    """The first n paths (a balanced RQMC subset: the first n/2 points and their antithetic
    partners when the draw has 2n' rows with partners in the second half)."""
    if paths.n_paths == n:
        return paths
    half = paths.n_paths // 2
    rows = np.concatenate([np.arange(n // 2), half + np.arange(n // 2)])
    return paths.take(rows)
