"""Dataset files of the surrogate's training data: HDF5 writing and reading, resumable shards,
their merge, and validation.

File layout (HDF5, one layout for shards and the merged file): ragged rows
``weights`` (sum N_i+1, M) float64, ``times`` (sum N_i+1,), ``v``, ``h`` (sum N_i, M) float64
(files written before this change hold float32 potentials; both read the same),
``h_valid`` (sum N_i, M) bool, a per-instance table under ``instances/`` (index, family,
n_periods, maturity, params as JSON, offsets, solver residuals, nit, seconds, success), the model
``grid`` and attributes (format, eps, grid_size, seed, version).

Shards ``<out>.parts/part-*.h5`` hold the instances finished so far by
``deepquant.neural.data.generate_dataset``; each is written through an atomic rename (a kill
leaves whole shards only). ``merge_parts`` merges them, deduplicated by index, into ``out``
(again atomically) and removes them. The records themselves (instances and their potentials) are
built in ``deepquant.neural.data``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deepquant.atomic import atomic_path, ensure_writable
from deepquant.neural.data import LIVE_MASS, gibbs_kernels_np, touching_mask

__all__ = [
    "FORMAT", "write_instances", "read_dataset", "read_datasets", "check_writable_file",
    "merge_parts",
    "ValidationReport", "validate_dataset",
]

FORMAT = "deepquant-neural-data-v1"
_META_FIELDS = {"marginal_error": "f8", "drift": "f8", "drift_live": "f8", "nit": "i8",
                "success": "?", "seconds": "f8"}


def write_instances(path: str | os.PathLike[str], records: list[dict], *, grid: np.ndarray,
                    attrs: dict[str, Any]) -> Path:
    """Write ``records`` (sorted by index) to a new HDF5 file at ``path`` atomically."""
    records = sorted(records, key=lambda r: r["index"])
    n_dates = np.array([r["weights"].shape[0] for r in records], dtype=np.int64)
    n_per = n_dates - 1
    with atomic_path(path, suffix=".h5") as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            for k, val in attrs.items():
                f.attrs[k] = val
            f["grid"] = np.asarray(grid, dtype=np.float64)
            m = len(grid)

            def cat(key, dt):
                if not records:
                    return np.zeros((0, m), dt)
                return np.concatenate([r[key] for r in records]).astype(dt)

            opts = {"compression": "lzf"} if records else {}
            f.create_dataset("weights", data=cat("weights", np.float64), **opts)
            f.create_dataset("v", data=cat("v", np.float64), **opts)
            f.create_dataset("h", data=cat("h", np.float64), **opts)
            f.create_dataset("h_valid", data=cat("h_valid", bool), **opts)
            f.create_dataset("v_valid", data=cat("v_valid", bool), **opts)
            f["period_ok"] = (np.concatenate([r["period_ok"] for r in records]) if records
                              else np.zeros(0, bool))
            f["times"] = (np.concatenate([r["times"] for r in records]) if records
                          else np.zeros(0))
            g = f.create_group("instances")
            g["index"] = np.array([r["index"] for r in records], dtype=np.int64)
            g["family"] = np.array([r["family"] for r in records], dtype="S8")
            g["n_periods"] = n_per.astype(np.int32)
            g["maturity"] = np.array([r["maturity"] for r in records], dtype=np.float64)
            g["params"] = np.array([r["params"] for r in records], dtype=h5py.string_dtype())
            g["date_offset"] = np.concatenate(([0], np.cumsum(n_dates)[:-1])).astype(np.int64)
            g["period_offset"] = np.concatenate(([0], np.cumsum(n_per)[:-1])).astype(np.int64)
            for k, dt in _META_FIELDS.items():
                g[k] = np.array([r.get(k, np.nan if dt == "f8" else 0) for r in records],
                                dtype=dt)
    return Path(path)


def read_dataset(path: str | os.PathLike[str]) -> tuple[list[dict], np.ndarray, dict]:
    """All records of a data file, its grid and attributes. Raises ``ValueError`` on a file
    that is not a deepquant neural data file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"data file {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"data file {str(path)!r} is not a file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"data file {str(path)!r} is not a readable HDF5 file: "
                         f"{_first_line(exc)}") from exc
    try:
        with f:
            if f.attrs.get("format") != FORMAT:
                raise ValueError(f"data file {str(path)!r} has format "
                                 f"{f.attrs.get('format')!r}, expected {FORMAT!r}")
            attrs = dict(f.attrs)
            grid = f["grid"][:]
            g = f["instances"]
            tab = {k: g[k][:] for k in g}
            weights, v, h, hv, vv, times = (f["weights"][:], f["v"][:], f["h"][:],
                                            f["h_valid"][:], f["v_valid"][:], f["times"][:])
            pok = f["period_ok"][:]
    except (OSError, KeyError, RuntimeError) as exc:   # a corrupted block or a missing dataset
        raise ValueError(f"data file {str(path)!r} is corrupted or incomplete: "
                         f"{_first_line(exc)}") from exc
    records = []
    for i in range(len(tab["index"])):
        n = int(tab["n_periods"][i])
        d0, p0 = int(tab["date_offset"][i]), int(tab["period_offset"][i])
        rec = {"index": int(tab["index"][i]), "family": tab["family"][i].decode(),
               "n_periods": n, "maturity": float(tab["maturity"][i]),
               "params": tab["params"][i].decode() if isinstance(tab["params"][i], bytes)
               else str(tab["params"][i]),
               "weights": weights[d0:d0 + n + 1], "times": times[d0:d0 + n + 1],
               "v": v[p0:p0 + n], "h": h[p0:p0 + n], "h_valid": hv[p0:p0 + n],
               "v_valid": vv[p0:p0 + n], "period_ok": pok[p0:p0 + n]}
        for k in _META_FIELDS:
            rec[k] = tab[k][i].item()
        records.append(rec)
    return records, grid, attrs


def read_datasets(paths: str | os.PathLike[str] | list) -> tuple[list[dict], np.ndarray, dict]:
    """``read_dataset`` over one file or a list of files read as one set (a training mix).

    The files must share the grid and the teacher's ``eps`` and ``tol`` (``ValueError`` naming
    the first file that does not). The attributes are the first file's where all files agree;
    where they differ (seed, families, N choices, support widths) the files' values joined by
    ``";"`` in file order, and ``files`` lists the paths. Each record of a list names its file
    under ``source``. One file reads exactly as ``read_dataset``.
    """
    if isinstance(paths, (str, os.PathLike)):
        return read_dataset(paths)
    paths = list(paths)
    if not paths:
        raise ValueError("need at least one data file, got an empty list")
    if len(paths) == 1:
        return read_dataset(paths[0])
    records, grid, attrs = read_dataset(paths[0])
    for r in records:
        r["source"] = str(paths[0])
    all_attrs = [attrs]
    for path in paths[1:]:
        recs, g, a = read_dataset(path)
        for r in recs:
            r["source"] = str(path)
        if g.shape != grid.shape or not np.array_equal(g, grid):
            raise ValueError(f"data file {str(path)!r} has another grid than {str(paths[0])!r}")
        for key in ("eps", "tol"):
            if a.get(key) != attrs.get(key):
                raise ValueError(f"data file {str(path)!r} has {key}={a.get(key)!r}, but "
                                 f"{str(paths[0])!r} has {attrs.get(key)!r}")
        records += recs
        all_attrs.append(a)
    merged = {}
    for key in dict.fromkeys(k for a in all_attrs for k in a):
        vals = [a.get(key, "") for a in all_attrs]
        same = all(isinstance(v, type(vals[0])) and np.all(v == vals[0]) for v in vals)
        merged[key] = vals[0] if same else ";".join(str(v) for v in vals)
    merged["files"] = ";".join(str(p) for p in paths)
    return records, grid, merged


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def check_writable_file(path: str | os.PathLike[str], what: str = "output file", *,
                        folder: bool = False) -> Path:
    """Raise ``ValueError`` (prefixed by ``what``, e.g. ``"train.out_dir"``) unless ``path`` can
    be written as a file (or a folder): ``deepquant.atomic.ensure_writable``, so missing folders
    below a writable one are fine (they are created). Checked before long work so that it does
    not fail at the end."""
    try:
        return ensure_writable(path, folder=folder)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _done_indices(out: Path) -> set[int]:
    done: set[int] = set()
    sources = ([out] if out.exists() else []) + sorted(_parts_dir(out).glob("part-*.h5"))
    for src in sources:
        try:
            with h5py.File(src, "r") as f:
                done.update(int(i) for i in f["instances/index"][:])
        except (OSError, KeyError) as exc:
            raise ValueError(f"data file {str(src)!r} is corrupted or incomplete: "
                             f"{_first_line(exc)}; move it away to regenerate") from exc
    return done


def _check_resume(src: Path, grid: np.ndarray, attrs: dict[str, Any]) -> None:
    """Refuse to resume ``src`` (the output or one of its shards) generated with other
    settings: the instances would be silently mixed."""
    try:
        with h5py.File(src, "r") as f:
            old = dict(f.attrs)
            same_grid = np.array_equal(f["grid"][:], grid)
    except (OSError, KeyError) as exc:
        raise ValueError(f"data file {str(src)!r} is corrupted or incomplete: "
                         f"{_first_line(exc)}; move it away to regenerate") from exc
    diffs = [] if same_grid else [f"grid ({len(grid)} points requested)"]
    for key in ("eps", "seed", "tol", "n_choices", "families", "support_scale"):
        if key not in old:           # files written before the key was stored
            continue
        a, b = old[key], attrs[key]
        same = (str(a) == str(b)) if key in ("n_choices", "families", "support_scale") \
            else float(a) == float(b)
        if not same:
            diffs.append(f"{key} (file {a}, requested {b})")
    if diffs:
        raise ValueError(f"{str(src)!r} was generated with another " + ", ".join(diffs)
                         + "; resuming would mix instances: use a new --out")


def merge_parts(out: Path, *, grid: np.ndarray, attrs: dict) -> int:
    """Merge ``out`` and its shards into ``out`` (dedup by index), then remove the shards."""
    parts = _parts_dir(out)
    shards = sorted(parts.glob("part-*.h5")) if parts.exists() else []
    if not shards and out.exists():
        with h5py.File(out, "r") as f:
            return int(f["instances/index"].shape[0])
    records: dict[int, dict] = {}
    for src in ([out] if out.exists() else []) + shards:
        for rec in read_dataset(src)[0]:
            records.setdefault(rec["index"], rec)
    write_instances(out, list(records.values()), grid=grid, attrs=attrs)
    for s in shards:
        s.unlink()
    if parts.exists() and not any(parts.iterdir()):
        parts.rmdir()
    return len(records)


# ----------------------------------------------------------------------------- validation
@dataclass
class ValidationReport:
    instances: int
    failures: list[str]
    max_marginal_error: float
    max_drift: float
    max_recomputed_drift: float
    convex_violations: int
    nan_count: int
    duplicates: int
    failed_periods: int = 0  # periods whose teacher residuals exceed PERIOD_TOL (masked)
    periods: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures


def check_max_instances(max_instances) -> None:
    """``max_instances`` is None (every instance) or an integer >= 1; 0 is not "no limit"."""
    if max_instances is not None and (int(max_instances) != max_instances or max_instances < 1):
        raise ValueError(f"max_instances must be None or an integer >= 1, got {max_instances!r}")


def validate_dataset(path: str | os.PathLike[str], *, residual_tol: float = 1e-6,
                     drift_tol: float = 1e-6, recompute: bool = True,
                     mass_floor: float = LIVE_MASS) -> ValidationReport:
    """Check every instance: finite arrays, convex order of the marginals (``Marginals``),
    stored solver residuals under the tolerances, and (``recompute``) the drift of the Gibbs
    kernels rebuilt from the stored gauge-fixed potentials (rows with mass > ``mass_floor``)."""
    from deepquant.market.marginals import Marginals

    for name, v in (("residual_tol", residual_tol), ("drift_tol", drift_tol),
                    ("mass_floor", mass_floor)):
        if not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    records, grid, _ = read_dataset(path)
    failures: list[str] = []
    idx = [r["index"] for r in records]
    dups = len(idx) - len(set(idx))
    if dups:
        failures.append(f"{dups} duplicated instance indices")
    nan_count = conv = bad_periods = 0
    max_merr = max_drift = max_re = 0.0
    for r in records:
        tag = f"instance {r['index']} ({r['family']}, N={r['n_periods']})"
        bad = sum(int((~np.isfinite(r[k])).sum()) for k in ("weights", "v", "h"))
        if bad:
            nan_count += bad
            failures.append(f"{tag}: {bad} non-finite values")
            continue
        try:
            Marginals(grid, r["weights"], r["times"] if r["times"][0] < r["times"][-1] else None)
        except ValueError as exc:
            conv += 1
            failures.append(f"{tag}: marginals invalid: {exc}")
        max_merr = max(max_merr, r["marginal_error"])
        max_drift = max(max_drift, r["drift_live"])
        if r["marginal_error"] > residual_tol or r["drift_live"] > drift_tol:
            bad_periods += int((~r["period_ok"]).sum())
            if r["period_ok"].sum() == 0:
                failures.append(f"{tag}: no usable period (solver success={r['success']}, "
                                f"marginal error {r['marginal_error']:.2e}, live drift "
                                f"{r['drift_live']:.2e})")
        if recompute:
            w_x = r["weights"].copy()
            w_x[1:] = np.where(r["v_valid"], w_x[1:], 0.0)  # columns the teacher excluded
            k = gibbs_kernels_np(r["v"].astype(np.float64), r["h"].astype(np.float64), w_x, grid,
                                 touching_mask(r["weights"], grid))
            live = (r["h_valid"] & (r["weights"][:-1] > mass_floor)
                    & r["period_ok"][:, None])
            delta = np.abs(k @ grid - grid[None, :])
            d = float(np.where(live, delta, 0.0).max())
            max_re = max(max_re, d)
    return ValidationReport(len(records), failures, max_merr, max_drift, max_re, conv,
                            nan_count, dups, bad_periods,
                            sum(len(r["period_ok"]) for r in records))
