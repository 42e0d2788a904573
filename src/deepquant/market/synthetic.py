"""Synthetic marginals from GBM, Merton jump-diffusion and Heston, exactly in convex order.

Every model works in forward moneyness X_t = S_t / F(0, t) (DESIGN §1): X_0 = 1 and X is a
martingale, so each marginal has mean 1. A model supplies *exact* undiscounted call prices
C_t(k) = E[(X_t - k)^+]:

- GBM: the Black (1976) formula, C = N(d1) - k N(d2), d1,2 = (-ln k +/- s^2/2)/s, s = sigma sqrt(t).
- Merton (1976): a Poisson mixture of Black prices,
  C = sum_n e^{-lam t} (lam t)^n / n! [F_n N(d1n) - k N(d2n)], with
  F_n = exp(-lam kappa_J t + n (mu_J + delta^2/2)), s_n^2 = sigma^2 t + n delta^2,
  kappa_J = exp(mu_J + delta^2/2) - 1 (compensated drift, so E[X_t] = 1).
- Heston (1993): the COS method of Fang & Oosterlee (2008, "A novel pricing method for European
  options based on Fourier-cosine series expansions", SIAM J. Sci. Comput. 31(2)) for put prices
  (cosine coefficients chi_n, psi_n of the put payoff on [a, ln k]), on the characteristic
  function of ln X_t in the "little Heston trap" form (Albrecher, Mayer, Schoutens & Tistaert
  2007, Wilmott Magazine); calls by put-call parity C = P + 1 - k. The cosine sums are evaluated
  for all dates and strikes at once as polynomials in z = e^{i pi (ln k - a)/(b - a)} (baby-step
  giant-step: one batched matrix product). Measured against QuantLib's AnalyticHestonEngine:
  below 6e-15 for the DESIGN §3 parameters, t from 1 day to 5 years.

Discretisation (``marginals_from_call_prices``). A law on the grid g_0 < ... < g_{M-1} is fixed by
its call prices at the grid points; its weights are the second differences of the call curve
(w_j = s_j - s_{j-1} with s_j the slope on [g_j, g_{j+1}], s_{-1} = -1, s_{M-1} = 0). For each
date we take the model calls at the grid points, raise them to the intrinsic value (1 - k)^+,
take the running maximum over dates (C_t is increasing in t analytically; this removes round-off
only), and replace the end points by C(g_0) = 1 - g_0 (no mass below the grid) and
C(g_{M-1}) = 0 (no mass above it). The discrete call curve is the greatest convex minorant of
those points (their lower convex hull). Consequences, all exact up to round-off:

- weights are >= 0, sum to 1 and have mean 1 (the hull passes through (g_0, 1 - g_0) and
  (g_{M-1}, 0) and lies above (1 - k)^+, so its end slopes are in [-1, 0]);
- the rows are in convex order on the grid: the hull is monotone in its data, and the data are
  increasing in t, so the discrete call curves increase in t at every k;
- inside the grid (away from the tails) the call prices at grid points equal the model's: the
  law is the model law with the mass of each cell [g_j, g_{j+1}] split linearly onto its end
  points (which preserves the mean and adds variance of about h^2/6 on a uniform grid of step h);
- tail mass: the mass below g_0 and above g_{M-1} is moved inside the grid, onto the first and
  last hull vertices, with the mean preserved (the law decreases in convex order). The call
  prices at grid points move down by at most P(g_0) + C(g_{M-1}), the model put price at the
  lowest and call price at the highest grid point, which the default grid makes negligible.

The default grid (``default_grid``) is uniform, contains 1 exactly, covers at least [0.5, 2.0],
and widens until the tail bound P(g_0) + C(g_{M-1}) at the longest date is below 1e-7.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Literal

import numpy as np
from scipy.special import gammaln

from deepquant.blackscholes import black_price
from deepquant.market.marginals import Marginals

__all__ = ["GBMParams", "MertonParams", "HestonParams", "MODELS", "ModelName", "default_grid",
           "marginals_from_call_prices", "gbm_marginals", "merton_marginals", "heston_marginals",
           "synthetic_marginals", "model_params", "tail_bounds", "TAIL_TOL"]

ModelName = Literal["gbm", "merton", "heston"]


def _check_float(name: str, value: float, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, hi_open: bool = False) -> float:
    """Validate a scalar parameter, raising a ValueError that names it and its value."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi:g}, got {value!r}")
    return v


def _as_times(times: Sequence[float] | np.ndarray | float) -> np.ndarray:
    t = np.atleast_1d(np.asarray(times, dtype=float))
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"times must be a non-empty 1-D sequence, got shape {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ValueError(f"times must be finite and >= 0, got {t}")
    if np.any(np.diff(t) <= 0):
        raise ValueError(f"times must be strictly increasing, got {t}")
    return t


def _as_strikes(strikes: np.ndarray | Sequence[float] | float, n_dates: int) -> np.ndarray:
    k = np.asarray(strikes, dtype=float)
    if k.ndim <= 1:
        k = np.broadcast_to(np.atleast_1d(k), (n_dates, np.atleast_1d(k).size))
    if k.ndim != 2 or k.shape[0] != n_dates:
        raise ValueError(
            f"strikes must have shape (K,) or ({n_dates}, K) for {n_dates} dates, got {k.shape}"
        )
    if not np.all(np.isfinite(k)):
        raise ValueError("strikes must be finite")
    return k


# ---------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class GBMParams:
    """Geometric Brownian motion in forward moneyness: X_t = exp(sigma W_t - sigma^2 t / 2).

    Parameters
    ----------
    sigma : float
        Volatility, > 0 (DESIGN §3 samples it in [0.15, 0.35]).
    """

    _: KW_ONLY
    sigma: float = 0.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_float("sigma", self.sigma, lo=0.0, lo_open=True))

    def log_cumulants(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of ln X_t, each of shape (N,)."""
        t = np.asarray(times, dtype=float)
        return -0.5 * self.sigma**2 * t, self.sigma**2 * t

    def call_prices(self, times, strikes) -> np.ndarray:
        """Black call prices E[(X_t - k)^+]; ``strikes`` (K,) or (N, K); returns (N, K)."""
        t = _as_times(times)
        k = _as_strikes(strikes, t.size)
        return black_price(1.0, k, self.sigma * np.sqrt(t)[:, None], 1.0)


@dataclass(frozen=True)
class MertonParams:
    """Merton (1976) jump-diffusion in forward moneyness with compensated drift.

    X_t = exp((-sigma^2/2 - lam kappa_J) t + sigma W_t + sum_{i <= N_t} J_i), N_t ~ Poisson(lam t),
    J_i ~ N(jump_mean, jump_std^2), kappa_J = E[e^J] - 1, so that E[X_t] = 1.

    Parameters
    ----------
    sigma : float
        Diffusion volatility, > 0.
    jump_intensity : float
        lam >= 0, jumps per year (DESIGN §3: 5).
    jump_mean, jump_std : float
        Mean and standard deviation (>= 0) of the log-jump J (DESIGN §3: -0.1 and 0.1).
    """

    _: KW_ONLY
    sigma: float = 0.15
    jump_intensity: float = 5.0
    jump_mean: float = -0.1
    jump_std: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", _check_float("sigma", self.sigma, lo=0.0, lo_open=True))
        object.__setattr__(self, "jump_intensity",
                           _check_float("jump_intensity", self.jump_intensity, lo=0.0, hi=1e3))
        object.__setattr__(self, "jump_mean",
                           _check_float("jump_mean", self.jump_mean, lo=-2.0, hi=2.0))
        object.__setattr__(self, "jump_std",
                           _check_float("jump_std", self.jump_std, lo=0.0, hi=2.0))

    @property
    def kappa_j(self) -> float:
        """E[e^J] - 1."""
        return float(np.expm1(self.jump_mean + 0.5 * self.jump_std**2))

    def log_cumulants(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and variance of ln X_t, each of shape (N,)."""
        t = np.asarray(times, dtype=float)
        lam = self.jump_intensity
        mean = (-0.5 * self.sigma**2 - lam * self.kappa_j + lam * self.jump_mean) * t
        var = (self.sigma**2 + lam * (self.jump_mean**2 + self.jump_std**2)) * t
        return mean, var

    def call_prices(self, times, strikes) -> np.ndarray:
        """Series (Poisson mixture of Black prices) call prices; returns shape (N, K).

        Term n is p_n [F_n N(d1n) - k N(d2n)] with 0 <= term <= p_n F_n, and p_n F_n is
        e^{-lam t (1 + kappa_J)} times a Poisson(lam t e^m) weight, m = mu_J + delta^2/2. The
        series runs to n_max = L + 12 sqrt(L) + 20 with L = lam t max(1, e^m), and the terms with
        p_n max(1, F_n) < 1e-18 are skipped (per date): truncation error below 1e-15.
        """
        t = _as_times(times)
        k = _as_strikes(strikes, t.size)
        m = self.jump_mean + 0.5 * self.jump_std**2
        lam_t = self.jump_intensity * t                                   # (N,)
        big = float(lam_t.max()) * max(1.0, float(np.exp(m)))
        n_max = int(np.ceil(big + 12.0 * np.sqrt(big) + 20.0))
        n = np.arange(n_max + 1, dtype=float)                             # (J,)
        safe = np.where(lam_t > 0, lam_t, 1.0)
        logp = n[None, :] * np.log(safe)[:, None] - lam_t[:, None] - gammaln(n + 1.0)[None, :]
        logp = np.where(lam_t[:, None] > 0, logp, np.where(n[None, :] == 0, 0.0, -np.inf))
        p = np.exp(logp)                                                  # (N, J)
        log_fn = -self.jump_intensity * self.kappa_j * t[:, None] + n[None, :] * m
        ti, ni = np.nonzero(p * np.maximum(1.0, np.exp(log_fn)) > 1e-18)  # live (date, n)
        log_fn = log_fn[ti, ni]
        var_n = self.sigma**2 * t[ti] + n[ni] * self.jump_std**2
        terms = p[ti, ni][:, None] * black_price(np.exp(log_fn)[:, None], k[ti],
                                                 np.sqrt(var_n)[:, None], 1.0)   # (pairs, K)
        out = np.zeros(k.shape)
        np.add.at(out, ti, terms)
        return out


@dataclass(frozen=True)
class HestonParams:
    """Heston (1993) stochastic volatility in forward moneyness.

    dX_t = sqrt(v_t) X_t dW_t,  dv_t = kappa (theta - v_t) dt + sigma_v sqrt(v_t) dB_t,
    d<W, B>_t = rho dt,  X_0 = 1,  v_0 = v0.

    Parameters
    ----------
    kappa, theta, sigma_v : float
        Mean reversion speed, long-run variance and volatility of variance, all > 0
        (DESIGN §3: 2, 0.04, 0.3).
    rho : float
        Correlation in [-1, 1] (DESIGN §3 samples it in [-0.7, 0]).
    v0 : float
        Initial variance, >= 0 (default theta).
    n_terms : int
        Maximum number of COS terms (default 1024); terms where |phi(u_n)| < ``tol`` at every
        date are dropped (phi decays at least exponentially, so only the tail is cut).
    width : float
        Half-width of the COS truncation interval in standard deviations of ln X_t (default 20:
        the left tail of Heston with rho < 0 is far from Gaussian; 12 gave 1e-10 errors at t = 1).
    tol : float
        Cut-off on |phi| for the adaptive number of terms (default 1e-16).
    """

    _: KW_ONLY
    kappa: float = 2.0
    theta: float = 0.04
    sigma_v: float = 0.3
    rho: float = -0.7
    v0: float = 0.04
    n_terms: int = 1024
    width: float = 20.0
    tol: float = 1e-16

    def __post_init__(self) -> None:
        for name in ("kappa", "theta", "sigma_v"):
            object.__setattr__(self, name,
                               _check_float(name, getattr(self, name), lo=0.0, lo_open=True))
        object.__setattr__(self, "rho", _check_float("rho", self.rho, lo=-1.0, hi=1.0))
        object.__setattr__(self, "v0", _check_float("v0", self.v0, lo=0.0))
        object.__setattr__(self, "width",
                           _check_float("width", self.width, lo=4.0, hi=100.0))
        object.__setattr__(self, "tol", _check_float("tol", self.tol, lo=0.0, hi=1e-3))
        if isinstance(self.n_terms, bool) or not isinstance(self.n_terms, int | np.integer) \
                or not 16 <= int(self.n_terms) <= 1 << 16:
            raise ValueError(f"n_terms must be an integer in [16, 65536], got {self.n_terms!r}")

    def integrated_variance(self, times: np.ndarray) -> np.ndarray:
        """E[int_0^t v_s ds] = theta t + (v0 - theta)(1 - e^{-kappa t}) / kappa, shape (N,)."""
        t = np.asarray(times, dtype=float)
        return self.theta * t + (self.v0 - self.theta) * -np.expm1(-self.kappa * t) / self.kappa

    def char_func(self, u: np.ndarray, times: np.ndarray) -> np.ndarray:
        """E[exp(i u ln X_t)] for real u, broadcasting ``u`` against ``times``.

        Little-trap form: with b = kappa - i rho sigma_v u, d = sqrt(b^2 + sigma_v^2 (i u + u^2)),
        g = (b - d)/(b + d),
        ln phi = kappa theta / sigma_v^2 [(b - d) t - 2 ln((1 - g e^{-dt}) / (1 - g))]
                 + v0 (b - d)(1 - e^{-dt}) / (sigma_v^2 (1 - g e^{-dt})).
        """
        u = np.asarray(u, dtype=complex)
        t = np.asarray(times, dtype=float)
        s2 = self.sigma_v**2
        b = self.kappa - 1j * self.rho * self.sigma_v * u
        d = np.sqrt(b * b + s2 * (1j * u + u * u))
        g = (b - d) / (b + d)
        e = np.exp(-d * t)
        big_c = self.kappa * self.theta / s2 * ((b - d) * t - 2.0 * np.log((1.0 - g * e) / (1.0 - g)))
        big_d = (b - d) / s2 * (1.0 - e) / (1.0 - g * e)
        return np.exp(big_c + big_d * self.v0)

    def log_cumulants(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean (-E[int v]/2, exact) and variance of ln X_t, each of shape (N,).

        The variance is -2 Re ln phi(h) / h^2 = c2 - c4 h^2 / 12 + ... with h = 0.1 / sqrt(w),
        w = E[int v]: the relative error is about kurtosis / 1200 (ample for setting the COS
        range and the default grid) and the round-off stays near 1e-14 even for tiny t.
        """
        t = np.asarray(times, dtype=float)
        w = self.integrated_variance(t)
        h = 0.1 / np.sqrt(np.maximum(w, 1e-300))
        var = -2.0 * np.real(np.log(self.char_func(h, t))) / h**2
        var = np.where(w > 0, var, 0.0)
        return -0.5 * w, np.maximum(var, 0.0)

    def call_prices(self, times, strikes) -> np.ndarray:
        """COS-method call prices E[(X_t - k)^+]; ``strikes`` (K,) or (N, K); returns (N, K).

        Per date, ln X_t is truncated to [a, b] = c1 -/+ width sqrt(c2); the put price is
        P(k) = sum'_{n<n_eff} Re[phi(u_n) e^{-i u_n a}] U_n(k), u_n = n pi / (b - a),
        U_n = 2/(b-a) [k psi_n(a, y) - chi_n(a, y)], y = clip(ln k, a, b), with the cosine
        integrals of Fang & Oosterlee (2008)
        chi_n(a, y) = int_a^y e^x cos(u_n (x - a)) dx
                    = [e^y (cos(u_n (y - a)) + u_n sin(u_n (y - a))) - e^a] / (1 + u_n^2),
        psi_n(a, y) = int_a^y cos(u_n (x - a)) dx = sin(u_n (y - a)) / u_n (y - a for n = 0);
        C = P + 1 - k. Terms with |phi(u_n)| < ``tol`` at every date are dropped. Dates t = 0 and
        strikes k <= 0 are exact ((1 - k)^+ and 1 - k).
        """
        t = _as_times(times)
        k = _as_strikes(strikes, t.size)
        out = np.maximum(1.0 - k, 0.0)
        live_t = t > 0
        if not np.any(live_t):
            return out
        tl = t[live_t]
        kl = k[live_t]
        c1, c2 = self.log_cumulants(tl)
        half = self.width * np.sqrt(np.maximum(c2, 1e-300))
        a = c1 - half
        span = 2.0 * half                                                  # b - a, (N,)
        # characteristic function in chunks of 64 terms, until |phi| < tol at every date
        # (phi decays at least exponentially in u, so only the negligible tail is cut)
        chunks = []
        for start in range(0, int(self.n_terms), 64):
            n_c = np.arange(start, min(start + 64, int(self.n_terms)), dtype=float)
            phi_c = self.char_func(n_c[None, :] * np.pi / span[:, None], tl[:, None])
            chunks.append(phi_c)
            if np.abs(phi_c[:, -1]).max() < self.tol and np.abs(phi_c).max(axis=0)[-8:].max() \
                    < self.tol:
                break
        phi = np.concatenate(chunks, axis=1)
        live_n = np.flatnonzero(np.abs(phi).max(axis=0) > self.tol)
        n_eff = int(live_n[-1]) + 1 if live_n.size else 1
        n = np.arange(n_eff, dtype=float)
        u = n[None, :] * np.pi / span[:, None]                             # (N, Nc)
        re = np.real(phi[:, :n_eff] * np.exp(-1j * u * a[:, None]))
        re[:, 0] *= 0.5                                                    # the primed sum
        # put price with y = clip(ln k, a, b); z = exp(i pi (y - a)/(b - a)) so that
        # cos/sin(u_n (y - a)) = Re/Im z^n:
        #   P = 2/(b-a) sum'_n re_n [k sin(.)/u_n + k (y - a) 1{n=0}
        #                            - (e^y cos(.) - e^a + u_n e^y sin(.)) / (1 + u_n^2)]
        pos = kl > 0
        y = np.clip(np.log(np.where(pos, kl, 1.0)), a[:, None], (a + span)[:, None])
        z = np.exp(1j * np.pi * (y - a[:, None]) / span[:, None])          # (N, K)
        inv_1pu2 = 1.0 / (1.0 + u * u)
        coef1 = np.where(n[None, :] > 0, re / np.where(u > 0, u, 1.0), 0.0)  # Im -> k sin/u_n
        coef2 = re * inv_1pu2 * (1.0 - 1j * u)                             # Re -> e^y (cos + u sin)
        # sum_n coef_n z^n by baby-step giant-step: n = q B + r, z^n = (z^B)^q z^r, so that
        # sum_q (z^B)^q [sum_r coef_{qB+r} z^r] is one batched matrix product (N, Q, B) @ (N, B, K)
        n_b = int(np.ceil(np.sqrt(n_eff)))
        n_q = -(-n_eff // n_b)
        coefs = np.zeros((2, tl.size, n_q * n_b), dtype=complex)
        coefs[0, :, :n_eff] = coef1
        coefs[1, :, :n_eff] = coef2
        powers_r = np.ones((tl.size, n_b, z.shape[1]), dtype=complex)      # z^r, r < B
        if n_b > 1:
            powers_r[:, 1:] = np.cumprod(np.broadcast_to(z[:, None, :], (tl.size, n_b - 1,
                                                                         z.shape[1])), axis=1)
        z_b = powers_r[:, -1] * z                                          # z^B
        powers_q = np.ones((tl.size, n_q, z.shape[1]), dtype=complex)      # z^{qB}, q < Q
        if n_q > 1:
            powers_q[:, 1:] = np.cumprod(np.broadcast_to(z_b[:, None, :], (tl.size, n_q - 1,
                                                                           z.shape[1])), axis=1)
        inner = np.matmul(coefs.reshape(2, tl.size, n_q, n_b), powers_r)   # (2, N, Q, K)
        acc = np.einsum("cnqk,nqk->cnk", inner, powers_q)                  # (2, N, K)
        s4 = (re * inv_1pu2).sum(axis=1)[:, None]
        put = (2.0 / span[:, None]) * (
            kl * (acc[0].imag + re[:, :1] * (y - a[:, None])) - np.exp(y) * acc[1].real
            + np.exp(a)[:, None] * s4
        )
        calls = np.where(pos, put + 1.0 - kl, 1.0 - kl)
        out[live_t] = np.maximum(calls, np.maximum(1.0 - kl, 0.0))
        return out


MODELS: dict[str, type] = {"gbm": GBMParams, "merton": MertonParams, "heston": HestonParams}

ModelParams = GBMParams | MertonParams | HestonParams


def model_params(model: ModelName | str, **params) -> ModelParams:
    """The parameter dataclass of ``model`` ('gbm', 'merton' or 'heston') built from ``params``."""
    key = str(model).lower()
    if key not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {model!r}")
    try:
        return MODELS[key](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for model {key!r}: {exc}") from None


# ---------------------------------------------------------------------------------- grid
def default_grid(params: ModelParams, t_max: float, size: int = 150, *,
                 tail: float = 1e-7, n_sd: float = 5.0, lo: float = 0.5,
                 hi: float = 2.0, max_upper: float = 10.0) -> np.ndarray:
    """Uniform moneyness grid containing 1 exactly, covering [lo, hi] and the model's tails.

    The range starts at [min(lo, e^{c1 - n_sd sqrt(c2)}), max(hi, e^{c1 + n_sd sqrt(c2)})], with
    c1, c2 the mean and variance of ln X_{t_max}, and each end is pushed out (by a factor
    e^{-/+ sqrt(c2)/2} per step) until the model put price at the lower end and the call price at
    the upper end at t_max are each below ``tail / 2``. Their sum bounds the change of every call
    price made by moving the tail mass inside the grid (module docstring). The upper end is capped
    at ``max_upper`` (a uniform grid cannot follow a very long right tail; beyond the cap the tail
    mass is still moved inside exactly, but the bound may exceed ``tail``). The step is
    h = range / (size - 1) and the grid is shifted (by less than h) so that 1 is a grid point.

    Returns
    -------
    ndarray, shape (size,)
    """
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 3:
        raise ValueError(f"grid_size must be an integer >= 3, got {size!r}")
    t_max = _check_float("t_max", t_max, lo=0.0)
    tail = _check_float("tail", tail, lo=0.0, lo_open=True)
    n_sd = _check_float("n_sd", n_sd, lo=0.0)
    lo = _check_float("lo", lo, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    hi = _check_float("hi", hi, lo=1.0, lo_open=True)
    max_upper = _check_float("max_upper", max_upper, lo=hi)
    c1, c2 = params.log_cumulants(np.array([t_max]))
    sd = float(np.sqrt(c2[0]))
    lower = min(lo, float(np.exp(c1[0] - n_sd * sd)))
    upper = min(max(hi, float(np.exp(c1[0] + n_sd * sd))), max_upper)
    if t_max > 0:
        step = np.exp(0.5 * min(max(sd, 1e-3), 2.0))  # capped: no overflow for huge sd
        for _ in range(200):
            c = params.call_prices([t_max], np.array([lower, upper]))[0]
            put_lo, call_hi = c[0] - (1.0 - lower), c[1]
            if put_lo <= 0.5 * tail and call_hi <= 0.5 * tail:
                break
            if put_lo > 0.5 * tail:
                lower /= step
            if call_hi > 0.5 * tail and upper < max_upper:
                upper = min(upper * step, max_upper)
            elif put_lo <= 0.5 * tail:
                break
    h = (upper - lower) / (size - 1)
    # index of the point 1, keeping grid[0] = 1 - i_one h > 0 (the models live on (0, inf))
    i_one = min(int(np.clip(round((1.0 - lower) / h), 1, size - 2)), int(np.ceil(1.0 / h)) - 1)
    if i_one < 1:
        raise ValueError(
            f"grid_size={size} is too small for the range [{lower:.4g}, {upper:.4g}]: step "
            f"{h:.4g} >= 1 leaves no positive grid point below 1; use a larger grid_size"
        )
    return 1.0 + h * (np.arange(size) - i_one)


TAIL_TOL = 1e-3
"""Largest tail bound (``tail_bounds``, a call price in forward-moneyness units) of a law that
counts as held by its grid: beyond it the command line warns (``cli.output.tail_warnings``) and
a scenario sweep fails (``deepquant.neural.sweep``). Measured on the shipped network's grid
[0.497, 1.997] over its training families (DESIGN §3, T <= 0.5): GBM sigma = 0.35 gives 3.9e-4,
Merton 7.0e-4, Heston 2.0e-5; the default sweep (vol 0.2, T = 0.5, bumps 10%) 2e-7. Beyond it:
vol 0.3 at T = 1 gives 2.2e-3, vol 1 at T = 0.5 0.12, vol 50 or T = 1e6 about 1.5 (every law
squeezed onto the two end points)."""


def tail_bounds(params: ModelParams, times, grid: np.ndarray) -> np.ndarray:
    """P(g_0) + C(g_{M-1}) at each date, shape (N,): the most a call price moves when the mass
    outside ``grid`` is moved inside it (module docstring)."""
    g = np.asarray(grid, dtype=float)
    c = params.call_prices(times, np.array([g[0], g[-1]]))
    return c[:, 0] - (1.0 - g[0]) + c[:, 1]


# ---------------------------------------------------------------------------------- discretisation
def _lower_hull(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Vertex mask of the lower convex hull of (x, y[t]) for every row t; shape (N, M).

    Points lying on or above the chord between their active neighbours are removed all at once
    (such a point is never a hull vertex of the current set, so simultaneous removal is safe),
    until none is left. The end points are always vertices.
    """
    n, m = y.shape
    active = np.ones((n, m), dtype=bool)
    idx = np.broadcast_to(np.arange(m), (n, m))
    rows = np.arange(n)[:, None]
    for _ in range(m):
        prev_incl = np.maximum.accumulate(np.where(active, idx, -1), axis=1)
        next_incl = np.minimum.accumulate(np.where(active, idx, m)[:, ::-1], axis=1)[:, ::-1]
        prev = np.concatenate([np.full((n, 1), -1), prev_incl[:, :-1]], axis=1)
        nxt = np.concatenate([next_incl[:, 1:], np.full((n, 1), m)], axis=1)
        inner = active & (prev >= 0) & (nxt < m)
        p = np.where(inner, prev, 0)
        q = np.where(inner, nxt, 0)
        xp, xq, yp, yq = x[p], x[q], y[rows, p], y[rows, q]
        # remove j if (y_j - y_p)(x_q - x_p) >= (y_q - y_p)(x_j - x_p)
        above = (y - yp) * (xq - xp) >= (yq - yp) * (x[None, :] - xp)
        drop = inner & above
        if not drop.any():
            break
        active &= ~drop
    return active


def marginals_from_call_prices(
    grid: np.ndarray, calls: np.ndarray, times: np.ndarray | None = None, **options
) -> Marginals:
    """Martingale-preserving discretisation of call curves onto a grid (see the module docstring).

    Parameters
    ----------
    grid : array_like, shape (M,)
        Strictly increasing moneyness grid with grid[0] < 1 < grid[-1].
    calls : array_like, shape (N+1, M)
        Undiscounted call prices E[(X_t - k)^+] at the grid points of laws with mean 1 that
        increase in convex order (round-off size violations are removed).
    times : array_like, shape (N+1,), optional
        Dates passed to ``Marginals``.
    **options
        Validation options of ``Marginals``.

    Returns
    -------
    Marginals
        Rows with weights = second differences of the greatest convex minorants of the call
        curves with C(g_0) = 1 - g_0 and C(g_{M-1}) = 0: weights >= 0, sums and means 1 and
        consecutive rows in convex order, up to round-off (about 1e-15).
    """
    x = np.asarray(grid, dtype=float)
    c = np.atleast_2d(np.asarray(calls, dtype=float))
    if x.ndim != 1 or x.size < 3:
        raise ValueError(f"grid must be 1-D with at least 3 points, got shape {x.shape}")
    if not np.all(np.isfinite(x)) or np.any(np.diff(x) <= 0):
        raise ValueError("grid must be finite and strictly increasing")
    if not x[0] < 1.0 < x[-1]:
        raise ValueError(
            f"grid must straddle the mean 1 (grid[0] < 1 < grid[-1]), got [{x[0]:.6g}, {x[-1]:.6g}]"
        )
    if c.ndim != 2 or c.shape[1] != x.size:
        raise ValueError(f"calls must have shape (N+1, {x.size}), got {c.shape}")
    if not np.all(np.isfinite(c)):
        t, j = map(int, np.argwhere(~np.isfinite(c))[0])
        raise ValueError(f"calls at date {t}, strike {x[j]:.6g} is {c[t, j]} (not finite)")
    y = np.maximum(c, np.maximum(1.0 - x, 0.0)[None, :])
    y = np.maximum.accumulate(y, axis=0)
    y[:, 0] = 1.0 - x[0]
    y[:, -1] = 0.0
    active = _lower_hull(x, y)
    n, m = y.shape
    idx = np.broadcast_to(np.arange(m), (n, m))
    rows = np.arange(n)[:, None]
    prev_incl = np.maximum.accumulate(np.where(active, idx, -1), axis=1)
    next_incl = np.minimum.accumulate(np.where(active, idx, m)[:, ::-1], axis=1)[:, ::-1]
    prev = np.concatenate([np.zeros((n, 1), dtype=int), prev_incl[:, :-1]], axis=1)
    nxt = np.concatenate([next_incl[:, 1:], np.full((n, 1), m - 1)], axis=1)
    slope_left = np.where(idx > 0, (y - y[rows, prev]) / np.where(idx > 0, x - x[prev], 1.0), -1.0)
    slope_right = np.where(idx < m - 1,
                           (y[rows, nxt] - y) / np.where(idx < m - 1, x[nxt] - x, 1.0), 0.0)
    w = np.where(active, np.maximum(slope_right - slope_left, 0.0), 0.0)
    w /= w.sum(axis=1, keepdims=True)
    return Marginals(x, w, times, **options)


# ---------------------------------------------------------------------------------- entry points
def _build(params: ModelParams, times, grid, grid_size: int, options: dict) -> Marginals:
    t = _as_times(times)
    if grid is None:
        g = default_grid(params, float(t[-1]), grid_size)
    else:
        g = np.asarray(grid, dtype=float)
    calls = params.call_prices(t, g)
    return marginals_from_call_prices(g, calls, t, **options)


def gbm_marginals(times, grid=None, *, grid_size: int = 150, sigma: float = 0.2,
                  **options) -> Marginals:
    """GBM marginals at ``times`` (shape (N+1,)) on ``grid`` (default: ``default_grid``).

    Black prices at the grid points, discretised by ``marginals_from_call_prices``; ``options``
    go to ``Marginals`` (validation tolerances). Returns weights of shape (N+1, M).
    """
    return _build(GBMParams(sigma=sigma), times, grid, grid_size, options)


def merton_marginals(times, grid=None, *, grid_size: int = 150, sigma: float = 0.15,
                     jump_intensity: float = 5.0, jump_mean: float = -0.1, jump_std: float = 0.1,
                     **options) -> Marginals:
    """Merton jump-diffusion marginals (series prices; see ``MertonParams``)."""
    params = MertonParams(sigma=sigma, jump_intensity=jump_intensity, jump_mean=jump_mean,
                          jump_std=jump_std)
    return _build(params, times, grid, grid_size, options)


def heston_marginals(times, grid=None, *, grid_size: int = 150, kappa: float = 2.0,
                     theta: float = 0.04, sigma_v: float = 0.3, rho: float = -0.7,
                     v0: float = 0.04, n_terms: int = 1024, **options) -> Marginals:
    """Heston marginals (COS prices; see ``HestonParams``)."""
    params = HestonParams(kappa=kappa, theta=theta, sigma_v=sigma_v, rho=rho, v0=v0,
                          n_terms=n_terms)
    return _build(params, times, grid, grid_size, options)


def synthetic_marginals(model: ModelName | str, times, grid=None, *, grid_size: int = 150,
                        **params) -> Marginals:
    """Dispatch to ``gbm_marginals``, ``merton_marginals`` or ``heston_marginals``.

    ``params`` are the model's parameters (see ``GBMParams``, ``MertonParams``, ``HestonParams``).
    """
    p = model_params(model, **params)
    return _build(p, times, grid, grid_size, {})
