"""HiGHS options of the exact LPs (``scipy.optimize.linprog(method="highs")``): the defaults and
the check of a user's options, shared by the chain LP (``deepquant.mmot.lp``), the path-space LP
and the quote bounds."""

from __future__ import annotations

__all__ = ["DEFAULT_HIGHS_OPTIONS", "HIGHS_OPTION_NAMES", "check_highs_options"]

DEFAULT_HIGHS_OPTIONS = dict(presolve=False, primal_feasibility_tolerance=1e-9,
                             dual_feasibility_tolerance=1e-9)
"""HiGHS options used unless overridden: tight tolerances, presolve off (DESIGN §7: presolve gave
false infeasibility and 5e-8 residuals on MOT LPs with tiny tail masses; residuals are checked)."""

HIGHS_OPTION_NAMES = ("disp", "presolve", "time_limit", "maxiter", "dual_feasibility_tolerance",
                      "primal_feasibility_tolerance", "ipm_optimality_tolerance",
                      "simplex_dual_edge_weight_strategy", "mip_rel_gap", "mip_max_nodes")
"""The options ``scipy.optimize.linprog(method="highs")`` documents; it only warns on others."""


def check_highs_options(user: dict | None) -> dict:
    """``DEFAULT_HIGHS_OPTIONS`` updated with ``user``, whose names are checked (a misspelt
    option would otherwise be dropped with a warning and the solve run on the defaults)."""
    if user is None:
        return dict(DEFAULT_HIGHS_OPTIONS)
    if not isinstance(user, dict):
        raise ValueError(f"highs_options must be a dict, got {type(user).__name__}")
    unknown = sorted(set(user) - set(HIGHS_OPTION_NAMES), key=str)
    if unknown:
        raise ValueError(f"highs_options has unknown option(s) {unknown}; HiGHS through "
                         f"scipy.optimize.linprog takes {list(HIGHS_OPTION_NAMES)}")
    return {**DEFAULT_HIGHS_OPTIONS, **user}
