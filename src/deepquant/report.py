"""Figures (PNG, matplotlib Agg) and a Markdown report, written atomically into a folder.

Each ``plot_*`` function takes plain arrays, writes one PNG through ``deepquant.atomic`` (a
reader never sees a half-written file) and returns its path. ``write_markdown`` writes the
report text. ``deepquant.demo`` assembles them; nothing here prints.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from deepquant.atomic import atomic_path, write_text

__all__ = [
    "plot_marginals",
    "plot_plan",
    "plot_convergence",
    "plot_strike_sweep",
    "plot_tracking_errors",
    "plot_bounds_vs_grid",
    "plot_ranges",
    "markdown_table",
    "write_markdown",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_marginals(grid: np.ndarray, weights: np.ndarray, labels: Sequence[str],
                   path: str | os.PathLike[str], *, title: str = "Marginals") -> Path:
    """Marginal laws per date: weights (N+1, M) on ``grid`` (M,), one line per date."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for w, lab in zip(np.asarray(weights), labels):
        ax.plot(grid, w, marker=".", lw=1.2, label=lab)
    ax.set_xlabel("forward moneyness x")
    ax.set_ylabel("probability mass")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_plan(grid: np.ndarray, plans: Sequence[np.ndarray], titles: Sequence[str],
              path: str | os.PathLike[str]) -> Path:
    """Heatmaps of transport plans pi(x, y) (each (M, M)), log10 colour scale."""
    plt = _pyplot()
    k = len(plans)
    fig, axes = plt.subplots(1, k, figsize=(4.2 * k, 3.8), squeeze=False)
    g = np.asarray(grid, dtype=float)
    mid = 0.5 * (g[1:] + g[:-1])
    edges = np.concatenate([[g[0] - (mid[0] - g[0])], mid, [g[-1] + (g[-1] - mid[-1])]])
    for ax, p, t in zip(axes[0], plans, titles):
        with np.errstate(divide="ignore"):
            lp = np.log10(np.where(p > 1e-12, p, np.nan))
        im = ax.pcolormesh(edges, edges, lp, cmap="viridis", shading="flat")
        ax.set_xlabel("y = X_{t+1}")
        ax.set_ylabel("x = X_t")
        ax.set_title(t, fontsize=9)
        fig.colorbar(im, ax=ax, label="log10 pi(x, y)")
    fig.tight_layout()
    return _save(fig, path)


def plot_convergence(curves: Mapping[str, Sequence[float]], path: str | os.PathLike[str], *,
                     xlabel: str = "iteration", title: str = "Solver convergence") -> Path:
    """Semilog curves (e.g. measured marginal error and drift per iteration)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, ys in curves.items():
        ys = np.asarray(ys, dtype=float)
        ok = np.isfinite(ys) & (ys > 0)
        ax.semilogy(np.flatnonzero(ok), ys[ok], marker=".", label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("measured residual")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_strike_sweep(strikes: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                      calibrated: np.ndarray, path: str | os.PathLike[str], *,
                      widened_lower: np.ndarray | None = None,
                      widened_upper: np.ndarray | None = None,
                      extra: Mapping[str, np.ndarray] | None = None,
                      title: str = "Bounds and calibrated price") -> Path:
    """Bounds [lower, upper], the widened band and the calibrated price against strike."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if widened_lower is not None and widened_upper is not None:
        ax.fill_between(strikes, widened_lower, widened_upper, color="tab:blue", alpha=0.12,
                        label="widened (costs + calibration)")
    ax.fill_between(strikes, lower, upper, color="tab:blue", alpha=0.3, label="MMOT bounds (LP)")
    ax.plot(strikes, lower, color="tab:blue", lw=1)
    ax.plot(strikes, upper, color="tab:blue", lw=1)
    ax.plot(strikes, calibrated, "o-", color="tab:red", label="calibrated model")
    for name, vals in (extra or {}).items():
        ax.plot(strikes, vals, "x--", label=name)
    ax.set_xlabel("strike (moneyness)")
    ax.set_ylabel("price (fraction of forward)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_tracking_errors(errors: Mapping[str, np.ndarray], path: str | os.PathLike[str], *,
                         title: str = "Delta-hedge tracking error") -> Path:
    """Histograms of tracking errors, one per scenario."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, e in errors.items():
        ax.hist(np.asarray(e), bins=60, alpha=0.5, density=True, label=name)
    ax.set_xlabel("V_0 + sum Delta dX - payoff")
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_bounds_vs_grid(entries: Sequence[Mapping], path: str | os.PathLike[str], *,
                        title: str = "Bounds against the grid size") -> Path:
    """Lower and upper bounds of each payoff against the grid size M (one panel per payoff):
    filled markers for exact LP bounds, hollow ones for certified bounds (``method``)."""
    plt = _pyplot()
    labels = list(dict.fromkeys(e["label"] for e in entries))
    fig, axes = plt.subplots(1, len(labels), figsize=(4.2 * len(labels), 3.4), squeeze=False)
    for ax, label in zip(axes[0], labels):
        es = sorted((e for e in entries if e["label"] == label), key=lambda e: e["size"])
        m = [e["size"] for e in es]
        exact = np.array([e.get("method", "lp") == "lp" for e in es])
        for key, color in (("lower", "tab:blue"), ("upper", "tab:red")):
            v = np.array([e[key] for e in es], dtype=float)
            ax.plot(m, v, "-", color=color, label=key)
            ax.plot(np.array(m)[exact], v[exact], "o", color=color)
            ax.plot(np.array(m)[~exact], v[~exact], "o", mfc="white", color=color,
                    label="certified" if key == "upper" and (~exact).any() else None)
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(m)))
        ax.set_xticklabels([str(v) for v in sorted(set(m))])
        ax.minorticks_off()
        ax.set_xlabel("grid points M")
        ax.set_title(label)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_ranges(labels: Sequence[str], ranges: Mapping[str, Sequence[tuple[float, float]]],
                path: str | os.PathLike[str], *,
                points: Mapping[str, Sequence[float]] | None = None,
                title: str = "Price ranges") -> Path:
    """Grouped intervals: one panel per label (payoff), one horizontal bar per range.

    ``ranges[name][j]`` is the (lower, upper) pair of range ``name`` for ``labels[j]`` (a
    non-finite pair is left out); ``points[name][j]`` is drawn as a dotted vertical line (e.g.
    the calibrated price). Each panel has its own price axis, since payoffs differ in scale.
    """
    plt = _pyplot()
    names = list(ranges)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown"]
    fig, axes = plt.subplots(1, len(labels), figsize=(3.8 * len(labels), 0.5 * len(names) + 1.6),
                             squeeze=False)
    for j, (ax, label) in enumerate(zip(axes[0], labels)):
        for i, name in enumerate(names):
            lo, hi = (float(v) for v in ranges[name][j])
            if not (np.isfinite(lo) and np.isfinite(hi)):
                continue
            y = len(names) - 1 - i
            color = colors[i % len(colors)]
            ax.hlines(y, lo, hi, color=color, lw=5, alpha=0.6)
            ax.plot([lo, hi], [y, y], "|", color=color, ms=14, mew=1.5)
        for name, vals in (points or {}).items():
            ax.axvline(float(vals[j]), color="k", ls=":", lw=1, label=name if j == 0 else None)
        ax.set_yticks(range(len(names)))
        ax.set_yticklabels(names[::-1] if j == 0 else [""] * len(names), fontsize=8)
        ax.set_ylim(-0.7, len(names) - 0.3)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("price (fraction of forward)", fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3, axis="x")
    if points:
        fig.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _fmt(v) -> str:
    if isinstance(v, float | np.floating):
        if not np.isfinite(v):
            return "n/a"
        return f"{v:.6g}"
    return str(v)


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub-flavoured Markdown table; floats with 6 significant digits."""
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_markdown(path: str | os.PathLike[str], sections: Sequence[tuple[str, str]], *,
                   title: str) -> Path:
    """Write ``# title`` followed by ``## heading`` + body for each section, atomically."""
    parts = [f"# {title}", ""]
    for heading, body in sections:
        parts += [f"## {heading}", "", body.rstrip(), ""]
    return write_text(path, "\n".join(parts))
