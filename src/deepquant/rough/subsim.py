"""Dual upper bound from the Doob martingale of the regression value function, with one-period
sub-simulation (``BermudanPricer(dual="subsim")``).

Construction (Andersen & Broadie 2004 restricted to one exercise period; Glasserman & Yu 2004;
Belomestny, Bender & Schoenmakers 2009, "True upper bounds for Bermudan products via
non-nested Monte Carlo", Math. Finance 19(1) for the one-step view). Let Vh_j be an
approximation of the value at exercise date t_j built from the fitted Longstaff–Schwartz
regressions (``ValueFunction``):

    Vh_j = max(Z_j, C_j)  where C_j is the LSM continuation regression on in-the-money paths
                          and a separate regression of the policy's cash flow on the
                          out-of-the-money paths (clipped at 0), Vh_J = Z_J.

The martingale is M_0 = 0, M_{j+1} - M_j = Vh_{j+1}(outer path) - E^_j[Vh_{j+1}], where
E^_j is the mean of Vh_{j+1} over ``n_inner`` inner paths that share the outer path's driver
increments up to t_j (the model is not Markov) and are simulated over ONE exercise period
(``steps_per_date`` fine steps): the Volterra history of the outer path enters as a fixed
term of Y, the signature at t_{j+1} is the outer signature at t_j combined (Chen) with the
signature of the new segment, and the forward-variance proxy splits into its history and new
parts the same way. The inner points of each period are one scrambled Sobol set (antithetic
pairs, Brownian bridge) with an independent random shift modulo 1 per outer path
(``_InnerNoise``); the first period, whose start t = 0 all outer paths share, gets one
estimate from ``n_inner_zero`` inner paths. Given the outer path, E^_j is unbiased for
E_j[Vh_{j+1}], so the noise only biases mean max_j (Z_j - M_j) upwards (Jensen; Andersen &
Broadie §3) and the bound stays an upper bound. With ``control=True`` (default) the
discounted stock increment over the period, an exact martingale increment of the scheme, is
subtracted with a per-path coefficient estimated on an INDEPENDENT second inner set
(cross-fitting: each half's coefficient comes from the other half, so the estimator stays
conditionally unbiased); ``european_control`` adds one-step increments of a European value
(measured: no gain, off by default).

The value function comes from ``fit_value_function`` (LSM policy + out-of-the-money
regressions); ``lsm.fit_lsm(martingale=...)`` and ``fit_value_function(martingale=...)``
regress martingale-adjusted targets, which made Vh markedly better in the rough Bergomi
benchmark (docs/benchmarks-rough.md).

Cost: n_outer x J x n_inner one-period paths (no simulation to maturity, unlike the full
Andersen–Broadie estimator in ``deepquant.rough.nested``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from deepquant.payoffs import Payoff
from deepquant.rough.exercise import is_path_dependent, is_put, state_columns, truncated_payoff
from deepquant.rough.lsm import ExerciseBasis, LSMPolicy, _lstsq, bs_european
from deepquant.rough.qmc import as_seed_sequence
from deepquant.rough.rbergomi import RoughBergomi, RoughPaths, hybrid_kernel
from deepquant.rough.signature import signature_length

__all__ = ["ValueFunction", "fit_value_function", "features_at", "inner_exercise",
           "subsim_pathwise", "InnerShare"]


def features_at(S: np.ndarray, V: np.ndarray, fv: np.ndarray | None, sig: np.ndarray | None,
                t: float, T: float, K: float, r: float, xi0: float, basis: ExerciseBasis,
                put: bool, varies: bool, period: float = 0.0,
                state: list | None = None) -> np.ndarray:
    """Exercise features at ONE date t for arrays of states (any leading shape), last axis F.

    Same columns, in the same order, as ``lsm.exercise_features`` (checked by a test): the
    monomials in s = S/K and v = V/xi0, the BS European value with sqrt(xi0), the forward
    variance xi_t(t + (T - t)/2)/xi0 and the European value with it, the European values
    expiring ``basis.european_periods`` exercise periods (of length ``period``) ahead, the
    payoff-statistic columns ``state`` (``exercise.state_columns``; path-dependent payoffs),
    the signature.
    """
    s = S / K
    v = V / xi0
    cols = []
    for total in range(1, basis.poly_degree + 1):
        for b in range(total + 1):
            if b and not varies:
                continue
            cols.append(s ** (total - b) * v**b)
    tau = T - t
    log_s = np.log(S) if basis.bs_feature or basis.forward_variance or basis.european_periods \
        else None  # one log for all the European values below
    if basis.bs_feature:
        cols.append(bs_european(S, K, r, math.sqrt(xi0), tau, put=put, log_s=log_s) / K)
    if basis.forward_variance and varies:
        cols.append(fv / xi0)
        cols.append(bs_european(S, K, r, np.sqrt(fv), tau, put=put, log_s=log_s) / K)
    if basis.european_periods:
        vol = np.sqrt(fv) if (basis.forward_variance and varies) else math.sqrt(xi0)
        for k in basis.european_periods:
            cols.append(bs_european(S, K, r, vol, min(k * period, tau), put=put,
                                    log_s=log_s) / K)
    cols += state or []
    out = [np.stack(cols, axis=-1)] if cols else []
    if basis.sig_level > 0:
        out.append(sig)
    if not out:
        return np.zeros(S.shape + (0,))
    return np.concatenate(out, axis=-1)


@dataclass(frozen=True)
class ValueFunction:
    """Vh_j = max(Z_j, C_j) on all paths (see the module docstring).

    policy : the LSM policy (continuation on in-the-money paths)
    otm : list of J+1 entries, None or (coef, mean, scale) of the out-of-the-money regression
    """

    policy: LSMPolicy
    otm: list

    def continuation(self, j: int, Z: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """C_j for exercise values Z (n,) and features (n, F), shape (n,)."""
        itm = Z > 0
        out = np.zeros(Z.shape[0])
        reg = self.otm[j]
        if reg is not None and (~itm).any():
            c, m, s = reg
            out[~itm] = np.maximum(c[0] + ((feats[~itm] - m) / s) @ c[1:], 0.0)
        if itm.any():
            if self.policy.coef[j] is not None:
                out[itm] = self.policy.continuation(j, feats[itm])
            elif reg is not None:
                c, m, s = reg
                out[itm] = np.maximum(c[0] + ((feats[itm] - m) / s) @ c[1:], 0.0)
            else:
                out[itm] = -np.inf  # no regression: value = exercise value
        return out

    def value(self, j: int, Z: np.ndarray, feats: np.ndarray) -> np.ndarray:
        """Vh_j, shape (n,); the last date gives Z_J."""
        if j == len(self.otm) - 1:
            return Z.copy()
        return np.maximum(Z, self.continuation(j, Z, feats))


def fit_value_function(Z: np.ndarray, F: np.ndarray, policy: LSMPolicy, *,
                       ridge: float = 1e-8, min_paths: int = 16,
                       martingale: np.ndarray | None = None) -> ValueFunction:
    """Regress the policy's discounted cash flow from t_{j+1} on the exercise features over the
    out-of-the-money paths (Z_j = 0) at each date j = 1..J-1 (the LSM regression covers the
    in-the-money ones). With ``martingale`` (n, J+1) the target is Z_tau - (M_tau - M_j), as
    in ``lsm.fit_lsm``."""
    n, J1 = Z.shape
    otm: list = [None] * J1
    for j in range(1, J1 - 1):
        mask = ~(Z[:, j] > 0)
        if mask.sum() < max(min_paths, F.shape[2] + 2):
            continue
        tau = policy.stopping_index(Z[mask], F[mask], start=j + 1)
        rows = np.arange(tau.size)
        y = Z[mask][rows, tau]
        if martingale is not None:
            y = y - martingale[mask][rows, tau] + martingale[mask, j]
        c, m, s, _ = _lstsq(F[mask, j], y, ridge)
        otm[j] = (c, m, s)
    return ValueFunction(policy=policy, otm=otm)


class _Inner:
    """One period of inner paths from grid index e to e + m for a block of outer paths."""

    def __init__(self, model: RoughBergomi, T: float, n_steps: int, e: int, m: int) -> None:
        self.model = model
        self.dt = T / n_steps
        self.e, self.m = e, m
        self.times = np.linspace(0.0, T, n_steps + 1)
        H, eta = model.H, model.eta
        self.varies = eta != 0.0
        gamma = hybrid_kernel(H, n_steps, self.dt)
        # Y_{e+k} = sqrt(2H) (I_{e+k} + sum_{l<e} G_hist[l, k] dW_l + sum_{q<k} G_new[q, k] dW'_q)
        l = np.arange(e)[:, None]
        k = np.arange(1, m + 1)[None, :]
        self.G_hist = gamma[e + k - l] if e else np.zeros((0, m))
        q = np.arange(m)[:, None]
        idx = k - q  # = (e + k) - (e + q), >= 1
        self.G_new = np.where(idx >= 2, gamma[np.clip(idx, 0, n_steps)], 0.0)
        self.vvar = model.volterra_variance(n_steps, self.dt)[e + 1 : e + m + 1]
        # forward-variance proxy at t_end = t_{e+m}, horizon u = t_end + (T - t_end) / 2,
        # kernel averaged over each completed cell (as in RoughBergomi.forward_variance)
        end = e + m
        t_end = self.times[end]
        u = t_end + 0.5 * (T - t_end)
        a = H - 0.5
        lo = self.times[:end]
        hi = self.times[1 : end + 1]
        w = ((u - lo) ** (a + 1.0) - (u - hi) ** (a + 1.0)) / ((a + 1.0) * self.dt)
        self.w_hist, self.w_new = w[:e], w[e:]
        self.fv_drift = 0.5 * eta**2 * 2.0 * H * float((w**2).sum()) * self.dt
        self.t_end = t_end

    def history(self, outer: RoughPaths, rows: np.ndarray) -> tuple:
        """Per outer path: Y history terms (n, m), forward-variance history (n,)."""
        dW = outer.dW[rows, : self.e]
        return dW @ self.G_hist, dW @ self.w_hist

    def simulate(self, S_e, V_e, hist_y, hist_fv, dW, dWp, cell):
        """S, V, log S, log V (n, n_inner, m + 1) from t_e and fv (n, n_inner) at the end, from
        the inner noise dW, dWp, cell of shape (n, n_inner, m)."""
        logS, V, fv, logV = self.simulate_logs(S_e, V_e, hist_y, hist_fv, dW, dWp, cell)
        return np.exp(logS), V, fv, logS, logV

    def simulate_logs(self, S_e, V_e, hist_y, hist_fv, dW, dWp, cell):
        """log S, V, log V (n, n_inner, m + 1) and fv (n, n_inner) as ``simulate`` (S itself
        is left to the caller, who needs it at a few columns only)."""
        model = self.model
        n, ni = dW.shape[:2]
        if self.varies:
            from deepquant.rough.kernels import inner_log_paths

            # Y_{e+k} = sqrt(2H) (history + I + new-noise convolution), log-variance and the
            # log-Euler price in one compiled pass (kernels.inner_log_paths)
            logS, V, logV = inner_log_paths(
                hist_y, cell, dW @ self.G_new, np.log(V_e), np.log(S_e), dW, dWp,
                s2h=math.sqrt(2.0 * model.H), log_xi0=math.log(model.xi0), eta=model.eta,
                rho=model.rho, r=model.r, dt=self.dt, half_var=0.5 * model.eta**2 * self.vvar)
            fv = model.xi0 * np.exp(model.eta * math.sqrt(2.0 * model.H)
                                    * (hist_fv[:, None] + dW @ self.w_new) - self.fv_drift)
            return logS, V, fv, logV
        V = np.full((n, ni, self.m + 1), model.xi0)
        logV = np.log(V)
        fv = np.full((n, ni), model.xi0)
        rho = model.rho
        dB = rho * dW + math.sqrt(max(1.0 - rho**2, 0.0)) * dWp
        dlogS = (model.r - 0.5 * V[:, :, :-1]) * self.dt + np.sqrt(V[:, :, :-1]) * dB
        logS = np.empty((n, ni, self.m + 1))
        logS[:, :, 0] = np.log(S_e)[:, None]
        logS[:, :, 1:] = logS[:, :, :1] + np.cumsum(dlogS, axis=2)
        return logS, V, fv, logV


class InnerShare:
    """Inner noise handed from the finest of several coupled grids to the coarser ones within
    one pricing batch (``deepquant.rough.coupling.price_levels``): the finest grid's draw,
    coarsened, is exactly what a coarser grid with ``inner_refine`` would draw itself, so it
    is drawn (scrambled Sobol shift, inverse normal CDF: the expensive part) once.

    wanted : set of (fine steps per period, factor) pairs to keep; the store holds the first
    (antithetic) half of each coarsened draw until the coarser grid takes it.
    """

    def __init__(self, wanted) -> None:
        self.wanted = set(wanted)
        self.store: dict = {}


class _InnerNoise:
    """Per outer path an independently randomized QMC set of inner increments: one scrambled
    Sobol set (n_inner / 2 points in 3m dimensions, W and W_perp Brownian-bridge coordinates
    first, then the cell residuals) per period, a uniform random shift modulo 1 per outer path
    (Cranley–Patterson rotation), the inverse normal CDF, antithetic pairs and the Brownian
    bridge (a linear map, applied as an (m, m) matrix).

    A shift per outer path (not just one scramble shared by all outer paths, nor random signs
    on shared normals) matters: with 16–64 points the set's own second moments are off by a
    few percent, and an error shared by all outer paths of a batch does not average out
    (measured: upper bound 0.2 below the lower bound on one batch with shared points).

    ``refine`` > 1: the points live on a grid ``refine`` times finer (m * refine steps) and
    are coarsened to m steps (``coupling.coarsen_increments``): the inner paths of a coarse
    grid then share their Brownian paths with those of the finest grid. ``share``: an
    ``InnerShare`` through which the finest grid hands its coarsened draws on."""

    def __init__(self, model: RoughBergomi, m: int, dt: float, n_inner: int, seed,
                 refine: int = 1, share: InnerShare | None = None, key=()) -> None:
        from scipy.stats import qmc

        from deepquant.rough.qmc import BrownianBridge

        self.model, self.m, self.dt, self.refine = model, m, dt, int(refine)
        self.share, self.key = share, key
        mf = m * refine
        s_sobol, s_shift, s_resid = seed.spawn(3)
        half = n_inner // 2
        self.u = qmc.Sobol(3 * mf, scramble=True, rng=np.random.default_rng(s_sobol)
                           ).random_base2(int(round(math.log2(half))))
        self.shift_rng = np.random.default_rng(s_shift)
        self.resid_rng = np.random.default_rng(s_resid)
        self.bridge = BrownianBridge(mf, dt / refine).increments(np.eye(mf))  # row c: coord c

    def _fine_half(self, n: int):
        """(dW, dW_perp, cell) of the first antithetic half on the fine grid, (n, half, mf)."""
        from deepquant.rough.kernels import shifted_normals

        mf = self.m * self.refine
        # ndtri(clip((u + shift) mod 1, 1e-12, 1 - 1e-12)) in one compiled pass
        z = shifted_normals(self.u, self.shift_rng.random((n, 1, 3 * mf))[:, 0], 1e-12)
        dW = z[..., 0 : 2 * mf : 2] @ self.bridge
        dWp = z[..., 1 : 2 * mf : 2] @ self.bridge
        return dW, dWp, self.model.cell_from_normals(dW, z[..., 2 * mf :], self.dt / self.refine)

    def _residuals(self, half) -> np.ndarray:
        return self.resid_rng.standard_normal(half[0].shape[:-1] + (half[0].shape[-1] // 2,))

    def draw(self, n: int, block=0):
        """Inner increments (dW, dW_perp, cell), each (n, n_inner, m), for ``n`` outer paths
        (``block``: the block's index, the key of a shared draw)."""
        from deepquant.rough.coupling import coarsen_increments

        mf = self.m * self.refine
        share = self.share
        key = (mf, self.refine, *self.key, block)
        if share is not None and key in share.store:
            half = share.store.pop(key)
        else:
            half = self._fine_half(n)
            dt = self.dt / self.refine
            for _ in range(self.refine.bit_length() - 1):
                half = coarsen_increments(self.model, *half, dt, self._residuals(half))
                dt *= 2.0
            if share is not None and self.refine == 1:
                # the finest grid: hand its draw on, coarsened, to the grids that want it
                nxt, factor = half, 1
                while (mf, 2 * factor) in share.wanted:
                    nxt = coarsen_increments(self.model, *nxt, dt, self._residuals(nxt))
                    dt *= 2.0
                    factor *= 2
                    share.store[(mf, factor, *self.key, block)] = nxt
        return tuple(_antithetic(h) for h in half)


def _antithetic(h: np.ndarray) -> np.ndarray:
    """[h, -h] along axis 1 (the inner paths), without the temporary -h."""
    k = h.shape[1]
    out = np.empty(h.shape[:1] + (2 * k,) + h.shape[2:])
    out[:, :k] = h
    np.negative(h, out=out[:, k:])
    return out


def inner_exercise(payoff: Payoff, hist: np.ndarray, S: np.ndarray, payoff_stride: int,
                   K: float) -> tuple[np.ndarray, list]:
    """Exercise value at the end of a period for a path-dependent payoff, and its state
    columns: the payoff truncated there (``exercise.truncated_payoff``) on the outer path's
    payoff dates ``hist`` (n, i + 1) up to the period's start followed by the inner paths'
    payoff dates in the period, every ``payoff_stride`` steps of S (n, n_inner, m + 1).
    Returns h (n * n_inner,) and ``exercise.state_columns`` at the end."""
    nb, ni = S.shape[:2]
    X = np.concatenate([np.broadcast_to(hist[:, None, :], (nb, ni, hist.shape[1])),
                        S[:, :, payoff_stride::payoff_stride]], axis=2).reshape(nb * ni, -1)
    h, a = truncated_payoff(payoff, X)
    return h, state_columns(payoff, S[:, :, -1].reshape(-1) / K, a)


def _segment_signature(logS, logV, V, S0, xi0, T, t0, dt, level, variance, *, prefix=None):
    """Signature (n, L) of the lifted path (t/T, log(S/S0)/sqrt(xi0 T), var(V)) over the
    segment given by log S, log V, V of shape (n, m + 1) (``signature.lifted_path``
    channels); with ``prefix`` (n / r, L) the Chen product prefix[i // r] (x) segment_i (the
    signature of the outer path up to the segment's start continued by the segment)."""
    from deepquant.rough.signature import _siglib

    n, m1 = logS.shape
    x = np.empty((n, m1, 3))
    x[:, :, 0] = (t0 + dt * np.arange(m1))[None, :] / T
    x[:, :, 1] = (logS - math.log(S0)) / math.sqrt(xi0 * T)
    x[:, :, 2] = logV - math.log(xi0) if variance == "log" else V / xi0 - 1.0
    repeat = 1 if prefix is None else n // prefix.shape[0]
    if level == 2:
        from deepquant.rough.kernels import signature2

        return signature2(x, prefix, repeat)
    seg = _siglib().sig(x, level)
    if prefix is None:
        return seg
    return _siglib().sig_combine(np.ascontiguousarray(np.repeat(prefix, repeat, axis=0)), seg,
                                 3, level)


def _controls(S: np.ndarray, V: np.ndarray, t_e: float, dt: float, K: float, r: float,
              T: float, xi0: float, put: bool, european: bool) -> np.ndarray:
    """Control variates with conditional mean exactly 0 given F_{t_e}, shape (n, n_inner, c):
    the discounted stock increment over the period / K (log-Euler makes exp(-r t) S an exact
    martingale on the grid), and with ``european`` the sum over the period's steps of the
    one-step increments of the discounted European value to T with volatility sqrt(xi0) after
    the step, e^{-r t_{k+1}} P(S_{k+1}; T - t_{k+1}) - e^{-r t_k} P(S_k; mixed variance
    V_k dt + xi0 (T - t_{k+1})) (exact: S_{k+1} is lognormal with variance V_k dt given F_{t_k}).
    S (n, n_inner, m + 1) with ``european``, else only its two ends (n, n_inner, 2); V
    (n, n_inner, m + 1).
    """
    m = V.shape[2] - 1
    t_end = t_e + m * dt
    cols = [((math.exp(-r * t_end) * S[:, :, -1] - math.exp(-r * t_e) * S[:, :, 0]) / K)]
    if european:
        acc = np.zeros(S.shape[:2])
        for k in range(m):
            tk = t_e + k * dt
            rest = max(T - tk - dt, 0.0)
            after = bs_european(S[:, :, k + 1], K, r, math.sqrt(xi0), rest, put=put)
            vol_b = np.sqrt((V[:, :, k] * dt + xi0 * rest) / (dt + rest))
            before = bs_european(S[:, :, k], K, r, vol_b, dt + rest, put=put)
            acc += math.exp(-r * (tk + dt)) * after - math.exp(-r * tk) * before
        cols.append(acc / K)
    return np.stack(cols, axis=-1)


def _cv_coefficients(y: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Per outer path least-squares coefficients (n, c) of y (n, ni) on centred X (n, ni, c)."""
    Xc = X - X.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    G = np.einsum("nic,nid->ncd", Xc, Xc)
    b = np.einsum("nic,ni->nc", Xc, yc)
    d = np.einsum("ncc->nc", G)
    # controls are O(1) (scaled by K): a column with sample variance < 1e-10 is dead there
    live = d > 1e-10 * X.shape[1]
    s = np.where(live, np.sqrt(np.where(live, d, 1.0)), np.inf)  # dead columns get beta = 0
    Gs = G / (s[:, :, None] * s[:, None, :]) + 1e-8 * np.eye(G.shape[1])
    beta = np.linalg.solve(Gs, (b / s)[..., None])[..., 0] / s
    return np.where(live, beta, 0.0)


def subsim_pathwise(model: RoughBergomi, payoff: Payoff, outer: RoughPaths, Z: np.ndarray,
                    F: np.ndarray, value_fn: ValueFunction, *, basis: ExerciseBasis,
                    steps_per_date: int, n_inner: int, rng,
                    control: bool = True, european_control: bool = False,
                    n_inner_zero: int = 2**14,
                    return_martingale: bool = False, feature_stride: int = 1,
                    inner_refine: int = 1, inner_share: InnerShare | None = None,
                    payoff_stride: int | None = None):
    """max_j (Z_j - M_j) on the outer paths, shape (n,), for the sub-simulation martingale.

    Z, F : (n, J+1) exercise values and (n, J+1, F) features of the outer paths, column j at
    grid index j * steps_per_date (column 0 = t = 0, Z = -inf there if not an exercise date).
    ``n_inner`` inner paths per outer path and period (a power of 2, >= 4; with ``control``
    two independent halves); ``n_inner_zero`` inner paths for the first period, whose start
    (t = 0) all outer paths share. With ``return_martingale`` also returns M (n, J+1) and the
    conditional-mean estimates (n, J). ``feature_stride``: the signature features see the path
    every ``feature_stride`` steps (as ``lsm.exercise_features(stride=...)`` for ``F``; a
    divisor of ``steps_per_date``). ``inner_refine`` (a power of 2): the inner noise is drawn
    on a grid that many times finer and coarsened, so that runs on coupled grids
    (``deepquant.rough.coupling``) with the same ``rng`` share their inner Brownian paths;
    ``inner_share``: the finest grid hands its coarsened draws to the coarser ones through it
    (run the finest grid first). ``payoff_stride``: the payoff grid of a path-dependent
    payoff sees the path every ``payoff_stride`` steps (a divisor of ``steps_per_date``;
    default ``steps_per_date``): each inner path continues the outer path's payoff dates up to
    t_j with its own ones in the period, and its exercise value and features at t_{j+1} are
    those of the payoff truncated there (``exercise.truncated_payoff``).
    """
    if not isinstance(n_inner, int | np.integer) or isinstance(n_inner, bool) or n_inner < 4 \
            or n_inner & (n_inner - 1):
        raise ValueError(f"n_inner must be a power of 2 >= 4, got {n_inner!r}")
    if not isinstance(n_inner_zero, int | np.integer) or n_inner_zero < 4 \
            or n_inner_zero & (n_inner_zero - 1):
        raise ValueError(f"n_inner_zero must be a power of 2 >= 4, got {n_inner_zero!r}")
    if not isinstance(feature_stride, int | np.integer) or feature_stride < 1 \
            or steps_per_date % feature_stride:
        raise ValueError(f"feature_stride must be a positive divisor of steps_per_date="
                         f"{steps_per_date}, got {feature_stride!r}")
    if not isinstance(inner_refine, int | np.integer) or inner_refine < 1 \
            or inner_refine & (inner_refine - 1):
        raise ValueError(f"inner_refine must be a power of 2 >= 1, got {inner_refine!r}")
    if float(np.ptp(outer.S[:, 0])) != 0.0:
        raise ValueError("outer paths must share the state at t = 0")
    n, J1 = Z.shape
    J = J1 - 1
    n_steps = outer.n_steps
    T = float(outer.times[-1])
    m = steps_per_date
    if n_steps != J * m:
        raise ValueError(f"outer paths have {n_steps} steps, expected {J * m}")
    K = float(payoff.strike)
    put = is_put(payoff)
    path_dep = is_path_dependent(payoff)
    p = payoff_stride or m
    if not isinstance(p, int | np.integer) or p < 1 or m % p:
        raise ValueError(f"payoff_stride must be a positive divisor of steps_per_date={m}, "
                         f"got {payoff_stride!r}")
    X_outer = outer.S[:, ::p]  # the outer paths on the payoff grid
    r = outer.r
    xi0 = model.xi0
    varies = model.eta != 0.0
    L = signature_length(basis.sig_level) if basis.sig_level > 0 else 0
    dt = T / n_steps
    halves = 2 if control else 1
    seeds = as_seed_sequence(rng).spawn(J * halves)
    Vh = np.empty((n, J1))
    for j in range(1, J1):
        Vh[:, j] = value_fn.value(j, Z[:, j], F[:, j])
    cond = np.empty((n, J))  # E^_j[Vh_{j+1}]
    for j in range(J):
        e = j * m
        inner = _Inner(model, T, n_steps, e, m)
        disc_end = math.exp(-r * inner.t_end)
        # t = 0: every outer path has the same state, so E_0[Vh_1] is ONE number; estimate it
        # once with ``n_inner_zero`` inner paths (its error is then shared by the outer paths
        # of the batch, i.e. it moves the batch mean, and the batch-level intervals carry it;
        # measured at K = 120: per-path noise there made max_j (Z_j - M_j) = Z_0 on 17% of
        # the paths)
        at_zero = e == 0
        ni_j = max(n_inner, n_inner_zero) if at_zero else n_inner
        gens = [_InnerNoise(model, m, dt, ni_j // halves, seeds[j * halves + h],
                            refine=inner_refine, share=inner_share, key=(j, h))
                for h in range(halves)]
        block = max(1, 2**17 // ni_j)
        for lo in range(0, 1 if at_zero else n, block):
            rows = np.arange(lo, min(n, lo + block))
            hy, hf = inner.history(outer, rows)
            vals, ctrl = [], []
            for gen in gens:
                dW, dWp, cell = gen.draw(rows.size, lo)
                logS, V, fv, logV = inner.simulate_logs(outer.S[rows, e], outer.V[rows, e], hy,
                                                        hf, dW, dWp, cell)
                # S where it is used: every step for a path-dependent payoff or the European
                # controls, else the period's two ends
                S = np.exp(logS if path_dep or european_control else logS[:, :, [0, -1]])
                nb, ni = S.shape[:2]
                S_end = S[:, :, -1].reshape(-1)
                state = None
                if path_dep:
                    h_end, state = inner_exercise(payoff, X_outer[rows, : e // p + 1], S, p, K)
                    z_end = disc_end * h_end
                else:
                    z_end = disc_end * payoff.terminal(S_end, None)
                ctrl.append(_controls(S, V, outer.times[e], dt, K, r, T, xi0, put,
                                      european_control))
                if j + 1 == J:
                    vals.append(z_end.reshape(nb, ni))
                    continue
                sig = None
                if L:
                    c = feature_stride
                    # the outer signature at t_e continued by each inner segment (Chen)
                    sig = _segment_signature(logS.reshape(nb * ni, m + 1)[:, ::c],
                                             logV.reshape(nb * ni, m + 1)[:, ::c],
                                             V.reshape(nb * ni, m + 1)[:, ::c], model.S0, xi0,
                                             T, outer.times[e], c * dt, basis.sig_level,
                                             basis.variance,
                                             prefix=None if e == 0 else F[rows, j, -L:])
                feats = features_at(S_end, V[:, :, -1].reshape(-1), fv.reshape(-1), sig,
                                    inner.t_end, T, K, r, xi0, basis, put, varies,
                                    period=m * dt, state=state)
                vals.append(value_fn.value(j + 1, z_end, feats).reshape(nb, ni))
            if control:
                est = []
                for h in range(2):
                    o = 1 - h  # coefficients from the other (independent) half
                    beta = _cv_coefficients(vals[o], ctrl[o])
                    est.append((vals[h] - np.einsum("nic,nc->ni", ctrl[h], beta)).mean(axis=1))
                cond[rows, j] = 0.5 * (est[0] + est[1])
            else:
                cond[rows, j] = vals[0].mean(axis=1)
        if at_zero:
            cond[:, j] = cond[0, j]
    M = np.zeros((n, J1))
    M[:, 1:] = np.cumsum(Vh[:, 1:] - cond, axis=1)
    out = np.max(Z - M, axis=1)
    return (out, M, cond) if return_martingale else out
