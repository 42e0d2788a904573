"""Adaptive sparse grids for MMOT (seed 001 Algorithm 3, DESIGN §2.7).

Cells of a binary tree over the fine grid are split while their score

    score(C) = max_t mu_t(C) * diam(C) / D        (D = width of the grid)

exceeds ``tau`` (depth at most ``max_depth``); the sparse grid is the set of cell endpoints, a
subset of the fine grid. (The seed takes cell centroids; endpoints keep the grid a subset of the
fine one, which makes the projection below exact in the sense that matters.) Each fine marginal is
projected onto the sparse grid by splitting every point mass linearly between its two
neighbouring sparse points. The projection keeps mass and mean exactly, and its call function is
the linear interpolation of the fine call function at the sparse points, so consecutive dates stay
in convex order (interpolation preserves C_t <= C_{t+1}) and ``solve_entropic`` applies unchanged.

Speed-ups must be judged AT EQUAL ACCURACY against a uniform grid with the same number of points
or more (``benchmarks/mmot_entropic_sparse.py``), not by the point count alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepquant.market.marginals import Marginals, split_onto_grid

__all__ = ["SparseGrid", "adaptive_grid", "sparse_marginals"]


@dataclass(frozen=True)
class SparseGrid:
    """An adaptive grid and the marginals projected onto it.

    Attributes
    ----------
    marginals : Marginals
        The projected marginals, shape (N+1, M_sparse).
    index : ndarray of int, shape (M_sparse,)
        Positions of the sparse points in the fine grid.
    tau : float
    max_depth : int
    fine_size : int
    """

    marginals: Marginals
    index: np.ndarray
    tau: float
    max_depth: int
    fine_size: int

    @property
    def size(self) -> int:
        return int(self.index.size)

    @property
    def ratio(self) -> float:
        """Fine points per sparse point."""
        return self.fine_size / self.size


def adaptive_grid(grid: np.ndarray, weights: np.ndarray, *, tau: float, max_depth: int = 12,
                  base_cells: int = 4) -> np.ndarray:
    """Indices of the fine ``grid`` kept by the adaptive splitting (Algorithm 3).

    Parameters
    ----------
    grid : ndarray, shape (M,)
    weights : ndarray, shape (N+1, M)
        Fine marginals; the mass of a cell [x_i, x_j) is the sum of weights at fine points in it.
    tau : float
        Split threshold on max_t mu_t(C) diam(C) / D.
    max_depth : int
        Maximal number of binary splits below the ``base_cells`` uniform root cells.
    base_cells : int
        Number of root cells (uniform in index).

    Returns
    -------
    ndarray of int: sorted indices, always containing 0 and M-1.
    """
    grid = np.asarray(grid, dtype=float)
    weights = np.atleast_2d(np.asarray(weights, dtype=float))
    m = grid.size
    if not (np.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    if int(max_depth) < 0 or int(base_cells) < 1:
        raise ValueError(f"max_depth must be >= 0 and base_cells >= 1, got {max_depth}, "
                         f"{base_cells}")
    width = float(grid[-1] - grid[0])
    cum = np.concatenate([np.zeros((weights.shape[0], 1)), np.cumsum(weights, axis=1)], axis=1)
    roots = np.unique(np.linspace(0, m - 1, int(base_cells) + 1).round().astype(int))
    cells = [(int(a), int(b), 0) for a, b in zip(roots[:-1], roots[1:])]
    keep = set(roots.tolist())
    while cells:
        i, j, depth = cells.pop()
        mass = float(np.max(cum[:, j] - cum[:, i]))           # points i..j-1: [x_i, x_j)
        score = mass * (grid[j] - grid[i]) / width
        if depth >= max_depth or j - i < 2 or score <= tau:
            continue
        mid_x = 0.5 * (grid[i] + grid[j])
        k = int(np.clip(np.searchsorted(grid, mid_x), i + 1, j - 1))
        keep.add(k)
        cells.append((i, k, depth + 1))
        cells.append((k, j, depth + 1))
    return np.array(sorted(keep), dtype=int)


def sparse_marginals(marginals: Marginals, *, tau: float, max_depth: int = 12,
                     base_cells: int = 4) -> SparseGrid:
    """Project ``marginals`` onto the adaptive grid of ``adaptive_grid`` (convex order kept)."""
    if not isinstance(marginals, Marginals):
        raise TypeError(f"marginals must be a Marginals instance, got {type(marginals).__name__}")
    idx = adaptive_grid(marginals.grid, marginals.weights, tau=tau, max_depth=max_depth,
                        base_cells=base_cells)
    nodes = marginals.grid[idx]
    rows = np.vstack([split_onto_grid(marginals.grid, w, nodes) for w in marginals.weights])
    rows = np.maximum(rows, 0.0)
    rows /= rows.sum(axis=1, keepdims=True)
    sparse = Marginals(nodes, rows, marginals.times, sum_tol=marginals.sum_tol,
                       mean_tol=max(marginals.mean_tol, 1e-12), convex_tol=marginals.convex_tol)
    return SparseGrid(sparse, idx, float(tau), int(max_depth), marginals.size)
