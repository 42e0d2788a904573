"""Training loop, checkpoints and export of the surrogate (seed 001 §9.4, DESIGN §3).

``train(config)`` trains from a data file, logs to TensorBoard, writes ``last.pt`` after every
evaluation and ``best.pt`` when the validation loss improves (both atomically), stops at
``max_steps``, at the ``max_minutes`` budget or early (no improvement for ``patience``
evaluations), and resumes from ``last.pt`` when asked. A training checkpoint holds the model and
optimizer states, the scheduler step, the full config, the step, the best validation loss, the
data file's attributes and the library version.

``export_checkpoint(pt, out_dir)`` writes the inference form shipped with the package: weights as
``model.safetensors`` and a ``config.json`` (model config, grid, output scales, provenance).
``load_model(path)`` reads either form; a missing, corrupt or mismatched file is a ``ValueError``
that says which.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepquant.atomic import atomic_path, write_json
from deepquant.neural.config import Config, ModelConfig
from deepquant.neural.data import marginal_records
from deepquant.neural.dataset import NeuralDataset, check_finite_records
from deepquant.neural.dataset_io import check_writable_file, read_dataset, read_datasets
from deepquant.neural.losses import dual_gap_loss, surrogate_loss
from deepquant.neural.model import build_model, count_parameters, period_scale, resolve_device
from deepquant.neural.threads import set_torch_threads
from deepquant.results import result_dict

__all__ = ["train", "TrainResult", "save_checkpoint", "load_checkpoint", "export_checkpoint",
           "load_model", "evaluate_loss", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "deepquant-neural-checkpoint-v1"
EXPORT_FORMAT = "deepquant-neural-export-v1"


@dataclass(frozen=True, eq=False)
class TrainResult:
    """What a training run did (the result protocol of ``deepquant.results``).

    ``stopped`` (also ``status``): "max_steps", "early_stopping" or "time_budget"; ``step``
    (also ``nit``): optimiser steps; ``success``: True (a diverging run raises instead);
    ``history``: one dict per evaluation.
    """

    step: int
    best_val_loss: float
    best_step: int
    stopped: str
    seconds: float
    n_params: int
    n_train: int
    n_val: int
    out_dir: str
    history: list[dict] = field(default_factory=list)
    success: bool = True
    message: str = ""

    @property
    def status(self) -> str:
        return self.stopped

    @property
    def nit(self) -> int:
        return self.step

    def to_dict(self) -> dict[str, Any]:
        return result_dict(self)


def to_device(batch: dict, device) -> dict:
    """The batch's tensors on ``device``, except the float64 copies that the dual-gap terms
    read through numpy (``weights64``, ``grid64``), which stay on the CPU."""
    if torch.device(device).type == "cpu":
        return batch
    return {k: (v.to(device, non_blocking=True)
                if isinstance(v, torch.Tensor) and k not in ("weights64", "grid64") else v)
            for k, v in batch.items()}


def _split(records: list[dict], frac: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Stratified split by family, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for fam in sorted({r["family"] for r in records}):
        group = [r for r in records if r["family"] == fam]
        perm = rng.permutation(len(group))
        n_val = max(1, int(round(frac * len(group)))) if len(group) > 1 else 0
        val += [group[i] for i in perm[:n_val]]
        train += [group[i] for i in perm[n_val:]]
    return train, val


def prefix_windows(records: list[dict]) -> list[dict]:
    """Extra training instances for free: the first n periods of an instance (dates 0..n) are
    an instance with maturity t_n, and its N one-period problems are independent (DESIGN §2.2),
    so the prefixes' targets are the stored ones. n runs over N_CHOICES below N."""
    from deepquant.neural.data import N_CHOICES

    out = []
    for r in records:
        for n in N_CHOICES:
            if n >= r["n_periods"]:
                break
            out.append({**r, "n_periods": n, "weights": r["weights"][: n + 1],
                        "times": r["times"][: n + 1],
                        **{k: r[k][:n] for k in ("v", "h", "h_valid", "v_valid", "period_ok")}})
    return out


def _target_scales(records: list[dict], mass_floor: float) -> tuple[float, float]:
    """RMS of s_t * v and s_t * h over the distilled entries (the heads' output units)."""
    vs, hs = [], []
    for r in records:
        w = r["weights"]
        s = np.asarray(period_scale(torch.as_tensor(w[None]), torch.as_tensor(grid_of(r))))[0]
        vs.append((r["v"] * s[:, None])[r["v_valid"] & (w[1:] > mass_floor)])
        hs.append((r["h"] * s[:, None])[r["h_valid"] & (w[:-1] > mass_floor)])
    v = np.concatenate(vs) if vs else np.ones(1)
    h = np.concatenate(hs) if hs else np.ones(1)
    return float(max(np.sqrt(np.mean(v ** 2)), 1e-3)), float(max(np.sqrt(np.mean(h ** 2)), 1e-3))


def grid_of(record: dict) -> np.ndarray:
    return record["grid"]


def _lr_factor(step: int, cfg) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    frac = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))


def _loss_kwargs(cfg: Config, model) -> dict[str, float]:
    t = cfg.train
    return {"lambda_mart": t.lambda_mart, "lambda_h": t.lambda_h, "lambda_dist": t.lambda_dist,
            "drift_scale": t.drift_scale,
            "h_units": t.h_units, "mass_floor": t.mass_floor,
            "v_scale": float(model.v_scale), "h_scale": float(model.h_scale),
            "dist_weighting": t.dist_weighting, "dist_floor": t.dist_floor}


def _uses_gap(cfg: Config) -> bool:
    return cfg.train.lambda_gap > 0 or cfg.train.lambda_hcons > 0


def _gap_kwargs(cfg: Config, model) -> dict[str, Any]:
    t = cfg.train
    return {"column_floor": t.mass_floor, "mass_floor": t.mass_floor,
            "h_scale": float(model.h_scale), "v_scale": float(model.v_scale),
            "weighting": t.gap_weighting}


def _eval_gap(v, h, b: dict, cfg: Config, model, max_rows: int = 256
              ) -> tuple[float, float, float, float]:
    """Gap terms of a validation batch on all its periods (in chunks of <= ``max_rows``
    one-period problems): (gap term, hcons, mean path-law KL, mean sqrt KL); NaN KL without a
    teacher."""
    nb, n = v.shape[0], v.shape[1]
    chunks = np.array_split(np.arange(n), max(1, -(-nb * n // max_rows)))
    kl = torch.zeros(nb, dtype=torch.float64)
    gap = hc = 0.0
    for sel in chunks:
        g = dual_gap_loss(v, h, b, sel, **_gap_kwargs(cfg, model))
        hc += float(g.hcons) * len(sel) / n
        gap += float(g.gap) * len(sel) / n      # either weighting: chunk estimate x share
        if g.kl is not None:
            kl += g.kl * len(sel) / n
    if not b.get("labelled", False):
        return gap, hc, float("nan"), float("nan")
    return gap, hc, float(kl.mean()), float(torch.sqrt(kl.clamp(min=0.0) + 1e-12).mean())


@torch.no_grad()
def evaluate_loss(model, ds: NeuralDataset, cfg: Config, *, batch_size: int = 64) -> dict:
    """Mean validation loss terms over ``ds`` (weighted by batch size) and the max drift; with
    the gap terms on (``lambda_gap`` or ``lambda_hcons`` > 0) also ``gap``, ``hcons`` and the
    mean path-law KL of the projected chain (``kl``, ``sqrt_kl``) on all periods."""
    was = model.training
    model.eval()
    gap_on = _uses_gap(cfg)
    keys = ["total", "dist", "mart", "hpen"] + (["gap", "hcons", "kl", "sqrt_kl"] if gap_on
                                                else [])
    sums = dict.fromkeys(keys, 0.0)
    drift = 0.0
    n = 0
    kw = _loss_kwargs(cfg, model)
    t = cfg.train
    device = next(model.parameters()).device
    for ids in ds.batches(batch_size):
        b = to_device(ds.collate(ids), device)
        v, h = model(b["weights"], b["date_mask"])
        terms = surrogate_loss(v, h, b, **kw)
        vals = {k: float(getattr(terms, k)) for k in ("total", "dist", "mart", "hpen")}
        if gap_on:
            vals["gap"], vals["hcons"], vals["kl"], vals["sqrt_kl"] = _eval_gap(v, h, b, cfg,
                                                                                 model)
            vals["total"] += t.lambda_gap * vals["gap"] + t.lambda_hcons * vals["hcons"]
        for k in sums:
            sums[k] += vals[k] * len(ids)
        drift = max(drift, float(terms.drift_max))
        n += len(ids)
    model.train(was)
    out = {k: s / max(n, 1) for k, s in sums.items()}
    out["drift_max"] = drift
    return out


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | os.PathLike[str], *, model, optimizer, cfg: Config, step: int,
                    best_val: float, best_step: int, data_attrs: dict | None = None,
                    extra: dict | None = None) -> Path:
    """Atomically write a training checkpoint (``torch.save`` to a temp file, then rename)."""
    from deepquant import __version__

    state = {
        "format": CHECKPOINT_FORMAT, "version": __version__, "config": cfg.to_dict(),
        "model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
        "step": int(step), "best_val_loss": float(best_val), "best_step": int(best_step),
        "data_attrs": {k: (v.item() if hasattr(v, "item") else v)
                       for k, v in (data_attrs or {}).items()},
        "torch_rng": torch.get_rng_state(), "extra": extra or {},
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike[str]) -> dict:
    """Read a training checkpoint; ``ValueError`` if missing, corrupt or of another format."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types on a damaged file
        raise ValueError(f"checkpoint {str(path)!r} is corrupt or not a torch checkpoint "
                         f"({type(exc).__name__}: {str(exc)[:120]})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {str(path)!r} has format {fmt!r}, expected "
                         f"{CHECKPOINT_FORMAT!r}")
    return state


def _model_from_state(state_dict: dict, mcfg: ModelConfig, source: str):
    model = build_model(mcfg)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {source!r} does not match its model config "
                         f"(kind={mcfg.kind}, grid_size={mcfg.grid_size}): "
                         f"{str(exc).splitlines()[0]}") from exc
    model.eval()
    return model


def export_checkpoint(pt_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                      *, note: str = "") -> Path:
    """Write ``model.safetensors`` + ``config.json`` (the shipped, inference-only form)."""
    from safetensors.torch import save_file

    state = load_checkpoint(pt_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state["model"].items()}
    with atomic_path(out_dir / "model.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = {"format": EXPORT_FORMAT, "version": state["version"],
            "model": state["config"]["model"], "train": state["config"]["train"],
            "data": state["config"]["data"], "step": state["step"],
            "best_val_loss": state["best_val_loss"], "data_attrs": state["data_attrs"],
            "extra": state.get("extra", {}), "note": note}
    write_json(out_dir / "config.json", meta)
    return out_dir


PACKAGED_CHECKPOINTS = ("broad",)
"""Checkpoints shipped beside the default one, by name (``deepquant/neural/checkpoints/NAME``):
``broad``, the default fine-tuned on per-period vol term structures, SSVI smiles, synthetic-chain
calibrations and supports of random widths besides GBM / Merton / Heston: 2-9x smaller Asian
errors on those families, 3-10x larger on GBM / Merton / Heston
(docs/benchmarks-neural-training.md)."""


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """``path``, or the packaged checkpoint of that name (``PACKAGED_CHECKPOINTS``) when no
    file or folder of that name exists."""
    if str(path) in PACKAGED_CHECKPOINTS and not Path(path).exists():
        from deepquant.neural.pricer import default_checkpoint

        return default_checkpoint() / str(path)
    return Path(path)


def load_model(path: str | os.PathLike[str]):
    """(model in eval mode, metadata dict) from a training ``.pt`` or an exported folder /
    ``.safetensors`` file (with its ``config.json`` beside it), or a packaged checkpoint's
    name (``PACKAGED_CHECKPOINTS``)."""
    path = resolve_checkpoint(path)
    if path.suffix == ".pt":
        state = load_checkpoint(path)
        mcfg = ModelConfig(**state["config"]["model"])
        meta = {k: state[k] for k in ("version", "step", "best_val_loss", "data_attrs")}
        meta["model"] = state["config"]["model"]
        meta["extra"] = state.get("extra", {})
        return _model_from_state(state["model"], mcfg, str(path)), meta
    folder = path if path.is_dir() else path.parent
    weights = folder / "model.safetensors" if path.is_dir() else path
    cfg_path = folder / "config.json"
    if path.is_file() and not cfg_path.exists():
        raise ValueError(f"checkpoint {str(path)!r} is a file with no config.json beside it; a "
                         "checkpoint is a folder (model.safetensors + config.json) or a "
                         "training .pt file")
    for p in (weights, cfg_path):
        if not p.exists():
            raise ValueError(f"checkpoint file {str(p)!r} does not exist")
    try:
        meta = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint config {str(cfg_path)!r} is corrupt: {exc}") from exc
    if meta.get("format") != EXPORT_FORMAT:
        raise ValueError(f"checkpoint config {str(cfg_path)!r} has format "
                         f"{meta.get('format')!r}, expected {EXPORT_FORMAT!r}")
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights))
    except Exception as exc:
        raise ValueError(f"checkpoint weights {str(weights)!r} are corrupt "
                         f"({type(exc).__name__}: {str(exc)[:120]})") from exc
    try:
        mcfg = ModelConfig(**meta["model"])
    except TypeError as exc:
        raise ValueError(f"checkpoint config {str(cfg_path)!r} has an invalid model section: "
                         f"{exc}") from exc
    return _model_from_state(tensors, mcfg, str(weights)), meta


# ----------------------------------------------------------------------------- training
def train(cfg: Config, *, callback=None) -> TrainResult:
    """Train the surrogate described by ``cfg``. ``callback(event: dict)`` receives progress
    (``{"kind": "eval", "step": ..., "val": ...}`` and ``{"kind": "step", ...}``)."""
    t = cfg.train
    set_torch_threads(t.threads, "train.threads")
    torch.manual_seed(t.seed)
    device = resolve_device(t.device)
    t_start = time.perf_counter()
    out_dir = Path(t.out_dir)
    # before any work: a folder that cannot be created or written fails here, not at step 0
    check_writable_file(out_dir, "train.out_dir", folder=True)
    out_dir.mkdir(parents=True, exist_ok=True)

    records, grid, attrs = read_datasets(cfg.data.train)
    check_finite_records(records, cfg.data.train)
    if cfg.model.grid_size != len(grid):
        raise ValueError(f"model.grid_size={cfg.model.grid_size} but the data grid has "
                         f"{len(grid)} points")
    if cfg.data.families is not None:
        records = [r for r in records if r["family"] in cfg.data.families]
    if cfg.data.max_instances:
        records = records[: cfg.data.max_instances]
    # the families trained on, as the evaluation reads them (held-out or not): those of the
    # records kept, not the files' lists (a filtered or merged set differs from both)
    attrs = {**attrs, "families": ",".join(dict.fromkeys(r["family"] for r in records))}
    if cfg.data.val:
        train_recs, (val_recs, _, _) = records, read_dataset(cfg.data.val)
        check_finite_records(val_recs, cfg.data.val)
    else:
        train_recs, val_recs = _split(records, cfg.data.val_fraction, cfg.data.split_seed)
    if not train_recs or not val_recs:
        raise ValueError(f"need training and validation instances, got {len(train_recs)} and "
                         f"{len(val_recs)} from {cfg.data.train!r}")
    labelled = list(train_recs)
    if cfg.data.unlabelled:
        if not _uses_gap(cfg):
            raise ValueError("data.unlabelled instances carry no teacher: they need the gap "
                             "loss (train.lambda_gap > 0)")
        train_recs = train_recs + marginal_records(
            cfg.data.unlabelled, cfg.data.unlabelled_seed, grid,
            progress=(lambda d, n: callback({"kind": "data", "done": d, "total": n}))
            if callback else None)
    if cfg.data.prefix_windows:
        train_recs = train_recs + prefix_windows(train_recs)
    train_ds, val_ds = NeuralDataset(train_recs, grid), NeuralDataset(val_recs, grid)

    model = build_model(cfg.model, grid)
    if t.init_from:
        init, _ = load_model(t.init_from)
        if init.cfg != cfg.model:
            raise ValueError(f"train.init_from={t.init_from!r} has another model config than "
                             f"this run's model section")
        model.load_state_dict(init.state_dict())
    else:
        for r in labelled:
            r["grid"] = grid
        model.set_scales(*_target_scales(labelled, t.mass_floor))
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    step, best_val, best_step, history = 0, math.inf, 0, []
    last = out_dir / "last.pt"
    if t.resume and last.exists():
        state = load_checkpoint(last)
        if state["config"]["model"] != cfg.to_dict()["model"]:
            diff = {k for k, v in cfg.to_dict()["model"].items()
                    if state["config"]["model"].get(k) != v}
            raise ValueError(f"cannot resume from {str(last)!r}: its model config differs in "
                             f"{sorted(diff)}; use another train.out_dir or resume: false")
        model = _model_from_state(state["model"], cfg.model, str(last)).to(device)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        opt.load_state_dict(state["optimizer"])
        step, best_val, best_step = state["step"], state["best_val_loss"], state["best_step"]
        history = list(state.get("extra", {}).get("history", []))
        torch.set_rng_state(state["torch_rng"])
    writer = None
    try:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(t.log_dir or str(out_dir / "tb"))
    except ImportError:  # pragma: no cover - tensorboard is in the neural extra
        pass

    kw = _loss_kwargs(cfg, model)
    gap_on = _uses_gap(cfg)
    rng = np.random.default_rng(t.seed + step)
    bad_evals = 0
    stopped = "max_steps"
    model.train()

    def do_eval() -> bool:
        nonlocal best_val, best_step, bad_evals
        val = evaluate_loss(model, val_ds, cfg)
        # while lambda_mart is still ramping the loss is not the final one: every evaluation
        # counts as the best so far (early stopping / best.pt start when the ramp is over)
        ramping = step < t.mart_start + t.mart_warmup
        improved = ramping or val["total"] < best_val
        if improved:
            best_val, best_step, bad_evals = val["total"], step, 0
        else:
            bad_evals += 1
        rec = {"step": step, "seconds": time.perf_counter() - t_start,
               **{f"val_{k}": v for k, v in val.items()}}
        history.append(rec)
        if writer:
            for k, v in val.items():
                writer.add_scalar(f"val/{k}", v, step)
            writer.flush()
        ckw = {"model": model, "optimizer": opt, "cfg": cfg, "step": step,
               "best_val": best_val, "best_step": best_step, "data_attrs": attrs,
               "extra": {"history": history, "n_params": count_parameters(model),
                         "grid": [float(x) for x in grid]}}
        if improved:
            save_checkpoint(out_dir / "best.pt", **ckw)
        save_checkpoint(last, **ckw)
        if callback:
            callback({"kind": "eval", "step": step, "val": val, "best": best_val})
        return improved

    if step == 0:
        do_eval()
    done = step >= t.max_steps
    while not done:
        for ids in train_ds.batches(t.batch_size, rng):
            for g in opt.param_groups:
                g["lr"] = t.lr * _lr_factor(step, t)
            b = to_device(train_ds.collate(ids), device)
            n_per = b["v"].shape[1]
            if t.mart_periods and n_per > t.mart_periods:
                b["mart_periods"] = torch.as_tensor(
                    np.sort(rng.choice(n_per, t.mart_periods, replace=False)))
            v, h = model(b["weights"], b["date_mask"])
            kw_step = dict(kw)
            if t.mart_start or t.mart_warmup:
                ramp = (step + 1 - t.mart_start) / max(1, t.mart_warmup)
                kw_step["lambda_mart"] = t.lambda_mart * min(1.0, max(0.0, ramp))
            terms = surrogate_loss(v, h, b, **kw_step)
            loss = terms.total
            if gap_on:
                sel = (np.sort(rng.choice(n_per, t.gap_periods, replace=False))
                       if t.gap_periods and n_per > t.gap_periods else None)
                g = dual_gap_loss(v, h, b, sel, **_gap_kwargs(cfg, model))
                loss = loss + t.lambda_gap * g.gap + t.lambda_hcons * g.hcons
            if not torch.isfinite(loss.detach()):
                raise ValueError(f"training diverged: non-finite loss at step {step} (data "
                                 f"{cfg.data.train!r}); {last} keeps the last evaluated step")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            step += 1
            if writer and step % 20 == 0:
                for k in ("total", "dist", "mart", "hpen", "drift_max"):
                    writer.add_scalar(f"train/{k}", float(getattr(terms, k).detach()), step)
                if gap_on:
                    writer.add_scalar("train/gap", float(g.gap.detach()), step)
                    writer.add_scalar("train/hcons", float(g.hcons.detach()), step)
                writer.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
            if callback:
                callback({"kind": "step", "step": step, "loss": float(loss.detach())})
            over_time = (t.max_minutes is not None
                         and time.perf_counter() - t_start > 60 * t.max_minutes)
            if step % t.eval_every == 0 or step >= t.max_steps or over_time:
                do_eval()
                if bad_evals >= t.patience:
                    stopped, done = "early_stopping", True
            if step >= t.max_steps:
                stopped, done = "max_steps", True
            elif over_time:
                stopped, done = "time_budget", True
            if done:
                break
    if writer:
        writer.close()
    return TrainResult(step, best_val, best_step, stopped, time.perf_counter() - t_start,
                       count_parameters(model), len(train_ds), len(val_ds), str(out_dir),
                       history, message=f"stopped on {stopped} at step {step}; best "
                       f"validation loss {best_val:.4g} at step {best_step}")
