"""Longstaff–Schwartz lower bound with polynomial and signature regression bases.

Problem: a Bermudan option with exercise value h_j (a payoff of ``deepquant.payoffs`` truncated at
the exercise date: g(S_{t_j}) for a put or call, the running average / max / min / barrier flag
for a path-dependent payoff; ``deepquant.rough.exercise``) at the exercise dates t_0 = 0
(optional), t_1, ..., t_J = T, which are grid indices ``dates = (e_0, ..., e_J)`` of the
simulation grid. Z_j = exp(-r t_j) h_j is the discounted exercise value, shape (n_paths, J+1).

Regression (Longstaff & Schwartz 2001, RFS 14(1), §1): backward in j, regress the realised
discounted cash flow of the current policy on the basis functions phi_j(path up to t_j) over the
in-the-money paths (Z_j > 0), by least squares on standardized columns; exercise where
Z_j >= the fitted continuation. At t_0 every path has the same state, so the continuation is
the mean cash flow. The fitted policy is then applied to INDEPENDENT pricing paths, so its value
there is an unbiased estimate of a lower bound (any stopping rule is sub-optimal).

Basis (``ExerciseBasis``): all monomials s^a v^b with a + b <= ``poly_degree`` in s = S/K and
v = V/xi0; the truncated signature of (t, log S, V) up to t_j (``deepquant.rough.signature``) to
level ``sig_level``; optionally the Black–Scholes European value (K e^{-r tau} N(-d2) - S N(-d1))/K
with tau = T - t_j and volatility sqrt(xi0) (a smooth proxy for the continuation value); and the
conditional forward variance xi_{t_j}(u) with the European value at that variance; for a
path-dependent payoff its statistic A_j at the date (``exercise.state_columns``), so that the
continuation value depends on it.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass, field

import numpy as np

from deepquant.blackscholes import bs_price
from deepquant.payoffs import Payoff
from deepquant.rough.exercise import (
    check_exercise_payoff,
    is_path_dependent,
    is_put,
    payoff_grid_states,
    state_columns,
)
from deepquant.rough.rbergomi import RoughBergomi, RoughPaths
from deepquant.rough.signature import lifted_path, signatures_at

__all__ = [
    "ExerciseBasis",
    "bs_european",
    "exercise_values",
    "exercise_features",
    "payoff_states",
    "LSMPolicy",
    "fit_lsm",
    "check_exercise_payoff",
]


def bs_european(S: np.ndarray, K: float, r: float, sigma, tau, *, put: bool = True,
                log_s: np.ndarray | None = None) -> np.ndarray:
    """Black–Scholes European value (broadcasting); tau = 0 gives the intrinsic value.

    ``deepquant.blackscholes.bs_price`` in the argument order of the feature code here; where
    every sigma sqrt(tau) > 0 (the features' hot path) the put or call alone is evaluated
    (two normal CDFs instead of four, the same formula). ``log_s``: log S when the caller has
    it (several values on the same spots take one log).
    """
    sd = np.sqrt(np.asarray(tau, dtype=float)) * sigma
    if not np.all(sd > 0) or not np.all(np.asarray(K) > 0):
        return bs_price(S, K, sigma, tau, rate=r, is_call=not put)
    disc_k = np.exp(-r * np.asarray(tau, dtype=float)) * K
    # log S - log(K e^{-r tau}): one log per path when S is (n, 1) against several strikes;
    # d1 = (log S - log(K e^{-r tau})) / sd + sd / 2, d2 = d1 - sd in one compiled pass
    from deepquant.rough.kernels import bs_put_call

    return bs_put_call(S, np.log(S) if log_s is None else log_s, disc_k, np.log(disc_k), sd,
                       put=put)


def payoff_states(paths: RoughPaths, payoff: Payoff, dates,
                  payoff_stride: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(h, A), each (n_paths, len(dates)): the payoff truncated at each grid index in ``dates``
    and its statistic there (``exercise.truncated_payoff``), on the payoff grid that sees the
    path every ``payoff_stride`` simulation steps (default: the spacing of ``dates``; every
    date must be a multiple of it)."""
    idx = np.asarray(dates, dtype=int)
    p = payoff_stride or (int(idx[-1] - idx[-2]) if idx.size > 1 else int(idx[-1]) or 1)
    if p < 1 or np.any(idx % p):
        raise ValueError(f"the exercise dates {idx.tolist()} must be multiples of the payoff "
                         f"grid's stride {p}")
    return payoff_grid_states(paths.S[:, ::p], payoff, idx // p)


def exercise_values(paths: RoughPaths, payoff: Payoff, dates,
                    payoff_stride: int | None = None) -> np.ndarray:
    """Discounted exercise values Z_j = exp(-r t_j) h_j, shape (n_paths, len(dates)); h_j the
    payoff truncated at t_j (``payoff_states``; g(S_{t_j}) for a put or call)."""
    idx = np.asarray(dates, dtype=int)
    if is_path_dependent(payoff):
        g = payoff_states(paths, payoff, idx, payoff_stride)[0]
    else:
        g = payoff.terminal(paths.S[:, idx], None)
    return np.exp(-paths.r * paths.times[idx])[None, :] * g


@dataclass(frozen=True)
class ExerciseBasis:
    """Regression basis at the exercise dates (see the module docstring).

    ``poly_degree`` >= 0 (total degree in s = S/K and v = V/xi0), ``sig_level`` >= 0
    (0 = no signature terms), ``bs_feature``: add the Black–Scholes European value,
    ``variance``: the signature's variance channel, "log" or "level";
    ``forward_variance``: add xi_{t_j}(u)/xi0 (``RoughBergomi.forward_variance``, u halfway to
    T) and the European value with that variance (only when V is not constant);
    ``european_periods``: for each k, the European value expiring k exercise periods ahead
    (capped at T), with volatility sqrt(xi_{t_j}(u)) (sqrt(xi0) when V is constant): short
    expiries carry the curvature of the continuation value near the exercise boundary.
    """

    _: KW_ONLY
    poly_degree: int = 2
    sig_level: int = 2
    bs_feature: bool = True
    variance: str = "log"
    forward_variance: bool = True
    european_periods: tuple = ()

    def __post_init__(self) -> None:
        if not isinstance(self.european_periods, tuple) or any(
                not isinstance(k, int) or isinstance(k, bool) or k < 1
                for k in self.european_periods):
            raise ValueError(f"european_periods must be a tuple of integers >= 1, got "
                             f"{self.european_periods!r}")
        if not isinstance(self.poly_degree, int) or self.poly_degree < 0:
            raise ValueError(f"poly_degree must be an integer >= 0, got {self.poly_degree!r}")
        if not isinstance(self.sig_level, int) or not 0 <= self.sig_level <= 5:
            raise ValueError(f"sig_level must be an integer in 0..5, got {self.sig_level!r}")
        if self.variance not in ("log", "level"):
            raise ValueError(f"variance must be 'log' or 'level', got {self.variance!r}")


def exercise_features(paths: RoughPaths, model: RoughBergomi, payoff: Payoff, dates,
                      basis: ExerciseBasis, *, stride: int = 1,
                      payoff_stride: int | None = None) -> np.ndarray:
    """Basis functions at each exercise date, shape (n_paths, len(dates), F), no constant column
    (the regression adds it).

    ``stride``: the signature is that of the path observed every ``stride`` simulation steps
    (a coarser feature grid; every date must be a multiple of it). Any adapted feature map
    keeps the bounds valid; a coarser one only costs tightness, and it is cheaper.
    ``payoff_stride``: the payoff grid of a path-dependent payoff (``payoff_states``).
    """
    xi0 = model.xi0
    idx = np.asarray(dates, dtype=int)
    K = float(payoff.strike)
    T = float(paths.times[-1])
    s = paths.S[:, idx] / K
    v = paths.V[:, idx] / xi0
    cols = []
    varies = float(np.ptp(paths.V)) > 0.0
    for total in range(1, basis.poly_degree + 1):
        for b in range(total + 1):
            if b and not varies:
                continue
            cols.append(s ** (total - b) * v**b)
    S = paths.S[:, idx]
    log_s = np.log(S) if basis.bs_feature or basis.forward_variance or basis.european_periods \
        else None
    if basis.bs_feature:
        tau = T - paths.times[idx]
        cols.append(bs_european(S, K, paths.r, math.sqrt(xi0), tau[None, :],
                                put=is_put(payoff), log_s=log_s) / K)
    if basis.forward_variance and varies:
        # xi_{t_j}(u) at the middle of the remaining life, and the European value with it
        u = paths.times + 0.5 * (T - paths.times)
        fv = model.forward_variance(paths, u, columns=idx)
        cols.append(fv / xi0)
        cols.append(bs_european(S, K, paths.r, np.sqrt(fv), (T - paths.times[idx])[None, :],
                                put=is_put(payoff), log_s=log_s) / K)
    if basis.european_periods:
        period = float(paths.times[idx[-1]] - paths.times[idx[-2]]) if len(idx) > 1 else T
        vol = np.sqrt(fv) if (basis.forward_variance and varies) else math.sqrt(xi0)
        for k in basis.european_periods:
            tau_k = np.minimum(k * period, T - paths.times[idx])[None, :]
            cols.append(bs_european(S, K, paths.r, vol, tau_k, put=is_put(payoff),
                                    log_s=log_s) / K)
    if is_path_dependent(payoff):
        cols += state_columns(payoff, s, payoff_states(paths, payoff, idx, payoff_stride)[1])
    feats = [np.stack(cols, axis=-1)] if cols else []
    if basis.sig_level > 0:
        if stride < 1 or np.any(idx % stride):
            raise ValueError(f"the exercise dates {idx.tolist()} must be multiples of the "
                             f"feature stride {stride}")
        x = lifted_path(paths, xi0, variance=basis.variance, stride=stride)
        feats.append(signatures_at(x, basis.sig_level, idx // stride))
    if not feats:
        return np.zeros((paths.n_paths, len(idx), 0))
    return np.concatenate(feats, axis=-1)


@dataclass(frozen=True)
class LSMPolicy:
    """A fitted exercise policy: continuation_j(x) = c_j + ((x - mean_j) / scale_j) . beta_j.

    coef : list of J+1 arrays (F+1,) or None (None at dates without a regression: the last
        date, date 0, dates with too few in-the-money paths -> never exercise before T there)
    mean, scale : lists of arrays (F,) (column standardisation per date)
    exercise_at_zero : bool    decision at t_0 (all paths share the state there)
    continuation_zero : float  regression-path estimate of the value of continuing at t_0
    """

    coef: list
    mean: list
    scale: list
    exercise_at_zero: bool
    continuation_zero: float
    has_zero_date: bool = True
    n_regression: int = 0
    in_sample_value: float = float("nan")
    rank: list = field(default_factory=list)

    def continuation(self, j: int, feats: np.ndarray) -> np.ndarray:
        """Fitted continuation at date j for features (n, F), shape (n,)."""
        c = self.coef[j]
        if c is None:
            return np.full(feats.shape[0], np.inf)
        return c[0] + ((feats - self.mean[j]) / self.scale[j]) @ c[1:]

    def stopping_index(self, Z: np.ndarray, feats: np.ndarray, start: int = 0) -> np.ndarray:
        """First date index j >= start at which the policy exercises (J if never), shape (n,).

        At j = J the option is exercised (Z_J >= 0 is paid). Date 0 uses ``exercise_at_zero``.
        """
        n, J1 = Z.shape
        tau = np.full(n, J1 - 1)
        alive = np.ones(n, dtype=bool)
        for j in range(start, J1 - 1):
            if j == 0 and self.has_zero_date:
                if self.exercise_at_zero and Z[0, 0] > 0:
                    tau[:] = 0
                    return tau
                continue
            cand = alive & (Z[:, j] > 0)
            if not cand.any() or self.coef[j] is None:
                continue
            ex = np.zeros(n, dtype=bool)
            ex[cand] = Z[cand, j] >= self.continuation(j, feats[cand, j])
            tau[ex] = j
            alive &= ~ex
        return tau

    def cashflows(self, Z: np.ndarray, feats: np.ndarray, start: int = 0) -> np.ndarray:
        """Discounted cash flow Z_tau of the policy started at date ``start``, shape (n,)."""
        tau = self.stopping_index(Z, feats, start)
        return Z[np.arange(Z.shape[0]), tau]


def _lstsq(X: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray,
                                                              np.ndarray, int]:
    mean = X.mean(axis=0)
    scale = X.std(axis=0)
    scale = np.where(scale > 1e-12 * (1.0 + np.abs(mean)), scale, np.inf)
    Xs = (X - mean) / scale
    A = np.concatenate([np.ones((X.shape[0], 1)), Xs], axis=1)
    G = A.T @ A
    G[1:, 1:] += ridge * X.shape[0] * np.eye(Xs.shape[1])
    coef, *_ = np.linalg.lstsq(G, A.T @ y, rcond=1e-12)
    rank = int(np.isfinite(scale).sum()) + 1
    return coef, mean, scale, rank


def fit_lsm(Z: np.ndarray, feats: np.ndarray, *, has_zero_date: bool = True,
            ridge: float = 1e-8, min_itm: int = 16,
            martingale: np.ndarray | None = None) -> LSMPolicy:
    """Fit the Longstaff–Schwartz policy on regression paths.

    Parameters
    ----------
    Z : (n, J+1) discounted exercise values at the exercise dates (date 0 first if
        ``has_zero_date``).
    feats : (n, J+1, F) basis functions at the dates.
    ridge : Tikhonov weight on the standardized coefficients (per path).
    martingale : optional (n, J+1) values M_{t_j} of a martingale with M_0 = 0 (e.g. the
        least-squares signature martingale): the regression target at date j becomes
        Z_tau - (M_tau - M_j) instead of Z_tau. It has the same conditional mean
        E_j[Z_tau] (optional stopping) and, for a martingale that tracks the value process,
        a much smaller variance, so the continuation regressions are less noisy.
    """
    Z = np.asarray(Z, dtype=float)
    n, J1 = Z.shape
    coef: list = [None] * J1
    means: list = [None] * J1
    scales: list = [None] * J1
    ranks: list = [0] * J1
    cash = Z[:, -1].copy()
    if martingale is not None:
        martingale = np.asarray(martingale, dtype=float)
        if martingale.shape != Z.shape:
            raise ValueError(f"martingale must have shape {Z.shape}, got {martingale.shape}")
        mtau = martingale[:, -1].copy()
    first = 1 if has_zero_date else 0
    for j in range(J1 - 2, first - 1, -1):
        itm = Z[:, j] > 0
        if itm.sum() < max(min_itm, feats.shape[2] + 2):
            continue
        target = cash[itm]
        if martingale is not None:
            target = target - mtau[itm] + martingale[itm, j]
        c, m, s, rk = _lstsq(feats[itm, j], target, ridge)
        coef[j], means[j], scales[j], ranks[j] = c, m, s, rk
        cont = c[0] + ((feats[itm, j] - m) / s) @ c[1:]
        ex = Z[itm, j] >= cont
        idx = np.flatnonzero(itm)[ex]
        cash[idx] = Z[idx, j]
        if martingale is not None:
            mtau[idx] = martingale[idx, j]
    cont0 = float(cash.mean())
    ex0 = bool(has_zero_date and Z[0, 0] > 0 and Z[0, 0] >= cont0)
    value = float(Z[0, 0]) if ex0 else cont0
    return LSMPolicy(coef=coef, mean=means, scale=scales, exercise_at_zero=ex0,
                     continuation_zero=cont0, has_zero_date=has_zero_date, n_regression=n,
                     in_sample_value=value, rank=ranks)
