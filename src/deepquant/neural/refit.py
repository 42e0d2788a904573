"""Gauss-Newton refit of the network's v-head under a metric of the projected model's error.

The pricer keeps the network's column potentials v_t and solves the row multipliers exactly
(``martingale_projection``), so a period's error is a function of v_t alone. Near the teacher's
v*_t it is a quadratic form in the v error (``semi_dual``: the dual gap G(v*) - G(v) is the KL of
the projected plan, with Hessian H_t = sum_x mu_t(x) [diag p_x - p_x p_x' - (p_x d_x)(p_x d_x)' /
Var_x], p_x the teacher's kernel rows, d_x = y - x). Two metrics:

* ``"kl"``: 1/2 dv' H_t dv, the relative entropy of the projected plan (its path sum bounds any
  price error through Pinsker);
* ``"call"``: 1/2 |Phi' H_t dv|^2 with Phi(y, k) = 10 (y - k)^+ on the grid strikes: to first
  order the column error of the projected kernel is -H_t dv, so this is the squared error it
  puts on the call prices of mu_{t+1}, the quantity that path-dependent call payoffs (the ATM
  Asian of the evaluation) integrate. Measured on 90 validation instances it lowers the ATM Asian
  error more than ``"kl"`` (docs/benchmarks-neural.md).

The v-head is linear in the trunk's last features z (``u = W z + b``, v_t = u v_scale / s_t), so
with the trunk fixed the metric summed over training periods is a quadratic in (W, b): a
generalised least-squares problem, solved by preconditioned conjugate gradients (Jacobi), with
a ridge towards the current head. Distillation weighs every grid point with mass alike; these
metrics put the head's capacity where the projected model's error is. Instances are weighted by
an iteratively-reweighted factor 1 / sqrt(current error) (one reweighting, from the starting
head), so that the short chains, whose error is small in the metric but visible in relative
price terms, are not drowned by the 50-date ones; a few random periods per instance are used
(periods from a point mass are exact already, ``point_mass_exact``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepquant.neural.threads import set_torch_threads
from deepquant.results import check_count, result_dict, warn_failure

__all__ = ["check_refit_options", "period_metric", "refit_head", "RefitResult", "METRICS"]

METRICS = ("kl", "call")


def period_metric(mu: np.ndarray, nu: np.ndarray, v_star: np.ndarray, h_star: np.ndarray,
                  grid: np.ndarray, *, metric: str = "call", column_floor: float = 1e-10
                  ) -> np.ndarray:
    """The quadratic form (K, M, M) of the projected model's error of K one-period problems in
    the v error (units of eps), at the teacher's potentials (``v_star``, ``h_star`` (K, M)); see
    the module doc. Rows/columns without mass are zero."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    from deepquant.mmot.projection import semi_dual

    sd = semi_dual(grid, mu, nu, v_star, h_star, column_floor=column_floor, kernels=True)
    m = grid.size
    d = grid[None, :] - grid[:, None]
    act = sd.mu > 0
    p = sd.kernels
    var = np.einsum("kxy,xy->kx", p, d * d)
    pm = np.sqrt(sd.mu)[..., None] * p
    qm = np.sqrt(np.where(act, sd.mu / np.maximum(var, 1e-300), 0.0))[..., None] * (p * d[None])
    a = -(np.transpose(pm, (0, 2, 1)) @ pm) - (np.transpose(qm, (0, 2, 1)) @ qm)
    a[:, np.arange(m), np.arange(m)] += np.einsum("kx,kxy->ky", sd.mu, p)
    if metric == "call":
        phi = 10.0 * np.maximum(grid[:, None] - grid[None, :], 0.0)       # (y, k)
        b = phi.T[None] @ a                                                # (K, k, M)
        a = np.transpose(b, (0, 2, 1)) @ b
    return a


@dataclass(frozen=True, eq=False)
class RefitResult:
    """What ``refit_head`` did. ``objective`` is the weighted metric per period (mean) at the
    starting head and after each reported CG iteration. The result protocol
    (``deepquant.results``): ``iterations`` is also ``nit``; ``success`` says the objective did
    not rise (``status`` "done", else "objective_rose" with a ``ConvergenceWarning``)."""

    out_dir: str
    metric: str
    periods: int
    instances: int
    iterations: int
    objective_start: float
    objective_end: float
    seconds: float
    history: list[dict] = field(default_factory=list)
    success: bool = True
    status: str = "done"
    message: str = ""

    @property
    def nit(self) -> int:
        return self.iterations

    def to_dict(self) -> dict[str, Any]:
        return result_dict(self)


def _collect(model, records, grid, *, metric, per_instance, rng, batch_size, column_floor,
             progress):
    from deepquant.neural.dataset import NeuralDataset
    from deepquant.neural.model import period_scale

    ds = NeuralDataset(records, grid)
    feats: dict[str, torch.Tensor] = {}
    head_in = model.norm_out if hasattr(model, "norm_out") else None
    if head_in is None:
        raise ValueError("refit_head needs a transformer checkpoint (model.kind='transformer')")
    hook = head_in.register_forward_hook(lambda _m, _i, out: feats.__setitem__("z", out))
    vs = float(model.v_scale)
    zs, us, mats, weights = [], [], [], []
    done = 0
    try:
        for ids in ds.batches(batch_size):
            b = ds.collate(ids)
            with torch.no_grad():
                v, _ = model(b["weights"], b["date_mask"])
            z = feats["z"][:, 1:].double().numpy()               # token t+1 -> v_t
            w = b["weights64"].numpy()
            n = v.shape[1]
            s = period_scale(b["weights64"], b["grid64"]).numpy()
            v_star, h_star = b["v"].double().numpy(), b["h"].double().numpy()
            v_ok, p_ok = b["v_valid"].numpy(), b["period_mask"].numpy()
            single = (w[:, :-1] > 0).sum(-1) == 1
            sel = []
            for i in range(len(ids)):
                cand = [t for t in range(n) if p_ok[i, t] and not single[i, t]]
                if cand:
                    sel += [(i, int(t)) for t in rng.choice(cand, min(per_instance, len(cand)),
                                                             replace=False)]
            done += len(ids)
            if progress:
                progress(done, len(ds))
            if not sel:
                continue
            ii, tt = np.array(sel).T
            nu = np.where(v_ok[ii, tt], w[ii, tt + 1], 0.0)
            a = period_metric(w[ii, tt], nu, v_star[ii, tt], h_star[ii, tt], grid,
                              metric=metric, column_floor=column_floor)
            a *= ((vs / s[ii, tt]) ** 2)[:, None, None]          # head units: v = u vs / s
            u_star = s[ii, tt][:, None] * v_star[ii, tt] / vs
            err = s[ii, tt][:, None] * v.double().numpy()[ii, tt] / vs - u_star
            cur = 0.5 * np.einsum("ky,kyz,kz->k", err, a, err)
            for i in np.unique(ii):                              # instance weights (IRLS)
                k = ii == i
                est = cur[k].sum() * n / k.sum()
                weights.append(np.full(k.sum(), (n / k.sum()) / np.sqrt(est + 1e-12)))
                mats.append(a[k].astype(np.float32))
                zs.append(np.concatenate([z[i, tt[k]], np.ones((k.sum(), 1))], axis=1))
                us.append(u_star[k])
    finally:
        hook.remove()
    if not mats:
        raise ValueError("no usable periods in the data (every period starts from a point mass "
                         "or failed in the teacher)")
    c = np.concatenate(weights)
    a = torch.from_numpy(np.concatenate(mats) * (c / c.mean())[:, None, None].astype(np.float32))
    return (a, torch.from_numpy(np.concatenate(zs)).float(),
            torch.from_numpy(np.concatenate(us)).float(), len(ds))


def check_refit_options(*, metric: str = "call", per_instance: int = 2, iterations: int = 300,
                        ridge: float = 1e-3, batch_size: int = 32, threads: int = 2) -> None:
    """``ValueError`` naming the first bad option of ``refit_head`` (also called by
    ``leave_one_family_out`` before its classical reference and first evaluation)."""
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    for name, val in (("per_instance", per_instance), ("iterations", iterations),
                      ("batch_size", batch_size)):
        check_count(val, name)
    if not (np.isfinite(ridge) and ridge > 0):
        raise ValueError(f"ridge must be a finite number > 0, got {ridge!r}")
    if int(threads) < 1:
        raise ValueError(f"threads must be >= 1, got {threads!r}")


def refit_head(checkpoint, data, out_dir, *, metric: str = "call", per_instance: int = 2,
               iterations: int = 300, ridge: float = 1e-3, seed: int = 0,
               max_instances: int | None = None, batch_size: int = 32, threads: int = 2,
               column_floor: float = 1e-10, exclude_families=(), progress=None,
               note: str = "") -> RefitResult:
    """Refit the v-head of ``checkpoint`` on the labelled instances of ``data`` (HDF5 from
    ``deepquant generate``) under ``metric`` and export the result to ``out_dir``
    (``model.safetensors`` + ``config.json``, atomically; everything but the v-head unchanged).

    ``per_instance`` random periods per instance enter the fit (memory: 90 kB per period);
    ``iterations`` CG steps; ``ridge`` pulls towards the starting head (absolute, in the units
    of the summed, weighted objective; small against its curvature). Instances of the
    families in ``exclude_families`` are left out (the leave-one-family-out protocol,
    ``deepquant.neural.evaluate.leave_one_family_out``); the export records the families the
    refit saw. ``progress(stage, done, total)`` reports the collection and the CG iterations.
    """
    from safetensors.torch import save_file

    from deepquant.atomic import atomic_path, write_json
    from deepquant.neural.dataset_io import check_max_instances, read_dataset
    from deepquant.neural.train import load_model

    check_refit_options(metric=metric, per_instance=per_instance, iterations=iterations,
                        ridge=ridge, batch_size=batch_size, threads=threads)
    t0 = time.perf_counter()
    check_max_instances(max_instances)
    set_torch_threads(threads)
    model, meta = load_model(checkpoint)
    records, grid, attrs = read_dataset(data)
    excluded = {str(f) for f in exclude_families}
    records = [r for r in records if r["family"] not in excluded]
    if not records:
        raise ValueError(f"no instances left in {str(data)!r} after excluding the families "
                         f"{sorted(excluded)}")
    if max_instances:
        records = records[:max_instances]
    if len(grid) != model.cfg.grid_size:
        raise ValueError(f"data grid has {len(grid)} points, the model {model.cfg.grid_size}")
    rng = np.random.default_rng(seed)
    a, z, u, n_inst = _collect(
        model, records, grid, metric=metric, per_instance=per_instance, rng=rng,
        batch_size=batch_size, column_floor=column_floor,
        progress=(lambda d, n: progress("periods", d, n)) if progress else None)
    head = model.u_head
    w0 = torch.cat([head.weight.detach(), head.bias.detach()[:, None]], 1).float()
    n_per = len(z)
    lam = ridge

    def op(wm):
        r = torch.bmm(a, (z @ wm.T)[..., None])[..., 0]
        return r.T @ z + lam * wm

    def objective(wm):
        e = z @ wm.T - u
        return 0.5 * float((e * torch.bmm(a, e[..., None])[..., 0]).sum()) / n_per

    rhs = torch.bmm(a, u[..., None])[..., 0].T @ z + lam * w0
    prec = torch.diagonal(a, dim1=1, dim2=2).T @ (z ** 2) + lam
    x = w0.clone()
    r = rhs - op(x)
    y = r / prec
    p = y.clone()
    ry = float((r * y).sum())
    start = objective(w0)
    history = [{"iteration": 0, "objective": start}]
    for k in range(iterations):
        ap = op(p)
        pap = float((p * ap).sum())
        if pap <= 0 or ry == 0:
            break
        alpha = ry / pap
        x += alpha * p
        r -= alpha * ap
        y = r / prec
        ry_new = float((r * y).sum())
        p = y + (ry_new / ry) * p
        ry = ry_new
        if (k + 1) % 25 == 0 or k + 1 == iterations:
            history.append({"iteration": k + 1, "objective": objective(x)})
            if progress:
                progress("cg", k + 1, iterations)
    end = objective(x)
    with torch.no_grad():
        head.weight.copy_(x[:, :-1])
        head.bias.copy_(x[:, -1])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    extra: dict[str, Any] = dict(meta.get("extra") or {})
    extra["refit"] = {"source": str(checkpoint), "data": str(data), "metric": metric,
                      "per_instance": per_instance, "iterations": iterations, "ridge": ridge,
                      "seed": seed, "periods": n_per, "instances": n_inst,
                      "families": sorted({r["family"] for r in records}),
                      "excluded_families": sorted(excluded),
                      "objective_start": start, "objective_end": end,
                      "data_attrs": {k: (v.item() if hasattr(v, "item") else v)
                                     for k, v in attrs.items()}}
    from deepquant.neural.train import EXPORT_FORMAT

    write_json(out / "config.json", {
        "format": EXPORT_FORMAT, "version": meta.get("version"), "model": meta["model"],
        "train": meta.get("train", {}), "data": meta.get("data", {}),
        "step": meta.get("step"), "best_val_loss": meta.get("best_val_loss"),
        "data_attrs": meta.get("data_attrs", {}), "extra": extra,
        "note": note or meta.get("note", "")})
    ok = bool(np.isfinite(end) and end <= start)
    res = RefitResult(str(out), metric, n_per, n_inst, history[-1]["iteration"], start, end,
                      time.perf_counter() - t0, history, success=ok,
                      status="done" if ok else "objective_rose",
                      message=f"{history[-1]['iteration']} CG iterations: objective "
                      f"{start:.4g} -> {end:.4g}")
    warn_failure(res, "refit_head")
    return res

