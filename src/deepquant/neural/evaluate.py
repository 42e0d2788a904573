"""Evaluation of a checkpoint on fresh instances, in-family and on held-out families.

For every test instance: the cold classical solve (``solve_entropic``, the reference and the
timing baseline) and the pure-neural solve (no fallback, so its errors are reported as they
are). Under each calibrated chain, by the exact forward recursion: an ATM Asian call (average over dates 1..N), a lookback
call (strike 1) and a forward-start straddle from date N // 2 to N. Per family, the table has
the mean / median / max relative errors of the pure-neural prices (network v, row multipliers
solved exactly: ``NeuralPricer(project=True)``) against the classical ones, the same for the raw
Gibbs kernels of the network's (v, h) (``*_raw``, Asian only), the mean / max pure-neural drift
(rows with mass > ``mass_floor``), the marginal L1 error, the rate at which the default
out-of-distribution guard of ``NeuralPricer`` would have fallen back to the classical solver
(``ood_pct``), and median times.

Protocol: each family is marked ``held_out`` when the checkpoint's training data did not
contain it (the data file's ``families`` attribute, recorded in the checkpoint; the default
three families for older files); with both kinds present the table adds ``in-family`` and
``held-out`` rows. A leave-one-family-out study trains one checkpoint per held-out family
(``deepquant generate --families ...``, ``deepquant train``) and evaluates each on a test file
that contains every family.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from deepquant.neural.data import ALL_FAMILIES, FAMILIES

__all__ = ["evaluate", "evaluate_instances"]


def evaluate_instances(records: list[dict], grid: np.ndarray, *, checkpoint=None,
                       threads: int = 1, mass_floor: float = 1e-8,
                       device: str = "cpu") -> list[dict[str, Any]]:
    """Per-instance metrics (see module doc)."""
    from deepquant.market.marginals import Marginals
    from deepquant.mmot.augment import build_chain, expectation
    from deepquant.mmot.entropic import solve_entropic
    from deepquant.mmot.model import price_batch
    from deepquant.neural.pricer import EPS, NeuralPricer
    from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall

    # no OOD guard here: pure-neural errors are reported as they are
    pricer = NeuralPricer(checkpoint, threads=threads, fallback=False, mass_floor=mass_floor,
                          ood_drift=float("inf"), ood_marginal_error=float("inf"), device=device)
    if grid.shape != pricer.grid.shape or not np.allclose(grid, pricer.grid, rtol=0, atol=1e-7):
        raise ValueError(
            f"the test instances are on a {grid.size}-point grid [{grid[0]:.4g}, "
            f"{grid[-1]:.4g}], the checkpoint's grid has {pricer.grid.size} points "
            f"[{pricer.grid[0]:.4g}, {pricer.grid[-1]:.4g}]: generate the test set with "
            f"--grid-size {pricer.grid.size}")
    raw = NeuralPricer(checkpoint, threads=threads, fallback=False, mass_floor=mass_floor,
                       ood_drift=float("inf"), ood_marginal_error=float("inf"), project=False,
                       device=device)
    payoff = AsianCall(strike=1.0)
    guard = NeuralPricer.__init__.__kwdefaults__   # the default guard's thresholds
    out = []
    for r in records:
        times = r["times"] if r["times"][-1] > r["times"][0] else None
        marg = Marginals(grid, r["weights"], times)
        w0 = marg.weights[0]
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cold = solve_entropic(marg, EPS, tol=pricer.tol)
        t_cold = time.perf_counter() - t0
        chain = build_chain(marg, payoff)
        p_cl = expectation(chain, cold.kernels, law0=w0)
        nn = pricer.solve(marg)
        p_nn = expectation(chain, nn.kernels, law0=w0)
        nr = raw.solve(marg)
        p_raw = expectation(chain, nr.kernels, law0=w0)
        row = {"index": r["index"], "family": r["family"], "n_periods": r["n_periods"],
               "price_classical": p_cl, "price_neural": p_nn,
               "err_pct": 100 * abs(p_nn - p_cl) / max(abs(p_cl), 1e-12),
               "drift": nn.drift_live, "drift_all_rows": nn.drift,
               "marginal_error": nn.marginal_error, "neural_s": nn.inference_seconds,
               "price_raw": p_raw, "err_raw_pct": 100 * abs(p_raw - p_cl) / max(abs(p_cl), 1e-12),
               "drift_raw": nr.drift_live, "marginal_error_raw": nr.marginal_error,
               "raw_s": nr.inference_seconds,
               "classical_s": t_cold, "classical_drift": float(cold.drift),
               "classical_success": bool(cold.success)}
        n_per = r["n_periods"]
        for key, pay in (("lookback", LookbackCall(strike=1.0)),
                         ("fwdstart", ForwardStartStraddle(t1=max(1, n_per // 2), t2=n_per))):
            cl, ne = price_batch(marg, np.stack([cold.kernels, nn.kernels]), pay)
            row[f"price_{key}_classical"], row[f"price_{key}_neural"] = cl, ne
            row[f"err_{key}_pct"] = 100 * abs(ne - cl) / max(abs(cl), 1e-12)
        row["ood"] = bool(not (nn.drift_live <= guard["ood_drift"]
                               and nn.marginal_error <= guard["ood_marginal_error"]))
        out.append(row)
    return out


def _summary(rows: list[dict], family: str) -> dict[str, Any]:
    err = np.array([r["err_pct"] for r in rows])
    drift = np.array([r["drift"] for r in rows])
    s = {"family": family, "n": len(rows), "mean_err_pct": float(err.mean()),
         "median_err_pct": float(np.median(err)), "max_err_pct": float(err.max()),
         "mean_drift": float(drift.mean()), "max_drift": float(drift.max()),
         "pass_0.1_pct": float(100 * np.mean(drift < 0.1)),
         "pass_0.01_pct": float(100 * np.mean(drift < 0.01)),
         "mean_marginal_error": float(np.mean([r["marginal_error"] for r in rows])),
         "max_marginal_error": float(np.max([r["marginal_error"] for r in rows])),
         "mean_err_lookback_pct": float(np.mean([r["err_lookback_pct"] for r in rows])),
         "max_err_lookback_pct": float(np.max([r["err_lookback_pct"] for r in rows])),
         "mean_err_fwdstart_pct": float(np.mean([r["err_fwdstart_pct"] for r in rows])),
         "max_err_fwdstart_pct": float(np.max([r["err_fwdstart_pct"] for r in rows])),
         "ood_pct": float(100 * np.mean([r["ood"] for r in rows])),
         "mean_err_raw_pct": float(np.mean([r["err_raw_pct"] for r in rows])),
         "median_err_raw_pct": float(np.median([r["err_raw_pct"] for r in rows])),
         "mean_drift_raw": float(np.mean([r["drift_raw"] for r in rows])),
         "mean_marginal_error_raw": float(np.mean([r["marginal_error_raw"] for r in rows])),
         "raw_ms": float(1e3 * np.median([r["raw_s"] for r in rows])),
         "neural_ms": float(1e3 * np.median([r["neural_s"] for r in rows])),
         "classical_ms": float(1e3 * np.median([r["classical_s"] for r in rows]))}
    return s


def evaluate(test_path, *, checkpoint=None, max_instances: int | None = None,
             threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Evaluate ``checkpoint`` (default: shipped) on the instances of ``test_path``."""
    from deepquant.neural.data import read_dataset
    from deepquant.neural.pricer import default_checkpoint

    records, grid, attrs = read_dataset(test_path)
    if max_instances:
        # keep the families balanced: take instances round-robin by family
        by_fam: dict[str, list] = {}
        for r in records:
            by_fam.setdefault(r["family"], []).append(r)
        picked: list[dict] = []
        while len(picked) < min(max_instances, len(records)):
            for fam in sorted(by_fam):
                if by_fam[fam] and len(picked) < max_instances:
                    picked.append(by_fam[fam].pop(0))
        records = picked
    rows = evaluate_instances(records, grid, checkpoint=checkpoint,
                              threads=threads, device=device)
    trained = _training_families(checkpoint or default_checkpoint())
    fams = list(dict.fromkeys(r["family"] for r in rows))
    fams = [f for f in ALL_FAMILIES if f in fams] + [f for f in fams if f not in ALL_FAMILIES]
    table = []
    for f in fams:
        table.append({**_summary([r for r in rows if r["family"] == f], f),
                      "held_out": f not in trained})
    inside = [r for r in rows if r["family"] in trained]
    outside = [r for r in rows if r["family"] not in trained]
    if inside and outside:
        table.append({**_summary(inside, "in-family"), "held_out": False})
        table.append({**_summary(outside, "held-out"), "held_out": True})
    table.append({**_summary(rows, "all"), "held_out": bool(outside) and not inside})
    return {"checkpoint": str(checkpoint or default_checkpoint()), "test": str(test_path),
            "test_seed": int(attrs.get("seed", -1)), "training_families": sorted(trained),
            "families": table, "instances": rows}


def _training_families(checkpoint) -> set[str]:
    """Families of the checkpoint's training data (its data file's ``families`` attribute;
    files written before the attribute existed hold the default three)."""
    from deepquant.neural.train import load_model

    _, meta = load_model(checkpoint)
    fams = (meta.get("data_attrs") or {}).get("families")
    return set(str(fams).split(",")) if fams else set(FAMILIES)
