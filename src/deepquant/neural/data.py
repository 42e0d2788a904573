"""Training data for the surrogate: synthetic marginals and their entropic MMOT potentials.

Instance i is fully determined by ``(seed, i)`` (``instance_spec``): a family (GBM, Merton,
Heston in turn), N in {2, 3, 5, 10, 20, 30, 50}, a maturity T in [0.1, 0.5] and the family's
parameters (DESIGN §3). ``solve_instance`` builds its marginals on the model grid
(``deepquant.market.synthetic``, exactly convex-ordered), solves the N one-period entropic
problems with c = 0 and the product reference (``deepquant.mmot.entropic.solve_entropic``) and
stores the potentials divided by eps, gauge-fixed (``gauge_fix``). With c = 0 the plan does not
depend on eps and the potentials scale linearly with it, so potentials in units of eps are
eps-free; eps is kept in the metadata.

Generation is resumable and crash-safe: finished instances are written every ``chunk`` results
to a new shard ``<out>.parts/part-*.h5`` through an atomic rename (a kill leaves whole shards
only); a rerun skips every index found in the shards or in ``out``; at the end the shards are
merged, deduplicated by index, into ``out`` (again atomically) and removed. The file layout,
reading, the shards' merge and validation live in ``deepquant.neural.dataset_io`` (its names stay
importable from here).
"""

from __future__ import annotations

import importlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FAMILIES", "ALL_FAMILIES", "N_CHOICES", "InstanceSpec", "instance_spec", "model_grid",
    "gauge_fix", "touching_mask", "allowed_np", "gibbs_kernels_np", "kernel_drift_np",
    "solve_instance", "generate_dataset", "marginal_records",
    # re-exported from deepquant.neural.dataset_io by __getattr__ (below)
    "FORMAT", "read_dataset", "validate_dataset", "ValidationReport", "write_instances",  # noqa: F822
    "check_writable_file",  # noqa: F822
]

FAMILIES = ("gbm", "merton", "heston")
"""The default families (the shipped checkpoint's training distribution), in turn by index."""
ALL_FAMILIES = FAMILIES + ("termvol", "svi", "chain", "spx", "rbergomi")
"""Every family ``instance_spec`` can draw, beyond the default three:

* ``termvol``: lognormal with a per-period forward volatility term structure (each period's vol
  uniform in [0.15, 0.35]; ``deepquant.neural.sweep.term_structure_marginals``);
* ``svi``: SSVI smiles (per-period ATM vol in [0.12, 0.35], rho in [-0.8, -0.1], eta in
  [0.5, 1.5], gamma in [0.3, 0.5]; ``deepquant.neural.families.svi_marginals``);
* ``chain``: the calibration of the synthetic chain of a Heston or Merton model with random
  parameters at N random expiries in [1 week, 1 year] (``families.chain_marginals``);
* ``spx``: a perturbed calibration of the SPX chain at N random expiries in [1 week, 1 year]
  (``families.spx_marginals``; needs ``$DEEPQUANT_SPX_DATA``);
* ``rbergomi``: rough Bergomi (H in [0.05, 0.2], eta in [1, 2.5], rho in [-0.95, -0.5], xi0 in
  [0.01, 0.09]) at N random dates in (0, T] on the simulation grid of max(128, N) steps, the
  last one T; 1024 RQMC paths, mixing estimator (``families.rbergomi_marginals``).

``support_scale=(lo, hi)`` (``deepquant generate --support-scale``) gives every family's
instances supports of random widths: s uniform in [lo, hi] is drawn last from the instance's
stream (the family's draws are unchanged) and the marginals become those of 1 + s (X_t - 1),
zero where the last row's weights are below 1e-12 (``families.scaled_marginals``).

For ``chain`` and ``spx`` N is capped at ``CHAIN_MAX_PERIODS`` (a calibration is one convex
program over all expiries) and the dates are the expiries' year fractions."""
CHAIN_FAMILIES = ("chain", "spx")
CHAIN_MAX_PERIODS = 10
N_CHOICES = (2, 3, 5, 10, 20, 30, 50)
RBERGOMI_STEPS = 128  # the rbergomi family's dates lie on max(RBERGOMI_STEPS, N) steps over T
H_CLIP = 1e7  # |h| (units of 1/eps) above this is a pinned / edge row: stored clipped, masked
V_CLIP = 1e7  # |v| above this marks a column the teacher excluded (no Gibbs mass)
LIVE_MASS = 1e-8  # rows with less mass are ignored by the "live" drift
PERIOD_TOL = 1e-6  # a period whose teacher residuals exceed this is not used for training


@dataclass(frozen=True)
class InstanceSpec:
    """One synthetic instance: family, number of periods N, maturity T (years), parameters."""

    index: int
    family: str
    n_periods: int
    maturity: float
    params: dict = field(default_factory=dict)

    @property
    def times(self) -> np.ndarray:
        """N+1 dates from 0 (today: X_0 = 1): t_k = k T / N, or the expiries of the ``chain``
        family (``params["days"]`` / 365), or ``params["dates"]`` (the ``rbergomi`` family).
        The ``spx`` family's dates are the expiries its builder draws; the stored records hold
        the built marginals' dates."""
        if "dates" in self.params:
            return np.concatenate([[0.0], np.asarray(self.params["dates"], float)])
        if "days" in self.params:
            return np.concatenate([[0.0], np.asarray(self.params["days"], float) / 365.0])
        return np.linspace(0.0, self.maturity, self.n_periods + 1)


def instance_spec(index: int, seed: int = 0, *, n_choices: Iterable[int] = N_CHOICES,
                  families: Sequence[str] = FAMILIES,
                  support_scale: tuple[float, float] | None = None) -> InstanceSpec:
    """The instance ``index`` of the dataset with seed ``seed`` (DESIGN §3 ranges): family
    ``families[index % len(families)]`` (the default keeps every existing data file's
    instances), then N, T and the family's parameters from the (seed, index) stream, then
    ``params["support_scale"]`` uniform in ``support_scale`` when given."""
    rng = np.random.default_rng([int(seed), int(index)])
    spec = _family_spec(rng, int(index), families[index % len(families)], n_choices)
    if support_scale is None:
        return spec
    lo, hi = _check_support_scale(support_scale)
    return InstanceSpec(spec.index, spec.family, spec.n_periods, spec.maturity,
                        {**spec.params, "support_scale": float(rng.uniform(lo, hi))})


def _check_support_scale(support_scale) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in support_scale)
    except (TypeError, ValueError):
        raise ValueError(f"support_scale must be a pair (lo, hi), got {support_scale!r}") \
            from None
    if not (np.isfinite(hi) and 0 < lo <= hi):
        raise ValueError(f"support_scale must be (lo, hi) with 0 < lo <= hi, got "
                         f"{support_scale!r}")
    return lo, hi


def _family_spec(rng: np.random.Generator, index: int, family: str,
                 n_choices: Iterable[int]) -> InstanceSpec:
    """N, T and the parameters of ``family`` from ``rng`` (``instance_spec``)."""
    n = int(rng.choice(np.asarray(tuple(n_choices))))
    maturity = float(rng.uniform(0.1, 0.5))
    if family in CHAIN_FAMILIES:
        n = max(2, min(n, CHAIN_MAX_PERIODS))
        params: dict = {"seed": int(rng.integers(2 ** 31))}
        if family == "chain":
            days = np.sort(rng.choice(np.arange(7, 366), size=n, replace=False))
            maturity = float(days[-1] / 365.0)
            params["days"] = [int(d) for d in days]
            model = str(rng.choice(["heston", "merton"]))
            params["model"] = model
            params["params"] = (
                {"v0": float(rng.uniform(0.01, 0.09)), "theta": float(rng.uniform(0.01, 0.09)),
                 "kappa": float(rng.uniform(0.5, 4.0)), "sigma_v": float(rng.uniform(0.2, 0.8)),
                 "rho": float(rng.uniform(-0.9, -0.2))} if model == "heston" else
                {"sigma": float(rng.uniform(0.1, 0.3)),
                 "jump_intensity": float(rng.uniform(0.5, 5.0)),
                 "jump_mean": float(rng.uniform(-0.2, 0.0)),
                 "jump_std": float(rng.uniform(0.05, 0.2))})
        return InstanceSpec(int(index), family, n, maturity, params)
    if family == "svi":
        params = {"vols": [float(x) for x in rng.uniform(0.12, 0.35, n)],
                  "rho": float(rng.uniform(-0.8, -0.1)), "eta": float(rng.uniform(0.5, 1.5)),
                  "gamma": float(rng.uniform(0.3, 0.5))}
    elif family == "rbergomi":
        steps = max(RBERGOMI_STEPS, n)
        k = np.append(np.sort(rng.choice(np.arange(1, steps), size=n - 1, replace=False)), steps)
        params = {"dates": [float(maturity * j / steps) for j in k], "n_steps": steps,
                  "H": float(rng.uniform(0.05, 0.2)), "eta": float(rng.uniform(1.0, 2.5)),
                  "rho": float(rng.uniform(-0.95, -0.5)), "xi0": float(rng.uniform(0.01, 0.09)),
                  "seed": int(rng.integers(2 ** 31))}
    elif family == "termvol":
        params = {"vols": [float(x) for x in rng.uniform(0.15, 0.35, n)]}
    elif family == "gbm":
        params = {"sigma": float(rng.uniform(0.15, 0.35))}
    elif family == "merton":
        params = {"sigma": float(rng.uniform(0.15, 0.35)), "jump_intensity": 5.0, "jump_mean": -0.1,
                  "jump_std": 0.1}
    else:
        params = {"v0": float(rng.uniform(0.02, 0.09)), "kappa": 2.0, "theta": 0.04,
                  "sigma_v": 0.3, "rho": float(rng.uniform(-0.7, 0.0))}
    return InstanceSpec(int(index), family, n, maturity, params)


def model_grid(grid_size: int = 150, lo: float = 0.5, hi: float = 2.0) -> np.ndarray:
    """The model's moneyness grid: uniform, step (hi - lo) / (grid_size - 1), with 1 exactly on
    the grid (the default grid of ``deepquant.market.synthetic`` for a narrow law)."""
    if int(grid_size) != grid_size or grid_size < 3:
        raise ValueError(f"grid_size must be an integer >= 3, got {grid_size!r}")
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 < lo < 1 < hi):
        raise ValueError(f"grid range must satisfy 0 < lo < 1 < hi, got ({lo!r}, {hi!r})")
    step = (hi - lo) / (grid_size - 1)
    i_one = int(round((1.0 - lo) / step))
    return 1.0 + step * (np.arange(grid_size) - i_one)


# ----------------------------------------------------------------------------- potentials
def gauge_fix(v: np.ndarray, h: np.ndarray, w_to: np.ndarray, grid: np.ndarray):
    """Fix the gauge v -> v + a + b (y - 1), h -> h - b of each period.

    Chooses (a, b) so that v has zero mean and zero slope in the mu_{t+1}-weighted least-squares
    sense; v is set to 0 where mu_{t+1} = 0 (it is irrelevant there). Shapes (N, M).
    """
    v = np.array(v, dtype=np.float64)
    h = np.array(h, dtype=np.float64)
    y = grid - 1.0
    for t in range(v.shape[0]):
        nu = w_to[t]
        s = (nu > 0) & np.isfinite(v[t])
        if not s.any():
            continue
        A = np.stack((np.ones(s.sum()), y[s]), axis=1) * np.sqrt(nu[s])[:, None]
        coef, *_ = np.linalg.lstsq(A, v[t, s] * np.sqrt(nu[s]), rcond=None)
        a, b = coef
        v[t] = np.where(s, v[t] - a - b * y, 0.0)
        h[t] = h[t] + b
    return v, h


def touching_mask(weights: np.ndarray, grid: np.ndarray, *, tol: float = 1e-13) -> np.ndarray:
    """Touching points of each period, (N, M) bool: C_{t+1}(k) - C_t(k) <= tol * max(1, |grid|)
    (the entropic solver's rule, ``deepquant.mmot.entropic.touching_points``)."""
    from deepquant.mmot.entropic import touching_points

    scale = max(1.0, float(np.max(np.abs(grid))))
    return touching_points(weights[:-1], weights[1:], grid, tol=tol * scale)


def allowed_np(touch: np.ndarray) -> np.ndarray:
    """numpy twin of ``deepquant.neural.losses.allowed_entries``: (N, M) -> (N, M, M)."""
    m = touch.shape[-1]
    cs = np.cumsum(touch, axis=-1)
    idx = np.arange(m)
    lo = np.minimum(idx[:, None], idx[None, :])
    hi = np.maximum(idx[:, None], idx[None, :])
    cross = np.where(hi > lo, cs[..., np.maximum(hi - 1, 0)] - cs[..., lo], 0)
    pinned = touch[..., :, None] & ~np.eye(m, dtype=bool)
    return (cross == 0) & ~pinned


def gibbs_kernels_np(v: np.ndarray, h: np.ndarray, weights: np.ndarray, grid: np.ndarray,
                     touch: np.ndarray | None = None) -> np.ndarray:
    """Row-normalised Gibbs kernels K_t(y|x) ∝ mu_{t+1}(y) exp(v_t(y) + h_t(x)(y - x)),
    shape (N, M, M), from potentials in units of eps (numpy reference of the loss); entries
    crossing a touching point (``touch`` (N, M)) are zero, rows with no allowed entry stay put."""
    w_to = weights[1:]
    with np.errstate(divide="ignore"):
        log_nu = np.where(w_to > 0, np.log(np.where(w_to > 0, w_to, 1.0)), -np.inf)
    logits = h[:, :, None] * (grid[None, None, :] - grid[None, :, None]) + v[:, None, :]
    logits = logits + log_nu[:, None, :]
    if touch is not None:
        logits = np.where(allowed_np(touch), logits, -np.inf)
    empty = np.isinf(logits).all(axis=-1, keepdims=True)
    logits = np.where(empty & np.eye(grid.size, dtype=bool), 0.0, logits)
    logits -= logits.max(axis=-1, keepdims=True)
    k = np.exp(logits)
    return k / k.sum(axis=-1, keepdims=True)


def kernel_drift_np(kernels: np.ndarray, weights: np.ndarray, grid: np.ndarray,
                    *, mass_floor: float = 0.0) -> tuple[float, float]:
    """(max drift, marginal L1 error) of kernels (N, M, M) started from the marginals.

    Drift is max over t and x with mu_t(x) > mass_floor of |sum_y K(y|x) (y - x)|; the marginal
    error is max_t ||mu_t K_t - mu_{t+1}||_1.
    """
    delta = kernels @ grid - grid[None, :]
    live = weights[:-1] > mass_floor
    drift = float(np.abs(np.where(live, delta, 0.0)).max())
    cols = np.einsum("tx,txy->ty", weights[:-1], kernels)
    merr = float(np.abs(cols - weights[1:]).sum(axis=1).max())
    return drift, merr


# ----------------------------------------------------------------------------- teacher
def build_marginals(spec: InstanceSpec, grid: np.ndarray):
    """The marginals of ``spec`` on ``grid``, of supports scaled by ``params["support_scale"]``
    where it is set (``families.scaled_marginals``)."""
    if "support_scale" in spec.params:
        from dataclasses import replace

        from deepquant.neural.families import scaled_marginals

        params = dict(spec.params)
        scale = params.pop("support_scale")
        return scaled_marginals(_family_marginals(replace(spec, params=params), grid), scale)
    return _family_marginals(spec, grid)


def _family_marginals(spec: InstanceSpec, grid: np.ndarray):
    if spec.family == "termvol":
        from deepquant.neural.sweep import term_structure_marginals

        return term_structure_marginals(spec.times, spec.params["vols"], grid)
    if spec.family == "svi":
        from deepquant.neural.families import svi_marginals

        p = spec.params
        return svi_marginals(spec.times, p["vols"], grid, rho=p["rho"], eta=p["eta"],
                             gamma=p["gamma"])
    if spec.family == "chain":
        from deepquant.neural.families import chain_marginals

        p = spec.params
        return chain_marginals(p["days"], grid, model=p["model"], params=p["params"],
                               seed=p["seed"])
    if spec.family == "spx":
        from deepquant.neural.families import spx_marginals

        return spx_marginals(spec.n_periods, grid, rng=spec.params["seed"])
    if spec.family == "rbergomi":
        from deepquant.neural.families import rbergomi_marginals

        p = spec.params
        return rbergomi_marginals(spec.times, grid, H=p["H"], eta=p["eta"], rho=p["rho"],
                                  xi0=p["xi0"], n_steps=p["n_steps"], rng=p["seed"])
    from deepquant.market.synthetic import synthetic_marginals

    return synthetic_marginals(spec.family, spec.times, grid=grid, **spec.params)


def solve_instance(task: tuple) -> dict[str, Any]:
    """Worker: ``(spec, grid, eps, tol)`` -> one instance's record (module-level, picklable)."""
    spec, grid, eps, tol = task
    from deepquant.mmot.entropic import solve_entropic

    t0 = time.perf_counter()
    marg = build_marginals(spec, grid)
    weights = np.asarray(marg.weights, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = solve_entropic(marg, eps, tol=tol)
    v = np.asarray(res.v, dtype=np.float64) / eps
    h = np.asarray(res.h, dtype=np.float64) / eps
    mu = weights[:-1]
    live = (mu > LIVE_MASS) & ~np.asarray(res.pinned, dtype=bool)
    delta = np.abs(res.kernels @ grid - grid[None, :])
    period_drift = np.where(live, delta, 0.0).max(axis=1)
    drift_live = float(period_drift.max())
    return _record(spec, grid, weights, v, h, times=marg.times,
                   pinned=np.asarray(res.pinned, dtype=bool),
                   period_ok=(period_drift <= PERIOD_TOL)
                   & (np.asarray(res.marginal_errors) <= PERIOD_TOL),
                   marginal_error=float(res.marginal_error), drift=float(res.drift),
                   drift_live=drift_live, nit=int(res.nit), success=bool(res.success),
                   seconds=time.perf_counter() - t0)


def _record(spec: InstanceSpec, grid, weights, v, h, times=None, pinned=None, period_ok=None,
            **meta) -> dict[str, Any]:
    """Clean and gauge-fix the teacher's potentials (units of eps) into a stored record.

    Columns where the teacher's v is not finite or above ``V_CLIP`` in size are columns the
    teacher excluded (no Gibbs mass; their mu_{t+1} mass is negligible): v = 0 there, not
    distilled. Rows that are pinned, massless or with |h| >= H_CLIP are not distilled in h.
    """
    w_to = weights[1:]
    v_ok = np.isfinite(v) & (np.abs(v) < V_CLIP) & (w_to > 0)
    h_valid = np.isfinite(h) & (np.abs(h) < H_CLIP) & (weights[:-1] > 0)
    if pinned is not None:
        h_valid &= ~pinned
    h = np.where(np.isfinite(h), np.clip(h, -H_CLIP, H_CLIP), 0.0)
    v = np.where(v_ok, v, np.nan)
    v, h = gauge_fix(v, h, np.where(v_ok, w_to, 0.0), grid)
    v = np.where(v_ok, v, 0.0)
    h = np.where(weights[:-1] > 0, h, 0.0)
    times = spec.times if times is None else np.asarray(times, dtype=np.float64)
    return {"index": spec.index, "family": spec.family, "n_periods": spec.n_periods,
            "maturity": float(times[-1]), "params": json.dumps(spec.params, sort_keys=True),
            "times": times, "weights": weights, "v": v,
            "h": h, "h_valid": h_valid, "v_valid": v_ok,
            "period_ok": (np.ones(v.shape[0], bool) if period_ok is None
                          else np.asarray(period_ok, bool)), **meta}


def marginal_records(num: int, seed: int, grid: np.ndarray, *, progress=None) -> list[dict]:
    """Teacher-free records of instances 0..num-1 of ``seed``: the marginals only (a few ms an
    instance), for the dual-gap loss; potentials are zero and masked (``labelled`` False).
    ``progress(done, total)`` is called every 500 instances."""
    out = []
    for i in range(num):
        spec = instance_spec(i, seed)
        marg = build_marginals(spec, grid)
        w = np.array(marg.weights, dtype=np.float64)
        n, m = spec.n_periods, grid.size
        out.append({"index": i, "family": spec.family, "n_periods": n,
                    "maturity": spec.maturity, "params": json.dumps(spec.params, sort_keys=True),
                    "times": marg.times if marg.times is not None else spec.times,
                    "weights": w, "v": np.zeros((n, m)),
                    "h": np.zeros((n, m)), "h_valid": np.zeros((n, m), bool),
                    "v_valid": np.zeros((n, m), bool), "period_ok": np.ones(n, bool),
                    "labelled": False})
        if progress is not None and ((i + 1) % 500 == 0 or i + 1 == num):
            progress(i + 1, num)
    return out




def generate_dataset(out: str | os.PathLike[str], num: int, *, seed: int = 0, eps: float = 1e-2,
                     tol: float = 1e-9, grid: np.ndarray | None = None, backend: str = "local",
                     workers: int = 0, chunk: int = 16,
                     worker: Callable[[tuple], dict] | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     n_choices: Iterable[int] = N_CHOICES,
                     families: Sequence[str] = FAMILIES,
                     support_scale: tuple[float, float] | None = None) -> dict[str, Any]:
    """Generate (or resume) instances ``0..num-1`` into ``out``; returns a summary dict.

    ``n_choices``: the numbers of periods N drawn (any N >= 1; the network takes
    N + 1 <= ``ModelConfig.max_dates`` = 64 dates, so N <= 63 for the shipped model).
    ``support_scale``: supports of random widths (``instance_spec``).

    ``worker`` maps ``(spec, grid, eps, tol)`` to a record (default ``solve_instance``; tests
    pass a fake). ``progress(done, total)`` is called after each finished instance.
    """
    from deepquant import __version__
    from deepquant.neural.dataset_io import (
        _check_resume,
        _done_indices,
        _parts_dir,
        check_writable_file,
        merge_parts,
        write_instances,
    )
    from deepquant.parallel import get_executor

    out = Path(out)
    from deepquant.results import check_count

    check_count(num, "num")
    n_choices = _check_n_choices(n_choices)
    families = tuple(families)
    if not families or any(f not in ALL_FAMILIES for f in families):
        raise ValueError(f"families must be a non-empty sequence of {ALL_FAMILIES}, got "
                         f"{families!r}")
    if support_scale is not None:
        support_scale = _check_support_scale(support_scale)
    for name, val in (("eps", eps), ("tol", tol)):
        if not (isinstance(val, (int, float)) and np.isfinite(val) and val > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {val!r}")
    grid = model_grid() if grid is None else np.asarray(grid, dtype=np.float64)
    worker = solve_instance if worker is None else worker
    attrs = {"eps": float(eps), "tol": float(tol), "seed": int(seed),
             "grid_size": int(len(grid)), "version": __version__,
             "n_choices": ",".join(str(n) for n in n_choices),
             "families": ",".join(families),
             "support_scale": ("" if support_scale is None
                               else ",".join(f"{x:g}" for x in support_scale)),
             "potential_units": "eps (potentials divided by eps, gauge-fixed)"}
    parts = _parts_dir(out)
    check_writable_file(out, "output file")
    for src in ([out] if out.exists() else []) + (sorted(parts.glob("part-*.h5"))[:1]
                                                  if parts.is_dir() else []):
        _check_resume(src, grid, attrs)
    done = _done_indices(out)
    t0 = time.perf_counter()
    n_done = sum(1 for i in done if 0 <= i < num)
    n_new = num - n_done
    if progress:
        progress(n_done, num)
    if n_new:
        parts.mkdir(parents=True, exist_ok=True)
        # lazily: the executors take an iterator, and a list of every task would hang a
        # large --num before the first instance (10^11 indices)
        tasks = ((instance_spec(i, seed, n_choices=n_choices, families=families,
                                support_scale=support_scale), grid, eps, tol)
                 for i in range(num) if i not in done)
        ex = get_executor(backend, n_workers=workers) if backend != "serial" else \
            get_executor("serial")
        buf: list[dict] = []

        def flush() -> None:
            if buf:
                name = f"part-{min(r['index'] for r in buf):07d}-{os.getpid()}-{time.time_ns()}.h5"
                write_instances(parts / name, buf, grid=grid, attrs=attrs)
                buf.clear()

        try:
            for _, rec in ex.as_completed(worker, tasks):
                buf.append(rec)
                n_done += 1
                if progress:
                    progress(n_done, num)
                if len(buf) >= chunk:
                    flush()
        finally:
            flush()
    merged = merge_parts(out, grid=grid, attrs=attrs)
    return {"out": str(out), "instances": merged, "new": n_new,
            "seconds": time.perf_counter() - t0}


def _check_n_choices(n_choices: Iterable[int]) -> tuple[int, ...]:
    try:
        vals = tuple(n_choices)
    except TypeError:
        raise ValueError(f"n_choices must be a sequence of integers >= 1, got {n_choices!r}") \
            from None
    if not vals or any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1
                       for n in vals):
        raise ValueError(f"n_choices must be a non-empty sequence of integers >= 1, "
                         f"got {n_choices!r}")
    return tuple(int(n) for n in vals)


# names that moved out of this module, still importable from here (lazily: ``dataset_io``
# imports this module, and ``dataset`` imports torch)
_MOVED = {
    "NeuralDataset": "dataset", "check_finite_records": "dataset",
    "FORMAT": "dataset_io", "write_instances": "dataset_io", "read_dataset": "dataset_io",
    "check_writable_file": "dataset_io", "merge_parts": "dataset_io",
    "ValidationReport": "dataset_io", "validate_dataset": "dataset_io",
}


def __getattr__(name: str):
    if name in _MOVED:
        return getattr(importlib.import_module(f"deepquant.neural.{_MOVED[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
