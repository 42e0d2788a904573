"""Weak error of rough Bergomi schemes on the European put (docs/benchmarks-rough.md).

Usage (one process, one BLAS thread; results go to ``--out``)::

    python benchmarks/rough_weak_error.py run [--paths-log2 18] [--batch-log2 12]
        [--family hybrid exact] [--max-per-period 64] [--exact-max-per-period 32]
        [--strikes 70 100 120] [--seed 3] [--out benchmarks/results/rough_weak_error.json]
    python benchmarks/rough_weak_error.py run --family hybrid --steps euler euler-dates
        --out benchmarks/results/rough_weak_error_dates.json
    python benchmarks/rough_weak_error.py summary [--out ...]

Standard case (H = 0.07, eta = 1.9, rho = -0.9, xi0 = 0.09, r = 0.05, S0 = 100, T = 1),
E[(K - S_T)^+] e^{-rT} on grids of 12 n steps, n = 2, 4, ..., ``--max-per-period``.

Every scheme is priced with the mixing (conditional) estimator: given the volatility driver W,
log S_T is Gaussian, so the put is a Black–Scholes price with spot
S0 exp(rho X - rho^2 Q / 2) and total variance (1 - rho^2) Q, where X approximates
int sqrt(V) dW and Q int V dt. For the left-point scheme this has exactly the expectation of
the engine's log-Euler paths (checked: 8.0037 +- 0.0545 against the plain payoff's
8.0047 +- 0.0596, K = 100, 96 steps, the same 2^16 paths), with a smaller variance.

Families (the volatility driver on the grid; all grids of one family are coupled: one draw on
the finest grid, coarser grids by ``deepquant.rough.coupling.coarsen_increments``, so the
differences between grids are resolved):

* ``hybrid``: the engine's hybrid scheme (kappa = 1), ``RoughBergomi.paths_from_increments``;
* ``exact``: (dW_i, Y_{t_i}) jointly Gaussian with their exact covariance (Cholesky on the
  finest exact grid, coarser grids by summing dW and subsampling Y): isolates the error of the
  price step from that of the Volterra approximation.

Price steps (``STEPS``; ``fwd*`` on the hybrid family only):

* ``euler``: the engine's left-point step, X = sum sqrt(V_{i-1}) dW_i, Q = sum V_{i-1} dt;
* ``trap``: trapezoidal integrand with the Skorokhod (Wick) correction that makes the
  anticipating half mean-free: X = sum [sqrt(V_{i-1}) dW_i + sqrt(V_i) (dW_i - eta c / 2)] / 2,
  c = Cov(Y_{t_i}, dW_i), Q = sum (V_{i-1} + V_i) dt / 2;
* ``mid``: the same with the integrand at the cell midpoint (Y from the coupled grid of twice
  the steps, so not on the finest grid), X = sum sqrt(V_mid) (dW_i - eta c_mid / 2),
  Q = sum V_mid dt;
* ``milstein``: left point plus a weak near-field Milstein term (``milstein_step``);
* ``fwd``: left-point step with the adapted variance E_{t_{i-1}}[V] at the cell midpoint
  (projected on the hybrid data, ``forward_weights``) instead of V_{i-1};
* ``fwd-milstein``: both;
* ``trap-perp``: the left-point X and compensator, the trapezoidal Q for the orthogonal part;
* ``fwd-perp`` (not in the default run): the left-point X and compensator, the adapted variance
  of ``fwd`` for the orthogonal part only (``RoughBergomi(perp_variance="forward")``);
* ``euler-dates`` (not in the default run): the left-point step's puts maturing at the
  exercise dates t_j = j / 12, j in ``MATURITIES`` (where a Bermudan exercises).

Each batch mean uses the control variates W_T, W_T^2 - T, the same payoff in the
Black–Scholes model driven by rho W, X and Q - xi0 T (mean 0 for every scheme here: X is an
Ito or Skorokhod sum, E[V_t] = xi0 on every grid; coefficients fitted per batch). Standard
errors are batch means over ``2^(paths-log2 - batch-log2)`` independent batches of
antithetic pseudo-random paths; the covariance of all (scheme, grid) prices of one family is
estimated from the same batches and used in the fits P(h) = A + c h^p (generalised least
squares, h = 1 / steps per period).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from scipy.optimize import least_squares
from scipy.signal import fftconvolve
from scipy.special import hyp2f1, ndtr
from threadpoolctl import threadpool_limits

from deepquant.rough import RoughBergomi
from deepquant.rough.coupling import coupled_increments

MODEL = dict(H=0.07, eta=1.9, rho=-0.9, xi0=0.09, r=0.05, S0=100.0)
DATES = 12
STEPS = ("euler", "trap", "mid", "milstein", "fwd", "fwd-milstein", "trap-perp", "euler-dates",
         "fwd-perp")
MATURITIES = (1, 2, 3, 6, 9)
OUT = Path("benchmarks/results/rough_weak_error.json")


def mixing_put(model: RoughBergomi, X: np.ndarray, Q: np.ndarray, strikes, T: float,
               C: np.ndarray | None = None) -> np.ndarray:
    """Discounted put prices E[(K - S_T)^+ | W] e^{-rT}, shape (len(strikes), n_paths), and the
    discounted spot's conditional mean S0 exp(rho X - C) as the last row (C: the compensator,
    default rho^2 Q / 2)."""
    rho = model.rho
    s_eff = model.S0 * np.exp(rho * X - (0.5 * rho**2 * Q if C is None else C))
    w = np.maximum((1.0 - rho**2) * Q, 1e-300)
    sw = np.sqrt(w)
    out = np.empty((len(strikes) + 1, X.size))
    for j, K in enumerate(strikes):
        kd = K * math.exp(-model.r * T)
        d1 = (np.log(s_eff / kd) + 0.5 * w) / sw
        out[j] = kd * ndtr(-(d1 - sw)) - s_eff * ndtr(-d1)
    out[-1] = s_eff
    return out


def price_step(model: RoughBergomi, step: str, dW: np.ndarray, V: np.ndarray, c: float,
               dt: float, Vmid=None, cmid: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(X, Q) of the steps euler, trap, mid (module docstring); V: (n_paths, n+1) on the grid,
    Vmid (n_paths, n) at the cell midpoints."""
    sv = np.sqrt(V)
    if step == "euler":
        return (sv[:, :-1] * dW).sum(1), V[:, :-1].sum(1) * dt
    if step == "trap":
        X = 0.5 * (sv[:, :-1] * dW + sv[:, 1:] * (dW - 0.5 * model.eta * c)).sum(1)
        return X, 0.5 * (V[:, :-1] + V[:, 1:]).sum(1) * dt
    if step == "mid":
        return (np.sqrt(Vmid) * (dW - 0.5 * model.eta * cmid)).sum(1), Vmid.sum(1) * dt
    raise ValueError(f"unknown price step {step!r}")


def milstein_mu(model: RoughBergomi, dt: float) -> float:
    """Coefficient mu of the weak near-field Milstein term mu (dW^2 - dt): (eta / 2) sqrt(2H)
    lambda, lambda = dt^a / ((a + 1)(a + 2)) (a = H - 1/2) matches the pairing of the Ito
    double integral int_cell int_{t}^{u} (u - v)^a dW_v dW_u with smooth functionals."""
    a = model.H - 0.5
    return 0.5 * model.eta * math.sqrt(2 * model.H) * dt**a / ((a + 1) * (a + 2))


def milstein_step(model: RoughBergomi, dW: np.ndarray, sig2: np.ndarray, dt: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, C, Q): X = sum k sqrt(s_i) (dW + mu (dW^2 - dt)), C = sum log E_i[exp(rho X_i)]
    (exact: a quadratic form of one Gaussian), Q = sum s_i dt; k normalises E_i[X_i^2] to
    s_i dt. ``sig2`` (n_paths, n): the step variances s_i."""
    mu = milstein_mu(model, dt)
    k = 1.0 / math.sqrt(1.0 + 2.0 * mu**2 * dt)
    a = k * np.sqrt(sig2)
    X = (a * (dW + mu * (dW**2 - dt))).sum(1)
    c = model.rho * a * math.sqrt(dt)
    d = model.rho * a * mu * dt
    C = (-d - 0.5 * np.log1p(-2.0 * d) + c**2 / (2.0 * (1.0 - 2.0 * d))).sum(1)
    return X, C, sig2.sum(1) * dt


def forward_weights(model: RoughBergomi, n: int, dt: float, theta: float = 0.5
                    ) -> tuple[float, float, np.ndarray, float]:
    """Z_i = sqrt(2H) (b dW_i + g I_i + sum_{k>=2} w_k dW_{i-k+1}) = the projection of
    E_{t_i}[Y_{t_i + theta dt}] on the hybrid data (dW, I); returns (b, g, w (n + 1,), and the
    variance of the cell part)."""
    from scipy.integrate import quad

    a = model.H - 0.5
    c = np.array([[dt, dt ** (a + 1) / (a + 1)],
                  [dt ** (a + 1) / (a + 1), dt ** (2 * a + 1) / (2 * a + 1)]])
    h = theta * dt
    cw = ((dt + h) ** (a + 1) - h ** (a + 1)) / (a + 1)  # Cov(int (u - v)^a dW, dW_i)
    ci = quad(lambda v: (dt + h - v) ** a * (dt - v) ** a, 0.0, dt, limit=200)[0]
    b, g = np.linalg.solve(c, [cw, ci])
    k = np.arange(2, n + 1, dtype=float)
    w = np.zeros(n + 1)
    w[2:] = ((k * dt + h) ** (a + 1) - ((k - 1) * dt + h) ** (a + 1)) / ((a + 1) * dt)
    return float(b), float(g), w, float(np.array([b, g]) @ c @ np.array([b, g]))


# ---------------------------------------------------------------- exact Volterra on the grid
def exact_factor(H: float, n: int, T: float) -> np.ndarray:
    """Cholesky factor of the covariance of (dW_1..dW_n, Y_{t_1}..Y_{t_n}), t_i = i T / n."""
    a = H - 0.5
    dt = T / n
    t = dt * np.arange(1, n + 1)
    C = np.zeros((2 * n, 2 * n))
    C[:n, :n] = dt * np.eye(n)
    ti, tj = t[:, None], t[None, :]  # Y index i, increment index j (cell [t_{j-1}, t_j])
    lag = np.maximum(ti - tj, 0.0)  # increments after t_i (lag < 0) are masked below
    cross = np.where(tj <= ti + 1e-12, math.sqrt(2 * H) * (
        (lag + dt) ** (a + 1) - lag ** (a + 1)) / (a + 1), 0.0)
    C[n:, :n] = cross
    C[:n, n:] = cross.T
    u, v = np.minimum(ti, tj), np.maximum(ti, tj)
    gap = (v - u) / u
    with np.errstate(divide="ignore", invalid="ignore"):
        # 2H int_0^u (u-s)^a (v-s)^a ds = 2H u^(2H) int_0^1 x^a (x + gap)^a dx
        off = gap ** a / (a + 1) * hyp2f1(-a, a + 1, a + 2, -1.0 / gap)
    yy = 2 * H * u ** (2 * H) * np.where(gap > 0, off, 1.0 / (2 * H))
    C[n:, n:] = yy
    return np.linalg.cholesky(C + 1e-14 * np.eye(2 * n))


def exact_grids(model: RoughBergomi, L: np.ndarray, n_paths: int, grids: list[int], T: float,
                rng: np.random.Generator) -> dict:
    """{n: (dW, Y)} for each grid n (dividing the finest), from one antithetic draw."""
    nf = L.shape[0] // 2
    g = rng.standard_normal((n_paths // 2, 2 * nf))
    g = np.concatenate([g, -g]) @ L.T
    dWf, Yf = g[:, :nf], g[:, nf:]
    out = {}
    for n in grids:
        m = nf // n
        dW = dWf.reshape(n_paths, n, m).sum(2)
        Y = np.zeros((n_paths, n + 1))
        Y[:, 1:] = Yf[:, m - 1::m]
        out[n] = (dW, Y)
    return out


def variance(model: RoughBergomi, Y: np.ndarray, var: np.ndarray) -> np.ndarray:
    return model.xi0 * np.exp(model.eta * Y - 0.5 * model.eta**2 * var[None, :])


def batch_values(model, family: str, steps: list[str], grids: list[int], strikes, T: float,
                 n_paths: int, seed, L=None) -> dict:
    """{(step, n): (len(strikes) + 1,) batch means} for one batch of one family."""
    H, a = model.H, model.H - 0.5
    out = {}
    need = sorted(grids)
    if family == "hybrid":
        incs = coupled_increments(model, n_paths, need, T, method="mc", antithetic=True,
                                  bridge=False, rng=seed)
        paths = {n: model.paths_from_increments(dW, dWp, cell, T)
                 for n, (dW, dWp, cell) in zip(need, incs, strict=True)}
        data = {n: (p.dW, p.Y, p.V) for n, p in paths.items()}
    else:
        raw = exact_grids(model, L, n_paths, need, T, np.random.default_rng(seed))
        data = {}
        for n, (dW, Y) in raw.items():
            var = (T / n * np.arange(n + 1)) ** (2 * H)
            data[n] = (dW, Y, variance(model, Y, var))
    fwd = {}
    if family == "hybrid" and any(st.startswith("fwd") for st in steps):
        for n in grids:
            dt = T / n
            b, g, w, vc = forward_weights(model, n, dt)
            dW, cell = incs[need.index(n)][0], incs[need.index(n)][2]
            conv = fftconvolve(dW, w[None, :], axes=1)[:, :n]  # sum_{k>=2} w_k dW_{i-k+1}
            Z = np.zeros_like(dW)  # Z at t_0 .. t_{n-1}
            Z[:, 1:] = math.sqrt(2 * H) * (b * dW[:, :-1] + g * cell[:, :-1] + conv[:, 1:])
            vz = np.zeros(n)
            vz[1:] = 2 * H * (vc + np.cumsum(w[1:n] ** 2) * dt)
            fwd[n] = model.xi0 * np.exp(model.eta * Z - 0.5 * model.eta**2 * vz[None, :])
    WT = data[grids[0]][0].sum(1)  # the same on every grid
    cvs = controls(model, WT, strikes, T)
    for n in grids:
        dt = T / n
        dW, _, V = data[n]
        c = math.sqrt(2 * H) * dt ** (a + 1) / (a + 1)  # Cov(Y_{t_i}, dW_i), both families
        for step in steps:
            kw = {}
            if step == "euler-dates":  # left point, maturities t_j = j T / DATES
                out.update(dated_values(model, dW, V, dt, n, strikes, T))
                continue
            if step == "mid" and 2 * n not in data:
                continue
            if step == "mid":
                V2 = data[2 * n][2]
                kw = dict(Vmid=V2[:, 1::2],
                          cmid=math.sqrt(2 * H) * (dt / 2) ** (a + 1) / (a + 1))
            if step in ("milstein", "fwd", "fwd-milstein"):
                if step != "milstein" and family != "hybrid":
                    continue
                sig2 = V[:, :-1] if step == "milstein" else fwd[n]
                if step == "fwd":
                    X, Q = (np.sqrt(sig2) * dW).sum(1), sig2.sum(1) * dt
                    C = 0.5 * model.rho**2 * Q
                else:
                    X, C, Q = milstein_step(model, dW, sig2, dt)
            elif step == "fwd-perp":
                if family != "hybrid":
                    continue
                X, Q = price_step(model, "euler", dW, V, c, dt)
                C = 0.5 * model.rho**2 * Q
                Q = fwd[n].sum(1) * dt
            elif step == "trap-perp":
                X, Q = price_step(model, "euler", dW, V, c, dt)
                C = 0.5 * model.rho**2 * Q
                Q = 0.5 * (V[:, :-1] + V[:, 1:]).sum(1) * dt
            else:
                X, Q = price_step(model, step, dW, V, c, dt, **kw)
                C = 0.5 * model.rho**2 * Q
            vals = mixing_put(model, X, Q, strikes, T, C)
            extra = np.stack([X, Q - model.xi0 * T])
            out[(step, n)] = np.array([controlled_mean(v, np.concatenate([c, extra]))
                                       for v, c in zip(vals, cvs, strict=True)])
    return out


def dated_values(model: RoughBergomi, dW: np.ndarray, V: np.ndarray, dt: float, n: int,
                 strikes, T: float) -> dict:
    """{("euler@j/12", n): batch means} of the left-point European puts maturing at the
    exercise dates t_j = j T / DATES, j in ``MATURITIES``."""
    out = {}
    Xc = np.cumsum(np.sqrt(V[:, :-1]) * dW, axis=1)
    Qc = np.cumsum(V[:, :-1], axis=1) * dt
    Wc = np.cumsum(dW, axis=1)
    for j in MATURITIES:
        i = j * n // DATES - 1
        t = j * T / DATES
        X, Q = Xc[:, i], Qc[:, i]
        vals = mixing_put(model, X, Q, strikes, t)
        extra = np.stack([X, Q - model.xi0 * t])
        out[(f"euler@{j}/{DATES}", n)] = np.array([
            controlled_mean(v, np.concatenate([c, extra]))
            for v, c in zip(vals, controls(model, Wc[:, i], strikes, t), strict=True)])
    return out


def controls(model: RoughBergomi, WT: np.ndarray, strikes, T: float) -> list[np.ndarray]:
    """Control variates with known mean 0 for each row of ``mixing_put``: W_T, W_T^2 - T and
    the same payoff in the Black–Scholes model driven by rho W with volatility sqrt(xi0)."""
    sig = abs(model.rho) * math.sqrt(model.xi0)
    s_bs = model.S0 * np.exp(model.rho * math.sqrt(model.xi0) * WT - 0.5 * sig**2 * T)
    base = [WT, WT**2 - T]
    out = []
    for K in strikes:
        kd = K * math.exp(-model.r * T)
        d1 = (math.log(model.S0 / kd) + 0.5 * sig**2 * T) / (sig * math.sqrt(T))
        exact = kd * ndtr(-(d1 - sig * math.sqrt(T))) - model.S0 * ndtr(-d1)
        out.append(np.stack(base + [np.maximum(kd - s_bs, 0.0) - exact]))
    out.append(np.stack(base + [s_bs - model.S0]))
    return out


def controlled_mean(y: np.ndarray, c: np.ndarray) -> float:
    """Mean of y with the controls c (k, n) (mean 0), coefficients fitted on the same sample
    (bias O(1/n), far below the standard errors here)."""
    cc = c - c.mean(1, keepdims=True)
    beta = np.linalg.lstsq(cc.T, y - y.mean(), rcond=None)[0]
    return float(y.mean() - beta @ c.mean(1))


def run_family(model, family: str, steps: list[str], per_period: list[int], strikes,
               n_paths: int, batch: int, seed: int) -> dict:
    """Batch means of every (step, grid) of one family and their covariance."""
    T = 1.0
    grids = [DATES * s for s in per_period]
    L = None
    if family == "exact":
        L = exact_factor(model.H, max(grids), T)
    root = np.random.SeedSequence(seed)
    keys = None
    rows = []
    t0 = time.process_time()
    for b, child in enumerate(root.spawn(n_paths // batch)):
        vals = batch_values(model, family, steps, grids, strikes, T, batch, child, L)
        keys = keys or list(vals)
        rows.append(np.stack([vals[k] for k in keys]))
        if (b + 1) % 8 == 0:
            print(f"  {family}: batch {b + 1}/{n_paths // batch}, "
                  f"{time.process_time() - t0:.0f} CPU s", flush=True)
    B = np.stack(rows)  # (batches, keys, strikes + 1)
    return {"family": family, "keys": [[s, n // DATES] for s, n in keys],
            "strikes": list(strikes), "batches": B.tolist(),
            "cpu_seconds": time.process_time() - t0, "n_paths": n_paths, "batch": batch}


def fit(h: np.ndarray, y: np.ndarray, cov: np.ndarray, rate=None) -> dict:
    """GLS fit of y = A + c h^p (p free unless ``rate``), covariance ``cov`` of y."""
    W = np.linalg.cholesky(np.linalg.inv(cov))

    def resid(x):
        p = rate if rate is not None else x[2]
        return W.T @ (y - x[0] - x[1] * h**p)

    x0 = [y[-1], -1.0] + ([] if rate is not None else [0.7])
    sol = least_squares(resid, x0)
    J = sol.jac
    dof = max(J.shape[0] - J.shape[1], 1)
    C = np.linalg.pinv(J.T @ J)
    se = np.sqrt(np.diag(C))
    p = rate if rate is not None else sol.x[2]
    errors = {}
    for per in (8, 16):  # weak error -c h^p at 8 and 16 steps per period (delta method)
        hp = (1.0 / per) ** p
        g = np.array([0.0, -hp] + ([] if rate is not None else [-sol.x[1] * hp
                                                                  * math.log(1.0 / per)]))
        errors[str(per)] = [float(-sol.x[1] * hp), float(math.sqrt(max(g @ C @ g, 0.0)))]
    return {"A": float(sol.x[0]), "A_se": float(se[0]), "c": float(sol.x[1]),
            "c_se": float(se[1]), "p": float(p), "p_se": 0.0 if rate is not None else float(se[2]),
            "chi2_dof": float(sol.fun @ sol.fun) / dof, "error": errors}


def summarize(res: dict) -> list[dict]:
    """Per (step, strike): means, standard errors and the fit, from the batches."""
    B = np.asarray(res["batches"])
    nb = B.shape[0]
    mean = B.mean(0)
    keys = [tuple(k) for k in res["keys"]]
    out = []
    for step in dict.fromkeys(k[0] for k in keys):
        idx = [i for i, k in enumerate(keys) if k[0] == step]
        per = np.array([keys[i][1] for i in idx], dtype=float)
        for j, K in enumerate(res["strikes"] + ["E[S_T] e^-rT"]):
            x = B[:, idx, j]
            cov = np.atleast_2d(np.cov(x.T)) / nb
            row = {"family": res["family"], "step": step, "strike": K,
                   "per_period": per.tolist(), "price": mean[idx, j].tolist(),
                   "stderr": np.sqrt(np.diag(cov)).tolist(),
                   "diff_stderr": [float(np.std(x[:, i + 1] - x[:, i], ddof=1) / math.sqrt(nb))
                                   for i in range(len(idx) - 1)]}
            if 8.0 in per and 16.0 in per:
                # the engine's two-grid Richardson value from 8 and 16 steps per period with
                # p = 0.7 (TIME_STEP_RATE), and its distance to the finest grid (paired)
                i8, i16 = list(per).index(8.0), list(per).index(16.0)
                rich = x[:, i16] + (x[:, i16] - x[:, i8]) / (2**0.7 - 1)
                row["richardson_8_16"] = [float(rich.mean()),
                                          float(rich.std(ddof=1) / math.sqrt(nb))]
                d = rich - x[:, -1]
                row["richardson_minus_finest"] = [float(d.mean()),
                                                  float(d.std(ddof=1) / math.sqrt(nb))]
                d = x[:, i8] - x[:, -1]
                row["n8_minus_finest"] = [float(d.mean()), float(d.std(ddof=1) / math.sqrt(nb))]
            if isinstance(K, float | int) and len(idx) >= 3:
                for name, rate in (("fit", None), ("fit_rate_071", 3 * MODEL["H"] + 0.5)):
                    try:
                        row[name] = fit(1.0 / per, mean[idx, j], cov, rate)
                    except (np.linalg.LinAlgError, ValueError) as exc:  # pragma: no cover
                        row[name] = {"failed": str(exc)}
            out.append(row)
    return out


def joint_fit(res: dict, step: str) -> dict:
    """GLS fit of P_K(h) = A_K + c_K h^p over the strikes with ONE rate p, the covariance of
    all (strike, grid) prices from the batches."""
    B = np.asarray(res["batches"])
    keys = [tuple(k) for k in res["keys"]]
    idx = [i for i, k in enumerate(keys) if k[0] == step]
    h = 1.0 / np.array([keys[i][1] for i in idx], dtype=float)
    nK = len(res["strikes"])
    x = np.concatenate([B[:, idx, j] for j in range(nK)], axis=1)
    y = x.mean(0)
    W = np.linalg.cholesky(np.linalg.inv(np.cov(x.T) / B.shape[0]))
    m = len(idx)

    def resid(z):
        pred = np.concatenate([z[1 + 2 * j] + z[2 + 2 * j] * h ** z[0] for j in range(nK)])
        return W.T @ (y - pred)

    z0 = [0.7] + [v for j in range(nK) for v in (y[(j + 1) * m - 1], 0.0)]
    sol = least_squares(resid, z0)
    C = np.linalg.pinv(sol.jac.T @ sol.jac)
    dof = max(sol.fun.size - sol.x.size, 1)
    return {"step": step, "rate": float(sol.x[0]), "rate_stderr": float(math.sqrt(C[0, 0])),
            "limits": [float(sol.x[1 + 2 * j]) for j in range(nK)],
            "limits_stderr": [float(math.sqrt(C[1 + 2 * j, 1 + 2 * j])) for j in range(nK)],
            "c": [float(sol.x[2 + 2 * j]) for j in range(nK)],
            "chi2_per_dof": float(sol.fun @ sol.fun) / dof}


def print_table(rows: list[dict]) -> None:
    for r in rows:
        cells = " | ".join(f"{p:.4f} +- {s:.4f}" for p, s in zip(r["price"], r["stderr"],
                                                                    strict=True))
        print(f"| {r['family']} | {r['step']} | {r['strike']} | {cells} |")
        if "richardson_8_16" in r and not isinstance(r["strike"], str):
            (rv, rs), (dv, ds) = r["richardson_8_16"], r["richardson_minus_finest"]
            e8, s8 = r["n8_minus_finest"]
            print(f"    Richardson (8, 16; p = 0.7): {rv:.4f} +- {rs:.4f}; minus the finest "
                  f"grid: {dv:+.4f} +- {ds:.4f}; 8 steps minus the finest: {e8:+.4f} +- "
                  f"{s8:.4f}")
        for name in ("fit", "fit_rate_071"):
            f = r.get(name, {})
            if "A" in f:
                e8, e16 = f["error"]["8"], f["error"]["16"]
                print(f"    {name}: A = {f['A']:.4f} +- {f['A_se']:.4f}, c = {f['c']:.4f} +- "
                      f"{f['c_se']:.4f}, p = {f['p']:.3f} +- {f['p_se']:.3f}, chi2/dof = "
                      f"{f['chi2_dof']:.2f}; error at 8 / 16 steps per period: "
                      f"{e8[0]:.4f} +- {e8[1]:.4f} / {e16[0]:.4f} +- {e16[1]:.4f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["run", "summary"])
    ap.add_argument("--paths-log2", type=int, default=18)
    ap.add_argument("--batch-log2", type=int, default=12)
    ap.add_argument("--family", nargs="+", default=["hybrid", "exact"])
    ap.add_argument("--steps", nargs="+", default=list(STEPS[:-2]), choices=STEPS)
    ap.add_argument("--max-per-period", type=int, default=64)
    ap.add_argument("--exact-max-per-period", type=int, default=32)
    ap.add_argument("--strikes", nargs="+", type=float, default=[70.0, 100.0, 120.0])
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    if args.command == "summary":
        data = json.loads(args.out.read_text())
        for res in data["runs"]:
            print_table(summarize(res))
            for step in dict.fromkeys(k[0] for k in res["keys"]):
                if sum(k[0] == step for k in res["keys"]) < 3:
                    continue
                try:
                    f = joint_fit(res, step)
                except (np.linalg.LinAlgError, ValueError) as exc:
                    print(f"joint fit {res['family']} {step}: failed ({exc})")
                    continue
                print(f"joint fit {res['family']} {step}: p = {f['rate']:.3f} +- "
                      f"{f['rate_stderr']:.3f}, A = " + ", ".join(
                          f"{a:.4f} +- {e:.4f}" for a, e in zip(f["limits"], f["limits_stderr"],
                                                               strict=True))
                      + f", c = {', '.join(f'{c:.3f}' for c in f['c'])}, chi2/dof = "
                      f"{f['chi2_per_dof']:.2f}")
        try:
            ref = joint_fit(data["runs"][0], "euler")
        except (np.linalg.LinAlgError, ValueError, IndexError):
            return
        print(f"P(n) - A, A the joint limits of {data['runs'][0]['family']} euler "
              f"(stderr of P and A combined, unpaired):")
        print("| family | step | " + " | ".join(
            f"K = {K:g}, n = {n}" for K in data["runs"][0]["strikes"] for n in (8, 16))
              + " | E[S_T] e^-rT, n = 8 |")
        for res in data["runs"]:
            rows = summarize(res)
            for step in dict.fromkeys(r["step"] for r in rows if "@" not in r["step"]):
                cells = []
                for r in (r for r in rows if r["step"] == step):
                    if isinstance(r["strike"], str):
                        if 8.0 not in r["per_period"]:
                            cells.append("-")
                            continue
                        i = r["per_period"].index(8.0)
                        cells.append(f"{r['price'][i]:.3f} +- {r['stderr'][i]:.3f}")
                        continue
                    j = res["strikes"].index(r["strike"])
                    for n in (8.0, 16.0):
                        if n not in r["per_period"]:
                            cells.append("-")
                            continue
                        i = r["per_period"].index(n)
                        e = math.hypot(r["stderr"][i], ref["limits_stderr"][j])
                        cells.append(f"{r['price'][i] - ref['limits'][j]:+.4f} +- {e:.4f}")
                print(f"| {res['family']} | {step} | " + " | ".join(cells) + " |")
        return
    model = RoughBergomi(**MODEL)
    runs = []
    with threadpool_limits(1):
        for fam in args.family:
            top = args.max_per_period if fam == "hybrid" else args.exact_max_per_period
            per = [2**k for k in range(1, int(math.log2(top)) + 1)]
            res = run_family(model, fam, args.steps, per, args.strikes, 2**args.paths_log2,
                             2**args.batch_log2, args.seed + (fam == "exact"))
            runs.append(res)
            print_table(summarize(res))
            print(f"{fam}: {res['cpu_seconds']:.0f} CPU s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": MODEL, "dates": DATES, "runs": runs}))


if __name__ == "__main__":
    main()
