"""Andersen–Broadie upper bound by nested simulation (cross-check of the dual martingale).

Andersen & Broadie (2004), "Primal-dual simulation algorithm for pricing multidimensional
American options", Management Science 50(9), §2. Given a stopping policy with exercise
decisions on the dates t_0..t_J (here the fitted LSM policy), let
C_j = E_j[Z_{tau_{j+1}}] (value of continuing at t_j and following the policy afterwards) and
L_j = Z_j if the policy stops at t_j, else C_j (L_J = Z_J). Then

    M_0 = 0,  M_{j+1} = M_j + L_{j+1} - C_j

is a martingale and E[max_j (Z_j - M_j)] is an upper bound. C_j is estimated on each outer
path by ``n_inner`` inner paths that SHARE the outer path's driver increments up to t_j (so they
are draws from the conditional law given F_{t_j} of the discretised, non-Markovian model) and
use fresh increments afterwards. Inner noise biases the bound upwards (it stays an upper bound).
Cost: n_outer x J x n_inner path simulations, so this is for small cases only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from deepquant.results import result_dict
from deepquant.rough.engine import BermudanPricer
from deepquant.rough.lsm import LSMPolicy
from deepquant.rough.qmc import RngLike, as_seed_sequence, driver_increments
from deepquant.rough.rbergomi import RoughBergomi

__all__ = ["AndersenBroadieResult", "andersen_broadie"]


@dataclass(frozen=True)
class AndersenBroadieResult:
    """lower : policy value on the outer paths; upper : mean of max_j (Z_j - M_j);
    *_stderr : standard errors over outer paths; gap = upper - lower (paired).
    success, status, message, seconds : the result protocol (``deepquant.results``); a fixed
    number of paths is no stopping criterion, so success is True and status "done"."""

    lower: float
    lower_stderr: float
    upper: float
    upper_stderr: float
    gap: float
    gap_stderr: float
    n_outer: int
    n_inner: int
    seconds: float
    success: bool = True
    status: str = "done"
    message: str = ""

    def to_dict(self) -> dict:
        return result_dict(self)


def andersen_broadie(pricer: BermudanPricer, model: RoughBergomi, strike,
                     policy: LSMPolicy, *, option: str = "put", n_outer: int = 256,
                     n_inner: int = 128, rng: RngLike = None) -> AndersenBroadieResult:
    """Nested-simulation upper bound for ``policy`` (fitted with the same ``pricer`` settings).

    ``strike``: a strike (with ``option``) or a payoff of ``deepquant.payoffs`` (truncated at
    each exercise date, ``deepquant.rough.exercise``; the inner paths share the outer path's
    noise up to t_j, so they continue its payoff statistic).

    Outer and inner paths are plain Monte Carlo (independent normals).
    """
    if not isinstance(n_outer, int) or n_outer < 2:
        raise ValueError(f"n_outer must be an integer >= 2, got {n_outer!r}")
    if not isinstance(n_inner, int) or n_inner < 2:
        raise ValueError(f"n_inner must be an integer >= 2, got {n_inner!r}")
    payoff = pricer.prepare_payoff(strike, option)
    t0 = time.perf_counter()
    seed_outer, seed_inner = as_seed_sequence(rng).spawn(2)
    n = pricer.n_steps
    dt = pricer.T / n
    outer = model.simulate(n_outer, T=pricer.T, n_steps=n, method="mc", antithetic=False,
                           bridge=False, rng=seed_outer)
    Z, F = pricer.exercise_arrays(model, payoff, outer)
    J1 = Z.shape[1]
    J = J1 - 1
    C = np.zeros((n_outer, J))
    inner_seeds = seed_inner.spawn(J)
    for j in range(J):
        e = j * pricer.steps_per_date  # grid index of column j (column 0 is t = 0)
        m = n - e
        dW, dWp, z = driver_increments(n_outer * n_inner, m, dt, method="mc",
                                       antithetic=False, bridge=False, rng=inner_seeds[j])
        cell = model.cell_from_normals(dW, z, dt)
        rep = np.repeat(np.arange(n_outer), n_inner)
        paths = model.paths_from_increments(
            np.concatenate([outer.dW[rep, :e], dW], axis=1),
            np.concatenate([outer.dW_perp[rep, :e], dWp], axis=1),
            np.concatenate([outer.cell[rep, :e], cell], axis=1), pricer.T)
        Zi, Fi = pricer.exercise_arrays(model, payoff, paths)
        C[:, j] = policy.cashflows(Zi, Fi, start=j + 1).reshape(n_outer, n_inner).mean(axis=1)
    L = np.empty((n_outer, J1))
    L[:, J] = Z[:, J]
    for j in range(1, J):
        stops = policy.stopping_index(Z, F, start=j) == j
        L[:, j] = np.where(stops, Z[:, j], C[:, j])
    M = np.zeros((n_outer, J1))
    M[:, 1:] = np.cumsum(L[:, 1:] - C, axis=1)
    up = np.max(Z - M, axis=1)
    lo = policy.cashflows(Z, F)
    gap = up - lo
    sq = math.sqrt(n_outer)
    return AndersenBroadieResult(
        lower=float(lo.mean()), lower_stderr=float(lo.std(ddof=1) / sq),
        upper=float(up.mean()), upper_stderr=float(up.std(ddof=1) / sq),
        gap=float(gap.mean()), gap_stderr=float(gap.std(ddof=1) / sq),
        n_outer=n_outer, n_inner=n_inner, seconds=time.perf_counter() - t0,
        message=f"{n_outer} outer x {n_inner} inner paths, gap {float(gap.mean()):.4g}")
