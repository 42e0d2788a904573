"""The Heston model beside rough Bergomi: paths for the Bermudan engine and Fourier European
prices.

Model (Heston 1993, Rev. Financial Studies 6(2))::

    dS_t / S_t = r dt + sqrt(V_t) dB_t,     B = rho W + sqrt(1 - rho^2) W_perp,
    dV_t = kappa (theta - V_t) dt + sigma sqrt(V_t) dW_t,   V_0 = v0.

Simulation on t_i = i dt by full-truncation Euler for the variance (Lord, Koekkoek & van Dijk
2010, Quantitative Finance 10(2), "full truncation": V^+ in drift and diffusion) and log-Euler
with the left-point variance for the price, so that, as for ``RoughBergomi``, S_{i+1} given
F_{t_i} is lognormal and exp(-r t) S_t is an exact martingale on the grid::

    V_{i+1} = V_i + kappa (theta - V_i^+) dt + sigma sqrt(V_i^+) dW_{i+1},
    log S_{i+1} = log S_i + (r - V_i^+ / 2) dt + sqrt(V_i^+) dB_{i+1}.

The driver increments are those of ``deepquant.rough.qmc.driver_increments`` (RQMC, Brownian
bridge, antithetics); the paths are a ``RoughPaths`` with Y = 0 and cell = 0, so the Bermudan
engine's features, LSM and signature dual run unchanged (the sub-simulation dual is specific
to the rough Bergomi scheme).

European prices by Fourier inversion (Gil-Pelaez form of Heston 1993, eq. (17)-(18)) with the
"little Heston trap" characteristic function of Albrecher, Mayer, Schoutens & Tistaert 2007
(Wilmott Magazine, Jan., eq. (2)), which is continuous in the integration variable:

    call = S0 P1 - K e^{-rT} P2,   P_j = 1/2 + 1/pi int_0^inf Re[e^{-iu ln K} f_j(u) / (iu)] du,

f_2(u) = phi(u), f_1(u) = phi(u - i) / phi(-i), phi the characteristic function of ln S_T;
the put by put-call parity. Checked against QuantLib's ``AnalyticHestonEngine`` in the tests.
The forward-variance feature is the model's exact conditional mean
E_t[V_u] = theta + (V_t - theta) e^{-kappa (u - t)}.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass

import numpy as np
from scipy.integrate import quad

from deepquant.rough.rbergomi import RoughPaths

__all__ = ["Heston"]


@dataclass(frozen=True)
class Heston:
    """Heston parameters (frozen, keyword-only, validated).

    v0 : initial variance > 0; kappa : mean reversion >= 0; theta : long-run variance > 0;
    sigma : vol of variance >= 0; rho : correlation in [-1, 1]; r : rate; S0 : spot > 0.
    """

    _: KW_ONLY
    v0: float = 0.04
    kappa: float = 1.5
    theta: float = 0.04
    sigma: float = 0.5
    rho: float = -0.7
    r: float = 0.05
    S0: float = 100.0

    def __post_init__(self) -> None:
        for name in ("v0", "kappa", "theta", "sigma", "rho", "r", "S0"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(
                    value, int | float | np.floating | np.integer) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        for name in ("v0", "theta", "S0"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("kappa", "sigma"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not -1.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must be in [-1, 1], got {self.rho}")

    @property
    def xi0(self) -> float:
        """Reference variance level of the engine's features (V / xi0): v0."""
        return self.v0

    @property
    def is_black_scholes(self) -> bool:
        return self.sigma == 0.0 and self.kappa * (self.theta - self.v0) == 0.0

    # ------------------------------------------------------------------ paths
    def paths_from_increments(self, dW: np.ndarray, dW_perp: np.ndarray, T: float
                              ) -> RoughPaths:
        """Full-truncation Euler / log-Euler paths from increments (n_paths, n) each."""
        dW = np.asarray(dW, dtype=float)
        dW_perp = np.asarray(dW_perp, dtype=float)
        n_paths, n = dW.shape
        dt = T / n
        V = np.empty((n_paths, n + 1))
        V[:, 0] = self.v0
        for i in range(n):
            vp = np.maximum(V[:, i], 0.0)
            V[:, i + 1] = (V[:, i] + self.kappa * (self.theta - vp) * dt
                           + self.sigma * np.sqrt(vp) * dW[:, i])
        Vp = np.maximum(V[:, :-1], 0.0)
        dB = self.rho * dW + math.sqrt(max(1.0 - self.rho**2, 0.0)) * dW_perp
        logS = np.zeros((n_paths, n + 1))
        np.cumsum((self.r - 0.5 * Vp) * dt + np.sqrt(Vp) * dB, axis=1, out=logS[:, 1:])
        zeros = np.zeros((n_paths, n))
        # the features divide by xi0 and take log V: keep V positive in the reported paths
        return RoughPaths(times=np.linspace(0.0, T, n + 1), S=self.S0 * np.exp(logS),
                          V=np.maximum(V, 1e-12), Y=np.zeros((n_paths, n + 1)), dW=dW,
                          dW_perp=dW_perp, cell=zeros, r=self.r)

    def simulate(self, n_paths: int, *, T: float = 1.0, n_steps: int = 96,
                 method: str = "rqmc", antithetic: bool = True, bridge: bool = True,
                 rng=None, device: str | None = None, dtype: str = "float64") -> RoughPaths:
        """``n_paths`` paths with ``n_steps`` steps on [0, T] (same noise as ``RoughBergomi``;
        ``device``/``dtype`` are accepted for the engine's interface, the map is numpy)."""
        from deepquant.rough.qmc import driver_increments

        if not (isinstance(T, int | float) and math.isfinite(T) and T > 0):
            raise ValueError(f"T must be a finite number > 0, got {T!r}")
        dW, dW_perp, _ = driver_increments(n_paths, n_steps, T / max(int(n_steps), 1),
                                           method=method, antithetic=antithetic,
                                           bridge=bridge, rng=rng)
        return self.paths_from_increments(dW, dW_perp, T)

    def forward_variance(self, paths: RoughPaths, horizons: np.ndarray,
                         columns=None) -> np.ndarray:
        """E_{t_k}[V_{u_k}] = theta + (V_{t_k} - theta) e^{-kappa (u_k - t_k)}, (n_paths, n+1)
        (or (n_paths, len(columns)) for the grid indices ``columns`` only)."""
        u = np.asarray(horizons, dtype=float)
        if u.shape != paths.times.shape or np.any(u < paths.times - 1e-12):
            raise ValueError("horizons must have shape (n+1,) with u_k >= t_k")
        cols = np.arange(paths.times.size) if columns is None else np.asarray(columns, dtype=int)
        decay = np.exp(-self.kappa * (u[cols] - paths.times[cols]))[None, :]
        return self.theta + (paths.V[:, cols] - self.theta) * decay

    # ------------------------------------------------------------------ Fourier prices
    def char_log_price(self, u, T: float) -> np.ndarray:
        """E[exp(i u ln S_T)] (complex u allowed), little-trap form."""
        u = np.asarray(u, dtype=complex)
        k, th, s, rho, v0 = self.kappa, self.theta, self.sigma, self.rho, self.v0
        iu = 1j * u
        if s == 0.0:  # deterministic variance: Gaussian log price
            var = th * T + (v0 - th) * (1 - math.exp(-k * T)) / k if k > 0 else v0 * T
            return np.exp(iu * (math.log(self.S0) + self.r * T - 0.5 * var) - 0.5 * u * u * var)
        b = k - rho * s * iu
        d = np.sqrt(b * b + s * s * (iu + u * u))
        g = (b - d) / (b + d)
        e = np.exp(-d * T)
        C = k * th / s**2 * ((b - d) * T - 2.0 * np.log((1.0 - g * e) / (1.0 - g)))
        D = (b - d) / s**2 * (1.0 - e) / (1.0 - g * e)
        return np.exp(iu * (math.log(self.S0) + self.r * T) + C + D * v0)

    def european_price(self, strike: float, T: float, *, put: bool = True) -> float:
        """European put (or call) price by Fourier inversion (see the module docstring)."""
        if not (isinstance(strike, int | float) and math.isfinite(strike) and strike > 0):
            raise ValueError(f"strike must be a finite number > 0, got {strike!r}")
        if not (isinstance(T, int | float) and math.isfinite(T) and T > 0):
            raise ValueError(f"T must be a finite number > 0, got {T!r}")
        lnk = math.log(strike)
        fwd = self.S0 * math.exp(self.r * T)

        def integrand(u: float, j: int) -> float:
            if j == 1:
                f = self.char_log_price(u - 1j, T) / fwd
            else:
                f = self.char_log_price(u, T)
            return float((np.exp(-1j * u * lnk) * f / (1j * u)).real)

        P = [0.5 + quad(integrand, 1e-10, np.inf, args=(j,), limit=400, epsabs=1e-12,
                        epsrel=1e-10)[0] / math.pi for j in (1, 2)]
        call = self.S0 * P[0] - strike * math.exp(-self.r * T) * P[1]
        return call - self.S0 + strike * math.exp(-self.r * T) if put else call
