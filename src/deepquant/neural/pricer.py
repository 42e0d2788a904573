"""Inference: pure-neural calibrated martingale models, with a classical fallback.

``NeuralPricer(checkpoint=None)`` loads a checkpoint (``None``: the one shipped in
``deepquant/neural/checkpoints``). ``solve(marginals)`` predicts the gauge-fixed potentials
(v_t, h_t) of the N one-period problems (units of eps, c = 0, product reference) in one forward
pass and turns them into the Gibbs kernels

    K_t(y | x) = mu_{t+1}(y) exp(v_t(y) + h_t(x)(y - x)) / Z_t(x)       (DESIGN §2.1)

of a Markov chain started from mu_0, with the entries that cross a touching point of the
marginals' call curves removed (a property of the inputs, as in the classical solver).

By default (``project=True``) the network's column potentials v_t are kept and the row
multipliers h_t(x) are re-solved exactly, row by row (``deepquant.mmot.projection.
project_periods``, the compiled batched counterpart of ``martingale_projection``: the
martingale "c-transform", a safeguarded 1-D Newton per row started from the network's h, no
iteration on v; every instance of a batch in one call). The kernels are then exact martingale transitions
(drift <= 1e-13) with exact row sums; only the column marginals carry the network's error.
Columns whose target weight is below the checkpoint's training mass floor get no mass (the
network's v is untrained there), and periods that start from a point mass use the exact v = 0
(``deepquant.neural.model.point_mass_exact``). Measured on fresh instances the ATM Asian price
error is ~18% mean with the raw Gibbs kernels of the predicted (v, h) (``project=False``) and
0.08-0.19% per family with the projection and the shipped, refit checkpoint
(docs/benchmarks-neural.md): the price of a path-dependent payoff is far more sensitive to the
drift than to the column error. The result
prices any payoff of ``deepquant.payoffs`` by the exact forward recursion on the augmented chain
(``deepquant.mmot.augment``), like the classical calibrated model, and reports the kernels'
measured drift and marginal error (and the raw network's, ``neural_drift``): pure-neural kernels
do not reproduce the marginals exactly.

There is no hybrid mode: the classical Newton solver warm-started from the network's
potentials (``deepquant.mmot.entropic.newton_polish``) measured a median 1.31x the cold
classical solve to the same tolerance on 30 fresh instances (GBM 2.0x, Merton 0.96x, Heston
1.41x; ``benchmarks/neural_hybrid.py``, docs/benchmarks-neural.md), against a 0.5x bar, and was
removed. For solver accuracy calibrate classically (``deepquant.mmot.CalibratedModel.
calibrate``). Out-of-distribution guard: when the pure-neural drift (rows with mass above
``mass_floor``) exceeds ``ood_drift`` or the marginal error exceeds ``ood_marginal_error``, or the
marginals do not fit the model (too many dates, mass outside the model grid), the pricer falls
back to the cold classical solver and says so in ``mode`` / ``message``. Marginals on another
grid are moved onto the model grid by linear splitting (exact in mass and mean, preserves convex
order) with a ``NeuralGridWarning``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deepquant.market.marginals import Marginals
from deepquant.neural.threads import set_torch_threads
from deepquant.payoffs import check_payoff
from deepquant.results import check_count
from deepquant.seeds import as_generator

__all__ = ["NeuralPricer", "NeuralSolution", "NeuralGridWarning", "default_checkpoint",
           "guard_thresholds", "demo_prices"]

EPS = 1.0  # potentials are in units of eps; with c = 0 the plan does not depend on eps


class NeuralGridWarning(UserWarning):
    """Marginals were moved onto the model grid (or fell partly outside it)."""


_TRACE_MAX_BATCH = 1
"""Batches up to this size run through a per-shape TorchScript trace (``NeuralPricer._forward``)."""


def default_checkpoint() -> Path:
    """Folder of the checkpoint shipped with the package."""
    return Path(__file__).resolve().parent / "checkpoints"


@dataclass
class NeuralSolution:
    """A calibrated Markov martingale model from the neural (or fallback classical) solver.

    Attributes
    ----------
    marginals : Marginals
        The marginals on the model grid (after regridding, if any).
    kernels : ndarray, shape (N, M, M)
        Transition kernels P(X_{t+1} = y | X_t = x).
    v, h : ndarray, shape (N, M)
        Potentials in units of eps (the network's for ``mode="neural"``, the classical ones
        for ``"classical"``).
    mode : str
        ``"neural"`` or ``"classical"`` (out-of-distribution fallback).
    drift : float
        max_t max_{x: mu_t(x) > 0} |E[X_{t+1} - X_t | X_t = x]| of the kernels (DESIGN §2.1).
    drift_live : float
        The same over rows with mu_t(x) > mass_floor.
    marginal_error : float
        max_t ||mu_t K_t - mu_{t+1}||_1.
    neural_drift, neural_marginal_error : float
        The residuals of the raw Gibbs kernels of the network's (v, h) (before the projection
        or fallback); NaN with ``project`` unless ``raw_residuals``.
    projected : bool
        The row multipliers were re-solved exactly (``project=True``).
    success : bool
    message : str
    seconds, inference_seconds, polish_seconds : float
        Whole solve; forward pass + projection; the classical fallback solve (0 otherwise).
    nit : int
        Newton iterations of the classical fallback solve (0 for pure neural).
    """

    marginals: Marginals
    kernels: np.ndarray
    v: np.ndarray
    h: np.ndarray
    mode: str
    drift: float
    drift_live: float
    marginal_error: float
    neural_drift: float
    neural_marginal_error: float
    success: bool
    message: str
    seconds: float
    inference_seconds: float
    polish_seconds: float = 0.0
    nit: int = 0
    regridded: bool = False
    projected: bool = False
    classical: Any = field(default=None, repr=False)

    @property
    def grid(self) -> np.ndarray:
        return self.marginals.grid

    @property
    def fallback(self) -> bool:
        return self.mode == "classical"

    def price(self, payoff, *, threads: int = 1, **chain_options) -> float:
        """E[payoff] under the chain, by the exact forward recursion on the augmented state
        (``deepquant.mmot.model.price_batch``, on ``threads`` threads); undiscounted, in
        moneyness units. A neural solution (on the network's grid) is priced on the
        full-support chain, built once per payoff and number of dates and shared by every later
        model (``support="full"``)."""
        from deepquant.mmot.model import price_batch

        if self.kernels.ndim != 3:
            raise ValueError(f"cannot price: this solution has no kernels ({self.message}); use "
                             "NeuralPricer(fallback=True) for the classical solver instead")
        if self.mode == "neural":
            chain_options.setdefault("support", "full")
        return float(price_batch(self.marginals, self.kernels, payoff, threads=threads,
                                 **chain_options)[0])

    def sample(self, n_paths: int, rng=None) -> np.ndarray:
        """Paths (n_paths, N+1) of the chain on the grid."""
        from deepquant.mmot.model import check_n_paths

        n_paths = check_n_paths(n_paths)
        rng = as_generator(rng)
        grid, w = self.marginals.grid, self.marginals.weights
        idx = np.empty((n_paths, w.shape[0]), dtype=np.int64)
        idx[:, 0] = rng.choice(grid.size, size=n_paths, p=w[0] / w[0].sum())
        cum = np.cumsum(self.kernels, axis=2)
        for t in range(w.shape[0] - 1):
            c = cum[t, idx[:, t]]
            u = rng.random(n_paths)[:, None] * c[:, -1:]
            idx[:, t + 1] = np.minimum((c < u).sum(axis=1), grid.size - 1)
        return grid[idx]


def _measure(kernels, weights, grid, mass_floor):
    """(drift, live drift, marginal error), each (B,), of kernels (B, N, M, M) started from
    weights (B, N+1, M) (``NeuralSolution``'s definitions)."""
    delta = kernels @ grid - grid
    mu = weights[:, :-1]
    drift = np.abs(np.where(mu > 0, delta, 0.0)).max(axis=(1, 2))
    live = np.abs(np.where(mu > mass_floor, delta, 0.0)).max(axis=(1, 2))
    cols = (mu[..., None, :] @ kernels)[..., 0, :]                   # BLAS, not einsum's loop
    merr = np.abs(cols - weights[:, 1:]).sum(axis=2).max(axis=1)
    return drift, live, merr


OOD_DRIFT = 0.05
"""The out-of-distribution guard's drift threshold of checkpoints that record none."""

OOD_MARGINAL_ERROR = 0.025
"""The guard's marginal-error threshold of checkpoints that record none: the 99th percentile of
the shipped default's marginal L1 error on 300 fresh in-family instances."""


def guard_thresholds(meta: dict) -> dict[str, float]:
    """The out-of-distribution thresholds a checkpoint was fitted with (its config's ``guard``:
    ``ood_drift``, ``ood_marginal_error``), else ``OOD_DRIFT`` and ``OOD_MARGINAL_ERROR``.

    One rule for every checkpoint: the marginal-error threshold is the 99th percentile of its
    own marginal error on fresh instances of its training families, so that about 1% of them
    fall back (a checkpoint fine-tuned on broader inputs fits each of them less closely)."""
    guard = meta.get("guard") or {}
    return {"ood_drift": float(guard.get("ood_drift", OOD_DRIFT)),
            "ood_marginal_error": float(guard.get("ood_marginal_error", OOD_MARGINAL_ERROR))}


class NeuralPricer:
    """Pure-neural MMOT calibration from a trained checkpoint (see module doc).

    Parameters
    ----------
    checkpoint : path, optional
        Exported folder (``model.safetensors`` + ``config.json``), ``.safetensors`` file or
        training ``.pt``, or the name of a packaged one (``"broad"``:
        ``deepquant.neural.train.PACKAGED_CHECKPOINTS``); ``None`` loads the shipped default.
    threads : int, optional
        torch intra-op threads (``None`` leaves torch's setting). One suits single instances:
        on a busy 2-core machine two took 17 ms per solve, and 240 ms with ``OMP_NUM_THREADS=1``
        in the environment (OpenMP's waiting threads; 5-6 ms on one thread): a
        ``RuntimeWarning`` then (``deepquant.neural.threads``); at most
        ``threads.MAX_THREADS_PER_CORE`` per core.
    row_threads : int, optional
        Threads of the row projection (its rows in shares side by side; ``None``: ``threads``,
        or 1). On a busy machine more threads than free cores cost more than they save.
    ood_drift, ood_marginal_error : float, optional
        Out-of-distribution thresholds on the pure-neural residuals; ``None``: the checkpoint's
        own (``guard_thresholds``). The projected kernels'
        drift is ~1e-13, so the marginal error is the guard: the shipped default's 0.025 is the 99th
        percentile of the shipped checkpoint's marginal L1 error on 300 fresh in-family
        instances (1% of them fall back); across instances the marginal error and the Asian
        price error correlate at 0.89, and on 30 instances of a family the network never saw
        (per-period vol term structures) it sends 53% to the classical solver, leaving a mean
        Asian error of 0.50% on the rest instead of 1.10% (docs/benchmarks-neural.md).
    fallback : bool
        Fall back to the classical solver out of distribution (else only ``success=False``).
    tol : float
        Tolerance of the classical fallback solve.
    mass_floor : float
        Rows with less mass are ignored by ``drift_live`` and the OOD guard.
    project : bool
        Re-solve the row multipliers h exactly for the predicted v (see module doc); the OOD
        guard then reads the projected kernels' marginal error (their drift is ~1e-13).
    raw_residuals : bool
        With ``project``, also build the network-only Gibbs kernels to report their residuals
        (``neural_drift``, ``neural_marginal_error``; NaN otherwise): one more O(N M^2) kernel
        evaluation, about 40% of the pure-neural solve at N = 10.
    device : str
        Where the network runs: ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"`` or ``"auto"``;
        the projection and pricing run on the CPU (numba / BLAS) either way.
    column_floor : float, optional
        With ``project``, columns whose target weight is <= this receive no mass. Default: the
        checkpoint's training mass floor (``train.mass_floor``, 1e-10): the distillation never
        sees v there, and an untrained v on a column of weight 1e-20 pulled O(1) mass onto it
        (measured with the second-session checkpoint: mean ATM Asian error 3.2% -> 0.87%).
    """

    def __init__(self, checkpoint=None, *, threads: int | None = 1,
                 row_threads: int | None = None, ood_drift: float | None = None, ood_marginal_error: float | None = None, fallback: bool = True, tol: float = 1e-9,
                 mass_floor: float = 1e-8, project: bool = True,
                 raw_residuals: bool = False, column_floor: float | None = None,
                 device: str = "cpu") -> None:
        from deepquant.neural.model import resolve_device
        from deepquant.neural.train import load_model, resolve_checkpoint

        if not isinstance(fallback, bool | np.bool_):   # fallback="no" was truthy
            raise ValueError(f"fallback must be a bool, got {fallback!r}")
        for name, val in (("threads", threads), ("row_threads", row_threads)):
            check_count(val, name, allow_none=True)
        if threads is not None:
            set_torch_threads(threads)
        self.row_threads = int(row_threads or threads or 1)
        self.device = resolve_device(device)
        self.checkpoint = (resolve_checkpoint(checkpoint) if checkpoint is not None
                           else default_checkpoint())
        self.model, self.meta = load_model(self.checkpoint)
        self.model.to(self.device)
        grid64 = (self.meta.get("extra") or {}).get("grid")
        self.grid = (np.asarray(grid64, dtype=np.float64) if grid64 is not None
                     else self.model.grid.detach().double().cpu().numpy().copy())
        self.max_dates = int(getattr(self.model.cfg, "max_dates", 10 ** 9))
        own = guard_thresholds(self.meta)
        self.ood_drift = own["ood_drift"] if ood_drift is None else float(ood_drift)
        self.ood_marginal_error = (own["ood_marginal_error"] if ood_marginal_error is None
                                   else float(ood_marginal_error))
        for name, value in (("ood_drift", self.ood_drift),
                            ("ood_marginal_error", self.ood_marginal_error)):
            if not value > 0:  # NaN too; inf switches the guard off
                raise ValueError(f"{name} must be > 0 (inf: no guard), got {value!r}")
        for name, value, positive in (("tol", tol, True), ("mass_floor", mass_floor, False)):
            # a NaN mass floor leaves no row live: the guard's drift would read 0
            if (isinstance(value, bool) or not isinstance(value, int | float | np.floating)
                    or not np.isfinite(value) or value < 0 or (positive and value == 0)):
                raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}"
                                 f", got {value!r}")
        self.fallback, self.tol, self.mass_floor = bool(fallback), float(tol), float(mass_floor)
        if not isinstance(project, bool):
            raise ValueError(f"project must be a bool, got {project!r}")
        self.project = project
        self.raw_residuals = bool(raw_residuals)
        if column_floor is None:
            column_floor = float((self.meta.get("train") or {}).get("mass_floor", 1e-10))
        if not (np.isfinite(column_floor) and column_floor >= 0):
            raise ValueError(f"column_floor must be a finite number >= 0, got {column_floor!r}")
        self.column_floor = float(column_floor)
        self._traced: dict[tuple[int, ...], Any] = {}

    # ------------------------------------------------------------------ inputs
    def to_model_grid(self, marginals: Marginals) -> tuple[Marginals, bool, str]:
        """(marginals on the model grid, regridded?, problem or "").

        The network works in forward moneyness on its own grid. Marginals on another grid are
        moved onto it by linear splitting (exact in mass and mean, keeps convex order) with a
        ``NeuralGridWarning``. They are NOT moved, and the problem is returned instead (the
        solver then falls back to the classical solver on the marginals as given), when they
        are not in moneyness (mean off 1 by more than 1e-6), when mass above 1e-8 lies outside
        the model grid, or when the moved marginals fail validation.
        """
        if not isinstance(marginals, Marginals):
            raise TypeError(f"marginals must be a Marginals instance, got "
                            f"{type(marginals).__name__}")
        if (marginals.grid.shape == self.grid.shape      # |a - b| <= 1e-7 (allclose, 10x less)
                and np.max(np.abs(marginals.grid - self.grid), initial=0.0) <= 1e-7):
            return marginals, False, ""
        from deepquant.market.marginals import split_onto_grid

        lo, hi = self.grid[0], self.grid[-1]
        means = marginals.weights @ marginals.grid
        if np.max(np.abs(means - 1.0)) > 1e-6:
            return marginals, False, (
                f"marginals have mean {float(means[0]):.6g}, not 1: the network works in "
                "forward moneyness X = S / F (divide the grid by the forward)")
        outside = float(np.max([w[(marginals.grid < lo) | (marginals.grid > hi)].sum()
                                for w in marginals.weights]))
        if outside > 1e-8:
            return marginals, False, (
                f"mass {outside:.2e} outside the model grid [{lo:.4g}, {hi:.4g}] "
                f"(marginals on [{marginals.grid[0]:.4g}, {marginals.grid[-1]:.4g}])")
        pts = np.clip(marginals.grid, lo, hi)
        rows = np.vstack([split_onto_grid(pts, w, self.grid) for w in marginals.weights])
        rows /= rows.sum(axis=1, keepdims=True)
        try:
            new = Marginals(self.grid, rows, marginals.times, sum_tol=1e-6, mean_tol=1e-6,
                            convex_tol=1e-6)
        except ValueError as exc:
            return marginals, False, f"the marginals moved onto the model grid are invalid: {exc}"
        warnings.warn(
            f"marginals on a {marginals.size}-point grid [{marginals.grid[0]:.4g}, "
            f"{marginals.grid[-1]:.4g}] were moved onto the model's {self.grid.size}-point grid "
            f"[{lo:.4g}, {hi:.4g}] by linear splitting"
            + (f"; mass {outside:.2e} outside the model grid was clipped" if outside else ""),
            NeuralGridWarning, stacklevel=3)
        return new, True, ""

    # ------------------------------------------------------------------ network
    def predict(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Potentials (v, h), each (B, N, M) float64, for weights (B, N+1, M) on the model grid
        (one batched forward pass; all instances of a call must share N)."""
        import torch

        w = torch.as_tensor(np.array(weights, dtype=np.float32)).to(self.device)
        if w.ndim == 2:
            w = w[None]
        with torch.inference_mode():
            # batches run eagerly: a trace is specialised to one shape and costs ~0.5 s to
            # build, which only repeated single-instance calls amortise
            v, h = (self._forward(w) if w.shape[0] == 1 else self.model.eval())(w)
        return v.double().cpu().numpy(), h.double().cpu().numpy()

    def _forward(self, w):
        """The network for inputs shaped like ``w``: for small batches (latency), a TorchScript
        trace of it specialised to that shape and frozen (constants folded; about 1.6x less
        per-call overhead), cached per shape; for large batches the eager module."""
        import torch

        shape = tuple(w.shape)
        if shape[0] > _TRACE_MAX_BATCH:
            return self.model
        fn = self._traced.get(shape)
        if fn is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")          # TracerWarning: shape-specialised
                fn = torch.jit.freeze(torch.jit.trace(self.model.eval(), (w,),
                                                      check_trace=False))
            self._traced[shape] = fn
        return fn

    def kernels(self, weights: np.ndarray, v: np.ndarray, h: np.ndarray,
                grid: np.ndarray | None = None) -> np.ndarray:
        """Gibbs kernels (N, M, M) of potentials (N, M) for one instance (float64)."""
        from deepquant.neural.data import gibbs_kernels_np, touching_mask

        grid = self.grid if grid is None else grid
        return gibbs_kernels_np(v, h, weights, grid, touching_mask(weights, grid))

    # ------------------------------------------------------------------ solve
    def _classical(self, marg: Marginals):
        from deepquant.mmot.entropic import solve_entropic

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return solve_entropic(marg, EPS, tol=self.tol)

    def _prepare(self, marginals: Marginals) -> tuple[Marginals, bool, str]:
        if not isinstance(marginals, Marginals):
            raise TypeError(f"marginals must be a Marginals instance, got "
                            f"{type(marginals).__name__}")
        if marginals.n_dates < 2:
            raise ValueError(f"marginals must have at least 2 dates (one period) to calibrate a "
                             f"model, got {marginals.n_dates}")
        if marginals.n_dates > self.max_dates:
            return marginals, False, (f"{marginals.n_dates} dates exceed the model's "
                                      f"max_dates={self.max_dates}")
        return self.to_model_grid(marginals)

    def solve(self, marginals: Marginals) -> NeuralSolution:
        """Calibrate a martingale model to ``marginals`` (see module doc)."""
        return self.solve_batch([marginals])[0]

    def solve_batch(self, marginals) -> list[NeuralSolution]:
        """``solve`` for many marginal sets: one forward pass per number of dates, the row
        projections of all instances of a pass stacked into one compiled solve
        (``deepquant.mmot.projection.project_periods``), the residuals measured in one go.

        Each result's ``inference_seconds`` holds its share of the batched forward pass and
        projection; ``seconds`` likewise (shares of the shared work, then its own fallback)."""
        items = list(marginals)
        t0 = time.perf_counter()
        prepared = [self._prepare(m) for m in items]
        share = (time.perf_counter() - t0) / max(len(items), 1)
        out: list[NeuralSolution | None] = [None] * len(items)
        by_n: dict[int, list[int]] = {}
        for i, (marg, _, problem) in enumerate(prepared):
            if problem:
                out[i] = self._finish(marg, prepared[i][1], problem, None, None, share)
            else:
                by_n.setdefault(marg.n_dates, []).append(i)
        for ids in by_n.values():
            ti = time.perf_counter()
            weights = np.stack([prepared[i][0].weights for i in ids])
            v, h = self.predict(weights)
            res = self._project(weights, v, h)
            dt = (time.perf_counter() - ti) / len(ids)
            for j, i in enumerate(ids):
                marg, regridded, _ = prepared[i]
                out[i] = self._finish(marg, regridded, "", (v[j], h[j]),
                                      tuple(a[j] for a in res), share + dt)
        return out

    def _project(self, weights: np.ndarray, v: np.ndarray, h: np.ndarray) -> tuple:
        """Kernels (B, N, M, M), row multipliers h (B, N, M) and residuals (drift, live drift,
        marginal error, raw drift, raw marginal error; each (B,)) of network outputs (B, N, M)
        for weights (B, N+1, M) on the model grid."""
        from deepquant.mmot.projection import project_periods

        nb, n1, m = weights.shape
        nan = np.full(nb, np.nan)
        raw = (nan, nan)
        if not self.project or self.raw_residuals:
            kern = np.stack([self.kernels(w, vi, hi) for w, vi, hi in zip(weights, v, h)])
            raw = _measure(kern, weights, self.grid, self.mass_floor)[::2]
        if self.project:
            nu = weights[:, 1:].reshape(-1, m).copy()
            nu[nu <= self.column_floor] = 0.0
            with np.errstate(over="ignore", under="ignore", invalid="ignore", divide="ignore"):
                _, kern, eta, _, _ = project_periods(     # v, h are already in units of eps
                    self.grid, weights[:, :-1].reshape(-1, m), nu, v.reshape(-1, m),
                    np.where(np.isfinite(h), h, 0.0).reshape(-1, m), threads=self.row_threads)
            kern = kern.reshape(nb, n1 - 1, m, m)
            h = eta.reshape(nb, n1 - 1, m)
        return (kern, h, *_measure(kern, weights, self.grid, self.mass_floor), *raw)

    def _finish(self, marg: Marginals, regridded: bool, problem: str, pred, res,
                shared: float) -> NeuralSolution:
        """Out-of-distribution guard and fallback of one instance. ``pred`` = the network's
        (v, h), ``res`` = its row of ``_project`` (None: not run); ``shared`` seconds of the
        batched work are charged to it."""
        t0 = time.perf_counter() - shared
        v = h = kern = None
        nd = nl = nm = raw_drift = raw_merr = float("nan")
        if not problem:
            v, h = pred
            kern, h, *resid = res
            nd, nl, nm, raw_drift, raw_merr = map(float, resid)
            if not np.all(np.isfinite(v)):
                problem = "the network's potentials are not finite"
            elif not (np.isfinite(nl) and nl <= self.ood_drift):
                problem = f"neural drift {nl:.3g} above ood_drift={self.ood_drift:g}"
            elif not (np.isfinite(nm) and nm <= self.ood_marginal_error):
                problem = (f"neural marginal error {nm:.3g} above "
                           f"ood_marginal_error={self.ood_marginal_error:g}")
        if problem and self.fallback:
            tp = time.perf_counter()
            res = self._classical(marg)
            d, dl, me = (float(a[0]) for a in _measure(res.kernels[None], marg.weights[None],
                                                        marg.grid, self.mass_floor))
            return NeuralSolution(
                marg, res.kernels, res.v / EPS, res.h / EPS, "classical", d, dl, me, raw_drift,
                raw_merr, bool(res.success), f"out of distribution ({problem}): classical "
                "solver used; " + res.message, time.perf_counter() - t0, shared,
                time.perf_counter() - tp, int(res.nit), regridded, self.project, res)
        if problem:
            return NeuralSolution(marg, kern if kern is not None else np.zeros(0),
                                  v, h, "neural", nd, nl, nm, raw_drift, raw_merr, False,
                                  f"out of distribution ({problem}); no fallback",
                                  time.perf_counter() - t0, shared, 0.0, 0, regridded,
                                  self.project)
        msg = ("pure neural, row multipliers solved exactly (exact martingale; the column "
               "marginals carry the network's error, see marginal_error)" if self.project else
               "pure neural (kernels are not exact martingales; see drift)")
        return NeuralSolution(marg, kern, v, h, "neural", nd, nl, nm, raw_drift, raw_merr, True,
                              msg, time.perf_counter() - t0, shared, 0.0, 0, regridded,
                              self.project)

    def price(self, marginals: Marginals, payoff) -> float:
        """Price of ``payoff`` under the calibrated model (undiscounted, moneyness units).

        Raises ``ValueError`` when the solve failed (out of distribution with
        ``fallback=False``) rather than pricing under a model the guard rejected."""
        check_payoff(payoff)
        sol = self.solve(marginals)
        if not sol.success and sol.mode == "neural":
            raise ValueError(f"cannot price: the neural solve failed ({sol.message}); use "
                             "NeuralPricer(fallback=True) for the classical solver instead")
        return sol.price(payoff)


def demo_prices(marginals: Marginals, payoffs: dict[str, Any] | list, *, checkpoint=None
                ) -> dict[str, Any]:
    """Neural and classical prices and timings for ``payoffs`` (for ``deepquant demo``).

    Returns ``{"prices": {name: {"neural": p, "classical": p}}, "seconds": {"neural": s,
    "classical": s}, "drift": {"neural": d, "classical": d}, "mode": {"neural": m}, "ood": bool,
    "marginal_error": {"neural": e}}``; ``ood`` is True when the checkpoint's out-of-distribution
    guard (``guard_thresholds``) would have replaced the neural answer by the classical one (the
    pure-neural drift is reported as is).
    """
    if not isinstance(payoffs, dict):
        payoffs = {getattr(p, "name", str(i)): p for i, p in enumerate(payoffs)}
    # no OOD guard here, so the "neural" column is always the network's own answer; ``ood`` says
    # whether the checkpoint's guard would have fallen back to the classical solver
    pricer = NeuralPricer(checkpoint, ood_drift=float("inf"), ood_marginal_error=float("inf"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NeuralGridWarning)
        neural = pricer.solve(marginals)
    guard = guard_thresholds(pricer.meta)
    ood = (neural.drift_live > guard["ood_drift"]
           or neural.marginal_error > guard["ood_marginal_error"])
    t0 = time.perf_counter()
    classical = pricer._classical(neural.marginals)
    t_classical = time.perf_counter() - t0
    from deepquant.mmot.augment import build_chain, expectation

    prices = {}
    for name, p in payoffs.items():
        chain = build_chain(neural.marginals, p)
        prices[name] = {
            "neural": expectation(chain, neural.kernels, law0=neural.marginals.weights[0]),
            "classical": expectation(chain, classical.kernels,
                                     law0=neural.marginals.weights[0]),
        }
    return {"prices": prices,
            "seconds": {"neural": neural.seconds, "classical": t_classical},
            "drift": {"neural": neural.drift_live, "classical": float(classical.drift)},
            "mode": {"neural": neural.mode}, "ood": bool(ood),
            "marginal_error": {"neural": neural.marginal_error}}
