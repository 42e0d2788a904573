"""The rough Bergomi model and its hybrid-scheme path simulation.

Model (Bayer, Friz & Gatheral 2016, flat forward variance ``xi0``)::

    dS_t / S_t = r dt + sqrt(V_t) dB_t,          B = rho W + sqrt(1 - rho^2) W_perp,
    V_t = xi0 exp(eta Y_t - eta^2 Var(Y_t) / 2),  Y_t = sqrt(2H) int_0^t (t - s)^(H - 1/2) dW_s,

so Var(Y_t) = t^(2H) and E[V_t] = xi0. ``eta = 0`` is the Black–Scholes limit with volatility
``sqrt(xi0)``.

Discretisation (DESIGN §4, seed 004 §2.2) on the uniform grid t_i = i dt, i = 0..n:

* **Volterra process** by the hybrid scheme of Bennedsen, Lunde & Pakkanen (2017, "Hybrid scheme
  for Brownian semistationary processes", Finance Stoch. 21, eq. (2.16)) with kappa = 1 and
  alpha = H - 1/2::

      Y_i = sqrt(2H) ( I_i + sum_{k=2}^{i} (b_k dt)^alpha dW_{i-k+1} ),
      I_i = int_{t_{i-1}}^{t_i} (t_i - s)^alpha dW_s,
      b_k = ((k^(alpha+1) - (k-1)^(alpha+1)) / (alpha + 1))^(1/alpha).

  The pair (dW_i, I_i) is Gaussian with the exact covariance
  ``[[dt, dt^(a+1)/(a+1)], [dt^(a+1)/(a+1), dt^(2a+1)/(2a+1)]]``; the sum is ONE FFT convolution
  of the kernel with all increments of the whole batch (``scipy.signal.fftconvolve``).
* **Variance** from the log-variance ``log V_i = log xi0 + eta Y_i - eta^2 v_i / 2`` where ``v_i``
  is the exact variance of the discrete Y_i (it differs from t_i^(2H) by < 0.1% for H = 0.07,
  n = 96), so E[V_i] = xi0 holds exactly for the scheme.
* **Price** by log-Euler with the left-point variance, vectorised by a cumulative sum::

      log S_{i+1} = log S_i + (r - V_i / 2) dt + sqrt(V_i) dB_{i+1}.

  Conditionally on F_{t_i}, S_{i+1} is lognormal, so exp(-r t) S_t is an exact martingale on
  the grid.

  Option ``perp_variance="forward"``: the part driven by W_perp uses the adapted forward
  variance F_i = E_{t_i}[V_{t_i + dt/2}] (projected on the hybrid data, ``forward_weights``)
  instead of V_i::

      log S_{i+1} = log S_i + (r - (rho^2 V_i + (1 - rho^2) F_i) / 2) dt
                    + rho sqrt(V_i) dW_{i+1} + sqrt(1 - rho^2) sqrt(F_i) dW_perp_{i+1},

  still conditionally lognormal with variance ``step_variance`` = rho^2 V_i + (1 - rho^2) F_i,
  so still an exact martingale. The left-point V_i ignores the variance's fast (rough) mean
  reversion inside the cell, which over-disperses the orthogonal variance; F_i sees it.
  It halves the 8 -> 16 steps-per-period difference of at-the-money forward-starting puts and
  of the K = 100 Bermudan, but doubles the in-the-money European's error (K = 120), so it is
  not the default (docs/benchmarks-rough.md, "The forward-start put's grid error"). numpy
  path map only (no ``device``), and not with the sub-simulation dual, whose inner paths use
  the left-point step.

The same map runs in torch (``device`` "cpu", "cuda", "cuda:N" or "auto", checked by
``torch_device``; ``dtype`` float64 or float32):
the convolution is an ``torch.fft.rfft`` product of length 2n, the rest elementwise and one
cumulative sum, so a GPU runs the identical code; the paths come back as float64 numpy arrays.
float32 keeps ~1e-6 relative accuracy of S over a few hundred steps (tested), far below the
Monte Carlo error. torch is imported only when a ``device`` is given.
"""

from __future__ import annotations

import math
import sys
from dataclasses import KW_ONLY, dataclass

import numpy as np
from scipy.signal import fftconvolve

__all__ = ["RoughBergomi", "RoughPaths", "hybrid_kernel", "hybrid_cell_covariance",
           "forward_weights", "torch_device"]

PERP_VARIANCES = ("left", "forward")

MIN_HURST = math.sqrt(sys.float_info.epsilon)
"""Smallest Hurst index the hybrid scheme takes (about 1.5e-8): it evaluates dt^(2a+1) / (2a+1)
with a = H - 1/2, and 2a + 1 keeps fewer than half of its digits below this (0 below 5.6e-17)."""


def hybrid_cell_covariance(H: float, dt: float) -> np.ndarray:
    """Exact covariance (2, 2) of (dW_i, I_i) for one step of the hybrid scheme (kappa=1)."""
    a = H - 0.5
    c12 = dt ** (a + 1.0) / (a + 1.0)
    c22 = dt ** (2.0 * a + 1.0) / (2.0 * a + 1.0)
    return np.array([[dt, c12], [c12, c22]])


def hybrid_kernel(H: float, n_steps: int, dt: float) -> np.ndarray:
    """Kernel weights Gamma, shape (n_steps + 1,): Gamma_0 = Gamma_1 = 0, Gamma_k = (b_k dt)^alpha.

    ``alpha = H - 1/2``; for ``H = 1/2`` (alpha = 0) every weight is 1 (Brownian motion).
    """
    a = H - 0.5
    gamma = np.zeros(n_steps + 1)
    if n_steps < 2:
        return gamma
    k = np.arange(2, n_steps + 1, dtype=float)
    if a == 0.0:
        gamma[2:] = 1.0
    else:
        b = ((k ** (a + 1.0) - (k - 1.0) ** (a + 1.0)) / (a + 1.0)) ** (1.0 / a)
        gamma[2:] = (b * dt) ** a
    return gamma


def forward_weights(H: float, n_steps: int, dt: float, theta: float = 0.5
                    ) -> tuple[float, float, np.ndarray, float]:
    """Weights of Z_i = sqrt(2H) (b dW_i + g I_i + sum_{k>=2} w_k dW_{i-k+1}), the projection of
    E_{t_i}[Y_{t_i + theta dt}] on the hybrid data: (b, g, w (n_steps + 1,), Var(b dW + g I)).

    (b, g): exact Gaussian projection of the last cell's part on (dW_i, I_i); w_k: the kernel
    (t_i + theta dt - s)^(H - 1/2) averaged over the cell k - 1 steps back.
    """
    from scipy.special import hyp2f1

    a = H - 0.5
    c = hybrid_cell_covariance(H, dt)
    h = theta * dt
    cw = ((dt + h) ** (a + 1.0) - h ** (a + 1.0)) / (a + 1.0)  # Cov(last-cell part, dW_i)
    # Cov(last-cell part, I_i) = int_0^dt u^a (u + h)^a du
    ci = h**a * dt ** (a + 1.0) / (a + 1.0) * hyp2f1(-a, a + 1.0, a + 2.0, -dt / h)
    b, g = np.linalg.solve(c, [cw, ci])
    w = np.zeros(n_steps + 1)
    k = np.arange(2, n_steps + 1, dtype=float)
    w[2:] = ((k * dt + h) ** (a + 1.0) - ((k - 1.0) * dt + h) ** (a + 1.0)) / ((a + 1.0) * dt)
    return float(b), float(g), w, float(np.array([b, g]) @ c @ np.array([b, g]))


@dataclass(frozen=True)
class RoughPaths:
    """Simulated paths on the grid t_i = i dt, i = 0..n.

    Attributes
    ----------
    times : ndarray (n+1,)
    S : ndarray (n_paths, n+1)      price
    V : ndarray (n_paths, n+1)      instantaneous variance (V_0 = xi0)
    Y : ndarray (n_paths, n+1)      Volterra process (Y_0 = 0)
    dW : ndarray (n_paths, n)       increments of the volatility driver W
    dW_perp : ndarray (n_paths, n)  increments of the independent driver W_perp
    cell : ndarray (n_paths, n)     hybrid-scheme cell integrals I_i
    r : float                       short rate (for discounting)
    step_variance : ndarray (n_paths, n) or None
        variance per unit time of log S over each step given F_{t_i}; None: V_i (left point)
    """

    times: np.ndarray
    S: np.ndarray
    V: np.ndarray
    Y: np.ndarray
    dW: np.ndarray
    dW_perp: np.ndarray
    cell: np.ndarray
    r: float
    step_variance: np.ndarray | None = None

    def take(self, rows: np.ndarray) -> RoughPaths:
        """The paths ``rows``."""
        sv = None if self.step_variance is None else self.step_variance[rows]
        return RoughPaths(times=self.times, S=self.S[rows], V=self.V[rows], Y=self.Y[rows],
                          dW=self.dW[rows], dW_perp=self.dW_perp[rows], cell=self.cell[rows],
                          r=self.r, step_variance=sv)

    @property
    def step_V(self) -> np.ndarray:
        """(n_paths, n+1): the step variance in columns 0..n-1 (V itself for the left-point
        step), V_n in the last column."""
        if self.step_variance is None:
            return self.V
        return np.concatenate([self.step_variance, self.V[:, -1:]], axis=1)

    @property
    def n_paths(self) -> int:
        return self.S.shape[0]

    @property
    def n_steps(self) -> int:
        return self.S.shape[1] - 1

    @property
    def discounted_S(self) -> np.ndarray:
        """exp(-r t_i) S_i, shape (n_paths, n+1) (a martingale)."""
        return np.exp(-self.r * self.times) * self.S


def torch_device(device: str):
    """The torch device for ``device`` ("cpu", "cuda", "cuda:N" or "auto"), resolved by
    ``deepquant.neural.model.resolve_device``: a ``ValueError`` naming ``device`` for another
    name, or when CUDA is asked for and this torch build or machine has none (instead of
    torch's ``AssertionError`` at the first tensor). Imports torch."""
    if not isinstance(device, str):
        raise ValueError(f"device must be a torch device name or None, got {device!r}")
    try:
        from deepquant.neural.model import resolve_device
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("device= needs torch: pip install 'deepquant-mmot[neural]'") from exc
    return resolve_device(device)


@dataclass(frozen=True)
class RoughBergomi:
    """Rough Bergomi model parameters (frozen, keyword-only, validated).

    Parameters
    ----------
    H : float        Hurst index, 0 < H <= 0.5.
    eta : float      vol of vol, >= 0 (0 = Black–Scholes with sigma = sqrt(xi0)).
    rho : float      correlation of W and B, in [-1, 1].
    xi0 : float      flat forward variance, > 0.
    r : float        continuously compounded short rate.
    S0 : float       spot, > 0.
    perp_variance : str
        variance of the W_perp part of the price step: "left" (V_i, default) or "forward"
        (E_{t_i}[V at the cell midpoint]; module docstring).
    """

    _: KW_ONLY
    H: float = 0.07
    eta: float = 1.9
    rho: float = -0.9
    xi0: float = 0.09
    r: float = 0.05
    S0: float = 100.0
    perp_variance: str = "left"

    def __post_init__(self) -> None:
        if self.perp_variance not in PERP_VARIANCES:
            raise ValueError(f"perp_variance must be one of {PERP_VARIANCES}, "
                             f"got {self.perp_variance!r}")
        for name in ("H", "eta", "rho", "xi0", "r", "S0"):
            value = getattr(self, name)
            if not isinstance(value, int | float | np.floating | np.integer) or not math.isfinite(
                value
            ):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 < self.H <= 0.5:
            raise ValueError(f"H must be in (0, 0.5], got {self.H}")
        if self.H < MIN_HURST:
            raise ValueError(f"H must be >= {MIN_HURST:.3g}, got {self.H}: the hybrid scheme's "
                             "exponents 2H = 2 (H - 1/2) + 1 lose their digits below it")
        if self.eta < 0.0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")
        if not math.isfinite(0.5 * self.eta * self.eta):
            raise ValueError(f"eta must have a finite square (eta^2 / 2 enters the variance), "
                             f"got {self.eta}")
        if not -1.0 <= self.rho <= 1.0:
            raise ValueError(f"rho must be in [-1, 1], got {self.rho}")
        if self.xi0 <= 0.0:
            raise ValueError(f"xi0 must be > 0, got {self.xi0}")
        if self.S0 <= 0.0:
            raise ValueError(f"S0 must be > 0, got {self.S0}")

    @classmethod
    def black_scholes(cls, *, sigma: float, r: float = 0.05, S0: float = 100.0) -> RoughBergomi:
        """The Black–Scholes limit: eta = 0, xi0 = sigma^2 (H and rho are then irrelevant)."""
        if not (isinstance(sigma, int | float) and math.isfinite(sigma) and sigma > 0
                and math.isfinite(float(sigma) * float(sigma))):
            raise ValueError(f"sigma must be a finite number > 0 with a finite square, got "
                             f"{sigma!r}")
        return cls(H=0.5, eta=0.0, rho=0.0, xi0=float(sigma) ** 2, r=r, S0=S0)

    @property
    def is_black_scholes(self) -> bool:
        return self.eta == 0.0

    # ------------------------------------------------------------------ scheme pieces
    def volterra_variance(self, n_steps: int, dt: float) -> np.ndarray:
        """Exact variance of the discrete Y_i, shape (n_steps + 1,) (v_0 = 0).

        v_i = 2H (dt^(2a+1)/(2a+1) + sum_{k=2}^{i} Gamma_k^2 dt); compare t_i^(2H).
        """
        gamma = hybrid_kernel(self.H, n_steps, dt)
        c22 = hybrid_cell_covariance(self.H, dt)[1, 1]
        v = np.zeros(n_steps + 1)
        v[1:] = 2.0 * self.H * (c22 + np.cumsum(gamma[1:] ** 2) * dt)
        return v

    def cell_from_normals(self, dW: np.ndarray, z: np.ndarray, dt: float) -> np.ndarray:
        """Cell integrals I_i from dW_i and independent N(0,1) draws z, by the exact 2x2 law.

        I = (c12 / dt) dW + sqrt(c22 - c12^2 / dt) z; shapes (n_paths, n).
        """
        c = hybrid_cell_covariance(self.H, dt)
        return (c[0, 1] / dt) * dW + math.sqrt(max(c[1, 1] - c[0, 1] ** 2 / dt, 0.0)) * z

    def paths_from_increments(self, dW: np.ndarray, dW_perp: np.ndarray, cell: np.ndarray,
                              T: float, *, device: str | None = None,
                              dtype: str = "float64") -> RoughPaths:
        """Build paths from driver increments, shapes (n_paths, n) each, on [0, T].

        This is a deterministic map; samplers (``deepquant.rough.qmc``) supply the increments,
        and nested simulation reuses a prefix of them (conditioning on F_{t_k}). ``device``
        (a torch device name) runs it in torch with ``dtype`` "float64" or "float32".
        """
        dW = np.asarray(dW, dtype=float)
        n_paths, n = dW.shape
        dt = T / n
        times = np.linspace(0.0, T, n + 1)
        if device is not None and self.perp_variance != "left" and self.eta != 0.0:
            raise ValueError("perp_variance='forward' runs on the numpy path map only "
                             "(device=None)")
        if device is not None:
            Y, V, S = self._map_torch(dW, np.asarray(dW_perp, dtype=float),
                                      np.asarray(cell, dtype=float), dt, device, dtype)
            return RoughPaths(times=times, S=S, V=V, Y=Y, dW=dW,
                              dW_perp=np.asarray(dW_perp, dtype=float),
                              cell=np.asarray(cell, dtype=float), r=self.r)
        if self.eta != 0.0:
            from deepquant.rough.kernels import outer_paths

            gamma = hybrid_kernel(self.H, n, dt)
            conv = fftconvolve(dW, gamma[None, :], axes=1)[:, : n + 1]
            # Y, log V, V and the log-Euler price in one compiled pass (the operations below)
            Y, V, S = outer_paths(cell, conv, dW, dW_perp, self.volterra_variance(n, dt),
                                  s2h=math.sqrt(2.0 * self.H), log_xi0=math.log(self.xi0),
                                  eta=self.eta, rho=self.rho, r=self.r, dt=dt,
                                  log_s0=math.log(self.S0))
            step_var = None
            if self.perp_variance == "forward":
                S, step_var = self._forward_perp_step(V, dW, np.asarray(dW_perp, dtype=float),
                                                      np.asarray(cell, dtype=float), dt)
            return RoughPaths(times=times, S=S, V=V, Y=Y, dW=dW,
                              dW_perp=np.asarray(dW_perp, dtype=float),
                              cell=np.asarray(cell, dtype=float), r=self.r,
                              step_variance=step_var)
        Y = np.zeros((n_paths, n + 1))
        V = np.full((n_paths, n + 1), self.xi0)
        dB = self.rho * dW + math.sqrt(max(1.0 - self.rho**2, 0.0)) * dW_perp
        sv = np.sqrt(V[:, :-1])
        dlogS = (self.r - 0.5 * V[:, :-1]) * dt + sv * dB
        logS = np.empty((n_paths, n + 1))
        logS[:, 0] = math.log(self.S0)
        np.cumsum(dlogS, axis=1, out=logS[:, 1:])
        logS[:, 1:] += math.log(self.S0)
        return RoughPaths(times=times, S=np.exp(logS), V=V, Y=Y, dW=dW,
                          dW_perp=np.asarray(dW_perp, dtype=float),
                          cell=np.asarray(cell, dtype=float), r=self.r)

    def forward_step_variance(self, dW: np.ndarray, cell: np.ndarray, dt: float) -> np.ndarray:
        """F_i = E_{t_i}[V_{t_i + dt/2}] projected on the hybrid data, shape (n_paths, n)
        (F_0 = xi0); E[F_i] = xi0 exactly (the variance of the projection is used)."""
        n = dW.shape[1]
        b, g, w, vc = forward_weights(self.H, n, dt)
        Z = np.zeros_like(dW)
        if n > 1:
            conv = fftconvolve(dW, w[None, :], axes=1)[:, :n]
            Z[:, 1:] = math.sqrt(2.0 * self.H) * (b * dW[:, :-1] + g * cell[:, :-1]
                                                  + conv[:, 1:])
        vz = np.zeros(n)
        vz[1:] = 2.0 * self.H * (vc + np.cumsum(w[1:n] ** 2) * dt)
        return self.xi0 * np.exp(self.eta * Z - 0.5 * self.eta**2 * vz[None, :])

    def _forward_perp_step(self, V: np.ndarray, dW: np.ndarray, dW_perp: np.ndarray,
                           cell: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
        """(S, step variance) of the log-Euler step with the forward variance for W_perp."""
        F = self.forward_step_variance(dW, cell, dt)
        Vl = V[:, :-1]
        rho2 = self.rho**2
        sv = rho2 * Vl + (1.0 - rho2) * F
        dlogS = ((self.r - 0.5 * sv) * dt + self.rho * np.sqrt(Vl) * dW
                 + math.sqrt(max(1.0 - rho2, 0.0)) * np.sqrt(F) * dW_perp)
        logS = np.empty((V.shape[0], V.shape[1]))
        logS[:, 0] = math.log(self.S0)
        np.cumsum(dlogS, axis=1, out=logS[:, 1:])
        logS[:, 1:] += math.log(self.S0)
        return np.exp(logS), sv

    def _map_torch(self, dW: np.ndarray, dW_perp: np.ndarray, cell: np.ndarray, dt: float,
                   device: str, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Y, V, S) of ``paths_from_increments`` computed in torch on ``device``."""
        if dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
        dev = torch_device(device)
        import torch
        tdt = getattr(torch, dtype)
        n_paths, n = dW.shape

        def t(a):
            return torch.as_tensor(np.ascontiguousarray(a), dtype=tdt, device=dev)

        w, wp = t(dW), t(dW_perp)
        if self.eta != 0.0:
            gamma = t(hybrid_kernel(self.H, n, dt))
            m = 2 * n + 1  # linear (not circular) convolution of lengths n and n + 1
            conv = torch.fft.irfft(torch.fft.rfft(w, m) * torch.fft.rfft(gamma, m), m)[:, : n + 1]
            Y = torch.zeros((n_paths, n + 1), dtype=tdt, device=dev)
            Y[:, 1:] = math.sqrt(2.0 * self.H) * (t(cell) + conv[:, 1:])
            v = t(self.volterra_variance(n, dt))
            V = torch.exp(math.log(self.xi0) + self.eta * Y - 0.5 * self.eta**2 * v[None, :])
        else:
            Y = torch.zeros((n_paths, n + 1), dtype=tdt, device=dev)
            V = torch.full((n_paths, n + 1), self.xi0, dtype=tdt, device=dev)
        dB = self.rho * w + math.sqrt(max(1.0 - self.rho**2, 0.0)) * wp
        Vl = V[:, :-1]
        dlogS = (self.r - 0.5 * Vl) * dt + torch.sqrt(Vl) * dB
        logS = torch.zeros((n_paths, n + 1), dtype=torch.float64, device=dev)
        logS[:, 1:] = torch.cumsum(dlogS.to(torch.float64), dim=1)  # sum in float64
        S = self.S0 * torch.exp(logS)

        def back(x):
            return x.detach().to("cpu", torch.float64).numpy()

        return back(Y), back(V), back(S)

    def forward_variance(self, paths: RoughPaths, horizons: np.ndarray,
                         columns=None) -> np.ndarray:
        """Forward-variance proxy xi_{t_k}(u_k) = E[V_{u_k} | F_{t_k}], shape (n_paths, n+1)
        (or (n_paths, len(columns)) for the grid indices ``columns`` only).

        ``horizons`` (n+1,) holds u_k >= t_k. From the Volterra representation,
        E_t[V_u] = xi0 exp(eta sqrt(2H) int_0^t (u-s)^a dW_s - eta^2 H int_0^t (u-s)^(2a) ds),
        with the kernel averaged over each completed cell [t_l, t_{l+1}], l < k (one matrix
        product for the whole batch). F_{t_k}-measurable; a feature, not part of the scheme.
        """
        times = paths.times
        n = paths.n_steps
        u = np.asarray(horizons, dtype=float)
        if u.shape != times.shape or np.any(u < times - 1e-12):
            raise ValueError("horizons must have shape (n+1,) with u_k >= t_k")
        cols = np.arange(n + 1) if columns is None else np.asarray(columns, dtype=int)
        if self.eta == 0.0:
            return np.full((paths.n_paths, cols.size), self.xi0)
        a = self.H - 0.5
        dt = times[1] - times[0]
        lo = times[:-1][:, None]  # cell starts t_l, (n, 1)
        hi = times[1:][:, None]
        uu = np.maximum(u[cols][None, :], hi)  # only l < k is used, where u_k >= t_{l+1}
        w = ((uu - lo) ** (a + 1.0) - (uu - hi) ** (a + 1.0)) / ((a + 1.0) * dt)
        mask = np.arange(n)[:, None] < cols[None, :]
        w = np.where(mask, w, 0.0)
        drift = 0.5 * self.eta**2 * 2.0 * self.H * (w**2).sum(axis=0) * dt
        return self.xi0 * np.exp(self.eta * math.sqrt(2.0 * self.H) * (paths.dW @ w) - drift)

    def simulate(self, n_paths: int, *, T: float = 1.0, n_steps: int = 96,
                 method: str = "rqmc", antithetic: bool = True, bridge: bool = True,
                 rng: int | np.random.Generator | np.random.SeedSequence | None = None,
                 device: str | None = None, dtype: str = "float64") -> RoughPaths:
        """Simulate ``n_paths`` paths with ``n_steps`` steps on [0, T].

        ``method="rqmc"``: scrambled Sobol + inverse normal (+ Brownian bridge and antithetic
        pairs); ``"mc"``: pseudo-random normals. See ``deepquant.rough.qmc.driver_increments``.
        ``device``/``dtype``: the path map in torch (see ``paths_from_increments``).
        """
        from deepquant.rough.qmc import driver_increments

        if not (isinstance(T, int | float) and math.isfinite(T) and T > 0):
            raise ValueError(f"T must be a finite number > 0, got {T!r}")
        dW, dW_perp, z = driver_increments(n_paths, n_steps, T / max(int(n_steps), 1),
                                           method=method, antithetic=antithetic,
                                           bridge=bridge, rng=rng)
        cell = self.cell_from_normals(dW, z, T / n_steps)
        return self.paths_from_increments(dW, dW_perp, cell, T, device=device, dtype=dtype)
