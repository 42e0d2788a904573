"""Plain martingale-Sinkhorn (seed 001 Algorithm 1): the baseline of the entropic Newton solver.

Block coordinate ascent on the entropic dual of DESIGN §2.1 (our signs, see
``deepquant.mmot.entropic``): per sweep, u in closed form (row scaling), h(x) per row by a
safeguarded 1-D Newton solve of E[Y - x | x] = 0, v in closed form (column scaling). It converges
linearly; the stopping rule uses the measured residuals (L1 marginal error and drift), not the
change of the iterates (the seed's rule). It shares the data preparation, the handling of
zero-weight points and pinned edge rows, and the result type with ``solve_entropic``.
"""

from __future__ import annotations

from typing import Any

from deepquant.market.marginals import Marginals
from deepquant.mmot.entropic import EntropicResult, solve_entropic

__all__ = ["martingale_sinkhorn"]


def martingale_sinkhorn(marginals: Marginals, eps: float, cost: Any = None,
                        reference: Any = "product", *, tol: float = 1e-9,
                        max_sweeps: int = 100_000, **options) -> EntropicResult:
    """Solve the batched entropic problem by martingale-Sinkhorn sweeps only.

    ``max_sweeps`` bounds the sweeps of each eps stage; ``nit`` and ``sweeps`` of the result
    count the sweeps. Other options as in ``solve_entropic`` (no Newton-specific ones).
    """
    return solve_entropic(marginals, eps, cost, reference, tol=tol, max_iter=max_sweeps,
                          method="sinkhorn", **options)
