"""Loss terms of the surrogate (seed 001 §9.3, with the signs of DESIGN §2.1).

With cost c = 0 and the product reference R = mu_t (x) mu_{t+1}, the entropic plan of period t is
(DESIGN §2.1) ``pi_t(x, y) = mu_t(x) mu_{t+1}(y) exp((u(x) + v(y) + h(x)(y - x)) / eps)``. With
potentials in units of eps (what the data stores and the network predicts) the transition
kernel is the row-normalised Gibbs kernel

    log K_t(y | x) = log mu_{t+1}(y) + v_t(y) + h_t(x) (y - x) - log Z_t(x),

and u_t(x) = -log Z_t(x) is implied. The potentials have a two-dimensional gauge,
v -> v + a + b (y - 1), h -> h - b (u absorbs the rest), fixed in the data by
``deepquant.neural.data.gauge_fix`` (nu-weighted mean and slope of v are zero).

Terms (all averaged over the instances of a batch, and over the periods of an instance):

* ``dist``: mean squared error of the gauge-fixed (v, h) against the targets, times the
  period's variance increment s_t (``period_scale``) and in units of the model's output scales, on grid points that carry mass (v on supp mu_{t+1}, h on supp mu_t).
  With ``dist_weighting="relative"`` each instance's v (and h) error is divided by the mean
  square of its own scaled targets (detached, at least ``dist_floor``): a relative error,
  invariant to scaling one instance's targets and predictions together, so that instances
  with large potentials (chains, narrow supports; ~1e-1 in absolute units) no longer drown
  those with small ones (GBM / Merton / Heston, ~1e-4; docs/benchmarks-neural-training.md).
  In the heads' units the targets' mean squares differ by ~3x between families, the errors by
  ~1e3, so this reweights little; ``"relative_root"`` averages the square roots of the two
  relative errors (an instance's relative RMS error) instead: the gradient of an instance is
  divided by its own RMS error, which balances instances whose errors differ by orders of
  magnitude (still scale invariant);
* ``mart``: sum_x mu_t(x) (Delta_t(x) / drift_scale)^2, with Delta_t(x) = E_K[Y - X | X = x] the
  drift of the Gibbs kernel of the PREDICTED potentials (seed eq. 9.4-9.5);
* ``hpen``: mean over rows with mass of (h_units * s_t * h)^2 (seed eq. 9.6). s_t * h is the
  shift of the conditional mean that the multiplier induces (moneyness units, see
  ``period_scale``); with h_units = 1e-2 the term shrinks h by about 1e-4 relative, a tie-breaker
  rather than a competitor of the distillation (a weight of 1 on h in units of 1/eps, whose
  size is up to ~1e4, would dominate the loss and bias h, hence the drift).

The dual-gap terms (``dual_gap_loss``) need no teacher. For the predicted v, the row multipliers
are solved exactly (what the pricer does, ``martingale_projection``), and the semi-dual
G_t(v) = sum_y nu(y) v(y) - sum_x mu(x) log Z_x(v) is evaluated (``deepquant.mmot.entropic.
semi_dual``). G_t(v*) - G_t(v) is exactly the relative entropy KL(pi*_t || pi_t(v)) of the
projected plan, and by the chain rule the sum over t is the relative entropy of the path law of
the pricer's Markov chain against the calibrated model's; |price error| <= ||payoff||_inf *
sqrt(KL / 2) (Pinsker). So:

* ``gap``: G_t(v*) - G_t(v) on a random subset of the periods, either summed per instance into
  an unbiased estimate of the path-law KL (``weighting="kl"``) or averaged in the v-head's units
  (``"scaled"``, the default, better conditioned; see ``dual_gap_loss``); without a teacher the
  constant G_t(v*) is unknown and -G_t(v) is used (same gradient, nu - column sums of the
  projected plan; the envelope theorem removes the row solve from the gradient). Measured:
  fine-tuning the shipped network with it diverged (docs/benchmarks-neural.md); the same
  metric is used successfully, to second order, by ``deepquant.neural.refit``;
* ``hcons``: mean over rows with mass of ((h - eta*(v)) * s_t / h_scale)^2, eta*(v) the exact row
  multipliers of the predicted v: keeps the h-head a good start for the row solve, again
  without a teacher.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from deepquant.neural.config import DIST_WEIGHTINGS
from deepquant.neural.model import period_scale

__all__ = ["DIST_WEIGHTINGS", "allowed_entries", "gibbs_log_kernel", "kernel_drift", "LossTerms", "surrogate_loss",
           "semi_dual_value", "GapTerms", "dual_gap_loss"]


def allowed_entries(touch: torch.Tensor) -> torch.Tensor:
    """Entries (x, y) a martingale plan may charge, shape (..., M, M), from the touching points
    ``touch`` (..., M) (grid points k with C_{t+1}(k) = C_t(k), DESIGN §2.1 / entropic solver):
    no mass crosses a touching point, and a row at a touching point stays put."""
    cs = torch.cumsum(touch.to(torch.int32), dim=-1)  # touching points <= j
    prev = cs - touch.to(torch.int32)  # touching points < j
    m = touch.shape[-1]
    idx = torch.arange(m, device=touch.device)
    up = idx[None, :] > idx[:, None]  # y > x: allowed iff #touch < y == #touch <= x
    same_up = prev[..., None, :] == cs[..., :, None]
    same_down = prev[..., :, None] == cs[..., None, :]
    allowed = torch.where(up, same_up, same_down)
    eye = idx[:, None] == idx[None, :]
    return (allowed | eye) & ~(touch[..., :, None] & ~eye)


def gibbs_log_kernel(v: torch.Tensor, h: torch.Tensor, w_from: torch.Tensor,
                     w_to: torch.Tensor, grid: torch.Tensor,
                     touch: torch.Tensor | None = None) -> torch.Tensor:
    """log K_t(y | x), shape (..., M, M) [x, y], from v, h (..., M) and the period's marginals.

    Columns with mu_{t+1}(y) = 0 get log K = -inf, and so do entries that cross a touching point
    (``touch`` (..., M), see ``allowed_entries``); rows are normalised even where mu_t(x) = 0
    (those rows are simply unused). Rows with no allowed entry are point masses at x.
    """
    diff = grid[None, :] - grid[:, None]  # (x, y): y - x
    logits = h[..., :, None] * diff + v[..., None, :]
    log_nu = torch.where(w_to > 0, torch.log(torch.clamp(w_to, min=1e-300)),
                         torch.full_like(w_to, -torch.inf))
    logits = logits + log_nu[..., None, :]
    if touch is not None:
        logits = logits.masked_fill(~allowed_entries(touch), -torch.inf)
    m = grid.shape[-1]
    eye = torch.eye(m, dtype=torch.bool, device=logits.device)
    empty = torch.isinf(logits).all(dim=-1, keepdim=True)  # e.g. pinned rows off supp(nu)
    logits = torch.where(empty & eye, torch.zeros_like(logits), logits)
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


def kernel_drift(log_k: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Delta(x) = sum_y K(y|x) (y - x), shape (..., M)."""
    return torch.exp(log_k) @ grid - grid


@dataclass
class LossTerms:
    total: torch.Tensor
    dist: torch.Tensor
    mart: torch.Tensor
    hpen: torch.Tensor
    drift_max: torch.Tensor  # max over batch of max_{t, x: mu_t(x) > floor} |Delta_t(x)|


def surrogate_loss(v: torch.Tensor, h: torch.Tensor, batch: dict, *, lambda_mart: float = 5.0,
                   lambda_h: float = 1.0, lambda_dist: float = 1.0, drift_scale: float = 0.01, h_units: float = 1e-2,
                   mass_floor: float = 1e-10, v_scale: float = 1.0,
                   h_scale: float = 1.0, dist_weighting: str = "absolute",
                   dist_floor: float = 1e-6) -> LossTerms:
    """Total loss and its terms for predictions ``v, h`` (B, N, M).

    ``batch`` holds ``weights`` (B, N+1, M), ``v``/``h`` targets (B, N, M), ``period_mask``
    (B, N) and ``grid`` (M,). ``dist_weighting`` is ``"absolute"`` (errors in the heads' units)
    or ``"relative"`` (per instance, over the mean square of its targets floored at
    ``dist_floor``, see the module doc) or ``"relative_root"`` (the square roots of those).
    """
    if dist_weighting not in DIST_WEIGHTINGS:
        raise ValueError(f"dist_weighting must be one of {DIST_WEIGHTINGS}, got "
                         f"{dist_weighting!r}")
    w = batch["weights"]
    grid = batch["grid"]
    pmask = batch["period_mask"].to(v.dtype)  # (B, N)
    w_from, w_to = w[:, :-1], w[:, 1:]
    n_per = pmask.sum(1).clamp(min=1.0)

    vmask = (w_to > mass_floor).to(v.dtype) * pmask[..., None]
    if "v_valid" in batch:
        vmask = vmask * batch["v_valid"].to(v.dtype)
    hmask = (w_from > mass_floor).to(v.dtype) * pmask[..., None]
    if "h_valid" in batch:
        hmask = hmask * batch["h_valid"].to(v.dtype)
    s = period_scale(w, grid)[..., None]  # errors in units of the natural scale 1 / s_t
    ev = ((v - batch["v"]) * s / v_scale) ** 2 * vmask
    eh = ((h - batch["h"]) * s / h_scale) ** 2 * hmask
    nv, nh = vmask.sum((1, 2)).clamp(min=1.0), hmask.sum((1, 2)).clamp(min=1.0)
    dv, dh = ev.sum((1, 2)) / nv, eh.sum((1, 2)) / nh  # (B,)
    if dist_weighting != "absolute":
        with torch.no_grad():
            tv = ((batch["v"] * s / v_scale) ** 2 * vmask).sum((1, 2)) / nv
            th = ((batch["h"] * s / h_scale) ** 2 * hmask).sum((1, 2)) / nh
        dv = dv / tv.clamp(min=dist_floor)
        dh = dh / th.clamp(min=dist_floor)
        if dist_weighting == "relative_root":  # 1e-12: a finite gradient at a zero error
            dv, dh = torch.sqrt(dv + 1e-12), torch.sqrt(dh + 1e-12)
    dist = (dv + dh).mean()

    sel = batch.get("mart_periods")  # optional subset of periods (cost is O(N M^2))
    if sel is not None:
        vs, hs, wf, wt = v[:, sel], h[:, sel], w_from[:, sel], w_to[:, sel]
        pm = pmask[:, sel]
        touch = batch["touch"][:, sel] if "touch" in batch else None
    else:
        vs, hs, wf, wt, pm, touch = v, h, w_from, w_to, pmask, batch.get("touch")
    log_k = gibbs_log_kernel(vs, hs, wf, wt, grid, touch)
    delta = kernel_drift(log_k, grid)  # (B, n, M)
    delta = torch.where(wf > 0, delta, torch.zeros_like(delta))
    mart = (((wf * (delta / drift_scale) ** 2).sum(-1) * pm).sum(1)
            / pm.sum(1).clamp(min=1.0)).mean()
    s_live = (w_from > mass_floor).to(v.dtype)
    hsq = ((h_units * s * h) ** 2 * s_live).sum(-1) / s_live.sum(-1).clamp(min=1.0)
    hpen = ((hsq * pmask).sum(1) / n_per).mean()
    with torch.no_grad():
        live = (wf > mass_floor) & (pm[..., None] > 0)
        drift_max = torch.where(live, delta.abs(), torch.zeros_like(delta)).amax()
    total = lambda_dist * dist + lambda_mart * mart + lambda_h * hpen
    return LossTerms(total, dist, mart, hpen, drift_max)


def semi_dual_value(v: torch.Tensor, mu: np.ndarray, nu: np.ndarray, grid: np.ndarray, *,
                    h: torch.Tensor | None = None, column_floor: float = 1e-10,
                    tol: float = 1e-10):
    """Differentiable G_k(v) of K one-period problems: (value (K,) float64 tensor with the
    gradient nu - column sums of the projected plan, the numpy ``SemiDual`` at v).

    ``v``, ``h`` (K, M) tensors (potentials in units of eps; ``h`` only starts the row solve);
    ``mu``, ``nu`` (K, M) float64 marginals. The row multipliers are solved in numpy and enter
    as constants: G is stationary in them (envelope theorem).
    """
    from deepquant.mmot.entropic import semi_dual

    v64 = v.double()
    sd = semi_dual(grid, mu, nu, v64.detach().cpu().numpy(),
                   None if h is None else h.detach().double().cpu().numpy(), tol=tol,
                   column_floor=column_floor)
    active = torch.from_numpy(sd.mu > 0).to(v.device)
    logq = torch.where(active[..., None], torch.from_numpy(sd.logq).to(v.device), 0.0)
    g = torch.tensor(np.asarray(grid, dtype=np.float64), device=v.device)
    eta = torch.from_numpy(sd.eta).to(v.device)
    logits = logq + v64[:, None, :] + eta[..., None] * (g[None, :] - g[:, None])
    lse = torch.where(active, torch.logsumexp(logits, dim=-1), 0.0)
    nu_t = torch.from_numpy(sd.nu).to(v.device)
    mu_t = torch.from_numpy(sd.mu).to(v.device)
    value = (nu_t * v64).sum(-1) - (mu_t * lse).sum(-1)
    return value, sd


@dataclass
class GapTerms:
    gap: torch.Tensor      # the batch's gap term (see ``dual_gap_loss``'s ``weighting``)
    hcons: torch.Tensor    # h-head consistency with the exact row multipliers
    kl: torch.Tensor | None  # (B,) estimated path-law KL per instance (None without teacher)


def dual_gap_loss(v: torch.Tensor, h: torch.Tensor, batch: dict, sel: np.ndarray | None = None,
                  *, column_floor: float = 1e-10, h_scale: float = 1.0, v_scale: float = 1.0,
                  mass_floor: float = 1e-10, weighting: str = "scaled") -> GapTerms:
    """The terms ``gap`` and ``hcons`` (module doc) for predictions ``v, h`` (B, N, M) on the
    periods ``sel`` (default: all).

    ``batch`` holds ``weights64`` (B, N+1, M) float64 and ``grid64`` (M,); with ``labelled``
    True also the teacher's ``v`` and ``v_valid``: then the gap is G(v*) - G(v) >= 0 (columns
    the teacher excluded are dropped from both), else -G(v) (same gradient).

    ``weighting``:

    * ``"kl"``: the batch mean of the estimated path-law KL, N / |sel| * sum_t gap_t;
    * ``"scaled"``: the batch mean over instances and periods of 2 (s_t / v_scale)^2 gap_t, the
      gap in the units of the network's v-head (which predicts s_t v / v_scale). Near v* the gap
      is a quadratic form in the v error, 1/2 dv' H dv with H ~ nu-weighted; in head units its
      curvature is then O(1) for every period, where the raw KL's varies like 1 / s_t^2 (10^4
      over the training periods) and makes AdamW unstable. Same minimiser per period.
    """
    if weighting not in ("kl", "scaled"):
        raise ValueError(f"weighting must be 'kl' or 'scaled', got {weighting!r}")
    w = batch["weights64"].numpy()
    grid = batch["grid64"].numpy()
    b, n, m = v.shape
    sel = np.arange(n) if sel is None else np.asarray(sel)
    mu = w[:, :-1][:, sel].reshape(-1, m)
    nu = w[:, 1:][:, sel].reshape(-1, m)
    labelled = bool(batch.get("labelled", False))
    if labelled:
        nu = np.where(batch["v_valid"][:, sel].reshape(-1, m).numpy(), nu, 0.0)
    vs = v[:, sel].reshape(-1, m)
    hs = h[:, sel].reshape(-1, m)
    value, sd = semi_dual_value(vs, mu, nu, grid, h=hs, column_floor=column_floor)
    kl = None
    if labelled:
        vref = batch["v"][:, sel].reshape(-1, m).double()
        ref, _ = semi_dual_value(vref, mu, nu, grid, column_floor=column_floor)
        per = (ref - value).reshape(b, len(sel))
        kl = per.detach().sum(1) * (n / len(sel))
    else:
        per = -value.reshape(b, len(sel))
    s = period_scale(batch["weights64"], batch["grid64"])[:, sel]            # (B, |sel|)
    if weighting == "kl":
        gap = (per.sum(1) * (n / len(sel))).mean()
    else:
        gap = (2.0 * (s / v_scale) ** 2 * per).mean()
    live = torch.from_numpy(sd.mu > mass_floor).to(v.dtype)
    target = torch.from_numpy(sd.eta).to(v.dtype)
    err = ((hs - target) * s.reshape(-1, 1).to(v.dtype) / h_scale) ** 2 * live
    hcons = err.sum() / live.sum().clamp(min=1.0)
    return GapTerms(gap, hcons, kl)
