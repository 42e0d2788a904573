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
from pathlib import Path
from typing import Any

import numpy as np

from deepquant.neural.data import ALL_FAMILIES, FAMILIES

__all__ = ["evaluate", "evaluate_instances", "classical_reference", "leave_one_family_out",
           "PAYOFF_KEYS"]


PAYOFF_KEYS = ("asian", "lookback", "fwdstart")
"""The three payoffs of the tables: ATM Asian call (dates 1..N), lookback call (strike 1),
forward-start straddle from date N // 2 to N."""


def _payoffs(n_periods: int) -> dict[str, Any]:
    from deepquant.payoffs import AsianCall, ForwardStartStraddle, LookbackCall

    return {"asian": AsianCall(strike=1.0), "lookback": LookbackCall(strike=1.0),
            "fwdstart": ForwardStartStraddle(t1=max(1, n_periods // 2), t2=n_periods)}


def _marginals(r: dict, grid: np.ndarray):
    from deepquant.market.marginals import Marginals

    times = r["times"] if r["times"][-1] > r["times"][0] else None
    return Marginals(grid, r["weights"], times)


def classical_reference(records: list[dict], grid: np.ndarray, *,
                        tol: float = 1e-9) -> dict[int, dict[str, Any]]:
    """The classical side of the tables, computed once per instance (keyed by ``index``):
    the cold entropic solve (``solve_entropic``, eps 1, tol ``tol``), its time and residuals,
    and the three payoffs' prices under it (``PAYOFF_KEYS``, exact batched recursion)."""
    from deepquant.mmot.entropic import solve_entropic
    from deepquant.mmot.model import price_batch

    out = {}
    for r in records:
        marg = _marginals(r, grid)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cold = solve_entropic(marg, 1.0, tol=tol)
        ref = {"classical_s": time.perf_counter() - t0, "classical_drift": float(cold.drift),
               "classical_success": bool(cold.success)}
        for key, pay in _payoffs(r["n_periods"]).items():
            ref[f"price_{key}_classical"] = float(price_batch(marg, cold.kernels[None], pay)[0])
        out[int(r["index"])] = ref
    return out


def evaluate_instances(records: list[dict], grid: np.ndarray, *, checkpoint=None,
                       threads: int = 1, mass_floor: float = 1e-8, device: str = "cpu",
                       reference: dict[int, dict] | None = None) -> list[dict[str, Any]]:
    """Per-instance metrics (see module doc). ``reference`` (``classical_reference``) is the
    classical side; computed here when not given (pass it to compare several checkpoints on
    the same instances without solving them again)."""
    from deepquant.mmot.model import price_batch
    from deepquant.neural.pricer import NeuralPricer, guard_thresholds

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
    if reference is None:
        reference = classical_reference(records, grid, tol=pricer.tol)
    guard = guard_thresholds(pricer.meta)   # the checkpoint's own guard
    out = []
    for r in records:
        marg = _marginals(r, grid)
        ref = reference[int(r["index"])]
        nn = pricer.solve(marg)
        nr = raw.solve(marg)
        row = {"index": r["index"], "family": r["family"], "n_periods": r["n_periods"], **ref,
               "drift": nn.drift_live, "drift_all_rows": nn.drift,
               "marginal_error": nn.marginal_error, "neural_s": nn.inference_seconds,
               "drift_raw": nr.drift_live, "marginal_error_raw": nr.marginal_error,
               "raw_s": nr.inference_seconds}
        for key, pay in _payoffs(r["n_periods"]).items():
            cl = ref[f"price_{key}_classical"]
            kern = np.stack([nn.kernels, nr.kernels]) if key == "asian" else nn.kernels[None]
            prices = price_batch(marg, kern, pay)
            row[f"price_{key}_neural"] = float(prices[0])
            row[f"err_{key}_pct"] = 100 * abs(prices[0] - cl) / max(abs(cl), 1e-12)
            if key == "asian":
                row["price_raw"] = float(prices[1])
                row["err_raw_pct"] = 100 * abs(prices[1] - cl) / max(abs(cl), 1e-12)
        row["price_classical"], row["price_neural"] = (row["price_asian_classical"],
                                                       row["price_asian_neural"])
        row["err_pct"] = row["err_asian_pct"]
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


def _read_test(test_path, max_instances: int | None):
    from deepquant.neural.dataset_io import check_max_instances, read_dataset

    check_max_instances(max_instances)
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
    return records, grid, attrs


def _ordered(families) -> list[str]:
    fams = list(dict.fromkeys(families))
    return [f for f in ALL_FAMILIES if f in fams] + [f for f in fams if f not in ALL_FAMILIES]


def _table(rows: list[dict], trained: set[str]) -> list[dict[str, Any]]:
    """Per-family summaries, ``held_out`` marked against ``trained``; ``in-family`` and
    ``held-out`` rows when both kinds are present; an ``all`` row."""
    table = [{**_summary([r for r in rows if r["family"] == f], f), "held_out": f not in trained}
             for f in _ordered(r["family"] for r in rows)]
    inside = [r for r in rows if r["family"] in trained]
    outside = [r for r in rows if r["family"] not in trained]
    if inside and outside:
        table.append({**_summary(inside, "in-family"), "held_out": False})
        table.append({**_summary(outside, "held-out"), "held_out": True})
    table.append({**_summary(rows, "all"), "held_out": bool(outside) and not inside})
    return table


def evaluate(test_path, *, checkpoint=None, max_instances: int | None = None,
             threads: int = 1, device: str = "cpu") -> dict[str, Any]:
    """Evaluate ``checkpoint`` (default: shipped) on the instances of ``test_path``."""
    from deepquant.neural.pricer import default_checkpoint

    records, grid, attrs = _read_test(test_path, max_instances)
    rows = evaluate_instances(records, grid, checkpoint=checkpoint,
                              threads=threads, device=device)
    trained = _training_families(checkpoint or default_checkpoint())
    return {"checkpoint": str(checkpoint or default_checkpoint()), "test": str(test_path),
            "test_seed": int(attrs.get("seed", -1)), "training_families": sorted(trained),
            "families": _table(rows, trained), "instances": rows}


def leave_one_family_out(train_path, test_path, out_dir, *, checkpoint=None,
                         families=None, max_instances: int | None = None,
                         per_instance: int = 3, iterations: int = 300, ridge: float = 1e-3,
                         seed: int = 0,
                         threads: int = 1, device: str = "cpu", progress=None
                         ) -> dict[str, Any]:
    """Leave-one-family-out evaluation by refits of the v-head (``refit_head``).

    For each family F of ``families`` (default: every family present in both files): the
    v-head of ``checkpoint`` (default: shipped) is refitted on the instances of
    ``train_path`` that are not of family F (export ``out_dir/without-F``) and evaluated on
    the test instances of family F (the ``held_out`` table). Beside it, the ``in_family``
    table: the head refitted on every family of the training file (``out_dir/all``),
    evaluated on every test instance; and the ``start`` table: ``checkpoint`` itself. The
    classical reference is solved once per test instance.

    This is a head-only protocol: the trunk (everything but the v-head) stays the one of
    ``checkpoint``, trained on its own families (``training_families`` in the result), so a
    family in that set is held out of the head only. For the other families both the trunk
    and the held-out head never saw them. ``progress(stage, family)`` reports each step.
    """
    from deepquant.neural.dataset_io import read_dataset
    from deepquant.neural.pricer import default_checkpoint
    from deepquant.neural.refit import check_refit_options, refit_head

    # the refit's options before the minutes of classical reference and evaluation
    check_refit_options(per_instance=per_instance, iterations=iterations, ridge=ridge,
                        threads=max(1, threads))
    checkpoint = checkpoint or default_checkpoint()
    records, grid, attrs = _read_test(test_path, max_instances)
    train_records, _, _ = read_dataset(train_path)
    in_train = {r["family"] for r in train_records}
    del train_records
    in_test = {r["family"] for r in records}
    fams = _ordered(families if families is not None else in_train & in_test)
    missing = [f for f in fams if f not in in_train or f not in in_test]
    if missing or not fams:
        raise ValueError(f"leave-one-family-out needs each family in both files: "
                         f"{missing or 'none given'} (training file: {sorted(in_train)}, "
                         f"test file: {sorted(in_test)})")
    if len(in_train) < 2:
        raise ValueError(f"the training file holds one family ({sorted(in_train)}): nothing is "
                         "left to train on when it is held out")
    out = Path(out_dir)
    say = progress or (lambda *_: None)
    say("classical", "all")
    ref = classical_reference(records, grid)
    opts = {"threads": threads, "device": device, "reference": ref}
    trunk = _training_families(checkpoint)
    say("evaluate", "start")
    start = evaluate_instances(records, grid, checkpoint=checkpoint, **opts)
    refit = {"per_instance": per_instance, "iterations": iterations, "ridge": ridge, "seed": seed,
             "threads": max(1, threads)}
    say("refit", "all")
    t0 = time.perf_counter()
    refit_head(checkpoint, train_path, out / "all", **refit)
    refit_s = {"all": time.perf_counter() - t0}
    say("evaluate", "all")
    in_rows = evaluate_instances(records, grid, checkpoint=out / "all", **opts)
    held_rows = []
    for f in fams:
        say("refit", f)
        t0 = time.perf_counter()
        refit_head(checkpoint, train_path, out / f"without-{f}", exclude_families=(f,), **refit)
        refit_s[f] = time.perf_counter() - t0
        say("evaluate", f)
        held_rows += evaluate_instances([r for r in records if r["family"] == f], grid,
                                        checkpoint=out / f"without-{f}", **opts)
    everything = trunk | in_train
    return {"protocol": "leave-one-family-out, v-head refit (trunk fixed)",
            "checkpoint": str(checkpoint), "train": str(train_path), "test": str(test_path),
            "test_seed": int(attrs.get("seed", -1)), "training_families": sorted(trunk),
            "families": fams, "refit": refit, "refit_seconds": refit_s,
            "start": _table(start, trunk), "in_family": _table(in_rows, everything),
            "held_out": _table(held_rows, set()),
            "instances": {"start": start, "in_family": in_rows, "held_out": held_rows}}


def _training_families(checkpoint) -> set[str]:
    """Families of the checkpoint's training data (its data file's ``families`` attribute;
    files written before the attribute existed hold the default three), with those of a
    v-head refit on top."""
    from deepquant.neural.train import load_model

    _, meta = load_model(checkpoint)
    fams = (meta.get("data_attrs") or {}).get("families")
    out = set(str(fams).split(",")) if fams else set(FAMILIES)
    return out | set(((meta.get("extra") or {}).get("refit") or {}).get("families") or ())
