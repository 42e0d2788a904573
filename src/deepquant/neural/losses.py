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
  period's variance increment s_t (``period_scale``) and in units of the model's output scales, on grid points that carry mass (v on supp mu_{t+1}, h on supp mu_t);
* ``mart``: sum_x mu_t(x) (Delta_t(x) / drift_scale)^2, with Delta_t(x) = E_K[Y - X | X = x] the
  drift of the Gibbs kernel of the PREDICTED potentials (seed eq. 9.4-9.5);
* ``hpen``: mean over rows with mass of (h_units * s_t * h)^2 (seed eq. 9.6). s_t * h is the
  shift of the conditional mean that the multiplier induces (moneyness units, see
  ``period_scale``); with h_units = 1e-2 the term shrinks h by about 1e-4 relative, a tie-breaker
  rather than a competitor of the distillation (a weight of 1 on h in units of 1/eps, whose
  size is up to ~1e4, would dominate the loss and bias h, hence the drift).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deepquant.neural.model import period_scale

__all__ = ["allowed_entries", "gibbs_log_kernel", "kernel_drift", "LossTerms", "surrogate_loss"]


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
                   lambda_h: float = 1.0, drift_scale: float = 0.01, h_units: float = 1e-2,
                   mass_floor: float = 1e-10, v_scale: float = 1.0,
                   h_scale: float = 1.0) -> LossTerms:
    """Total loss and its terms for predictions ``v, h`` (B, N, M).

    ``batch`` holds ``weights`` (B, N+1, M), ``v``/``h`` targets (B, N, M), ``period_mask``
    (B, N) and ``grid`` (M,).
    """
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
    dist = ((ev.sum((1, 2)) / vmask.sum((1, 2)).clamp(min=1.0))
            + (eh.sum((1, 2)) / hmask.sum((1, 2)).clamp(min=1.0))).mean()

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
    total = dist + lambda_mart * mart + lambda_h * hpen
    return LossTerms(total, dist, mart, hpen, drift_max)
